//! pgtmp in place of pg_tmp: `initdb` prepares what the next start takes, `stop` takes pg_tmp's
//! -w (waiting for clients) on either side, `selftest`, and directories pg_tmp made are taken
//! over by `pgtmp -d`.

use crate::common::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

both_invokers!(
    initdb_prepares_the_entry_the_next_start_takes,
    initdb_keeps_the_pool_within_its_size,
    stop_w_waits_until_no_client_is_connected,
    stop_w_after_stop_checks_after_the_interval,
    selftest_checks_start_query_and_stop,
    a_directory_pg_tmp_made_and_ran_is_carried_over,
    a_directory_pg_tmp_prepared_starts_and_tcp_asks_for_the_password,
    a_directory_pg_tmp_runs_in_is_refused_untouched,
);

/// The path `pgtmp initdb` prints is a ready pool entry; the next start takes exactly it (a
/// claim renames it, so the inode stays), and the pool has nothing else to offer.
fn initdb_prepares_the_entry_the_next_start_takes(invoker: &Invoker) {
    let sandbox = Sandbox::with_pool(invoker, 2);
    let entry = PathBuf::from(check_started(&sandbox.run(&["initdb"]), invoker));
    assert!(
        entry.starts_with(sandbox.pgtmp_dir.join("pool")),
        "pgtmp initdb should print a pool entry, printed {}",
        entry.display()
    );
    assert!(entry.join("data/PG_VERSION").is_file());
    sandbox.assert_no_process(&entry, "pgtmp initdb starts nothing");
    assert!(
        sandbox.instance_dirs().is_empty(),
        "pgtmp initdb made a directory outside the pool: {:?}",
        sandbox.instance_dirs()
    );
    let inode = fs::metadata(&entry).unwrap().ino();
    let url = sandbox.start(&["-w", UNTIL_STOPPED]);
    let dir = parse_socket_url(&url).dir;
    assert_eq!(
        fs::metadata(&dir).unwrap().ino(),
        inode,
        "the start should have taken the entry pgtmp initdb printed"
    );
    assert!(!entry.exists(), "{} is still in the pool", entry.display());
    assert_eq!(sandbox.psql(&url, "select current_database()"), "test");
    // pg_tmp's `pg_tmp -d "$(pg_tmp initdb)"` would start the entry where it lies, where another
    // start could claim it: refused, naming the way that works.
    let again = PathBuf::from(check_started(&sandbox.run(&["initdb"]), invoker));
    let out = sandbox.run(&["-d", again.to_str().unwrap(), "-w", UNTIL_STOPPED]);
    let line = check_failed(&out, 2);
    assert!(
        line.contains("pool") && line.contains("run `pgtmp`"),
        "{line}"
    );
    assert!(
        again.join("data/PG_VERSION").is_file(),
        "the refusal touched the entry"
    );
}

/// Five calls do not grow the pool beyond PGTMP_POOL_SIZE ready entries (issue 13: five calls
/// left 171 MB of directories nothing used); each call's path is still what the next start
/// takes.
fn initdb_keeps_the_pool_within_its_size(invoker: &Invoker) {
    let sandbox = Sandbox::with_pool(invoker, 2);
    let printed: Vec<PathBuf> = (0..5)
        .map(|_| PathBuf::from(check_started(&sandbox.run(&["initdb"]), invoker)))
        .collect();
    assert_eq!(sandbox.ready_entries(), 2, "{printed:?}");
    // The template and the two entries: nothing else holds a cluster.
    let clusters = data_directories(&sandbox.pgtmp_dir);
    assert_eq!(clusters.len(), 3, "{clusters:?}");
    let last = printed.last().unwrap();
    let inode = fs::metadata(last).unwrap().ino();
    let url = sandbox.start(&["-w", UNTIL_STOPPED]);
    assert_eq!(
        fs::metadata(parse_socket_url(&url).dir).unwrap().ino(),
        inode,
        "the start should have taken the entry the last pgtmp initdb printed"
    );
}

/// Directories under `root` that hold PG_VERSION and `global/`: data directories (a database's
/// directory in `base/` has a PG_VERSION of its own).
fn data_directories(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_name() == "PG_VERSION" && dir.join("global").is_dir() {
                found.push(dir.clone());
            } else if entry.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(path);
            }
        }
    }
    found
}

/// pg_tmp's form, `pgtmp -w N -d DIR stop`: the stop waits while a client is connected,
/// checking every N seconds, and stops once it has left.
fn stop_w_waits_until_no_client_is_connected(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let dir = sandbox.path("cluster");
    let dir_arg = dir.to_str().unwrap();
    let url = sandbox.start(&["-w", UNTIL_STOPPED, "-d", dir_arg]);
    let postmaster = postmaster_pid(&dir).expect("no postmaster.pid");
    let mut client = sandbox.psql_session(&url);
    assert_eq!(client.query_line("select 1;"), "1");
    let mut stop = sandbox
        .pgtmp()
        .args(["-w", "1", "-d", dir_arg, "stop"])
        .stdin(Stdio::null())
        .spawn()
        .expect("cannot run pgtmp stop");
    // Three checks see the client: the stop goes on waiting and the server runs.
    let ended = wait_until(Duration::from_secs(3), || {
        stop.try_wait().ok().flatten().is_some()
    });
    assert!(
        !ended,
        "pgtmp stop -w 1 returned while a client was connected"
    );
    assert!(alive(postmaster), "the server stopped under its client");
    assert_eq!(client.query_line("select 2;"), "2");
    client.close();
    let status = wait_child(&mut stop, Duration::from_secs(30), "pgtmp -w 1 -d DIR stop");
    assert!(status.success(), "pgtmp stop -w 1 failed: {status}");
    assert!(
        !alive(postmaster),
        "the server still runs after pgtmp stop -w"
    );
    assert!(!dir.exists(), "pgtmp stop -w left {}", dir.display());
    sandbox.assert_nothing_left("after pgtmp stop -w");
}

/// `pgtmp stop -w N URL`: with no client it stops after the first check, N seconds after the
/// call, as pg_tmp's loop sleeps before it looks; a -w that is not a number is refused.
fn stop_w_after_stop_checks_after_the_interval(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let url = sandbox.start(&["-w", UNTIL_STOPPED]);
    let dir = parse_socket_url(&url).dir;
    let line = check_failed(&sandbox.run(&["stop", "-w", "abc", &url]), 2);
    assert!(line.contains("-w") && line.contains("seconds"), "{line}");
    let began = Instant::now();
    let out = sandbox.run(&["stop", "-w", "2", &url]);
    assert!(
        out.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "{out}"
    );
    assert!(
        began.elapsed() >= Duration::from_secs(2),
        "pgtmp stop -w 2 returned after {:?}, before its first check",
        began.elapsed()
    );
    assert!(!dir.exists(), "pgtmp stop -w left {}", dir.display());
}

/// `pgtmp selftest` reports each step and OK; a step that fails is named, with exit 1.
fn selftest_checks_start_query_and_stop(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let out = sandbox.run(&["selftest"]);
    assert!(out.success() && out.stderr.is_empty(), "{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    // The psql step needs the installation's own psql, which relocatable builds lack.
    let psql = if bindir().join("psql").is_file() {
        "ok    psql "
    } else {
        "skip  psql "
    };
    for step in ["ok    start ", "ok    query ", psql, "ok    stop "] {
        assert!(
            lines.iter().any(|l| l.starts_with(step)),
            "no step '{step}' in:\n{out}"
        );
    }
    assert_eq!(lines.last(), Some(&"OK"), "{out}");
    assert!(
        sandbox.instance_dirs().is_empty(),
        "selftest left a cluster"
    );
    let out = sandbox.run(&["selftest", "--bindir", "/nonexistent"]);
    let line = check_failed(&out, 1);
    assert!(line.contains("selftest failed at step `start`"), "{line}");
}

/// The PostgreSQL bin directory under test: the [`test_bindir`], else the one pgtmp finds
/// first here (the highest under /usr/lib/postgresql).
fn bindir() -> PathBuf {
    if let Some(dir) = test_bindir() {
        return dir.to_path_buf();
    }
    let mut found: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file() && bin.join("pg_ctl").is_file())
        .collect();
    found.sort();
    found
        .pop()
        .expect("no PostgreSQL installation under /usr/lib/postgresql")
}

/// `program` from the installation (a client such as createdb from PATH when the installation
/// has none, as relocatable server builds do), run as the account the server runs as: the one
/// pg_tmp would have run as (pg_tmp cannot run as root, so root's clusters are its server
/// account's).
fn as_server(invoker: &Invoker, program: &str) -> Command {
    let own = bindir().join(program);
    if own.is_file() {
        as_server_running(invoker, own)
    } else {
        as_server_running(invoker, program)
    }
}

fn as_server_running(invoker: &Invoker, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = invoker.command(program);
    if invoker.is_root() {
        let (name, _) = invoker.server_account();
        let user = nix::unistd::User::from_name(&name).unwrap().unwrap();
        cmd.uid(user.uid.as_raw())
            .gid(user.gid.as_raw())
            .env("USER", &name)
            .env("LOGNAME", &name);
    }
    cmd
}

fn run_ok(cmd: &mut Command, what: &str) {
    let out = run(cmd, Duration::from_secs(120));
    assert!(out.success(), "{what} failed:\n{out}");
}

/// pg_tmp's data directory name: `PGVER=$(pg_ctl -V | awk '{print $NF}')` (pg_tmp.sh, ephemeralpg
/// 3.x): the last word, e.g. `15.18-0+deb12u1)` on Debian.
fn pg_tmp_version() -> String {
    let out = Command::new(bindir().join("pg_ctl"))
        .arg("-V")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().last().unwrap().to_string()
}

/// What `pg_tmp initdb -d DIR` makes, step by step as pg_tmp.sh's `initdb)` branch does it:
/// `mkdir -p $TD`; `initdb --nosync -D $TD/$PGVER -E UNICODE -A trust > $TD/initdb.out`; its
/// settings appended to `$TD/$PGVER/postgresql.conf`; `touch $TD/NEW`. Returns the data
/// directory.
fn pg_tmp_initdb(invoker: &Invoker, dir: &Path) -> PathBuf {
    run_ok(
        as_server_running(invoker, "mkdir").arg("-p").arg(dir),
        "mkdir -p",
    );
    let data = dir.join(pg_tmp_version());
    let out = run(
        as_server(invoker, "initdb")
            .args(["--nosync", "-D"])
            .arg(&data)
            .args(["-E", "UNICODE", "-A", "trust"]),
        Duration::from_secs(120),
    );
    assert!(out.success(), "initdb failed:\n{out}");
    fs::write(dir.join("initdb.out"), &out.stdout).unwrap();
    let settings = format!(
        "    unix_socket_directories = '{}'\n    listen_addresses = ''\n    shared_buffers = 12MB\n    fsync = off\n    synchronous_commit = off\n    full_page_writes = off\n    log_min_duration_statement = 0\n    log_connections = on\n    log_disconnections = on\n",
        dir.display()
    );
    let conf = data.join("postgresql.conf");
    let mut text = fs::read_to_string(&conf).unwrap();
    text.push_str(&settings);
    fs::write(&conf, text).unwrap();
    fs::write(dir.join("NEW"), "").unwrap();
    give_to_server(invoker, dir);
    data
}

/// The files the test wrote as root (initdb.out, NEW, the edited postgresql.conf) belong to the
/// server account, as when pg_tmp wrote them.
fn give_to_server(invoker: &Invoker, dir: &Path) {
    let (_, uid) = invoker.server_account();
    for path in [
        dir.join("initdb.out"),
        dir.join("NEW"),
        dir.join(pg_tmp_version()).join("postgresql.conf"),
    ] {
        if path.exists() {
            std::os::unix::fs::chown(&path, Some(uid), None).unwrap();
        }
    }
}

/// What `pg_tmp -k -d DIR` does with it: `pg_ctl -W -s -D $TD/$PGVER -l .../postgres.log
/// start`, then `createdb -E UNICODE test` on the socket in DIR; here waited for with -w.
fn pg_tmp_start(invoker: &Invoker, dir: &Path, data: &Path) {
    run_ok(
        as_server(invoker, "pg_ctl")
            .args(["-w", "-s", "-D"])
            .arg(data)
            .arg("-l")
            .arg(data.join("postgres.log"))
            .arg("start"),
        "pg_ctl start",
    );
    run_ok(
        as_server(invoker, "createdb")
            .arg("-h")
            .arg(dir)
            .args(["-E", "UNICODE", "test"]),
        "createdb test",
    );
}

fn pg_ctl_stop(invoker: &Invoker, data: &Path) {
    run_ok(
        as_server(invoker, "pg_ctl")
            .args(["-w", "-s", "-D"])
            .arg(data)
            .arg("stop"),
        "pg_ctl stop",
    );
}

/// A cluster `pg_tmp -k -d DIR` ran, with a table in `test`, starts with `pgtmp -d DIR`: its
/// data is there, the directory is in pgtmp's layout, and it stays when stopped (kept).
fn a_directory_pg_tmp_made_and_ran_is_carried_over(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let dir = sandbox.path("pgtmpdata");
    let data = pg_tmp_initdb(invoker, &dir);
    pg_tmp_start(invoker, &dir, &data);
    run_ok(
        as_server(invoker, "psql")
            .args(["-X", "-q", "-h"])
            .arg(&dir)
            .args([
                "-d",
                "test",
                "-c",
                "create table carried (x int); insert into carried values (42)",
            ]),
        "psql",
    );
    pg_ctl_stop(invoker, &data);
    let dir_arg = dir.to_str().unwrap();
    let url = sandbox.start(&["-d", dir_arg, "-w", UNTIL_STOPPED]);
    assert_eq!(parse_socket_url(&url).dir, dir);
    assert_eq!(sandbox.psql(&url, "select x from carried"), "42");
    assert!(dir.join("data/PG_VERSION").is_file() && !data.exists());
    let out = sandbox.run(&["stop", "-d", dir_arg]);
    assert!(out.success(), "{out}");
    assert!(
        dir.join("data/PG_VERSION").is_file(),
        "the cluster taken over from pg_tmp should be kept"
    );
    // Started again, it is pgtmp's own now.
    let url = sandbox.start(&["-d", dir_arg, "-w", UNTIL_STOPPED]);
    assert_eq!(sandbox.psql(&url, "select x from carried"), "42");
    let out = sandbox.run(&["stop", "-d", dir_arg]);
    assert!(out.success() && dir.join("data").is_dir(), "{out}");
}

/// A directory `pg_tmp initdb -d DIR` prepared (never started: no `test` yet) starts with
/// `pgtmp -t -d DIR`; pg_tmp's pg_hba.conf trusted every TCP client, pgtmp's asks for the
/// password it printed.
fn a_directory_pg_tmp_prepared_starts_and_tcp_asks_for_the_password(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let dir = sandbox.path("prepared");
    pg_tmp_initdb(invoker, &dir);
    let url = sandbox.start(&["-t", "-d", dir.to_str().unwrap(), "-w", UNTIL_STOPPED]);
    assert_eq!(sandbox.psql(&url, "select current_database()"), "test");
    let tcp = parse_tcp_url(&url);
    let without = format!(
        "host=127.0.0.1 port={} user={} dbname=test",
        tcp.port, tcp.user
    );
    let out = sandbox.try_psql(&without, "select 1");
    assert!(
        !out.success() && out.stderr.contains("password"),
        "a TCP client without the password should be refused:\n{out}"
    );
    let out = sandbox.run(&["stop", "-d", dir.to_str().unwrap()]);
    assert!(
        out.success() && dir.join("data/PG_VERSION").is_file(),
        "{out}"
    );
}

/// While pg_tmp's server runs in the directory, `pgtmp -d DIR` refuses and changes nothing.
fn a_directory_pg_tmp_runs_in_is_refused_untouched(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let dir = sandbox.path("running");
    let data = pg_tmp_initdb(invoker, &dir);
    pg_tmp_start(invoker, &dir, &data);
    let out = sandbox.run(&["-d", dir.to_str().unwrap(), "-w", UNTIL_STOPPED]);
    let line = check_failed(&out, 1);
    assert!(
        line.contains("runs in") && line.contains("stop it first"),
        "{line}"
    );
    assert!(
        data.join("PG_VERSION").is_file(),
        "the data directory was moved"
    );
    assert!(!dir.join("PGTMP").exists() && !dir.join("pgtmp.keep").exists());
    pg_ctl_stop(invoker, &data);
}
