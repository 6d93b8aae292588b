//! Real clients: the printed uri, dsn and jdbc forms work from psql, from Python's psycopg
//! (Debian: python3-psycopg2 or python3-psycopg) and from Java's JDBC driver (Debian:
//! libpostgresql-jdbc-java, with a JDK for `java File.java`).
//!
//! In CI (CI=true) every client must be there: .ci/run installs them. Elsewhere a missing
//! client is reported as a skip.

#[macro_use]
mod common;

use common::*;
use std::path::PathBuf;
use std::process::{Command, Stdio};

both_invokers!(
    psql_takes_uri_and_dsn,
    psycopg_takes_uri_and_dsn,
    jdbc_takes_the_jdbc_url
);

/// The cluster forms to try: uri and dsn over the socket and over TCP.
fn uri_and_dsn(sandbox: &Sandbox) -> Vec<(String, String)> {
    let mut forms = Vec::new();
    for tcp in [false, true] {
        for format in ["uri", "dsn"] {
            let mut args = vec!["-w", "60", "-F", format];
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
    let jdbc = sandbox.start(&["-t", "-w", "60", "-F", "jdbc"]);
    let mut cmd = invoker.command("java");
    cmd.arg("-cp").arg(&jar).arg(&probe).arg(&jdbc);
    let out = run(&mut cmd, PGTMP_LIMIT);
    assert!(out.success(), "JDBC with {jdbc}:\n{out}");
    assert_eq!(out.stdout, format!("{} test\n", invoker.name), "{out}");
}
