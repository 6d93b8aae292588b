//! Clusters that follow the test run: `--owner-pid` (alive while the owner runs, gone within a
//! second of its exit, also through pid reuse), and keeping what failed: `pgtmp keep`,
//! `pgtmp list --all`, reopening with `pgtmp -d DIR`, `pgtmp discard`.

use crate::common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

both_invokers!(
    fixture_outlives_its_idle_timeout,
    killed_owner_waits_for_the_last_client,
    owner_pid_reused_by_another_process,
    owner_must_run_and_be_yours,
    run_with_an_owner_leaves_the_cluster_to_it,
    keep_a_clone_reopen_and_discard,
    kept_elsewhere_is_listed_and_discarded,
    discard_removes_only_pgtmp_clusters_of_yours,
    swapped_parent_redirects_nothing,
    readme_pytest_keeps_a_failing_tests_database,
    readme_junit_extension_keeps_a_failing_tests_database,
);

/// The spec: gone within 1 s of the owner's exit (or of its last client's), plus the slack a
/// loaded two-core machine needs.
fn follow_bound() -> Duration {
    Duration::from_secs(1) + SLACK
}

/// A process of the invoker's that runs until killed: the owner of a test.
fn owner(invoker: &Invoker) -> Child {
    invoker
        .command("sleep")
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .expect("cannot start sleep")
}

/// How long after `since` the cluster of `dir` (its server and its directory) was gone; panics
/// when it is still there after a generous limit.
fn gone_after(dir: &Path, postmaster: i32, since: Instant, what: &str) -> Duration {
    let limit = follow_bound() + Duration::from_secs(10);
    assert!(
        wait_until(limit, || !alive(postmaster) && !dir.exists()),
        "{what}: the cluster in {} is still there after {limit:?}",
        dir.display()
    );
    let took = since.elapsed();
    eprintln!("{what}: gone {took:?} after");
    took
}

/// A shell test runner, the owner itself (`$$`): its cluster has `-w 1` yet survives a 3 s gap
/// without any connection (a slow test, a debugger pause), and is gone within a second of the
/// runner's exit.
fn fixture_outlives_its_idle_timeout(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let script = "url=$(\"$PGTMP\" --owner-pid $$ -w 1) || exit 1
        printf '%s\\n' \"$url\" > url.txt
        psql -X -q -v ON_ERROR_STOP=1 \"$url\" -c 'create table t (x int)' || exit 1
        sleep 3
        psql -X -q -At -v ON_ERROR_STOP=1 \"$url\" -c 'insert into t values (1) returning x'";
    let mut cmd = sandbox.shell(script);
    cmd.current_dir(&sandbox.root);
    let out = run(&mut cmd, PGTMP_LIMIT);
    let ended = Instant::now();
    assert!(out.success() && out.stdout.trim() == "1", "{out}");
    let url = fs::read_to_string(sandbox.root.join("url.txt")).unwrap();
    let dir = parse_socket_url(url.trim()).dir;
    let postmaster = postmaster_pid(&dir).unwrap_or(0);
    let took = gone_after(&dir, postmaster, ended, "after the runner exited");
    assert!(took <= follow_bound(), "took {took:?}");
    sandbox.assert_nothing_left("an owned cluster after its owner");
}

/// SIGKILL of the owner while a client is connected: the cluster serves that client on, and is
/// gone within a second once it disconnects.
fn killed_owner_waits_for_the_last_client(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let mut process = owner(invoker);
    let pid = process.id().to_string();
    let url = sandbox.start(&["--owner-pid", &pid]);
    let dir = parse_socket_url(&url).dir;
    let postmaster = postmaster_pid(&dir).unwrap();
    let mut session = sandbox.psql_session(&url);
    assert_eq!(session.query_line("select 1;"), "1");
    process.kill().unwrap();
    process.wait().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        session.query_line("select 2;"),
        "2",
        "the cluster left a connected client"
    );
    session.close();
    let took = gone_after(&dir, postmaster, Instant::now(), "after the last client");
    assert!(took <= follow_bound(), "took {took:?}");
    sandbox.assert_nothing_left("an owned cluster after owner and client");
}

/// Gives the next process the pid `pid` (root only: /proc/sys/kernel/ns_last_pid): a process
/// of the invoker's with that very pid, or None when other processes kept taking it.
fn process_with_pid(invoker: &Invoker, pid: u32) -> Option<Child> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).ok()?;
        let mut child = owner(invoker);
        if child.id() == pid {
            return Some(child);
        }
        let _ = child.kill();
        let _ = child.wait();
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The owner exits and another process of the same account gets its pid: the cluster still
/// stops, because the owner is known by its start time as well.
fn owner_pid_reused_by_another_process(invoker: &Invoker) {
    if !Invoker::current().is_root() {
        cannot_run_here("choosing a process's pid (ns_last_pid) needs root");
        return;
    }
    let sandbox = Sandbox::new(invoker);
    let mut first = owner(invoker);
    let pid = first.id();
    let url = sandbox.start(&["--owner-pid", &pid.to_string(), "-t"]);
    let dir = sandbox.only_instance();
    let postmaster = postmaster_pid(&dir).unwrap();
    assert!(sandbox.try_psql(&url, "select 1").success());
    first.kill().unwrap();
    first.wait().unwrap();
    let Some(mut second) = process_with_pid(invoker, pid) else {
        panic!("could not get pid {pid} again within 20 s");
    };
    let took = gone_after(&dir, postmaster, Instant::now(), "with the pid reused");
    assert!(alive(pid as i32), "the process with the reused pid is gone");
    let _ = second.kill();
    let _ = second.wait();
    assert!(took <= follow_bound(), "took {took:?}");
}

/// A pid that runs no process, or one of another account, is a usage error naming it, and
/// nothing is left.
fn owner_must_run_and_be_yours(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let mut exited = owner(invoker);
    exited.kill().unwrap();
    exited.wait().unwrap();
    let gone = exited.id().to_string();
    let out = sandbox.run(&["--owner-pid", &gone]);
    let line = check_failed(&out, 2);
    assert!(
        line.contains(&format!("--owner-pid {gone}")) && line.contains("no such process"),
        "{out}"
    );
    // Another account's: init (root's) for an ordinary invoker, an ordinary account's for root.
    let mut foreign = None;
    let other = if invoker.uid == 0 {
        let Some(ordinary) = Invoker::ordinary() else {
            cannot_run_here("no ordinary account to own a process");
            return;
        };
        let child = owner(&ordinary);
        let pid = child.id().to_string();
        foreign = Some(child);
        pid
    } else {
        "1".to_string()
    };
    let out = sandbox.run(&["--owner-pid", &other, "-k"]);
    let line = check_failed(&out, 2);
    assert!(line.contains("not as you"), "{out}");
    for bad in ["0", "-5", "abc"] {
        let out = sandbox.run(&["--owner-pid", bad]);
        check_failed(&out, 2);
    }
    if let Some(mut child) = foreign {
        let _ = child.kill();
        let _ = child.wait();
    }
    sandbox.assert_nothing_left("a refused --owner-pid");
}

/// `pgtmp run --owner-pid PID -- CMD`: after CMD the cluster runs on while PID does (and says
/// so on stderr), then follows PID.
fn run_with_an_owner_leaves_the_cluster_to_it(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let mut process = owner(invoker);
    let pid = process.id().to_string();
    let out = sandbox.run(&["run", "--owner-pid", &pid, "--", "sh", "-c", "echo $PGHOST"]);
    assert!(out.success(), "{out}");
    let dir = PathBuf::from(out.stdout.trim());
    assert!(
        out.stderr.contains("the cluster runs on")
            && out.stderr.contains(&format!("process {pid} has exited")),
        "{out}"
    );
    let postmaster = postmaster_pid(&dir).expect("the cluster stopped with CMD");
    process.kill().unwrap();
    process.wait().unwrap();
    let took = gone_after(
        &dir,
        postmaster,
        Instant::now(),
        "run's cluster after its owner",
    );
    assert!(took <= follow_bound(), "took {took:?}");

    // An owner that is gone by the time CMD ends: stopped with CMD, as without one.
    let mut short = owner(invoker);
    let pid = short.id().to_string();
    // Killed, and seen to be dead (a zombie: this test reaps it later), before CMD ends.
    let script = format!(
        "kill -9 {pid}; until grep -q '^State:[[:space:]]*Z' /proc/{pid}/status; do sleep 0.01; done; echo $PGHOST"
    );
    let out = sandbox.run(&["run", "--owner-pid", &pid, "--", "sh", "-c", &script]);
    short.wait().unwrap();
    assert!(out.success() && out.stderr.is_empty(), "{out}");
    assert!(!Path::new(out.stdout.trim()).exists(), "{out}");
    sandbox.assert_nothing_left("pgtmp run with an owner");
}

/// The `pgtmp keep` line: the reopen command and the URL of the database named.
fn kept_line(sandbox: &Sandbox, url: &str) -> (String, String) {
    let out = sandbox.run(&["keep", url]);
    assert!(out.success() && out.stdout.is_empty(), "{out}");
    let line = out.stderr.trim();
    assert_eq!(out.stderr_lines().len(), 1, "{out}");
    let reopen = line
        .split('`')
        .nth(1)
        .unwrap_or_else(|| panic!("no command in {line}"));
    let reach = line
        .split("then connect to ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("no URL in {line}"));
    (reopen.to_string(), reach.to_string())
}

/// The stopped kept clusters `pgtmp list --all --json` shows.
fn stopped_listed(sandbox: &Sandbox) -> Vec<serde_json::Value> {
    let out = sandbox.run(&["list", "--all", "--json"]);
    assert!(out.success(), "{out}");
    let all: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    all.into_iter().filter(|e| e["running"] == false).collect()
}

/// A failing test's clone is kept with `pgtmp keep CLONE_URL`; after `pgtmp stop` its
/// directory stays, `list --all` shows it, the printed command reopens it with the clone's data,
/// and `pgtmp discard` removes it.
fn keep_a_clone_reopen_and_discard(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let schema = sandbox.path("schema.sql");
    fs::write(&schema, "create table t (x int);\n").unwrap();
    let url = sandbox.start(&["-w", UNTIL_STOPPED, "-f", schema.to_str().unwrap()]);
    let clone = sandbox.run(&["clone", &url]).stdout;
    sandbox.psql(&clone, "insert into t values (42)");
    let (reopen, reach) = kept_line(&sandbox, &clone);
    let dir = parse_socket_url(&url).dir;
    assert_eq!(reopen, format!("pgtmp -d {}", dir.display()));
    assert_eq!(
        reach, clone,
        "the clone's URL, which the reopened cluster serves"
    );
    let out = sandbox.run(&["stop", &url]);
    assert!(out.success(), "{out}");
    assert!(dir.join("data").is_dir(), "the kept cluster was removed");

    let stopped = stopped_listed(&sandbox);
    assert_eq!(stopped.len(), 1, "{stopped:?}");
    assert_eq!(stopped[0]["dir"], dir.to_str().unwrap());
    assert_eq!(stopped[0]["reopen"], reopen.as_str());
    assert!(stopped[0]["last_used_seconds"].is_u64(), "{stopped:?}");
    let table = sandbox.run(&["list", "--all"]).stdout;
    assert!(
        table.contains("KEPT, STOPPED") && table.contains(&reopen),
        "{table}"
    );
    assert!(sandbox.run(&["list"]).stdout.is_empty());

    let args: Vec<&str> = reopen.split(' ').skip(1).collect();
    sandbox.start(&[&args[..], &["-w", UNTIL_STOPPED]].concat());
    assert_eq!(sandbox.psql(&reach, "select x from t"), "42");
    assert!(
        stopped_listed(&sandbox).is_empty(),
        "a running cluster is not stopped"
    );
    let out = sandbox.run(&["discard", dir.to_str().unwrap()]);
    assert!(out.success() && out.stdout.is_empty(), "{out}");
    assert!(!dir.exists(), "discard left {}", dir.display());
    assert!(stopped_listed(&sandbox).is_empty());
    sandbox.assert_nothing_left("a discarded cluster");
}

/// A `-d` cluster outside PGTMP_DIR, kept by its TCP URL (JDBC form), stopped by its idle
/// timeout: still listed by `list --all` after it stopped, and discarded by its directory.
fn kept_elsewhere_is_listed_and_discarded(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let dir = sandbox.path("mine");
    let url = sandbox.start(&["-t", "-w", "1", "-d", dir.to_str().unwrap(), "-F", "jdbc"]);
    let postmaster = postmaster_pid(&dir).unwrap();
    let (reopen, _) = kept_line(&sandbox, &url);
    assert_eq!(reopen, format!("pgtmp -t -d {}", dir.display()));
    gone_or_stopped(postmaster);
    assert!(dir.join("data").is_dir(), "kept, yet removed");
    let stopped = stopped_listed(&sandbox);
    assert_eq!(stopped.len(), 1, "{stopped:?}");
    assert_eq!(stopped[0]["dir"], dir.to_str().unwrap());
    assert_eq!(
        stopped[0]["reopen"],
        reopen.as_str(),
        "list --all says -t too"
    );
    let out = sandbox.run(&["keep", dir.to_str().unwrap()]);
    check_failed(&out, 2);
    let out = sandbox.run(&["discard", dir.to_str().unwrap()]);
    assert!(out.success(), "{out}");
    assert!(!dir.exists());
    assert!(stopped_listed(&sandbox).is_empty());
    // Nothing of it stays in PGTMP_DIR either: gc finds no stale record.
    let out = sandbox.run(&["gc", "-n"]);
    assert!(!out.stdout.contains("kept"), "{out}");
}

fn gone_or_stopped(postmaster: i32) {
    assert!(
        wait_until(Duration::from_secs(20), || !alive(postmaster)),
        "the idle cluster did not stop"
    );
}

/// `pgtmp discard` never removes what is not a pgtmp cluster of the invoker's: a plain
/// directory, a symlink to a kept cluster, a cluster-looking directory of another account's.
fn discard_removes_only_pgtmp_clusters_of_yours(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let plain = sandbox.path("plain");
    fs::create_dir(&plain).unwrap();
    fs::write(plain.join("precious"), "x").unwrap();
    chown_to(&plain, invoker);
    let out = sandbox.run(&["discard", plain.to_str().unwrap()]);
    check_failed(&out, 1);
    assert!(plain.join("precious").exists());

    let url = sandbox.start(&["-k", "-w", UNTIL_STOPPED]);
    let dir = parse_socket_url(&url).dir;
    assert!(sandbox.run(&["stop", &url]).success());
    let link = sandbox.path("link");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    let out = sandbox.run(&["discard", link.to_str().unwrap()]);
    check_failed(&out, 1);
    assert!(dir.join("data").is_dir(), "discard followed a symlink");

    if let Some(attacker) = Invoker::attacker() {
        // The attacker's directory, made to look like a pgtmp cluster.
        let planted = sandbox.path("planted");
        let script = "mkdir -p \"$1/data\" && echo 15 > \"$1/data/PG_VERSION\" && \
                      echo x > \"$1/PGTMP\" && echo x > \"$1/pgtmp.keep\" && chmod 700 \"$1\"";
        let out = run(
            attacker
                .command("sh")
                .args(["-c", script, "sh", planted.to_str().unwrap()]),
            PSQL_LIMIT,
        );
        assert!(out.success(), "{out}");
        let out = sandbox.run(&["discard", planted.to_str().unwrap()]);
        check_failed(&out, 1);
        assert!(
            planted.join("data").exists(),
            "another account's directory was removed"
        );
    }
    let out = sandbox.run(&["discard", &url]);
    assert!(out.success(), "{out}");
    assert!(!dir.exists());
}

/// Gives `path` to the invoker (the suite may run as root on the invoker's behalf).
fn chown_to(path: &Path, invoker: &Invoker) {
    if invoker.switched {
        nix::unistd::chown(
            path,
            Some(nix::unistd::Uid::from_raw(invoker.uid)),
            Some(nix::unistd::Gid::from_raw(invoker.gid)),
        )
        .unwrap();
    }
}

/// The first code block in `lang` after `heading` in README.md, as printed there.
fn readme_block(heading: &str, lang: &str, containing: &str) -> String {
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split_once(heading)
        .unwrap_or_else(|| panic!("README.md has no {heading}"))
        .1;
    section
        .split(&format!("```{lang}\n"))
        .skip(1)
        .filter_map(|block| block.split_once("```").map(|(code, _)| code))
        .find(|code| code.contains(containing))
        .unwrap_or_else(|| panic!("no {lang} block with {containing} under {heading}"))
        .to_string()
}

/// A directory of the invoker's in the sandbox, for files its programs write.
fn invokers_dir(sandbox: &Sandbox, name: &str) -> PathBuf {
    let dir = sandbox.path(name);
    fs::create_dir(&dir).unwrap();
    chown_to(&dir, &sandbox.invoker);
    dir
}

/// PATH with the pgtmp under test first, as an installed pgtmp would be.
fn path_with_pgtmp(invoker: &Invoker) -> String {
    let bin = invoker.bin();
    format!(
        "{}:/usr/local/bin:/usr/bin:/bin",
        bin.parent().unwrap().display()
    )
}

/// After a run with one failing test: exactly one kept cluster has stopped (its owner exited),
/// the URL printed for it reopens it with the failing test's row, and discard removes it.
fn check_kept_after_owner(sandbox: &Sandbox, output: &str, table: &str) {
    let reach = output
        .split("then connect to ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("no kept line in:\n{output}"));
    let mut stopped = Vec::new();
    assert!(
        wait_until(follow_bound() + Duration::from_secs(10), || {
            stopped = stopped_listed(sandbox);
            stopped.len() == 1
        }),
        "no kept cluster stopped after its owner: {stopped:?}"
    );
    let dir = stopped[0]["dir"].as_str().unwrap().to_string();
    sandbox.start(&["-d", &dir, "-w", UNTIL_STOPPED]);
    assert_eq!(
        sandbox.psql(reach.trim(), &format!("select x from {table}")),
        "7",
        "the failing test's database"
    );
    assert!(sandbox.run(&["discard", &dir]).success());
    assert!(!Path::new(&dir).exists());
    sandbox.assert_nothing_left("the kept cluster after discard");
}

/// README's pytest conftest.py, as printed: a passing and a failing test, each with a clone;
/// the report shows where the failing test's database was kept, the cluster is gone with
/// pytest, and the kept directory reopens with the failing test's data.
fn readme_pytest_keeps_a_failing_tests_database(invoker: &Invoker) {
    let python = "/usr/bin/python3";
    if !works(invoker, python, &["-c", "import psycopg2, pytest"]) {
        return missing(
            "pytest and psycopg2",
            "Debian: apt-get install python3-pytest python3-psycopg2",
        );
    }
    let sandbox = Sandbox::new(invoker);
    let dir = invokers_dir(&sandbox, "suite");
    fs::write(
        dir.join("conftest.py"),
        readme_block("### pytest", "python", "conftest.py"),
    )
    .unwrap();
    let tests = "import psycopg2\n\n
def test_passes(db_url):
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute('create table item (x int)')\n\n
def test_fails(db_url):
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute('create table item (x int); insert into item values (7)')
    assert False, 'fails on purpose'
";
    fs::write(dir.join("test_items.py"), tests).unwrap();
    let mut cmd = sandbox.tool(python);
    cmd.args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(&dir)
        .env("PATH", path_with_pgtmp(invoker));
    let out = run(&mut cmd, PGTMP_LIMIT);
    assert!(
        out.code() == Some(1) && out.stdout.contains("1 failed, 1 passed"),
        "README's pytest example:\n{out}"
    );
    assert!(
        out.stdout.contains("pgtmp: kept"),
        "no kept line in the report:\n{out}"
    );
    check_kept_after_owner(&sandbox, &out.stdout, "item");
}

/// README's JUnit 5 extension, as printed, with a passing and a failing test: the failing
/// test's database is kept (the line on stderr), the cluster goes with the JVM.
fn readme_junit_extension_keeps_a_failing_tests_database(invoker: &Invoker) {
    let java = Path::new("/usr/share/java");
    let jars = [
        "junit-jupiter-api.jar",
        "apiguardian-api.jar",
        "junit-platform-console-standalone.jar",
        "postgresql.jar",
    ];
    if let Some(jar) = jars.iter().find(|jar| !java.join(jar).is_file()) {
        return missing(
            jar,
            "Debian: apt-get install junit5 libpostgresql-jdbc-java",
        );
    }
    let sandbox = Sandbox::new(invoker);
    let dir = invokers_dir(&sandbox, "java");
    fs::write(
        dir.join("Pgtmp.java"),
        readme_block("### JUnit and JDBC", "java", "class Pgtmp"),
    )
    .unwrap();
    let tests = r#"
import java.sql.*;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.ExtendWith;

@ExtendWith(Pgtmp.class)
class ItemsTest {
    @Test
    void passes(String url) throws Exception {
        try (Connection c = DriverManager.getConnection(url)) {
            c.createStatement().execute("create table item (x int)");
        }
    }

    @Test
    void fails(String url) throws Exception {
        try (Connection c = DriverManager.getConnection(url)) {
            c.createStatement().execute("create table item (x int); insert into item values (7)");
        }
        throw new AssertionError("fails on purpose");
    }
}
"#;
    fs::write(dir.join("ItemsTest.java"), tests).unwrap();
    let classpath = |names: &[&str]| {
        names
            .iter()
            .map(|n| java.join(n).display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    };
    let mut javac = sandbox.tool("javac");
    javac
        .args([
            "-d",
            "classes",
            "-cp",
            &classpath(&jars[..2]),
            "Pgtmp.java",
            "ItemsTest.java",
        ])
        .current_dir(&dir);
    let out = run(&mut javac, PGTMP_LIMIT);
    assert!(
        out.success(),
        "README's JUnit extension does not compile:\n{out}"
    );
    let mut junit = sandbox.tool("java");
    junit
        .arg("-jar")
        .arg(java.join(jars[2]))
        .args([
            "--disable-banner",
            "--details=summary",
            "--select-class",
            "ItemsTest",
        ])
        .arg("-cp")
        .arg(format!("classes:{}", java.join(jars[3]).display()))
        .env("PATH", path_with_pgtmp(invoker))
        .current_dir(&dir);
    let out = run(&mut junit, PGTMP_LIMIT);
    assert!(
        out.code() == Some(1)
            && out.stdout.contains("1 tests successful")
            && out.stdout.contains("1 tests failed"),
        "README's JUnit extension:\n{out}"
    );
    check_kept_after_owner(&sandbox, &out.stderr, "item");
}

/// Another account owns the parent of a kept `-d` cluster and swaps it for a symlink to the
/// parent of another kept cluster of the invoker's: the record of the first no longer finds
/// anything (its directory's identity is recorded), `discard` by the swapped path removes
/// nothing, and gc drops the stale record.
fn swapped_parent_redirects_nothing(invoker: &Invoker) {
    let Some(attacker) = Invoker::attacker() else {
        return cannot_run_here("no second ordinary account to attack with (not root)");
    };
    let sandbox = Sandbox::new(invoker);
    let theirs = sandbox.path("att");
    let out = run(
        attacker.command("mkdir").args(["-m", "777"]).arg(&theirs),
        PSQL_LIMIT,
    );
    assert!(out.success(), "{out}");
    let mine = invokers_dir(&sandbox, "mine");
    if invoker.is_root() {
        // Root's clusters belong to its server account, which makes them in here.
        let (_, uid) = invoker.server_account();
        std::os::unix::fs::chown(&mine, Some(uid), None).unwrap();
    }
    let first = theirs.join("c");
    let second = mine.join("c");
    for dir in [&first, &second] {
        let url = sandbox.start(&["-k", "-w", UNTIL_STOPPED, "-d", dir.to_str().unwrap()]);
        assert!(sandbox.run(&["stop", &url]).success());
    }
    let moved = sandbox.path("att.old");
    let script = "mv \"$1\" \"$2\" && ln -s \"$3\" \"$1\"";
    let out = run(
        attacker
            .command("sh")
            .args(["-c", script, "sh"])
            .args([&theirs, &moved, &mine]),
        PSQL_LIMIT,
    );
    assert!(out.success(), "{out}");
    let out = sandbox.run(&["discard", first.to_str().unwrap()]);
    check_failed(&out, 1);
    assert!(
        second.join("data").is_dir(),
        "discard followed the swapped parent"
    );
    assert!(moved.join("c/data").is_dir());
    let dirs: Vec<String> = stopped_listed(&sandbox)
        .iter()
        .map(|e| e["dir"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        dirs,
        [second.to_str().unwrap()],
        "one directory, by its own name"
    );
    let out = sandbox.run(&["gc"]);
    assert!(
        out.stdout.contains("stale record of a kept cluster"),
        "{out}"
    );
    assert!(
        sandbox
            .run(&["discard", second.to_str().unwrap()])
            .success()
    );
    assert!(!second.exists());
    assert!(
        moved.join("c/data").is_dir(),
        "the moved cluster is the attacker's to keep"
    );
}
