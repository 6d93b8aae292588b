//! faitout's API: `GET /new` hands out a fresh role and database (as a URL, or as JSON when
//! asked for), `GET /clean/<db>` drops one; a client (its IP address) may have at most
//! `--max-per-client` out at once. The answers, error names included, are faitout's.

use crate::output::format::Remote;
use crate::serve::reply::Reply;
use crate::serve::service::{Caller, Service};
use crate::serve::store;
use anyhow::Result;
use serde_json::json;

/// faitout's error answer: always JSON.
fn error(status: u16, name: &str, description: String) -> Reply {
    Reply::json(
        status,
        &json!({ "ERROR": name, "description": description }),
    )
}

/// `GET /clone/<db>` (pgtmp's own, for `pgtmp clone --remote`): another database like `db`,
/// a fresh copy of its template, or a blank one as `/new` gives.
pub fn clone(service: &Service, caller: &Caller, name: &str) -> Result<Reply> {
    let found = service.db(|client| store::find(client, name))?;
    match found {
        Some(found) if found.state == "out" => match found.template {
            None => new(service, caller, true),
            Some(template) => {
                let record = service.hand_out(Some(template), &caller.id)?;
                Ok(answer(service, caller, &record, true))
            }
        },
        _ => Ok(error(
            404,
            "NoDatabaseException",
            format!("Database {name} could not be found"),
        )),
    }
}

/// `GET /new`.
pub fn new(service: &Service, caller: &Caller, as_json: bool) -> Result<Reply> {
    let client_id = caller.id.as_str();
    let cap = service.settings.max_per_client as i64;
    // The count and the take under one lock per client, so that parallel requests of one
    // client never get past the cap together.
    let taken = service.db(|client| {
        let mut tx = client.transaction()?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))",
            &[&format!("pgtmp serve client {client_id}")],
        )?;
        if store::out_for(&mut tx, client_id)? >= cap {
            return Ok(Err(()));
        }
        let record = store::take(&mut tx, None, client_id, service.ttl())?;
        tx.commit()?;
        Ok(Ok(record))
    })?;
    let record = match taken {
        Err(()) => {
            return Ok(error(
                400,
                "TooManyConnectionException",
                format!("{client_id} has already {cap} active connection, please re-try later"),
            ));
        }
        Ok(Some(record)) => {
            service.ring();
            record
        }
        Ok(None) => service.hand_out(None, client_id)?,
    };
    Ok(answer(service, caller, &record, as_json))
}

/// A handed-out database as faitout gives it: a URL, or JSON.
fn answer(service: &Service, caller: &Caller, record: &store::Record, as_json: bool) -> Reply {
    let port = service.backend.port;
    if as_json {
        return Reply::json(
            200,
            &json!({
                "dbname": record.name,
                "username": record.name,
                "password": record.password,
                "port": port,
                "host": caller.db_host,
            }),
        );
    }
    let database = Remote {
        host: caller.db_host.clone(),
        port,
        user: record.name.clone(),
        password: record.password.clone(),
        database: record.name.clone(),
    };
    Reply::text(200, database.url())
}

/// `GET /clean/<db>`: only by the client that got it, or with the token (a serve that has one
/// answers only requests that carry it).
pub fn clean(service: &Service, caller: &Caller, name: &str) -> Result<Reply> {
    let token_given = service.settings.token.is_some();
    let client_id = caller.id.as_str();
    let found = service.db(|client| store::find(client, name))?;
    let found = match found {
        Some(found) if found.state == "out" => found,
        _ => {
            return Ok(error(
                404,
                "NoDatabaseException",
                format!("Database {name} could not be found"),
            ));
        }
    };
    if found.client.as_deref() != Some(client_id) && !token_given {
        return Ok(error(
            403,
            "WrongOriginException",
            format!(
                "{client_id} did not request this database and thus is not allowed to drop it."
            ),
        ));
    }
    service.db(|client| service.drop_now(client, std::slice::from_ref(&found.record.name)))?;
    Ok(Reply::text(
        200,
        format!("Database {name} has been dropped"),
    ))
}
