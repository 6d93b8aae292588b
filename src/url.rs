//! Connection URLs: building the ones pgtmp prints and reading them back for `pgtmp stop`.

use anyhow::{Result, bail};
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

/// Reads a `postgresql://` or `postgres://` URL back into the place it points to.
pub fn parse(url: &str) -> Result<Target> {
    let Some(rest) = url
        .strip_prefix("postgresql://")
        .or_else(|| url.strip_prefix("postgres://"))
    else {
        bail!("'{url}' is not a postgresql:// URL; pass the URL pgtmp printed, or -d DIR");
    };
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = before_query.split('/').next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host_param = query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == "host").then(|| percent_decode_str(value).decode_utf8_lossy().into_owned())
    });
    if let Some(host) = host_param.filter(|h| h.starts_with('/')) {
        return Ok(Target::Socket(PathBuf::from(host)));
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((host, port)) => match port.parse::<u16>() {
            Ok(port) => (host.to_string(), port),
            Err(_) => bail!("'{url}' has an invalid port '{port}'"),
        },
        None if !hostport.is_empty() => (hostport.to_string(), 5432),
        None => bail!("'{url}' names neither a socket directory (?host=) nor a host and port"),
    };
    Ok(Target::Tcp { host, port })
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
    fn garbage_is_rejected() {
        assert!(parse("mysql://x").is_err());
        assert!(parse("postgresql:///test").is_err());
        assert!(parse("postgresql://h:99999/test").is_err());
    }
}
