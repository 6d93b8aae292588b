//! Eight starts at once in one PGTMP_DIR, from a filled pool and without one: eight distinct,
//! working, isolated clusters.

use crate::common::*;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

both_invokers!(
    eight_concurrent_starts_from_a_pool,
    eight_concurrent_starts_without_a_pool,
    gc_never_waits_for_a_foreground_initdb,
);

const STARTS: usize = 8;

/// Spawns pgtmp STARTS times at the same moment and returns the URLs.
fn start_all_at_once(sandbox: &Sandbox) -> Vec<String> {
    sandbox.start_at_once(STARTS, &["-w", UNTIL_STOPPED])
}

/// Distinct URLs and directories, each cluster usable, and a table made in one absent from
/// all the others.
fn check_distinct_and_isolated(sandbox: &Sandbox, urls: &[String]) {
    let distinct: HashSet<&String> = urls.iter().collect();
    assert_eq!(distinct.len(), STARTS, "URLs repeat: {urls:#?}");
    let dirs: HashSet<PathBuf> = urls.iter().map(|u| parse_socket_url(u).dir).collect();
    assert_eq!(dirs.len(), STARTS, "directories repeat: {urls:#?}");
    assert_eq!(
        sandbox.instance_dirs().len(),
        STARTS,
        "instance directories under PGTMP_DIR"
    );
    for (i, url) in urls.iter().enumerate() {
        sandbox.psql(url, &format!("create table only_in_{i} (x int)"));
    }
    for (i, url) in urls.iter().enumerate() {
        assert_eq!(
            sandbox.psql(
                url,
                "select string_agg(tablename, ',') from pg_tables where schemaname = 'public'"
            ),
            format!("only_in_{i}"),
            "cluster {i} ({url}) should hold its own table and no other"
        );
    }
}

/// With ready pool entries: some starts claim one (racing for them), the rest prepare their
/// own in the foreground.
fn eight_concurrent_starts_from_a_pool(invoker: &Invoker) {
    let sandbox = Sandbox::with_pool(invoker, 4);
    // Each `pgtmp initdb` adds one ready entry, until the pool is full.
    for _ in 0..4 {
        check_started(&sandbox.run(&["initdb"]), invoker);
    }
    sandbox.wait_for_full_pool(4, Duration::from_secs(120));
    // A claim renames the entry into place, which keeps its inode.
    let ready = sandbox.ready_entry_inodes();

    let urls = start_all_at_once(&sandbox);
    check_distinct_and_isolated(&sandbox, &urls);
    let claimed = sandbox
        .instance_dirs()
        .iter()
        .filter(|dir| ready.contains(&std::fs::metadata(dir).unwrap().ino()))
        .count();
    assert_eq!(
        claimed,
        ready.len(),
        "every ready pool entry should have gone to exactly one of the starts"
    );
}

/// No pool: all eight prepare their directories in the foreground at once.
fn eight_concurrent_starts_without_a_pool(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let urls = start_all_at_once(&sandbox);
    check_distinct_and_isolated(&sandbox, &urls);
}

/// The bin directory under test: PGTMP_TEST_BINDIR, else the installed PostgreSQL's (the one
/// pgtmp finds first on this machine).
fn real_bindir() -> PathBuf {
    if let Some(dir) = test_bindir() {
        return dir.to_path_buf();
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    found.sort();
    if let Some(bin) = found.pop() {
        return bin;
    }
    let out = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .expect("no PostgreSQL found for the test (neither /usr/lib/postgresql nor pg_config)");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A bin directory like `real`'s whose initdb first waits until a line can be read from the
/// FIFO `gate`: it runs only once the test lets it.
fn gated_initdb_bindir(dir: &Path, real: &Path, gate: &Path) {
    std::fs::create_dir(dir).unwrap();
    for entry in std::fs::read_dir(real).unwrap().flatten() {
        if entry.file_name() != "initdb" {
            std::os::unix::fs::symlink(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    nix::unistd::mkfifo(gate, nix::sys::stat::Mode::empty()).unwrap();
    // Read by the account initdb runs as (the server account, for root).
    std::fs::set_permissions(gate, std::fs::Permissions::from_mode(0o666)).unwrap();
    let script = format!(
        "#!/bin/sh\nread go < '{}'\nexec {} \"$@\"\n",
        gate.display(),
        real.join("initdb").display()
    );
    std::fs::write(dir.join("initdb"), script).unwrap();
    std::fs::set_permissions(dir.join("initdb"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A start that runs initdb in the foreground (nothing prepared yet) holds up no `pgtmp gc`:
/// the PGTMP_DIR gate is held only while the start claims its directory's name, not across
/// the initdb. And gc leaves that directory alone: the start then works.
///
/// The initdb is held until gc has finished, so a gc that waited for it would never finish
/// (and one that gave up waiting fails).
fn gc_never_waits_for_a_foreground_initdb(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let bindir = sandbox.path("gatedbin");
    let gate = sandbox.path("initdb-gate");
    gated_initdb_bindir(&bindir, &real_bindir(), &gate);
    let mut start = sandbox
        .pgtmp()
        .args(["-w", UNTIL_STOPPED, "--bindir", bindir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let gated = bindir.join("initdb").to_string_lossy().into_owned();
    assert!(
        wait_until(PGTMP_LIMIT, || {
            !sandbox.instance_dirs().is_empty()
                && sandbox.procs().iter().any(|p| p.cmdline.contains(&gated))
        }),
        "the start made no directory, or never ran its initdb"
    );
    let before = Instant::now();
    let gc = sandbox.run(&["gc"]);
    let took = before.elapsed();
    assert!(gc.success(), "{gc}");
    assert!(
        gc.stdout.is_empty(),
        "gc removed what the start is making:\n{gc}"
    );
    assert!(
        start.try_wait().unwrap().is_none(),
        "the start ended before its initdb was let run"
    );
    eprintln!("gc finished in {took:?} while the start's initdb was held");
    // Opened for reading and writing, which never blocks: the initdb's shell reads the line.
    let mut release = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&gate)
        .unwrap();
    std::io::Write::write_all(&mut release, b"go\n").unwrap();
    let status = wait_child(&mut start, PGTMP_LIMIT, "the held start");
    drop(release);
    let mut url = String::new();
    std::io::Read::read_to_string(&mut start.stdout.take().unwrap(), &mut url).unwrap();
    assert!(status.success(), "the start failed after gc ran beside it");
    assert_eq!(sandbox.psql(url.trim(), "select 1"), "1");
}
