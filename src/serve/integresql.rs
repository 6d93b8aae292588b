//! IntegreSQL's v1 API: a client builds a template per hash of its migrations (initialize,
//! migrate through the connection it is given, finalize, or discard), then takes test
//! databases, copies of it made in advance, and may give them back. Paths, bodies and status
//! codes are IntegreSQL's, so that its client libraries work unchanged.

use crate::os::secret;
use crate::serve::provision;
use crate::serve::reply::Reply;
use crate::serve::service::{Caller, Service};
use crate::serve::store::{self, TemplateState};
use anyhow::Result;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// How long `GET .../tests` waits for a template being built, as IntegreSQL does.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// The least time a client has to finalize a template before it is taken for dead and the
/// template discarded (else the TTL, when longer): migrations may take minutes.
const BUILD_LIMIT: f64 = 600.0;

/// The `database` object of IntegreSQL's answers.
fn database(service: &Service, caller: &Caller, hash: &str, name: &str, password: &str) -> Value {
    json!({
        "templateHash": hash,
        "config": {
            "host": caller.db_host,
            "port": service.backend.port,
            "username": name,
            "password": password,
            "database": name,
        }
    })
}

fn template_not_found() -> Reply {
    Reply::message(404, "template not found")
}

/// The hash of `POST /api/v1/templates`: from `{"hash": "..."}`, or from a form body
/// (`hash=...`), which IntegreSQL takes too and some of its clients send (the Python one).
fn hash_of(body: &[u8], form: bool) -> Result<String, Reply> {
    #[derive(serde::Deserialize)]
    struct Payload {
        hash: String,
    }
    let hash = if form {
        form_urlencoded::parse(body)
            .find(|(key, _)| key == "hash")
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default()
    } else {
        match serde_json::from_slice::<Payload>(body) {
            Ok(payload) => payload.hash,
            Err(err) => return Err(Reply::message(400, format!("malformed body: {err}"))),
        }
    };
    if hash.is_empty() {
        return Err(Reply::message(400, "hash is required"));
    }
    Ok(hash)
}

/// `POST /api/v1/templates` with `{"hash": "..."}` (or the form `hash=...`).
pub fn initialize(service: &Service, caller: &Caller, body: &[u8], form: bool) -> Result<Reply> {
    let hash = match hash_of(body, form) {
        Ok(hash) => hash,
        Err(reply) => return Ok(reply),
    };
    if hash.len() > 1024 {
        return Ok(Reply::message(400, "hash is longer than 1024 bytes"));
    }
    let password = secret::password()?;
    let building_for = service.ttl().max(BUILD_LIMIT);
    let begun = service.db(|c| store::begin_template(c, &hash, &password, building_for))?;
    let Some(id) = begun else {
        return Ok(Reply::message(423, "template is already initialized"));
    };
    let made =
        service.db(|client| provision::make_template(&service.backend, client, id, &password));
    if let Err(err) = made {
        let _ = service.db(|client| service.drop_template(client, id, false));
        return Err(err);
    }
    let name = store::template_name(id);
    Ok(Reply::json(
        200,
        &json!({ "database": database(service, caller, &hash, &name, &password) }),
    ))
}

/// `PUT /api/v1/templates/:hash`.
pub fn finalize(service: &Service, hash: &str) -> Result<Reply> {
    let Some(template) = service.db(|c| store::template(c, hash))? else {
        return Ok(template_not_found());
    };
    match template.state {
        TemplateState::Ready => return Ok(Reply::no_content()),
        TemplateState::Discarded => return Ok(template_not_found()),
        TemplateState::Building => {}
    }
    service.db(|client| provision::seal_template(client, template.id))?;
    service.db(|c| store::set_template_state(c, hash, &["building"], "ready"))?;
    service.ring();
    Ok(Reply::no_content())
}

/// `DELETE /api/v1/templates/:hash`.
pub fn discard(service: &Service, hash: &str) -> Result<Reply> {
    let template = service.db(|c| store::template(c, hash))?;
    let Some(template) = template.filter(|t| t.state != TemplateState::Discarded) else {
        return Ok(template_not_found());
    };
    service.db(|c| store::set_template_state(c, hash, &["building", "ready"], "discarded"))?;
    service.db(|client| service.drop_template(client, template.id, true))?;
    Ok(Reply::no_content())
}

/// `GET /api/v1/templates/:hash/tests`: waits while the template is being built.
pub fn get_test(service: &Service, hash: &str, caller: &Caller) -> Result<Reply> {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let Some(template) = service.db(|c| store::template(c, hash))? else {
            return Ok(template_not_found());
        };
        match template.state {
            TemplateState::Discarded => {
                return Ok(Reply::message(410, "template was just discarded"));
            }
            TemplateState::Building if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            TemplateState::Building => {
                return Ok(Reply::message(503, "template was not finalized in time"));
            }
            TemplateState::Ready => {
                let record = service.hand_out(Some(template.id), &caller.id)?;
                let mut answer = json!({
                    "database": database(service, caller, hash, &record.name, &record.password),
                });
                answer["id"] = json!(record.test_id);
                return Ok(Reply::json(200, &answer));
            }
        }
    }
}

/// The test database `id` of `hash`'s template, or the answer saying it is not there.
fn test_of(service: &Service, hash: &str, id: &str) -> Result<Result<store::Found, Reply>> {
    let Ok(id) = id.parse::<i32>() else {
        return Ok(Err(Reply::message(400, "invalid test database ID")));
    };
    let template = service.db(|c| store::template(c, hash))?;
    let Some(template) = template.filter(|t| t.state != TemplateState::Discarded) else {
        return Ok(Err(template_not_found()));
    };
    match service.db(|c| store::find_test(c, template.id, id))? {
        Some(found) if found.state == "out" || found.state == "ready" => Ok(Ok(found)),
        _ => Ok(Err(Reply::message(404, "test database not found"))),
    }
}

/// `POST .../tests/:id/unlock` and `DELETE .../tests/:id`: back among the ready ones, as it
/// is (the client says it left it unchanged), with a new password so that its last holder
/// cannot come back into the next one's.
pub fn give_back(service: &Service, hash: &str, id: &str) -> Result<Reply> {
    let found = match test_of(service, hash, id)? {
        Ok(found) => found,
        Err(reply) => return Ok(reply),
    };
    if found.state == "ready" {
        return Ok(Reply::no_content());
    }
    let name = found.record.name;
    // A client that closed its session just before asking leaves a backend that is still
    // exiting: it is given a moment to go before the database counts as in use.
    let deadline = std::time::Instant::now() + GIVE_BACK_GRACE;
    loop {
        let in_use: i64 = service.db(|c| {
            Ok(c.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                &[&name],
            )?
            .get(0))
        })?;
        if in_use == 0 {
            break;
        }
        if std::time::Instant::now() >= deadline {
            return Ok(Reply::message(423, "test database is in use"));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let password = secret::password()?;
    service.db(|client| {
        provision::set_password(client, &name, &password)?;
        store::give_back(client, &name, &password)
    })?;
    Ok(Reply::no_content())
}

/// How long a give-back waits for the sessions of a test database to end.
const GIVE_BACK_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// `POST .../tests/:id/recreate`: dropped; the pool's filler makes a fresh copy in its place.
pub fn recreate(service: &Service, hash: &str, id: &str) -> Result<Reply> {
    let found = match test_of(service, hash, id)? {
        Ok(found) => found,
        Err(reply) => return Ok(reply),
    };
    service.db(|client| service.drop_now(client, &[found.record.name]))?;
    service.ring();
    Ok(Reply::no_content())
}

/// `DELETE /api/v1/admin/templates`: every template and every database made from one.
pub fn discard_all(service: &Service) -> Result<Reply> {
    let templates = service.db(store::all_templates)?;
    for (_, hash) in &templates {
        service.db(|c| store::set_template_state(c, hash, &["building", "ready"], "discarded"))?;
    }
    for (id, _) in templates {
        service.db(|client| service.drop_template(client, id, false))?;
    }
    Ok(Reply::no_content())
}
