//! The pool: initdb runs in the foreground only for the very first start; later directories
//! are copies of a per-installation template, the timing trace says which path a start took,
//! and pools of installations that are gone get removed.

use crate::common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

both_invokers!(
    first_start_runs_initdb_later_ones_copy_the_template,
    trace_names_every_phase_on_stderr_only,
    pools_of_vanished_or_changed_installations_are_removed,
);

/// The one pool directory of the sandbox.
fn pool_dir(sandbox: &Sandbox) -> PathBuf {
    let pools: Vec<PathBuf> = fs::read_dir(sandbox.pgtmp_dir.join("pool"))
        .expect("no pool directory")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(pools.len(), 1, "expected one pool: {pools:?}");
    pools[0].clone()
}

/// Runs a start with PGTMP_TRACE=1; returns the URL and the phase names traced.
fn traced_start(sandbox: &Sandbox, args: &[&str]) -> (String, Vec<String>) {
    let out = run(
        sandbox.pgtmp().env("PGTMP_TRACE", "1").args(args),
        PGTMP_LIMIT,
    );
    assert!(out.success(), "traced start failed:\n{out}");
    assert_eq!(out.stdout.lines().count(), 1, "one line on stdout:\n{out}");
    let phases = out
        .stderr_lines()
        .iter()
        .map(|line| {
            let rest = line
                .strip_prefix("pgtmp: trace: ")
                .unwrap_or_else(|| panic!("not a trace line: {line:?}\n{out}"));
            rest.split_whitespace().next().unwrap_or("").to_string()
        })
        .collect();
    (out.stdout.trim_end().to_string(), phases)
}

fn first_start_runs_initdb_later_ones_copy_the_template(invoker: &Invoker) {
    let sandbox = Sandbox::with_pool(invoker, 1);
    let (url, phases) = traced_start(&sandbox, &["-w", UNTIL_STOPPED]);
    assert!(phases.contains(&"initdb".into()), "{phases:?}");
    assert_eq!(sandbox.psql(&url, "select current_database()"), "test");
    sandbox.wait_for_full_pool(1, Duration::from_secs(60));
    let pool = pool_dir(&sandbox);
    assert!(
        pool.join("template/data/PG_VERSION").is_file(),
        "no template"
    );

    // Hold the refill lock, so the second start cannot find a ready entry: it must copy the
    // template in the foreground, not run initdb.
    let lock = fs::File::open(pool.join("lock")).unwrap();
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let (first, phases) = traced_start(&sandbox, &["-w", UNTIL_STOPPED]);
    assert!(phases.contains(&"claim".into()), "{phases:?}");
    let (second, phases) = traced_start(&sandbox, &["-w", UNTIL_STOPPED]);
    assert!(phases.contains(&"copy".into()), "{phases:?}");
    assert!(!phases.contains(&"initdb".into()), "{phases:?}");
    drop(held);
    for url in [&first, &second] {
        assert_eq!(
            sandbox.psql(
                url,
                "select pg_get_userbyid(datdba) from pg_database where datname = 'test'"
            ),
            invoker.name,
            "test is owned by the invoker"
        );
    }
    // The copies are independent clusters.
    sandbox.psql(&first, "create table only_first (x int)");
    assert_eq!(
        sandbox.psql(
            &second,
            "select count(*) from pg_tables where tablename = 'only_first'"
        ),
        "0"
    );
    sandbox.wait_for_full_pool(1, Duration::from_secs(60));
}

fn trace_names_every_phase_on_stderr_only(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let (url, phases) = traced_start(&sandbox, &["-t", "-w", UNTIL_STOPPED]);
    for phase in [
        "discover",
        "session",
        "initdb",
        "fork",
        "spawn",
        "ready",
        "handshake",
        "print",
    ] {
        assert!(
            phases.contains(&phase.to_string()),
            "no {phase}: {phases:?}"
        );
    }
    assert_eq!(sandbox.psql(&url, "select 1"), "1");
}

/// A pool directory as an older pgtmp or another installation would have left it.
fn plant_pool(sandbox: &Sandbox, key: &str, bindir: &Path) -> PathBuf {
    let dir = sandbox.pgtmp_dir.join("pool").join(key);
    fs::create_dir_all(dir.join("ready.aaaaaaaa/data")).unwrap();
    fs::write(
        dir.join("install"),
        format!("{}\n{}\n", bindir.display(), sandbox.invoker.name),
    )
    .unwrap();
    fs::write(dir.join("lock"), "").unwrap();
    let (_, uid) = sandbox.invoker.server_account();
    if nix::unistd::geteuid().is_root() {
        for path in [
            dir.clone(),
            dir.join("ready.aaaaaaaa"),
            dir.join("ready.aaaaaaaa/data"),
            dir.join("install"),
            dir.join("lock"),
        ] {
            std::os::unix::fs::chown(&path, Some(uid), None).unwrap();
        }
    }
    dir
}

fn pools_of_vanished_or_changed_installations_are_removed(invoker: &Invoker) {
    let sandbox = Sandbox::with_pool(invoker, 1);
    let url = sandbox.start(&["-w", UNTIL_STOPPED]);
    sandbox.wait_for_full_pool(1, Duration::from_secs(60));
    let live = pool_dir(&sandbox);
    let bindir = PathBuf::from(
        fs::read_to_string(live.join("install"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    );
    let vanished = plant_pool(
        &sandbox,
        "00000000000000aa",
        Path::new("/nonexistent/pg/bin"),
    );
    // The same bin directory under another key: its binaries changed (an upgrade).
    let upgraded = plant_pool(&sandbox, "00000000000000bb", &bindir);

    // The next start's refill sweeps them; the live pool stays.
    let second = sandbox.start(&["-w", UNTIL_STOPPED]);
    assert!(
        wait_until(Duration::from_secs(60), || {
            !vanished.exists() && !upgraded.exists() && !sandbox.refill_running()
        }),
        "stale pools were not removed: {:?}",
        fs::read_dir(sandbox.pgtmp_dir.join("pool"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect::<Vec<_>>()
    );
    assert!(live.join("template").is_dir(), "the live pool was removed");
    for url in [&url, &second] {
        assert_eq!(sandbox.psql(url, "select 1"), "1");
    }
}
