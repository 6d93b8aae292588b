//! `pgtmp [start]`: the URL contract on the Unix socket, handing control back at once, the
//! caller's PG* variables, who owns and runs what, and `pgtmp initdb`.

use crate::common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

both_invokers!(
    socket_url_contract,
    shell_gets_control_back,
    caller_pg_environment_is_harmless,
    server_account_owns_everything,
    initdb_prepares_directories_that_start,
    callers_other_descriptors_are_not_held,
);

/// A descriptor pgtmp inherits beyond stdio (a make jobserver pipe, a script's `exec 9>...`)
/// is not kept open by the watchdog or the refill: `( pgtmp 9>&1 >file ) | cat` ends as soon
/// as pgtmp does, although the cluster runs on.
fn callers_other_descriptors_are_not_held(invoker: &Invoker) {
    let sandbox = Sandbox::with_pool(invoker, 1);
    let url_file = sandbox.path("url");
    let script = format!(
        r#"( "$PGTMP" -w {UNTIL_STOPPED} 9>&1 >'{}' ) | cat; echo done"#,
        url_file.display()
    );
    // A watchdog holding descriptor 9 would keep `cat` waiting for its whole -w.
    let out = run(&mut sandbox.shell(&script), PGTMP_LIMIT);
    assert!(out.success() && out.stdout.contains("done"), "{out}");
    let url = std::fs::read_to_string(&url_file).unwrap();
    assert_eq!(
        sandbox.psql(url.trim(), "select 1"),
        "1",
        "the cluster runs on"
    );
}

/// `url=$(pgtmp)`: one line, a socket URL for the invoker's superuser role owning `test`, in a
/// private directory holding data/ and postgres.log, and no TCP listener at all.
fn socket_url_contract(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let url = sandbox.start(&["-w", UNTIL_STOPPED]);
    let parsed = parse_socket_url(&url);
    assert_eq!(
        parsed.user, invoker.name,
        "the role is the login name: {url}"
    );
    assert!(
        parsed.encoded_host.starts_with("%2F") && !parsed.encoded_host.contains('/'),
        "the socket directory is percent-encoded: {url}"
    );
    let dir = parsed.dir;
    assert_eq!(
        dir.parent(),
        Some(sandbox.pgtmp_dir.as_path()),
        "the socket directory is the instance's own directory under PGTMP_DIR: {url}"
    );
    let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700, "{} has mode {mode:o}", dir.display());
    assert!(dir.join("data").is_dir(), "no data/ in {}", dir.display());
    assert!(
        dir.join("postgres.log").is_file(),
        "no postgres.log in {}",
        dir.display()
    );

    assert_eq!(sandbox.psql(&url, "select 1"), "1");
    if let Some(major) = test_major() {
        assert_eq!(
            sandbox.psql(
                &url,
                "select current_setting('server_version_num')::int / 10000"
            ),
            major.to_string(),
            "the server is PGTMP_TEST_BINDIR's PostgreSQL {major}"
        );
    }
    let who = sandbox.psql(
        &url,
        "select current_user, current_database(), \
                (select rolsuper from pg_roles where rolname = current_user), \
                (select pg_get_userbyid(datdba) from pg_database where datname = 'test')",
    );
    assert_eq!(
        who,
        format!("{0}|test|t|{0}", invoker.name),
        "user|database|superuser|owner of test"
    );

    assert_eq!(sandbox.psql(&url, "show listen_addresses"), "");
    let postmaster = postmaster_pid(&dir).expect("no postmaster.pid");
    assert_eq!(
        tcp_listeners(postmaster),
        Vec::<String>::new(),
        "the postmaster listens on TCP in socket mode"
    );

    // The role is the login name, so plain `psql -h DIR test` works too.
    let mut plain = invoker.command(client("psql"));
    plain
        .args(["-X", "-At", "-h"])
        .arg(&dir)
        .args(["-c", "select current_user", "test"]);
    let out = run(&mut plain, PSQL_LIMIT);
    assert!(out.success(), "psql -h DIR test:\n{out}");
    assert_eq!(out.stdout.trim(), invoker.name);
}

/// No process pgtmp leaves behind holds the caller's stdout or stderr: the command
/// substitution of a shell returns as soon as pgtmp exits.
///
/// The shell notes the time when pgtmp exits (inside the substitution) and when the
/// substitution returns; a process holding the output would keep it waiting for its -w.
fn shell_gets_control_back(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let exited = sandbox.path("exited");
    let script = format!(
        r#"url=$("$PGTMP" -w {UNTIL_STOPPED}; date +%s%N > '{}'); date +%s%N; echo "$url""#,
        exited.display()
    );
    let out = run(&mut sandbox.shell(&script), PGTMP_LIMIT);
    assert!(
        out.success() && out.stderr.is_empty(),
        "sh -c 'url=$(pgtmp); echo \"$url\"':\n{out}"
    );
    let nanos = |text: &str| {
        text.trim()
            .parse::<u64>()
            .expect("not a time from date +%s%N")
    };
    let (returned, url) = out.stdout.split_once('\n').expect("two lines");
    let exited = nanos(&std::fs::read_to_string(&exited).unwrap());
    let waited = Duration::from_nanos(nanos(returned).saturating_sub(exited));
    let bound = Duration::from_secs(1) + SLACK;
    assert!(
        waited < bound,
        "the shell got control back only {waited:?} after pgtmp exited (bound {bound:?})"
    );
    let url = url.trim();
    parse_socket_url(url);
    assert_eq!(sandbox.psql(url, "select 1"), "1");
    let stopped = sandbox.run(&["stop", url]);
    assert!(stopped.success(), "{stopped}");
}

/// Odd PG* variables exported by the caller: pgtmp still starts, and the printed URLs work in
/// psql with the variables still exported.
fn caller_pg_environment_is_harmless(invoker: &Invoker) {
    let odd = [
        ("PGPORT", "1"),
        ("PGUSER", "no_such_role"),
        ("PGHOST", "/nonexistent"),
        ("PGDATABASE", "no_such_database"),
        ("PGDATA", "/nonexistent/data"),
        ("PGPASSWORD", "not-the-password"),
    ];
    let sandbox = Sandbox::new(invoker);
    for args in [&["-w", UNTIL_STOPPED][..], &["-t", "-w", UNTIL_STOPPED][..]] {
        let out = run(sandbox.pgtmp().envs(odd).args(args), PGTMP_LIMIT);
        let url = check_started(&out, invoker);
        if args.contains(&"-t") {
            parse_tcp_url(&url);
        } else {
            parse_socket_url(&url);
        }
        let out = run(
            sandbox
                .psql_command(&url)
                .envs(odd)
                .args(["-c", "select current_user, current_database()"]),
            PSQL_LIMIT,
        );
        assert!(
            out.success(),
            "psql with the URL of pgtmp {args:?} and {odd:?} exported:\n{out}"
        );
        assert_eq!(out.stdout.trim(), format!("{}|test", invoker.name));
    }
}

/// Root runs the server as an unprivileged account (postgres), which owns every file in
/// PGTMP_DIR, and root's URL works; an ordinary account runs and owns everything itself.
fn server_account_owns_everything(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let url = sandbox.start(&["-w", UNTIL_STOPPED]);
    let dir = parse_socket_url(&url).dir;
    let (server, server_uid) = invoker.server_account();
    if invoker.is_root() {
        assert_ne!(server_uid, 0, "root's server account must not be root");
    }
    let postmaster = postmaster_pid(&dir).expect("no postmaster.pid");
    assert_eq!(
        proc_uid(postmaster),
        server_uid,
        "postgres of {invoker} should run as {server}"
    );
    let privileged: Vec<_> = sandbox
        .procs()
        .into_iter()
        .filter(|p| p.uid != server_uid)
        .collect();
    assert!(
        privileged.is_empty(),
        "processes left running for {invoker} that are not {server}: {privileged:?}"
    );
    let wrong = not_owned_by(&sandbox.pgtmp_dir, server_uid);
    assert!(
        wrong.is_empty(),
        "files in PGTMP_DIR not owned by {server} (uid {server_uid}): {wrong:?}"
    );
    assert_eq!(
        sandbox.psql(&url, "select current_user"),
        invoker.name,
        "the invoker's URL works"
    );
}

/// `--run-as USER` (root only): the server runs as that account, which owns the files.
#[test]
fn root_runs_the_server_as_run_as_account() {
    let me = Invoker::current();
    let Some(other) = Invoker::ordinary() else {
        return skip("--run-as only applies when pgtmp is invoked by root");
    };
    let sandbox = Sandbox::new(&me);
    let url = sandbox.start(&["--run-as", &other.name, "-w", UNTIL_STOPPED]);
    let parsed = parse_socket_url(&url);
    assert_eq!(parsed.user, me.name, "the role is still root's login name");
    let postmaster = postmaster_pid(&parsed.dir).expect("no postmaster.pid");
    assert_eq!(proc_uid(postmaster), other.uid, "postgres runs as {other}");
    let wrong = not_owned_by(&sandbox.pgtmp_dir, other.uid);
    assert!(wrong.is_empty(), "files not owned by {other}: {wrong:?}");
    assert_eq!(sandbox.psql(&url, "select current_user"), me.name);
}

/// `pgtmp initdb -d DIR` prepares DIR; `pgtmp -d MISSING` initializes and starts a new
/// directory. (`pgtmp initdb` without -d: tests/pgtmp_compat.rs.)
fn initdb_prepares_directories_that_start(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);

    let empty = sandbox.path("empty");
    fs::create_dir(&empty).unwrap();
    std::os::unix::fs::chown(&empty, Some(invoker.uid), Some(invoker.gid)).unwrap();
    let out = sandbox.run(&["initdb", "-d", empty.to_str().unwrap()]);
    assert_eq!(PathBuf::from(check_started(&out, invoker)), empty);
    assert!(empty.join("data/PG_VERSION").is_file());
    sandbox.assert_no_process(&empty, "pgtmp initdb -d starts nothing");
    let url = sandbox.start(&["-d", empty.to_str().unwrap(), "-w", UNTIL_STOPPED]);
    assert_eq!(parse_socket_url(&url).dir, empty);
    assert_eq!(sandbox.psql(&url, "select current_user"), invoker.name);

    let missing = sandbox.path("missing");
    let url = sandbox.start(&["-d", missing.to_str().unwrap(), "-w", UNTIL_STOPPED]);
    assert_eq!(parse_socket_url(&url).dir, missing);
    assert_eq!(sandbox.psql(&url, "select 1"), "1");
}
