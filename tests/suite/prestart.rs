//! Pre-started servers: by default one while a series of starts goes on, and none for a lone
//! start or starts that could not use one; with PGTMP_PRESTART=N a fixed number. A start
//! claims one that is already running and gives it its own -w and -k; TCP ones hand out their
//! password once; unclaimed ones stop by themselves and leave nothing; bad settings are
//! refused.

use crate::common::*;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

both_invokers!(
    a_series_of_starts_is_served_by_servers_started_for_it,
    starts_that_cannot_claim_one_start_no_series,
    a_start_claims_a_waiting_server_with_its_own_timeout,
    a_claimed_server_honours_keep,
    tcp_waiting_servers_hand_out_their_password_once,
    pre_started_servers_take_the_prepared_password_of_their_entry,
    unclaimed_servers_stop_after_their_timeout,
    prestart_settings_are_validated,
);

/// Pool entries kept in these tests.
const POOL: usize = 1;

fn prestart_cmd(sandbox: &Sandbox, count: usize, ttl: u64) -> Command {
    let mut cmd = sandbox.pgtmp();
    cmd.env("PGTMP_PRESTART", count.to_string())
        .env("PGTMP_PRESTART_TIMEOUT", ttl.to_string());
    cmd
}

/// The default: no PGTMP_PRESTART (the sandbox sets 0), servers and the series window of
/// `ttl` seconds.
fn series_cmd(sandbox: &Sandbox, ttl: u64) -> Command {
    let mut cmd = sandbox.pgtmp();
    cmd.env_remove("PGTMP_PRESTART")
        .env("PGTMP_PRESTART_TIMEOUT", ttl.to_string());
    cmd
}

/// Names of the waiting servers of `mode` (socket or tcp).
fn waiting(sandbox: &Sandbox, mode: &str) -> Vec<String> {
    let prefix = format!("waiting.{mode}.");
    sandbox
        .pool_entries(&prefix)
        .iter()
        .filter_map(|path| {
            let name = path.file_name()?.to_string_lossy();
            Some(name.strip_prefix(&prefix)?.to_string())
        })
        .collect()
}

/// Starts once to make the template, then once more so that `count` servers get pre-started;
/// returns the URLs of both starts and the names of the waiting servers.
fn prepare(sandbox: &Sandbox, count: usize, ttl: u64, args: &[&str]) -> Vec<String> {
    let first = check_started(
        &run(prestart_cmd(sandbox, count, ttl).args(args), PGTMP_LIMIT),
        &sandbox.invoker,
    );
    sandbox.wait_for_full_pool(POOL, Duration::from_secs(60));
    let second = check_started(
        &run(prestart_cmd(sandbox, count, ttl).args(args), PGTMP_LIMIT),
        &sandbox.invoker,
    );
    let mode = if args.contains(&"-t") {
        "tcp"
    } else {
        "socket"
    };
    let mut names = Vec::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            names = waiting(sandbox, mode);
            names.len() >= count
        }),
        "{count} {mode} servers were not pre-started: {names:?}"
    );
    for url in [&first, &second] {
        sandbox.run(&["stop", url]);
    }
    names
}

/// A traced start; returns the URL and whether it claimed a running server.
fn claim(sandbox: &Sandbox, args: &[&str]) -> (String, bool) {
    let out = run(
        prestart_cmd(sandbox, 1, 600)
            .env("PGTMP_TRACE", "1")
            .args(args),
        PGTMP_LIMIT,
    );
    assert!(out.success(), "start failed:\n{out}");
    let claimed = out.stderr.contains("pgtmp: trace: claim-running");
    (out.stdout.trim_end().to_string(), claimed)
}

fn a_series_of_starts_is_served_by_servers_started_for_it(invoker: &Invoker) {
    let sandbox = Sandbox::with_pool(invoker, POOL);
    let ttl = 5;
    let start = |args: &[&str]| {
        let out = run(
            series_cmd(&sandbox, ttl).env("PGTMP_TRACE", "1").args(args),
            PGTMP_LIMIT,
        );
        assert!(out.success(), "start failed:\n{out}");
        let claimed = out.stderr.contains("pgtmp: trace: claim-running");
        (out.stdout.trim_end().to_string(), claimed)
    };
    // The first start makes the template; a lone start pre-starts nothing.
    let (first, _) = start(&["-w", UNTIL_STOPPED]);
    sandbox.wait_for_full_pool(POOL, Duration::from_secs(60));
    assert!(
        waiting(&sandbox, "socket").is_empty(),
        "a lone start pre-started a server"
    );
    // The next one, within the window, continues the series: one server waits for a third.
    let (second, claimed) = start(&["-w", UNTIL_STOPPED]);
    assert!(!claimed, "nothing was waiting for the second start");
    let mut names = Vec::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            names = waiting(&sandbox, "socket");
            !names.is_empty()
        }),
        "no server was pre-started for the series"
    );
    assert_eq!(
        names.len(),
        1,
        "a series keeps one server waiting: {names:?}"
    );
    let (third, claimed) = start(&["-w", UNTIL_STOPPED]);
    assert!(
        claimed,
        "the third start of the series did not claim the waiting server"
    );
    let dir = parse_socket_url(&third).dir;
    assert_eq!(dir.file_name().unwrap().to_string_lossy(), names[0]);
    assert_eq!(sandbox.psql(&third, "select current_database()"), "test");
    for url in [&first, &second, &third] {
        assert!(sandbox.run(&["stop", url]).success());
    }
    // Once the series ends, the server started after the third start stops by itself.
    assert!(
        wait_until(Duration::from_secs(60), || !waiting(&sandbox, "socket")
            .is_empty()),
        "the third start pre-started no server"
    );
    let replacement = sandbox.pgtmp_dir.join(&waiting(&sandbox, "socket")[0]);
    assert!(
        wait_until(Duration::from_secs(ttl) + SLACK * 4, || {
            waiting(&sandbox, "socket").is_empty() && !replacement.exists()
        }),
        "the series' server outlived its {ttl} s: {:?}",
        sandbox.instance_dirs()
    );
    sandbox.assert_no_process(&replacement, "after the series ended");
}

/// Starts that could not use a pre-started server (-o here), and any start with
/// PGTMP_PRESTART=0, never pre-start one, however close together they come.
fn starts_that_cannot_claim_one_start_no_series(invoker: &Invoker) {
    let sandbox = Sandbox::with_pool(invoker, POOL);
    let plain = |cmd: &mut Command| check_started(&run(cmd, PGTMP_LIMIT), &sandbox.invoker);
    let first = plain(series_cmd(&sandbox, 60).args(["-w", UNTIL_STOPPED]));
    sandbox.run(&["stop", &first]);
    sandbox.wait_for_full_pool(POOL, Duration::from_secs(60));
    let options = ["-o", "-c work_mem=8MB", "-w", UNTIL_STOPPED];
    // Each start finds a full pool, so a pre-start would find an entry to take: it takes it
    // at once, long before the refill (a copy) that follows it has filled the pool again.
    let mut urls = Vec::new();
    for i in 0..4 {
        urls.push(if i < 2 {
            plain(series_cmd(&sandbox, 60).args(options))
        } else {
            plain(sandbox.pgtmp().args(["-w", UNTIL_STOPPED]))
        });
        sandbox.wait_for_full_pool(POOL, Duration::from_secs(60));
        // Checked after each start: a plain start would claim a server that waits.
        assert!(
            waiting(&sandbox, "socket").is_empty(),
            "start {i} pre-started a server"
        );
    }
    assert_eq!(
        sandbox.instance_dirs().len(),
        urls.len(),
        "more clusters than starts: {:?}",
        sandbox.instance_dirs()
    );
    for url in &urls {
        sandbox.run(&["stop", url]);
    }
}

fn a_start_claims_a_waiting_server_with_its_own_timeout(invoker: &Invoker) {
    let sandbox = Sandbox::with_pool(invoker, POOL);
    let names = prepare(&sandbox, 1, 600, &["-w", UNTIL_STOPPED]);
    let (url, claimed) = claim(&sandbox, &["-w", "2"]);
    assert!(claimed, "the start did not claim the waiting server");
    let dir = parse_socket_url(&url).dir;
    assert_eq!(
        dir.file_name().unwrap().to_string_lossy(),
        names[0],
        "the URL is not the waiting server's"
    );
    assert_eq!(sandbox.psql(&url, "select current_database()"), "test");
    assert_eq!(
        read_state(&dir).unwrap()["timeout"],
        "2",
        "the claim's -w is recorded"
    );
    // Its own -w 2 applies: gone soon after the last client left.
    let gone = time_until(Duration::from_secs(2) + SLACK * 2, || !dir.exists());
    assert!(gone.is_some(), "the claimed server did not stop after -w 2");
    sandbox.assert_no_process(&dir, "after the claimed server's timeout");
}

fn a_claimed_server_honours_keep(invoker: &Invoker) {
    let sandbox = Sandbox::with_pool(invoker, POOL);
    prepare(&sandbox, 1, 600, &[]);
    let (url, claimed) = claim(&sandbox, &["-k", "-w", UNTIL_STOPPED]);
    assert!(claimed, "the start did not claim the waiting server");
    sandbox.psql(
        &url,
        "create table kept (x int); insert into kept values (42)",
    );
    let dir = parse_socket_url(&url).dir;
    let out = sandbox.run(&["stop", &url]);
    assert!(out.success(), "{out}");
    assert!(
        dir.join("data/PG_VERSION").is_file(),
        "-k did not keep the directory"
    );
    assert!(!dir.join("claim").exists() && !dir.join("password").exists());
    let again = sandbox.start(&["-d", dir.to_str().unwrap(), "-w", UNTIL_STOPPED]);
    assert_eq!(sandbox.psql(&again, "select x from kept"), "42");
    sandbox.run(&["stop", &again]);
}

fn tcp_waiting_servers_hand_out_their_password_once(invoker: &Invoker) {
    let sandbox = Sandbox::with_pool(invoker, POOL);
    let names = prepare(&sandbox, 1, 600, &["-t"]);
    let dir: PathBuf = sandbox.pgtmp_dir.join(&names[0]);
    assert!(
        dir.join("password").is_file(),
        "a waiting TCP server keeps its password"
    );
    let (url, claimed) = claim(&sandbox, &["-t", "-w", UNTIL_STOPPED]);
    assert!(claimed, "the start did not claim the waiting TCP server");
    assert!(
        !dir.join("password").exists(),
        "the password file outlived the claim"
    );
    let tcp = parse_tcp_url(&url);
    assert!(tcp.password.len() >= 20, "{url}");
    assert_eq!(sandbox.psql(&url, "select 1"), "1");
    let without = format!("postgresql://{}@127.0.0.1:{}/test", tcp.user, tcp.port);
    let out = run(
        sandbox
            .psql_command(&without)
            .env("PGCONNECT_TIMEOUT", "5")
            .arg("-w")
            .args(["-c", "select 1"]),
        PSQL_LIMIT,
    );
    assert!(!out.success(), "connected without the password:\n{out}");
    // A socket start never gets a TCP server.
    let (socket_url, claimed) = claim(&sandbox, &["-w", UNTIL_STOPPED]);
    assert!(!claimed && socket_url.contains("host=%2F"), "{socket_url}");
}

/// Pool entries prepared for TCP (see tcp::) serve pre-started servers too: a waiting TCP
/// server's password is its entry's, and neither mode leaves the entry's file behind.
fn pre_started_servers_take_the_prepared_password_of_their_entry(invoker: &Invoker) {
    let sandbox = Sandbox::with_pool(invoker, 3);
    let first = sandbox.start(&["-t", "-w", UNTIL_STOPPED]);
    sandbox.wait_for_full_pool(3, Duration::from_secs(60));
    let prepared: Vec<String> = sandbox
        .pool_entries("ready.")
        .iter()
        .map(|e| fs::read_to_string(e.join("tcp.password")).expect("no password prepared"))
        .collect();
    for (args, mode) in [
        (&["-t", "-w", UNTIL_STOPPED][..], "tcp"),
        (&["-w", UNTIL_STOPPED][..], "socket"),
    ] {
        // Every entry prepared, so that the server pre-started comes from one.
        sandbox.wait_for_full_pool(3, Duration::from_secs(60));
        let url = check_started(
            &run(prestart_cmd(&sandbox, 1, 600).args(args), PGTMP_LIMIT),
            &sandbox.invoker,
        );
        let mut names = Vec::new();
        assert!(
            wait_until(Duration::from_secs(60), || {
                names = waiting(&sandbox, mode);
                !names.is_empty()
            }),
            "no {mode} server was pre-started"
        );
        let dir = sandbox.pgtmp_dir.join(&names[0]);
        assert!(
            !dir.join("tcp.password").exists(),
            "{mode}: {}",
            dir.display()
        );
        if mode == "tcp" {
            let password = fs::read_to_string(dir.join("password")).unwrap();
            assert!(
                prepared.contains(&password),
                "the waiting server's is not its entry's"
            );
        } else {
            assert!(!dir.join("password").exists(), "{}", dir.display());
        }
        sandbox.run(&["stop", &url]);
    }
    sandbox.run(&["stop", &first]);
}

fn unclaimed_servers_stop_after_their_timeout(invoker: &Invoker) {
    let sandbox = Sandbox::with_pool(invoker, POOL);
    // Long enough for the first of the two to still wait when the second, copied from the
    // template on a loaded machine, joins it.
    let ttl = 10;
    let names = prepare(&sandbox, 2, ttl, &["-w", UNTIL_STOPPED]);
    let dirs: Vec<PathBuf> = names.iter().map(|n| sandbox.pgtmp_dir.join(n)).collect();
    assert!(
        wait_until(Duration::from_secs(ttl) + SLACK * 4, || {
            waiting(&sandbox, "socket").is_empty() && dirs.iter().all(|d| !d.exists())
        }),
        "unclaimed servers outlived PGTMP_PRESTART_TIMEOUT={ttl}: {:?}",
        sandbox.instance_dirs()
    );
    for dir in &dirs {
        sandbox.assert_no_process(dir, "after the pre-start timeout");
    }
}

fn prestart_settings_are_validated(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    for (var, value) in [
        ("PGTMP_PRESTART", "lots"),
        ("PGTMP_PRESTART", "100"),
        ("PGTMP_PRESTART_TIMEOUT", "0"),
        ("PGTMP_PRESTART_TIMEOUT", "soon"),
    ] {
        let out = run(sandbox.pgtmp().env(var, value), PGTMP_LIMIT);
        let line = check_failed(&out, 2);
        assert!(line.contains(var), "{line}");
        sandbox.assert_nothing_left(&format!("{var}={value}"));
    }
}
