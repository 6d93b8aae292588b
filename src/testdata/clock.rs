//! Frozen time for a whole cluster (`--now`, `pgtmp now`, `pgtmp.set_now()`).
//!
//! The clock is one state for the cluster, kept in a shared catalog so that every database
//! reads the same: the comment on tablespace `pg_global`, `fixed <instant>` or `clock <offset>`
//! (from `clock_timestamp()`), both written in forms that read back the same whatever a
//! session's DateStyle, TimeZone or IntervalStyle. Being a catalog row, it changes with the
//! transaction that sets it: every other session sees it from its next statement after the
//! commit. Schema `pgtmp` holds `now()` (with `transaction_timestamp()` and
//! `statement_timestamp()`), which read it, and `set_now(text)`, which changes it; it is made
//! in `template1` (so every database created later has it), `postgres` and `test`, and the
//! cluster's search_path puts it before `pg_catalog`.

use crate::output::exit;
use anyhow::{Context, Result};
use postgres::Client;
use std::time::{Duration, Instant};

/// The search_path of a cluster with `--now`: the schema of the shadowing now() comes before
/// pg_catalog (which is only searched first when it is not named), and after `"$user"` and
/// `public`, so that objects created without a schema still go to `public`.
pub const NOW_SEARCH_PATH: &str = "\"$user\", public, pgtmp, pg_catalog";

/// The databases that get schema `pgtmp` at the start: `template1` for every later
/// `CREATE DATABASE`, and those that exist already.
const DATABASES: &[&str] = &["template1", "postgres", crate::output::url::DATABASE];

/// The clock's state: the comment on `pg_global` (oid 1664, a row of pg_tablespace, 1213).
const STATE: &str = "(SELECT description FROM pg_catalog.pg_shdescription \
                     WHERE objoid = 1664 AND classoid = 1213)";

/// How an instant is written into the state: in UTC, with the era (`0500-06-01 BC`), in a form
/// that reads back the same under any DateStyle.
const INSTANT: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00\" BC'";

/// The functions of schema `pgtmp`, made or replaced.
fn functions_sql() -> String {
    format!(
        "CREATE SCHEMA IF NOT EXISTS pgtmp;
         GRANT USAGE ON SCHEMA pgtmp TO PUBLIC;
         CREATE OR REPLACE FUNCTION pgtmp.now() RETURNS pg_catalog.timestamptz
             LANGUAGE sql STABLE PARALLEL SAFE AS $f$
             SELECT CASE
                 WHEN s LIKE 'fixed %' THEN pg_catalog.substr(s, 7)::pg_catalog.timestamptz
                 WHEN s LIKE 'clock %' THEN pg_catalog.clock_timestamp()
                     + pg_catalog.substr(s, 7)::pg_catalog.interval
                 ELSE pg_catalog.now() END
             FROM (SELECT {STATE} AS s) AS clock $f$;
         COMMENT ON FUNCTION pgtmp.now() IS 'pgtmp --now: shadows pg_catalog.now()';
         CREATE OR REPLACE FUNCTION pgtmp.transaction_timestamp() RETURNS pg_catalog.timestamptz
             LANGUAGE sql STABLE PARALLEL SAFE AS $f$ SELECT pgtmp.now() $f$;
         CREATE OR REPLACE FUNCTION pgtmp.statement_timestamp() RETURNS pg_catalog.timestamptz
             LANGUAGE sql STABLE PARALLEL SAFE AS $f$ SELECT pgtmp.now() $f$;
         CREATE OR REPLACE FUNCTION pgtmp.set_now(value text) RETURNS pg_catalog.timestamptz
             LANGUAGE plpgsql VOLATILE
             SET IntervalStyle = 'iso_8601' SET search_path = pg_catalog, pg_temp AS $f$
         DECLARE
             v text := btrim(value);
             s text;
             delta interval;
             next text;
         BEGIN
             -- One change at a time for the whole cluster: two moves at once both count.
             LOCK TABLE pg_shdescription IN SHARE ROW EXCLUSIVE MODE;
             s := {STATE};
             IF v = 'clock' THEN
                 next := 'clock PT0S';
             ELSIF v LIKE '+%' OR v LIKE '-%' THEN
                 -- The sign applies to the whole interval: '-1 day 2 hours' is 26 hours back.
                 delta := substr(v, 2)::interval;
                 IF v LIKE '-%' THEN
                     delta := -delta;
                 END IF;
                 IF NOT isfinite(delta) THEN
                     next := NULL;
                 -- Without a state yet (--now '-1 day' at the start): the clock, shifted.
                 ELSIF s IS NULL OR s LIKE 'clock %' THEN
                     next := 'clock ' || (coalesce(substr(s, 7), 'PT0S')::interval + delta)::text;
                 ELSE
                     next := 'fixed ' || to_char((pgtmp.now() + delta) AT TIME ZONE 'UTC',
                         {INSTANT});
                 END IF;
             ELSE
                 next := 'fixed ' || to_char(v::timestamptz AT TIME ZONE 'UTC', {INSTANT});
             END IF;
             IF next IS NULL THEN
                 -- NULL, or an instant without a form (infinity): nothing to freeze at.
                 RAISE EXCEPTION 'not a finite timestamp or interval: %', quote_nullable(value)
                     USING ERRCODE = 'invalid_datetime_format';
             END IF;
             EXECUTE format('COMMENT ON TABLESPACE pg_global IS %L', next);
             RETURN pgtmp.now();
         END $f$;
         COMMENT ON FUNCTION pgtmp.set_now(text) IS
             'pgtmp: set now() for the whole cluster: a timestamp, clock, +INTERVAL or -INTERVAL';"
    )
}

/// The forms `pgtmp now` and `--now` take, for error messages.
const FORMS: &str = "give a timestamp such as '2024-01-01 12:00:00+00', clock, or an interval \
                     such as '+31 days' or '-1 hour'";

/// Installs frozen time in a running cluster, whose databases `connect` opens a new session to,
/// and sets it to `value` (`clock` or a timestamp, as `--now` takes it). An invalid value is a
/// usage error.
pub fn install(connect: impl Fn(&str) -> Result<Client>, value: &str) -> Result<()> {
    for database in DATABASES {
        connect(database)?
            .batch_execute(&functions_sql())
            .with_context(|| format!("cannot install the --now functions in {database}"))?;
    }
    let mut client = connect(crate::output::url::DATABASE)?;
    set(&mut client, value, "--now")?;
    client
        .batch_execute(&format!("ALTER SYSTEM SET search_path = {NOW_SEARCH_PATH}"))
        .and_then(|()| client.batch_execute("SELECT pg_catalog.pg_reload_conf()"))
        .context("cannot set the cluster's search_path for --now")?;
    await_search_path(&connect)
}

/// Waits until a new session gets the search_path just set (the postmaster reloads its
/// configuration on its own time).
fn await_search_path(connect: &impl Fn(&str) -> Result<Client>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = connect("postgres")?
            .query_one("SELECT pg_catalog.current_setting('search_path')", &[])
            .context("cannot read the search_path")?;
        let path: String = row.get(0);
        if path.contains("pgtmp") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("the server did not take the search_path for --now within 10 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sets the cluster's clock to `value` (a timestamp, `clock`, `+INTERVAL`, `-INTERVAL`) and
/// returns the new now() as the server prints it. A value the server cannot read is a usage
/// error naming it (`what`: `--now` or `pgtmp now`), and changes nothing.
pub fn set(client: &mut Client, value: &str, what: &str) -> Result<String> {
    client
        .batch_execute("SET DateStyle = 'ISO'")
        .context("cannot set DateStyle")?;
    let row = client
        .query_one("SELECT pgtmp.set_now($1)::text", &[&value])
        .map_err(|err| match err.as_db_error() {
            Some(db) if db.code().code().starts_with("22") => {
                exit::usage(format!("{what} '{value}': {}; {FORMS}", db.message()))
            }
            // No schema pgtmp, or no set_now in it: a cluster without --now.
            Some(db)
                if (db.code() == &postgres::error::SqlState::UNDEFINED_FUNCTION
                    && db.message().contains("set_now"))
                    || db.code() == &postgres::error::SqlState::INVALID_SCHEMA_NAME =>
            {
                exit::usage(format!(
                    "{what}: this cluster has no frozen time; start it with --now clock (or \
                     --now TIMESTAMP) to be able to move its time"
                ))
            }
            _ => anyhow::Error::new(err).context("cannot set the clock"),
        })?;
    Ok(row.get(0))
}

/// The cluster's now() as frozen (or as the clock says without `--now`).
pub fn read(client: &mut Client) -> Result<String> {
    client
        .batch_execute("SET DateStyle = 'ISO'")
        .context("cannot set DateStyle")?;
    let row = client
        .query_one(
            "SELECT now()::text, to_regproc('pgtmp.set_now') IS NOT NULL",
            &[],
        )
        .context("cannot read now()")?;
    if !row.get::<_, bool>(1) {
        return Err(exit::usage(
            "pgtmp now: this cluster has no frozen time; start it with --now clock (or --now \
             TIMESTAMP) to be able to move its time",
        ));
    }
    Ok(row.get(0))
}
