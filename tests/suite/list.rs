//! `pgtmp list`, `pgtmp stop --all` and `pgtmp doctor`: seeing and stopping what runs, and
//! explaining the set-up without changing anything.

use crate::common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

both_invokers!(
    list_shows_running_clusters,
    list_tolerates_clusters_in_odd_states,
    stop_all_stops_everything,
    doctor_explains_and_changes_nothing,
    doctor_fails_when_pgtmp_cannot_work,
    bad_variables_stop_starts_only,
);

fn list_json(sandbox: &Sandbox) -> Vec<serde_json::Value> {
    let out = sandbox.run(&["list", "--json"]);
    assert!(out.success() && out.stderr.is_empty(), "{out}");
    match serde_json::from_str(&out.stdout) {
        Ok(serde_json::Value::Array(entries)) => entries,
        other => panic!("pgtmp list --json printed no array ({other:?}):\n{out}"),
    }
}

fn list_shows_running_clusters(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let out = sandbox.run(&["list"]);
    assert!(out.success() && out.stdout.is_empty(), "{out}");
    assert!(!sandbox.pgtmp_dir.exists(), "pgtmp list created PGTMP_DIR");

    let socket_url = sandbox.start(&["-w", UNTIL_STOPPED]);
    let tcp_url = sandbox.start(&["-t", "-w", UNTIL_STOPPED]);
    let mut session = sandbox.psql_session(&socket_url);
    assert_eq!(session.query_line("select 1;"), "1");

    let entries = list_json(&sandbox);
    assert_eq!(entries.len(), 2, "{entries:?}");
    let socket = entries
        .iter()
        .find(|e| e["url"] == socket_url.as_str())
        .unwrap_or_else(|| panic!("{socket_url} not listed: {entries:?}"));
    let dir = parse_socket_url(&socket_url).dir;
    assert_eq!(socket["connections"], 1, "{socket}");
    assert_eq!(
        socket["server_pid"].as_i64().unwrap() as i32,
        postmaster_pid(&dir).unwrap()
    );
    // The same version as the start's json prints ("15.18").
    let version =
        session.query_line("select split_part(current_setting('server_version'), ' ', 1);");
    assert_eq!(socket["version"], version.as_str(), "{socket}");
    assert!(
        socket["size_bytes"].as_u64().unwrap() > 1_000_000,
        "{socket}"
    );
    assert!(socket["age_seconds"].is_u64(), "{socket}");
    let tcp = entries.iter().find(|e| e["tcp"] == true).unwrap();
    let port = parse_tcp_url(&tcp_url).port;
    assert_eq!(tcp["port"], port);
    assert_eq!(tcp["connections"], 0, "{tcp}");
    let listed = tcp["url"].as_str().unwrap();
    assert!(
        !listed.contains(&parse_tcp_url(&tcp_url).password),
        "{listed}"
    );

    // The table: a header and one row per cluster; its URLs are what `pgtmp stop` takes. A
    // blank line, and what it all takes on disk.
    let out = sandbox.run(&["ls"]);
    assert!(out.success() && out.stderr.is_empty(), "{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert_eq!(lines[3], "", "{out}");
    assert!(
        lines[4].starts_with("disk: running ") && lines[4].contains("(2), pool "),
        "{out}"
    );
    assert!(
        lines[0].starts_with("URL") && lines[0].contains("CONNS"),
        "{out}"
    );
    assert!(out.stdout.contains(&socket_url), "{out}");
    // Listing is not a client: it keeps nothing alive and counts nobody. Its own session's
    // backend may take a moment to exit after list has disconnected.
    let clients = "select count(*) from pg_stat_activity where backend_type = 'client backend' and application_name <> 'pgtmp watchdog';";
    assert!(
        wait_until(SLACK, || session.query_line(clients) == "1"),
        "a session of `pgtmp list` stayed: {}",
        session.query_line(clients)
    );
    session.close();
    let out = sandbox.run(&["stop", listed]);
    assert!(out.success(), "pgtmp stop with the listed URL:\n{out}");
    let entries = list_json(&sandbox);
    assert_eq!(entries.len(), 1, "{entries:?}");
    // With no client, the idle time is counted from when the last one left.
    assert!(
        wait_until(Duration::from_secs(5), || {
            list_json(&sandbox)[0]["idle_seconds"].is_u64()
        }),
        "no idle time once the client left"
    );
}

/// A cluster being prepared (no state yet) or with a damaged state file, or a dead watchdog:
/// list skips it instead of failing.
fn list_tolerates_clusters_in_odd_states(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let url = sandbox.start(&["-w", UNTIL_STOPPED]);
    let running = parse_socket_url(&url).dir;
    let (_, server_uid) = invoker.server_account();
    for (name, state) in [
        ("aaaaaaaa", None),
        ("bbbbbbbb", Some("garbage\n")),
        (
            "cccccccc",
            Some(
                "watchdog_pid=999999\npostmaster_pid=999998\nport=5432\ntcp=0\nkeep=0\nowner_uid=0\nuser=x\ntimeout=60\n",
            ),
        ),
    ] {
        let dir = sandbox.pgtmp_dir.join(name);
        fs::create_dir(&dir).unwrap();
        if let Some(state) = state {
            fs::write(dir.join("pgtmp.state"), state).unwrap();
            // The server account's, as a watchdog writes it: list reads no other account's.
            std::os::unix::fs::chown(dir.join("pgtmp.state"), Some(server_uid), None).unwrap();
        }
        std::os::unix::fs::chown(&dir, Some(server_uid), None).unwrap();
    }
    let entries = list_json(&sandbox);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(Path::new(entries[0]["dir"].as_str().unwrap()), running);
}

fn stop_all_stops_everything(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let out = sandbox.run(&["stop", "--all"]);
    assert!(
        out.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "{out}"
    );
    let elsewhere = sandbox.path("elsewhere");
    let urls = [
        sandbox.start(&["-w", UNTIL_STOPPED]),
        sandbox.start(&["-t", "-w", "0"]),
        sandbox.start(&["-k", "-w", UNTIL_STOPPED, "-d", elsewhere.to_str().unwrap()]),
    ];
    assert_eq!(list_json(&sandbox).len(), 3);
    let pids: Vec<i32> = sandbox
        .instance_dirs()
        .iter()
        .chain([&elsewhere])
        .filter_map(|dir| postmaster_pid(dir))
        .collect();
    assert_eq!(pids.len(), 3, "{urls:?}");
    let out = sandbox.run(&["stop", "--all"]);
    assert!(
        out.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "{out}"
    );
    for pid in pids {
        assert!(!alive(pid), "server {pid} still runs after stop --all");
    }
    assert!(list_json(&sandbox).is_empty());
    assert!(
        elsewhere.join("data/PG_VERSION").is_file(),
        "stop --all removed a -k directory"
    );
    let left: Vec<_> = sandbox
        .instance_dirs()
        .into_iter()
        .filter(|d| {
            // Registrations, and the record of the kept -d cluster (for `list --all`).
            let name = d.file_name().unwrap().to_string_lossy().into_owned();
            !name.starts_with("elsewhere.") && !name.starts_with("kept.")
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let out = sandbox.run(&["stop", "--all", &urls[0]]);
    check_failed(&out, 2);
}

fn doctor_explains_and_changes_nothing(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let out = sandbox.run(&["doctor"]);
    assert!(out.success(), "{out}");
    let text = &out.stdout;
    assert!(text.contains("pass  installation: "), "{text}");
    match test_bindir() {
        // Named by PGTMP_BINDIR: not among the installations discovery lists.
        Some(dir) => assert!(
            text.contains(&format!("pass  installation: {}", dir.display()))
                && text.contains("named by --bindir/PGTMP_BINDIR"),
            "{text}"
        ),
        None => assert!(text.contains("<- used"), "{text}"),
    }
    assert!(
        text.contains(&format!("PGTMP_DIR {}", sandbox.pgtmp_dir.display())),
        "{text}"
    );
    assert!(text.contains("fit the limit of"), "{text}");
    let (server, _) = invoker.server_account();
    if invoker.is_root() {
        assert!(
            text.contains(&format!("running as root: the server runs as {server}")),
            "{text}"
        );
    } else {
        assert!(
            text.contains(&format!("running as {}", invoker.name)),
            "{text}"
        );
    }
    assert!(!text.contains("FAIL"), "{text}");
    assert!(!sandbox.pgtmp_dir.exists(), "doctor created PGTMP_DIR");
    sandbox.assert_no_process(&sandbox.root, "after pgtmp doctor");
    // With a pool whose refill failed, doctor says so.
    let _url = sandbox.start(&["-w", UNTIL_STOPPED]);
    let pools = sandbox.pgtmp_dir.join("pool");
    fs::create_dir_all(pools.join("0123456789abcdef")).unwrap();
    fs::write(
        pools.join("0123456789abcdef/refill.error"),
        "initdb failed: disk full\n",
    )
    .unwrap();
    let out = sandbox.run(&["doctor"]);
    assert!(
        out.success(),
        "a failed refill does not stop pgtmp from working:\n{out}"
    );
    assert!(
        out.stdout.contains("warn  pool 0123456789abcdef") && out.stdout.contains("disk full"),
        "{out}"
    );
}

fn doctor_fails_when_pgtmp_cannot_work(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let out = sandbox.run(&["doctor", "--bindir", "/nonexistent/bin"]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(
        out.stdout
            .contains("FAIL  --bindir/PGTMP_BINDIR /nonexistent/bin"),
        "{out}"
    );
    assert!(out.stdout.contains("fix: "), "{out}");
    let long = format!("/tmp/{}", "x".repeat(100));
    let out = run(
        sandbox.pgtmp().env("PGTMP_DIR", &long).arg("doctor"),
        PGTMP_LIMIT,
    );
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(
        out.stdout.contains("FAIL") && out.stdout.contains("too long"),
        "{out}"
    );
    assert!(!Path::new(&long).exists());
    // A PGTMP_DIR below a directory the server account can neither enter nor write: a start
    // would fail, so doctor must too.
    let closed = sandbox.path("closed");
    fs::create_dir(&closed).unwrap();
    fs::set_permissions(&closed, fs::Permissions::from_mode(0o500)).unwrap();
    let out = run(
        sandbox
            .pgtmp()
            .env("PGTMP_DIR", closed.join("pg"))
            .arg("doctor"),
        PGTMP_LIMIT,
    );
    assert_eq!(out.code(), Some(1), "{out}");
    let (server, _) = invoker.server_account();
    assert!(
        out.stdout
            .contains(&format!("FAIL  PGTMP_DIR {}", closed.join("pg").display()))
            && out
                .stdout
                .contains(&format!("a directory {server} can reach and write")),
        "{out}"
    );
}

/// A start option's PGTMP_* variable with an invalid value: a start refuses it naming the
/// variable; commands that start nothing still work, and doctor reports it as a failure.
fn bad_variables_stop_starts_only(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let out = run(sandbox.pgtmp().env("PGTMP_TIMEOUT", "soon"), PGTMP_LIMIT);
    let line = check_failed(&out, 2);
    assert!(
        line.starts_with("pgtmp: error: PGTMP_TIMEOUT: ") && line.contains("unset PGTMP_TIMEOUT"),
        "{line}"
    );
    sandbox.assert_nothing_left("a start with PGTMP_TIMEOUT=soon");
    // The command line still wins over the variable.
    let url = check_started(
        &run(
            sandbox
                .pgtmp()
                .env("PGTMP_TIMEOUT", "soon")
                .args(["-w", UNTIL_STOPPED]),
            PGTMP_LIMIT,
        ),
        invoker,
    );
    let out = run(
        sandbox.pgtmp().env("PGTMP_FORMAT", "xml").arg("list"),
        PGTMP_LIMIT,
    );
    assert!(out.success() && out.stdout.contains(&url), "{out}");
    let out = run(
        sandbox
            .pgtmp()
            .env("PGTMP_FORMAT", "xml")
            .env("PGTMP_TIMEOUT", "soon")
            .arg("doctor"),
        PGTMP_LIMIT,
    );
    assert_eq!(out.code(), Some(1), "{out}");
    for variable in ["PGTMP_FORMAT", "PGTMP_TIMEOUT"] {
        assert!(
            out.stdout
                .contains(&format!("FAIL  {variable}: invalid value"))
                && out.stdout.contains(&format!("fix: unset {variable}")),
            "{out}"
        );
    }
    let out = sandbox.run(&["stop", &url]);
    assert!(out.success(), "{out}");
}
