//! `pgtmp run -- CMD`: the environment CMD gets, its exit status passed on, signals passed on,
//! and no cluster left behind on any exit path (CMD exits, CMD is killed, pgtmp is signalled
//! or killed, CMD cannot be run).

use crate::common::*;
use nix::sys::signal::Signal;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

both_invokers!(
    cmd_gets_the_cluster,
    tcp_cmd_gets_a_password,
    sslmode_that_works_is_kept,
    exit_status_passes_through,
    cmd_that_cannot_run,
    signals_are_passed_on,
    killed_pgtmp_leaves_nothing,
    keep_leaves_the_cluster_running,
    idle_timeout_waits_for_cmd,
    ctrl_c_on_a_terminal_reaches_cmd_once,
);

fn cmd_gets_the_cluster(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let script = r#"psql -XAt -c "select current_user || ' ' || current_database()"
printf '%s|%s|%s|%s|%s|%s|%s\n' "$PGHOST" "$PGPORT" "$PGUSER" "$PGDATABASE" "$DATABASE_URL" "${PGPASSWORD-unset}" "$(id -u)""#;
    let mut cmd = sandbox.pgtmp();
    // Variables of the caller that would send psql elsewhere are removed.
    cmd.env("PGHOSTADDR", "192.0.2.1")
        .env("PGSERVICE", "nonexistent")
        .args(["run", "--", "sh", "-c", script]);
    let out = run(&mut cmd, PGTMP_LIMIT);
    assert!(
        out.success() && out.stderr.is_empty(),
        "pgtmp run as {invoker}:\n{out}"
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0], format!("{} test", invoker.name));
    let fields: Vec<&str> = lines[1].split('|').collect();
    let socket = parse_socket_url(fields[4]);
    assert_eq!(PathBuf::from(fields[0]), socket.dir, "{out}");
    assert!(
        socket.dir.starts_with(&sandbox.pgtmp_dir),
        "PGHOST {}",
        fields[0]
    );
    assert_eq!(fields[1], "5432");
    assert_eq!(fields[2], invoker.name);
    assert_eq!(fields[3], "test");
    assert_eq!(fields[5], "unset", "PGPASSWORD without -t");
    // CMD runs as the invoking account: root stays root, the server does not.
    assert_eq!(fields[6], invoker.uid.to_string(), "CMD's uid");
    assert!(
        !socket.dir.exists(),
        "pgtmp run left {}",
        socket.dir.display()
    );
    sandbox.assert_nothing_left("after pgtmp run");
}

fn tcp_cmd_gets_a_password(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let script = r#"psql -XAt -h 127.0.0.1 -c "select inet_server_port()"
printf '%s %s %s %s\n' "$PGHOST" "$PGPORT" "$DATABASE_URL" "$JDBC_DATABASE_URL"
psql -XAt "$DATABASE_URL" -c "select 'url ok'""#;
    let mut cmd = sandbox.pgtmp();
    cmd.env("PGPASSWORD", "wrong")
        .args(["run", "-t", "--", "sh", "-c", script]);
    let out = run(&mut cmd, PGTMP_LIMIT);
    assert!(out.success() && out.stderr.is_empty(), "{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let fields: Vec<&str> = lines[1].split(' ').collect();
    assert_eq!(fields[0], "127.0.0.1");
    assert_eq!(lines[0], fields[1], "psql reached the port in PGPORT");
    assert_eq!(parse_tcp_url(fields[2]).port.to_string(), fields[1]);
    assert_eq!(lines[2], "url ok");
    assert!(
        fields[3].starts_with(&format!(
            "jdbc:postgresql://127.0.0.1:{}/test?user=",
            fields[1]
        )),
        "JDBC_DATABASE_URL {}",
        fields[3]
    );
    sandbox.assert_nothing_left("after pgtmp run -t");
}

/// The caller's PGSSLMODE is kept when every cluster can meet it (`disable`, `prefer`,
/// `require`: a TCP cluster serves TLS, a socket needs none) and removed when it asks to verify
/// a certificate nobody signed.
fn sslmode_that_works_is_kept(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let script = r#"printf '%s ' "${PGSSLMODE-unset}"
psql -XAt -c "select case when ssl then 'tls' else 'plain' end from pg_stat_ssl where pid = pg_backend_pid()""#;
    for (tcp, mode, expected) in [
        (true, "disable", "disable plain"),
        (true, "require", "require tls"),
        (true, "verify-full", "unset tls"),
        (false, "require", "require plain"),
    ] {
        let mut cmd = sandbox.pgtmp();
        cmd.env("PGSSLMODE", mode).arg("run");
        if tcp {
            cmd.arg("-t");
        }
        cmd.args(["--", "sh", "-c", script]);
        let out = run(&mut cmd, PGTMP_LIMIT);
        assert!(
            out.success() && out.stderr.is_empty(),
            "PGSSLMODE={mode}:\n{out}"
        );
        assert_eq!(
            out.stdout,
            format!("{expected}\n"),
            "PGSSLMODE={mode}, tcp {tcp}"
        );
    }
    sandbox.assert_nothing_left("after pgtmp run with PGSSLMODE");
}

fn exit_status_passes_through(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let out = sandbox.run(&["run", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.code(), Some(7), "{out}");
    assert!(out.stderr.is_empty(), "{out}");
    sandbox.assert_nothing_left("after CMD exited 7");
    // CMD killed by a signal: 128 + N, as a shell reports it.
    let out = sandbox.run(&["run", "--", "sh", "-c", "kill -KILL $$"]);
    assert_eq!(out.code(), Some(137), "{out}");
    sandbox.assert_nothing_left("after CMD was killed");
    // Options before `run` (pg_tmp style) and `run` without `--` work too.
    let out = sandbox.run(&["-w", "5", "run", "true"]);
    assert!(out.success(), "{out}");
    sandbox.assert_nothing_left("after pgtmp -w 5 run true");
    // run prints no URL, so a format meant for starts (jdbc needs -t) does not get in the way.
    let out = run(
        sandbox
            .pgtmp()
            .env("PGTMP_FORMAT", "jdbc")
            .args(["run", "true"]),
        PGTMP_LIMIT,
    );
    assert!(out.success() && out.stderr.is_empty(), "{out}");
    sandbox.assert_nothing_left("after PGTMP_FORMAT=jdbc pgtmp run true");
}

fn cmd_that_cannot_run(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let out = sandbox.run(&["run", "--", "no-such-command-pgtmp"]);
    let line = check_failed(&out, 127);
    assert!(line.contains("no-such-command-pgtmp"), "{line}");
    let out = sandbox.run(&["run", "--", "/etc/hostname"]);
    check_failed(&out, 126);
    let out = sandbox.run(&["run", "--", "/"]);
    check_failed(&out, 126);
    let out = sandbox.run(&["run"]);
    let line = check_failed(&out, 2);
    assert!(line.contains("CMD"), "{line}");
    // A start option that is refused: the start's own error and code.
    let out = sandbox.run(&["run", "-o", "-c port=6000", "--", "true"]);
    let line = check_failed(&out, 2);
    assert!(line.contains("-o") && line.contains("-p"), "{line}");
    let out = sandbox.run(&["run", "-k", "-F", "jdbc", "--", "true"]);
    let line = check_failed(&out, 2);
    assert!(line.contains("-t"), "{line}");
    // -F shapes only what -k prints: without -k it is a mistake.
    let out = sandbox.run(&["run", "-F", "json", "--", "true"]);
    let line = check_failed(&out, 2);
    assert!(line.contains("-k"), "{line}");
    // A start that fails: its error, exit 1, and CMD never runs.
    let marker = sandbox.path("ran");
    let script = format!("touch '{}'", marker.display());
    let out = sandbox.run(&[
        "run",
        "-o",
        "-c no_such_setting=1",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let line = check_failed(&out, 1);
    assert!(line.contains("no_such_setting"), "{line}");
    assert!(
        !marker.exists(),
        "CMD ran although the cluster did not start"
    );
    sandbox.assert_nothing_left("after commands that cannot run");
}

/// A `pgtmp run` whose CMD prints its pid and PGHOST, then waits (trapping signals into
/// exit codes 40 + the signal's offset when `trap` is true).
struct Running {
    child: Child,
    cmd_pid: i32,
    dir: PathBuf,
}

fn start_running(sandbox: &Sandbox, trap: bool) -> Running {
    let script = if trap {
        r#"trap 'exit 40' INT; trap 'exit 41' TERM; trap 'exit 42' HUP
echo "$$ $PGHOST"; while :; do sleep 0.05; done"#
    } else {
        r#"echo "$$ $PGHOST"; exec sleep 600"#
    };
    let mut child = sandbox
        .pgtmp()
        .args(["run", "--", "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cannot start pgtmp run");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("cannot read CMD's first line");
    let (pid, dir) = line
        .trim_end()
        .split_once(' ')
        .unwrap_or_else(|| panic!("CMD printed {line:?}"));
    let dir = PathBuf::from(dir);
    assert!(dir.join("pgtmp.state").is_file(), "no cluster in {dir:?}");
    Running {
        child,
        cmd_pid: pid.parse().unwrap(),
        dir,
    }
}

fn signals_are_passed_on(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    for (sig, code) in [
        (Signal::SIGINT, 40),
        (Signal::SIGTERM, 41),
        (Signal::SIGHUP, 42),
    ] {
        let mut running = start_running(&sandbox, true);
        signal(running.child.id() as i32, sig);
        let what = format!("pgtmp run after {sig}");
        let status = wait_child(&mut running.child, PGTMP_LIMIT, &what);
        assert_eq!(
            status.code(),
            Some(code),
            "{sig} to pgtmp run: CMD's trap should decide the status"
        );
        assert!(!alive(running.cmd_pid), "CMD still runs after {sig}");
        assert!(!running.dir.exists(), "{sig} left {:?}", running.dir);
        sandbox.assert_nothing_left(&format!("after {sig} to pgtmp run"));
    }
    // A CMD that does not catch the signal dies of it: 128 + N.
    let mut running = start_running(&sandbox, false);
    signal(running.child.id() as i32, Signal::SIGTERM);
    let what = "pgtmp run after SIGTERM, untrapped";
    let status = wait_child(&mut running.child, PGTMP_LIMIT, what);
    assert_eq!(status.code(), Some(128 + 15));
    sandbox.assert_nothing_left("after SIGTERM to pgtmp run with an untrapped CMD");
}

/// Even SIGKILL, which pgtmp cannot catch, leaves no cluster: the watchdog sees the lifeline
/// cut and stops the server.
fn killed_pgtmp_leaves_nothing(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let mut running = start_running(&sandbox, false);
    let postmaster = postmaster_pid(&running.dir).expect("no postmaster.pid");
    signal(running.child.id() as i32, Signal::SIGKILL);
    let _ = running.child.wait();
    let gone = wait_until(Duration::from_secs(10) + SLACK, || {
        !alive(postmaster) && !running.dir.exists()
    });
    signal(running.cmd_pid, Signal::SIGKILL);
    assert!(
        gone,
        "after SIGKILL to pgtmp run the server is {} and {:?} {}",
        if alive(postmaster) { "running" } else { "gone" },
        running.dir,
        if running.dir.exists() {
            "exists"
        } else {
            "is gone"
        }
    );
    sandbox.assert_nothing_left("after SIGKILL to pgtmp run");
}

/// `run -k`: the cluster outlives CMD, stderr says where it is, and it is an ordinary
/// cluster from then on.
fn keep_leaves_the_cluster_running(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let out = sandbox.run(&["run", "-k", "-w", UNTIL_STOPPED, "--", "true"]);
    assert!(out.success() && out.stdout.is_empty(), "{out}");
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "{out}");
    let url = lines[0]
        .split_whitespace()
        .find(|w| w.starts_with("postgresql://"))
        .unwrap_or_else(|| panic!("no URL in {:?}", lines[0]));
    assert_eq!(sandbox.psql(url, "select 1"), "1");
    let dir = parse_socket_url(url).dir;
    let out = sandbox.run(&["stop", url]);
    assert!(out.success(), "{out}");
    assert!(
        dir.join("data/PG_VERSION").is_file(),
        "-k kept no directory"
    );
    // The note uses --format where it fits on one line.
    let out = sandbox.run(&["run", "-k", "-t", "-F", "jdbc", "--", "true"]);
    assert!(out.success(), "{out}");
    let line = out.stderr_lines()[0].to_string();
    let jdbc = line
        .split_whitespace()
        .find(|w| w.starts_with("jdbc:postgresql://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no JDBC URL in {line:?}"));
    assert!(
        jdbc.contains("/test?user=") && jdbc.contains("&password="),
        "{jdbc}"
    );
    let out = sandbox.run(&["stop", "--all"]);
    assert!(out.success(), "{out}");
}

/// The idle timeout does not stop the cluster under a CMD that has not connected yet.
fn idle_timeout_waits_for_cmd(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let script = r#"sleep 3; psql -XAt -c "select 'still here'""#;
    let out = sandbox.run(&["run", "-w", "1", "--", "sh", "-c", script]);
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout.trim_end(), "still here");
    sandbox.assert_nothing_left("after pgtmp run -w 1");
}

/// Counts the SIGINTs it receives and says where each came from (the kernel, for a terminal's
/// Ctrl-C, or a process); exits with their number. `own-group` first leaves pgtmp's process
/// group, as a shell with job control does.
const COUNT_INTERRUPTS: &str = r#"
import os, signal, sys
if sys.argv[1:] == ["own-group"]:
    os.setpgid(0, 0)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
print("ready", flush=True)
got = []
info = signal.sigtimedwait([signal.SIGINT], 30)
while info is not None:
    got.append("terminal" if info.si_code == 0x80 else "process")
    info = signal.sigtimedwait([signal.SIGINT], 1.5)
print("interrupts:", " ".join(got), flush=True)
sys.exit(len(got))
"#;

/// Types Ctrl-C into a pseudo-terminal (made by util-linux `script`) running
/// `pgtmp run -- python3 COUNT_INTERRUPTS ARGS`; returns what CMD printed and pgtmp's status.
///
/// `script` runs its command with `$SHELL -c`; the shell execs pgtmp so that no shell stands
/// between the terminal and pgtmp (dash, waiting for a child, dies of the terminal's Ctrl-C
/// itself and would report 130 whatever pgtmp did).
fn ctrl_c(sandbox: &Sandbox, args: &str) -> (String, Option<i32>) {
    use std::io::{Read, Write};
    let probe = sandbox.path("count_interrupts.py");
    std::fs::write(&probe, COUNT_INTERRUPTS).unwrap();
    let mut script = sandbox.tool("script");
    script
        .arg("-qec")
        .arg(format!(
            "exec \"$PGTMP\" run -- /usr/bin/python3 {} {args}",
            probe.display()
        ))
        .arg("/dev/null")
        .env("SHELL", "/bin/sh")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = script.spawn().expect("cannot run script");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("ready") {
        let n = stdout.read(&mut buf).expect("cannot read from script");
        assert!(
            n > 0,
            "script ended early: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    stdin
        .write_all(b"\x03")
        .and_then(|()| stdin.flush())
        .unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let status = wait_child(
        &mut child,
        PGTMP_LIMIT,
        "pgtmp run after Ctrl-C on a terminal",
    );
    drop(stdin);
    (rest, status.code())
}

/// Ctrl-C on a terminal goes to the whole foreground process group: CMD gets it from the
/// terminal, and pgtmp must not send a second one. A CMD that left pgtmp's process group does
/// not get the terminal's, so pgtmp passes it on. (A second SIGINT sent while the first is
/// still pending merges with it, so a duplicate is caught only when CMD took the first one
/// in time; the own-group half is exact.)
fn ctrl_c_on_a_terminal_reaches_cmd_once(invoker: &Invoker) {
    if !std::path::Path::new("/usr/bin/python3").exists() {
        return missing("/usr/bin/python3", "apt-get install python3");
    }
    let sandbox = Sandbox::new(invoker);
    let (said, code) = ctrl_c(&sandbox, "");
    assert!(said.contains("interrupts: terminal\r"), "CMD saw: {said:?}");
    assert_eq!(code, Some(1), "pgtmp run passes CMD's status on: {said:?}");
    sandbox.assert_nothing_left("after Ctrl-C on a terminal");
    let (said, code) = ctrl_c(&sandbox, "own-group");
    assert!(said.contains("interrupts: process\r"), "CMD saw: {said:?}");
    assert_eq!(code, Some(1), "{said:?}");
    sandbox.assert_nothing_left("after Ctrl-C to a CMD in its own process group");
}
