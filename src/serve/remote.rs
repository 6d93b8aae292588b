//! The CLI as a client of a `pgtmp serve` (`--remote URL`, PGTMP_REMOTE): a database from
//! `/new`, or with `-f` files a template keyed by their hash (built once for the whole fleet,
//! by whichever client comes first) and a test database copied from it; a clone like a
//! database it handed out; and dropping one. Needs no PostgreSQL programs: the files are
//! loaded with the wire protocol, as plain SQL.

use crate::output::exit;
use crate::output::format::Remote;
use crate::testdata::files::read_schema_file;
use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::Duration;

/// The longest a request may take: `GET .../tests` waits for another client's template.
const REQUEST_LIMIT: Duration = Duration::from_secs(120);

pub struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    /// A client of the serve at `base` (`http://HOST:PORT/`, with `/t/TOKEN/` when it has a
    /// token).
    pub fn new(base: &str) -> Result<Client> {
        if !base.starts_with("http://") {
            return Err(exit::usage(format!(
                "--remote {base}: not the URL of a pgtmp serve; give http://HOST:PORT/ (with /t/TOKEN/ for one that has a token)"
            )));
        }
        let base = format!("{}/", base.trim_end_matches('/'));
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_LIMIT))
            .build()
            .into();
        Ok(Client { base, agent })
    }

    fn shown(&self) -> String {
        match self.base.find("/t/") {
            Some(at) => format!("{}/t/***/", &self.base[..at]),
            None => self.base.clone(),
        }
    }

    /// Sends a request; the status and the body.
    fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, String)> {
        let url = format!("{}{path}", self.base);
        let sent = match (method, body) {
            ("GET", _) => self
                .agent
                .get(&url)
                .header("Accept", "application/json")
                .call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, body) => {
                let text = body.map(Value::to_string).unwrap_or_default();
                let request = match method {
                    "PUT" => self.agent.put(&url),
                    _ => self.agent.post(&url),
                };
                request
                    .header("Content-Type", "application/json")
                    .send(text)
            }
        };
        let mut response =
            sent.with_context(|| format!("cannot reach pgtmp serve at {}", self.shown()))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("cannot read the answer of {}", self.shown()))?;
        Ok((status, text))
    }

    /// The error for an answer other than the expected one, with serve's own words.
    fn refused(&self, what: &str, status: u16, text: &str) -> anyhow::Error {
        let said = serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| {
                v.get("description")
                    .or_else(|| v.get("message"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| text.trim().to_string());
        anyhow!(
            "{what}: pgtmp serve at {} answered {status}: {said}",
            self.shown()
        )
    }

    /// A database for a start: with `files`, a copy of their template (see
    /// [`Client::with_files`]), else a blank one.
    pub fn database(&self, files: &[PathBuf]) -> Result<Remote> {
        if files.is_empty() {
            self.new_database()
        } else {
            self.with_files(files)
        }
    }

    /// A fresh blank database (`GET /new`).
    fn new_database(&self) -> Result<Remote> {
        let (status, text) = self.send("GET", "new", None)?;
        if status != 200 {
            return Err(self.refused("cannot get a database", status, &text));
        }
        faitout_database(&text)
    }

    /// A test database with `files` loaded: the template of their hash, built here if no
    /// client has built it yet.
    fn with_files(&self, files: &[PathBuf]) -> Result<Remote> {
        let mut sql = Vec::new();
        let mut hash = Sha256::new();
        hash.update(b"pgtmp remote files 1\0");
        for path in files {
            let contents = read_schema_file(path)?;
            let text = plain_sql(path, contents)?;
            hash.update(format!("{}\0", text.len()).as_bytes());
            hash.update(text.as_bytes());
            sql.push((path.clone(), text));
        }
        let hash: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let body = serde_json::json!({ "hash": hash });
        let (status, text) = self.send("POST", "api/v1/templates", Some(&body))?;
        match status {
            200 => self.build(&hash, &text, &sql)?,
            // Another client has built it or builds it now; the test database waits for it.
            423 => {}
            _ => return Err(self.refused("cannot make a template", status, &text)),
        }
        let (status, text) = self.send("GET", &format!("api/v1/templates/{hash}/tests"), None)?;
        if status != 200 {
            return Err(self.refused("cannot get a test database", status, &text));
        }
        let config = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.pointer("/database/config").cloned())
            .ok_or_else(|| anyhow!("pgtmp serve answered with no database config: {text}"))?;
        integresql_database(&config)
    }

    /// Loads the files into the template just begun, then finalizes it; discards it when a
    /// file fails.
    fn build(&self, hash: &str, answer: &str, sql: &[(PathBuf, String)]) -> Result<()> {
        let config = serde_json::from_str::<Value>(answer)
            .ok()
            .and_then(|v| v.pointer("/database/config").cloned())
            .ok_or_else(|| anyhow!("pgtmp serve answered with no template config: {answer}"))?;
        let target = integresql_database(&config)?;
        let loaded = load(&target, sql);
        if let Err(err) = loaded {
            let _ = self.send("DELETE", &format!("api/v1/templates/{hash}"), None);
            return Err(err);
        }
        let (status, text) = self.send("PUT", &format!("api/v1/templates/{hash}"), None)?;
        if status != 204 {
            return Err(self.refused("cannot finalize the template", status, &text));
        }
        Ok(())
    }

    /// Another database like `url`'s: a fresh copy of its template, or a blank one.
    pub fn clone_of(&self, url: &str) -> Result<Remote> {
        let name = database_of(url)?;
        let (status, text) = self.send("GET", &format!("clone/{name}"), None)?;
        if status != 200 {
            return Err(self.refused(&format!("cannot clone {name}"), status, &text));
        }
        faitout_database(&text)
    }

    /// Drops the database of `url` with its role (`GET /clean/DB`).
    pub fn drop(&self, url: &str) -> Result<()> {
        let name = database_of(url)?;
        let (status, text) = self.send("GET", &format!("clean/{name}"), None)?;
        if status != 200 {
            return Err(self.refused(&format!("cannot drop {name}"), status, &text));
        }
        Ok(())
    }
}

/// The file's text, refused when it is not UTF-8 or uses a psql meta-command (the remote load
/// runs plain SQL, without psql).
fn plain_sql(path: &std::path::Path, contents: Vec<u8>) -> Result<String> {
    let text = String::from_utf8(contents).map_err(|_| {
        exit::usage(format!(
            "-f {}: not UTF-8 text; --remote loads SQL files as UTF-8",
            path.display()
        ))
    })?;
    if let Some((n, _)) = text
        .lines()
        .enumerate()
        .find(|(_, line)| line.trim_start().starts_with('\\'))
    {
        return Err(exit::usage(format!(
            "-f {} line {}: a psql meta-command; with --remote the files are loaded as plain SQL without psql: write it in SQL, or load the file without --remote",
            path.display(),
            n + 1
        )));
    }
    Ok(text)
}

fn load(target: &Remote, sql: &[(PathBuf, String)]) -> Result<()> {
    let mut client = postgres::Config::new()
        .host(&target.host)
        .port(target.port)
        .user(&target.user)
        .password(&target.password)
        .dbname(&target.database)
        .application_name("pgtmp")
        .connect_timeout(Duration::from_secs(10))
        .connect(crate::server::tlsclient::connector()?)
        .with_context(|| format!("cannot connect to template {}", target.database))?;
    for (path, text) in sql {
        client.batch_execute(text).map_err(|err| {
            let detail = err
                .as_db_error()
                .map(|db| db.message().to_string())
                .unwrap_or_else(|| err.to_string());
            exit::usage(format!("-f {}: {detail}", path.display()))
        })?;
    }
    Ok(())
}

/// faitout's JSON answer as a database.
fn faitout_database(text: &str) -> Result<Remote> {
    let v: Value = serde_json::from_str(text)
        .with_context(|| format!("pgtmp serve answered something else than JSON: {text}"))?;
    database_from(&v, "username", "dbname")
}

/// IntegreSQL's `config` object as a database.
fn integresql_database(config: &Value) -> Result<Remote> {
    database_from(config, "username", "database")
}

/// A database from an answer's `host`, `port`, `password` and the fields that name its user
/// and database (faitout and IntegreSQL name the database differently).
fn database_from(v: &Value, user_key: &str, database_key: &str) -> Result<Remote> {
    let field = |name: &str| v.get(name).and_then(Value::as_str).map(str::to_string);
    let port = v.get("port").and_then(Value::as_u64);
    match (
        field("host"),
        port,
        field(user_key),
        field("password"),
        field(database_key),
    ) {
        (Some(host), Some(port), Some(user), Some(password), Some(database)) => Ok(Remote {
            host,
            port: u16::try_from(port).context("pgtmp serve answered a port out of range")?,
            user,
            password,
            database,
        }),
        _ => bail!(
            "pgtmp serve answered without host, port, {user_key}, password or {database_key}: {v}"
        ),
    }
}

/// The database name of a URL serve handed out (uri, jdbc or dsn form).
fn database_of(url: &str) -> Result<String> {
    let conn = crate::output::url::read(url)?;
    conn.database
        .ok_or_else(|| exit::usage(format!("{url}: names no database")))
}
