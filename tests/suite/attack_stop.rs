//! `pgtmp stop`, `stop --all` and `list` against directories and files someone else planted:
//! no unrelated process is signalled, nothing that is not the invoker's cluster is touched,
//! nothing hangs or reads without end. Also -k on either side of `stop`, and `stop --all`
//! stopping clusters at once rather than one after another.

use crate::common::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

both_invokers!(
    a_planted_copy_of_the_invokers_own_is_refused,
    an_edited_state_file_signals_nobody_else,
    stop_keeps_with_k_on_either_side,
);

/// Longer than any of these commands may take when nothing makes them hang.
const PROMPT: Duration = Duration::from_secs(20);

/// A child process that is killed and reaped when the test is done with it, even on a panic.
struct Reaped(Child);

impl Reaped {
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `program ARGS` running as `uid`/`gid` (as the test process itself when they are its own).
fn spawn_as(uid: u32, gid: u32, program: &str, args: &[&str]) -> Reaped {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if nix::unistd::geteuid().as_raw() != uid {
        cmd.uid(uid).gid(gid);
    }
    Reaped(
        cmd.spawn()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}")),
    )
}

/// A process of the account that pgtmp runs as for `invoker` (the server account), which an
/// attack would have pgtmp signal.
fn victim(invoker: &Invoker) -> Reaped {
    let (name, uid) = invoker.server_account();
    let gid = nix::unistd::User::from_name(&name)
        .ok()
        .flatten()
        .map_or(invoker.gid, |u| u.gid.as_raw());
    let victim = spawn_as(uid, gid, "sleep", &["60"]);
    assert!(
        wait_until(Duration::from_secs(5), || cmdline(victim.pid())
            .starts_with("sleep")),
        "the victim process did not start"
    );
    victim
}

/// Field 22 of /proc/PID/stat: the process's start time, which anyone can read.
fn start_time(pid: i32) -> String {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    rest.split_whitespace().nth(19).unwrap().to_string()
}

/// A state file naming `pid` as watchdog and postmaster, with its real start time.
fn state_naming(pid: i32, owner_uid: u32, user: &str) -> String {
    let started = start_time(pid);
    format!(
        "watchdog_pid={pid}\npostmaster_pid={pid}\nport=5432\ntcp=0\nkeep=0\nowner_uid={owner_uid}\n\
         user={user}\ntimeout=60\nwatchdog_start={started}\npostmaster_start={started}\n\
         shm_sysv_id=\nshm_posix=\n"
    )
}

/// Makes `dir` look like a running cluster whose processes are `pid`, as the account `who`.
fn fake_cluster(who: &Invoker, dir: &Path, mode: &str, state: &str) {
    let script = format!(
        "set -e; mkdir -m {mode} '{d}'; mkdir '{d}/data'; echo 15 > '{d}/data/PG_VERSION'; \
         echo x > '{d}/PGTMP'; printf '%s' \"$STATE\" > '{d}/pgtmp.state'",
        d = dir.display()
    );
    let out = run(
        who.command("sh").arg("-c").arg(script).env("STATE", state),
        PSQL_LIMIT,
    );
    assert!(out.success(), "cannot make the fake cluster:\n{out}");
}

/// A process of `who`'s holding a flock on `dir` (what a live pgtmp looks like), once it
/// holds it: one process, `sleep` with the locked descriptor, so that killing it ends all.
fn hold_lock(who: &Invoker, dir: &Path) -> Reaped {
    let holder = Reaped(
        who.command("sh")
            .arg("-c")
            .arg("exec 9<\"$1\" && flock 9 && exec sleep 60")
            .arg("sh")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run flock"),
    );
    let held = wait_until(Duration::from_secs(5), || {
        let file = fs::File::open(dir).unwrap();
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_err()
    });
    assert!(held, "flock did not take the lock of {}", dir.display());
    holder
}

/// Every path under `root` with its mode and, for files, contents.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    let mut found = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).unwrap();
        let contents = if meta.is_file() {
            fs::read(&path).unwrap()
        } else {
            Vec::new()
        };
        if meta.is_dir() {
            stack.extend(fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
        found.insert(path, (meta.permissions().mode(), contents));
    }
    found
}

/// A URL for a socket directory, in the form with the host in the authority.
fn url_for(user: &str, dir: &Path) -> String {
    format!(
        "postgresql://{}@{}/test",
        percent_encode(user),
        percent_encode(&dir.to_string_lossy())
    )
}

/// `pgtmp stop ARGS` fails with one line that contains `expected`.
fn refused(sandbox: &Sandbox, args: &[&str], expected: &str) {
    let mut full = vec!["stop"];
    full.extend_from_slice(args);
    let out = run(sandbox.pgtmp().args(&full), PROMPT);
    let line = check_failed(&out, 1);
    assert!(
        line.contains(expected),
        "pgtmp {full:?} should say {expected:?}:\n{out}"
    );
}

/// Another account's directory made to look like the invoker's running cluster, locked and
/// naming a process of the invoker's with its real start time: stop by its URL or -d
/// refuses it, signals nothing and leaves the directory as it was.
#[test]
fn another_accounts_fake_cluster_is_refused() {
    let (Some(invoker), Some(attacker)) = (Invoker::ordinary(), Invoker::attacker()) else {
        return cannot_run_here("needs root to run as the test and the attacker accounts");
    };
    let sandbox = Sandbox::new(&invoker);
    // PGTMP_DIR exists, as it does for anyone who has used pgtmp.
    let url = sandbox.start(&["-w", UNTIL_STOPPED]);
    let victim = victim(&invoker);
    let fake = sandbox.path("fake");
    let state = state_naming(victim.pid(), invoker.uid, &invoker.name);
    fake_cluster(&attacker, &fake, "755", &state);
    let _lock = hold_lock(&attacker, &fake);
    let before = snapshot(&fake);
    let fake_arg = fake.to_str().unwrap();
    for args in [
        vec![url_for(&invoker.name, &fake)],
        vec![socket_url_for(&invoker.name, &fake, 5432)],
        vec!["-d".to_string(), fake_arg.to_string()],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&sandbox, &args, "is not one of your pgtmp clusters");
        assert!(
            alive(victim.pid()),
            "pgtmp stop {args:?} signalled the victim"
        );
        assert_eq!(
            snapshot(&fake),
            before,
            "pgtmp stop {args:?} changed {fake_arg}"
        );
    }
    assert_eq!(sandbox.psql(&url, "select 1"), "1");
}

/// A copy of a cluster directory of the invoker's own, outside PGTMP_DIR and registered
/// nowhere (planted, say, by a script), is not one of its clusters either.
fn a_planted_copy_of_the_invokers_own_is_refused(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let url = sandbox.start(&["-w", UNTIL_STOPPED]);
    let victim = victim(invoker);
    let planted = sandbox.path("planted");
    // The account pgtmp runs as, which owns its clusters.
    let owner = if invoker.is_root() {
        server_invoker(invoker)
    } else {
        invoker.clone()
    };
    let state = state_naming(victim.pid(), invoker.uid, &invoker.name);
    fake_cluster(&owner, &planted, "700", &state);
    let _lock = hold_lock(&owner, &planted);
    let before = snapshot(&planted);
    let planted_arg = planted.to_str().unwrap();
    refused(
        &sandbox,
        &[&url_for(&invoker.name, &planted)],
        "is not one of your pgtmp clusters",
    );
    refused(
        &sandbox,
        &["-d", planted_arg],
        "is not one of your pgtmp clusters",
    );
    assert!(alive(victim.pid()), "pgtmp stop signalled the victim");
    assert_eq!(
        snapshot(&planted),
        before,
        "pgtmp stop changed {planted_arg}"
    );
    assert_eq!(sandbox.psql(&url, "select 1"), "1");
}

/// The account the server runs as for root, as an invoker to run commands as.
fn server_invoker(root: &Invoker) -> Invoker {
    Invoker::of_account(&root.server_account().0)
}

/// A real cluster whose state file was edited to name another process of the same account,
/// with its real start time: that process is not the watchdog (it holds no descriptor on the
/// directory), so pgtmp signals nothing and says why; the cluster runs on.
fn an_edited_state_file_signals_nobody_else(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let url = sandbox.start(&["-w", UNTIL_STOPPED]);
    let dir = parse_socket_url(&url).dir;
    let victim = victim(invoker);
    let state_path = dir.join("pgtmp.state");
    let original = fs::read_to_string(&state_path).unwrap();
    let mut state: serde_json::Value = serde_json::from_str(&original).unwrap();
    for key in ["watchdog_pid", "postmaster_pid"] {
        state[key] = victim.pid().into();
    }
    for key in ["watchdog_start", "postmaster_start"] {
        state[key] = start_time(victim.pid()).parse::<u64>().unwrap().into();
    }
    let edited = state.to_string();
    // Written in place: the file keeps its owner, the server account.
    fs::write(&state_path, &edited).unwrap();
    refused(&sandbox, &[&url], "not the watchdog its state names");
    refused(&sandbox, &["-d", dir.to_str().unwrap()], "not the watchdog");
    assert!(alive(victim.pid()), "pgtmp stop signalled the victim");
    assert_eq!(
        sandbox.psql(&url, "select 1"),
        "1",
        "the cluster was harmed"
    );
    fs::write(&state_path, &original).unwrap();
    let postmaster = postmaster_pid(&dir).unwrap();
    let out = sandbox.run(&["stop", &url]);
    assert!(out.success(), "with its state restored it stops:\n{out}");
    assert!(!alive(postmaster));
}

/// Root reads its PGTMP_DIR, which belongs to the server account: registrations that are a
/// symlink to /dev/zero, a FIFO or a huge file are skipped with a warning, and list and
/// stop --all finish promptly and still see the real cluster.
#[test]
fn planted_registrations_neither_hang_nor_flood() {
    let root = Invoker::current();
    if !root.is_root() {
        return cannot_run_here("needs root, whose PGTMP_DIR belongs to another account");
    }
    let sandbox = Sandbox::new(&root);
    let url = sandbox.start(&["-w", UNTIL_STOPPED]);
    let dir = parse_socket_url(&url).dir;
    let server = server_invoker(&root);
    let p = sandbox.pgtmp_dir.display();
    let plant = format!(
        "set -e; ln -s /dev/zero '{p}/elsewhere.x'; mkfifo '{p}/elsewhere.y'; \
         head -c 10000000 /dev/zero > '{p}/elsewhere.z'; ln -s /dev/zero '{p}/zzzz9999'"
    );
    let out = run(server.command("sh").arg("-c").arg(plant), PSQL_LIMIT);
    assert!(out.success(), "cannot plant the registrations:\n{out}");
    for args in [&["list"][..], &["list", "--json"]] {
        let out = run(sandbox.pgtmp().args(args), PROMPT);
        assert!(out.success(), "{out}");
        assert!(
            out.stdout.contains(&dir.display().to_string()) || out.stdout.contains(&url),
            "pgtmp {args:?} does not show the running cluster:\n{out}"
        );
        assert!(
            out.stderr_lines()
                .iter()
                .all(|l| l.starts_with("pgtmp: warning: skipping")),
            "{out}"
        );
        assert!(
            out.stderr.contains("elsewhere.y"),
            "no warning about the FIFO:\n{out}"
        );
    }
    let postmaster = postmaster_pid(&dir).unwrap();
    let out = run(sandbox.pgtmp().args(["stop", "--all"]), PROMPT);
    assert!(out.success(), "{out}");
    assert!(
        !alive(postmaster),
        "stop --all left the real cluster running"
    );
    assert!(!dir.exists(), "stop --all left {}", dir.display());
}

/// `pgtmp -k -d DIR stop` (pg_tmp's spelling), `pgtmp stop -k -d DIR` and `pgtmp stop -k URL`
/// stop the server and keep the directory with its data, which starts again.
fn stop_keeps_with_k_on_either_side(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    // A directory of its own for each form: a kept directory stays kept once stopped.
    let first = sandbox.path("first");
    let second = sandbox.path("second");
    let (first, second) = (first.to_str().unwrap(), second.to_str().unwrap());
    let forms: [(Option<&str>, &[&str]); 3] = [
        (Some(first), &["-k", "-d", first, "stop"]),
        (Some(second), &["stop", "-k", "-d", second]),
        (None, &["stop", "-k", "URL"]),
    ];
    for (n, (elsewhere, form)) in forms.into_iter().enumerate() {
        let url = match elsewhere {
            Some(dir) => sandbox.start(&["-w", UNTIL_STOPPED, "-d", dir]),
            None => sandbox.start(&["-w", UNTIL_STOPPED]),
        };
        let dir = parse_socket_url(&url).dir;
        sandbox.psql(&url, &format!("create table kept{n} (x int)"));
        let postmaster = postmaster_pid(&dir).unwrap();
        let args: Vec<&str> = form
            .iter()
            .map(|&a| if a == "URL" { url.as_str() } else { a })
            .collect();
        let out = sandbox.run(&args);
        assert!(
            out.success() && out.stderr.is_empty(),
            "pgtmp {args:?}:\n{out}"
        );
        assert!(!alive(postmaster), "pgtmp {args:?} left the server running");
        sandbox.assert_no_process(&dir, "after the stop");
        assert!(
            dir.join("data/PG_VERSION").is_file(),
            "pgtmp {args:?} removed {}",
            dir.display()
        );
        let again = sandbox.start(&["-w", UNTIL_STOPPED, "-d", dir.to_str().unwrap()]);
        assert_eq!(
            sandbox.psql(&again, &format!("select count(*) from kept{n}")),
            "0",
            "pgtmp {args:?} kept the directory but not its data"
        );
        let out = sandbox.run(&["stop", &again]);
        assert!(out.success(), "{out}");
        if elsewhere.is_none() {
            // Kept in PGTMP_DIR; the next start must not take it for its own.
            fs::remove_dir_all(&dir).unwrap();
        }
    }
}

/// Eight clusters stop together about as fast as one: `stop --all` does not stop them one
/// after another. Timings are printed; the bound is loose.
#[test]
fn stop_all_stops_at_once() {
    let invoker = Invoker::current();
    let sandbox = Sandbox::new(&invoker);
    let single = {
        let url = sandbox.start(&["-w", UNTIL_STOPPED]);
        let started = Instant::now();
        let out = sandbox.run(&["stop", &url]);
        assert!(out.success(), "{out}");
        started.elapsed()
    };
    let urls: Vec<String> = (0..8)
        .map(|_| sandbox.start(&["-w", UNTIL_STOPPED]))
        .collect();
    let pids: Vec<i32> = urls
        .iter()
        .map(|url| postmaster_pid(&parse_socket_url(url).dir).unwrap())
        .collect();
    let started = Instant::now();
    let out = sandbox.run(&["stop", "--all"]);
    let all = started.elapsed();
    assert!(out.success() && out.stderr.is_empty(), "{out}");
    eprintln!("one stop: {single:.2?}; stop --all of 8: {all:.2?}");
    for pid in pids {
        assert!(!alive(pid), "server {pid} still runs after stop --all");
    }
    // One after another takes about 8 (measured: 14) times one stop; at once, about 2.5.
    let bound = single.mul_f64(8.0 * 0.6).max(Duration::from_secs(1));
    assert!(
        all < bound,
        "stop --all of 8 took {all:.2?}, one stop {single:.2?}: not at once"
    );
}
