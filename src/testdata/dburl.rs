//! URLs of other databases and schemas in a cluster: what `pgtmp clone` and `pgtmp schema`
//! print, derived from the URL they were given, so they keep its form (socket, or TCP with its
//! password, which pgtmp never stores).

use crate::output::format::Format;
use anyhow::{Result, bail};
use percent_encoding::percent_decode_str;

/// `scheme://authority/`, the database, and the query after `?` (without it).
fn split(url: &str) -> Result<(&str, &str, &str)> {
    let Some(scheme_len) = ["postgresql://", "postgres://"]
        .iter()
        .find(|s| url.starts_with(*s))
        .map(|s| s.len())
    else {
        bail!("'{url}' is not a postgresql:// URL; pass the URL pgtmp printed");
    };
    let (before_query, query) = url.split_once('?').unwrap_or((url, ""));
    let Some(slash) = before_query[scheme_len..].find('/') else {
        bail!("'{url}' names no database; pass the URL pgtmp printed");
    };
    let head_len = scheme_len + slash + 1;
    Ok((&url[..head_len], &before_query[head_len..], query))
}

/// The database a URL names.
pub fn database(url: &str) -> Result<String> {
    let (_, database, _) = split(url)?;
    if database.is_empty() {
        bail!("'{url}' names no database; pass the URL pgtmp printed");
    }
    Ok(percent_decode_str(database)
        .decode_utf8_lossy()
        .into_owned())
}

fn join(head: &str, database: &str, query: &str) -> String {
    if query.is_empty() {
        format!("{head}{database}")
    } else {
        format!("{head}{database}?{query}")
    }
}

/// Whether `pgtmp COMMAND -F FORMAT` prints JDBC (else a URI); other formats are refused.
pub fn jdbc_wanted(format: Option<Format>, command: &str) -> Result<bool> {
    match format.unwrap_or_default() {
        Format::Uri => Ok(false),
        Format::Jdbc => Ok(true),
        other => Err(crate::output::exit::usage(format!(
            "pgtmp {command} prints --format uri or jdbc, not {}; use one of those",
            format!("{other:?}").to_lowercase()
        ))),
    }
}

/// The JDBC form of a TCP URL: `jdbc:postgresql://HOST:PORT/DB?user=..&password=..`.
/// A socket URL has no JDBC form: JDBC cannot use Unix sockets.
pub fn jdbc(url: &str) -> Result<String> {
    let (head, database, _) = split(url)?;
    let authority = head
        .trim_end_matches('/')
        .split_once("://")
        .map_or("", |(_, authority)| authority);
    let Some((userinfo, hostport)) = authority.rsplit_once('@') else {
        bail!("'{url}' names no user; pass the URL pgtmp printed");
    };
    let (Some((user, password)), false) = (userinfo.split_once(':'), hostport.is_empty()) else {
        return Err(crate::output::exit::usage(
            "--format jdbc needs a TCP cluster (JDBC cannot use Unix sockets); start it with -t",
        ));
    };
    // The user and password are percent-encoded in the URL already, with the same characters
    // left alone as a JDBC query value needs.
    Ok(format!(
        "jdbc:postgresql://{hostport}/{database}?user={user}&password={password}"
    ))
}

/// The JDBC form of a TCP URL, with `currentSchema=PATH` (pgjdbc's way to set the
/// search_path): `jdbc:postgresql://HOST:PORT/DB?user=..&password=..&currentSchema=..`.
pub fn jdbc_with_search_path(url: &str, path: &str) -> Result<String> {
    Ok(format!(
        "{}&currentSchema={}",
        jdbc(url)?,
        crate::output::url::encode(&path.replace(' ', ""))
    ))
}

/// The same URL with `options=-csearch_path=PATH` (replacing any `options` it had), so that
/// every libpq connection starts with that search_path. `path` is a comma-separated list as
/// `SHOW search_path` prints it; spaces inside quoted names are escaped for libpq.
pub fn with_search_path(url: &str, path: &str) -> Result<String> {
    let (head, database, query) = split(url)?;
    let list: Vec<String> = path
        .split(',')
        .map(|name| name.trim().replace('\\', "\\\\").replace(' ', "\\ "))
        .collect();
    let option = format!("-csearch_path={}", list.join(","));
    let mut params: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("options="))
        .map(str::to_string)
        .collect();
    params.push(format!("options={}", crate::output::url::encode(&option)));
    Ok(join(head, database, &params.join("&")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jdbc_form_sets_current_schema_and_keeps_credentials() {
        assert_eq!(
            jdbc_with_search_path(
                "postgresql://a%2Bb:pw9@127.0.0.1:5555/test_x?options=-c",
                "s_1, public"
            )
            .unwrap(),
            "jdbc:postgresql://127.0.0.1:5555/test_x?user=a%2Bb&password=pw9&currentSchema=s_1%2Cpublic"
        );
        let socket = jdbc_with_search_path("postgresql://alice@/test?host=%2Ftmp%2Fx", "s_1");
        assert_eq!(
            crate::output::exit::code_for(&socket.unwrap_err()),
            crate::output::exit::USAGE
        );
    }

    const SOCKET: &str = "postgresql://alice@/test?host=%2Ftmp%2Fpgtmp-1%2Fab";
    const TCP: &str = "postgresql://alice:pw@127.0.0.1:5555/test";

    #[test]
    fn databases_are_read() {
        assert_eq!(database(SOCKET).unwrap(), "test");
        assert_eq!(database(TCP).unwrap(), "test");
        assert!(database("postgresql://alice@/?host=x").is_err());
        assert!(database("mysql://x/y").is_err());
    }

    #[test]
    fn search_path_goes_into_options() {
        let url = with_search_path(SOCKET, "s_1, \"$user\", public").unwrap();
        assert_eq!(
            url,
            "postgresql://alice@/test?host=%2Ftmp%2Fpgtmp-1%2Fab\
             &options=-csearch_path%3Ds_1%2C%22%24user%22%2Cpublic"
        );
        // A second schema replaces the option rather than adding another.
        let again = with_search_path(&url, "s_2, public").unwrap();
        assert_eq!(again.matches("options=").count(), 1);
        assert!(again.ends_with("options=-csearch_path%3Ds_2%2Cpublic"));
        assert_eq!(
            with_search_path(TCP, "s_1").unwrap(),
            "postgresql://alice:pw@127.0.0.1:5555/test?options=-csearch_path%3Ds_1"
        );
    }
}
