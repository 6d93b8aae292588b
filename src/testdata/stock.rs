//! Clones: databases copied from the template (the loaded state) ahead of time, so that
//! `pgtmp clone` only renames one; a detached process tops the stock up again. The stock's
//! depth follows demand: a clone that finds it (nearly) empty doubles it, up to
//! [`MAX_STOCK`], and the refill after it runs at the caller's priority, by as many refillers
//! at once as there are cores (up to [`MAX_REFILLERS`]). Copies use `STRATEGY FILE_COPY`
//! where the server has it (15 and later): with the test settings (no fsync) its checkpoint is
//! cheap, and it stays at ~19 ms per copy where the default WAL_LOG takes 29 ms and grows with
//! the number of databases (44 ms after 40; measured on 15).
//!
//! ```text
//! pgtmp_template          the loaded state; connections refused, so copying it never fails
//! pgtmp_new_<name>        a copy being set up; never handed out
//! pgtmp_stock_<name>      a complete copy; a clone renames it to test_<name>
//! test_<name>             a clone handed out; dropped with the cluster, or by clone --drop
//! ```
//!
//! In the cluster's directory: `stock.lock` (and `stock.lock.N`), the refillers' turns, and
//! `stock.depth`, the stock's depth once demand raised it.

use crate::os::secret;
use crate::output::{exit, trace};
use crate::server::initdb::quote_ident;
use crate::state::instance::NAME_ALPHABET;
use crate::state::ownership::lock_file;
use crate::testdata::files::{self, NOW_SEARCH_PATH, Server, TEMPLATE};
use anyhow::{Context, Result, bail};
use nix::fcntl::FlockArg;
use postgres::error::SqlState;
use std::path::Path;

/// Copies kept ready per cluster until demand raises it.
pub const STOCK_SIZE: usize = 3;
/// The deepest the stock grows.
const MAX_STOCK: usize = 32;
/// Most refillers at work at once.
const MAX_REFILLERS: usize = 4;
const DEPTH_FILE: &str = "stock.depth";
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

/// How a clone was had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Had {
    /// Renamed from the stock, which still holds more.
    Claimed,
    /// Renamed from the stock, which is (nearly) empty now: demand outruns it.
    ClaimedLast,
    /// Copied now: the stock was empty.
    Copied,
}

/// A fresh clone's name: a stock copy renamed (atomic, so concurrent callers never get the same
/// one), or, with the stock empty, a copy made now (PGTMP_TRACE says which).
pub fn claim(client: &mut postgres::Client, user: &str) -> Result<(String, Had)> {
    let clone = format!("{CLONE}{}", new_name()?);
    // The simple protocol: one round trip, where a prepared query takes two.
    let stock = client
        .simple_query(&format!(
            "SELECT datname FROM pg_database WHERE starts_with(datname::text, '{STOCK}')"
        ))
        .context("cannot list the clone stock")?;
    let names: Vec<String> = stock
        .iter()
        .filter_map(|message| match message {
            postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    let last = names.len() <= 1;
    for name in &names {
        let sql = format!(
            "ALTER DATABASE {} RENAME TO {}",
            quote_ident(name),
            quote_ident(&clone)
        );
        match client.batch_execute(&sql) {
            Ok(()) => {
                trace::phase("claim");
                return Ok((clone, if last { Had::ClaimedLast } else { Had::Claimed }));
            }
            // Another caller renamed it first.
            Err(err) if err.code() == Some(&SqlState::UNDEFINED_DATABASE) => continue,
            Err(err) => return Err(err).context("cannot claim a database from the clone stock"),
        }
    }
    trace::phase("stock-empty");
    let now = ensure_template(client, user)?;
    let strategy = copy_strategy(client)?;
    create_copy(client, &clone, user, now, strategy)?;
    trace::phase("copy");
    Ok((clone, Had::Copied))
}

/// After a clone that found the stock (nearly) empty: doubles the depth recorded in the
/// cluster's directory `dir`, up to [`MAX_STOCK`].
pub fn raise_depth(dir: &Path) -> Result<()> {
    let depth = depth(dir);
    let dir = crate::state::safefs::Dir::open(dir)?;
    dir.write_atomic(
        DEPTH_FILE,
        format!("{}\n", (depth * 2).min(MAX_STOCK)).as_bytes(),
    )
}

/// The stock's depth: [`STOCK_SIZE`] unless demand raised it.
fn depth(dir: &Path) -> usize {
    crate::state::safefs::Dir::open(dir)
        .ok()
        .and_then(|dir| dir.read_number::<usize>(DEPTH_FILE))
        .map_or(STOCK_SIZE, |depth| depth.clamp(STOCK_SIZE, MAX_STOCK))
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

/// How CREATE DATABASE is to copy, appended to it: 15 and later choose (see the module's
/// comment); older ones only copy files.
fn copy_strategy(client: &mut postgres::Client) -> Result<&'static str> {
    Ok(if server_version_num(client)? >= 150_000 {
        " STRATEGY FILE_COPY"
    } else {
        ""
    })
}

/// Copies the template into `name` the [`copy_strategy`] way, with the template's
/// search_path when `now` (set by --now; `ensure_template` tells).
fn create_copy(
    client: &mut postgres::Client,
    name: &str,
    user: &str,
    now: bool,
    strategy: &str,
) -> Result<()> {
    // One statement per message: CREATE DATABASE refuses to run in the implicit transaction
    // of a multi-statement message.
    client
        .batch_execute(&format!(
            "CREATE DATABASE {} TEMPLATE {TEMPLATE} OWNER {}{strategy}",
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

/// The server's version as a number, e.g. 150018.
fn server_version_num(client: &mut postgres::Client) -> Result<u32> {
    let messages = client
        .simple_query("SHOW server_version_num")
        .context("cannot ask the server for its version")?;
    messages
        .iter()
        .find_map(|message| match message {
            postgres::SimpleQueryMessage::Row(row) => row.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .context("the server did not say its version")
}

/// Tops the stock up to its depth. Up to [`MAX_REFILLERS`] (and no more than there are cores)
/// work at once, each in a turn of its own; when every turn is taken, a refiller waits for the
/// first. Each counts again once it holds its turn, so no claim goes unnoticed; together they
/// may make a few more copies than the depth. With `quiet` the server process that copies
/// gets the lowest priority, as the caller should have (nobody waits for the stock yet).
pub fn refill(server: &Server, quiet: bool) -> Result<()> {
    let _turn = take_turn(server.socket_dir)?;
    let mut client = files::connect(server, "postgres")?;
    if quiet && let Ok(row) = client.query_one("SELECT pg_backend_pid()", &[]) {
        crate::os::detach::lower_priority_of(crate::os::process::Pid::from_raw(row.get(0)));
    }
    let target = depth(server.socket_dir);
    let now = ensure_template(&mut client, server.user)?;
    let strategy = copy_strategy(&mut client)?;
    loop {
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_database WHERE starts_with(datname::text, $1)",
                &[&STOCK],
            )
            .context("cannot count the clone stock")?;
        let count: i64 = row.get(0);
        if count as usize >= target {
            return Ok(());
        }
        let name = new_name()?;
        let building = format!("{NEW}{name}");
        create_copy(&mut client, &building, server.user, now, strategy)?;
        client
            .batch_execute(&format!(
                "ALTER DATABASE {} RENAME TO {}",
                quote_ident(&building),
                quote_ident(&format!("{STOCK}{name}"))
            ))
            .context("cannot add a copy to the clone stock")?;
    }
}

/// A refiller's turn: the first free of the turn locks in `dir`, else the wait for the first.
fn take_turn(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let turns = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_REFILLERS);
    let path = |i: usize| {
        if i == 0 {
            dir.join(LOCK)
        } else {
            dir.join(format!("{LOCK}.{i}"))
        }
    };
    for i in 0..turns {
        if let Ok(turn) = lock_file(&path(i), FlockArg::LockExclusiveNonblock) {
            return Ok(turn);
        }
    }
    lock_file(&path(0), FlockArg::LockExclusive)
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
