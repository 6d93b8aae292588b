//! `pgtmp stop URL | -d DIR`: stop a cluster now and remove it (keep it with -k); only the
//! invoking account's clusters.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

both_invokers!(
    stop_by_socket_url,
    stop_by_tcp_url,
    stop_by_every_printed_form,
    stop_by_directory,
    stop_keeps_a_kept_directory,
    a_kept_directory_stays_kept_when_started_again,
    stop_by_tcp_url_of_a_cluster_elsewhere,
    a_cluster_the_previous_pgtmp_started_is_listed_and_stopped,
);

/// `pgtmp stop` stops at once: well before any idle timeout of these tests.
const AT_ONCE: Duration = Duration::from_secs(5);

/// Runs `pgtmp stop ARGS` and checks it succeeded quietly and promptly, and that the server
/// is gone when it returns.
fn stop(sandbox: &Sandbox, args: &[&str], dir: &Path) {
    let postmaster = postmaster_pid(dir).expect("no postmaster.pid");
    let mut full = vec!["stop"];
    full.extend_from_slice(args);
    let out = sandbox.run(&full);
    assert!(
        out.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "pgtmp stop should succeed quietly:\n{out}"
    );
    assert!(out.elapsed < AT_ONCE, "pgtmp stop took {:?}", out.elapsed);
    assert!(!alive(postmaster), "the server still runs after pgtmp stop");
    sandbox.assert_no_process(dir, "after pgtmp stop");
}

fn stop_by_socket_url(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let url = sandbox.start(&["-w", UNTIL_STOPPED]);
    let dir = parse_socket_url(&url).dir;
    stop(&sandbox, &[&url], &dir);
    assert!(!dir.exists(), "pgtmp stop URL left {}", dir.display());
}

fn stop_by_tcp_url(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let url = sandbox.start(&["-t", "-w", UNTIL_STOPPED]);
    let dir = sandbox.only_instance();
    stop(&sandbox, &[&url], &dir);
    assert!(!dir.exists(), "pgtmp stop TCP-URL left {}", dir.display());
}

/// Whatever form the start printed (`-F dsn`, `jdbc`, `json`, `env` lines are not one value),
/// `pgtmp stop` takes it.
fn stop_by_every_printed_form(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    for args in [
        &["-F", "dsn"][..],
        &["-t", "-F", "jdbc"],
        &["-t", "-F", "json"],
    ] {
        let mut full = vec!["-w", UNTIL_STOPPED];
        full.extend_from_slice(args);
        let printed = sandbox.start(&full);
        let dir = sandbox.only_instance();
        stop(&sandbox, &[&printed], &dir);
        assert!(
            !dir.exists(),
            "pgtmp stop {args:?} output left {}",
            dir.display()
        );
    }
}

fn stop_by_directory(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let url = sandbox.start(&["-w", UNTIL_STOPPED]);
    let dir = parse_socket_url(&url).dir;
    stop(&sandbox, &["-d", dir.to_str().unwrap()], &dir);
    assert!(!dir.exists(), "pgtmp stop -d left {}", dir.display());
}

fn stop_keeps_a_kept_directory(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let url = sandbox.start(&["-k", "-w", UNTIL_STOPPED]);
    let dir = parse_socket_url(&url).dir;
    stop(&sandbox, &[&url], &dir);
    assert!(
        dir.join("data/PG_VERSION").is_file(),
        "pgtmp stop removed the -k cluster's directory {}",
        dir.display()
    );
}

/// A TCP URL names no directory; a cluster started with -d outside PGTMP_DIR is still found
/// by it, and its registration in PGTMP_DIR goes with it.
fn stop_by_tcp_url_of_a_cluster_elsewhere(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let dir = sandbox.path("elsewhere");
    let url = sandbox.start(&["-t", "-w", UNTIL_STOPPED, "-d", dir.to_str().unwrap()]);
    assert!(
        dir.join("data/PG_VERSION").is_file(),
        "-d did not use {}",
        dir.display()
    );
    stop(&sandbox, &[&url], &dir);
    assert!(!dir.exists(), "pgtmp stop TCP-URL left {}", dir.display());
    assert!(
        sandbox.instance_dirs().is_empty(),
        "left in PGTMP_DIR: {:?}",
        sandbox.instance_dirs()
    );
}

/// Root's clusters cannot be stopped by the ordinary account, and the ordinary account's
/// clusters not by root: pgtmp stop fails cleanly and the cluster keeps running.
#[test]
fn only_the_owner_can_stop_a_cluster() {
    let root = Invoker::current();
    let Some(user) = Invoker::ordinary() else {
        return skip("needs root to run clusters of two accounts");
    };
    let root_box = Sandbox::new(&root);
    let user_box = Sandbox::new(&user);
    let root_socket = root_box.start(&["-w", UNTIL_STOPPED]);
    let root_tcp = root_box.start(&["-t", "-w", UNTIL_STOPPED]);
    let user_socket = user_box.start(&["-w", UNTIL_STOPPED]);
    let user_tcp = user_box.start(&["-t", "-w", UNTIL_STOPPED]);
    let dir_of = |url: &str| -> PathBuf { parse_socket_url(url).dir };

    let attempts: [(&Sandbox, Vec<String>, &Sandbox, &str); 6] = [
        (
            &user_box,
            vec![root_socket.clone()],
            &root_box,
            &root_socket,
        ),
        (&user_box, vec![root_tcp.clone()], &root_box, &root_tcp),
        (
            &user_box,
            vec!["-d".into(), dir_of(&root_socket).display().to_string()],
            &root_box,
            &root_socket,
        ),
        (
            &root_box,
            vec![user_socket.clone()],
            &user_box,
            &user_socket,
        ),
        (&root_box, vec![user_tcp.clone()], &user_box, &user_tcp),
        (
            &root_box,
            vec!["-d".into(), dir_of(&user_socket).display().to_string()],
            &user_box,
            &user_socket,
        ),
    ];
    let mut misleading = Vec::new();
    for (stopper, args, owner, url) in attempts {
        let mut full = vec!["stop"];
        full.extend(args.iter().map(String::as_str));
        let out = stopper.run(&full);
        let line = check_failed(&out, 1);
        assert_eq!(
            owner.psql(url, "select 1"),
            "1",
            "{}'s cluster after {} tried pgtmp {full:?}",
            owner.invoker,
            stopper.invoker
        );
        // It runs, so the error must not send the user away saying it has stopped.
        if line.contains("stopped already") || line.contains("never existed") {
            misleading.push(format!(
                "{} ran pgtmp {full:?} on {}'s running cluster: {line}",
                stopper.invoker, owner.invoker
            ));
        }
    }
    assert!(
        misleading.is_empty(),
        "refused, but the error misstates why:\n{}",
        misleading.join("\n")
    );
}

/// A directory started once with -k is kept whenever it stops, also when it is started again
/// without -k: by `pgtmp stop` and at the idle timeout.
fn a_kept_directory_stays_kept_when_started_again(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let dir = sandbox.path("kept");
    let dir_arg = dir.to_str().unwrap();
    let url = sandbox.start(&["-k", "-d", dir_arg, "-w", UNTIL_STOPPED]);
    sandbox.psql(
        &url,
        "create table survivor (x int); insert into survivor values (42)",
    );
    stop(&sandbox, &["-d", dir_arg], &dir);
    assert!(
        dir.join("data/PG_VERSION").is_file(),
        "-k: {} removed",
        dir.display()
    );

    let url = sandbox.start(&["-d", dir_arg, "-w", UNTIL_STOPPED]);
    assert_eq!(sandbox.psql(&url, "select x from survivor"), "42");
    stop(&sandbox, &["-d", dir_arg], &dir);
    assert!(
        dir.join("data/PG_VERSION").is_file(),
        "pgtmp stop removed the kept directory {} started again without -k",
        dir.display()
    );

    let url = sandbox.start(&["-d", dir_arg, "-w", "1"]);
    let postmaster = postmaster_pid(&dir).expect("no postmaster.pid");
    assert_eq!(sandbox.psql(&url, "select x from survivor"), "42");
    assert!(
        wait_until(Duration::from_secs(30), || !alive(postmaster)),
        "the cluster did not stop at its idle timeout"
    );
    sandbox.assert_no_process(&dir, "after the idle timeout");
    assert!(
        dir.join("data/PG_VERSION").is_file(),
        "the idle timeout removed the kept directory {} started again without -k",
        dir.display()
    );
    let url = sandbox.start(&["-d", dir_arg, "-w", UNTIL_STOPPED]);
    assert_eq!(sandbox.psql(&url, "select x from survivor"), "42");
}

/// A cluster whose state file is the key=value text of the pgtmp before the JSON one (as a
/// server started by the previous binary has it): still listed, and stopped.
fn a_cluster_the_previous_pgtmp_started_is_listed_and_stopped(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let url = sandbox.start(&["-w", UNTIL_STOPPED]);
    let dir = parse_socket_url(&url).dir;
    let path = dir.join("pgtmp.state");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let field = |key: &str| match &json[key] {
        serde_json::Value::Bool(b) => u8::from(*b).to_string(),
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(names) => names
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    let old: String = [
        "watchdog_pid",
        "postmaster_pid",
        "port",
        "tcp",
        "keep",
        "owner_uid",
        "user",
        "timeout",
        "watchdog_start",
        "postmaster_start",
        "shm_sysv_id",
        "shm_posix",
    ]
    .iter()
    .map(|key| format!("{key}={}\n", field(key)))
    .collect();
    // Rewritten in place: the file keeps its owner and mode.
    std::fs::write(&path, old).unwrap();
    let listed = sandbox.run(&["list"]);
    assert!(
        listed.success()
            && listed
                .stdout
                .contains(&*dir.file_name().unwrap().to_string_lossy()),
        "pgtmp list does not show it:\n{listed}"
    );
    stop(&sandbox, &[&url], &dir);
    assert!(!dir.exists(), "pgtmp stop left {}", dir.display());
}
