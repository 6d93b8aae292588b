//! Callers that read pgtmp's stdout whole and do not strip it: Ruby's `%x()` with ruby-pg (the
//! example of pg_tmp's own documentation), Python's `subprocess.check_output` with psycopg2 and
//! Java's `ProcessBuilder` + `readAllBytes()` with JDBC. Off a terminal the one-line forms end
//! without a newline, as pg_tmp's URL does, so what they read is exactly the URL; on a
//! terminal the line ends with a newline.
//!
//! Debian packages: ruby-pg, python3-psycopg2, libpostgresql-jdbc-java and a JDK; .ci/run
//! installs them, and in CI (CI=true) a missing one fails instead of skipping.

use crate::common::*;

both_invokers!(
    ruby_percent_x,
    python_check_output,
    java_read_all_bytes,
    a_terminal_gets_a_newline,
    guide_pytest_fixture_runs_from_anywhere,
);

/// Runs a caller as the invoker with pgtmp's environment (`$PGTMP` is the binary) and checks
/// that each URL it obtained connected: one `USER test` line per URL (a clone, `test_...`,
/// counts as `test`).
fn check_caller(sandbox: &Sandbox, mut cmd: std::process::Command, urls: usize, what: &str) {
    let out = run(&mut cmd, PGTMP_LIMIT);
    assert!(out.success(), "{what}:\n{out}");
    let expected = format!("{} test\n", sandbox.invoker.name).repeat(urls);
    assert_eq!(out.stdout, expected, "{what}:\n{out}");
}

/// pg_tmp's documented use, `url = %x( pg_tmp -t )` then `PG.connect(url)`, for the TCP and
/// the socket URL, a DSN, and a clone's URL.
const RUBY_CALLER: &str = r##"
require "pg"
pgtmp = ENV.fetch("PGTMP")
def take(command)
  out = %x( #{command} )
  raise "#{command} failed" unless $?.success?
  raise "#{command} printed #{out.inspect}, ending in whitespace" if out != out.rstrip
  out
end
def check(url)
  conn = PG.connect(url)
  puts conn.exec("select current_user || ' ' || split_part(current_database(), '_', 1)").getvalue(0, 0)
  conn.close
end
url = take("#{pgtmp} -t -w 60")
check(url)
socket = take("#{pgtmp} -w 60")
check(socket)
check(take("#{pgtmp} -w 60 -F dsn"))
check(take("#{pgtmp} clone '#{socket}'"))
"##;

fn ruby_percent_x(invoker: &Invoker) {
    if !works(invoker, "ruby", &["-e", "require 'pg'"]) {
        return missing("Ruby's pg driver", "Debian: apt-get install ruby-pg");
    }
    let sandbox = Sandbox::new(invoker);
    let mut cmd = sandbox.tool("ruby");
    cmd.args(["-e", RUBY_CALLER]);
    check_caller(&sandbox, cmd, 4, "ruby %x() then PG.connect");
}

/// `check_output([...]).decode()` handed to psycopg2.connect as it is: socket and TCP URLs, a
/// DSN, and the URLs of `schema` and `clone`.
const PYTHON_CALLER: &str = r#"
import os, subprocess, psycopg2
pgtmp = os.environ["PGTMP"]
def take(*args):
    out = subprocess.check_output([pgtmp, *args]).decode()
    assert out == out.rstrip(), f"pgtmp {args} printed {out!r}, ending in whitespace"
    return out
def check(url):
    conn = psycopg2.connect(url)
    cur = conn.cursor()
    cur.execute("select current_user || ' ' || split_part(current_database(), '_', 1)")
    print(cur.fetchone()[0])
    conn.close()
socket = take("-w", "60")
check(socket)
check(take("-t", "-w", "60"))
check(take("-w", "60", "-F", "dsn"))
check(take("schema", socket))
check(take("clone", socket))
"#;

fn python_check_output(invoker: &Invoker) {
    // Debian's psycopg2 is for its own /usr/bin/python3; a python3 earlier on PATH may be
    // another one.
    let python = "/usr/bin/python3";
    if !works(invoker, python, &["-c", "import psycopg2"]) {
        return missing(
            "Python's psycopg2",
            "Debian: apt-get install python3-psycopg2",
        );
    }
    let sandbox = Sandbox::new(invoker);
    let mut cmd = sandbox.tool(python);
    cmd.args(["-c", PYTHON_CALLER]);
    check_caller(
        &sandbox,
        cmd,
        5,
        "python check_output then psycopg2.connect",
    );
}

/// `new String(p.getInputStream().readAllBytes())` handed to DriverManager.getConnection as it
/// is, for `-t -F jdbc` and a clone's JDBC URL.
const JAVA_CALLER: &str = r#"
import java.sql.*;

public class Caller {
    static String take(String... command) throws Exception {
        Process p = new ProcessBuilder(command).redirectError(ProcessBuilder.Redirect.INHERIT).start();
        String out = new String(p.getInputStream().readAllBytes());
        if (p.waitFor() != 0) throw new IllegalStateException("pgtmp failed");
        if (!out.equals(out.strip())) throw new IllegalStateException("ends in whitespace: " + out);
        return out;
    }

    static void check(String url) throws Exception {
        try (Connection c = DriverManager.getConnection(url);
             ResultSet r = c.createStatement().executeQuery("select current_user || ' ' || split_part(current_database(), '_', 1)")) {
            r.next();
            System.out.println(r.getString(1));
        }
    }

    public static void main(String[] args) throws Exception {
        String pgtmp = System.getenv("PGTMP");
        String jdbc = take(pgtmp, "-t", "-w", "60", "-F", "jdbc");
        check(jdbc);
        check(take(pgtmp, "clone", "-F", "jdbc", jdbc));
    }
}
"#;

fn java_read_all_bytes(invoker: &Invoker) {
    let jar = "/usr/share/java/postgresql.jar";
    if !std::path::Path::new(jar).is_file() {
        return missing(
            "the PostgreSQL JDBC driver",
            "Debian: apt-get install libpostgresql-jdbc-java",
        );
    }
    // `java File.java` needs the compiler of a JDK, which a bare JRE lacks.
    if !works(invoker, "javac", &["-version"]) {
        return missing("a JDK", "Debian: apt-get install default-jdk-headless");
    }
    let sandbox = Sandbox::new(invoker);
    let source = sandbox.path("Caller.java");
    std::fs::write(&source, JAVA_CALLER).unwrap();
    let mut cmd = sandbox.tool("java");
    cmd.args(["-cp", jar]).arg(&source);
    check_caller(&sandbox, cmd, 2, "java ProcessBuilder then DriverManager");
}

/// On a terminal (a pseudo-terminal from util-linux `script`) the URL line ends with a newline,
/// for start and for clone, so the prompt does not follow it on the same line.
fn a_terminal_gets_a_newline(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let on_terminal = |args: &str| {
        let mut cmd = sandbox.tool("script");
        cmd.args(["-qec", &format!("\"$PGTMP\" {args}"), "/dev/null"]);
        let out = run(&mut cmd, PGTMP_LIMIT);
        assert!(out.success(), "{out}");
        out.stdout
    };
    // A pool of 0 prepares in the foreground, with a progress line erased before the URL.
    let shown = on_terminal("-w 60");
    let url = shown.rsplit("\u{1b}[K").next().unwrap_or(&shown);
    // The terminal turns the newline into CR LF.
    assert!(
        url.starts_with("postgresql://") && url.ends_with("\r\n") && url.lines().count() == 1,
        "{shown:?}"
    );
    let url = url.trim_end();
    let clone = on_terminal(&format!("clone '{url}'"));
    assert!(
        clone.starts_with("postgresql://") && clone.ends_with("\r\n"),
        "{clone:?}"
    );
    assert_eq!(
        sandbox.psql(clone.trim_end(), "select current_database() <> 'test'"),
        "t"
    );
    // Off a terminal the same commands print the URL alone, with no newline.
    let out = sandbox.run(&["clone", url]);
    assert!(
        out.success() && out.stdout.starts_with("postgresql://") && !out.stdout.ends_with('\n'),
        "{out}"
    );
}

/// The GUIDE's pytest example with a clone per test, as printed there, run by pytest from `/`
/// rather than from its own directory: it finds schema.sql beside itself.
fn guide_pytest_fixture_runs_from_anywhere(invoker: &Invoker) {
    let python = "/usr/bin/python3";
    if !works(invoker, python, &["-c", "import psycopg2, pytest"]) {
        return missing(
            "pytest and psycopg2",
            "Debian: apt-get install python3-pytest python3-psycopg2",
        );
    }
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/GUIDE.md")).unwrap();
    let section = guide
        .split_once("### A pytest fixture with a clone per test")
        .expect("GUIDE.md has the pytest example")
        .1;
    let example = section
        .split_once("```python\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("the pytest example is a python block")
        .0;
    let sandbox = Sandbox::new(invoker);
    let dir = sandbox.path("suite");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("test_items.py"), example).unwrap();
    std::fs::write(
        dir.join("schema.sql"),
        "create table items (id int primary key);\ninsert into items values (1), (2);\n",
    )
    .unwrap();
    std::os::unix::fs::chown(&dir, Some(invoker.uid), Some(invoker.gid)).unwrap();
    let bin = invoker.bin();
    let path = format!(
        "{}:/usr/local/bin:/usr/bin:/bin",
        bin.parent().unwrap().display()
    );
    let mut cmd = sandbox.tool(python);
    cmd.args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(dir.join("test_items.py"))
        .env("PATH", path)
        .current_dir("/");
    let out = run(&mut cmd, PGTMP_LIMIT);
    assert!(
        out.success() && out.stdout.contains("2 passed"),
        "the GUIDE's pytest example, run from /:\n{out}"
    );
}
