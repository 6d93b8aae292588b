//! Output formats: a started cluster as a URI, libpq DSN, JDBC URL, shell/dotenv lines or JSON,
//! each quoted correctly for the consumer that reads it.

use crate::os::process::Pid;
use crate::output::url;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// How a started cluster is printed (`--format`, `PGTMP_FORMAT`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    /// postgresql:// URL (libpq, psql, most drivers)
    #[default]
    Uri,
    /// libpq key=value connection string
    Dsn,
    /// jdbc:postgresql:// URL; needs -t (JDBC cannot use Unix sockets)
    Jdbc,
    /// `export PG...=...` lines for `eval "$(pgtmp --format env)"` or a dotenv file (with -t
    /// also PGPASSWORD and JDBC_DATABASE_URL)
    Env,
    /// one JSON object with every detail
    Json,
}

impl Format {
    /// The forms that are one value on one line, which scripts read whole.
    pub fn is_one_line(self) -> bool {
        matches!(self, Format::Uri | Format::Dsn | Format::Jdbc)
    }
}

/// What ends printed output. A one-line value (a URI, DSN or JDBC URL) printed off a terminal
/// ends without a newline, as pg_tmp's URL does: `%x(pgtmp)` in Ruby, Python's
/// `check_output` and Java's `readAllBytes()` then hold exactly the URL, unstripped (`$(...)`
/// strips either way). On a terminal, and after `env` lines or JSON, a newline.
pub fn ending(one_line: bool) -> &'static str {
    use std::io::IsTerminal;
    if one_line && !std::io::stdout().is_terminal() {
        ""
    } else {
        "\n"
    }
}

/// A running cluster as pgtmp reports it: everything a client or a script may want to know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// The URL pgtmp prints by default.
    pub url: String,
    /// The instance directory: also the server's Unix socket directory.
    pub socket_dir: PathBuf,
    pub data_dir: PathBuf,
    /// The TCP port with `tcp`; otherwise the number in the socket file's name.
    pub port: u16,
    pub tcp: bool,
    pub user: String,
    /// Only with `tcp`: the socket is trust-authenticated and private.
    pub password: Option<String>,
    pub server_pid: Pid,
    pub watchdog_pid: Pid,
    /// The server installation's bin directory.
    pub bindir: PathBuf,
    /// Idle timeout in seconds; 0 = never.
    pub timeout: u64,
    pub keep: bool,
}

impl Cluster {
    /// What libpq's `host` is: the socket directory, or the loopback address with TCP.
    pub fn host(&self) -> String {
        if self.tcp {
            "127.0.0.1".to_string()
        } else {
            self.socket_dir.to_string_lossy().into_owned()
        }
    }

    /// The libpq key=value string.
    pub fn dsn(&self) -> String {
        let mut pairs = vec![
            ("host", self.host()),
            ("port", self.port.to_string()),
            ("user", self.user.clone()),
        ];
        if let Some(password) = &self.password {
            pairs.push(("password", password.clone()));
        }
        pairs.push(("dbname", url::DATABASE.to_string()));
        pairs
            .iter()
            .map(|(key, value)| format!("{key}={}", dsn_value(value)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The JDBC URL; None without TCP.
    pub fn jdbc(&self) -> Option<String> {
        let password = self.password.as_ref().filter(|_| self.tcp)?;
        Some(format!(
            "jdbc:postgresql://127.0.0.1:{}/{}?user={}&password={}",
            self.port,
            url::DATABASE,
            url::encode(&self.user),
            url::encode(password)
        ))
    }

    /// The libpq environment variables a client needs, in the order they are printed.
    pub fn environment(&self) -> Vec<(&'static str, String)> {
        let mut vars = vec![
            ("DATABASE_URL", self.url.clone()),
            ("PGHOST", self.host()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", self.user.clone()),
            ("PGDATABASE", url::DATABASE.to_string()),
        ];
        if let Some(password) = &self.password {
            vars.push(("PGPASSWORD", password.clone()));
        }
        // The name Heroku's Java buildpack made common: JDBC code reads it as it is.
        if let Some(jdbc) = self.jdbc() {
            vars.push(("JDBC_DATABASE_URL", jdbc));
        }
        vars
    }

    /// The cluster in `format`, without a final newline. `version` is asked for only by JSON
    /// (it costs running `postgres --version`).
    pub fn render(&self, format: Format, version: impl FnOnce() -> Option<String>) -> String {
        match format {
            Format::Uri => self.url.clone(),
            Format::Dsn => self.dsn(),
            // Refused before the start (see `check`); the URI is the honest fallback.
            Format::Jdbc => self.jdbc().unwrap_or_else(|| self.url.clone()),
            Format::Env => export_lines(&self.environment()),
            Format::Json => {
                let object = serde_json::json!({
                    "url": self.url,
                    "dsn": self.dsn(),
                    "jdbc": self.jdbc(),
                    "host": self.host(),
                    "port": self.port,
                    "socket_dir": self.socket_dir,
                    "user": self.user,
                    "password": self.password,
                    "database": url::DATABASE,
                    "data_dir": self.data_dir,
                    "server_pid": self.server_pid,
                    "watchdog_pid": self.watchdog_pid,
                    "version": version(),
                    "bindir": self.bindir,
                    "timeout": self.timeout,
                    "keep": self.keep,
                });
                object.to_string()
            }
        }
    }
}

/// `export NAME=VALUE` lines, for a shell's eval or a dotenv file.
fn export_lines(vars: &[(&'static str, String)]) -> String {
    vars.iter()
        .map(|(key, value)| format!("export {key}={}", env_value(value)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A database on a server elsewhere (one `pgtmp serve` handed out): printed in the same
/// formats as a cluster, with what a remote client can know of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
}

impl Remote {
    fn url_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }

    pub fn url(&self) -> String {
        format!(
            "postgresql://{}:{}@{}:{}/{}",
            url::encode(&self.user),
            url::encode(&self.password),
            self.url_host(),
            self.port,
            url::encode(&self.database)
        )
    }

    pub fn jdbc(&self) -> String {
        format!(
            "jdbc:postgresql://{}:{}/{}?user={}&password={}",
            self.url_host(),
            self.port,
            url::encode(&self.database),
            url::encode(&self.user),
            url::encode(&self.password)
        )
    }

    pub fn dsn(&self) -> String {
        [
            ("host", self.host.clone()),
            ("port", self.port.to_string()),
            ("user", self.user.clone()),
            ("password", self.password.clone()),
            ("dbname", self.database.clone()),
        ]
        .iter()
        .map(|(key, value)| format!("{key}={}", dsn_value(value)))
        .collect::<Vec<_>>()
        .join(" ")
    }

    /// The libpq environment variables a client needs, as for a TCP cluster.
    pub fn environment(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_URL", self.url()),
            ("PGHOST", self.host.clone()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", self.user.clone()),
            ("PGDATABASE", self.database.clone()),
            ("PGPASSWORD", self.password.clone()),
            ("JDBC_DATABASE_URL", self.jdbc()),
        ]
    }

    /// The database in `format`, without a final newline.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Uri => self.url(),
            Format::Dsn => self.dsn(),
            Format::Jdbc => self.jdbc(),
            Format::Env => export_lines(&self.environment()),
            Format::Json => serde_json::json!({
                "url": self.url(),
                "dsn": self.dsn(),
                "jdbc": self.jdbc(),
                "host": self.host,
                "port": self.port,
                "user": self.user,
                "password": self.password,
                "database": self.database,
            })
            .to_string(),
        }
    }
}

/// Refuses a format that cannot describe the cluster about to be started.
pub fn check(format: Format, tcp: bool) -> anyhow::Result<()> {
    if format == Format::Jdbc && !tcp {
        return Err(crate::output::exit::usage(
            "--format jdbc needs a TCP cluster (JDBC cannot use Unix sockets); add -t",
        ));
    }
    Ok(())
}

/// A libpq connection-string value: bare when it holds only harmless characters, otherwise in
/// single quotes with `\` and `'` escaped by a backslash
/// (https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNSTRING-KEYWORD-VALUE).
pub fn dsn_value(value: &str) -> String {
    let bare = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:@+,".contains(c));
    if bare {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\\' || c == '\'' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// A value for `export KEY=VALUE` that means the same to a POSIX shell's `eval` and to dotenv
/// parsers (python-dotenv, Node's dotenv, docker compose): single quotes, inside which neither
/// expands `$`, backticks or spaces. A `'` in the value (only possible in an odd PGTMP_DIR or
/// login name) is written the shell's way, `'\''`, which `eval` reads correctly.
pub fn env_value(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// A word of a shell command line to copy and paste: bare when it holds only characters no
/// shell treats specially, otherwise single-quoted as in [`env_value`].
pub fn shell_word(value: &str) -> String {
    let bare = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:@+,%=".contains(c));
    if bare {
        value.to_string()
    } else {
        env_value(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn cluster(tcp: bool, dir: &str, user: &str) -> Cluster {
        Cluster {
            url: if tcp {
                url::tcp_url(user, "pw", 5555)
            } else {
                url::socket_url(user, std::path::Path::new(dir))
            },
            socket_dir: dir.into(),
            data_dir: format!("{dir}/data").into(),
            port: if tcp { 5555 } else { 5432 },
            tcp,
            user: user.into(),
            password: tcp.then(|| "pw".to_string()),
            server_pid: Pid::from_raw(10),
            watchdog_pid: Pid::from_raw(9),
            bindir: "/usr/lib/postgresql/15/bin".into(),
            timeout: 60,
            keep: false,
        }
    }

    #[test]
    fn dsn_values_are_quoted_only_when_needed() {
        assert_eq!(dsn_value("/tmp/pgtmp-0/abcd1234"), "/tmp/pgtmp-0/abcd1234");
        assert_eq!(dsn_value(""), "''");
        assert_eq!(dsn_value("my dir"), "'my dir'");
        assert_eq!(dsn_value("o'brien"), r"'o\'brien'");
        assert_eq!(dsn_value(r"back\slash"), r"'back\\slash'");
        assert_eq!(dsn_value("a=b"), "'a=b'");
    }

    #[test]
    fn dsn_of_socket_and_tcp_clusters() {
        assert_eq!(
            cluster(false, "/tmp/p q/x", "alice").dsn(),
            "host='/tmp/p q/x' port=5432 user=alice dbname=test"
        );
        assert_eq!(
            cluster(true, "/tmp/x", "alice").dsn(),
            "host=127.0.0.1 port=5555 user=alice password=pw dbname=test"
        );
    }

    #[test]
    fn jdbc_needs_tcp_and_encodes_its_parameters() {
        assert_eq!(cluster(false, "/tmp/x", "alice").jdbc(), None);
        assert_eq!(
            cluster(true, "/tmp/x", "a+b c&d").jdbc().unwrap(),
            "jdbc:postgresql://127.0.0.1:5555/test?user=a%2Bb%20c%26d&password=pw"
        );
        assert!(check(Format::Jdbc, false).is_err());
        assert!(check(Format::Jdbc, true).is_ok());
        assert!(check(Format::Dsn, false).is_ok());
    }

    /// What `sh` makes of `eval`-ing the env lines: the values must come back unchanged.
    fn shell_reads(lines: &str, var: &str) -> String {
        let script = format!("{lines}\nprintf '%s' \"${var}\"");
        let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn env_lines_survive_the_shell() {
        for (dir, user) in [
            ("/tmp/plain/abcd1234", "alice"),
            ("/tmp/with space/x", "bob smith"),
            ("/tmp/quo'te/x", "o'brien"),
            (r"/tmp/back\slash/$HOME/`x`", r"a\b"),
            ("/tmp/dq\"x", "$(reboot)"),
        ] {
            let c = cluster(false, dir, user);
            let lines = c.render(Format::Env, || None);
            assert_eq!(shell_reads(&lines, "PGHOST"), dir);
            assert_eq!(shell_reads(&lines, "PGUSER"), user);
            assert_eq!(shell_reads(&lines, "DATABASE_URL"), c.url);
            assert!(!lines.contains("PGPASSWORD"));
        }
        let tcp = cluster(true, "/tmp/x", "alice").render(Format::Env, || None);
        assert_eq!(shell_reads(&tcp, "PGPASSWORD"), "pw");
        assert_eq!(shell_reads(&tcp, "PGHOST"), "127.0.0.1");
        assert_eq!(
            shell_reads(&tcp, "JDBC_DATABASE_URL"),
            "jdbc:postgresql://127.0.0.1:5555/test?user=alice&password=pw"
        );
    }

    #[test]
    fn env_lines_are_dotenv_lines() {
        // KEY='VALUE' with no quote or backslash inside: every dotenv parser reads it verbatim.
        let lines = cluster(true, "/tmp/pgtmp-0/abcd1234", "alice").render(Format::Env, || None);
        for line in lines.lines() {
            let rest = line.strip_prefix("export ").unwrap();
            let (key, value) = rest.split_once('=').unwrap();
            assert!(key.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
            assert!(value.starts_with('\'') && value.ends_with('\''));
            assert!(!value[1..value.len() - 1].contains(['\'', '\\']));
        }
    }

    #[test]
    fn json_holds_every_detail() {
        let c = cluster(true, "/tmp/a \"b\"\\c", "alice");
        let text = c.render(Format::Json, || Some("15.18".into()));
        assert!(!text.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["socket_dir"], "/tmp/a \"b\"\\c");
        assert_eq!(value["host"], "127.0.0.1");
        assert_eq!(value["port"], 5555);
        assert_eq!(value["password"], "pw");
        assert_eq!(value["database"], "test");
        assert_eq!(value["version"], "15.18");
        assert_eq!(value["jdbc"], c.jdbc().unwrap());
        assert_eq!(value["dsn"], c.dsn());
        let socket = cluster(false, "/tmp/x", "alice").render(Format::Json, || None);
        let value: serde_json::Value = serde_json::from_str(&socket).unwrap();
        assert!(value["jdbc"].is_null() && value["password"].is_null());
    }
}
