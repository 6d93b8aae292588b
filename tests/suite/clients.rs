//! Real clients: the printed uri, dsn and jdbc forms work from psql, from Python's psycopg
//! (Debian: python3-psycopg2 or python3-psycopg), from Java's JDBC driver (Debian:
//! libpostgresql-jdbc-java, with a JDK for `java File.java`), from Go's lib/pq and pgx
//! (Debian: golang-go, golang-github-lib-pq-dev, golang-github-jackc-pgx-v4-dev) and from
//! node-postgres (npm's `pg`, installed by the test). A TCP cluster serves TLS; a socket one
//! does not need it.
//!
//! In CI (CI=true) every client must be there: .ci/run installs them. Elsewhere a missing
//! client is reported as a skip.

use crate::common::*;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

both_invokers!(
    psql_takes_uri_and_dsn,
    psycopg_takes_uri_and_dsn,
    jdbc_takes_the_jdbc_url,
    tcp_serves_tls_and_the_socket_needs_none,
    go_drivers_take_the_tcp_url,
    node_postgres_takes_the_tcp_url,
);

/// What every TLS probe selects: who and where, and whether the session is encrypted.
const WHO_AND_TLS: &str = "select current_user || ' ' || current_database() || ' ' || \
     case when ssl then 'tls' else 'plain' end from pg_stat_ssl where pid = pg_backend_pid()";

/// The cluster forms to try: uri and dsn over the socket and over TCP.
fn uri_and_dsn(sandbox: &Sandbox) -> Vec<(String, String)> {
    let mut forms = Vec::new();
    for tcp in [false, true] {
        for format in ["uri", "dsn"] {
            let mut args = vec!["-w", UNTIL_STOPPED, "-F", format];
            if tcp {
                args.push("-t");
            }
            let printed = sandbox.start(&args);
            forms.push((format!("{format}{}", if tcp { " -t" } else { "" }), printed));
        }
    }
    forms
}

fn psql_takes_uri_and_dsn(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    for (what, printed) in uri_and_dsn(&sandbox) {
        assert_eq!(
            sandbox.psql(&printed, "select current_user || ' ' || current_database()"),
            format!("{} test", invoker.name),
            "psql with the {what} form {printed}"
        );
    }
}

/// A Python that can import psycopg (3) or psycopg2. Debian's packages are for its own
/// /usr/bin/python3, which comes first: a python3 earlier on PATH may be another one.
fn python(invoker: &Invoker) -> Option<String> {
    ["/usr/bin/python3", "python3"].into_iter().find_map(|python| {
        let ok = invoker
            .command(python)
            .args(["-c", "import importlib.util as u, sys; sys.exit(not (u.find_spec('psycopg') or u.find_spec('psycopg2')))"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| python.to_string())
    })
}

const PSYCOPG_PROBE: &str = r#"
import sys
try:
    import psycopg as driver
except ImportError:
    import psycopg2 as driver
conn = driver.connect(sys.argv[1])
cur = conn.cursor()
cur.execute("select current_user || ' ' || current_database()")
print(cur.fetchone()[0])
conn.close()
"#;

fn psycopg_takes_uri_and_dsn(invoker: &Invoker) {
    let Some(python) = python(invoker) else {
        return missing(
            "Python's psycopg",
            "Debian: apt-get install python3-psycopg2",
        );
    };
    let sandbox = Sandbox::new(invoker);
    for (what, printed) in uri_and_dsn(&sandbox) {
        let mut cmd = invoker.command(&python);
        cmd.args(["-c", PSYCOPG_PROBE, &printed]);
        let out = run(&mut cmd, PSQL_LIMIT);
        assert!(out.success(), "psycopg with the {what} form:\n{out}");
        assert_eq!(out.stdout, format!("{} test\n", invoker.name), "{out}");
    }
}

const JDBC_PROBE: &str = r#"
import java.sql.*;

public class Probe {
    public static void main(String[] args) throws Exception {
        try (Connection c = DriverManager.getConnection(args[0]);
             Statement s = c.createStatement();
             ResultSet r = s.executeQuery("select current_user || ' ' || current_database()")) {
            r.next();
            System.out.println(r.getString(1));
        }
    }
}
"#;

/// The PostgreSQL JDBC driver as Debian installs it.
fn jdbc_jar() -> Option<PathBuf> {
    ["/usr/share/java/postgresql.jar"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn java_compiles_sources() -> bool {
    // `java File.java` needs the compiler of a JDK, which a bare JRE lacks.
    Command::new("javac")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn jdbc_takes_the_jdbc_url(invoker: &Invoker) {
    let Some(jar) = jdbc_jar() else {
        return missing(
            "the PostgreSQL JDBC driver",
            "Debian: apt-get install libpostgresql-jdbc-java",
        );
    };
    if !java_compiles_sources() {
        return missing("a JDK", "Debian: apt-get install default-jdk-headless");
    }
    let sandbox = Sandbox::new(invoker);
    let probe = sandbox.path("Probe.java");
    std::fs::write(&probe, JDBC_PROBE).unwrap();
    let jdbc = sandbox.start(&["-t", "-w", UNTIL_STOPPED, "-F", "jdbc"]);
    let mut cmd = invoker.command("java");
    cmd.arg("-cp").arg(&jar).arg(&probe).arg(&jdbc);
    let out = run(&mut cmd, PGTMP_LIMIT);
    assert!(out.success(), "JDBC with {jdbc}:\n{out}");
    assert_eq!(out.stdout, format!("{} test\n", invoker.name), "{out}");
}

/// The TCP URL as printed, with `query` (`sslmode=...`) added.
fn with_query(url: &str, query: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{query}")
}

fn tcp_serves_tls_and_the_socket_needs_none(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let who = format!("{} test", invoker.name);
    let json = sandbox.start(&["-t", "-w", UNTIL_STOPPED, "-F", "json"]);
    let url = json_field(&json, "url");
    // psql's default (prefer) picks TLS; require insists on it; disable still connects.
    for (query, expected) in [
        (None, "tls"),
        (Some("sslmode=require"), "tls"),
        (Some("sslmode=disable"), "plain"),
    ] {
        let url = query.map_or(url.clone(), |q| with_query(&url, q));
        assert_eq!(
            sandbox.psql(&url, WHO_AND_TLS),
            format!("{who} {expected}"),
            "{url}"
        );
    }
    // The certificate is the server's own: a client that trusts it verifies the host too.
    let cert = format!("{}/server.crt", json_field(&json, "data_dir"));
    let verified = with_query(&url, &format!("sslmode=verify-full&sslrootcert={cert}"));
    assert_eq!(sandbox.psql(&verified, WHO_AND_TLS), format!("{who} tls"));
    // A socket start works as before, without TLS.
    let socket = sandbox.start(&["-w", UNTIL_STOPPED]);
    assert_eq!(sandbox.psql(&socket, WHO_AND_TLS), format!("{who} plain"));
    // The user's -o wins over pgtmp's ssl=on.
    let off = sandbox.start(&["-t", "-w", UNTIL_STOPPED, "-o", "-c ssl=off"]);
    let out = sandbox.try_psql(&with_query(&off, "sslmode=require"), "select 1");
    assert!(!out.success(), "ssl=off still served TLS:\n{out}");
    assert_eq!(sandbox.psql(&off, WHO_AND_TLS), format!("{who} plain"));
}

/// The value of the string field `name` in a JSON object printed by pgtmp.
fn json_field(json: &str, name: &str) -> String {
    let value: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|err| panic!("{err}: {json}"));
    value[name]
        .as_str()
        .unwrap_or_else(|| panic!("no string {name} in {json}"))
        .to_string()
}

/// Where Debian's golang-*-dev packages put their sources (a GOPATH without modules).
const GOPATH: &str = "/usr/share/gocode";

const GO_PROBE: &str = r#"
package main

import (
	"context"
	"database/sql"
	"fmt"
	"os"

	"github.com/jackc/pgx/v4"
	_ "github.com/lib/pq"
)

func main() {
	line, err := probe(os.Args[1], os.Args[2], os.Args[3])
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	fmt.Println(line)
}

func probe(driver, url, query string) (line string, err error) {
	switch driver {
	case "pq":
		db, err := sql.Open("postgres", url)
		if err != nil {
			return "", err
		}
		defer db.Close()
		err = db.QueryRow(query).Scan(&line)
		return line, err
	case "pgx":
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			return "", err
		}
		defer conn.Close(ctx)
		err = conn.QueryRow(ctx, query).Scan(&line)
		return line, err
	}
	return "", fmt.Errorf("unknown driver %q", driver)
}
"#;

/// The Go probe, built once per test process (Go builds are slow) into the shared directory
/// both invokers can run it from; Go's build cache persists in the target directory. Err says
/// what is missing.
fn go_probe() -> Result<PathBuf, (&'static str, &'static str)> {
    static PROBE: std::sync::OnceLock<Result<PathBuf, (&str, &str)>> = std::sync::OnceLock::new();
    PROBE.get_or_init(build_go_probe).clone()
}

fn build_go_probe() -> Result<PathBuf, (&'static str, &'static str)> {
    let go = Command::new("go")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !go.is_ok_and(|s| s.success()) {
        return Err(("Go", "Debian: apt-get install golang-go"));
    }
    let source = |package: &str| PathBuf::from(GOPATH).join("src").join(package).is_dir();
    if !source("github.com/lib/pq") {
        return Err((
            "Go's lib/pq",
            "Debian: apt-get install golang-github-lib-pq-dev",
        ));
    }
    if !source("github.com/jackc/pgx/v4") {
        return Err((
            "Go's pgx",
            "Debian: apt-get install golang-github-jackc-pgx-v4-dev",
        ));
    }
    let dir = shared_dir().join("go-probe");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("main.go"), GO_PROBE).unwrap();
    let binary = shared_dir().join("go-probe-bin");
    let mut build = Command::new("go");
    build
        .args(["build", "-o"])
        .arg(&binary)
        .arg("main.go")
        .current_dir(&dir)
        .env("GOPATH", GOPATH)
        .env("GO111MODULE", "off")
        .env("GOFLAGS", "")
        .env("CGO_ENABLED", "0")
        .env(
            "GOCACHE",
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go-cache"),
        );
    let out = run(&mut build, Duration::from_secs(600));
    assert!(out.success(), "building the Go probe failed:\n{out}");
    Ok(binary)
}

fn go_drivers_take_the_tcp_url(invoker: &Invoker) {
    let probe = match go_probe() {
        Ok(probe) => probe,
        Err((program, install)) => return missing(program, install),
    };
    let sandbox = Sandbox::new(invoker);
    let url = sandbox.start(&["-t", "-w", UNTIL_STOPPED]);
    let who = format!("{} test", invoker.name);
    // lib/pq asks for sslmode=require unless told otherwise, pgx for prefer: both get TLS
    // from the URL as printed. Asking for none works too.
    for (driver, url, expected) in [
        ("pq", url.clone(), "tls"),
        ("pgx", url.clone(), "tls"),
        ("pq", with_query(&url, "sslmode=disable"), "plain"),
        ("pgx", with_query(&url, "sslmode=require"), "tls"),
    ] {
        let mut cmd = invoker.command(&probe);
        cmd.args([driver, &url, WHO_AND_TLS]);
        let out = run(&mut cmd, PSQL_LIMIT);
        assert!(out.success(), "Go's {driver} with {url}:\n{out}");
        assert_eq!(out.stdout, format!("{who} {expected}\n"), "{driver}: {out}");
    }
}

/// The node-postgres release the test installs.
const NODE_POSTGRES: &str = "pg@8.23.1";

const NODE_PROBE: &str = r#"
const { Client } = require('pg');
const [url, query, tls] = process.argv.slice(2);
const client = new Client({ connectionString: url, ssl: tls === 'tls' ? { rejectUnauthorized: false } : undefined });
client.connect()
  .then(() => client.query({ text: query, rowMode: 'array' }))
  .then((result) => { console.log(result.rows[0][0]); return client.end(); })
  .catch((err) => { console.error(err.message); process.exit(1); });
"#;

/// node-postgres, installed once per test process with npm into the shared directory, from
/// npm's cache in the target directory when it has it. Err says what is missing.
fn node_probe() -> Result<PathBuf, (&'static str, &'static str)> {
    static PROBE: std::sync::OnceLock<Result<PathBuf, (&str, &str)>> = std::sync::OnceLock::new();
    PROBE.get_or_init(install_node_probe).clone()
}

fn install_node_probe() -> Result<PathBuf, (&'static str, &'static str)> {
    let dir = npm_install("node-probe", &[NODE_POSTGRES])?;
    let probe = dir.join("probe.js");
    std::fs::write(&probe, NODE_PROBE).unwrap();
    Ok(probe)
}

fn node_postgres_takes_the_tcp_url(invoker: &Invoker) {
    let probe = match node_probe() {
        Ok(probe) => probe,
        Err((program, install)) => return missing(program, install),
    };
    let sandbox = Sandbox::new(invoker);
    let url = sandbox.start(&["-t", "-w", UNTIL_STOPPED]);
    let who = format!("{} test", invoker.name);
    // node-postgres uses no TLS unless asked; asked, it gets it.
    for (tls, expected) in [("plain", "plain"), ("tls", "tls")] {
        let mut cmd = invoker.command("node");
        cmd.arg(&probe).args([&url, WHO_AND_TLS, tls]);
        let out = run(&mut cmd, PSQL_LIMIT);
        assert!(out.success(), "node-postgres ({tls}) with {url}:\n{out}");
        assert_eq!(out.stdout, format!("{who} {expected}\n"), "{tls}: {out}");
    }
}
