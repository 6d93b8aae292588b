//! Inputs and limits that must not hang, panic or leave anything: `-f` naming something other
//! than a regular file (a FIFO would block forever, /dev/zero never end), and too few processes
//! (`ulimit -u`) or open files (`ulimit -n`). Each fails with one line naming the problem and
//! the fix, or works; nothing is left in PGTMP_DIR either way.

use crate::common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

both_invokers!(
    schema_files_must_be_regular_files,
    a_symlink_to_a_schema_file_is_fine,
);

/// Far below PGTMP_LIMIT: a FIFO that blocked the start would show as a timeout.
const REFUSAL_LIMIT: Duration = Duration::from_secs(30);

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A FIFO, /dev/zero and a directory given to `-f`: exit 2 at once, one line naming the file
/// and saying what to pass instead, and nothing made.
fn schema_files_must_be_regular_files(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let fifo = sandbox.path("schema.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    std::os::unix::fs::chown(&fifo, Some(invoker.uid), Some(invoker.gid)).unwrap();
    let dir = sandbox.path("schema.d");
    fs::create_dir(&dir).unwrap();
    let cases: [(PathBuf, &str); 3] = [
        (fifo, "a FIFO"),
        (PathBuf::from("/dev/zero"), "a device"),
        (dir, "a directory"),
    ];
    for (path, kind) in &cases {
        let context = format!("-f {}", path.display());
        let out = run(
            sandbox.pgtmp().args(["-w", UNTIL_STOPPED, "-f", arg(path)]),
            REFUSAL_LIMIT,
        );
        let line = check_failed(&out, 2);
        assert!(
            line.contains(arg(path))
                && line.contains(kind)
                && line.contains("not a regular file")
                && line.contains("pass an SQL file"),
            "{context}: {line}"
        );
        sandbox.assert_nothing_left(&context);
    }
}

/// A symlink the user gives that leads to a regular file is read like the file.
fn a_symlink_to_a_schema_file_is_fine(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let file = sandbox.path("schema.sql");
    fs::write(&file, "create table linked (id int);\n").unwrap();
    let link = sandbox.path("link.sql");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let url = sandbox.start(&["-w", UNTIL_STOPPED, "-f", arg(&link)]);
    assert_eq!(
        sandbox.psql(&url, "select count(*) from linked"),
        "0",
        "the file behind the symlink was not loaded"
    );
    let out = sandbox.run(&["stop", &url]);
    assert!(out.success(), "{out}");
}

/// Threads (tasks) of processes whose real uid is `uid`: what RLIMIT_NPROC counts.
fn tasks_of(uid: u32) -> u64 {
    let mut tasks = 0;
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(status) = fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        };
        if field("Uid:") == Some(u64::from(uid)) {
            tasks += field("Threads:").unwrap_or(1);
        }
    }
    tasks
}

/// The ordinary account: root ignores RLIMIT_NPROC. None (reported) when not run as root.
fn limited_account() -> Option<Invoker> {
    let Some(invoker) = Invoker::ordinary() else {
        skip("RLIMIT_NPROC needs an ordinary account, which only root can run tests as");
        return None;
    };
    if which_prlimit().is_none() {
        missing("prlimit", "apt-get install util-linux");
        return None;
    }
    Some(invoker)
}

fn which_prlimit() -> Option<PathBuf> {
    ["/usr/bin/prlimit", "/bin/prlimit"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// pgtmp run under `limits` (prlimit options), with PGTMP_POOL_SIZE=0 so nothing refills.
fn run_limited(sandbox: &Sandbox, limits: &str, args: &str) -> Outcome {
    let script = format!("PGTMP_POOL_SIZE=0 exec prlimit {limits} \"$PGTMP\" {args}");
    run(&mut sandbox.shell(&script), PGTMP_LIMIT)
}

/// Either a start that worked (then stopped) or one clean error line with exit 1; never a
/// panic, and nothing left in PGTMP_DIR. Returns the error line, if it failed.
fn check_limited(sandbox: &Sandbox, out: &Outcome, context: &str) -> Option<String> {
    assert_ne!(out.code(), Some(101), "{context}: pgtmp panicked:\n{out}");
    assert!(!out.stderr.contains("panicked"), "{context}:\n{out}");
    let failed = if out.success() {
        let url = out.stdout.trim();
        let stopped = sandbox.run(&["stop", url]);
        assert!(stopped.success(), "{context}: cannot stop {url}: {stopped}");
        None
    } else {
        Some(check_failed(out, 1))
    };
    let mut left = Vec::new();
    let clean = wait_until(Duration::from_secs(10), || {
        left = sandbox.instance_dirs();
        left.is_empty()
    });
    assert!(clean, "{context}: left in PGTMP_DIR: {left:?}\n{out}");
    sandbox.assert_no_process(&sandbox.pgtmp_dir, context);
    failed
}

/// Removes the pool's ready entries, so that the next start copies the template (with
/// threads) instead of claiming one.
fn empty_pool(sandbox: &Sandbox) {
    for entry in sandbox.pool_entries("ready.") {
        fs::remove_dir_all(entry).unwrap();
    }
}

/// RLIMIT_NPROC from just what the account runs now up to a dozen more: the start fails at
/// whichever thread or fork comes first (copying threads, the watchdog, postgres and its
/// workers, psql), with the fix, or works. Other tests' processes of the account count too, so
/// the limit is taken relative to them each time.
#[test]
fn too_few_processes() {
    let Some(invoker) = limited_account() else {
        return;
    };
    let sandbox = Sandbox::with_pool(&invoker, 1);
    let url = sandbox.start(&["-w", UNTIL_STOPPED]);
    sandbox.wait_for_full_pool(1, PGTMP_LIMIT);
    assert!(sandbox.run(&["stop", &url]).success());
    let mut refused = Vec::new();
    for extra in 0..=12 {
        empty_pool(&sandbox);
        let limit = tasks_of(invoker.uid) + extra;
        let context = format!("ulimit -u {limit} ({extra} above what runs)");
        let out = run_limited(
            &sandbox,
            &format!("--nproc={limit}"),
            &format!("-w {UNTIL_STOPPED}"),
        );
        if let Some(line) = check_limited(&sandbox, &out, &context) {
            refused.push(line);
        }
    }
    assert!(
        refused.iter().any(|l| l.contains("raise ulimit -u")),
        "no start ran out of processes with a hint to raise ulimit -u: {refused:?}"
    );
}

/// Too few open files: refused before anything is made when the hard limit is too low; a low
/// soft limit is raised.
#[test]
fn too_few_open_files() {
    let Some(invoker) = limited_account() else {
        return;
    };
    let sandbox = Sandbox::with_pool(&invoker, 1);
    let url = sandbox.start(&["-w", UNTIL_STOPPED]);
    sandbox.wait_for_full_pool(1, PGTMP_LIMIT);
    assert!(sandbox.run(&["stop", &url]).success());
    for limit in [5, 10, 20, 40] {
        empty_pool(&sandbox);
        let context = format!("ulimit -n {limit}");
        let out = run_limited(
            &sandbox,
            &format!("--nofile={limit}"),
            &format!("-w {UNTIL_STOPPED}"),
        );
        let line = check_limited(&sandbox, &out, &context);
        assert!(
            line.as_deref()
                .is_some_and(|l| l.contains("raise ulimit -n")),
            "{context}: {out}"
        );
    }
    empty_pool(&sandbox);
    let out = run_limited(&sandbox, "--nofile=10:4096", &format!("-w {UNTIL_STOPPED}"));
    assert!(out.success(), "a soft limit of 10 was not raised: {out}");
    check_limited(&sandbox, &out, "ulimit -Sn 10");
}
