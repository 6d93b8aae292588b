//! Clones: databases copied from the template (the loaded state) ahead of time, so that
//! `pgtmp clone` only renames one; a detached process tops the stock up again.
//!
//! ```text
//! pgtmp_template          the loaded state; connections refused, so copying it never fails
//! pgtmp_new_<name>        a copy being set up; never handed out
//! pgtmp_stock_<name>      a complete copy; a clone renames it to test_<name>
//! test_<name>             a clone handed out; dropped with the cluster, or by clone --drop
//! ```

use crate::os::secret;
use crate::output::exit;
use crate::server::initdb::quote_ident;
use crate::state::instance::NAME_ALPHABET;
use crate::state::ownership::lock_file;
use crate::testdata::files::{self, NOW_SEARCH_PATH, Server, TEMPLATE};
use anyhow::{Context, Result, bail};
use nix::fcntl::FlockArg;
use postgres::error::SqlState;

/// Copies kept ready per cluster.
pub const STOCK_SIZE: usize = 3;
const STOCK: &str = "pgtmp_stock_";
const NEW: &str = "pgtmp_new_";
/// Clones are `test_` and eight letters or digits.
pub const CLONE: &str = "test_";
const NAME_LEN: usize = 8;
/// The lock refillers take turns on, in the cluster's directory.
pub const LOCK: &str = "stock.lock";

fn new_name() -> Result<String> {
    secret::random_string(NAME_ALPHABET, NAME_LEN)
}

/// True for the names clones get (the only databases `clone --drop` drops).
pub fn is_clone(name: &str) -> bool {
    name.strip_prefix(CLONE).is_some_and(|rest| {
        rest.len() == NAME_LEN && rest.bytes().all(|b| NAME_ALPHABET.contains(&b))
    })
}

/// A fresh clone's name: a stock copy renamed (atomic, so concurrent callers never get the same
/// one), or, with the stock empty, a copy made now.
pub fn claim(client: &mut postgres::Client, user: &str) -> Result<String> {
    let clone = format!("{CLONE}{}", new_name()?);
    // The simple protocol: one round trip, where a prepared query takes two.
    let stock = client
        .simple_query(&format!(
            "SELECT datname FROM pg_database WHERE starts_with(datname::text, '{STOCK}')"
        ))
        .context("cannot list the clone stock")?;
    let names = stock.iter().filter_map(|message| match message {
        postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
        _ => None,
    });
    for name in names {
        let sql = format!(
            "ALTER DATABASE {} RENAME TO {}",
            quote_ident(&name),
            quote_ident(&clone)
        );
        match client.batch_execute(&sql) {
            Ok(()) => return Ok(clone),
            // Another caller renamed it first.
            Err(err) if err.code() == Some(&SqlState::UNDEFINED_DATABASE) => continue,
            Err(err) => return Err(err).context("cannot claim a database from the clone stock"),
        }
    }
    let now = ensure_template(client, user)?;
    create_copy(client, &clone, user, now)?;
    Ok(clone)
}

/// Creates the template from an empty database when nothing was loaded (no -f or --now).
fn ensure_template(client: &mut postgres::Client, user: &str) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT count(*), bool_or(s.setconfig IS NOT NULL) \
             FROM pg_database d LEFT JOIN pg_db_role_setting s \
               ON s.setdatabase = d.oid AND s.setrole = 0 \
             WHERE d.datname = $1",
            &[&TEMPLATE],
        )
        .context("cannot look up the template for clones")?;
    let (count, has_settings): (i64, Option<bool>) = (row.get(0), row.get(1));
    if count > 0 {
        return Ok(has_settings.unwrap_or(false));
    }
    // `test` started as a copy of template1; so is an empty template.
    let sql = format!(
        "CREATE DATABASE {TEMPLATE} TEMPLATE template1 OWNER {}",
        quote_ident(user)
    );
    match client.batch_execute(&sql) {
        Ok(()) => {}
        // Another first clone created it meanwhile: 42P04 when it had committed by then, a
        // unique violation on pg_database's name when both inserted at once.
        Err(err)
            if err.code() == Some(&SqlState::DUPLICATE_DATABASE)
                || err.code() == Some(&SqlState::UNIQUE_VIOLATION) =>
        {
            return Ok(false);
        }
        Err(err) => return Err(err).context("cannot create the template for clones"),
    }
    client
        .batch_execute(&format!(
            "ALTER DATABASE {TEMPLATE} ALLOW_CONNECTIONS false"
        ))
        .context("cannot close the template for clones to connections")?;
    Ok(false)
}

/// Copies the template into `name`, with the template's search_path when `now` (set by
/// --now; `ensure_template` tells).
fn create_copy(client: &mut postgres::Client, name: &str, user: &str, now: bool) -> Result<()> {
    // One statement per message: CREATE DATABASE refuses to run in the implicit transaction
    // of a multi-statement message.
    client
        .batch_execute(&format!(
            "CREATE DATABASE {} TEMPLATE {TEMPLATE} OWNER {}",
            quote_ident(name),
            quote_ident(user)
        ))
        .with_context(|| format!("cannot copy the template into {name}"))?;
    if now {
        client
            .batch_execute(&format!(
                "ALTER DATABASE {} SET search_path = {NOW_SEARCH_PATH}",
                quote_ident(name)
            ))
            .with_context(|| format!("cannot set the search_path of {name}"))?;
    }
    Ok(())
}

/// Tops the stock up to STOCK_SIZE. Refillers take turns on a lock in the cluster's directory
/// and count again once they hold it, so no claim goes unnoticed.
pub fn refill(server: &Server) -> Result<()> {
    let _lock = lock_file(&server.socket_dir.join(LOCK), FlockArg::LockExclusive)?;
    let mut client = files::connect(server, "postgres")?;
    // The copying is done by the server process serving this session: let it yield too.
    if let Ok(row) = client.query_one("SELECT pg_backend_pid()", &[]) {
        crate::os::detach::lower_priority_of(crate::os::process::Pid::from_raw(row.get(0)));
    }
    let now = ensure_template(&mut client, server.user)?;
    loop {
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_database WHERE starts_with(datname::text, $1)",
                &[&STOCK],
            )
            .context("cannot count the clone stock")?;
        let count: i64 = row.get(0);
        if count as usize >= STOCK_SIZE {
            return Ok(());
        }
        let name = new_name()?;
        let building = format!("{NEW}{name}");
        create_copy(&mut client, &building, server.user, now)?;
        client
            .batch_execute(&format!(
                "ALTER DATABASE {} RENAME TO {}",
                quote_ident(&building),
                quote_ident(&format!("{STOCK}{name}"))
            ))
            .context("cannot add a copy to the clone stock")?;
    }
}

/// Drops a clone at once, disconnecting its sessions.
pub fn drop_clone(client: &mut postgres::Client, name: &str) -> Result<()> {
    if !is_clone(name) {
        return Err(exit::usage(format!(
            "database {name} is not a clone; `pgtmp clone --drop` takes a URL `pgtmp clone` printed"
        )));
    }
    match client.batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", quote_ident(name))) {
        Ok(()) => Ok(()),
        Err(err) if err.code() == Some(&SqlState::UNDEFINED_DATABASE) => {
            bail!("there is no clone {name} (dropped already?)")
        }
        Err(err) => Err(err).with_context(|| format!("cannot drop clone {name}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_names() {
        assert!(is_clone("test_ab12cd34"));
        assert!(!is_clone("test"));
        assert!(!is_clone("test_AB12CD34"));
        assert!(!is_clone("pgtmp_template"));
        assert!(!is_clone("test_ab12cd345"));
    }
}
