//! `pgtmp -t` and `-p PORT`: loopback-only TCP with a fresh password per cluster, while the
//! Unix socket stays trust-authenticated.

use crate::common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

both_invokers!(
    tcp_url_contract,
    fixed_port_implies_tcp,
    tcp_starts_take_a_password_prepared_with_the_pool_entry,
    tcp_starts_from_the_schema_cache_take_a_prepared_password,
);

/// The instance directory whose socket file carries `port`.
fn dir_listening_on(sandbox: &Sandbox, port: u16) -> PathBuf {
    let dirs = sandbox.instance_dirs();
    dirs.iter()
        .find(|dir| dir.join(format!(".s.PGSQL.{port}")).exists())
        .unwrap_or_else(|| panic!("no instance directory with a socket for port {port}: {dirs:?}"))
        .clone()
}

/// Asserts that psql cannot connect to `url` (over TCP) for want of the right password.
fn assert_refused(sandbox: &Sandbox, url: &str, why: &str) {
    let out = run(
        sandbox
            .psql_command(url)
            .env("PGPASSFILE", "/nonexistent")
            .args(["-w", "-c", "select 1"]),
        PSQL_LIMIT,
    );
    assert!(
        !out.success() && out.stderr.contains("password"),
        "{why}: the connection must be refused for want of the password:\n{out}"
    );
}

fn url_safe(password: &str) -> bool {
    password
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
}

/// `-t`: postgresql://USER:PASSWORD@127.0.0.1:PORT/test, a long URL-safe password different
/// for each cluster and required, a listener on 127.0.0.1 only, and a socket that still works.
fn tcp_url_contract(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let first = sandbox.start(&["-t", "-w", UNTIL_STOPPED]);
    let second = sandbox.start(&["-t", "-w", UNTIL_STOPPED]);
    let (a, b) = (parse_tcp_url(&first), parse_tcp_url(&second));
    assert_eq!(a.user, invoker.name, "{first}");
    for parsed in [&a, &b] {
        assert!(
            parsed.password.len() >= 20 && url_safe(&parsed.password),
            "the password must be at least 20 URL-safe characters: {:?}",
            parsed.password
        );
    }
    assert_ne!(
        a.password, b.password,
        "every cluster gets its own password"
    );
    assert_ne!(a.port, b.port);

    assert_eq!(
        sandbox.psql(&first, "select current_user, current_database()"),
        format!("{}|test", invoker.name)
    );
    assert_eq!(sandbox.psql(&first, "show listen_addresses"), "127.0.0.1");
    // On every major (13's password_encryption is md5): a SCRAM verifier, SCRAM host rules.
    assert_eq!(
        sandbox.psql(
            &first,
            "select rolpassword like 'SCRAM-SHA-256$%' from pg_authid where rolname = current_user"
        ),
        "t",
        "the password is stored as a SCRAM verifier"
    );
    assert_eq!(
        sandbox.psql(
            &first,
            "select string_agg(distinct auth_method, ',') from pg_hba_file_rules where type = 'host'"
        ),
        "scram-sha-256"
    );
    let dir = dir_listening_on(&sandbox, a.port);
    let postmaster = postmaster_pid(&dir).expect("no postmaster.pid");
    assert_eq!(
        tcp_listeners(postmaster),
        vec![format!("127.0.0.1:{}", a.port)],
        "the server listens on loopback only"
    );

    let refused = |url: &str, why: &str| assert_refused(&sandbox, url, why);
    let user = percent_encode(&a.user);
    refused(
        &format!("postgresql://{user}@127.0.0.1:{}/test", a.port),
        "no password",
    );
    refused(
        &format!(
            "postgresql://{user}:{}@127.0.0.1:{}/test",
            b.password, a.port
        ),
        "another cluster's password",
    );

    let socket = socket_url_for(&invoker.name, &dir, a.port);
    assert_eq!(
        sandbox.psql(&socket, "select current_user"),
        invoker.name,
        "the socket stays trust-authenticated"
    );
}

/// `-p PORT` listens on exactly that port, over TCP with a password.
fn fixed_port_implies_tcp(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let port = free_port();
    let url = sandbox.start(&["-p", &port.to_string(), "-w", UNTIL_STOPPED]);
    let parsed = parse_tcp_url(&url);
    assert_eq!(parsed.port, port, "{url}");
    assert!(parsed.password.len() >= 20 && url_safe(&parsed.password));
    assert_eq!(
        sandbox.psql(
            &url,
            "select current_setting('port'), current_setting('listen_addresses')"
        ),
        format!("{port}|127.0.0.1")
    );
    let dir = dir_listening_on(&sandbox, port);
    let postmaster = postmaster_pid(&dir).expect("no postmaster.pid");
    assert_eq!(tcp_listeners(postmaster), vec![format!("127.0.0.1:{port}")]);
}

/// Runs a start with PGTMP_TRACE=1; returns its URL and the names of the phases traced.
fn traced_start(sandbox: &Sandbox, args: &[&str]) -> (String, Vec<String>) {
    let out = run(
        sandbox.pgtmp().args(args).env("PGTMP_TRACE", "1"),
        PGTMP_LIMIT,
    );
    assert!(out.success(), "traced start failed:\n{out}");
    let url = out.stdout.trim_end().to_string();
    let phases = out
        .stderr_lines()
        .iter()
        .filter_map(|line| line.strip_prefix("pgtmp: trace: "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect();
    (url, phases)
}

/// Once a `-t` start came, refills give every pool entry a password of its own (0600, never
/// two alike), entries made before included; the next `-t` start uses it (no session to set
/// one), it works and is required like any other, and no start leaves it in its directory.
fn tcp_starts_take_a_password_prepared_with_the_pool_entry(invoker: &Invoker) {
    let sandbox = Sandbox::with_pool(invoker, 2);
    let plain = sandbox.start(&["-w", UNTIL_STOPPED]);
    sandbox.wait_for_full_pool(2, Duration::from_secs(60));
    assert!(
        sandbox
            .pool_entries("ready.")
            .iter()
            .all(|e| !e.join("tcp.password").exists()),
        "no password is prepared before a -t start asks"
    );
    let (first, phases) = traced_start(&sandbox, &["-t", "-w", UNTIL_STOPPED]);
    assert!(
        !phases.contains(&"prepared-password".to_string()),
        "{phases:?}"
    );
    sandbox.wait_for_full_pool(2, Duration::from_secs(60));
    let entries = sandbox.pool_entries("ready.");
    let mut passwords = Vec::new();
    for entry in &entries {
        let file = entry.join("tcp.password");
        let mode = std::fs::metadata(&file)
            .unwrap_or_else(|e| panic!("{} has no password prepared: {e}", entry.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
        passwords.push(std::fs::read_to_string(&file).unwrap());
    }
    let (second, phases) = traced_start(&sandbox, &["-t", "-w", UNTIL_STOPPED]);
    assert!(
        phases.contains(&"prepared-password".to_string()),
        "{phases:?}"
    );
    let (a, b) = (parse_tcp_url(&first), parse_tcp_url(&second));
    assert!(
        passwords.contains(&b.password),
        "the URL's is the prepared password"
    );
    passwords.push(a.password.clone());
    passwords.sort();
    passwords.dedup();
    assert_eq!(
        passwords.len(),
        entries.len() + 1,
        "every entry has its own password"
    );
    assert_eq!(sandbox.psql(&second, "select current_database()"), "test");
    let wrong = format!(
        "postgresql://{}:{}@127.0.0.1:{}/test",
        percent_encode(&b.user),
        a.password,
        b.port
    );
    assert_refused(&sandbox, &wrong, "another cluster's password");
    let socket = sandbox.start(&["-w", UNTIL_STOPPED]);
    let tcp_dirs = [&a, &b].map(|url| dir_listening_on(&sandbox, url.port));
    let socket_dirs = [&plain, &socket].map(|url| parse_socket_url(url).dir);
    for dir in tcp_dirs.iter().chain(&socket_dirs) {
        assert!(
            !dir.join("tcp.password").exists(),
            "a password left in {}",
            dir.display()
        );
    }
}

/// The ready copies of the schema cache entries (`cache/<key>/ready.*`), once no copy is being
/// made (`new.*`).
fn cache_ready_copies(sandbox: &Sandbox) -> Option<Vec<PathBuf>> {
    let mut ready = Vec::new();
    for key in std::fs::read_dir(sandbox.pgtmp_dir.join("cache"))
        .ok()?
        .flatten()
    {
        for copy in std::fs::read_dir(key.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = copy.file_name().to_string_lossy().into_owned();
            if name.starts_with("new.") {
                return None;
            }
            if name.starts_with("ready.") {
                ready.push(copy.path());
            }
        }
    }
    Some(ready)
}

/// The same for the ready copies of a schema cache entry: a `-t -f` start from a copy without
/// a password asks for them, and the next takes one, with the loaded data.
fn tcp_starts_from_the_schema_cache_take_a_prepared_password(invoker: &Invoker) {
    let sandbox = Sandbox::with_pool(invoker, 1);
    let file = invokers_file(&sandbox, "items.sql", "create table items (id int);\n");
    let file = file.to_str().unwrap();
    let copies_with = |password: bool| {
        wait_until(Duration::from_secs(90), || {
            cache_ready_copies(&sandbox).is_some_and(|ready| {
                !ready.is_empty()
                    && ready
                        .iter()
                        .all(|c| c.join("tcp.password").exists() == password)
            })
        })
    };
    sandbox.start(&["-t", "-w", UNTIL_STOPPED, "-f", file]);
    assert!(
        copies_with(false),
        "no ready copy of the cache entry was made"
    );
    let (_, phases) = traced_start(&sandbox, &["-t", "-w", UNTIL_STOPPED, "-f", file]);
    assert!(phases.contains(&"cached".to_string()), "{phases:?}");
    assert!(
        !phases.contains(&"prepared-password".to_string()),
        "{phases:?}"
    );
    assert!(copies_with(true), "the ready copies got no password");
    let (url, phases) = traced_start(&sandbox, &["-t", "-w", UNTIL_STOPPED, "-f", file]);
    assert!(
        phases.contains(&"prepared-password".to_string()),
        "{phases:?}"
    );
    assert_eq!(sandbox.psql(&url, "select count(*) from items"), "0");
    let dir = dir_listening_on(&sandbox, parse_tcp_url(&url).port);
    assert!(
        !dir.join("tcp.password").exists(),
        "a password left in {}",
        dir.display()
    );
}
