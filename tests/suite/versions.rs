//! `--pg MAJOR` picks the installation of a PostgreSQL major among those found, also in the
//! directories of PGTMP_PG_PATH; `pgtmp run --pg 15,16 -- CMD` (or `--pg all`) runs CMD once
//! per major, each against a cluster of its own. The second major is a relocatable build from
//! npm that .ci/run fetches with scripts/fetch-pg into PGTMP_VERSIONS_CACHE
//! (default /tmp/pgtmp-pg-versions).
//!
//! These tests are about discovery among this machine's installations, so they ignore
//! PGTMP_TEST_BINDIR: pgtmp runs without the PGTMP_BINDIR the harness would give it.

use crate::common::*;
use std::path::PathBuf;

both_invokers!(
    pg_picks_the_installation_of_that_major,
    run_runs_cmd_once_per_major,
);

/// The system's installation, which the suite runs against.
const SYSTEM_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Where scripts/fetch-pg unpacks builds.
fn cache() -> PathBuf {
    std::env::var_os("PGTMP_VERSIONS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/pgtmp-pg-versions"))
}

/// The system's major, and another major with a complete build in the cache and the directory
/// of that build; None (skipped outside CI, a failure in CI) when there is none.
fn two_majors() -> Option<(u32, u32, PathBuf)> {
    let system = major_of(&PathBuf::from(SYSTEM_BIN).join("postgres"))?;
    let mut builds: Vec<(u32, PathBuf)> = std::fs::read_dir(cache())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join(".complete").exists())
        .filter_map(|e| {
            let postgres = e.path().join("package/native/bin/postgres");
            Some((major_of(&postgres)?, e.path()))
        })
        .filter(|(major, _)| *major != system)
        .collect();
    builds.sort();
    match builds.into_iter().next() {
        Some((other, dir)) => Some((system, other, dir)),
        None => {
            cannot_run_here(&format!(
                "no PostgreSQL build of a major other than {system} in {} (scripts/fetch-pg 16)",
                cache().display()
            ));
            None
        }
    }
}

/// The major `postgres --version` reports.
fn major_of(postgres: &std::path::Path) -> Option<u32> {
    let out = std::process::Command::new(postgres)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    version.split('.').next()?.parse().ok()
}

/// pgtmp as the sandbox runs it, but finding its installations itself (no PGTMP_BINDIR).
fn discovering(sandbox: &Sandbox) -> std::process::Command {
    let mut cmd = sandbox.pgtmp();
    cmd.env_remove("PGTMP_BINDIR");
    cmd
}

fn run_discovering(sandbox: &Sandbox, args: &[&str]) -> Outcome {
    run(discovering(sandbox).args(args), PGTMP_LIMIT)
}

/// pgtmp with PGTMP_PG_PATH naming the directory `build` only, through a symlink in the
/// sandbox (as a user's own list of installations would).
fn with_pg_path(sandbox: &Sandbox, build: &std::path::Path, args: &[&str]) -> Outcome {
    let path = sandbox.path("pgs");
    if !path.exists() {
        std::fs::create_dir(&path).unwrap();
        std::os::unix::fs::symlink(build, path.join("other")).unwrap();
    }
    let mut cmd = discovering(sandbox);
    cmd.env("PGTMP_PG_PATH", &path).args(args);
    run(&mut cmd, PGTMP_LIMIT)
}

/// `--pg MAJOR`: the system's major, or the build's found through PGTMP_PG_PATH; the server
/// runs that major.
fn pg_picks_the_installation_of_that_major(invoker: &Invoker) {
    let Some((system, other, build)) = two_majors() else {
        return;
    };
    let sandbox = Sandbox::new(invoker);
    for major in [system, other] {
        let out = with_pg_path(
            &sandbox,
            &build,
            &["--pg", &major.to_string(), "-F", "json"],
        );
        let json: serde_json::Value = serde_json::from_str(&check_started(&out, invoker))
            .unwrap_or_else(|e| panic!("no JSON ({e}):\n{out}"));
        let version = json["version"].as_str().expect("version").to_string();
        assert!(
            version.starts_with(&format!("{major}.")),
            "--pg {major} started {version}"
        );
        let url = json["url"].as_str().expect("url");
        assert_eq!(
            sandbox.psql(
                url,
                "select current_setting('server_version_num')::int / 10000"
            ),
            major.to_string()
        );
        let bindir = json["bindir"].as_str().expect("bindir");
        assert_eq!(bindir == SYSTEM_BIN, major == system, "{bindir}");
    }
    // PGTMP_PG does the same.
    let mut cmd = discovering(&sandbox);
    cmd.env("PGTMP_PG", system.to_string()).args(["-F", "json"]);
    let out = run(&mut cmd, PGTMP_LIMIT);
    assert!(check_started(&out, invoker).contains(SYSTEM_BIN), "{out}");
}

/// `run --pg A,B -- CMD`: CMD runs once per major against a server of that major, a line per
/// major says how it went, the status is that of the first failure, nothing is left.
fn run_runs_cmd_once_per_major(invoker: &Invoker) {
    let Some((system, other, build)) = two_majors() else {
        return;
    };
    let sandbox = Sandbox::new(invoker);
    let majors = format!("{system},{other}");
    let query = "psql -XAtc \"select current_setting('server_version_num')::int / 10000\"";
    let out = with_pg_path(
        &sandbox,
        &build,
        &["run", "--pg", &majors, "--", "sh", "-c", query],
    );
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout, format!("{system}\n{other}\n"), "{out}");
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 2, "{out}");
    for (line, major) in lines.iter().zip([system, other]) {
        assert!(
            line.starts_with(&format!("pgtmp: PostgreSQL {major}.")) && line.ends_with(": ok"),
            "{line}"
        );
    }
    // CMD fails on the second major only: that major's line says so, and so does the status.
    let script = format!("test \"$({query})\" = {system} || exit 3");
    let out = with_pg_path(
        &sandbox,
        &build,
        &["run", "--pg", &majors, "--", "sh", "-c", &script],
    );
    assert_eq!(out.code(), Some(3), "{out}");
    let lines = out.stderr_lines();
    assert!(
        lines[0].ends_with(": ok") && lines[1].ends_with(": failed (exit 3)"),
        "{out}"
    );
    // `all`: every major found, here the system's and the build's, oldest first.
    let out = with_pg_path(
        &sandbox,
        &build,
        &["run", "--pg", "all", "--", "sh", "-c", query],
    );
    assert!(out.success(), "{out}");
    let mut both = [system, other];
    both.sort();
    assert_eq!(out.stdout, format!("{}\n{}\n", both[0], both[1]), "{out}");
    sandbox.assert_nothing_left("after pgtmp run --pg");
}

/// An unknown major names the installed ones; --pg with --bindir, and several majors for
/// anything but `run`, are usage errors; nothing is started.
#[test]
fn wrong_choices_of_major_are_refused_with_the_reason() {
    let invoker = Invoker::current();
    let sandbox = Sandbox::new(&invoker);
    let line = check_failed(&run_discovering(&sandbox, &["--pg", "99", "-w", "5"]), 1);
    assert!(
        line.contains("no PostgreSQL 99 installation")
            && line.contains("installed: ")
            && line.contains("15"),
        "{line}"
    );
    let line = check_failed(
        &run_discovering(&sandbox, &["run", "--pg", "99", "--", "true"]),
        1,
    );
    assert!(line.contains("installed: "), "{line}");
    for args in [
        &["--pg", "15", "--bindir", SYSTEM_BIN, "-w", "5"][..],
        &["run", "--pg", "15,16", "--bindir", SYSTEM_BIN, "--", "true"],
        &["--pg", "15,16", "-w", "5"],
        &["initdb", "--pg", "all"],
        &["--pg", "fifteen", "-w", "5"],
        &["stop", "--pg", "15", "--all"],
    ] {
        let line = check_failed(&run_discovering(&sandbox, args), 2);
        assert!(line.contains("--pg"), "{args:?}: {line}");
    }
    sandbox.assert_nothing_left("after refused --pg");
}

/// SIGTERM to `pgtmp run --pg A,B` while A's CMD runs: CMD gets it, A's cluster is stopped,
/// B's never starts, and the status is 128+15.
#[test]
fn a_signal_ends_the_run_of_every_major() {
    let Some((system, other, build)) = two_majors() else {
        return;
    };
    let invoker = Invoker::current();
    let sandbox = Sandbox::new(&invoker);
    let started = sandbox.path("started");
    let pgs = sandbox.path("pgs");
    std::fs::create_dir(&pgs).unwrap();
    std::os::unix::fs::symlink(&build, pgs.join("other")).unwrap();
    let script = format!("echo > {}; exec sleep 60", started.display());
    let mut child = discovering(&sandbox)
        .env("PGTMP_PG_PATH", &pgs)
        .args(["run", "--pg", &format!("{system},{other}"), "--"])
        .args(["sh", "-c", &script])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cannot start pgtmp run");
    assert!(
        wait_until(PGTMP_LIMIT, || started.exists()),
        "CMD did not start"
    );
    signal(child.id() as i32, nix::sys::signal::Signal::SIGTERM);
    let status = wait_child(&mut child, PGTMP_LIMIT, "pgtmp run --pg");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(143), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "only the first major ran: {stderr}");
    assert!(
        lines[0].starts_with(&format!("pgtmp: PostgreSQL {system}."))
            && lines[0].ends_with("failed (exit 143)"),
        "{stderr}"
    );
    sandbox.assert_nothing_left("after SIGTERM to pgtmp run --pg");
}
