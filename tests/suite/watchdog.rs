//! The watchdog: idle timeout with and without clients, its invisible probe, surviving the
//! caller's signals, cleaning up after a dead postmaster, and `-k`.

use crate::common::*;
use nix::sys::signal::Signal;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

both_invokers!(
    idle_cluster_goes_away,
    idle_client_keeps_it_alive,
    running_query_keeps_it_alive,
    probe_is_invisible,
    survives_signals_to_the_callers_group,
    dead_postmaster_is_cleaned_up,
    sigterm_to_the_server_ends_it,
    keep_leaves_a_restartable_directory,
);

/// With `-w 2`, "gone within 3 s" of the last client, plus slack for a busy machine.
fn stop_bound() -> Duration {
    Duration::from_secs(3) + SLACK
}

/// Not stopped before the idle timeout (2 s): the watchdog counts from the poll that first saw
/// no client, never from an earlier one. Less a few ms, for where the test starts its clock.
const TOO_EARLY: Duration = Duration::from_millis(1950);

/// Waits for the server to exit and its directory to vanish; returns how long that took.
fn time_until_gone(dir: &Path, postmaster: i32, what: &str) -> Duration {
    let limit = stop_bound() + Duration::from_secs(10);
    let took = time_until(limit, || !alive(postmaster) && !dir.exists()).unwrap_or_else(|| {
        panic!(
            "{what}: after {limit:?} the server is {} and {} {}",
            if alive(postmaster) { "running" } else { "gone" },
            dir.display(),
            if dir.exists() { "exists" } else { "is gone" }
        )
    });
    eprintln!("{what}: server and directory gone after {took:?}");
    took
}

/// No client at all: the server stops and the directory is deleted within 3 s of the start,
/// but not before the timeout.
fn idle_cluster_goes_away(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let url = sandbox.start(&["-w", "2"]);
    let dir = parse_socket_url(&url).dir;
    let postmaster = postmaster_pid(&dir).expect("no postmaster.pid");
    let took = time_until_gone(&dir, postmaster, "idle cluster with -w 2");
    assert!(
        took <= stop_bound(),
        "an idle cluster with -w 2 took {took:?} to go (bound {:?})",
        stop_bound()
    );
    assert!(
        took >= TOO_EARLY,
        "stopped after only {took:?}, before its -w 2"
    );
    sandbox.assert_no_process(&dir, "after the idle timeout");
    assert!(sandbox.instance_dirs().is_empty());
}

/// A client holding an idle connection keeps the server past the timeout; once it
/// disconnects, the server and directory are gone within 3 s.
fn idle_client_keeps_it_alive(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let url = sandbox.start(&["-w", "2"]);
    let dir = parse_socket_url(&url).dir;
    let postmaster = postmaster_pid(&dir).expect("no postmaster.pid");
    let mut session = sandbox.psql_session(&url);
    assert_eq!(session.query_line("select 'connected';"), "connected");
    // Observing that nothing happens takes time: twice the timeout, with the client idle.
    let stopped = wait_until(Duration::from_secs(4), || {
        !alive(postmaster) || !dir.exists()
    });
    assert!(
        !stopped,
        "the server stopped although a client was connected"
    );
    assert_eq!(session.query_line("select 'still here';"), "still here");
    session.close();
    let took = time_until_gone(&dir, postmaster, "after the last client left");
    assert!(
        took <= stop_bound(),
        "gone only {took:?} after the last client disconnected (bound {:?})",
        stop_bound()
    );
    assert!(
        took >= TOO_EARLY,
        "stopped {took:?} after the client left, before -w 2"
    );
    sandbox.assert_no_process(&dir, "after the last client left");
}

/// A query running longer than the timeout is not cut off.
fn running_query_keeps_it_alive(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let url = sandbox.start(&["-w", "2"]);
    let dir = parse_socket_url(&url).dir;
    let postmaster = postmaster_pid(&dir).expect("no postmaster.pid");
    assert_eq!(
        sandbox.psql(&url, "select pg_sleep(4.5), 'done'"),
        "|done",
        "a 4.5 s query under -w 2"
    );
    let took = time_until_gone(&dir, postmaster, "after the long query");
    assert!(
        took <= stop_bound(),
        "gone only {took:?} after the query ended"
    );
}

/// The watchdog's polling does not show as a session in `test` (so it never blocks CREATE
/// DATABASE ... TEMPLATE test or DROP DATABASE test) and adds nothing to the log, even with
/// connections and statements logged.
fn probe_is_invisible(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let url = sandbox.start(&[
        "-w",
        UNTIL_STOPPED,
        "-o",
        "-c log_connections=on -c log_statement=all",
    ]);
    let dir = parse_socket_url(&url).dir;
    let admin = postgres_db_url(&url);
    assert_eq!(
        sandbox.psql(
            &admin,
            "select count(*) from pg_stat_activity where datname = 'test'"
        ),
        "0",
        "sessions in database test while no client is connected"
    );

    let log = dir.join("postgres.log");
    let before = fs::read_to_string(&log).unwrap();
    // Ten polls' worth of time: the watchdog probes the server every 200 ms (TICK in
    // src/lifecycle/watchdog/supervise.rs).
    let grew = wait_until(Duration::from_secs(2), || {
        fs::metadata(&log).unwrap().len() != before.len() as u64
    });
    let after = fs::read_to_string(&log).unwrap();
    assert!(
        !grew,
        "postgres.log grew while no client was connected:\n{}",
        &after[before.len().min(after.len())..]
    );

    sandbox.psql(&admin, "create database copy template test");
    sandbox.psql(&admin, "drop database test");
    assert_eq!(
        sandbox.psql(
            &admin,
            "select string_agg(datname, ',') from pg_database where datname in ('copy', 'test')"
        ),
        "copy"
    );
    // The watchdog still looks after the cluster.
    let stopped = sandbox.run(&["stop", &url]);
    assert!(stopped.success(), "{stopped}");
    assert!(!dir.exists(), "pgtmp stop left {}", dir.display());
}

/// SIGINT, SIGTERM or SIGHUP sent to the caller's process group (Ctrl-C, kill, a closing
/// terminal) after `url=$(pgtmp)` leave the cluster running.
fn survives_signals_to_the_callers_group(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    for (name, sig) in [
        ("INT", Signal::SIGINT),
        ("TERM", Signal::SIGTERM),
        ("HUP", Signal::SIGHUP),
    ] {
        let file = sandbox.path(&format!("url-{name}"));
        let script = format!(
            r#"url=$("$PGTMP" -w {UNTIL_STOPPED}) && echo "$url" > {}; kill -{name} 0; sleep 10"#,
            file.display()
        );
        let out = run(&mut sandbox.shell_in_new_session(&script), PGTMP_LIMIT);
        assert_eq!(
            out.status.signal(),
            Some(sig as i32),
            "the caller's shell should have died of SIG{name}:\n{out}"
        );
        let url = fs::read_to_string(&file).unwrap();
        let dir = parse_socket_url(url.trim()).dir;
        let watchdog = watchdog_pid(&dir).expect("no pgtmp.state");
        // A watchdog that got the signal would stop at once; give it the chance to (wrongly).
        let stopped = wait_until(Duration::from_millis(500), || {
            !alive(watchdog) || !dir.exists()
        });
        assert!(
            !stopped,
            "SIG{name} to the caller's process group stopped the cluster"
        );
        assert_eq!(
            sandbox.psql(url.trim(), "select 1"),
            "1",
            "after SIG{name} to the caller's process group"
        );
    }
}

/// A postmaster killed with SIGKILL: the watchdog still deletes the directory.
fn dead_postmaster_is_cleaned_up(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let url = sandbox.start(&["-w", UNTIL_STOPPED]);
    let dir = parse_socket_url(&url).dir;
    let postmaster = postmaster_pid(&dir).expect("no postmaster.pid");
    signal(postmaster, Signal::SIGKILL);
    let took = time_until_gone(&dir, postmaster, "after kill -9 of the postmaster");
    assert!(
        took <= stop_bound(),
        "the directory was removed only {took:?} after the postmaster died"
    );
    sandbox.assert_no_process(&dir, "after kill -9 of the postmaster");
}

/// `-k`: after the timeout the server stops but the directory stays, and `pgtmp -d DIR`
/// starts it again with the data written before.
fn keep_leaves_a_restartable_directory(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let url = sandbox.start(&["-k", "-w", "2"]);
    let dir = parse_socket_url(&url).dir;
    let postmaster = postmaster_pid(&dir).expect("no postmaster.pid");
    sandbox.psql(
        &url,
        "create table kept (x int); insert into kept values (42)",
    );
    let took = time_until(stop_bound() + Duration::from_secs(10), || {
        !alive(postmaster)
    })
    .expect("the -k server did not stop after its timeout");
    assert!(
        took <= stop_bound(),
        "the -k server stopped only after {took:?}"
    );
    sandbox.assert_no_process(&dir, "after the -k timeout");
    assert!(
        dir.join("data/PG_VERSION").is_file(),
        "-k should keep {}",
        dir.display()
    );

    let again = sandbox.start(&["-d", dir.to_str().unwrap(), "-k", "-w", UNTIL_STOPPED]);
    assert_eq!(parse_socket_url(&again).dir, dir);
    assert_eq!(sandbox.psql(&again, "select x from kept"), "42");
}

/// An explicit `-w` beats PGTMP_TIMEOUT from the environment, also when written before the
/// `start` subcommand (pg_tmp style).
#[test]
fn explicit_timeout_beats_the_environment() {
    let sandbox = Sandbox::new(&Invoker::current());
    let out = run(
        sandbox
            .pgtmp()
            .env("PGTMP_TIMEOUT", "300")
            .args(["-w", "2", "start"]),
        PGTMP_LIMIT,
    );
    let url = check_started(&out, &sandbox.invoker);
    let dir = parse_socket_url(&url).dir;
    let gone = wait_until(stop_bound(), || !dir.exists());
    assert!(
        gone,
        "`PGTMP_TIMEOUT=300 pgtmp -w 2 start`: the idle cluster is still there after {:?}; \
         the environment overrode the explicit -w 2",
        stop_bound()
    );
}

/// SIGTERM sent to the postmaster by someone else starts a smart shutdown, which waits for every
/// session, the watchdog's own and an idle client's included: the watchdog notices and
/// finishes it, and the directory goes.
fn sigterm_to_the_server_ends_it(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let url = sandbox.start(&["-w", "600"]);
    let dir = parse_socket_url(&url).dir;
    let postmaster = postmaster_pid(&dir).expect("no postmaster.pid");
    let mut session = sandbox.psql_session(&url);
    assert_eq!(session.query_line("select 'in';"), "in");
    signal(postmaster, Signal::SIGTERM);
    let took = time_until_gone(&dir, postmaster, "after SIGTERM to the postmaster");
    eprintln!("gone {took:?} after SIGTERM to the postmaster");
    drop(session);
}
