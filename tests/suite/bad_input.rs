//! Bad input: one line on stderr starting with `pgtmp: error:`, exit 2 for usage errors and 1
//! for runtime failures, and nothing left behind (no instance directory, no process).

use crate::common::*;
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

both_invokers!(
    usage_errors,
    port_in_use,
    option_rejected_by_postgres,
    dir_naming_a_file,
    dir_naming_a_foreign_directory,
    unwritable_pgtmp_dir,
    missing_bindir,
    no_postgresql_found,
    pool_size_is_validated,
    options_that_move_the_server,
    run_as_from_the_environment_is_for_root,
    switch_variables_take_the_usual_spellings,
    paths_with_a_comma,
    url_that_cannot_be_printed,
    cache_days_is_validated,
    help_pages_and_examples,
    invalid_format_lists_the_values,
);

fn give_to(path: &Path, invoker: &Invoker) {
    std::os::unix::fs::chown(path, Some(invoker.uid), Some(invoker.gid)).unwrap();
}

/// Malformed command lines: exit 2, and the line names what was wrong.
fn usage_errors(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let cases: [(&[&str], &str); 7] = [
        (&["-w", "abc"], "abc"),
        (&["-w", "-5"], "-5"),
        // Too large: the error gives the range.
        (
            &["-w", "99999999999999999999"],
            "between 0 and 18446744073709551615",
        ),
        (&["-p", "0"], "0"),
        (&["-p", "70000"], "70000"),
        (&["--frobnicate"], "--frobnicate"),
        (&["stop"], "stop"),
    ];
    for (args, named) in cases {
        let out = sandbox.run(args);
        let line = check_failed(&out, 2);
        assert!(
            line.contains(named),
            "pgtmp {args:?}: the error should name {named:?}: {line}"
        );
        sandbox.assert_nothing_left(&format!("pgtmp {args:?}"));
    }
    // A privileged port, which the unprivileged server cannot listen on (unless the
    // administrator lowered the limit, as some container runtimes do).
    let lowest = fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|text| text.trim().parse::<u16>().ok())
        .unwrap_or(1024);
    if lowest > 80 {
        let out = sandbox.run(&["-p", "80", "-w", UNTIL_STOPPED]);
        let line = check_failed(&out, 2);
        assert!(
            line.contains("privileged") && line.contains(&format!("{lowest} or above")),
            "pgtmp -p 80: {line}"
        );
        sandbox.assert_nothing_left("pgtmp -p 80");
    }
}

/// `-p PORT` on a port someone else listens on.
fn port_in_use(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port().to_string();
    let out = sandbox.run(&["-p", &port, "-w", UNTIL_STOPPED]);
    let line = check_failed(&out, 1);
    assert!(
        line.contains(&port) && line.contains("in use"),
        "the error should say port {port} is in use: {line}"
    );
    sandbox.assert_nothing_left("pgtmp -p on a taken port");
}

/// `-o` with a setting postgres rejects: the error shows postgres' FATAL line.
fn option_rejected_by_postgres(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let out = sandbox.run(&["-o", "-c nonsense=1", "-w", UNTIL_STOPPED]);
    let line = check_failed(&out, 1);
    assert!(
        line.contains("FATAL") && line.contains("nonsense"),
        "the error should quote postgres' FATAL line about 'nonsense': {line}"
    );
    sandbox.assert_nothing_left("pgtmp -o '-c nonsense=1'");
}

/// `-d` naming a regular file, which stays untouched.
fn dir_naming_a_file(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let file = sandbox.path("a-file");
    fs::write(&file, "precious\n").unwrap();
    give_to(&file, invoker);
    let out = sandbox.run(&["-d", file.to_str().unwrap(), "-w", UNTIL_STOPPED]);
    let line = check_failed(&out, 1);
    assert!(
        line.contains(file.to_str().unwrap()),
        "name the path: {line}"
    );
    assert_eq!(fs::read_to_string(&file).unwrap(), "precious\n");
    sandbox.assert_nothing_left("pgtmp -d FILE");
}

/// `-d` naming a non-empty directory that is no cluster, which stays untouched.
fn dir_naming_a_foreign_directory(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let dir = sandbox.path("photos");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("holiday.jpg"), "precious\n").unwrap();
    give_to(&dir, invoker);
    give_to(&dir.join("holiday.jpg"), invoker);
    let mode = fs::metadata(&dir).unwrap().permissions().mode();
    let out = sandbox.run(&["-d", dir.to_str().unwrap(), "-w", UNTIL_STOPPED]);
    let line = check_failed(&out, 1);
    assert!(
        line.contains(dir.to_str().unwrap()),
        "name the path: {line}"
    );
    let entries: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["holiday.jpg"], "pgtmp changed {}", dir.display());
    assert_eq!(fs::metadata(&dir).unwrap().permissions().mode(), mode);
    sandbox.assert_nothing_left("pgtmp -d NON-EMPTY-DIR");
}

/// A PGTMP_DIR its (server) account cannot write.
fn unwritable_pgtmp_dir(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let (server, server_uid) = invoker.server_account();
    let read_only = sandbox.path("read-only");
    fs::create_dir(&read_only).unwrap();
    std::os::unix::fs::chown(&read_only, Some(server_uid), None).unwrap();
    fs::set_permissions(&read_only, fs::Permissions::from_mode(0o555)).unwrap();
    let out = run(
        sandbox
            .pgtmp()
            .env("PGTMP_DIR", &read_only)
            .args(["-w", UNTIL_STOPPED]),
        PGTMP_LIMIT,
    );
    let line = check_failed(&out, 1);
    assert!(
        line.contains("PGTMP_DIR") && line.contains(read_only.to_str().unwrap()),
        "the error should name PGTMP_DIR {} (not writable by {server}): {line}",
        read_only.display()
    );
    assert_eq!(fs::read_dir(&read_only).unwrap().count(), 0);
    sandbox.assert_nothing_left("pgtmp with an unwritable PGTMP_DIR");
}

/// `--bindir` (and PGTMP_BINDIR) naming a directory that does not exist.
fn missing_bindir(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let out = sandbox.run(&["--bindir", "/nonexistent/pg/bin", "-w", UNTIL_STOPPED]);
    let line = check_failed(&out, 1);
    assert!(
        line.contains("/nonexistent/pg/bin"),
        "name the path: {line}"
    );
    let out = run(
        sandbox
            .pgtmp()
            .env("PGTMP_BINDIR", "/nonexistent/pg/bin")
            .args(["-w", UNTIL_STOPPED]),
        PGTMP_LIMIT,
    );
    let line = check_failed(&out, 1);
    assert!(
        line.contains("/nonexistent/pg/bin"),
        "name the path: {line}"
    );
    sandbox.assert_nothing_left("pgtmp --bindir /nonexistent/pg/bin");
}

/// Hides every PostgreSQL installation in a private mount namespace (which needs root), then
/// runs pgtmp as the invoker there. PATH keeps out /usr/local/bin, whose initdb links into
/// /usr/lib/postgresql; /usr/bin/pg_config still names the now empty /usr/lib/postgresql/N/bin.
const HIDE_POSTGRESQL: &str = r#"
for d in /usr/lib/postgresql /usr/pgsql-* /usr/local/pgsql /opt/homebrew/opt /usr/local/opt \
         /Applications/Postgres.app; do
    if [ -d "$d" ]; then mount -t tmpfs -o mode=0755 tmpfs "$d" || exit 97; fi
done
if command -v initdb >/dev/null 2>&1; then
    echo "test setup: initdb is still on PATH at $(command -v initdb)" >&2
    exit 98
fi
exec "$@"
"#;

/// No PostgreSQL installation anywhere: exit 1, and the error says where pgtmp looked and how
/// to install PostgreSQL.
fn no_postgresql_found(invoker: &Invoker) {
    if !nix::unistd::Uid::current().is_root() {
        return skip("hiding the PostgreSQL installations needs a private mount namespace (root)");
    }
    let sandbox = Sandbox::new(invoker);
    let mut cmd = Invoker::current().command("unshare");
    sandbox.pgtmp_env(&mut cmd);
    // Discovery on this machine: the PGTMP_TEST_BINDIR under test would be used instead.
    cmd.env_remove("PGTMP_BINDIR");
    cmd.env("PATH", "/usr/bin:/bin").args([
        "--mount",
        "sh",
        "-c",
        HIDE_POSTGRESQL,
        "hide-postgresql",
    ]);
    if invoker.switched {
        cmd.arg("setpriv")
            .arg(format!("--reuid={}", invoker.uid))
            .arg(format!("--regid={}", invoker.gid))
            .arg("--clear-groups")
            .env("HOME", &invoker.home)
            .env("USER", &invoker.name)
            .env("LOGNAME", &invoker.name);
    }
    cmd.arg(invoker.bin()).args(["-w", UNTIL_STOPPED]);
    let out = run(&mut cmd, PGTMP_LIMIT);
    assert!(
        !matches!(out.code(), Some(97 | 98)),
        "could not hide the PostgreSQL installations:\n{out}"
    );
    assert_eq!(out.code(), Some(1), "{out}");
    for wanted in ["/usr/lib/postgresql", "apt", "dnf", "brew"] {
        assert!(
            out.stderr.contains(wanted),
            "the error should say where pgtmp looked and how to install PostgreSQL \
             (missing {wanted:?}):\n{out}"
        );
    }
    check_failed(&out, 1);
    sandbox.assert_nothing_left("pgtmp without PostgreSQL");
}

/// A malformed PGTMP_POOL_SIZE is refused by every start, also one that would not use the
/// pool (`-d`), before anything is made.
fn pool_size_is_validated(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let dir = sandbox.path("own-dir");
    let dir_arg = dir.to_string_lossy().into_owned();
    for value in ["lots", "65"] {
        for args in [&["-w", "5"][..], &["-w", "5", "-d", &dir_arg], &["initdb"]] {
            let out = run(
                sandbox.pgtmp().env("PGTMP_POOL_SIZE", value).args(args),
                PGTMP_LIMIT,
            );
            let line = check_failed(&out, 2);
            assert!(line.contains("PGTMP_POOL_SIZE"), "pgtmp {args:?}: {line}");
            sandbox.assert_nothing_left(&format!("PGTMP_POOL_SIZE={value} pgtmp {args:?}"));
            assert!(
                !dir.exists(),
                "PGTMP_POOL_SIZE={value} pgtmp {args:?} made {dir_arg}"
            );
        }
    }
}

/// `-o` settings that decide where the server listens or keeps its files would break the URL
/// (or listen on every interface): refused as usage errors, by start and run, before anything
/// is made; the error names the pgtmp option to use instead.
fn options_that_move_the_server(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let cases = [
        ("-c port=6000", "-p PORT"),
        ("-cport=6000", "-p PORT"),
        ("--PORT=6000", "-p PORT"),
        ("-c unix_socket_directories=/tmp", "-d DIR"),
        ("--unix-socket-directories=/tmp", "-d DIR"),
        ("-c listen_addresses=*", "-t"),
        ("-i", "-t"),
        ("-h 0.0.0.0", "-t"),
        ("-k /tmp", "-d DIR"),
        ("-D /tmp/elsewhere", "-d DIR"),
        ("-c hba_file=/etc/passwd", "-d DIR"),
    ];
    for (option, instead) in cases {
        for args in [
            &["-w", UNTIL_STOPPED, "-o", option][..],
            &["run", "-o", option, "--", "true"],
        ] {
            let out = sandbox.run(args);
            let line = check_failed(&out, 2);
            assert!(
                line.contains(option) && line.contains(instead),
                "pgtmp {args:?}: the error should quote the option and suggest {instead}: {line}"
            );
            sandbox.assert_nothing_left(&format!("pgtmp {args:?}"));
        }
    }
    let out = run(
        sandbox
            .pgtmp()
            .env("PGTMP_OPTIONS", "-c port=6000")
            .args(["-w", UNTIL_STOPPED]),
        PGTMP_LIMIT,
    );
    check_failed(&out, 2);
    sandbox.assert_nothing_left("PGTMP_OPTIONS='-c port=6000' pgtmp");
    // Other settings still work.
    let url = sandbox.start(&["-w", UNTIL_STOPPED, "-o", "-c work_mem=8MB"]);
    assert_eq!(sandbox.psql(&url, "show work_mem"), "8MB");
}

/// A uid without a passwd entry (as some containers run): initdb cannot run for it, so a start
/// says so up front and makes nothing, not even PGTMP_DIR.
#[test]
fn uid_without_a_passwd_entry() {
    let invoker = Invoker::current();
    if !invoker.is_root() {
        return cannot_run_here("only root can run pgtmp as a uid without a passwd entry");
    }
    let uid = (20000..30000)
        .find(|&uid| {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).is_ok_and(|u| u.is_none())
        })
        .expect("a free uid");
    let sandbox = Sandbox::new(&invoker);
    fs::set_permissions(&sandbox.root, fs::Permissions::from_mode(0o777)).unwrap();
    for args in [&["-w", UNTIL_STOPPED][..], &["initdb"]] {
        let mut cmd = sandbox.pgtmp();
        cmd.uid(uid).gid(uid).args(args);
        let out = run(&mut cmd, PGTMP_LIMIT);
        let line = check_failed(&out, 1);
        assert!(
            line.contains(&format!("uid {uid} has no entry")) && line.contains("useradd"),
            "{line}"
        );
        assert!(!sandbox.pgtmp_dir.exists(), "pgtmp {args:?} made PGTMP_DIR");
    }
}

/// Root makes a missing PGTMP_DIR (or ${TMPDIR}/pgtmp-root/postgres) and its parents, then finds that the
/// server account cannot use it: the start fails and removes every directory it made.
/// Only root makes directories the server account cannot use; as anyone else the directory is
/// either made and usable or not made at all.
#[test]
fn unusable_pgtmp_dir_made_by_root_is_removed() {
    let invoker = Invoker::current();
    if !invoker.is_root() {
        return cannot_run_here("only root makes a PGTMP_DIR its server account cannot use");
    }
    let sandbox = Sandbox::new(&invoker);
    let locked = sandbox.path("root-only");
    fs::create_dir(&locked).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o700)).unwrap();
    let pgtmp_dir = locked.join("x/sub");
    let by_pgtmp_dir = run(
        sandbox
            .pgtmp()
            .env("PGTMP_DIR", &pgtmp_dir)
            .args(["-w", UNTIL_STOPPED]),
        PGTMP_LIMIT,
    );
    let mut by_tmpdir = sandbox.pgtmp();
    by_tmpdir.env_remove("PGTMP_DIR").env("TMPDIR", &locked);
    let by_tmpdir = run(by_tmpdir.args(["-w", UNTIL_STOPPED]), PGTMP_LIMIT);
    for (out, named) in [
        (by_pgtmp_dir, pgtmp_dir.clone()),
        (
            by_tmpdir,
            locked.join("pgtmp-root").join(invoker.server_account().0),
        ),
    ] {
        let line = check_failed(&out, 1);
        assert!(
            line.contains("PGTMP_DIR") && line.contains(named.to_str().unwrap()),
            "the error should name PGTMP_DIR {}: {line}",
            named.display()
        );
        let left: Vec<_> = fs::read_dir(&locked)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "the failed start left {left:?}");
        sandbox.assert_nothing_left("pgtmp with a PGTMP_DIR the server cannot use");
    }
}

/// PGTMP_RUN_AS is for root (e.g. exported in a CI image): it picks root's server account and
/// is ignored for anyone else, whose server runs as themselves; a written --run-as naming
/// another account is still refused for them.
fn run_as_from_the_environment_is_for_root(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let (other, other_uid) = if invoker.is_root() {
        let user = Invoker::ordinary().expect("root has an ordinary account to run as");
        (user.name, user.uid)
    } else {
        ("nobody".to_string(), u32::MAX)
    };
    let out = run(
        sandbox
            .pgtmp()
            .env("PGTMP_RUN_AS", &other)
            .args(["-w", UNTIL_STOPPED]),
        PGTMP_LIMIT,
    );
    let url = check_started(&out, invoker);
    let postmaster = postmaster_pid(&parse_socket_url(&url).dir).expect("no postmaster.pid");
    let expected = if invoker.is_root() {
        other_uid
    } else {
        invoker.uid
    };
    assert_eq!(
        proc_uid(postmaster),
        expected,
        "PGTMP_RUN_AS={other} as {invoker}: the server runs as uid {expected}"
    );
    assert_eq!(sandbox.psql(&url, "select 1"), "1");
    if !invoker.is_root() {
        let out = sandbox.run(&["--run-as", &other, "-w", UNTIL_STOPPED]);
        let line = check_failed(&out, 2);
        assert!(line.contains("--run-as"), "{line}");
    }
}

/// PGTMP_TCP, PGTMP_KEEP and PGTMP_NO_CACHE take 1/0, yes/no, on/off, true/false (any case;
/// empty is off); anything else is a usage error that says what is accepted.
fn switch_variables_take_the_usual_spellings(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    for (value, on) in [
        ("1", true),
        ("0", false),
        ("yes", true),
        ("NO", false),
        ("on", true),
        ("off", false),
        ("true", true),
        ("False", false),
        ("", false),
    ] {
        let out = run(
            sandbox
                .pgtmp()
                .env("PGTMP_TCP", value)
                .env("PGTMP_KEEP", value)
                .env("PGTMP_NO_CACHE", value)
                .args(["-w", "0", "-F", "json"]),
            PGTMP_LIMIT,
        );
        let text = check_started(&out, invoker);
        let json: serde_json::Value = serde_json::from_str(&text).expect("not JSON");
        assert_eq!(
            json["host"] == "127.0.0.1",
            on,
            "PGTMP_TCP={value:?}: {text}"
        );
        assert_eq!(json["keep"], on, "PGTMP_KEEP={value:?}: {text}");
        let url = json["url"].as_str().unwrap();
        assert_eq!(sandbox.psql(url, "select 1"), "1");
        let stop = sandbox.run(&["stop", url]);
        assert!(stop.success(), "{stop}");
    }
    for name in ["PGTMP_TCP", "PGTMP_KEEP", "PGTMP_NO_CACHE"] {
        let out = run(
            sandbox
                .pgtmp()
                .env(name, "maybe")
                .args(["-w", UNTIL_STOPPED]),
            PGTMP_LIMIT,
        );
        let line = check_failed(&out, 2);
        assert!(
            line.contains("maybe") && line.contains("yes/no"),
            "{name}=maybe: the error should name the value and what is accepted: {line}"
        );
    }
}

/// libpq reads a comma in a URL's host as a list of hosts: a -d or PGTMP_DIR with one is
/// refused before anything is made (-d as a usage error; PGTMP_DIR like its other errors).
fn paths_with_a_comma(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let dir = sandbox.path("a,b");
    let out = sandbox.run(&["-d", dir.to_str().unwrap(), "-w", UNTIL_STOPPED]);
    let line = check_failed(&out, 2);
    assert!(line.contains("comma") && line.contains("a,b"), "{line}");
    assert!(!dir.exists(), "pgtmp -d {} made it", dir.display());
    sandbox.assert_nothing_left("pgtmp -d a,b");

    let state = sandbox.path("c,d");
    let out = run(
        sandbox
            .pgtmp()
            .env("PGTMP_DIR", &state)
            .args(["-w", UNTIL_STOPPED]),
        PGTMP_LIMIT,
    );
    let line = check_failed(&out, 1);
    assert!(
        line.contains("comma") && line.contains("PGTMP_DIR"),
        "{line}"
    );
    assert!(!state.exists(), "PGTMP_DIR={} was made", state.display());
    sandbox.assert_nothing_left("PGTMP_DIR=c,d pgtmp");
}

/// When the URL cannot be printed (stdout is /dev/full), nobody can use the cluster: it is
/// stopped and removed before pgtmp exits 1, not left to its idle timeout. The other commands
/// that print fail with one line as well (no panic, as `println!` would give).
fn url_that_cannot_be_printed(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    for args in ["-w 300", "-t -w 300"] {
        let out = run(
            &mut sandbox.shell(&format!("\"$PGTMP\" {args} >/dev/full")),
            PGTMP_LIMIT,
        );
        let line = check_failed(&out, 1);
        assert!(
            line.contains("cannot print the URL") && line.contains("stopped"),
            "pgtmp {args} >/dev/full: {line}"
        );
        sandbox.assert_nothing_left(&format!("pgtmp {args} >/dev/full"));
    }
    // Every other command that prints says so on one line too, instead of panicking (list
    // has a cluster to list).
    let url = sandbox.start(&["-w", UNTIL_STOPPED]);
    for args in ["doctor", "list", "initdb"] {
        let out = run(
            &mut sandbox.shell(&format!("\"$PGTMP\" {args} >/dev/full")),
            PGTMP_LIMIT,
        );
        let line = check_failed(&out, 1);
        assert!(
            line.contains("cannot print to stdout"),
            "pgtmp {args} >/dev/full: {line}"
        );
    }
    assert!(sandbox.run(&["stop", &url]).success());
}

/// A malformed PGTMP_CACHE_DAYS is refused by `pgtmp gc` and by a start (whose background
/// sweep would use it), naming the variable, before anything is made or removed.
fn cache_days_is_validated(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    for value in ["abc", "-1", "1.5", "99999"] {
        for args in [&["-w", "5"][..], &["gc"]] {
            let out = run(
                sandbox.pgtmp().env("PGTMP_CACHE_DAYS", value).args(args),
                PGTMP_LIMIT,
            );
            let line = check_failed(&out, 2);
            assert!(
                line.contains(&format!("PGTMP_CACHE_DAYS={value}")) && line.contains("unset it"),
                "pgtmp {args:?}: {line}"
            );
            sandbox.assert_nothing_left(&format!("PGTMP_CACHE_DAYS={value} pgtmp {args:?}"));
        }
    }
    let out = run(
        sandbox.pgtmp().env("PGTMP_CACHE_DAYS", "0").arg("gc"),
        PGTMP_LIMIT,
    );
    assert!(out.success(), "PGTMP_CACHE_DAYS=0 is valid:\n{out}");
}

/// `pgtmp help` and `pgtmp help SUB` print the pages `--help` prints, and every subcommand's
/// page ends with examples; none of them starts anything.
fn help_pages_and_examples(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let main = sandbox.run(&["help"]);
    assert!(
        main.success() && main.stdout == sandbox.run(&["--help"]).stdout,
        "pgtmp help should print the --help page:\n{main}"
    );
    assert!(main.stdout.contains("Examples:"), "{main}");
    let subcommands = [
        "start", "stop", "initdb", "run", "list", "doctor", "clone", "schema", "gc",
    ];
    for sub in subcommands {
        let help = sandbox.run(&["help", sub]);
        assert!(
            help.success() && help.stderr.is_empty(),
            "pgtmp help {sub}:\n{help}"
        );
        assert_eq!(
            help.stdout,
            sandbox.run(&[sub, "--help"]).stdout,
            "pgtmp help {sub}"
        );
        let examples = help
            .stdout
            .split_once("\nExamples:\n")
            .map(|(_, examples)| examples)
            .unwrap_or_else(|| panic!("pgtmp {sub} --help has no examples:\n{help}"));
        let shown = if sub == "list" { "pgtmp l" } else { sub };
        assert!(
            examples.lines().all(|l| l.starts_with("  ")) && examples.contains(shown),
            "pgtmp {sub} --help: {examples}"
        );
    }
    // The default command's options still parse with a help subcommand around.
    assert!(sandbox.run(&["-w", "5", "help"]).success());
    let line = check_failed(&sandbox.run(&["help", "frobnicate"]), 2);
    assert!(line.contains("frobnicate"), "{line}");
    sandbox.assert_nothing_left("pgtmp help");
}

/// An invalid -F names the values that work, on the command line and in PGTMP_FORMAT.
fn invalid_format_lists_the_values(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let line = check_failed(&sandbox.run(&["-F", "yaml"]), 2);
    assert!(
        line.contains("'yaml'") && line.ends_with("valid values: uri, dsn, jdbc, env, json"),
        "{line}"
    );
    let line = check_failed(&sandbox.run(&["clone", "-F", "dsn", "postgresql:///x"]), 2);
    assert!(line.ends_with("valid values: uri, jdbc"), "{line}");
    let mut cmd = sandbox.pgtmp();
    cmd.env("PGTMP_FORMAT", "yaml");
    let line = check_failed(&run(&mut cmd, PGTMP_LIMIT), 2);
    assert!(
        line.contains("PGTMP_FORMAT") && line.contains("valid values: uri, dsn, jdbc, env, json"),
        "{line}"
    );
    sandbox.assert_nothing_left("pgtmp -F yaml");
}

/// As root, a -f file whose `\ir` include lies in a directory the server account cannot
/// enter (such as /root, mode 0700): the error says that this is why psql cannot read it and
/// how to fix it, rather than only "No such file or directory"; the fix it names works.
#[test]
fn include_the_server_account_cannot_reach() {
    let invoker = Invoker::current();
    if !invoker.is_root() {
        return cannot_run_here("only root's server account can be shut out of the files");
    }
    let sandbox = Sandbox::new(&invoker);
    let private = sandbox.path("private");
    fs::create_dir(&private).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    let main = private.join("main.sql");
    fs::write(&main, "\\ir other.sql\n").unwrap();
    fs::write(
        private.join("other.sql"),
        "create table included (i int);\n",
    )
    .unwrap();
    let main_arg = main.to_str().unwrap();
    let out = sandbox.run(&["-w", UNTIL_STOPPED, "-f", main_arg]);
    let line = check_failed(&out, 1);
    let (account, _) = invoker.server_account();
    assert!(
        line.contains("other.sql: No such file or directory")
            && line.contains(&format!(
                "{account}, which cannot enter {}",
                private.display()
            ))
            && line.contains("chmod o+x"),
        "{line}"
    );
    sandbox.assert_nothing_left("an unreachable include");
    fs::set_permissions(&private, fs::Permissions::from_mode(0o711)).unwrap();
    let url = sandbox.start(&["-w", UNTIL_STOPPED, "-f", main_arg]);
    assert_eq!(sandbox.psql(&url, "select count(*) from included"), "0");
}
