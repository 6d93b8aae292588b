//! `pgtmp selftest`: start a cluster, query it, stop it, and print each step checked (pg_tmp's
//! `selftest`, a smoke test for CI); the first step that fails is named and exits 1.

use crate::cli::{GlobalArgs, StartArgs};
use crate::lifecycle::start::{self, Launched};
use crate::lifecycle::watchdog;
use crate::os::process;
use crate::server::client;
use crate::state::safefs;
use anyhow::{Context, Result, anyhow, bail};
use std::io::Write;
use std::time::{Duration, Instant};

/// What the query step asks, and the answer it expects (pg_tmp's selftest asks the same).
const QUERY: &str = "select 5";
const ANSWER: i32 = 5;

pub fn run(global: &GlobalArgs) -> Result<()> {
    let request = StartArgs::default().request(global)?;
    let began = Instant::now();
    let launched = start::launch(&request, None).map_err(|err| failed("start", err))?;
    let cluster = &launched.cluster;
    say(&format!(
        "ok    start  {} (server pid {}, PostgreSQL {} in {}) in {} ms",
        cluster.url,
        cluster.server_pid,
        launched.install.version().unwrap_or_else(|_| "?".into()),
        cluster.bindir.display(),
        began.elapsed().as_millis()
    ));
    let checked = query(&launched).and_then(|()| psql(&launched));
    let stopped = stop(&launched);
    let result = match (checked, stopped) {
        (Err(err), _) => Err(err),
        (Ok(()), Err(err)) => Err(failed("stop", err)),
        (Ok(()), Ok(())) => Ok(()),
    };
    // The start took a pool entry: its replacement is prepared in the background, as after
    // any start.
    launched.refill_pool();
    result?;
    say("OK");
    Ok(())
}

/// One line of the report, on stdout as soon as the step is done.
fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

fn failed(step: &str, err: anyhow::Error) -> anyhow::Error {
    anyhow!("selftest failed at step `{step}`: {err:#}")
}

/// `select 5` in database `test`, through the server's socket.
fn query(launched: &Launched) -> Result<()> {
    let cluster = &launched.cluster;
    let answer = client::config(
        &cluster.socket_dir,
        cluster.port,
        &cluster.user,
        "test",
        "pgtmp selftest",
    )
    .connect_timeout(Duration::from_secs(10))
    .connect(postgres::NoTls)
    .and_then(|mut session| session.query_one(QUERY, &[]))
    .map(|row| row.get::<_, i32>(0))
    .with_context(|| format!("`{QUERY}` in database test as {}", cluster.user))
    .map_err(|err| failed("query", err))?;
    if answer != ANSWER {
        return Err(failed(
            "query",
            anyhow!("`{QUERY}` answered {answer}, not {ANSWER}"),
        ));
    }
    say(&format!(
        "ok    query  `{QUERY}` answered {ANSWER} in database test as {}, through the socket",
        cluster.user
    ));
    Ok(())
}

/// The same query with the installation's psql, given the URL exactly as printed: what a
/// shell test does with `$(pgtmp)`.
fn psql(launched: &Launched) -> Result<()> {
    let psql = launched.install.bindir.join("psql");
    if !psql.is_file() {
        say(&format!(
            "skip  psql   no psql in {}: the URL was not tried with libpq",
            launched.install.bindir.display()
        ));
        return Ok(());
    }
    let out = process::run_checked(
        process::pg_command(&psql)
            .args(["--no-psqlrc", "-At", "-c", QUERY])
            .arg(&launched.cluster.url),
        "psql",
    )
    .map_err(|err| failed("psql", err))?;
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if printed != ANSWER.to_string() {
        return Err(failed(
            "psql",
            anyhow!("psql printed '{printed}' for `{QUERY}`, not {ANSWER}"),
        ));
    }
    say(&format!(
        "ok    psql   psql -At -c '{QUERY}' URL printed {ANSWER}"
    ));
    Ok(())
}

/// Stops the cluster as its idle timeout would, then checks that its server and directory are
/// gone.
fn stop(launched: &Launched) -> Result<()> {
    let cluster = &launched.cluster;
    let began = Instant::now();
    let dir = cluster.socket_dir.display().to_string();
    watchdog::stop_watchdog(cluster.watchdog_pid, &dir)?;
    if process::alive(cluster.server_pid) {
        bail!("the server (pid {}) still runs", cluster.server_pid);
    }
    if safefs::Dir::open_if_exists(&cluster.socket_dir)?.is_some() {
        bail!("{dir} is still there");
    }
    say(&format!(
        "ok    stop   server stopped and {dir} removed in {} ms",
        began.elapsed().as_millis()
    ));
    Ok(())
}
