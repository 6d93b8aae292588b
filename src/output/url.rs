//! Connection URLs: building the ones pgtmp prints and reading them back for `pgtmp stop`.

use anyhow::Result;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use std::path::{Path, PathBuf};

/// The database every cluster has.
pub const DATABASE: &str = "test";

/// Everything but RFC 3986 "unreserved" characters gets encoded, so `/` in a socket path becomes
/// `%2F`, which libpq and every libpq-based driver decode in the `host` parameter.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub fn encode(text: &str) -> String {
    utf8_percent_encode(text, COMPONENT).to_string()
}

/// `postgresql://USER@/test?host=SOCKETDIR`: no port, so libpq uses its default (5432, or
/// `$PGPORT`), which is the number the server's socket file was created with.
pub fn socket_url(user: &str, socket_dir: &Path) -> String {
    format!(
        "postgresql://{}@/{DATABASE}?host={}",
        encode(user),
        encode(&socket_dir.to_string_lossy())
    )
}

/// `postgresql://USER:PASSWORD@127.0.0.1:PORT/test`.
pub fn tcp_url(user: &str, password: &str, port: u16) -> String {
    format!(
        "postgresql://{}:{}@127.0.0.1:{port}/{DATABASE}",
        encode(user),
        encode(password)
    )
}

/// Where a URL points: what `pgtmp stop URL` needs to find the cluster.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    Socket(PathBuf),
    Tcp { host: String, port: u16 },
}

/// A cluster's address as pgtmp prints it in any of its forms, read back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Conn {
    pub user: Option<String>,
    pub password: Option<String>,
    /// A socket directory (starts with `/`) or a host name; empty when not given.
    pub host: String,
    pub port: Option<u16>,
    pub database: Option<String>,
}

const FORMS: &str = "pass a URL pgtmp printed (postgresql://..., jdbc:postgresql://..., \
                     host=... key=value, or its JSON)";

fn decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

fn bad(text: &str, why: &str) -> anyhow::Error {
    crate::output::exit::usage(format!("'{text}' {why}; {FORMS}"))
}

fn port_of(text: &str, port: &str) -> Result<u16> {
    port.parse::<u16>()
        .map_err(|_| bad(text, &format!("has an invalid port '{port}'")))
}

/// Reads any form pgtmp prints a cluster in: a `postgresql://` (or `postgres://`) URL, a
/// `jdbc:postgresql://` URL, a libpq `key=value` string, or the JSON object of `--format json`.
/// Invalid input is a usage error.
pub fn read(text: &str) -> Result<Conn> {
    let trimmed = text.trim();
    if trimmed.starts_with('{') {
        let value: serde_json::Value =
            serde_json::from_str(trimmed).map_err(|_| bad(text, "is not valid JSON"))?;
        let Some(url) = value.get("url").and_then(|u| u.as_str()) else {
            return Err(bad(text, "has no \"url\""));
        };
        return read(url);
    }
    if let Some(rest) = trimmed.strip_prefix("jdbc:postgresql://") {
        return read_uri(text, rest, true);
    }
    if let Some(rest) = trimmed
        .strip_prefix("postgresql://")
        .or_else(|| trimmed.strip_prefix("postgres://"))
    {
        return read_uri(text, rest, false);
    }
    if !trimmed.contains("://") && trimmed.contains('=') {
        return read_dsn(text);
    }
    Err(bad(text, "is not a connection URL"))
}

/// The part of a URL after `scheme://`. JDBC URLs carry user and password only as parameters.
fn read_uri(text: &str, rest: &str, jdbc: bool) -> Result<Conn> {
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = before_query.split_once('/').unwrap_or((before_query, ""));
    let mut conn = Conn::default();
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) if !jdbc => {
            let (user, password) = match userinfo.split_once(':') {
                Some((user, password)) => (user, Some(decode(password))),
                None => (userinfo, None),
            };
            conn.user = Some(decode(user)).filter(|u| !u.is_empty());
            conn.password = password;
            hostport
        }
        _ => authority,
    };
    // An IPv6 literal is [..]:port; its colons are not the port's.
    let (host, port) = match hostport.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, Some(port_of(text, port)?)),
        _ => (hostport, None),
    };
    conn.host = decode(host);
    conn.port = port;
    conn.database = Some(decode(path)).filter(|d| !d.is_empty());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        conn.set(text, key, decode(value))?;
    }
    if conn.host.is_empty() {
        return Err(bad(
            text,
            "names neither a socket directory (?host=) nor a host and port",
        ));
    }
    Ok(conn)
}

impl Conn {
    /// Takes one libpq parameter (from a URI's query or a DSN) of `text`; others are ignored.
    fn set(&mut self, text: &str, key: &str, value: String) -> Result<()> {
        match key {
            "host" => self.host = value,
            "port" => self.port = Some(port_of(text, &value)?),
            "user" => self.user = Some(value),
            "password" => self.password = Some(value),
            "dbname" => self.database = Some(value),
            _ => {}
        }
        Ok(())
    }
}

/// libpq's `key=value` form: values bare or in single quotes, `\` escaping the next character.
fn read_dsn(text: &str) -> Result<Conn> {
    let mut conn = Conn::default();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(bad(text, &format!("has '{key}' without a value")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => return Err(bad(text, "has an unterminated quoted value")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        conn.set(text, &key, value)?;
    }
    if conn.host.is_empty() {
        return Err(bad(text, "names no host"));
    }
    Ok(conn)
}

impl Conn {
    /// Where it points: what `pgtmp stop URL` needs to find the cluster.
    pub fn target(&self) -> Target {
        if self.host.starts_with('/') {
            Target::Socket(PathBuf::from(&self.host))
        } else {
            Target::Tcp {
                host: self.host.clone(),
                port: self.port.unwrap_or(5432),
            }
        }
    }

    /// The `postgresql://` URL in the form pgtmp prints (see `socket_url`, `tcp_url`), for
    /// `database` (default: the one named, else `test`), with no other parameters.
    pub fn uri(&self, database: Option<&str>) -> String {
        let database = encode(database.or(self.database.as_deref()).unwrap_or(DATABASE));
        let user = self.user.as_deref().map(encode).unwrap_or_default();
        if self.host.starts_with('/') {
            let at = if user.is_empty() { "" } else { "@" };
            let port = match self.port {
                Some(port) if port != 5432 => format!("&port={port}"),
                _ => String::new(),
            };
            return format!(
                "postgresql://{user}{at}/{database}?host={}{port}",
                encode(&self.host)
            );
        }
        let userinfo = match (&self.user, &self.password) {
            (_, Some(password)) => format!("{user}:{}@", encode(password)),
            (Some(_), None) => format!("{user}@"),
            (None, None) => String::new(),
        };
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        format!("postgresql://{userinfo}{}{port}/{database}", self.host)
    }
}

/// Reads a URL (in any form `read` takes) back into the place it points to.
pub fn parse(url: &str) -> Result<Target> {
    Ok(read(url)?.target())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_url_encodes_the_directory() {
        let url = socket_url("alice", Path::new("/tmp/pgtmp-1000/ab c"));
        assert_eq!(
            url,
            "postgresql://alice@/test?host=%2Ftmp%2Fpgtmp-1000%2Fab%20c"
        );
    }

    #[test]
    fn user_names_are_encoded() {
        assert_eq!(
            tcp_url("a@b", "pw", 5555),
            "postgresql://a%40b:pw@127.0.0.1:5555/test"
        );
    }

    #[test]
    fn urls_parse_back() {
        let dir = Path::new("/tmp/pgtmp-0/x_y");
        assert_eq!(
            parse(&socket_url("root", dir)).unwrap(),
            Target::Socket(dir.into())
        );
        assert_eq!(
            parse(&tcp_url("root", "secret", 6543)).unwrap(),
            Target::Tcp {
                host: "127.0.0.1".into(),
                port: 6543
            }
        );
        assert_eq!(
            parse("postgres://localhost/test").unwrap(),
            Target::Tcp {
                host: "localhost".into(),
                port: 5432
            }
        );
    }

    #[test]
    fn every_printed_form_reads_back_to_the_same_url() {
        let socket = socket_url("alice", Path::new("/tmp/pgtmp-1000/ab c"));
        let tcp = tcp_url("a+b", "pw9", 5555);
        for (text, want) in [
            (socket.as_str(), socket.as_str()),
            (tcp.as_str(), tcp.as_str()),
            (
                "host='/tmp/pgtmp-1000/ab c' port=5432 user=alice dbname=test",
                &socket,
            ),
            (
                "host=127.0.0.1 port=5555 user=a+b password=pw9 dbname=test",
                &tcp,
            ),
            (
                "jdbc:postgresql://127.0.0.1:5555/test?user=a%2Bb&password=pw9",
                &tcp,
            ),
            (
                "jdbc:postgresql://127.0.0.1:5555/test?user=a%2Bb&password=pw9&currentSchema=s_1",
                &tcp,
            ),
            (
                &format!("{socket}&options=-csearch_path%3Ds_1%2Cpublic"),
                &socket,
            ),
            (&format!(r#"{{"url": "{tcp}", "port": 5555}}"#), &tcp),
        ] {
            assert_eq!(read(text).unwrap().uri(None), want, "{text}");
        }
        assert_eq!(
            read(&tcp).unwrap().uri(Some("test_x")),
            "postgresql://a%2Bb:pw9@127.0.0.1:5555/test_x"
        );
        assert_eq!(
            read("host=/tmp/x port=6000 user=bob dbname=test_y")
                .unwrap()
                .uri(None),
            "postgresql://bob@/test_y?host=%2Ftmp%2Fx&port=6000"
        );
    }

    #[test]
    fn dsn_values_are_unquoted() {
        let conn = read(r"host = '/tmp/it\'s' user=o\'brien password='a b' dbname=test").unwrap();
        assert_eq!(conn.host, "/tmp/it's");
        assert_eq!(conn.user.as_deref(), Some("o'brien"));
        assert_eq!(conn.password.as_deref(), Some("a b"));
        assert!(read("host='/tmp/x").is_err());
        assert!(read("host").is_err());
        assert!(read("user=alice").is_err());
    }

    #[test]
    fn garbage_is_a_usage_error_that_names_no_option() {
        for text in ["garbage", "mysql://x/y", "{not json", r#"{"port": 1}"#, ""] {
            let err = read(text).unwrap_err();
            assert_eq!(
                crate::output::exit::code_for(&err),
                crate::output::exit::USAGE,
                "{text}"
            );
            assert!(!err.to_string().contains("-d"), "{err}");
        }
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(parse("mysql://x").is_err());
        assert!(parse("postgresql:///test").is_err());
        assert!(parse("postgresql://h:99999/test").is_err());
    }
}
