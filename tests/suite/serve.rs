//! `pgtmp serve`: databases handed out over HTTP, through faitout's API (`/new`, `/clean/DB`)
//! and IntegreSQL's v1 API (templates and their test databases), from a private cluster of its
//! own or from an existing server (`--server`). Driven with real clients only: curl, psql, the
//! npm IntegreSQL client with node-postgres, and headless Chromium for the status page; the
//! existing server of `--server` is one the test starts itself (initdb and postgres, an admin
//! role with CREATEDB and CREATEROLE that is no superuser).
//!
//! In CI (CI=true) every client must be there: .ci/run installs them. Elsewhere a missing
//! client is reported as a skip.

use crate::common::*;
use nix::sys::signal::Signal;
use serde_json::Value;
use std::collections::HashSet;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

both_invokers!(
    faitout_hands_out_cleans_and_caps,
    fifty_at_once_are_fifty_databases,
    token_and_bad_requests_change_nothing,
    integresql_client_and_raw_api,
    server_keeps_its_records_across_a_restart,
    status_page_in_chromium,
    expiry_sigterm_and_sigkill,
    refuses_bad_usage,
    remote_cli_needs_no_postgres,
    two_serves_share_one_server,
    integresql_python_client,
);

/// Longest a request may take (a /new may have to create its database first).
const REQUEST_LIMIT: Duration = Duration::from_secs(60);
/// Longest serve may take to stop after SIGTERM (its own cluster stops and goes with it).
const STOP_LIMIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// A running `pgtmp serve`

/// A `pgtmp serve` in the foreground, ready (it printed its URL). Dropped, it is stopped.
struct Serve {
    child: Child,
    /// `http://127.0.0.1:PORT/`, as printed.
    base: String,
    invoker: Invoker,
    /// Put before every path of the helpers (`t/TOKEN/` for a serve with a token).
    prefix: String,
    /// Lines on stdout after the first one (there must be none).
    stdout: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    /// Requests sent through [`Serve::curl`], each of which must have its log line.
    requests: AtomicUsize,
    stopped: bool,
}

impl Serve {
    /// `pgtmp serve --listen 127.0.0.1:0 ARGS` in the sandbox.
    fn start(sandbox: &Sandbox, args: &[&str]) -> Serve {
        let mut cmd = sandbox.pgtmp();
        cmd.args(["serve", "--listen", "127.0.0.1:0"]).args(args);
        Serve::spawn(cmd, &sandbox.invoker)
    }

    /// Starts `cmd` (a `pgtmp serve`) and waits for the one line it prints when ready.
    fn spawn(mut cmd: Command, invoker: &Invoker) -> Serve {
        let what = format!("{cmd:?}");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn(&mut cmd, &what);
        let (tx, stdout) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let collected = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                collected
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let first = stdout.recv_timeout(PGTMP_LIMIT);
        let mut serve = Serve {
            child,
            base: String::new(),
            invoker: invoker.clone(),
            prefix: String::new(),
            stdout,
            stderr,
            requests: AtomicUsize::new(0),
            stopped: false,
        };
        let line = match first {
            Ok(line) => line,
            Err(_) => {
                let status = serve.child.try_wait().ok().flatten();
                panic!(
                    "{what} printed no URL within {PGTMP_LIMIT:?} (exit: {status:?}); stderr:\n{}",
                    serve.stderr()
                );
            }
        };
        let port = line
            .strip_prefix("http://127.0.0.1:")
            .and_then(|rest| rest.strip_suffix('/'))
            .and_then(|port| port.parse::<u16>().ok());
        assert!(
            port.is_some_and(|p| p != 0),
            "serve's first line on stdout should be http://127.0.0.1:PORT/, got {line:?}"
        );
        serve.base = line;
        serve
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The URL of `path` (relative, without the prefix).
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The URL of `path` after the prefix (the token's, if any).
    fn api(&self, path: &str) -> String {
        format!("{}{}{path}", self.base, self.prefix)
    }

    /// curl as the invoker with `args` (the URL among them).
    fn curl(&self, args: &[&str]) -> Reply {
        self.requests.fetch_add(1, Ordering::SeqCst);
        curl(&self.invoker, args)
    }

    /// GET of `path` (after the prefix).
    fn get(&self, path: &str) -> Reply {
        self.curl(&[&self.api(path)])
    }

    /// `method` on `path` (after the prefix), with a JSON body if any.
    fn send(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        let url = self.api(path);
        let mut args = vec!["-X", method, &url];
        if let Some(body) = body {
            args.extend([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
            ]);
        }
        self.curl(&args)
    }

    /// A database from `GET /new` (text form).
    fn new_db(&self) -> Db {
        let reply = self.get("new");
        assert_eq!(reply.status, 200, "GET /new:\n{reply}");
        Db::from_url(reply.body.trim())
    }

    /// `GET /stats` as JSON.
    fn stats(&self) -> Value {
        let reply = self.get("stats");
        assert_eq!(reply.status, 200, "GET /stats:\n{reply}");
        reply.json()
    }

    /// Waits until the pool holds `n` ready databases.
    fn wait_ready(&self, n: u64) {
        let mut stats = Value::Null;
        let ready = wait_until(Duration::from_secs(60), || {
            stats = self.stats();
            stats["ready"].as_u64() == Some(n)
        });
        assert!(ready, "the pool did not fill to {n}: {stats}");
    }

    /// The request lines on stderr (`pgtmp serve: IP METHOD PATH STATUS MS ms`), taken apart.
    fn log_lines(&self) -> Vec<LogLine> {
        self.stderr().lines().filter_map(LogLine::parse).collect()
    }

    /// Waits until every request sent through [`Serve::curl`] has its log line; returns them.
    fn logged(&self) -> Vec<LogLine> {
        let sent = self.requests.load(Ordering::SeqCst);
        let mut lines = Vec::new();
        wait_until(Duration::from_secs(5), || {
            lines = self.log_lines();
            lines.len() >= sent
        });
        assert_eq!(
            lines.len(),
            sent,
            "one log line per request on stderr; stderr:\n{}",
            self.stderr()
        );
        lines
    }

    /// Sends `sig` and waits up to `limit` for the exit; checks that stdout had nothing but the
    /// URL. Returns the status and how long the exit took.
    fn stop(mut self, sig: Signal, limit: Duration) -> (ExitStatus, Duration) {
        let asked = Instant::now();
        signal(self.pid(), sig);
        // (wait_child kills and reaps it when it is late, so Drop has nothing left to do.)
        self.stopped = true;
        let status = wait_child(&mut self.child, limit, &format!("pgtmp serve after {sig}"));
        let took = asked.elapsed();
        let mut later = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self
                .stdout
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => later.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("serve's stdout stayed open for 5 s after it exited")
                }
            }
        }
        assert!(
            later.is_empty(),
            "serve printed more than its URL on stdout: {later:?}"
        );
        (status, took)
    }

    /// SIGTERM: exit 0 within [`STOP_LIMIT`].
    fn terminate(self) {
        let stderr = Arc::clone(&self.stderr);
        let (status, took) = self.stop(Signal::SIGTERM, STOP_LIMIT);
        assert!(
            status.success(),
            "serve should exit 0 on SIGTERM, got {status} after {took:?}; stderr:\n{}",
            stderr.lock().unwrap()
        );
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("stderr of pgtmp serve ({}):\n{}", self.base, self.stderr());
        }
        if self.stopped {
            return;
        }
        signal(self.pid(), Signal::SIGTERM);
        if !wait_until(STOP_LIMIT, || {
            self.child.try_wait().ok().flatten().is_some()
        }) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One request's line on serve's stderr.
#[derive(Debug, Clone)]
struct LogLine {
    ip: String,
    method: String,
    path: String,
    status: u16,
}

impl LogLine {
    /// `pgtmp serve: 127.0.0.1 GET /new 200 2.1 ms`.
    fn parse(line: &str) -> Option<LogLine> {
        let rest = line.strip_prefix("pgtmp serve: ")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let [ip, method, path, status, ms, "ms"] = fields[..] else {
            return None;
        };
        ip.parse::<std::net::IpAddr>().ok()?;
        ms.parse::<f64>().ok()?;
        Some(LogLine {
            ip: ip.to_string(),
            method: method.to_string(),
            path: path.to_string(),
            status: status.parse().ok()?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP with curl

/// An HTTP answer.
struct Reply {
    what: String,
    status: u16,
    content_type: String,
    body: String,
}

impl Reply {
    /// The body as JSON; panics unless it is JSON with a JSON content type.
    fn json(&self) -> Value {
        assert!(
            self.content_type.starts_with("application/json"),
            "expected a JSON answer:\n{self}"
        );
        serde_json::from_str(&self.body).unwrap_or_else(|err| panic!("{err}:\n{self}"))
    }

    /// Checks a faitout error: `status` and `{"ERROR": error, "description": "..."}`.
    fn faitout_error(&self, status: u16, error: &str) {
        assert_eq!(self.status, status, "{self}");
        let v = self.json();
        assert_eq!(v["ERROR"], error, "{self}");
        assert!(
            v["description"].as_str().is_some_and(|d| !d.is_empty()),
            "a description:\n{self}"
        );
    }

    /// Checks an IntegreSQL error: `status` and `{"message": "..."}`.
    fn api_error(&self, status: u16) {
        assert_eq!(self.status, status, "{self}");
        let v = self.json();
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "a message:\n{self}"
        );
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}\n  -> {} ({})\n  body: {:?}",
            self.what, self.status, self.content_type, self.body
        )
    }
}

/// Whether curl is there; reports the skip (or the failure in CI) when it is not.
fn have_curl(invoker: &Invoker) -> bool {
    let found = works(invoker, "curl", &["--version"]);
    if !found {
        missing("curl", "Debian: apt-get install curl");
    }
    found
}

/// curl as `invoker` with `args`: the status, the content type and the body of the answer.
fn curl(invoker: &Invoker, args: &[&str]) -> Reply {
    let mut cmd = invoker.command("curl");
    cmd.args(["-sS", "--noproxy", "*", "--max-time", "60", "-H", "Expect:"])
        .args(["-w", "\n%{http_code}\n%{content_type}"])
        .args(args);
    let out = run(&mut cmd, REQUEST_LIMIT + Duration::from_secs(10));
    let mut parts = out.stdout.rsplitn(3, '\n');
    let content_type = parts.next().unwrap_or_default().to_string();
    let status = parts.next().and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = parts.next().unwrap_or_default().to_string();
    assert!(status != 0, "curl got no HTTP answer:\n{out}");
    Reply {
        what: out.what,
        status,
        content_type,
        body,
    }
}

// ---------------------------------------------------------------------------------------------
// Databases handed out

/// A database handed out, with its own role.
#[derive(Debug, Clone)]
struct Db {
    name: String,
    user: String,
    password: String,
    host: String,
    port: u16,
    /// `postgresql://USER:PASSWORD@HOST:PORT/NAME`.
    url: String,
}

impl Db {
    /// From faitout's text answer `postgresql://USER:PASSWORD@HOST:PORT/DBNAME`.
    fn from_url(url: &str) -> Db {
        let parse = || -> Option<Db> {
            let rest = url.strip_prefix("postgresql://")?;
            let (userinfo, rest) = rest.rsplit_once('@')?;
            let (user, password) = userinfo.split_once(':')?;
            let (hostport, name) = rest.split_once('/')?;
            let (host, port) = hostport.rsplit_once(':')?;
            let port = port.parse().ok()?;
            let valid = !name.is_empty() && !name.contains(['?', '/']) && !password.is_empty();
            valid.then(|| Db {
                name: percent_decode(name),
                user: percent_decode(user),
                password: percent_decode(password),
                host: host.to_string(),
                port,
                url: url.to_string(),
            })
        };
        parse().unwrap_or_else(|| {
            panic!("not a URL of the form postgresql://USER:PASSWORD@HOST:PORT/DBNAME: {url:?}")
        })
    }

    fn from_parts(name: &str, user: &str, password: &str, host: &str, port: u16) -> Db {
        Db {
            name: name.to_string(),
            user: user.to_string(),
            password: password.to_string(),
            host: host.to_string(),
            port,
            url: format!(
                "postgresql://{}:{}@{host}:{port}/{}",
                percent_encode(user),
                percent_encode(password),
                percent_encode(name)
            ),
        }
    }

    /// From faitout's JSON answer `{"dbname","username","password","port","host"}`.
    fn from_json(v: &Value) -> Db {
        let text = |key: &str| {
            v[key]
                .as_str()
                .unwrap_or_else(|| panic!("no string {key} in {v}"))
                .to_string()
        };
        let port = v["port"]
            .as_u64()
            .unwrap_or_else(|| panic!("port is not a number in {v}"));
        Db::from_parts(
            &text("dbname"),
            &text("username"),
            &text("password"),
            &text("host"),
            port as u16,
        )
    }

    /// From an IntegreSQL config `{"host","port","username","password","database"}`.
    fn from_config(v: &Value) -> Db {
        let text = |key: &str| {
            v[key]
                .as_str()
                .unwrap_or_else(|| panic!("no string {key} in the config {v}"))
                .to_string()
        };
        let port = v["port"]
            .as_u64()
            .unwrap_or_else(|| panic!("port is not a number in the config {v}"));
        Db::from_parts(
            &text("database"),
            &text("username"),
            &text("password"),
            &text("host"),
            port as u16,
        )
    }

    /// This role's URL for another database.
    fn url_for(&self, name: &str) -> String {
        Db::from_parts(name, &self.user, &self.password, &self.host, self.port).url
    }
}

/// `text` as an SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Whether a database and a role named `name` exist, as `from` sees the catalogs.
fn present(sandbox: &Sandbox, from: &Db, name: &str) -> (bool, bool) {
    let name = literal(name);
    let out = sandbox.psql(
        &from.url,
        &format!(
            "select exists (select from pg_database where datname = {name}) || ' ' || \
             exists (select from pg_roles where rolname = {name})"
        ),
    );
    match out.as_str() {
        "true true" => (true, true),
        "true false" => (true, false),
        "false true" => (false, true),
        "false false" => (false, false),
        other => panic!("unexpected answer {other:?}"),
    }
}

/// Every database and role of the server, as `from` sees the catalogs.
fn census(sandbox: &Sandbox, from: &Db) -> String {
    sandbox.psql(
        &from.url,
        "select (select string_agg(datname, ',' order by datname) from pg_database) || ' | ' || \
         (select string_agg(rolname, ',' order by rolname) from pg_roles)",
    )
}

/// Checks what the role of `db` may do: log in to its own database, which it owns, and nothing
/// more (no superuser, CREATEDB or CREATEROLE, no CONNECT for PUBLIC on its database).
fn check_role(sandbox: &Sandbox, db: &Db) {
    assert_eq!(db.user, db.name, "the role is named after its database");
    assert_eq!(
        sandbox.psql(
            &db.url,
            "select current_user || ' ' || current_database() || ' ' || rolsuper || ' ' || \
             rolcreatedb || ' ' || rolcreaterole from pg_roles where rolname = current_user"
        ),
        format!("{} {} false false false", db.user, db.name),
        "{}",
        db.url
    );
    assert_eq!(
        sandbox.psql(
            &db.url,
            "select pg_get_userbyid(datdba) from pg_database where datname = current_database()"
        ),
        db.user,
        "the role owns its database"
    );
    assert_eq!(
        sandbox.psql(
            &db.url,
            "select count(*) from pg_database d, \
             aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a \
             where d.datname = current_database() and a.grantee = 0 \
             and a.privilege_type = 'CONNECT'"
        ),
        "0",
        "CONNECT is revoked from PUBLIC on {}",
        db.name
    );
}

/// Checks that the role of `from` cannot connect to the database of `to`.
fn check_no_entry(sandbox: &Sandbox, from: &Db, to: &Db) {
    let out = sandbox.try_psql(&from.url_for(&to.name), "select 1");
    assert!(
        !out.success() && out.stderr.contains("permission denied"),
        "the role {} should get a permission error on database {}:\n{out}",
        from.user,
        to.name
    );
}

/// Checks that a table can be made and used in `db`.
fn check_writable(sandbox: &Sandbox, db: &Db) {
    sandbox.psql(&db.url, "create table item (id int primary key, name text)");
    sandbox.psql(&db.url, "insert into item values (1, 'apple')");
    assert_eq!(
        sandbox.psql(&db.url, "select name from item"),
        "apple",
        "{}",
        db.url
    );
}

// ---------------------------------------------------------------------------------------------
// faitout

/// `/new` in text and JSON, psql with what it gave, the role's limits, `/clean` of ours (the
/// database and role are gone) and of what is not ours (404, nothing dropped), another client
/// (403), the cap per client (400), one log line per request, and exit 0 on SIGINT.
fn faitout_hands_out_cleans_and_caps(invoker: &Invoker) {
    if !have_curl(invoker) {
        return;
    }
    let sandbox = Sandbox::new(invoker);
    let serve = Serve::start(&sandbox, &["--max-per-client", "3", "--pool", "2"]);

    let reply = serve.get("new");
    assert_eq!(reply.status, 200, "{reply}");
    assert!(reply.content_type.starts_with("text/plain"), "{reply}");
    let a = Db::from_url(reply.body.trim());
    check_writable(&sandbox, &a);
    check_role(&sandbox, &a);

    let reply = serve.curl(&["-H", "Accept: application/json", &serve.url("new/")]);
    assert_eq!(reply.status, 200, "{reply}");
    let b = Db::from_json(&reply.json());
    check_writable(&sandbox, &b);
    check_role(&sandbox, &b);

    let c = serve.new_db();
    assert_eq!(sandbox.psql(&c.url, "select current_database()"), c.name);

    let names: HashSet<&str> = [&a, &b, &c].iter().map(|d| d.name.as_str()).collect();
    assert_eq!(
        names.len(),
        3,
        "three different databases: {a:?} {b:?} {c:?}"
    );
    check_no_entry(&sandbox, &a, &b);
    check_no_entry(&sandbox, &b, &a);

    // The cap, per client: a fourth for this one is refused, another client gets its own.
    serve
        .get("new")
        .faitout_error(400, "TooManyConnectionException");
    let reply = serve.curl(&["--interface", "127.0.0.2", &serve.url("new")]);
    assert_eq!(reply.status, 200, "another client, another cap:\n{reply}");
    let d = Db::from_url(reply.body.trim());

    // Not ours: nothing is dropped.
    // (a prefix of one of ours is not one of ours either)
    for name in [
        "postgres",
        "template1",
        "template0",
        "no_such_db",
        &a.name[..a.name.len() - 1],
    ] {
        serve
            .get(&format!("clean/{name}"))
            .faitout_error(404, "NoDatabaseException");
    }
    for name in ["postgres", "template1", "template0"] {
        assert!(present(&sandbox, &b, name).0, "{name} was dropped");
    }
    // Another client's: 403, and it stays.
    let reply = serve.curl(&[
        "--interface",
        "127.0.0.2",
        &serve.url(&format!("clean/{}", a.name)),
    ]);
    reply.faitout_error(403, "WrongOriginException");
    assert_eq!(sandbox.psql(&a.url, "select count(*) from item"), "1");

    // Ours: the database and its role go.
    let reply = serve.get(&format!("clean/{}", a.name));
    assert_eq!(reply.status, 200, "{reply}");
    assert!(reply.content_type.starts_with("text/plain"), "{reply}");
    assert_eq!(
        reply.body.trim(),
        format!("Database {} has been dropped", a.name)
    );
    assert_eq!(
        present(&sandbox, &b, &a.name),
        (false, false),
        "after /clean"
    );
    assert!(!sandbox.try_psql(&a.url, "select 1").success());
    let reply = serve.get(&format!("clean/{}/", c.name));
    assert_eq!(reply.status, 200, "{reply}");
    assert_eq!(
        present(&sandbox, &b, &c.name),
        (false, false),
        "after /clean/DB/"
    );
    // The same name again: no longer ours.
    serve
        .get(&format!("clean/{}", a.name))
        .faitout_error(404, "NoDatabaseException");
    let reply = serve.curl(&[
        "--interface",
        "127.0.0.2",
        &serve.url(&format!("clean/{}", d.name)),
    ]);
    assert_eq!(reply.status, 200, "{reply}");

    // Room again under the cap.
    let e = serve.new_db();
    assert_eq!(sandbox.psql(&e.url, "select current_database()"), e.name);
    assert_eq!(serve.stats()["out"], 2, "b and e are out");

    let lines = serve.logged();
    let has = |ip: &str, path: &str, status: u16| {
        lines
            .iter()
            .any(|l| l.ip == ip && l.method == "GET" && l.path == path && l.status == status)
    };
    assert!(has("127.0.0.1", "/new", 200), "{lines:?}");
    assert!(has("127.0.0.1", "/new", 400), "{lines:?}");
    assert!(has("127.0.0.2", "/new", 200), "{lines:?}");
    assert!(
        has("127.0.0.2", &format!("/clean/{}", a.name), 403),
        "{lines:?}"
    );
    assert!(has("127.0.0.1", "/clean/postgres", 404), "{lines:?}");
    // JSON also for a request that says its content is JSON.
    let reply = serve.curl(&["-H", "Content-Type: application/json", &serve.url("new")]);
    assert_eq!(reply.status, 200, "{reply}");
    let f = Db::from_json(&reply.json());
    assert_eq!(sandbox.psql(&f.url, "select current_database()"), f.name);
    let (status, took) = serve.stop(Signal::SIGINT, STOP_LIMIT);
    assert!(
        status.success(),
        "serve should exit 0 on SIGINT, got {status} after {took:?}"
    );
    sandbox.assert_nothing_left("serve after SIGINT");
}

/// 50 `GET /new` at the same moment: 50 answers 200, 50 different databases that all work.
fn fifty_at_once_are_fifty_databases(invoker: &Invoker) {
    if !have_curl(invoker) {
        return;
    }
    let sandbox = Sandbox::new(invoker);
    let serve = Serve::start(&sandbox, &["--max-per-client", "100"]);
    let n = 50;
    let url = serve.url("new");
    let barrier = Barrier::new(n);
    let replies: Vec<Reply> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..n)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    curl(invoker, &[&url])
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let dbs: Vec<Db> = replies
        .iter()
        .map(|reply| {
            assert_eq!(reply.status, 200, "{reply}");
            Db::from_url(reply.body.trim())
        })
        .collect();
    let names: HashSet<&str> = dbs.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names.len(), n, "{n} different databases: {names:?}");
    let users: HashSet<&str> = dbs.iter().map(|d| d.user.as_str()).collect();
    assert_eq!(users.len(), n, "{n} different roles");
    std::thread::scope(|scope| {
        for chunk in dbs.chunks(n / 5) {
            let sandbox = &sandbox;
            scope.spawn(move || {
                for db in chunk {
                    let out = sandbox.psql(
                        &db.url,
                        "create table t (x int); insert into t values (1); \
                         select current_database() || ' ' || count(*) from t",
                    );
                    assert_eq!(
                        out.lines().last(),
                        Some(format!("{} 1", db.name).as_str()),
                        "{}",
                        db.url
                    );
                }
            });
        }
    });
    assert_eq!(serve.stats()["out"], n);
    serve.terminate();
}

/// With `--token`: nothing without it (401 JSON), the header and the path prefix both work;
/// and bad requests (unknown hash, malformed JSON, an oversized body, a database that is not
/// ours, the wrong token) each get a 4xx JSON error and create or drop no database or role.
fn token_and_bad_requests_change_nothing(invoker: &Invoker) {
    if !have_curl(invoker) {
        return;
    }
    let sandbox = Sandbox::new(invoker);
    let token = "s3cret-T0ken_x";
    let mut serve = Serve::start(&sandbox, &["--token", token, "--pool", "2"]);
    let bearer = format!("Authorization: Bearer {token}");

    let unauthorized = |reply: Reply| {
        assert_eq!(reply.status, 401, "{reply}");
        assert!(reply.json().is_object(), "{reply}");
    };
    for path in [
        "new",
        "new/",
        "stats",
        "",
        "clean/postgres",
        "api/v1/templates/x/tests",
    ] {
        unauthorized(serve.get(path));
        unauthorized(serve.curl(&["-H", "Authorization: Bearer wrong", &serve.url(path)]));
        unauthorized(serve.get(&format!("t/wrong/{path}")));
    }
    unauthorized(serve.send("POST", "api/v1/templates", Some(r#"{"hash":"h1"}"#)));
    unauthorized(serve.send("DELETE", "api/v1/admin/templates", None));

    let reply = serve.curl(&["-H", &bearer, &serve.url("new")]);
    assert_eq!(reply.status, 200, "with the header:\n{reply}");
    let witness = Db::from_url(reply.body.trim());
    serve.prefix = format!("t/{token}/");
    let other = serve.new_db();
    assert_eq!(
        sandbox.psql(&other.url, "select current_database()"),
        other.name
    );
    let reply = serve.curl(&["-H", &bearer, &serve.url("stats")]);
    assert_eq!(reply.status, 200, "{reply}");
    assert_eq!(reply.json()["out"], 2);

    serve.wait_ready(2);
    let before = census(&sandbox, &witness);
    let big = sandbox.path("big.json");
    std::fs::write(&big, format!("{{\"hash\":\"{}\"}}", "a".repeat(70 * 1024))).unwrap();
    let big_body = format!("@{}", big.display());
    let oversized = serve.curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &big_body,
        &serve.api("api/v1/templates"),
    ]);
    oversized.api_error(413);
    serve
        .get("api/v1/templates/nosuchhash/tests")
        .api_error(404);
    serve
        .send("PUT", "api/v1/templates/nosuchhash", None)
        .api_error(404);
    serve
        .send("DELETE", "api/v1/templates/nosuchhash", None)
        .api_error(404);
    serve
        .send("DELETE", "api/v1/templates/nosuchhash/tests/1", None)
        .api_error(404);
    serve
        .send("POST", "api/v1/templates/nosuchhash/tests/1/unlock", None)
        .api_error(404);
    for body in [
        r#"{"hash":"#,
        "not json",
        r#"{"hash":""}"#,
        r#"{"hash":5}"#,
        "{}",
    ] {
        serve
            .send("POST", "api/v1/templates", Some(body))
            .api_error(400);
    }
    for name in ["postgres", "template1", "nosuchdb"] {
        serve
            .get(&format!("clean/{name}"))
            .faitout_error(404, "NoDatabaseException");
    }
    // Ours, but with the wrong token.
    unauthorized(serve.curl(&[&serve.url(&format!("t/wrong/clean/{}", other.name))]));
    unauthorized(serve.curl(&[
        "-H",
        "Authorization: Bearer wrong",
        &serve.url(&format!("clean/{}", other.name)),
    ]));
    serve.wait_ready(2);
    assert_eq!(
        census(&sandbox, &witness),
        before,
        "bad requests changed the databases or roles"
    );
    let stats = serve.stats();
    assert_eq!(stats["out"], 2, "{stats}");
    assert_eq!(stats["templates"], 0, "{stats}");
    serve.logged();
    serve.terminate();
}

// ---------------------------------------------------------------------------------------------
// IntegreSQL

/// The npm packages the test installs.
const INTEGRESQL_CLIENT: &str = "@devoxa/integresql-client@2.1.1";
const NODE_POSTGRES: &str = "pg@8.23.1";

/// A test runner's setup as the client's README has it: initializeTemplate with a migration
/// in node-postgres, a second initializeTemplate of the same hash (someone else built it:
/// the 423 path), two test databases. Prints what it saw as JSON.
const INTEGRESQL_SCRIPT: &str = r#"
const { IntegreSQLClient } = require('@devoxa/integresql-client');
const { Client } = require('pg');
const [url, hash] = process.argv.slice(2);
const integreSQL = new IntegreSQLClient({ url });

async function query(config, sql) {
  const client = new Client({
    host: config.host, port: config.port, user: config.username,
    password: config.password, database: config.database,
  });
  await client.connect();
  try {
    return (await client.query(sql)).rows;
  } finally {
    await client.end();
  }
}

async function main() {
  const seen = { migrations: 0, again: 0 };
  await integreSQL.initializeTemplate(hash, async (config) => {
    seen.migrations += 1;
    seen.template = config.database;
    await query(config, 'create table item (id int primary key, name text)');
    await query(config, "insert into item values (1, 'apple')");
  });
  await integreSQL.initializeTemplate(hash, async () => { seen.again += 1; });
  const a = await integreSQL.getTestDatabase(hash);
  const b = await integreSQL.getTestDatabase(hash);
  seen.a = a.database;
  seen.b = b.database;
  seen.aUser = a.username;
  seen.bUser = b.username;
  seen.aRows = (await query(a, 'select name from item order by id')).map((r) => r.name);
  seen.bRows = (await query(b, 'select name from item order by id')).map((r) => r.name);
  await query(a, "insert into item values (2, 'pear')");
  seen.aCount = (await query(a, 'select count(*)::int as n from item'))[0].n;
  seen.bCount = (await query(b, 'select count(*)::int as n from item'))[0].n;
  try {
    await query({ ...b, database: a.database }, 'select 1');
    seen.cross = 'connected';
  } catch (err) {
    seen.cross = err.code || err.message;
  }
  console.log(JSON.stringify(seen));
}

main().catch((err) => { console.error(err); process.exit(1); });
"#;

/// The IntegreSQL client and node-postgres, installed once per test process with npm into the
/// shared directory (npm's cache in the target directory). Returns the script to run with
/// node; Err says what is missing.
fn integresql_script() -> Result<PathBuf, (&'static str, &'static str)> {
    static SCRIPT: OnceLock<Result<PathBuf, (&str, &str)>> = OnceLock::new();
    SCRIPT.get_or_init(install_integresql_client).clone()
}

fn install_integresql_client() -> Result<PathBuf, (&'static str, &'static str)> {
    let dir = npm_install("serve-integresql", &[INTEGRESQL_CLIENT, NODE_POSTGRES])?;
    let script = dir.join("integresql.js");
    std::fs::write(&script, INTEGRESQL_SCRIPT).unwrap();
    Ok(script)
}

/// A test database from `GET /api/v1/templates/HASH/tests`.
struct TestDb {
    id: u64,
    db: Db,
}

fn test_db(reply: &Reply, hash: &str) -> TestDb {
    assert_eq!(reply.status, 200, "{reply}");
    let v = reply.json();
    assert_eq!(v["database"]["templateHash"], hash, "{reply}");
    TestDb {
        id: v["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("no numeric id:\n{reply}")),
        db: Db::from_config(&v["database"]["config"]),
    }
}

/// The npm client end to end (template migrated with node-postgres, the 423 path, two test
/// databases that each have the template's row and do not see each other's writes), then the
/// raw API with curl: 423 on a finalized hash, unlock and give back (the old password no
/// longer works), recreate, discard (410), a test database waits for its template to be
/// finalized, and the admin delete drops everything.
fn integresql_client_and_raw_api(invoker: &Invoker) {
    if !have_curl(invoker) {
        return;
    }
    let script = match integresql_script() {
        Ok(script) => script,
        Err((program, install)) => return missing(program, install),
    };
    let sandbox = Sandbox::new(invoker);
    let serve = Serve::start(&sandbox, &[]);
    let hash = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567";

    let mut node = invoker.command("node");
    node.arg(&script).args([&serve.base, hash]);
    let out = run(&mut node, PGTMP_LIMIT);
    assert!(out.success(), "the IntegreSQL client:\n{out}");
    let seen: Value =
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|err| panic!("{err}:\n{out}"));
    assert_eq!(seen["migrations"], 1, "{seen}");
    assert_eq!(
        seen["again"], 0,
        "the second initializeTemplate got 423: {seen}"
    );
    assert_ne!(seen["a"], seen["b"], "two different test databases: {seen}");
    assert_ne!(
        seen["aUser"], seen["bUser"],
        "each with its own role: {seen}"
    );
    assert_ne!(seen["a"], seen["template"], "{seen}");
    assert_eq!(seen["aRows"], serde_json::json!(["apple"]), "{seen}");
    assert_eq!(seen["bRows"], serde_json::json!(["apple"]), "{seen}");
    assert_eq!(seen["aCount"], 2, "{seen}");
    assert_eq!(
        seen["bCount"], 1,
        "a write in one is not seen in the other: {seen}"
    );
    assert_eq!(
        seen["cross"], "42501",
        "b's role cannot connect to a's database: {seen}"
    );

    // Already built: 423.
    serve
        .send(
            "POST",
            "api/v1/templates",
            Some(&format!(r#"{{"hash":"{hash}"}}"#)),
        )
        .api_error(423);

    let t1 = test_db(&serve.get(&format!("api/v1/templates/{hash}/tests")), hash);
    assert_eq!(sandbox.psql(&t1.db.url, "select name from item"), "apple");
    let reply = serve.send(
        "POST",
        &format!("api/v1/templates/{hash}/tests/{}/unlock", t1.id),
        None,
    );
    assert_eq!(reply.status, 204, "unlock:\n{reply}");
    let out = sandbox.try_psql(&t1.db.url, "select 1");
    assert!(
        !out.success(),
        "the old password still works after unlock:\n{out}"
    );

    let t2 = test_db(&serve.get(&format!("api/v1/templates/{hash}/tests")), hash);
    assert_eq!(sandbox.psql(&t2.db.url, "select count(*) from item"), "1");
    let reply = serve.send(
        "DELETE",
        &format!("api/v1/templates/{hash}/tests/{}", t2.id),
        None,
    );
    assert_eq!(reply.status, 204, "give back:\n{reply}");
    let out = sandbox.try_psql(&t2.db.url, "select 1");
    assert!(
        !out.success(),
        "the old password still works after DELETE:\n{out}"
    );

    let t3 = test_db(&serve.get(&format!("api/v1/templates/{hash}/tests")), hash);
    sandbox.psql(&t3.db.url, "insert into item values (98, 'dirty')");
    let reply = serve.send(
        "POST",
        &format!("api/v1/templates/{hash}/tests/{}/recreate", t3.id),
        None,
    );
    assert_eq!(reply.status, 204, "recreate:\n{reply}");
    // Whatever is handed out next is a fresh copy: the template's row only.
    let mut fresh = Vec::new();
    for _ in 0..3 {
        let t = test_db(&serve.get(&format!("api/v1/templates/{hash}/tests")), hash);
        assert_eq!(
            sandbox.psql(
                &t.db.url,
                "select string_agg(name, ',' order by id) from item"
            ),
            "apple",
            "test database {} of {hash} is not a fresh copy",
            t.id
        );
        fresh.push(t);
    }
    serve
        .send(
            "DELETE",
            &format!("api/v1/templates/{hash}/tests/999999"),
            None,
        )
        .api_error(404);

    // Discarded: 410, and its database is gone.
    let discarded = "feedface";
    let reply = serve.send(
        "POST",
        "api/v1/templates",
        Some(&format!(r#"{{"hash":"{discarded}"}}"#)),
    );
    assert_eq!(reply.status, 200, "{reply}");
    let v = reply.json();
    assert_eq!(v["database"]["templateHash"], discarded, "{reply}");
    let template = Db::from_config(&v["database"]["config"]);
    sandbox.psql(&template.url, "create table x (y int)");
    serve
        .send(
            "POST",
            "api/v1/templates",
            Some(&format!(r#"{{"hash":"{discarded}"}}"#)),
        )
        .api_error(423);
    let reply = serve.send("DELETE", &format!("api/v1/templates/{discarded}"), None);
    assert_eq!(reply.status, 204, "discard:\n{reply}");
    serve
        .get(&format!("api/v1/templates/{discarded}/tests"))
        .api_error(410);
    let witness = &fresh[0].db;
    assert!(
        wait_until(Duration::from_secs(10), || !present(
            &sandbox,
            witness,
            &template.name
        )
        .0),
        "the discarded template's database {} is still there",
        template.name
    );

    // A test database of a template being built waits for it to be finalized.
    let slow = "5eed5eed";
    let reply = serve.send(
        "POST",
        "api/v1/templates",
        Some(&format!(r#"{{"hash":"{slow}"}}"#)),
    );
    assert_eq!(reply.status, 200, "{reply}");
    let building = Db::from_config(&reply.json()["database"]["config"]);
    sandbox.psql(&building.url, "create table migrated (v int)");
    sandbox.psql(&building.url, "insert into migrated values (7)");
    let (tx, rx) = mpsc::channel();
    let url = serve.api(&format!("api/v1/templates/{slow}/tests"));
    let who = invoker.clone();
    std::thread::spawn(move || {
        let _ = tx.send(curl(&who, &[&url]));
    });
    if let Ok(reply) = rx.recv_timeout(Duration::from_secs(1)) {
        panic!("a test database of a template still being built was handed out:\n{reply}");
    }
    let reply = serve.send("PUT", &format!("api/v1/templates/{slow}"), None);
    assert_eq!(reply.status, 204, "finalize:\n{reply}");
    let waited = rx
        .recv_timeout(REQUEST_LIMIT)
        .expect("the waiting request was not answered after the template was finalized");
    let t = test_db(&waited, slow);
    assert_eq!(sandbox.psql(&t.db.url, "select v from migrated"), "7");
    assert_eq!(serve.stats()["templates"], 2, "{hash} and {slow}");

    // Everything goes.
    let mut handed: Vec<String> = vec![
        seen["template"].as_str().unwrap().to_string(),
        seen["a"].as_str().unwrap().to_string(),
        seen["b"].as_str().unwrap().to_string(),
        building.name.clone(),
        t.db.name.clone(),
        t1.db.name.clone(),
        t2.db.name.clone(),
        t3.db.name.clone(),
    ];
    handed.extend(fresh.iter().map(|t| t.db.name.clone()));
    let reply = serve.send("DELETE", "api/v1/admin/templates", None);
    assert_eq!(reply.status, 204, "admin delete:\n{reply}");
    let reply = serve.get(&format!("api/v1/templates/{hash}/tests"));
    assert!(
        reply.status == 404 || reply.status == 410,
        "after the admin delete:\n{reply}"
    );
    let witness = serve.new_db();
    let mut left = Vec::new();
    let gone = wait_until(Duration::from_secs(10), || {
        left = handed
            .iter()
            .filter(|name| present(&sandbox, &witness, name) != (false, false))
            .cloned()
            .collect();
        left.is_empty()
    });
    assert!(gone, "still there after the admin delete: {left:?}");
    assert_eq!(serve.stats()["templates"], 0);
    // The hash can be built anew.
    let reply = serve.send(
        "POST",
        "api/v1/templates",
        Some(&format!(r#"{{"hash":"{hash}"}}"#)),
    );
    assert_eq!(reply.status, 200, "{reply}");
    serve.terminate();
    sandbox.assert_nothing_left("serve after SIGTERM");
}

// ---------------------------------------------------------------------------------------------
// --server: an existing PostgreSQL server

/// The existing server's superuser (over its socket, trusted) and the admin serve is given.
const SUPERUSER: &str = "fleetsuper";
const ADMIN: &str = "fleet";
const ADMIN_PASSWORD: &str = "Fleet-pw-42";

/// A PostgreSQL server the test runs itself, as the account that runs servers for the invoker,
/// listening on 127.0.0.1 with scram-sha-256 and on a socket in the sandbox (trust). Dropped,
/// it stops.
struct ExistingServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

/// The server binaries: the suite's [`test_bindir`], else those of `initdb` on PATH, else
/// `pg_config --bindir`, else the newest of /usr/lib/postgresql/*/bin.
fn server_bindir() -> PathBuf {
    if let Some(dir) = test_bindir() {
        return dir.to_path_buf();
    }
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Ok(initdb) = which_on_path("initdb")
        && let Ok(real) = std::fs::canonicalize(initdb)
        && let Some(dir) = real.parent()
        && has_server(dir)
    {
        return dir.to_path_buf();
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return dir;
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_string_lossy().parse().ok()?;
            let dir = e.path().join("bin");
            has_server(&dir).then_some((major, dir))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, dir)| dir)
        .expect("no PostgreSQL server installation (initdb and postgres) found")
}

fn which_on_path(program: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .ok_or(())
}

/// The account that runs the existing server: root's server account, else the invoker.
fn server_runner(invoker: &Invoker) -> Invoker {
    if !invoker.is_root() {
        return invoker.clone();
    }
    Invoker::of_account(&invoker.server_account().0)
}

impl ExistingServer {
    fn start(sandbox: &Sandbox) -> ExistingServer {
        let runner = server_runner(&sandbox.invoker);
        let bindir = server_bindir();
        let dir = sandbox.path("fleet");
        let init = r#"set -e
            mkdir -m 700 "$1"
            mkdir -m 755 "$1/sock"
            "$2/initdb" -D "$1/data" -U "$3" --auth-local=trust --auth-host=scram-sha-256 \
                -E UTF8 --locale=C --no-sync > "$1/initdb.log" 2>&1 || { cat "$1/initdb.log" >&2; exit 1; }"#;
        let out = run(
            runner
                .command("sh")
                .args(["-c", init, "sh"])
                .arg(&dir)
                .arg(&bindir)
                .arg(SUPERUSER),
            Duration::from_secs(120),
        );
        assert!(out.success(), "initdb of the existing server:\n{out}");
        let port = free_port();
        let start = r#"exec "$2/postgres" -D "$1/data" -p "$3" -k "$1/sock" \
            -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
            -c full_page_writes=off -c max_connections=200 > "$1/postgres.log" 2>&1"#;
        let child = runner
            .command("sh")
            .args(["-c", start, "sh"])
            .arg(&dir)
            .arg(&bindir)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start postgres");
        let mut server = ExistingServer { child, port, dir };
        let up = wait_until(Duration::from_secs(30), || {
            server.try_su("postgres", "select 1").is_some()
        });
        if !up {
            let _ = server.child.try_wait();
            panic!(
                "the existing server did not come up; its log:\n{}",
                std::fs::read_to_string(server.dir.join("postgres.log")).unwrap_or_default()
            );
        }
        server.su(
            "postgres",
            &[
                &format!(
                    "create role {ADMIN} login createdb createrole password {}",
                    literal(ADMIN_PASSWORD)
                ),
                &format!("create database {ADMIN} owner {ADMIN}"),
            ],
        );
        server
    }

    /// The URL serve gets: the admin role, which is no superuser, on its own database.
    fn admin_url(&self) -> String {
        format!(
            "postgresql://{ADMIN}:{ADMIN_PASSWORD}@127.0.0.1:{}/{ADMIN}",
            self.port
        )
    }

    fn psql(&self, db: &str) -> Command {
        let mut cmd = Invoker::current().command(client("psql"));
        cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.dir.join("sock"))
            .args(["-p", &self.port.to_string(), "-U", SUPERUSER, "-d", db]);
        cmd
    }

    fn try_su(&self, db: &str, sql: &str) -> Option<String> {
        let out = run(self.psql(db).args(["-c", sql]), PSQL_LIMIT);
        out.success()
            .then(|| out.stdout.trim_end_matches('\n').to_string())
    }

    /// Runs each statement as the superuser in database `db`; returns the output.
    fn su(&self, db: &str, statements: &[&str]) -> String {
        let mut cmd = self.psql(db);
        for sql in statements {
            cmd.args(["-c", sql]);
        }
        let out = run(&mut cmd, PSQL_LIMIT);
        assert!(out.success(), "psql as the superuser:\n{out}");
        out.stdout.trim_end_matches('\n').to_string()
    }

    /// The databases and the roles named pgtmp_*, each list sorted.
    fn pgtmp_objects(&self) -> (Vec<String>, Vec<String>) {
        let list = |sql: &str| -> Vec<String> {
            self.su("postgres", &[sql])
                .lines()
                .map(str::to_string)
                .collect()
        };
        (
            list("select datname from pg_database where datname like 'pgtmp\\_%' order by 1"),
            list("select rolname from pg_roles where rolname like 'pgtmp\\_%' order by 1"),
        )
    }

    fn exists(&self, name: &str) -> (bool, bool) {
        let name = literal(name);
        let out = self.su(
            "postgres",
            &[&format!(
                "select exists (select from pg_database where datname = {name}) || ' ' || \
                 exists (select from pg_roles where rolname = {name})"
            )],
        );
        (out.starts_with("true"), out.ends_with("true"))
    }
}

impl Drop for ExistingServer {
    fn drop(&mut self) {
        signal(self.child.id() as i32, Signal::SIGINT);
        if !wait_until(Duration::from_secs(20), || {
            self.child.try_wait().ok().flatten().is_some()
        }) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `--server` with an admin that is no superuser: /new works there (a scram LOGIN role, no
/// superuser), the state is in schema pgtmp; SIGTERM keeps what was handed out and drops the
/// pool's; a new serve knows what the first handed out (/clean works, the rest expires), and in
/// the end nothing named pgtmp_* is left.
fn server_keeps_its_records_across_a_restart(invoker: &Invoker) {
    if !have_curl(invoker) {
        return;
    }
    let sandbox = Sandbox::new(invoker);
    let server = ExistingServer::start(&sandbox);
    let url = server.admin_url();
    let ttl = 10;
    let args = ["--server", &url, "--ttl", &ttl.to_string(), "--pool", "2"];
    let serve = Serve::start(&sandbox, &args);
    assert!(
        sandbox.instance_dirs().is_empty(),
        "with --server, no cluster of its own: {:?}",
        sandbox.instance_dirs()
    );
    let handed_out = Instant::now();
    let a = serve.new_db();
    let b = serve.new_db();
    for db in [&a, &b] {
        assert_eq!(db.port, server.port, "{db:?}");
        assert_eq!(db.host, "127.0.0.1", "{db:?}");
        check_writable(&sandbox, db);
        check_role(&sandbox, db);
        assert_eq!(
            server.su(
                "postgres",
                &[&format!(
                    "select rolcanlogin || ' ' || rolsuper || ' ' || (rolpassword like 'SCRAM-SHA-256$%') \
                     from pg_authid where rolname = {}",
                    literal(&db.user)
                )]
            ),
            "true false true",
            "a LOGIN role with a scram password"
        );
    }
    check_no_entry(&sandbox, &a, &b);
    // Nor to the admin's database, where serve keeps its records.
    let out = sandbox.try_psql(&a.url_for(ADMIN), "select 1");
    assert!(
        !out.success() && out.stderr.contains("permission denied"),
        "a handed-out role should not reach the admin's database {ADMIN}:\n{out}"
    );
    assert_eq!(
        server.su(
            ADMIN,
            &["select count(*) from pg_namespace where nspname = 'pgtmp'"]
        ),
        "1",
        "the state lives in schema pgtmp of {ADMIN}"
    );
    serve.wait_ready(2);
    let (dbs, _) = server.pgtmp_objects();
    assert!(dbs.len() >= 4, "2 handed out and 2 in the pool: {dbs:?}");

    serve.terminate();
    let mut names = vec![a.name.clone(), b.name.clone()];
    names.sort();
    let mut users = vec![a.user.clone(), b.user.clone()];
    users.sort();
    assert_eq!(
        server.pgtmp_objects(),
        (names, users),
        "after SIGTERM only what was handed out stays (the pool's are dropped)"
    );
    assert_eq!(sandbox.psql(&a.url, "select name from item"), "apple");

    let serve = Serve::start(&sandbox, &args);
    let stats = serve.stats();
    // (Unless the machine was so slow that a and b have expired already.)
    if handed_out.elapsed() < Duration::from_secs(ttl - 2) {
        assert_eq!(
            stats["out"], 2,
            "the new serve knows what was handed out: {stats}"
        );
        let reply = serve.get(&format!("clean/{}", b.name));
        assert_eq!(reply.status, 200, "the new serve cleans b:\n{reply}");
        assert_eq!(server.exists(&b.name), (false, false));
    } else {
        eprintln!(
            "the restart took until {:?} after the hand-out: not checking that the new serve \
             knows the databases before they expire (ttl {ttl} s)",
            handed_out.elapsed()
        );
    }
    // a expires.
    let limit = Duration::from_secs(ttl) + Duration::from_secs(15);
    let expired = wait_until(limit.saturating_sub(handed_out.elapsed()), || {
        server.exists(&a.name) == (false, false)
    });
    assert!(
        expired,
        "{} was not dropped within {limit:?} of being handed out (ttl {ttl} s)",
        a.name
    );
    eprintln!("expired after {:?} (ttl {ttl} s)", handed_out.elapsed());
    let stats = serve.stats();
    assert_eq!(stats["out"], 0, "{stats}");
    assert!(stats["oldest_age_seconds"].is_null(), "{stats}");
    serve.terminate();
    assert_eq!(
        server.pgtmp_objects(),
        (Vec::new(), Vec::new()),
        "everything serve made is gone"
    );
}

// ---------------------------------------------------------------------------------------------
// The status page

/// `/` in headless Chromium: after two databases were handed out the page's script has filled
/// in the figures (`out` is 2) and marked the body `data-live="yes"`. The settings come from
/// the environment here.
fn status_page_in_chromium(invoker: &Invoker) {
    if !have_curl(invoker) {
        return;
    }
    if !works(invoker, "chromium", &["--version"]) {
        return missing("chromium", "Debian: apt-get install chromium");
    }
    let sandbox = Sandbox::new(invoker);
    let mut cmd = sandbox.pgtmp();
    cmd.arg("serve")
        .env("PGTMP_SERVE_LISTEN", "127.0.0.1:0")
        .env("PGTMP_SERVE_TTL", "900")
        .env("PGTMP_SERVE_POOL", "1")
        .env("PGTMP_SERVE_MAX_PER_CLIENT", "2");
    let serve = Serve::spawn(cmd, invoker);

    let stats = serve.stats();
    assert_eq!(stats["out"], 0, "{stats}");
    assert_eq!(stats["templates"], 0, "{stats}");
    assert_eq!(stats["ttl_seconds"], 900, "PGTMP_SERVE_TTL: {stats}");
    assert!(stats["ready"].is_u64(), "{stats}");
    assert!(stats["oldest_age_seconds"].is_null(), "{stats}");

    let page = serve.get("");
    assert_eq!(page.status, 200, "{page}");
    assert!(page.content_type.starts_with("text/html"), "{page}");
    for id in ["out", "templates", "ready", "oldest"] {
        assert!(
            page.body.contains(&format!("id=\"{id}\"")),
            "no element with id {id} on the page"
        );
    }
    for usage in ["curl", "Python", "Java", "Go", "CI"] {
        assert!(
            page.body.contains(usage),
            "the page says nothing of {usage}"
        );
    }

    let a = serve.new_db();
    let b = serve.new_db();
    serve
        .get("new")
        .faitout_error(400, "TooManyConnectionException");
    let stats = serve.stats();
    assert_eq!(stats["out"], 2, "{stats}");
    assert!(stats["oldest_age_seconds"].is_number(), "{stats}");

    let mut chromium = invoker.command("chromium");
    chromium
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-proxy-server",
            "--virtual-time-budget=5000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            sandbox.path("chromium").display()
        ))
        .arg("--dump-dom")
        .arg(&serve.base);
    let out = run(&mut chromium, Duration::from_secs(60));
    assert!(out.success(), "chromium:\n{out}");
    let dom = &out.stdout;
    let body = dom
        .find("<body")
        .map(|at| &dom[at..at + dom[at..].find('>').unwrap_or(0)])
        .unwrap_or_else(|| panic!("no body in the page:\n{dom}"));
    assert!(
        body.contains("data-live=\"yes\""),
        "the script did not run to its first update: {body}"
    );
    assert_eq!(element_text(dom, "out"), "2", "the figure out:\n{dom}");
    for db in [&a, &b] {
        assert_eq!(sandbox.psql(&db.url, "select current_database()"), db.name);
    }
    serve.terminate();
}

/// The text inside the element with `id` in a dumped DOM.
fn element_text(dom: &str, id: &str) -> String {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element {id}"));
    let rest = &dom[at..];
    let start = rest.find('>').expect("the tag ends") + 1;
    let end = rest[start..].find('<').map_or(rest.len(), |e| start + e);
    rest[start..end].trim().to_string()
}

// ---------------------------------------------------------------------------------------------
// Expiry and signals

/// `--ttl 2`: a database and its role are dropped in time. SIGTERM: exit 0, the own cluster's
/// processes and directory gone. SIGKILL: the cluster goes all the same (its watchdog).
fn expiry_sigterm_and_sigkill(invoker: &Invoker) {
    if !have_curl(invoker) {
        return;
    }
    let sandbox = Sandbox::new(invoker);
    let serve = Serve::start(&sandbox, &["--ttl", "2", "--pool", "1"]);
    let dirs = sandbox.instance_dirs();
    assert_eq!(dirs.len(), 1, "one cluster of its own: {dirs:?}");
    let dir = dirs[0].clone();
    let a = serve.new_db();
    let handed_out = Instant::now();
    check_writable(&sandbox, &a);
    let stats = serve.stats();
    assert_eq!(stats["ttl_seconds"], 2, "{stats}");
    assert!(stats["oldest_age_seconds"].is_number(), "{stats}");
    let limit = Duration::from_secs(2 + 10);
    let unreachable = wait_until(limit, || !sandbox.try_psql(&a.url, "select 1").success());
    assert!(unreachable, "{} still connects after {limit:?}", a.name);
    // Seen from a fresh database (which itself lives 2 s: a failed look is looked at again).
    let gone = wait_until(Duration::from_secs(10), || {
        let witness = serve.new_db();
        let name = literal(&a.name);
        let out = sandbox.try_psql(
            &witness.url,
            &format!(
                "select exists (select from pg_database where datname = {name}) \
                 or exists (select from pg_roles where rolname = {name})"
            ),
        );
        serve.get(&format!("clean/{}", witness.name));
        out.success() && out.stdout.trim() == "f"
    });
    assert!(gone, "{}: its database or role is still there", a.name);
    eprintln!("expired after {:?} (ttl 2 s)", handed_out.elapsed());
    let stats = serve.stats();
    assert_eq!(stats["out"], 0, "{stats}");
    assert!(stats["oldest_age_seconds"].is_null(), "{stats}");

    let servers = procs_referencing(&dir);
    assert!(
        !servers.is_empty(),
        "no process of the own cluster in {}",
        dir.display()
    );
    serve.terminate();
    assert!(
        wait_until(Duration::from_secs(10), || !dir.exists()),
        "the own cluster's directory {} is still there after SIGTERM",
        dir.display()
    );
    sandbox.assert_no_process(&dir, "the own cluster after SIGTERM");
    for p in &servers {
        assert!(!alive(p.pid), "still running after SIGTERM: {p}");
    }

    let serve = Serve::start(&sandbox, &["--pool", "1"]);
    let dirs = sandbox.instance_dirs();
    assert_eq!(dirs.len(), 1, "one cluster of its own: {dirs:?}");
    let dir = dirs[0].clone();
    let b = serve.new_db();
    check_writable(&sandbox, &b);
    let (status, _) = serve.stop(Signal::SIGKILL, Duration::from_secs(10));
    assert_eq!(status.signal(), Some(9), "{status}");
    let killed = Instant::now();
    let limit = Duration::from_secs(10) + SLACK + Duration::from_secs(5);
    let gone = wait_until(limit, || {
        !dir.exists() && procs_referencing(&dir).is_empty()
    });
    assert!(
        gone,
        "the own cluster in {} outlived the killed serve by {limit:?}: {:?}",
        dir.display(),
        procs_referencing(&dir)
    );
    eprintln!("the cluster went {:?} after SIGKILL", killed.elapsed());
    sandbox.assert_nothing_left("after SIGKILL of serve");
}

// ---------------------------------------------------------------------------------------------
// Bad usage

/// Refused at once with one `pgtmp: error:` line and nothing left running: a non-loopback
/// address without --token (from the option or the environment), a bad --listen, --ttl 0 or
/// not a number, an unreachable --server.
fn refuses_bad_usage(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let unreachable = format!(
        "postgresql://{ADMIN}:{ADMIN_PASSWORD}@127.0.0.1:{}/{ADMIN}",
        free_port()
    );
    let loopback = ["--listen", "127.0.0.1:0"];
    // The arguments, the environment, and what the error must name.
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (vec!["--listen", "0.0.0.0:0"], vec![], Some("--token")),
        (
            vec![],
            vec![("PGTMP_SERVE_LISTEN", "0.0.0.0:0")],
            Some("--token"),
        ),
        (vec!["--listen", "nonsense"], vec![], Some("nonsense")),
        (vec!["--listen", "127.0.0.1:99999"], vec![], Some("99999")),
        ([&loopback[..], &["--ttl", "0"]].concat(), vec![], None),
        (
            [&loopback[..], &["--ttl", "abc"]].concat(),
            vec![],
            Some("abc"),
        ),
        (
            [&loopback[..], &["--server", unreachable.as_str()]].concat(),
            vec![],
            None,
        ),
        (
            [&loopback[..], &["--server", "nonsense"]].concat(),
            vec![],
            Some("nonsense"),
        ),
        (loopback.to_vec(), vec![("PGTMP_SERVE_TTL", "0")], None),
    ];
    for (args, env, named) in cases {
        let mut cmd = sandbox.pgtmp();
        cmd.arg("serve").args(&args);
        for (key, value) in &env {
            cmd.env(key, value);
        }
        let out = run(&mut cmd, Duration::from_secs(30));
        let what = format!("pgtmp serve {args:?} with {env:?}");
        assert!(
            !out.success() && out.code().is_some(),
            "{what} should fail with an exit code:\n{out}"
        );
        assert!(out.stdout.is_empty(), "{what}: nothing on stdout:\n{out}");
        let lines = out.stderr_lines();
        assert!(
            lines.len() == 1 && lines[0].starts_with("pgtmp: error: "),
            "{what}: one line on stderr starting with 'pgtmp: error: ':\n{out}"
        );
        if let Some(named) = named {
            assert!(
                lines[0].contains(named),
                "{what} should name {named}: {}",
                lines[0]
            );
        }
        sandbox.assert_nothing_left(&what);
    }
}

// ---------------------------------------------------------------------------------------------
// The CLI as a client: --remote

/// `pgtmp` with `--remote` through PGTMP_REMOTE, with no PostgreSQL program on PATH (and
/// none named by PGTMP_BINDIR).
fn remote_pgtmp(sandbox: &Sandbox, serve: &Serve, empty_path: &Path) -> Command {
    let mut cmd = sandbox.pgtmp();
    cmd.env_remove("PGTMP_BINDIR")
        .env("PATH", empty_path)
        .env("PGTMP_REMOTE", serve.api(""));
    cmd
}

/// `--remote`: a start, every format, `-f` files loaded once for every client, clone, stop and
/// run, all without a PostgreSQL program; options a served database cannot honour, a psql
/// meta-command in a file and --remote on another command are refused, creating nothing.
fn remote_cli_needs_no_postgres(invoker: &Invoker) {
    if !have_curl(invoker) {
        return;
    }
    let sandbox = Sandbox::new(invoker);
    let serve = Serve::start(&sandbox, &["--pool", "1"]);
    let empty = sandbox.path("empty-path");
    std::fs::create_dir(&empty).unwrap();
    let pgtmp = || remote_pgtmp(&sandbox, &serve, &empty);
    let ok = |cmd: &mut Command, what: &str| -> String {
        let out = run(cmd, REQUEST_LIMIT);
        assert!(out.success(), "{what}:\n{out}");
        assert!(out.stderr.is_empty(), "{what}: nothing on stderr:\n{out}");
        out.stdout
    };

    let url = ok(&mut pgtmp(), "pgtmp --remote");
    let db = Db::from_url(url.trim());
    assert!(db.name.starts_with("pgtmp_"), "{url}");
    check_writable(&sandbox, &db);
    let json: Value = serde_json::from_str(&ok(pgtmp().args(["-F", "json"]), "-F json")).unwrap();
    for key in [
        "url", "dsn", "jdbc", "host", "port", "user", "password", "database",
    ] {
        assert!(!json[key].is_null(), "-F json has {key}: {json}");
    }
    let jdbc = ok(pgtmp().args(["-F", "jdbc"]), "-F jdbc");
    assert!(jdbc.starts_with("jdbc:postgresql://127.0.0.1:"), "{jdbc}");
    let env = ok(pgtmp().args(["-F", "env"]), "-F env");
    for var in [
        "DATABASE_URL",
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGPASSWORD",
        "PGDATABASE",
    ] {
        assert!(env.contains(&format!("export {var}=")), "{env}");
    }

    let schema = invokers_file(
        &sandbox,
        "schema.sql",
        "create table items (v int);\ninsert into items values (41), (1);\n",
    );
    let schema = schema.to_str().unwrap();
    let first = Db::from_url(ok(pgtmp().args(["-f", schema]), "-f").trim());
    let second = Db::from_url(ok(pgtmp().args(["-f", schema]), "-f again").trim());
    assert_ne!(first.name, second.name);
    for db in [&first, &second] {
        assert_eq!(sandbox.psql(&db.url, "select sum(v) from items"), "42");
    }
    let built = serve
        .log_lines()
        .iter()
        .filter(|l| l.method == "POST" && l.path == "/api/v1/templates" && l.status == 200)
        .count();
    assert_eq!(built, 1, "the files were loaded once:\n{}", serve.stderr());

    let copy = Db::from_url(ok(pgtmp().args(["clone", &first.url]), "clone").trim());
    assert_ne!(copy.name, first.name);
    assert_eq!(sandbox.psql(&copy.url, "select sum(v) from items"), "42");
    ok(pgtmp().args(["stop", &copy.url]), "stop");
    assert!(
        !sandbox.try_psql(&copy.url, "select 1").success(),
        "{} is dropped",
        copy.name
    );

    let mut psql = client("psql");
    if psql.is_relative() {
        psql = which_on_path("psql").expect("psql on PATH");
    }
    let script = format!(
        "{} -X -At -c 'select current_user = current_database()' && exit 3",
        psql.display()
    );
    let out = run(
        pgtmp().args(["run", "--", "/bin/sh", "-c", &script]),
        REQUEST_LIMIT,
    );
    assert_eq!(out.code(), Some(3), "run passes on CMD's status:\n{out}");
    assert_eq!(
        out.stdout.trim(),
        "t",
        "CMD got PG* for its database:\n{out}"
    );

    let out_before = serve.stats()["out"].clone();
    let meta = invokers_file(&sandbox, "meta.sql", "select 1;\n\\i other.sql\n");
    for (args, named) in [
        (vec!["-k"], "-k"),
        (vec!["-w", "5"], "-w"),
        (vec!["-f", meta.to_str().unwrap()], "line 2"),
        (vec!["list"], "--remote"),
        (vec!["stop", "--all"], "--all"),
    ] {
        let out = run(pgtmp().args(&args), REQUEST_LIMIT);
        assert_eq!(out.code(), Some(2), "{args:?} is refused:\n{out}");
        let lines = out.stderr_lines();
        assert!(
            lines.len() == 1 && lines[0].starts_with("pgtmp: error: ") && lines[0].contains(named),
            "{args:?}: one error line naming {named}:\n{out}"
        );
    }
    let out = run(
        pgtmp().env("PGTMP_REMOTE", "ftp://127.0.0.1/"),
        REQUEST_LIMIT,
    );
    assert_eq!(out.code(), Some(2), "a remote that is no serve URL:\n{out}");
    assert_eq!(
        serve.stats()["out"],
        out_before,
        "the refusals handed out nothing"
    );
    serve.terminate();
}

/// Two serve processes on one server: a template begun through one is finalized and copied
/// through the other, a database one handed out is dropped through the other; stopping one
/// drops its own pool entries only.
fn two_serves_share_one_server(invoker: &Invoker) {
    if !have_curl(invoker) {
        return;
    }
    let sandbox = Sandbox::new(invoker);
    let server = ExistingServer::start(&sandbox);
    let url = server.admin_url();
    let a = Serve::start(&sandbox, &["--server", &url, "--pool", "1"]);
    let b = Serve::start(&sandbox, &["--server", &url, "--pool", "1"]);

    let begun = a.send("POST", "api/v1/templates", Some(r#"{"hash":"shared"}"#));
    assert_eq!(begun.status, 200, "initialize through a:\n{begun}");
    let template = Db::from_config(&begun.json()["database"]["config"]);
    sandbox.psql(
        &template.url,
        "create table t (v int); insert into t values (7)",
    );
    let again = b.send("POST", "api/v1/templates", Some(r#"{"hash":"shared"}"#));
    assert_eq!(again.status, 423, "b knows a's template:\n{again}");
    let done = b.send("PUT", "api/v1/templates/shared", None);
    assert_eq!(done.status, 204, "finalize through b:\n{done}");
    for serve in [&a, &b] {
        let reply = serve.get("api/v1/templates/shared/tests");
        assert_eq!(reply.status, 200, "a copy:\n{reply}");
        let copy = Db::from_config(&reply.json()["database"]["config"]);
        assert_eq!(sandbox.psql(&copy.url, "select v from t"), "7");
    }
    let handed = a.new_db();
    let dropped = b.get(&format!("clean/{}", handed.name));
    assert_eq!(dropped.status, 200, "b drops what a handed out:\n{dropped}");
    assert_eq!(server.exists(&handed.name), (false, false));

    // The pools are the fleet's: a ready database is made by one of them, and stopping a
    // serve drops the ones it made, nobody else's.
    let ready_by = || -> Vec<(String, String)> {
        server
            .su(
                ADMIN,
                &["select maker || ' ' || name from pgtmp.serve_databases \
                   where state = 'ready' order by 1"],
            )
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(maker, name)| (maker.to_string(), name.to_string()))
            .collect()
    };
    let of = |serve: &Serve| format!(":{}:", serve.pid());
    assert!(
        wait_until(Duration::from_secs(60), || ready_by().len() >= 2),
        "the blank pool and the template's fill: {:?}",
        ready_by()
    );
    let (a_mark, b_mark) = (of(&a), of(&b));
    let before = ready_by();
    a.terminate();
    let after = ready_by();
    assert!(
        after.iter().all(|(maker, _)| !maker.contains(&a_mark)),
        "a's ready databases went with it: {after:?}"
    );
    for entry in before.iter().filter(|(maker, _)| maker.contains(&b_mark)) {
        assert!(after.contains(entry), "b's {entry:?} stays: {after:?}");
    }
    b.terminate();
}

// ---------------------------------------------------------------------------------------------
// IntegreSQL's Python client

/// The client, pinned: it sends the hash as a form body, as IntegreSQL takes it too.
const INTEGRESQL_PYTHON: &str = "integresql-client-python==0.9.2";

/// Two test runs against one serve, each with a client of its own (as two runners are): the
/// first builds the template from the directory of migrations, the second finds it built
/// (423); each reads the migrated row from its own copy and gives it back unmodified.
const INTEGRESQL_PY: &str = r#"
import sys, psycopg2
from integresql_client_python import IntegreSQL
base, migrations = sys.argv[1], sys.argv[2]
for run in range(2):
    with IntegreSQL(migrations, base_url=base + "api") as tpl:
        with tpl.initialize() as dbinfo:
            if dbinfo:
                db = psycopg2.connect(str(dbinfo))
                db.autocommit = True
                db.cursor().execute(open(migrations + "/001.sql").read())
                db.close()
                print("migrated")
        test = tpl.get_database()
        with test as info:
            db = psycopg2.connect(str(info))
            cur = db.cursor()
            cur.execute("select name from pilots")
            print("read", info.name, cur.fetchone()[0])
            db.close()
            test.mark_unmodified(info)
"#;

/// A virtual environment with the client (psycopg2 from the system's packages), made once per
/// test process in the shared directory; its python. Err says what is missing.
fn integresql_python() -> Result<PathBuf, (&'static str, &'static str)> {
    static PYTHON: OnceLock<Result<PathBuf, (&str, &str)>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let venv = shared_dir().join("serve-integresql-python");
            let made = run(
                Command::new("/usr/bin/python3")
                    .args(["-m", "venv", "--system-site-packages"])
                    .arg(&venv),
                Duration::from_secs(120),
            );
            if !made.success() {
                return Err(("python3 -m venv", "Debian: apt-get install python3-venv"));
            }
            let pip = run(
                Command::new(venv.join("bin/pip"))
                    .args(["install", "-q", "--disable-pip-version-check"])
                    .arg(INTEGRESQL_PYTHON),
                Duration::from_secs(300),
            );
            assert!(
                pip.success(),
                "pip install {INTEGRESQL_PYTHON} failed:\n{pip}"
            );
            Ok(venv.join("bin/python"))
        })
        .clone()
}

/// IntegreSQL's Python client, unchanged, against serve.
fn integresql_python_client(invoker: &Invoker) {
    let python = match integresql_python() {
        Ok(python) => python,
        Err((program, install)) => return missing(program, install),
    };
    let sandbox = Sandbox::new(invoker);
    let serve = Serve::start(&sandbox, &["--pool", "1"]);
    let migrations = sandbox.path("migrations");
    std::fs::create_dir(&migrations).unwrap();
    let sql = "create table pilots (name text); insert into pilots values ('amelia');\n";
    std::fs::write(migrations.join("001.sql"), sql).unwrap();
    let script = sandbox.path("integresql.py");
    std::fs::write(&script, INTEGRESQL_PY).unwrap();
    for path in [&migrations, &migrations.join("001.sql"), &script] {
        std::os::unix::fs::chown(path, Some(invoker.uid), Some(invoker.gid)).unwrap();
    }
    let out = run(
        invoker
            .command(&python)
            .arg(&script)
            .arg(&serve.base)
            .arg(&migrations),
        REQUEST_LIMIT,
    );
    assert!(
        out.success(),
        "the Python client against serve:\n{out}\n{}",
        serve.stderr()
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "migrated once, read twice:\n{out}");
    assert_eq!(lines[0], "migrated", "{out}");
    for line in &lines[1..] {
        assert!(
            line.starts_with("read pgtmp_tpl_") && line.ends_with(" amelia"),
            "{out}"
        );
    }
    let logged = serve.log_lines();
    let count = |method: &str, prefix: &str, status: u16| {
        logged
            .iter()
            .filter(|l| l.method == method && l.path.starts_with(prefix) && l.status == status)
            .count()
    };
    assert_eq!(
        count("POST", "/api/v1/templates", 200),
        1,
        "{}",
        serve.stderr()
    );
    assert_eq!(
        count("POST", "/api/v1/templates", 423),
        1,
        "{}",
        serve.stderr()
    );
    assert_eq!(
        count("DELETE", "/api/v1/templates/", 204),
        2,
        "{}",
        serve.stderr()
    );
    serve.terminate();
}
