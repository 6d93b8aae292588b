//! The fault suite: kills, signals, deleted directories, parallel starts, stolen ports, a full
//! disk, exhausted shared memory and secrets, done to real servers; after each, nothing of the
//! cluster may remain: no process, no directory, no System V or POSIX shared memory segment.
//!
//! Points inside a start are hit deterministically with the test-only `PGTMP_TEST_PAUSE=<phase>`
//! (pgtmp stops itself with SIGSTOP there; see src/testpause.rs).

use crate::common::*;
use nix::sys::signal::Signal;
use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

both_invokers!(
    killed_watchdog_takes_its_server_down,
    killed_postmaster_leaves_nothing,
    pgtmp_killed_before_the_watchdog_exists,
    pgtmp_killed_after_the_server_is_ready,
    pgtmp_killed_while_preparing_a_directory,
    watchdog_killed_during_the_start,
    nobody_to_hand_the_url_to,
    refill_killed_mid_initdb,
    signals_to_the_callers_group,
    signals_to_the_group_during_initdb,
    directory_deleted_under_a_running_server,
    parallel_starts_with_concurrent_gc,
    stolen_port_is_retried,
    gc_never_touches_what_is_not_its_own,
    full_disk,
    shared_memory_exhausted,
    secrets_stay_secret,
);

/// Longest any cleanup may take on a loaded machine.
const CLEANUP_LIMIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Shared memory: what each cluster of a sandbox used, recorded while it runs

/// The System V segment (id, creator pid) and POSIX segments a cluster uses.
#[derive(Default, Debug, Clone)]
struct Segments {
    sysv: BTreeSet<(i32, i32)>,
    posix: BTreeSet<String>,
}

impl Segments {
    /// What the server with this data directory uses right now: postmaster.pid line 7 names the
    /// System V segment; the postmaster and its children map the POSIX ones.
    fn of(data: &Path) -> Segments {
        let mut seen = Segments::default();
        let Ok(text) = fs::read_to_string(data.join("postmaster.pid")) else {
            return seen;
        };
        let lines: Vec<&str> = text.lines().collect();
        let Some(pid) = lines.first().and_then(|l| l.trim().parse::<i32>().ok()) else {
            return seen;
        };
        if let Some(id) = lines
            .get(6)
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|id| id.parse().ok())
        {
            seen.sysv.insert((id, pid));
        }
        let mut pids = vec![pid];
        pids.extend(children_of(pid));
        for p in pids {
            if let Ok(maps) = fs::read_to_string(format!("/proc/{p}/maps")) {
                for name in maps
                    .lines()
                    .filter_map(|l| l.split_whitespace().nth(5))
                    .filter_map(|p| p.strip_prefix("/dev/shm/"))
                    .filter(|n| n.starts_with("PostgreSQL."))
                {
                    seen.posix.insert(name.to_string());
                }
            }
        }
        seen
    }

    fn add(&mut self, other: &Segments) {
        self.sysv.extend(other.sysv.iter().copied());
        self.posix.extend(other.posix.iter().cloned());
    }

    /// The segments that still exist.
    fn left(&self) -> Vec<String> {
        let mut left = Vec::new();
        for &(id, creator) in &self.sysv {
            // SAFETY: shmid_ds is plain data that IPC_STAT fills in.
            let mut ds: nix::libc::shmid_ds = unsafe { std::mem::zeroed() };
            let found = unsafe { nix::libc::shmctl(id, nix::libc::IPC_STAT, &mut ds) } == 0;
            if found && ds.shm_cpid == creator {
                left.push(format!("SysV shmid {id} (created by {creator})"));
            }
        }
        for name in &self.posix {
            if Path::new("/dev/shm").join(name).exists() {
                left.push(format!("/dev/shm/{name}"));
            }
        }
        left
    }
}

/// The pids of a process's children: from the kernel's lists of its threads' children (a
/// small read; the watch below asks every few milliseconds), else, on a kernel without those
/// lists, by looking at the parent of every process.
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let lists: Vec<String> = tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("children")).ok())
        .collect();
    if !lists.is_empty() {
        return lists
            .iter()
            .flat_map(|list| list.split_whitespace())
            .filter_map(|child| child.parse().ok())
            .collect();
    }
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|&child| parent_pid(child) == Some(pid))
        .collect()
}

/// Records the shared memory of every cluster that runs in a sandbox, every few milliseconds,
/// until dropped; so segments of clusters that live only briefly are known too.
struct ShmWatch {
    seen: Arc<Mutex<Segments>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ShmWatch {
    fn new(sandbox: &Sandbox) -> ShmWatch {
        let seen = Arc::new(Mutex::new(Segments::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let pgtmp_dir = sandbox.pgtmp_dir.clone();
        let thread = {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for dir in fs::read_dir(&pgtmp_dir).into_iter().flatten().flatten() {
                        let segments = Segments::of(&dir.path().join("data"));
                        seen.lock().unwrap().add(&segments);
                    }
                    std::thread::sleep(Duration::from_millis(3));
                }
            })
        };
        ShmWatch {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Adds what the cluster in `dir` uses now (for clusters outside PGTMP_DIR, or to be sure).
    fn record(&self, dir: &Path) {
        let segments = Segments::of(&dir.join("data"));
        self.seen.lock().unwrap().add(&segments);
    }

    /// Stops watching and checks that none of the recorded segments remains.
    fn assert_released(mut self, context: &str) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        let seen = self.seen.lock().unwrap().clone();
        let mut left = Vec::new();
        let released = wait_until(Duration::from_secs(10), || {
            left = seen.left();
            left.is_empty()
        });
        assert!(
            released,
            "{context}: shared memory left behind: {left:?} (of {seen:?})"
        );
        eprintln!(
            "{context}: all {} SysV and {} POSIX segments seen are gone",
            seen.sysv.len(),
            seen.posix.len()
        );
    }
}

impl Drop for ShmWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Waits until no process refers to the sandbox (servers, watchdogs, refills, initdb).
fn settle(sandbox: &Sandbox, limit: Duration, context: &str) {
    let mut left = Vec::new();
    let gone = wait_until(limit, || {
        left = sandbox.procs();
        left.is_empty() && !sandbox.refill_running()
    });
    assert!(
        gone,
        "{context}: after {limit:?} processes still refer to the sandbox:\n{}",
        left.iter().map(|p| format!("  {p}\n")).collect::<String>()
    );
}

/// Incomplete pool entries.
fn incomplete_pool_entries(sandbox: &Sandbox) -> Vec<PathBuf> {
    let mut entries = sandbox.pool_entries("new.");
    entries.extend(sandbox.pool_entries("template.new."));
    entries
}

/// Runs `pgtmp gc` and returns the lines it printed.
fn gc(sandbox: &Sandbox) -> Vec<String> {
    let out = sandbox.run(&["gc"]);
    assert!(
        out.success() && out.stderr.is_empty(),
        "pgtmp gc failed:\n{out}"
    );
    out.stdout.lines().map(str::to_string).collect()
}

/// Nothing of any cluster remains: no process, no instance directory, no incomplete pool entry,
/// no shared memory segment.
fn assert_nothing_remains(sandbox: &Sandbox, watch: ShmWatch, context: &str) {
    settle(sandbox, CLEANUP_LIMIT, context);
    let dirs = sandbox.instance_dirs();
    assert!(dirs.is_empty(), "{context}: directories left: {dirs:?}");
    let entries = incomplete_pool_entries(sandbox);
    assert!(
        entries.is_empty(),
        "{context}: incomplete pool entries left: {entries:?}"
    );
    watch.assert_released(context);
}

/// pgtmp started in the background with its output captured.
struct Background {
    child: Child,
    stdout: std::thread::JoinHandle<String>,
    stderr: std::thread::JoinHandle<String>,
}

fn reader(mut source: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = source.read_to_string(&mut text);
        text
    })
}

impl Background {
    fn spawn(mut cmd: Command) -> Background {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start pgtmp");
        let stdout = reader(child.stdout.take().unwrap());
        let stderr = reader(child.stderr.take().unwrap());
        Background {
            child,
            stdout,
            stderr,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for it to exit: (exit code, terminating signal, stdout, stderr).
    fn finish(mut self) -> (Option<i32>, Option<i32>, String, String) {
        let what = format!("pgtmp (pid {})", self.pid());
        let status = wait_child(&mut self.child, PGTMP_LIMIT, &what);
        (
            status.code(),
            status.signal(),
            self.stdout.join().unwrap(),
            self.stderr.join().unwrap(),
        )
    }
}

/// Waits until a process of the sandbox has stopped itself at a PGTMP_TEST_PAUSE phase.
///
/// `near` (pgtmp, or the shell running it) and its children are looked at in every poll, so a
/// pgtmp that stops is seen at once (some phases are followed by an idle timeout of seconds);
/// every process of the sandbox, which takes far longer to find, in every tenth (the watchdog
/// is detached, nobody's child).
fn paused_process(sandbox: &Sandbox, near: i32, phase: &str) -> i32 {
    let stopped = |pid: &i32| proc_state(*pid) == Some('T');
    let mut pid = None;
    let mut polls = 0;
    let found = wait_until(PGTMP_LIMIT, || {
        polls += 1;
        pid = std::iter::once(near)
            .chain(children_of(near))
            .find(stopped)
            .or_else(|| {
                (polls % 10 == 0)
                    .then(|| sandbox.procs().iter().map(|p| p.pid).find(stopped))
                    .flatten()
            });
        pid.is_some()
    });
    assert!(found, "no process stopped at phase {phase}");
    pid.unwrap()
}

/// pgtmp with `args`, stopping itself (or its watchdog) at `phase`.
fn start_paused(sandbox: &Sandbox, args: &[&str], phase: &str) -> (Background, i32) {
    let mut cmd = sandbox.pgtmp();
    cmd.args(args).env("PGTMP_TEST_PAUSE", phase);
    let background = Background::spawn(cmd);
    let paused = paused_process(sandbox, background.pid(), phase);
    (background, paused)
}

// ---------------------------------------------------------------------------------------------
// Supervision

/// kill -9 of the watchdog: the kernel stops postgres (parent-death signal) within 2 s; the
/// directory is then removed by the sweep, with nothing else left.
fn killed_watchdog_takes_its_server_down(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let watch = ShmWatch::new(&sandbox);
    let url = sandbox.start(&["-w", UNTIL_STOPPED]);
    let dir = parse_socket_url(&url).dir;
    watch.record(&dir);
    let postmaster = postmaster_pid(&dir).expect("no postmaster.pid");
    let watchdog = watchdog_pid(&dir).expect("no watchdog pid");
    // A client with a running query: its backend must go too.
    let mut session = sandbox.psql_session(&url);
    assert_eq!(session.query_line("select 'in';"), "in");
    signal(watchdog, Signal::SIGKILL);
    let bound = Duration::from_secs(2);
    let took = time_until(bound, || !alive(postmaster)).unwrap_or_else(|| {
        panic!("postmaster {postmaster} outlived its killed watchdog by {bound:?}")
    });
    eprintln!("postmaster gone {took:?} after its watchdog was killed");
    drop(session);
    settle(&sandbox, CLEANUP_LIMIT, "after the watchdog was killed");
    let removed = gc(&sandbox);
    assert_eq!(removed, [format!("removed {}", dir.display())]);
    assert_nothing_remains(&sandbox, watch, "killed watchdog, then gc");
}

/// kill -9 of the postmaster while a client runs a query that never waits (so its backend does
/// not notice the postmaster's death by itself): the watchdog ends the backend, removes the
/// directory at once and releases the shared memory the server could not.
fn killed_postmaster_leaves_nothing(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let watch = ShmWatch::new(&sandbox);
    let url = sandbox.start(&["-w", UNTIL_STOPPED]);
    let dir = parse_socket_url(&url).dir;
    let postmaster = postmaster_pid(&dir).expect("no postmaster.pid");
    let mut client = sandbox
        .psql_command(&url)
        .args(["-c", "do $$ begin loop end loop; end $$"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill only once the client's backend runs the query. Its process title says so: "postgres:
    // CLUSTER: USER test [local] DO" (the watchdog's own session is in database postgres,
    // the background processes have other titles, and all are there from the start).
    let mut titles = Vec::new();
    let running = wait_until(PSQL_LIMIT, || {
        titles = children_of(postmaster)
            .into_iter()
            .map(|child| cmdline(child).trim_end().to_string())
            .collect();
        titles
            .iter()
            .any(|title| title.ends_with(" test [local] DO"))
    });
    assert!(
        running,
        "the client's query did not start within {PSQL_LIMIT:?}; the server's processes: \
         {titles:?}"
    );
    watch.record(&dir);
    signal(postmaster, Signal::SIGKILL);
    let backends = children_of(postmaster);
    let took = time_until(Duration::from_secs(3) + SLACK, || !dir.exists())
        .expect("the directory outlived its killed postmaster");
    eprintln!("directory gone {took:?} after the postmaster was killed");
    for backend in backends {
        assert!(
            !alive(backend),
            "process {backend} of the killed server runs on"
        );
    }
    let _ = client.wait();
    assert_nothing_remains(&sandbox, watch, "killed postmaster");
}

// ---------------------------------------------------------------------------------------------
// Kills in the middle of a start

/// pgtmp killed after claiming a directory, before it is locked, and after locking it, before
/// the watchdog exists: the directory is left for the sweep, which removes it.
fn pgtmp_killed_before_the_watchdog_exists(invoker: &Invoker) {
    for pool in [0, 2] {
        for phase in ["claimed", "locked"] {
            let context = format!("pgtmp killed at {phase} (pool {pool})");
            let sandbox = Sandbox::with_pool(invoker, pool);
            if pool > 0 {
                // Fill the pool, so that the start claims an entry.
                sandbox.start(&["-w", "1"]);
                settle(&sandbox, CLEANUP_LIMIT, "filling the pool");
                assert!(
                    sandbox.ready_entries() > 0,
                    "{context}: the pool has no ready entry to claim: {:?}",
                    sandbox.pool_entries("")
                );
            }
            let watch = ShmWatch::new(&sandbox);
            let (pgtmp, paused) = start_paused(&sandbox, &["-w", UNTIL_STOPPED], phase);
            assert_eq!(paused, pgtmp.pid(), "{context}: the wrong process stopped");
            let dir = sandbox.only_instance();
            signal(paused, Signal::SIGKILL);
            let (_, sig, stdout, _) = pgtmp.finish();
            assert_eq!(sig, Some(9), "{context}");
            assert!(stdout.is_empty(), "{context}: printed {stdout:?}");
            let removed = gc(&sandbox);
            assert_eq!(removed, [format!("removed {}", dir.display())], "{context}");
            assert_nothing_remains(&sandbox, watch, &context);
        }
    }
}

/// pgtmp killed once the server is ready but before it printed the URL: the cluster, never
/// handed out, still ends at its idle timeout, leaving nothing.
fn pgtmp_killed_after_the_server_is_ready(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let watch = ShmWatch::new(&sandbox);
    let (pgtmp, paused) = start_paused(&sandbox, &["-w", "2"], "reported");
    let dir = sandbox.only_instance();
    watch.record(&dir);
    assert!(postmaster_pid(&dir).is_some_and(alive));
    signal(paused, Signal::SIGKILL);
    let (_, _, stdout, _) = pgtmp.finish();
    assert!(stdout.is_empty());
    let took = time_until(Duration::from_secs(3) + SLACK + SLACK, || !dir.exists())
        .expect("a cluster never handed out did not end at its timeout");
    eprintln!("cluster never handed out ended after {took:?}");
    assert_nothing_remains(&sandbox, watch, "pgtmp killed after ready");
}

/// pgtmp killed while it initializes a directory, under PGTMP_DIR (nothing prepared yet) and
/// given with `-d`: the half-made directory carries pgtmp's mark, so the sweep removes the first
/// and the next start with the same `-d` makes the second again from scratch.
fn pgtmp_killed_while_preparing_a_directory(invoker: &Invoker) {
    let sandbox = Sandbox::with_pool(invoker, 0).cold();
    let watch = ShmWatch::new(&sandbox);
    let (pgtmp, paused) = start_paused(&sandbox, &["-w", UNTIL_STOPPED], "initialized");
    assert_eq!(paused, pgtmp.pid(), "the wrong process stopped");
    let dir = sandbox.only_instance();
    signal(paused, Signal::SIGKILL);
    assert_eq!(pgtmp.finish().1, Some(9));
    assert!(dir.join("PGTMP.preparing").is_file(), "no mark in {dir:?}");
    assert_eq!(gc(&sandbox), [format!("removed {}", dir.display())]);

    let given = sandbox.path("given");
    let given_arg = given.to_str().unwrap();
    let (pgtmp, paused) = start_paused(
        &sandbox,
        &["-w", UNTIL_STOPPED, "-d", given_arg],
        "initialized",
    );
    signal(paused, Signal::SIGKILL);
    let (_, sig, stdout, _) = pgtmp.finish();
    assert_eq!(sig, Some(9));
    assert!(stdout.is_empty(), "printed {stdout:?}");
    assert!(given.join("PGTMP.preparing").is_file() && given.join("data/PG_VERSION").is_file());
    let url = sandbox.start(&["-w", UNTIL_STOPPED, "-d", given_arg]);
    assert_eq!(
        sandbox.psql(
            &url,
            "select count(*) from pg_database where datname = 'test'"
        ),
        "1"
    );
    assert!(!given.join("PGTMP.preparing").exists());
    let out = sandbox.run(&["stop", "-d", given_arg]);
    assert!(out.success(), "{out}");
    assert!(
        !given.exists(),
        "the -d directory pgtmp made was not removed"
    );
    assert_nothing_remains(&sandbox, watch, "pgtmp killed while preparing a directory");
}

/// The watchdog killed after starting postgres (not yet ready) or once ready (not yet reported):
/// pgtmp fails with a clear error, and postgres and the directory are gone.
fn watchdog_killed_during_the_start(invoker: &Invoker) {
    for phase in ["spawned", "ready"] {
        let context = format!("watchdog killed at {phase}");
        let sandbox = Sandbox::new(invoker);
        let watch = ShmWatch::new(&sandbox);
        let (pgtmp, watchdog) = start_paused(&sandbox, &["-w", UNTIL_STOPPED], phase);
        assert_ne!(watchdog, pgtmp.pid(), "{context}: pgtmp itself stopped");
        let dir = sandbox.only_instance();
        watch.record(&dir);
        signal(watchdog, Signal::SIGKILL);
        let (code, _, stdout, stderr) = pgtmp.finish();
        assert_eq!(code, Some(1), "{context}: {stderr}");
        assert!(stdout.is_empty(), "{context}");
        assert!(
            stderr.starts_with("pgtmp: error: ") && stderr.contains("watchdog"),
            "{context}: {stderr}"
        );
        assert!(!dir.exists(), "{context}: directory left behind");
        assert_nothing_remains(&sandbox, watch, &context);
    }
}

/// pgtmp killed while its watchdog starts the server: the watchdog cannot hand the URL to
/// anyone, so it stops the server at once instead of waiting for the idle timeout.
fn nobody_to_hand_the_url_to(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let watch = ShmWatch::new(&sandbox);
    let (pgtmp, watchdog) = start_paused(&sandbox, &["-w", "600"], "spawned");
    let dir = sandbox.only_instance();
    signal(pgtmp.pid(), Signal::SIGKILL);
    pgtmp.finish();
    signal(watchdog, Signal::SIGCONT);
    let took = time_until(Duration::from_secs(20), || !dir.exists())
        .expect("the cluster nobody got the URL of kept running");
    eprintln!("cluster nobody got the URL of stopped after {took:?}");
    assert_nothing_remains(&sandbox, watch, "pgtmp killed while the server started");
}

/// The background refill killed while its initdb runs (making the pool's template): the
/// half-made `template.new.*` entry is left until its orphaned initdb has finished, then
/// removed by the sweep; the pool still works.
fn refill_killed_mid_initdb(invoker: &Invoker) {
    let sandbox = Sandbox::with_pool(invoker, 1).cold();
    let watch = ShmWatch::new(&sandbox);
    sandbox.start(&["-w", "1"]);
    let mut initdb = None;
    let found = wait_until(PGTMP_LIMIT, || {
        initdb = sandbox
            .procs()
            .into_iter()
            .find(|p| p.cmdline.contains("initdb") && p.cmdline.contains("/template.new."));
        initdb.is_some()
    });
    assert!(found, "no refill ran after the first start");
    let initdb = initdb.unwrap();
    let refiller = parent_pid(initdb.pid).expect("cannot find the refiller");
    signal(refiller, Signal::SIGKILL);
    settle(&sandbox, CLEANUP_LIMIT, "refill killed");
    assert!(
        !incomplete_pool_entries(&sandbox).is_empty(),
        "the killed refill left no new.* entry to test with"
    );
    let removed = gc(&sandbox);
    assert!(
        removed
            .iter()
            .any(|l| l.starts_with("removed incomplete pool entry ")),
        "{removed:?}"
    );
    assert_nothing_remains(&sandbox, watch, "refill killed mid-initdb");
}

/// SIGTERM, SIGINT, SIGHUP and SIGKILL to the caller's whole process group, at each phase of a
/// start: never a half-made instance, a server without watchdog or a directory deleted under a
/// server. Whatever was started ends at its timeout; what was not is swept. The phases run side
/// by side (each case has a sandbox of its own; most of the time goes to waiting for -w 2).
fn signals_to_the_callers_group(invoker: &Invoker) {
    std::thread::scope(|scope| {
        let phases: Vec<_> = ["claimed", "locked", "reported"]
            .into_iter()
            .map(|phase| scope.spawn(move || signals_to_the_group_at(invoker, phase)))
            .collect();
        for phase in phases {
            if let Err(panic) = phase.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
}

fn signals_to_the_group_at(invoker: &Invoker, phase: &str) {
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGKILL,
    ] {
        let context = format!("{sig} to the group at {phase}");
        let sandbox = Sandbox::new(invoker);
        let watch = ShmWatch::new(&sandbox);
        let mut shell = sandbox.shell_in_new_session("\"$PGTMP\" -w 2; echo exited $?");
        shell.env("PGTMP_TEST_PAUSE", phase);
        let shell = Background::spawn(shell);
        let group = shell.pid();
        paused_process(&sandbox, group, phase);
        let group = nix::unistd::Pid::from_raw(group);
        nix::sys::signal::killpg(group, sig).expect("cannot signal the group");
        let _ = nix::sys::signal::killpg(group, Signal::SIGCONT);
        let (_, _, stdout, _) = shell.finish();
        assert!(
            !stdout.contains("postgresql://"),
            "{context}: a URL was printed: {stdout}"
        );
        // A started cluster ends at its timeout (-w 2); then sweep what the kill left.
        for dir in sandbox.instance_dirs() {
            watch.record(&dir);
        }
        settle(&sandbox, CLEANUP_LIMIT, &context);
        gc(&sandbox);
        assert_nothing_remains(&sandbox, watch, &context);
    }
}

/// Signals to the group while a start prepares its directory in the foreground (initdb, no
/// pool): initdb is in a group of its own, ends cleanly, and the sweep removes the rest.
fn signals_to_the_group_during_initdb(invoker: &Invoker) {
    for sig in [
        Signal::SIGKILL,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        let context = format!("{sig} to the group during a cold start's initdb");
        let sandbox = Sandbox::new(invoker).cold();
        let watch = ShmWatch::new(&sandbox);
        let shell = Background::spawn(sandbox.shell_in_new_session("\"$PGTMP\" -w 2"));
        let initdb_runs = wait_until(PGTMP_LIMIT, || {
            sandbox.procs().iter().any(|p| {
                p.cmdline
                    .split(' ')
                    .next()
                    .is_some_and(|program| Path::new(program).ends_with("initdb"))
            })
        });
        assert!(initdb_runs, "{context}: the start never ran initdb");
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(shell.pid()), sig)
            .unwrap_or_else(|err| panic!("{context}: cannot signal the group: {err}"));
        shell.finish();
        settle(&sandbox, CLEANUP_LIMIT, &context);
        gc(&sandbox);
        assert_nothing_remains(&sandbox, watch, &context);
    }
}

/// The instance directory deleted under a running server: the watchdog stops the server at
/// once instead of letting it run on without its files.
fn directory_deleted_under_a_running_server(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let watch = ShmWatch::new(&sandbox);
    let url = sandbox.start(&["-w", "600"]);
    let dir = parse_socket_url(&url).dir;
    watch.record(&dir);
    let postmaster = postmaster_pid(&dir).expect("no postmaster.pid");
    let watchdog = watchdog_pid(&dir).expect("no watchdog");
    fs::remove_dir_all(&dir).unwrap();
    let bound = Duration::from_secs(2) + SLACK;
    let took = time_until(bound + Duration::from_secs(20), || {
        !alive(postmaster) && !alive(watchdog)
    })
    .expect("the server kept running without its directory");
    eprintln!("server and watchdog gone {took:?} after the directory was deleted");
    assert!(
        took <= bound,
        "the server ran on for {took:?} without its directory instead of stopping at once \
         (bound {bound:?})"
    );
    assert_nothing_remains(&sandbox, watch, "directory deleted");
}

// ---------------------------------------------------------------------------------------------
// Concurrency

/// 5 rounds of 8 parallel starts from a pool, with `pgtmp gc` running in a loop meanwhile:
/// every start works, gc never removes a live cluster, and after each round nothing is left.
fn parallel_starts_with_concurrent_gc(invoker: &Invoker) {
    let sandbox = Arc::new(Sandbox::with_pool(invoker, 2));
    let watch = ShmWatch::new(&sandbox);
    for round in 1..=5 {
        let stop_gc = Arc::new(AtomicBool::new(false));
        let gc_loop = {
            let (sandbox, stop_gc) = (Arc::clone(&sandbox), Arc::clone(&stop_gc));
            std::thread::spawn(move || {
                let mut removed = Vec::new();
                while !stop_gc.load(Ordering::Relaxed) {
                    removed.extend(gc(&sandbox));
                }
                removed
            })
        };
        let urls = sandbox.start_at_once(8, &["-w", UNTIL_STOPPED]);
        for url in &urls {
            assert_eq!(sandbox.psql(url, "select 1"), "1", "round {round}");
        }
        stop_gc.store(true, Ordering::Relaxed);
        let removed = gc_loop.join().unwrap();
        assert!(
            removed.is_empty(),
            "round {round}: gc removed something of live clusters: {removed:?}"
        );
        for url in &urls {
            watch.record(&parse_socket_url(url).dir);
            let out = sandbox.run(&["stop", url]);
            assert!(out.success(), "round {round}: stop failed:\n{out}");
        }
        settle(&sandbox, CLEANUP_LIMIT, &format!("round {round}"));
        assert!(
            sandbox.instance_dirs().is_empty(),
            "round {round}: {:?}",
            sandbox.instance_dirs()
        );
    }
    assert_nothing_remains(&sandbox, watch, "5 rounds of 8 parallel starts");
}

// ---------------------------------------------------------------------------------------------
// Ports

/// A port taken between pgtmp's choice and postgres's bind: pgtmp retries with another one.
/// (`-p PORT` of a taken port fails clearly: tests/bad_input.rs, port_in_use.)
fn stolen_port_is_retried(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let watch = ShmWatch::new(&sandbox);
    let thief = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stolen = thief.local_addr().unwrap().port();
    let mut cmd = sandbox.pgtmp();
    cmd.args(["-t", "-w", "2"])
        .env("PGTMP_TEST_FIRST_PORT", stolen.to_string());
    let url = check_started(&run(&mut cmd, PGTMP_LIMIT), invoker);
    let tcp = parse_tcp_url(&url);
    assert_ne!(tcp.port, stolen, "handed out the stolen port");
    assert_eq!(sandbox.psql(&url, "select 1"), "1");
    let dir = sandbox.only_instance();
    watch.record(&dir);
    let log = fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
    assert!(
        log.contains("Address already in use"),
        "the first attempt did not meet the stolen port:\n{log}"
    );
    drop(thief);
    settle(&sandbox, CLEANUP_LIMIT, "stolen port");
    assert_nothing_remains(&sandbox, watch, "stolen port");
}

// ---------------------------------------------------------------------------------------------
// The sweep's restraint

/// gc removes only what it can prove is pgtmp's: not a process whose pid a state file names
/// but which started at another time (a reused pid), not a symlink planted in PGTMP_DIR nor
/// what it points to, not a directory with files pgtmp never makes, not a kept cluster.
fn gc_never_touches_what_is_not_its_own(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    // A kept cluster, and PGTMP_DIR made by pgtmp.
    let kept_url = sandbox.start(&["-k", "-w", "1"]);
    let kept = parse_socket_url(&kept_url).dir;
    settle(&sandbox, CLEANUP_LIMIT, "kept cluster stopping");
    let (server_account, server_uid) = invoker.server_account();
    let give = |path: &Path| {
        let uid = nix::unistd::Uid::from_raw(server_uid);
        let gid = nix::unistd::User::from_uid(uid).unwrap().unwrap().gid;
        if nix::unistd::geteuid().is_root() {
            nix::unistd::chown(path, Some(uid), Some(gid)).unwrap();
        }
    };
    let p = &sandbox.pgtmp_dir;
    // A stranger process of the server account whose pid a forged state names, with another
    // start time (as a reused pid would have).
    let mut stranger = Command::new("sleep");
    stranger.arg("60");
    if nix::unistd::geteuid().is_root() {
        stranger.uid(server_uid);
    }
    let mut stranger = stranger.spawn().unwrap();
    let forged = p.join("zzzz0001");
    fs::create_dir_all(forged.join("data")).unwrap();
    fs::write(forged.join("data/PG_VERSION"), "15\n").unwrap();
    fs::write(forged.join("PGTMP"), "pgtmp instance directory\n").unwrap();
    fs::write(
        forged.join("pgtmp.state"),
        format!(
            "watchdog_pid={0}\npostmaster_pid={0}\nport=5432\ntcp=0\nkeep=0\nowner_uid=0\n\
             user=x\ntimeout=60\nwatchdog_start=1\npostmaster_start=1\nshm_sysv_id=\nshm_posix=\n",
            stranger.id()
        ),
    )
    .unwrap();
    fs::write(
        forged.join("data/postmaster.pid"),
        format!("{}\n", stranger.id()),
    )
    .unwrap();
    // A directory outside, reached through a symlink with an instance's name.
    let outside = sandbox.path("outside");
    fs::create_dir_all(outside.join("data")).unwrap();
    std::os::unix::fs::symlink(&outside, p.join("zzzz0002")).unwrap();
    // A directory with someone's notes in it.
    let notes = p.join("zzzz0003");
    fs::create_dir_all(notes.join("data")).unwrap();
    fs::write(notes.join("notes.txt"), "mine").unwrap();
    for path in [&forged, &forged.join("data"), &notes, &notes.join("data")] {
        give(path);
    }
    for file in [
        "PGTMP",
        "pgtmp.state",
        "data/PG_VERSION",
        "data/postmaster.pid",
    ] {
        give(&forged.join(file));
    }
    give(&notes.join("notes.txt"));
    let _ = fs::set_permissions(p.join("zzzz0002"), fs::Permissions::from_mode(0o777));
    // What a killed initdb would leave, but without pgtmp's mark: someone's backup.
    let backup = p.join("zzzz0004");
    fs::create_dir_all(backup.join("data/photos")).unwrap();
    give(&backup);
    give(&backup.join("data"));
    // The schema cache's place, planted as a symlink to a directory holding what a sweep of
    // the cache removes (an abandoned copy, an entry unused for a month).
    let elsewhere = sandbox.path("elsewhere");
    for old in ["trash.x", "0123456789abcdef"] {
        fs::create_dir_all(elsewhere.join(old)).unwrap();
        fs::File::open(elsewhere.join(old))
            .unwrap()
            .set_modified(std::time::SystemTime::now() - Duration::from_secs(30 * 86_400))
            .unwrap();
    }
    let planted = p.join("cache");
    std::os::unix::fs::symlink(&elsewhere, &planted).unwrap();

    let removed = gc(&sandbox);
    assert_eq!(
        removed,
        [
            format!("removed {}", forged.display()),
            format!(
                "skipped the schema cache: {} is not a directory of this account's own (a symlink, or someone else's); remove it",
                planted.display()
            )
        ],
        "as {server_account}"
    );
    assert!(elsewhere.join("trash.x").is_dir() && elsewhere.join("0123456789abcdef").is_dir());
    assert!(backup.join("data/photos").is_dir());
    fs::remove_file(&planted).unwrap();
    assert!(
        alive(stranger.id() as i32),
        "gc killed a process whose pid was merely recorded"
    );
    stranger.kill().unwrap();
    stranger.wait().unwrap();
    assert!(fs::symlink_metadata(p.join("zzzz0002")).is_ok());
    assert!(outside.join("data").is_dir());
    assert!(notes.join("notes.txt").is_file());
    assert!(
        kept.join("data/PG_VERSION").is_file(),
        "a kept cluster was removed"
    );
    assert!(gc(&sandbox).is_empty(), "a second gc found more to do");
}

// ---------------------------------------------------------------------------------------------
// Resources

/// Mounts a tmpfs of `size` at `path`; None (after reporting a skip) when that is impossible
/// here. In CI it must work.
fn tmpfs(path: &Path, size: &str) -> Option<Mount> {
    fs::create_dir_all(path).unwrap();
    let ok = nix::unistd::geteuid().is_root()
        && Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=1777"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
    if ok {
        return Some(Mount(path.to_path_buf()));
    }
    cannot_run_here(&format!(
        "cannot mount a small tmpfs at {} (root is needed)",
        path.display()
    ));
    None
}

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills a file system until it has no space left.
fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let mut file = fs::File::create(&filler).unwrap();
    let block = vec![0u8; 1 << 20];
    use std::io::Write;
    while file.write_all(&block).is_ok() {}
    let small = vec![0u8; 512];
    while file.write_all(&small).is_ok() {}
    let _ = file.flush();
    filler
}

/// A full disk: a start that must prepare a directory (initdb) and a start that claims a
/// prepared one but cannot start its server both fail with a clear error, hand out nothing and
/// leave no directory, process or segment behind.
fn full_disk(invoker: &Invoker) {
    let mut sandbox = Sandbox::new(invoker);
    let mount_point = sandbox.path("disk");
    let Some(_mount) = tmpfs(&mount_point, "24m") else {
        return;
    };
    if invoker.switched {
        std::os::unix::fs::chown(&mount_point, Some(invoker.uid), Some(invoker.gid)).unwrap();
    }
    // PGTMP_DIR is on the small disk: pgtmp, the sandbox's queries and the watch all use it.
    sandbox.pgtmp_dir = mount_point.join("p");
    let pgtmp = |args: &[&str], pool: &str| {
        let mut cmd = sandbox.pgtmp();
        cmd.args(args).env("PGTMP_POOL_SIZE", pool);
        run(&mut cmd, PGTMP_LIMIT)
    };
    let watch = ShmWatch::new(&sandbox);
    let saved = sandbox
        .saved_templates()
        .expect("the suite's saved templates");
    // 24 MB is less than a data directory needs: the copy of the saved template, then
    // initdb, run out of space.
    let out = pgtmp(&["-w", "2"], "0");
    let message = check_failed(&out, 1);
    assert!(
        message.contains("No space left on device") || message.contains("could not"),
        "unclear error for a full disk: {message}"
    );
    let left = sandbox.instance_dirs();
    assert!(left.is_empty(), "full disk at initdb left {left:?}");
    assert_eq!(
        sandbox.saved_templates(),
        Some(saved),
        "a copy that found no room removed the saved template"
    );
    drop(_mount);

    // A disk with room for one prepared entry, then filled: the claimed entry cannot start.
    let Some(_mount) = tmpfs(&mount_point, "200m") else {
        return;
    };
    if invoker.switched {
        std::os::unix::fs::chown(&mount_point, Some(invoker.uid), Some(invoker.gid)).unwrap();
    }
    let out = pgtmp(&["-w", "1"], "1");
    let url = check_started(&out, invoker);
    watch.record(&parse_socket_url(&url).dir);
    sandbox.wait_for_full_pool(1, PGTMP_LIMIT);
    settle(&sandbox, CLEANUP_LIMIT, "first cluster on the small disk");
    let filler = fill(&mount_point);
    let out = pgtmp(&["-w", "2"], "1");
    let message = check_failed(&out, 1);
    assert!(
        message.contains("No space left on device"),
        "unclear error for a full disk: {message}"
    );
    settle(&sandbox, CLEANUP_LIMIT, "full disk at server start");
    let left = sandbox.instance_dirs();
    assert!(left.is_empty(), "full disk at server start left {left:?}");
    fs::remove_file(filler).unwrap();
    watch.assert_released("full disk");
}

/// Shared memory that cannot be allocated: the largest shared_buffers PostgreSQL accepts (8 TB,
/// more than the machine can map), and huge pages demanded where none are free. A clear error
/// naming shared memory, and nothing left behind.
fn shared_memory_exhausted(invoker: &Invoker) {
    let huge_pages_free = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let mut cases = vec!["-c shared_buffers=1073741823"];
    if huge_pages_free == 0 {
        cases.push("-c huge_pages=on");
    } else {
        skip("huge pages are free here, so huge_pages=on does not exhaust them");
    }
    for options in cases {
        let sandbox = Sandbox::with_pool(invoker, 1);
        let watch = ShmWatch::new(&sandbox);
        let out = sandbox.run(&["-w", "2", "-o", options]);
        let message = check_failed(&out, 1);
        assert!(
            message.contains("shared memory") && message.contains("Cannot allocate memory"),
            "-o '{options}': the error does not say shared memory is the problem: {message}"
        );
        settle(&sandbox, CLEANUP_LIMIT, options);
        sandbox.assert_nothing_left(options);
        assert_nothing_remains(&sandbox, watch, options);
    }
}

// ---------------------------------------------------------------------------------------------
// Secrets

/// The TCP password appears in no process's command line or environment and in no file under
/// PGTMP_DIR; the instance and data directories are 0700; another account cannot connect over
/// the Unix socket.
fn secrets_stay_secret(invoker: &Invoker) {
    let sandbox = Sandbox::with_pool(invoker, 1);
    // The first -t start sets its password through a session; it asks the refill to prepare
    // one with each pool entry, and the second takes one of those.
    let first = sandbox.start(&["-t", "-w", UNTIL_STOPPED]);
    sandbox.wait_for_full_pool(1, Duration::from_secs(60));
    let entries = sandbox.pool_entries("ready.");
    assert!(
        entries.iter().all(|e| e.join("tcp.password").is_file()),
        "the refill prepared no password: {entries:?}"
    );
    let url = sandbox.start(&["-t", "-w", UNTIL_STOPPED]);
    let password = parse_tcp_url(&url).password;
    let first_password = parse_tcp_url(&first).password;
    assert_eq!(sandbox.psql(&url, "select 1"), "1");
    let stopped = sandbox.run(&["stop", &first]);
    assert!(stopped.success(), "{stopped}");
    // The refill after the second start is done: nothing appears or goes under the walk below
    // but what the running server itself writes.
    sandbox.wait_for_full_pool(1, Duration::from_secs(60));
    let dir = sandbox.only_instance();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        if entry.file_name().to_string_lossy().parse::<i32>().is_err() {
            continue;
        }
        for what in ["cmdline", "environ"] {
            if let Ok(bytes) = fs::read(entry.path().join(what)) {
                let text = String::from_utf8_lossy(&bytes);
                assert!(
                    !text.contains(&password) && !text.contains(&first_password),
                    "the password is in the {what} of {}",
                    entry.path().display()
                );
            }
        }
    }
    let mut stack = vec![sandbox.pgtmp_dir.clone()];
    while let Some(path) = stack.pop() {
        let vanished = |err: &std::io::Error| err.kind() == std::io::ErrorKind::NotFound;
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            // A file the running server removed meanwhile (its statistics' temporary files).
            Err(err) if vanished(&err) => continue,
            Err(err) => panic!("cannot look at {}: {err}", path.display()),
        };
        if meta.is_dir() {
            match fs::read_dir(&path) {
                Ok(entries) => stack.extend(entries.flatten().map(|e| e.path())),
                Err(err) if vanished(&err) => {}
                Err(err) => panic!("cannot read {}: {err}", path.display()),
            }
        } else if meta.is_file() {
            let bytes = fs::read(&path).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains(&password) && !text.contains(&first_password),
                "the password is in {}",
                path.display()
            );
        }
    }
    for private in [&dir, &dir.join("data")] {
        let mode = fs::metadata(private).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} has mode {mode:o}", private.display());
    }
    // Another account: neither the invoker nor the server account.
    let (_, server_uid) = invoker.server_account();
    if !nix::unistd::geteuid().is_root() {
        skip("checking that another account cannot connect needs root to switch accounts");
        return;
    }
    let other = ["nobody", "cloudsdk", "daemon"]
        .iter()
        .filter_map(|n| nix::unistd::User::from_name(n).ok().flatten())
        .find(|u| u.uid.as_raw() != invoker.uid && u.uid.as_raw() != server_uid)
        .expect("no third account to try connecting as");
    let socket_url = socket_url_for(&invoker.name, &dir, parse_tcp_url(&url).port);
    let mut psql = Command::new(client("psql"));
    psql.args(["-X", "-At", "-c", "select 1", &socket_url])
        .uid(other.uid.as_raw())
        .gid(other.gid.as_raw())
        .current_dir("/")
        .env("HOME", "/");
    let out = run(&mut psql, PSQL_LIMIT);
    assert!(
        !out.success() && out.stderr.contains("Permission denied"),
        "account {} could use the socket:\n{out}",
        other.name
    );
}
