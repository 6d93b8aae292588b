//! What `serve` handed out, to whom and until when: two tables in schema `pgtmp` of the admin
//! database, on the server itself, so that a restarted serve forgets nothing and several serve
//! processes share one server. Every database and role serve makes is recorded here before it
//! is made and forgotten only after it is dropped, so expiry can always find it.

use anyhow::{Context, Result};
use postgres::GenericClient;

/// The advisory lock key under which the schema is created (two serve processes starting at
/// once would otherwise race on CREATE ... IF NOT EXISTS): "pgtmp" in ASCII.
const SCHEMA_LOCK: i64 = 0x0070_6774_6d70;
/// The first key of the templates' advisory locks ("pgtp"), the template's id the second.
const TEMPLATE_LOCKS: i32 = 0x7067_7470;

/// The schema, created once per admin database; only its owner (the admin role) may read it,
/// for the passwords it holds.
const SCHEMA: &str = "
CREATE SCHEMA IF NOT EXISTS pgtmp;
REVOKE ALL ON SCHEMA pgtmp FROM PUBLIC;
CREATE TABLE IF NOT EXISTS pgtmp.serve_templates (
    id serial PRIMARY KEY,
    hash text NOT NULL UNIQUE,
    password text NOT NULL,
    state text NOT NULL CHECK (state IN ('building', 'ready', 'discarded')),
    next_test integer NOT NULL DEFAULT 0,
    created timestamptz NOT NULL DEFAULT now(),
    expires timestamptz
);
CREATE TABLE IF NOT EXISTS pgtmp.serve_databases (
    name text PRIMARY KEY,
    password text NOT NULL,
    template integer REFERENCES pgtmp.serve_templates (id),
    test_id integer,
    state text NOT NULL CHECK (state IN ('creating', 'ready', 'out', 'dropping')),
    maker text NOT NULL,
    client text,
    created timestamptz NOT NULL DEFAULT now(),
    handed timestamptz,
    expires timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS serve_databases_expires ON pgtmp.serve_databases (expires);
";

/// Creates the schema if it is missing.
pub fn install(client: &mut impl GenericClient) -> Result<()> {
    let mut tx = client.transaction().context("cannot begin a transaction")?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .context("cannot lock the pgtmp schema")?;
    tx.batch_execute(SCHEMA)
        .context("cannot create schema pgtmp (the admin role needs CREATE on its database)")?;
    tx.commit().context("cannot create schema pgtmp")
}

/// One database serve handed out (or can hand out).
#[derive(Debug, Clone)]
pub struct Record {
    pub name: String,
    pub password: String,
    pub test_id: Option<i32>,
}

impl Record {
    fn of(row: &postgres::Row) -> Record {
        Record {
            name: row.get("name"),
            password: row.get("password"),
            test_id: row.get("test_id"),
        }
    }
}

/// A template as the API knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateState {
    Building,
    Ready,
    Discarded,
}

#[derive(Debug, Clone)]
pub struct Template {
    pub id: i32,
    pub state: TemplateState,
}

/// The name of template `id`'s database and role.
pub fn template_name(id: i32) -> String {
    format!("pgtmp_tpl_{id}")
}

/// The template of `hash`, if there is one.
pub fn template(client: &mut impl GenericClient, hash: &str) -> Result<Option<Template>> {
    let row = client
        .query_opt(
            "SELECT id, state FROM pgtmp.serve_templates WHERE hash = $1",
            &[&hash],
        )
        .context("cannot read pgtmp.serve_templates")?;
    Ok(row.map(|row| Template {
        id: row.get("id"),
        state: match row.get::<_, &str>("state") {
            "building" => TemplateState::Building,
            "ready" => TemplateState::Ready,
            _ => TemplateState::Discarded,
        },
    }))
}

/// Records a new template of `hash` being built (until `expires_in` seconds from now); None
/// when `hash` already has one that is not discarded.
pub fn begin_template(
    client: &mut impl GenericClient,
    hash: &str,
    password: &str,
    expires_in: f64,
) -> Result<Option<i32>> {
    let mut tx = client.transaction().context("cannot begin a transaction")?;
    tx.execute(
        "DELETE FROM pgtmp.serve_templates WHERE hash = $1 AND state = 'discarded'",
        &[&hash],
    )
    .context("cannot forget a discarded template")?;
    let row = tx
        .query_opt(
            "INSERT INTO pgtmp.serve_templates (hash, password, state, expires) \
             VALUES ($1, $2, 'building', now() + make_interval(secs => $3)) \
             ON CONFLICT (hash) DO NOTHING RETURNING id",
            &[&hash, &password, &expires_in],
        )
        .context("cannot record a template")?;
    tx.commit().context("cannot record a template")?;
    Ok(row.map(|row| row.get(0)))
}

/// Sets a template's state; false when `hash` has no template in one of the states `from`.
pub fn set_template_state(
    client: &mut impl GenericClient,
    hash: &str,
    from: &[&str],
    to: &str,
) -> Result<bool> {
    let from: Vec<String> = from.iter().map(|s| s.to_string()).collect();
    let n = client
        .execute(
            "UPDATE pgtmp.serve_templates SET state = $3, expires = NULL \
             WHERE hash = $1 AND state = ANY($2)",
            &[&hash, &from, &to],
        )
        .context("cannot update pgtmp.serve_templates")?;
    Ok(n > 0)
}

/// Forgets template `id` once no database of it is recorded (one another serve is dropping
/// right now keeps it, discarded, until that is done).
pub fn forget_template(client: &mut impl GenericClient, id: i32) -> Result<()> {
    client
        .execute(
            "DELETE FROM pgtmp.serve_templates WHERE id = $1 \
             AND NOT EXISTS (SELECT 1 FROM pgtmp.serve_databases WHERE template = $1)",
            &[&id],
        )
        .context("cannot update pgtmp.serve_templates")?;
    Ok(())
}

/// The advisory lock of template `id`, across every serve sharing the server: shared while a
/// copy of it is made, exclusive while it is dropped, so that no copy is made of a template
/// being dropped (it would be left behind, unrecorded).
fn template_lock(client: &mut impl GenericClient, id: i32, exclusive: bool) -> Result<()> {
    let take = if exclusive {
        "SELECT pg_advisory_lock($1, $2)"
    } else {
        "SELECT pg_advisory_lock_shared($1, $2)"
    };
    client
        .execute(take, &[&TEMPLATE_LOCKS, &id])
        .context("cannot lock a template")?;
    Ok(())
}

fn template_unlock(client: &mut impl GenericClient, id: i32, exclusive: bool) -> Result<()> {
    let free = if exclusive {
        "SELECT pg_advisory_unlock($1, $2)"
    } else {
        "SELECT pg_advisory_unlock_shared($1, $2)"
    };
    client
        .execute(free, &[&TEMPLATE_LOCKS, &id])
        .context("cannot unlock a template")?;
    Ok(())
}

/// Runs `work` holding template `id`'s lock (see [`template_lock`]).
pub fn with_template_lock<T>(
    client: &mut postgres::Client,
    id: i32,
    exclusive: bool,
    work: impl FnOnce(&mut postgres::Client) -> Result<T>,
) -> Result<T> {
    template_lock(client, id, exclusive)?;
    let result = work(client);
    let freed = template_unlock(client, id, exclusive);
    let value = result?;
    freed?;
    Ok(value)
}

/// True when template `id` is finalized and not discarded.
pub fn template_ready(client: &mut impl GenericClient, id: i32) -> Result<bool> {
    let row = client
        .query_opt(
            "SELECT 1 FROM pgtmp.serve_templates WHERE id = $1 AND state = 'ready'",
            &[&id],
        )
        .context("cannot read pgtmp.serve_templates")?;
    Ok(row.is_some())
}

/// Templates being built past their time (their client died): id and hash.
pub fn stale_templates(client: &mut impl GenericClient) -> Result<Vec<(i32, String)>> {
    let rows = client
        .query(
            "SELECT id, hash FROM pgtmp.serve_templates \
             WHERE state = 'building' AND expires < now()",
            &[],
        )
        .context("cannot read pgtmp.serve_templates")?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The ids of every template.
pub fn all_templates(client: &mut impl GenericClient) -> Result<Vec<(i32, String)>> {
    let rows = client
        .query("SELECT id, hash FROM pgtmp.serve_templates", &[])
        .context("cannot read pgtmp.serve_templates")?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The next test database number of template `id`.
pub fn next_test_id(client: &mut impl GenericClient, id: i32) -> Result<i32> {
    let row = client
        .query_one(
            "UPDATE pgtmp.serve_templates SET next_test = next_test + 1 WHERE id = $1 \
             RETURNING next_test - 1",
            &[&id],
        )
        .context("cannot number a test database")?;
    Ok(row.get(0))
}

/// Records a database about to be made by `maker`; it expires (is dropped by whoever looks)
/// after `expires_in` seconds unless it becomes ready.
pub fn begin_database(
    client: &mut impl GenericClient,
    record: &Record,
    template: Option<i32>,
    maker: &str,
    expires_in: f64,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO pgtmp.serve_databases \
             (name, password, template, test_id, state, maker, expires) \
             VALUES ($1, $2, $3, $4, 'creating', $5, now() + make_interval(secs => $6))",
            &[
                &record.name,
                &record.password,
                &template,
                &record.test_id,
                &maker,
                &expires_in,
            ],
        )
        .context("cannot record a database")?;
    Ok(())
}

/// Marks a made database ready to be handed out, for `expires_in` seconds (its maker renews
/// that while it runs, see [`renew`]).
pub fn database_ready(client: &mut impl GenericClient, name: &str, expires_in: f64) -> Result<()> {
    client
        .execute(
            "UPDATE pgtmp.serve_databases SET state = 'ready', \
             expires = now() + make_interval(secs => $2) WHERE name = $1",
            &[&name, &expires_in],
        )
        .context("cannot update pgtmp.serve_databases")?;
    Ok(())
}

/// Keeps the ready databases of a running maker from expiring.
pub fn renew(client: &mut impl GenericClient, maker: &str, expires_in: f64) -> Result<()> {
    client
        .execute(
            "UPDATE pgtmp.serve_databases SET expires = now() + make_interval(secs => $2) \
             WHERE maker = $1 AND state = 'ready'",
            &[&maker, &expires_in],
        )
        .context("cannot update pgtmp.serve_databases")?;
    Ok(())
}

/// Hands a ready database of `template` (None: a blank one) to `client_id` until `ttl`
/// seconds from now; None when none is ready.
pub fn take(
    client: &mut impl GenericClient,
    template: Option<i32>,
    client_id: &str,
    ttl: f64,
) -> Result<Option<Record>> {
    let row = client
        .query_opt(
            "UPDATE pgtmp.serve_databases SET state = 'out', client = $2, handed = now(), \
             expires = now() + make_interval(secs => $3) \
             WHERE name = (SELECT name FROM pgtmp.serve_databases \
                 WHERE template IS NOT DISTINCT FROM $1 AND state = 'ready' \
                 ORDER BY created LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING name, password, test_id",
            &[&template, &client_id, &ttl],
        )
        .context("cannot hand out a database")?;
    Ok(row.as_ref().map(Record::of))
}

/// How many blank databases `client_id` has out now.
pub fn out_for(client: &mut impl GenericClient, client_id: &str) -> Result<i64> {
    let row = client
        .query_one(
            "SELECT count(*) FROM pgtmp.serve_databases \
             WHERE client = $1 AND state = 'out' AND template IS NULL",
            &[&client_id],
        )
        .context("cannot read pgtmp.serve_databases")?;
    Ok(row.get(0))
}

/// Ready and creating databases of `template` (None: blank ones).
pub fn stocked(client: &mut impl GenericClient, template: Option<i32>) -> Result<i64> {
    let row = client
        .query_one(
            "SELECT count(*) FROM pgtmp.serve_databases \
             WHERE template IS NOT DISTINCT FROM $1 AND state IN ('ready', 'creating')",
            &[&template],
        )
        .context("cannot read pgtmp.serve_databases")?;
    Ok(row.get(0))
}

/// A handed-out or ready database by name: its record, state, template and client.
pub struct Found {
    pub record: Record,
    pub state: String,
    pub template: Option<i32>,
    pub client: Option<String>,
}

pub fn find(client: &mut impl GenericClient, name: &str) -> Result<Option<Found>> {
    let row = client
        .query_opt(
            "SELECT name, password, test_id, state, template, client \
             FROM pgtmp.serve_databases WHERE name = $1",
            &[&name],
        )
        .context("cannot read pgtmp.serve_databases")?;
    Ok(row.map(|row| Found {
        record: Record::of(&row),
        state: row.get("state"),
        template: row.get("template"),
        client: row.get("client"),
    }))
}

/// The test database `test_id` of template `template`.
pub fn find_test(
    client: &mut impl GenericClient,
    template: i32,
    test_id: i32,
) -> Result<Option<Found>> {
    let name: Option<String> = client
        .query_opt(
            "SELECT name FROM pgtmp.serve_databases WHERE template = $1 AND test_id = $2",
            &[&template, &test_id],
        )
        .context("cannot read pgtmp.serve_databases")?
        .map(|row| row.get(0));
    match name {
        Some(name) => find(client, &name),
        None => Ok(None),
    }
}

/// Puts a handed-out database back among the ready ones, with a new password.
pub fn give_back(client: &mut impl GenericClient, name: &str, password: &str) -> Result<()> {
    client
        .execute(
            "UPDATE pgtmp.serve_databases SET state = 'ready', client = NULL, handed = NULL, \
             password = $2 WHERE name = $1",
            &[&name, &password],
        )
        .context("cannot update pgtmp.serve_databases")?;
    Ok(())
}

/// Claims databases for dropping, at most `limit`: those given (None: those past their time,
/// and those whose dropper died a minute ago). A claimed one is handed out no more.
pub fn claim_drops(
    client: &mut impl GenericClient,
    which: Option<&[String]>,
    limit: i64,
) -> Result<Vec<String>> {
    let rows = match which {
        Some(names) => client.query(
            "UPDATE pgtmp.serve_databases SET state = 'dropping', expires = now() \
             WHERE name = ANY($1) AND (state <> 'dropping' OR expires < now() - interval '1 minute') \
             RETURNING name",
            &[&names],
        ),
        None => client.query(
            "UPDATE pgtmp.serve_databases SET state = 'dropping', expires = now() \
             WHERE name IN (SELECT name FROM pgtmp.serve_databases \
                 WHERE (state <> 'dropping' AND expires < now()) \
                    OR (state = 'dropping' AND expires < now() - interval '1 minute') \
                 ORDER BY expires LIMIT $1 FOR UPDATE SKIP LOCKED) \
             RETURNING name",
            &[&limit],
        ),
    }
    .context("cannot claim databases to drop")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The names of the databases of `template`.
pub fn names_of_template(client: &mut impl GenericClient, template: i32) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT name FROM pgtmp.serve_databases WHERE template = $1",
            &[&template],
        )
        .context("cannot read pgtmp.serve_databases")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The names of the databases `maker` made that nobody has been handed.
pub fn unhanded_of(client: &mut impl GenericClient, maker: &str) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT name FROM pgtmp.serve_databases \
             WHERE maker = $1 AND state IN ('ready', 'creating')",
            &[&maker],
        )
        .context("cannot read pgtmp.serve_databases")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Forgets a dropped database.
pub fn forget(client: &mut impl GenericClient, name: &str) -> Result<()> {
    client
        .execute(
            "DELETE FROM pgtmp.serve_databases WHERE name = $1",
            &[&name],
        )
        .context("cannot update pgtmp.serve_databases")?;
    Ok(())
}

/// The live figures of `/` and `/stats`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Figures {
    pub out: i64,
    pub ready: i64,
    pub templates: i64,
    pub oldest_age_seconds: Option<f64>,
    /// Ready test databases per finalized template's hash.
    pub pools: std::collections::BTreeMap<String, i64>,
}

pub fn figures(client: &mut impl GenericClient) -> Result<Figures> {
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'out'), \
                    count(*) FILTER (WHERE state = 'ready'), \
                    (SELECT count(*) FROM pgtmp.serve_templates WHERE state <> 'discarded'), \
                    extract(epoch FROM now() - min(handed) FILTER (WHERE state = 'out'))::float8 \
             FROM pgtmp.serve_databases",
            &[],
        )
        .context("cannot read pgtmp.serve_databases")?;
    let pools = client
        .query(
            "SELECT t.hash, count(d.name) FILTER (WHERE d.state = 'ready') \
             FROM pgtmp.serve_templates t LEFT JOIN pgtmp.serve_databases d ON d.template = t.id \
             WHERE t.state = 'ready' GROUP BY t.hash",
            &[],
        )
        .context("cannot read pgtmp.serve_databases")?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    Ok(Figures {
        out: row.get(0),
        ready: row.get(1),
        templates: row.get(2),
        oldest_age_seconds: row.get(3),
        pools,
    })
}
