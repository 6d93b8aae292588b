//! Shared harness of the black-box integration tests: they run the real `pgtmp` binary against
//! the real PostgreSQL server and check the result with the real `psql`.
//!
//! - [`Invoker`]: who runs pgtmp. Tests run as the current account and, when that is root, also
//!   as an ordinary account (`$PGTMP_TEST_USER`, else `pgtmp-test`, made if missing); the
//!   [`both_invokers!`] macro makes an `as_self` and an `as_user` test of one scenario.
//! - [`Sandbox`]: one private temporary directory per test holding its PGTMP_DIR (and any `-d`
//!   directories). Dropping it stops every cluster and refill still running under it, then
//!   removes it, so test servers never outlive the test. Its starts copy a template the suite
//!   saved once, as after a reboot, instead of each running initdb ([`Sandbox::cold`]: as on
//!   a new machine).
//! - [`run`]: every program is run with a deadline, and its stdout/stderr must be closed when it
//!   exits (a detached child holding them would hang `url=$(pgtmp)` in a shell).
//! - Conditions are polled with [`wait_until`] / [`time_until`], never slept for.

#![allow(dead_code)]

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, Uid, User};
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Added to every time bound of the specification: the machine may be busy with other tests.
pub const SLACK: Duration = Duration::from_millis(1500);
/// Longest a pgtmp command may take (a cold start on a loaded two-core machine is a few seconds).
pub const PGTMP_LIMIT: Duration = Duration::from_secs(90);
/// Longest a psql command may take.
pub const PSQL_LIMIT: Duration = Duration::from_secs(30);
/// `-w` of a cluster that its test (or the test's sandbox) stops: however loaded the machine,
/// it does not end by itself while the test still uses it. Tests of the idle timeout give their
/// own.
pub const UNTIL_STOPPED: &str = "600";

/// Makes the test `$name::as_self` (current account) and `$name::as_user` (the ordinary
/// account; reported as skipped when the suite does not run as root) from `fn $name(&Invoker)`.
#[macro_export]
macro_rules! both_invokers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn as_self() {
                super::$name(&$crate::common::Invoker::current());
            }

            #[test]
            fn as_user() {
                match $crate::common::Invoker::ordinary() {
                    Some(invoker) => super::$name(&invoker),
                    None => $crate::common::skip("not root, so there is no other account to run as"),
                }
            }
        }
    )*};
}

/// Reports a test that cannot run here; it then passes without checking anything. Written to
/// the stderr handle itself, which the test harness does not capture, so it always shows.
pub fn skip(reason: &str) {
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

/// Something the test needs is not available here: skips outside CI; fails in CI (CI=true),
/// where .ci/run provides everything, so every test must run.
pub fn cannot_run_here(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{reason}; CI must run this test (.ci/run provides what it needs)");
    }
    skip(reason);
}

/// Whether `program ARGS` runs and exits 0 as the invoker (a probe for a driver).
pub fn works(invoker: &Invoker, program: &str, args: &[&str]) -> bool {
    invoker
        .command(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A program the test needs is missing: skips outside CI; fails in CI, where .ci/run must
/// have installed it.
pub fn missing(program: &str, install: &str) {
    cannot_run_here(&format!("{program} is not installed ({install})"));
}

// ---------------------------------------------------------------------------------------------
// Invokers

/// An account that runs pgtmp and psql.
#[derive(Debug, Clone)]
pub struct Invoker {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// True for the ordinary account: commands switch to it (the suite runs as root then).
    pub switched: bool,
}

impl Invoker {
    /// The account running the test suite.
    pub fn current() -> Invoker {
        let uid = Uid::current();
        let user = User::from_uid(uid).ok().flatten().unwrap_or_else(|| {
            panic!("uid {uid} has no passwd entry; run the tests as a real account")
        });
        Invoker::from_user(user, false)
    }

    /// The ordinary account, when the suite runs as root; None otherwise. It is
    /// `$PGTMP_TEST_USER`, else `pgtmp-test`, which the suite creates when it is missing (so
    /// that `cargo test` works as root on a fresh machine).
    pub fn ordinary() -> Option<Invoker> {
        if !Uid::current().is_root() {
            return None;
        }
        let name = std::env::var("PGTMP_TEST_USER")
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "pgtmp-test".into());
        Some(Invoker::from_user(ensure_account(&name), true))
    }

    /// A second ordinary account that plays the attacker in the security tests, when the suite
    /// runs as root; None otherwise. It is `$PGTMP_TEST_ATTACKER`, else `pgtmp-attacker`,
    /// created when missing. Never the same account as [`Invoker::ordinary`].
    pub fn attacker() -> Option<Invoker> {
        if !Uid::current().is_root() {
            return None;
        }
        let name = std::env::var("PGTMP_TEST_ATTACKER")
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "pgtmp-attacker".into());
        let attacker = Invoker::from_user(ensure_account(&name), true);
        let ordinary = Invoker::ordinary().expect("root has an ordinary account");
        assert_ne!(
            attacker.uid, ordinary.uid,
            "the attacker account must differ from the test account"
        );
        Some(attacker)
    }

    fn from_user(user: User, switched: bool) -> Invoker {
        Invoker {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
            switched,
        }
    }

    /// The existing account `name`, to run as (from root).
    pub fn of_account(name: &str) -> Invoker {
        let user = nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("the account {name} exists"));
        Invoker {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
            switched: true,
        }
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// The pgtmp binary this account can execute.
    pub fn bin(&self) -> PathBuf {
        if self.switched {
            shared_binary().to_path_buf()
        } else {
            PathBuf::from(env!("CARGO_BIN_EXE_pgtmp"))
        }
    }

    /// The account the server runs as for this invoker: root hands it to `postgres` (else
    /// `nobody`), everyone else runs it themselves.
    pub fn server_account(&self) -> (String, u32) {
        if !self.is_root() {
            return (self.name.clone(), self.uid);
        }
        ["postgres", "nobody"]
            .iter()
            .find_map(|name| User::from_name(name).ok().flatten())
            .map(|u| (u.name, u.uid.as_raw()))
            .expect("neither 'postgres' nor 'nobody' exists to run the server as")
    }

    /// A command run as this account, with the caller's PG* variables removed (but
    /// PGTMP_BINDIR naming the [`test_bindir`], if any) and `/` as its working directory.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                cmd.env_remove(key);
            }
        }
        if let Some(bindir) = test_bindir() {
            cmd.env("PGTMP_BINDIR", bindir);
        }
        cmd.current_dir("/");
        if self.switched {
            cmd.uid(self.uid)
                .gid(self.gid)
                .env("HOME", &self.home)
                .env("USER", &self.name)
                .env("LOGNAME", &self.name)
                .env_remove("TMPDIR");
        }
        cmd
    }
}

impl fmt::Display for Invoker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (uid {})", self.name, self.uid)
    }
}

/// The account `name`, created (with a home directory, as an ordinary login account) when it
/// does not exist yet. Only root gets here. Several test binaries may race to create it, so a
/// failed `useradd` is fine as long as the account exists afterwards.
/// A further ordinary account `name`, made when missing (e.g. a second server account for
/// root's `--run-as`): its name and uid.
pub fn ordinary_account(name: &str) -> (String, u32) {
    let user = ensure_account(name);
    (user.name, user.uid.as_raw())
}

fn ensure_account(name: &str) -> User {
    let lookup = || User::from_name(name).ok().flatten();
    if let Some(user) = lookup() {
        return checked_ordinary(user);
    }
    let out = Command::new("useradd")
        .args(["--create-home", "--shell", "/bin/bash", name])
        .output();
    match lookup() {
        Some(user) => checked_ordinary(user),
        None => panic!(
            "the test account {name} does not exist and `useradd {name}` failed ({out:?}); \
             create it, or set PGTMP_TEST_USER / PGTMP_TEST_ATTACKER to existing ordinary accounts"
        ),
    }
}

fn checked_ordinary(user: User) -> User {
    assert!(
        !user.uid.is_root(),
        "the ordinary test account {} must not be root",
        user.name
    );
    user
}

fn shared_binary_dir(pid: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/pgtmp-test-bin-{pid}"))
}

extern "C" fn remove_shared_binary() {
    let _ = fs::remove_dir_all(shared_binary_dir(std::process::id()));
}

/// A copy of the binary that any account can run (target/ may be private to the builder),
/// made once per test process and removed when it exits.
fn shared_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // Copies left by test processes that were killed.
        if let Ok(entries) = fs::read_dir("/tmp") {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("pgtmp-test-bin-")
                    && let Ok(pid) = pid.parse::<u32>()
                    && !Path::new(&format!("/proc/{pid}")).exists()
                {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = shared_binary_dir(std::process::id());
        fs::create_dir_all(&dir).expect("cannot create the shared binary directory");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.join("pgtmp");
        // Copied by `cp`, not fs::copy: a child another test thread forks meanwhile would
        // inherit our write descriptor until its exec, and exec'ing the copy would then fail
        // with ETXTBSY ("Text file busy", rust-lang/rust#114554).
        let copied = Command::new("cp")
            .arg(env!("CARGO_BIN_EXE_pgtmp"))
            .arg(&bin)
            .status()
            .is_ok_and(|s| s.success());
        assert!(copied, "cannot copy the pgtmp binary to {}", bin.display());
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        // SAFETY: registers a plain function that only removes a directory at exit.
        unsafe { nix::libc::atexit(remove_shared_binary) };
        bin
    })
}

/// A directory that every account can read and enter, removed when the test process exits
/// (it holds the shared binary): for programs a test builds once and runs as either invoker.
pub fn shared_dir() -> &'static Path {
    shared_binary()
        .parent()
        .expect("the shared binary is in a directory")
}

// ---------------------------------------------------------------------------------------------
// The PostgreSQL under test

/// The server binaries under test: `$PGTMP_TEST_BINDIR` (e.g. a build of another major that
/// scripts/test-versions fetched), which every pgtmp the suite runs gets as PGTMP_BINDIR; None
/// when unset: the installation pgtmp finds on this machine. Checked once (see [`check_bindir`]).
pub fn test_bindir() -> Option<&'static Path> {
    Some(tested()?.0.as_path())
}

/// The major version of the [`test_bindir`], if one is set.
pub fn test_major() -> Option<u32> {
    Some(tested()?.1)
}

/// A client program (`psql`, `pg_dump`): the one in the [`test_bindir`] if it has one, else
/// the one on PATH.
pub fn client(program: &str) -> PathBuf {
    test_bindir()
        .map(|dir| dir.join(program))
        .filter(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from(program))
}

fn tested() -> Option<&'static (PathBuf, u32)> {
    static TESTED: OnceLock<Option<(PathBuf, u32)>> = OnceLock::new();
    TESTED
        .get_or_init(|| {
            let dir = std::env::var_os("PGTMP_TEST_BINDIR").filter(|d| !d.is_empty())?;
            Some(check_bindir(Path::new(&dir)))
        })
        .as_ref()
}

/// Checks that PGTMP_TEST_BINDIR holds a PostgreSQL server that every account the suite runs
/// servers as can run (as root: the ordinary and attacker accounts, and `postgres`); returns
/// its absolute path and major version. Panics saying what to do otherwise.
fn check_bindir(dir: &Path) -> (PathBuf, u32) {
    let var = format!("PGTMP_TEST_BINDIR={}", dir.display());
    let programs = ["postgres", "initdb"];
    let dir = fs::canonicalize(dir).ok().filter(|dir| {
        programs
            .iter()
            .all(|p| fs::metadata(dir.join(p)).is_ok_and(|m| m.is_file()))
    });
    let Some(dir) = dir else {
        panic!(
            "{var} is not a directory holding PostgreSQL's postgres and initdb; point it at a \
             server bin directory (`pg_config --bindir`), or let scripts/test-versions fetch one"
        );
    };
    // `PROGRAM --version`'s output, or why it failed.
    let version = |cmd: &mut Command| match cmd.arg("--version").current_dir("/").output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(err) => Err(err.to_string()),
    };
    let text = version(&mut Command::new(dir.join("postgres")))
        .unwrap_or_else(|err| panic!("{var}: its postgres does not run: {err}"));
    let major = text
        .split_whitespace()
        .find_map(|word| word.split(['.', 'b', 'r']).next()?.parse().ok())
        .unwrap_or_else(|| panic!("{var}: no version in `postgres --version`: {text:?}"));
    if Uid::current().is_root() {
        let (server, _) = Invoker::current().server_account();
        let accounts = [Invoker::ordinary(), Invoker::attacker()]
            .into_iter()
            .flatten()
            .map(|invoker| invoker.name)
            .chain([server]);
        for name in accounts {
            let user = User::from_name(&name).ok().flatten().unwrap();
            for program in programs {
                let mut cmd = Command::new(dir.join(program));
                cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
                if let Err(err) = version(&mut cmd) {
                    panic!(
                        "{var}: the account {name} cannot run {program} there, and the suite \
                         runs servers as {name} too; make the installation readable by every \
                         account (chmod -R a+rX on it, a+x on each directory above it: not under \
                         a private home such as /root), or let scripts/test-versions fetch it \
                         (its cache is readable by all): {err}"
                    );
                }
            }
        }
    }
    (dir, major)
}

// ---------------------------------------------------------------------------------------------
// Running programs

/// What a finished program did.
pub struct Outcome {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// From spawning until it exited and both its pipes were closed.
    pub elapsed: Duration,
}

impl Outcome {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The non-empty lines on stderr.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match (self.status.code(), self.status.signal()) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => "unknown status".to_string(),
        };
        write!(
            f,
            "{}\n  -> {status} after {:.2?}\n  stdout: {:?}\n  stderr: {:?}",
            self.what, self.elapsed, self.stdout, self.stderr
        )
    }
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Starts `cmd` (`what` names it in a panic). ETXTBSY: the shared binary was being copied
/// while another test thread forked, and that child holds the write descriptor until its
/// exec; it goes away within moments, so the start is tried again for up to 5 s.
pub fn spawn(cmd: &mut Command, what: &str) -> Child {
    let tried = Instant::now();
    loop {
        match cmd.spawn() {
            Ok(child) => return child,
            Err(err)
                if err.raw_os_error() == Some(nix::libc::ETXTBSY)
                    && tried.elapsed() < Duration::from_secs(5) =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(err) => panic!("cannot run {what}: {err}"),
        }
    }
}

/// Runs a program to completion with stdin from /dev/null, capturing its output. Panics if it
/// runs longer than `limit`, or if its stdout or stderr are still open after it exited (some
/// process it left behind holds them).
pub fn run(cmd: &mut Command, limit: Duration) -> Outcome {
    let what = describe(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = spawn(cmd, &what);
    let (tx, rx) = mpsc::channel::<(usize, Vec<u8>)>();
    let pipes: [Box<dyn Read + Send>; 2] = [
        Box::new(child.stdout.take().unwrap()),
        Box::new(child.stderr.take().unwrap()),
    ];
    for (index, mut pipe) in pipes.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            let _ = tx.send((index, bytes));
        });
    }
    drop(tx);
    let status = wait_child(&mut child, limit.saturating_sub(started.elapsed()), &what);
    let exited = Instant::now();
    let mut output = [Vec::new(), Vec::new()];
    for _ in 0..2 {
        let wait = Duration::from_secs(5).saturating_sub(exited.elapsed());
        match rx.recv_timeout(wait) {
            Ok((index, bytes)) => output[index] = bytes,
            Err(_) => panic!(
                "{what} exited ({status}) but its stdout/stderr stayed open for 5 s: a process \
                 it left behind still holds them, so `url=$(...)` in a shell would hang"
            ),
        }
    }
    let [stdout, stderr] = output.map(|b| String::from_utf8_lossy(&b).into_owned());
    Outcome {
        what,
        status,
        stdout,
        stderr,
        elapsed: started.elapsed(),
    }
}

/// Waits for a child to exit and returns its status; after `limit` kills it and panics, naming
/// it `what`.
pub fn wait_child(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("cannot wait for a child") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------------------------------------
// Polling

/// Polls `condition` until it holds (true) or `limit` has passed (false).
pub fn wait_until(limit: Duration, condition: impl FnMut() -> bool) -> bool {
    time_until(limit, condition).is_some()
}

/// Polls `condition` until it holds and returns how long that took, or None after `limit`.
///
/// Between checks it waits 20 ms, or three times as long as the check took: a check that scans
/// every process (see [`procs_referencing`]) then uses at most a quarter of a core, however
/// many tests poll at once, and a cheap one is still seen within 20 ms.
pub fn time_until(limit: Duration, mut condition: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        let checked = Instant::now();
        if condition() {
            return Some(started.elapsed());
        }
        let cost = checked.elapsed();
        if started.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20).max(cost * 3));
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A process found in /proc.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub uid: u32,
    pub cmdline: String,
}

impl fmt::Display for Proc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} uid {}: {}", self.pid, self.uid, self.cmdline)
    }
}

fn mentions(text: &str, path: &str) -> bool {
    text.match_indices(path).any(|(at, _)| {
        matches!(
            text[at + path.len()..].chars().next(),
            None | Some('/' | '"' | '\'' | ' ' | '\0' | '\n')
        )
    })
}

/// A process's command line, its arguments separated by spaces; empty when it is gone. A
/// PostgreSQL server process shows its title here ("postgres: CLUSTER: USER DB [local] SELECT").
pub fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Live processes (zombies excluded, this test process excluded) whose command line, working
/// directory, environment or open files mention `path`.
///
/// Every process of the machine is looked at, which costs tens of milliseconds: the cheap
/// reads come first, and whether a process is alive is asked only of those that match (a
/// zombie has no command line, directory, environment or files anyway).
pub fn procs_referencing(path: &Path) -> Vec<Proc> {
    let needle = path.to_string_lossy().into_owned();
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let dir = entry.path();
        let cmdline = cmdline(pid);
        let referenced = mentions(&cmdline, &needle)
            || fs::read_link(dir.join("cwd"))
                .is_ok_and(|cwd| mentions(&cwd.to_string_lossy(), &needle))
            || fs::read(dir.join("environ"))
                .is_ok_and(|env| mentions(&String::from_utf8_lossy(&env), &needle))
            || fs::read_dir(dir.join("fd")).is_ok_and(|fds| {
                fds.flatten().any(|fd| {
                    fs::read_link(fd.path())
                        .is_ok_and(|target| mentions(&target.to_string_lossy(), &needle))
                })
            });
        if referenced && alive(pid) {
            let uid = fs::metadata(&dir).map(|m| m.uid()).unwrap_or(u32::MAX);
            found.push(Proc {
                pid,
                uid,
                cmdline: cmdline.trim().to_string(),
            });
        }
    }
    found
}

/// The fields of `/proc/PID/stat` after the command name, if the process exists: the state
/// letter, the parent pid, ... The line is "pid (comm) S PPID ...", and the name may itself
/// hold spaces and parentheses, so the fields start after the last ')'.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The state letter of a process (R, S, T, Z...), if it exists.
pub fn proc_state(pid: i32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

/// The parent pid of a process, if it exists.
pub fn parent_pid(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// True while the process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    proc_state(pid).is_some_and(|state| state != 'Z' && state != 'X')
}

/// The real uid a process runs as.
pub fn proc_uid(pid: i32) -> u32 {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|err| panic!("cannot read /proc/{pid}/status: {err}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("no Uid line in /proc/{pid}/status"))
}

pub fn signal(pid: i32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid), sig);
}

/// The TCP sockets a process listens on, as "127.0.0.1:5432" (IPv4) or "[hex]:5432" (IPv6).
pub fn tcp_listeners(pid: i32) -> Vec<String> {
    let inodes: HashSet<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|err| panic!("cannot list the files of process {pid}: {err}"))
        .flatten()
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if fields.len() < 10 || fields[3] != "0A" || !inodes.contains(fields[9]) {
                continue;
            }
            let (addr, port) = fields[1].split_once(':').unwrap();
            let port = u16::from_str_radix(port, 16).unwrap();
            if addr.len() == 8 {
                let ip = u32::from_str_radix(addr, 16).unwrap().to_le_bytes();
                found.push(format!("{}.{}.{}.{}:{port}", ip[0], ip[1], ip[2], ip[3]));
            } else {
                found.push(format!("[{addr}]:{port}"));
            }
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------
// URLs and cluster directories

/// Decodes %XX escapes.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("percent-decoded text is not UTF-8")
}

/// Encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A socket URL `postgresql://USER@/test?host=ENCODED_DIR`, taken apart.
#[derive(Debug)]
pub struct SocketUrl {
    pub user: String,
    pub dir: PathBuf,
    /// The host parameter as printed (still percent-encoded).
    pub encoded_host: String,
}

pub fn parse_socket_url(url: &str) -> SocketUrl {
    let parse = || -> Option<SocketUrl> {
        let rest = url.strip_prefix("postgresql://")?;
        let (user, rest) = rest.split_once('@')?;
        let encoded_host = rest.strip_prefix("/test?host=")?;
        let dir = PathBuf::from(percent_decode(encoded_host));
        let valid = !user.is_empty() && !encoded_host.contains(['&', '?', '/']);
        (valid && dir.is_absolute()).then(|| SocketUrl {
            user: percent_decode(user),
            dir,
            encoded_host: encoded_host.to_string(),
        })
    };
    parse().unwrap_or_else(|| {
        panic!("not a socket URL of the form postgresql://USER@/test?host=DIR: {url:?}")
    })
}

/// The URL of a cluster's Unix socket in `dir` for a server on `port`:
/// `postgresql://USER@/test?host=ENCODED_DIR&port=PORT`.
pub fn socket_url_for(user: &str, dir: &Path, port: u16) -> String {
    format!(
        "postgresql://{}@/test?host={}&port={port}",
        percent_encode(user),
        percent_encode(&dir.to_string_lossy())
    )
}

/// A TCP URL `postgresql://USER:PASSWORD@127.0.0.1:PORT/test`, taken apart.
#[derive(Debug)]
pub struct TcpUrl {
    pub user: String,
    pub password: String,
    pub port: u16,
}

pub fn parse_tcp_url(url: &str) -> TcpUrl {
    let parse = || -> Option<TcpUrl> {
        let rest = url.strip_prefix("postgresql://")?;
        let (userinfo, rest) = rest.rsplit_once('@')?;
        let (user, password) = userinfo.split_once(':')?;
        let port = rest.strip_prefix("127.0.0.1:")?.strip_suffix("/test")?;
        Some(TcpUrl {
            user: percent_decode(user),
            password: password.to_string(),
            port: port.parse().ok()?,
        })
    };
    parse().unwrap_or_else(|| {
        panic!("not a TCP URL of the form postgresql://USER:PASSWORD@127.0.0.1:PORT/test: {url:?}")
    })
}

/// The same cluster's URL for database `postgres` instead of `test`.
pub fn postgres_db_url(url: &str) -> String {
    assert!(url.contains("/test"), "{url}");
    url.replacen("/test", "/postgres", 1)
}

/// A cluster's pid of the postmaster, from its data directory.
pub fn postmaster_pid(dir: &Path) -> Option<i32> {
    let text = fs::read_to_string(dir.join("data/postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// The fields of a cluster's `pgtmp.state`, if it has one, as text: the JSON object pgtmp
/// writes, or the key=value lines of the pgtmp before it.
pub fn read_state(dir: &Path) -> Option<BTreeMap<String, String>> {
    let text = fs::read_to_string(dir.join("pgtmp.state")).ok()?;
    if let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(&text) {
        return Some(
            fields
                .into_iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => (k, s),
                    other => (k, other.to_string()),
                })
                .collect(),
        );
    }
    Some(
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// The watchdog pid recorded in a cluster's `pgtmp.state`.
pub fn watchdog_pid(dir: &Path) -> Option<i32> {
    read_state(dir)?.get("watchdog_pid")?.parse().ok()
}

/// Every file and directory under `root` (itself included) whose owner is not `uid`.
pub fn not_owned_by(root: &Path, uid: u32) -> Vec<(PathBuf, u32)> {
    let mut wrong = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.uid() != uid {
            wrong.push((path.clone(), meta.uid()));
        }
        if meta.is_dir()
            && let Ok(entries) = fs::read_dir(&path)
        {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    wrong
}

/// A free TCP port on 127.0.0.1 at the time of the call.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("cannot find a free port")
        .port()
}

/// True if nobody holds the lock file (`flock`), i.e. no refill works on that pool.
pub fn lock_is_free(lock: &Path) -> bool {
    let Ok(file) = fs::File::open(lock) else {
        return true;
    };
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok()
}

// ---------------------------------------------------------------------------------------------
// The sandbox: one test's private PGTMP_DIR, cleaned up on drop

/// Where sandboxes go: `$PGTMP_TEST_TMPDIR` when set; else /tmp when it is a tmpfs; else
/// /dev/shm when it is a tmpfs with room for the suite (8 GiB free); else /tmp.
///
/// Why not always /tmp: each test prepares its own data directories (35 MB, a thousand files
/// each) and removes them, hundreds of times a run, and on ext4 allocating inodes among so many
/// recently deleted ones took half of the suite's CPU time (perf: `recently_deleted`,
/// `find_inode_bit` under `ext4_create`). A tmpfs has no such search. Sandboxes are named after
/// the test process; those of a killed one are removed by the next run.
pub fn sandbox_base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let base = match std::env::var_os("PGTMP_TEST_TMPDIR") {
            Some(dir) => PathBuf::from(dir),
            None if is_tmpfs(Path::new("/tmp"), 0) => PathBuf::from("/tmp"),
            None if is_tmpfs(Path::new("/dev/shm"), 8 << 30) => PathBuf::from("/dev/shm"),
            None => PathBuf::from("/tmp"),
        };
        remove_dead_sandboxes(&base);
        base
    })
}

/// True when `dir` is a tmpfs, open to everyone like /tmp (mode 1777), with `room` bytes free.
fn is_tmpfs(dir: &Path, room: u64) -> bool {
    let Ok(fs) = nix::sys::statfs::statfs(dir) else {
        return false;
    };
    let free = fs.blocks_available() * fs.block_size() as u64;
    fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC
        && fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o7777 == 0o1777)
        && free >= room
}

/// The start of a sandbox's name: `pgit`, the test process's pid in hex and `-`, short so
/// that paths inside it (pool entries among them) stay within a Unix socket path's limit.
fn sandbox_prefix(pid: u32) -> String {
    format!("pgit{pid:x}-")
}

/// The suite's saved templates for the account `invoker`'s servers run as: a cache directory
/// of that account (made on first use, removed when the suite exits) holding the template of
/// the default installation, saved by one `pgtmp initdb`. A sandbox's first start copies it,
/// as after a reboot, instead of running initdb (most of a cold start's work, and most of
/// the suite's when every sandbox paid it). The template's integrity is checked at each copy.
fn shared_templates(invoker: &Invoker) -> PathBuf {
    static MADE: std::sync::Mutex<BTreeMap<u32, PathBuf>> = std::sync::Mutex::new(BTreeMap::new());
    let (_, uid) = invoker.server_account();
    let mut made = MADE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(cache) = made.get(&uid) {
        return cache.clone();
    }
    let cache = sandbox_base().join(format!("{}saved{uid}", sandbox_prefix(std::process::id())));
    let _ = fs::remove_dir_all(&cache);
    fs::create_dir(&cache).expect("cannot make the suite's cache directory");
    std::os::unix::fs::chown(&cache, Some(uid), None).expect("cannot give the cache away");
    fs::set_permissions(&cache, fs::Permissions::from_mode(0o700)).unwrap();
    if made.is_empty() {
        // SAFETY: atexit only records the function, which runs once at the process's exit
        // (after the harness's last test) and touches nothing but the file system.
        unsafe { libc::atexit(remove_shared_templates) };
    }
    // Filled with the lock held: the tests starting meanwhile wait rather than run initdb.
    let filler = Sandbox::made(invoker, 1, Some(cache.clone()));
    check_started(&filler.run(&["initdb"]), invoker);
    assert!(
        fs::read_dir(cache.join("pgtmp/templates")).is_ok_and(|mut d| d.next().is_some()),
        "pgtmp initdb saved no template in {}",
        cache.display()
    );
    made.insert(uid, cache.clone());
    cache
}

extern "C" fn remove_shared_templates() {
    let prefix = format!("{}saved", sandbox_prefix(std::process::id()));
    for entry in fs::read_dir(sandbox_base()).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Sandboxes of test processes that are gone (killed before their sandboxes were dropped).
fn remove_dead_sandboxes(base: &Path) {
    for entry in fs::read_dir(base).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix("pgit")
            && let Some((pid, _)) = rest.split_once('-')
            && let Ok(pid) = u32::from_str_radix(pid, 16)
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            make_writable(&entry.path());
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// A private temporary directory for one test and one invoker. PGTMP_DIR is `ROOT/p` (made by
/// pgtmp); `-d` directories and other files go beside it. Dropping it stops what still runs.
pub struct Sandbox {
    pub invoker: Invoker,
    pub root: PathBuf,
    pub pgtmp_dir: PathBuf,
    pub pool_size: usize,
    /// XDG_CACHE_HOME of pgtmp's server account: the suite's saved templates (see
    /// [`shared_templates`]), or None for starts that find nothing saved ([`Sandbox::cold`]).
    saved: Option<PathBuf>,
}

impl Sandbox {
    /// A sandbox whose pgtmp keeps no pool: every start prepares its directory in the
    /// foreground and nothing writes into PGTMP_DIR in the background.
    pub fn new(invoker: &Invoker) -> Sandbox {
        Sandbox::with_pool(invoker, 0)
    }

    pub fn with_pool(invoker: &Invoker, pool_size: usize) -> Sandbox {
        let saved = shared_templates(invoker);
        Sandbox::made(invoker, pool_size, Some(saved))
    }

    /// This sandbox as a new machine: no template saved, so its first start (each start,
    /// without a pool) runs initdb. For the tests of initdb and of the saved templates.
    pub fn cold(mut self) -> Sandbox {
        self.saved = None;
        self
    }

    fn made(invoker: &Invoker, pool_size: usize, saved: Option<PathBuf>) -> Sandbox {
        require_client();
        let root = tempfile::Builder::new()
            .prefix(&sandbox_prefix(std::process::id()))
            .rand_bytes(4)
            .tempdir_in(sandbox_base())
            .expect("cannot create a temporary directory")
            .keep();
        // Like /tmp: any account (root's server account too) can make its directories here.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o1777)).unwrap();
        if invoker.switched {
            std::os::unix::fs::chown(&root, Some(invoker.uid), Some(invoker.gid))
                .expect("cannot give the sandbox to the test account");
        }
        let pgtmp_dir = root.join("p");
        Sandbox {
            invoker: invoker.clone(),
            root,
            pgtmp_dir,
            pool_size,
            saved,
        }
    }

    /// The saved templates this sandbox's starts copy (the suite's; None when cold).
    pub fn saved_templates(&self) -> Option<Vec<PathBuf>> {
        let dir = self.saved.as_ref()?.join("pgtmp/templates");
        let mut saved: Vec<PathBuf> = fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("manifest").is_file())
            .collect();
        saved.sort();
        Some(saved)
    }

    /// A path inside the sandbox (not created).
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Marks a command as belonging to this sandbox, so leftovers are found and stopped.
    fn mark(&self, cmd: &mut Command) {
        cmd.env("PGTMP_TEST_SANDBOX", &self.root);
    }

    /// pgtmp's environment for this sandbox: its PGTMP_DIR and pool size, no server
    /// pre-started for a series of starts (PGTMP_PRESTART=0: most tests start several
    /// clusters in a row and count what runs; tests/suite/prestart.rs tests the default), and
    /// the suite's saved templates in place of the account's home (a cold sandbox: none).
    pub fn pgtmp_env(&self, cmd: &mut Command) {
        self.mark(cmd);
        cmd.env("PGTMP_DIR", &self.pgtmp_dir)
            .env("PGTMP_POOL_SIZE", self.pool_size.to_string())
            .env("PGTMP_PRESTART", "0");
        match &self.saved {
            Some(cache) => cmd
                .env_remove("PGTMP_NO_SAVED_TEMPLATE")
                .env("XDG_CACHE_HOME", cache),
            None => cmd.env("PGTMP_NO_SAVED_TEMPLATE", "1"),
        };
    }

    /// `pgtmp` as the invoker, with this sandbox's PGTMP_DIR and pool size.
    pub fn pgtmp(&self) -> Command {
        let mut cmd = self.invoker.command(self.invoker.bin());
        self.pgtmp_env(&mut cmd);
        cmd
    }

    /// Any program as the invoker with pgtmp's environment; `$PGTMP` names the binary.
    pub fn tool(&self, program: &str) -> Command {
        let mut cmd = self.invoker.command(program);
        self.pgtmp_env(&mut cmd);
        cmd.env("PGTMP", self.invoker.bin());
        cmd
    }

    /// `sh -c SCRIPT` as the invoker with pgtmp's environment; `$PGTMP` is the binary.
    pub fn shell(&self, script: &str) -> Command {
        let mut sh = self.tool("sh");
        sh.arg("-c").arg(script);
        sh
    }

    /// Like `shell`, but the shell leads a new session and process group of its own, as a
    /// terminal's shell does (so `kill 0` in it reaches only that group).
    ///
    /// The usual terminating signals get their default action back, as in a terminal: a test
    /// run under `nohup` (SIGHUP ignored, inherited across exec) must not make signals to the
    /// group look harmless.
    pub fn shell_in_new_session(&self, script: &str) -> Command {
        let mut sh = self.shell(script);
        // SAFETY: setsid(2) and signal(2) are async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            sh.pre_exec(|| {
                if nix::libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for sig in [
                    nix::libc::SIGHUP,
                    nix::libc::SIGINT,
                    nix::libc::SIGTERM,
                    nix::libc::SIGQUIT,
                ] {
                    nix::libc::signal(sig, nix::libc::SIG_DFL);
                }
                Ok(())
            });
        }
        sh
    }

    /// Runs pgtmp with `args`.
    pub fn run(&self, args: &[&str]) -> Outcome {
        run(self.pgtmp().args(args), PGTMP_LIMIT)
    }

    /// Runs pgtmp with `args` and checks the start contract: exit 0, exactly one line on
    /// stdout, nothing on stderr. Returns the URL.
    pub fn start(&self, args: &[&str]) -> String {
        let out = self.run(args);
        check_started(&out, &self.invoker)
    }

    /// psql as the invoker: `psql -X -At -v ON_ERROR_STOP=1 URL`.
    pub fn psql_command(&self, url: &str) -> Command {
        let mut cmd = self.invoker.command(client("psql"));
        self.mark(&mut cmd);
        cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", url]);
        cmd
    }

    pub fn try_psql(&self, url: &str, sql: &str) -> Outcome {
        run(self.psql_command(url).args(["-c", sql]), PSQL_LIMIT)
    }

    /// Runs SQL and returns its output without the final newline; panics if psql fails.
    pub fn psql(&self, url: &str, sql: &str) -> String {
        let out = self.try_psql(url, sql);
        assert!(out.success(), "psql as {} failed:\n{out}", self.invoker);
        out.stdout.trim_end_matches('\n').to_string()
    }

    /// A psql process that stays connected until `close` (its stdin is kept open).
    pub fn psql_session(&self, url: &str) -> PsqlSession {
        let mut child = self
            .psql_command(url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start psql");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        PsqlSession {
            child,
            stdin,
            stdout,
        }
    }

    /// Instance directories under PGTMP_DIR (everything but the `pool/` and `cache/` caches
    /// and dotfiles).
    pub fn instance_dirs(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.pgtmp_dir) else {
            return Vec::new();
        };
        let mut dirs: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name() != "pool" && e.file_name() != "cache")
            // `.swept`: when the last background sweep ran.
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .collect();
        dirs.sort();
        dirs
    }

    /// The one instance directory under PGTMP_DIR.
    pub fn only_instance(&self) -> PathBuf {
        let dirs = self.instance_dirs();
        assert_eq!(dirs.len(), 1, "expected one instance directory: {dirs:?}");
        dirs[0].clone()
    }

    /// Processes still referring to the sandbox (servers, watchdogs, refills, clients).
    pub fn procs(&self) -> Vec<Proc> {
        procs_referencing(&self.root)
    }

    /// Waits (briefly) until no process refers to `path`; panics listing them otherwise.
    pub fn assert_no_process(&self, path: &Path, context: &str) {
        let mut left = Vec::new();
        let gone = wait_until(Duration::from_secs(5), || {
            left = procs_referencing(path);
            left.is_empty()
        });
        assert!(
            gone,
            "{context}: processes still refer to {} after 5 s:\n{}",
            path.display(),
            left.iter().map(|p| format!("  {p}\n")).collect::<String>()
        );
    }

    /// Checks that a failed command left nothing: no instance directory under PGTMP_DIR and
    /// no process referring to the sandbox.
    pub fn assert_nothing_left(&self, context: &str) {
        let dirs = self.instance_dirs();
        assert!(
            dirs.is_empty(),
            "{context}: left instance directories under PGTMP_DIR: {dirs:?}"
        );
        self.assert_no_process(&self.root, context);
    }

    /// True while a refill holds the lock of one of the pools.
    pub fn refill_running(&self) -> bool {
        fs::read_dir(self.pgtmp_dir.join("pool"))
            .map(|pools| {
                pools
                    .flatten()
                    .any(|pool| !lock_is_free(&pool.path().join("lock")))
            })
            .unwrap_or(false)
    }

    /// The files and directories in the pools whose names start with `prefix` (`ready.`,
    /// `new.`, `waiting.socket.`, ...).
    pub fn pool_entries(&self, prefix: &str) -> Vec<PathBuf> {
        fs::read_dir(self.pgtmp_dir.join("pool"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|pool| fs::read_dir(pool.path()).ok())
            .flat_map(|entries| entries.flatten())
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .map(|e| e.path())
            .collect()
    }

    /// Runs `n` starts with `args` at the same moment; checks each against the start contract
    /// and returns the URLs.
    pub fn start_at_once(&self, n: usize, args: &[&str]) -> Vec<String> {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
        let threads: Vec<_> = (0..n)
            .map(|_| {
                let mut cmd = self.pgtmp();
                cmd.args(args);
                let barrier = std::sync::Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    run(&mut cmd, PGTMP_LIMIT)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| check_started(&t.join().unwrap(), &self.invoker))
            .collect()
    }

    /// Inode numbers of the ready entries in the pools.
    pub fn ready_entry_inodes(&self) -> HashSet<u64> {
        self.pool_entries("ready.")
            .iter()
            .filter_map(|path| fs::metadata(path).ok().map(|m| m.ino()))
            .collect()
    }

    /// Number of ready entries in the pools.
    pub fn ready_entries(&self) -> usize {
        self.pool_entries("ready.").len()
    }

    /// Waits until the pools hold at least `n` ready entries and no refill runs; panics after
    /// `limit`.
    pub fn wait_for_full_pool(&self, n: usize, limit: Duration) {
        let filled = wait_until(limit, || {
            self.ready_entries() >= n && !self.refill_running()
        });
        assert!(
            filled,
            "the pool did not fill to {n} entries in {limit:?} ({} ready, refill running: {})",
            self.ready_entries(),
            self.refill_running()
        );
    }

    /// Stops every cluster and background process of this sandbox; returns what had to be
    /// killed because it did not end by itself.
    fn stop_everything(&self) -> Vec<Proc> {
        let stop_watchdogs = || {
            for state in find_named(&self.root, "pgtmp.state", 4) {
                if let Some(pid) = state.parent().and_then(watchdog_pid) {
                    signal(pid, Signal::SIGTERM);
                }
            }
        };
        // Watchdogs stop their servers; a refill is let finish (it holds pool/*/lock). Asked
        // again while waiting: a background process may still be pre-starting a server.
        let mut left = Vec::new();
        if wait_until(Duration::from_secs(60), || {
            stop_watchdogs();
            left = self.procs();
            left.is_empty() && !self.refill_running()
        }) {
            return Vec::new();
        }
        for p in &left {
            signal(p.pid, Signal::SIGKILL);
        }
        wait_until(Duration::from_secs(10), || self.procs().is_empty());
        left
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let killed = self.stop_everything();
        for p in &killed {
            eprintln!("sandbox {}: killed leftover {p}", self.root.display());
        }
        if fs::remove_dir_all(&self.root).is_err() {
            make_writable(&self.root);
            if let Err(err) = fs::remove_dir_all(&self.root) {
                eprintln!("cannot remove {}: {err}", self.root.display());
            }
        }
    }
}

/// Checks the start contract and returns the URL.
pub fn check_started(out: &Outcome, invoker: &Invoker) -> String {
    assert!(
        out.success() && out.stderr.is_empty(),
        "pgtmp as {invoker} should exit 0 with nothing on stderr:\n{out}"
    );
    // Off a terminal, as here, a URI, DSN or JDBC URL ends without a newline (as pg_tmp's
    // does); JSON and a path (`pgtmp initdb`) end with one.
    let bare = !out.stdout.starts_with(['{', '/']);
    assert!(
        out.stdout.ends_with('\n') != bare && out.stdout.lines().count() == 1,
        "pgtmp as {invoker} should print exactly one line, ending in a newline only if it \
         is not a URL:\n{out}"
    );
    out.stdout.trim_end_matches('\n').to_string()
}

/// Checks a failure: `code`, nothing on stdout, and one line on stderr that starts with
/// `pgtmp: error:`. Returns that line.
pub fn check_failed(out: &Outcome, code: i32) -> String {
    assert_eq!(out.code(), Some(code), "expected exit {code}:\n{out}");
    assert!(out.stdout.is_empty(), "expected nothing on stdout:\n{out}");
    let lines = out.stderr_lines();
    assert!(
        lines.len() == 1 && lines[0].starts_with("pgtmp: error: "),
        "expected exactly one line on stderr starting with 'pgtmp: error: ', got {} lines:\n{out}",
        lines.len()
    );
    lines[0].to_string()
}

/// Files named `name` at most `depth` levels below `root`.
fn find_named(root: &Path, name: &str, depth: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut level = vec![root.to_path_buf()];
    for _ in 0..=depth {
        let mut next = Vec::new();
        for dir in level {
            for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if entry.file_name() == name {
                    found.push(path);
                } else if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    next.push(path);
                }
            }
        }
        level = next;
    }
    found
}

fn make_writable(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
}

/// The tests need the real psql; they fail, never skip, without it.
fn require_client() {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let ok = Command::new(client("psql"))
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "psql is not on PATH: these tests need the PostgreSQL client and server \
             (Debian/Ubuntu: apt-get install postgresql postgresql-client)"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// A psql that stays connected

pub struct PsqlSession {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl PsqlSession {
    /// Runs one statement that prints one line and returns that line.
    pub fn query_line(&mut self, sql: &str) -> String {
        let stdin = self.stdin.as_mut().expect("the session is closed");
        writeln!(stdin, "{sql}")
            .and_then(|()| stdin.flush())
            .expect("psql went away");
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .expect("cannot read from psql");
        assert!(
            n > 0,
            "psql ended instead of answering {sql:?} (see stderr above)"
        );
        line.trim_end_matches('\n').to_string()
    }

    /// Closes stdin, so psql disconnects and exits; waits for that.
    pub fn close(mut self) -> ExitStatus {
        self.stdin = None;
        let status = self.child.wait().expect("cannot wait for psql");
        assert!(status.success(), "psql exited with {status}");
        status
    }
}

impl Drop for PsqlSession {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.wait();
    }
}

/// `packages` installed with npm into the shared directory's `name`, from npm's cache in the
/// target directory when it has it; the directory. Err says what is missing.
pub fn npm_install(name: &str, packages: &[&str]) -> Result<PathBuf, (&'static str, &'static str)> {
    for program in ["node", "npm"] {
        let found = Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !found.is_ok_and(|s| s.success()) {
            return Err(("Node.js with npm", "Debian: apt-get install nodejs npm"));
        }
    }
    let dir = shared_dir().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut install = Command::new("npm");
    install
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--prefer-offline",
            "--prefix",
        ])
        .arg(&dir)
        .arg("--cache")
        .arg(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("npm-cache"))
        .args(packages);
    let out = run(&mut install, Duration::from_secs(300));
    assert!(out.success(), "npm install {packages:?} failed:\n{out}");
    Ok(dir)
}

/// Writes a file in the sandbox that only its invoker can read (so root's server account
/// cannot): an SQL file for `-f`, say.
pub fn invokers_file(sandbox: &Sandbox, name: &str, text: &str) -> PathBuf {
    let path = sandbox.path(name);
    fs::write(&path, text).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let inv = &sandbox.invoker;
    std::os::unix::fs::chown(&path, Some(inv.uid), Some(inv.gid)).unwrap();
    path
}
