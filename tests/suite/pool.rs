//! The pool: initdb runs in the foreground only for the very first start; later directories
//! are copies of a per-installation template, the timing trace says which path a start took,
//! pools of installations that are gone get removed, and the template saved in the account's
//! cache directory serves the first start after PGTMP_DIR was wiped (a reboot), unless it was
//! damaged or is not the account's own.

use crate::common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

both_invokers!(
    first_start_runs_initdb_later_ones_copy_the_template,
    trace_names_every_phase_on_stderr_only,
    pools_of_vanished_or_changed_installations_are_removed,
    a_saved_template_serves_the_first_start_after_a_wipe,
    a_cache_directory_of_another_account_is_never_used,
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
    traced(sandbox.pgtmp().args(args))
}

/// Runs `cmd` (a start) with PGTMP_TRACE=1; returns the URL and the phase names traced.
fn traced(cmd: &mut std::process::Command) -> (String, Vec<String>) {
    let out = run(cmd.env("PGTMP_TRACE", "1"), PGTMP_LIMIT);
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
    let sandbox = Sandbox::with_pool(invoker, 1).cold();
    let (url, phases) = traced_start(&sandbox, &["-w", UNTIL_STOPPED]);
    assert!(phases.contains(&"initdb".into()), "{phases:?}");
    assert_eq!(sandbox.psql(&url, "select current_database()"), "test");
    sandbox.wait_for_full_pool(1, Duration::from_secs(60));
    let pool = pool_dir(&sandbox);
    assert!(
        pool.join("template/data/PG_VERSION").is_file(),
        "no template"
    );
    let maps: Vec<_> = fs::read_dir(pool.join("template/data/base/1"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with("_fsm") || name.ends_with("_vm"))
        .collect();
    assert!(maps.is_empty(), "the template keeps space maps: {maps:?}");

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
        // Copied again and again, so without initdb's statistics of the catalogs.
        for db in ["test", "postgres", "template1"] {
            let url = url.replacen("/test?", &format!("/{db}?"), 1);
            assert_eq!(
                sandbox.psql(&url, "select count(*) from pg_statistic"),
                "0",
                "{db}"
            );
        }
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
    let sandbox = Sandbox::new(invoker).cold();
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

/// A directory in the sandbox owned by `uid`, mode `mode`.
fn owned_dir(sandbox: &Sandbox, name: &str, uid: u32, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = sandbox.path(name);
    fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(uid), None).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
    dir
}

/// A start that may save and restore templates in the cache directory `cache` (whose owner
/// decides whether it is used) and, failing it, in `home`/.cache.
fn saving(sandbox: &Sandbox, cache: &Path, home: &Path) -> std::process::Command {
    let mut cmd = sandbox.pgtmp();
    cmd.env_remove("PGTMP_NO_SAVED_TEMPLATE")
        .env("XDG_CACHE_HOME", cache)
        .env("HOME", home);
    cmd
}

/// The saved templates' directory's entries (`cache`/pgtmp/templates), once one is complete.
fn wait_for_saved(cache: &Path) -> PathBuf {
    let templates = cache.join("pgtmp/templates");
    let mut found = None;
    assert!(
        wait_until(Duration::from_secs(60), || {
            found = fs::read_dir(&templates).ok().and_then(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    // `new.*`: one still being saved (its manifest is written before the
                    // rename that completes it).
                    .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with("new."))
                    .find(|p| p.join("manifest").is_file())
            });
            found.is_some()
        }),
        "no template was saved in {}",
        templates.display()
    );
    found.unwrap()
}

/// Stops `url` and removes PGTMP_DIR whole, as a reboot wipes /tmp.
fn wipe(sandbox: &Sandbox, url: &str) {
    assert!(sandbox.run(&["stop", url]).success());
    sandbox.wait_for_full_pool(1, Duration::from_secs(60));
    fs::remove_dir_all(&sandbox.pgtmp_dir).unwrap();
}

fn a_saved_template_serves_the_first_start_after_a_wipe(invoker: &Invoker) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let sandbox = Sandbox::with_pool(invoker, 1);
    let (_, server_uid) = invoker.server_account();
    let cache = owned_dir(&sandbox, "cache", server_uid, 0o755);
    let home = owned_dir(&sandbox, "home", server_uid, 0o755);
    let (url, phases) = traced(saving(&sandbox, &cache, &home).args(["-w", UNTIL_STOPPED]));
    assert!(phases.contains(&"initdb".into()), "{phases:?}");
    let saved = wait_for_saved(&cache);
    let templates = saved.parent().unwrap();
    let meta = fs::metadata(templates).unwrap();
    assert_eq!(meta.uid(), server_uid, "saved as the server account");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o700,
        "others cannot enter"
    );
    // doctor (as root: for the server account) says where it is.
    let out = run(saving(&sandbox, &cache, &home).arg("doctor"), PGTMP_LIMIT);
    assert!(
        out.stdout.contains("saved templates: 1 (")
            && out.stdout.contains(templates.to_str().unwrap()),
        "{out}"
    );
    wipe(&sandbox, &url);

    let (url, phases) = traced(saving(&sandbox, &cache, &home).args(["-w", UNTIL_STOPPED]));
    assert!(phases.contains(&"copy".into()), "not restored: {phases:?}");
    assert!(!phases.contains(&"initdb".into()), "{phases:?}");
    assert_eq!(
        sandbox.psql(
            &url,
            "select pg_get_userbyid(datdba) from pg_database where datname = 'test'"
        ),
        invoker.name
    );
    assert!(
        !home.join(".cache").exists(),
        "a usable XDG_CACHE_HOME comes first"
    );
    wipe(&sandbox, &url);

    // One byte changed, the size kept: the copy is refused, initdb runs, and the refill saves
    // a new template in place of the damaged one.
    let victim = saved.join("tree/data/global/pg_control");
    let mut damaged = fs::read(&victim).unwrap();
    damaged[100] ^= 0xff;
    fs::write(&victim, &damaged).unwrap();
    let (url, phases) = traced(saving(&sandbox, &cache, &home).args(["-w", UNTIL_STOPPED]));
    assert!(
        phases.contains(&"initdb".into()),
        "a damaged template was used: {phases:?}"
    );
    assert_eq!(sandbox.psql(&url, "select 1"), "1");
    assert!(sandbox.run(&["stop", &url]).success());
    let again = wait_for_saved(&cache);
    sandbox.wait_for_full_pool(1, Duration::from_secs(60));
    assert_ne!(
        fs::read(again.join("tree/data/global/pg_control")).unwrap(),
        damaged,
        "the damaged template was kept"
    );

    // gc --all removes it, and leaves the cache directory.
    let out = run(
        saving(&sandbox, &cache, &home).args(["gc", "--all"]),
        PGTMP_LIMIT,
    );
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("removed saved template"), "{out}");
    assert!(!again.exists(), "gc --all left the saved template");
    assert!(templates.is_dir());
}

/// A cache directory that is not the server account's (here another account's, open to all,
/// holding a template planted for this very pool) is never read from or written to.
fn a_cache_directory_of_another_account_is_never_used(invoker: &Invoker) {
    let Some(attacker) = Invoker::attacker() else {
        return;
    };
    let sandbox = Sandbox::with_pool(invoker, 1);
    let (_, server_uid) = invoker.server_account();
    let mine = owned_dir(&sandbox, "mine", server_uid, 0o755);
    let home = owned_dir(&sandbox, "home", server_uid, 0o755);
    let (url, _) = traced(saving(&sandbox, &mine, &home).args(["-w", UNTIL_STOPPED]));
    let saved = wait_for_saved(&mine);
    wipe(&sandbox, &url);
    // The attacker's copy of it, under the same key.
    let theirs = owned_dir(&sandbox, "theirs", attacker.uid, 0o777);
    let planted = theirs
        .join("pgtmp/templates")
        .join(saved.file_name().unwrap());
    fs::create_dir_all(planted.parent().unwrap()).unwrap();
    assert!(
        std::process::Command::new("cp")
            .args(["-a", saved.to_str().unwrap(), planted.to_str().unwrap()])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        std::process::Command::new("chown")
            .args(["-R", &attacker.uid.to_string(), theirs.to_str().unwrap()])
            .status()
            .unwrap()
            .success()
    );
    let other_home = owned_dir(&sandbox, "other-home", server_uid, 0o755);
    let (url, phases) = traced(saving(&sandbox, &theirs, &other_home).args(["-w", UNTIL_STOPPED]));
    assert!(
        phases.contains(&"initdb".into()),
        "the other account's template was used: {phases:?}"
    );
    assert!(sandbox.run(&["stop", &url]).success());
    sandbox.wait_for_full_pool(1, Duration::from_secs(60));
    // Saved in the account's own home instead, nothing added to the other's.
    wait_for_saved(&other_home.join(".cache"));
    let names: Vec<_> = fs::read_dir(theirs.join("pgtmp/templates"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, vec![planted.file_name().unwrap().to_os_string()]);
}
