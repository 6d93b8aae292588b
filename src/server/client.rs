//! The watchdog's own database session: counts clients and sets the password.
//!
//! It connects once, to database `postgres`, and stays connected: it never appears as a session
//! in `test` (so `CREATE DATABASE x TEMPLATE test` and `DROP DATABASE test` are never blocked)
//! and, with one connection for the cluster's whole life, adds no log line per poll even when
//! log_connections is on.

use crate::server::initdb::quote_ident;
use anyhow::{Context, Result};
use std::path::Path;
use std::time::Duration;

/// Client sessions other than this one and `pgtmp list`'s look (which must not keep a cluster
/// alive). Background workers, autovacuum and the like have other backend types; walsenders
/// serve replication clients such as pg_basebackup.
const COUNT_CLIENTS: &str = "SELECT count(*) FROM pg_stat_activity \
     WHERE backend_type IN ('client backend', 'walsender') AND pid <> pg_backend_pid() \
     AND application_name IS DISTINCT FROM 'pgtmp list'";

/// Settings of the watchdog's own session (PostgreSQL 13 and later know all of them).
const SESSION_OPTIONS: &str = "-c log_statement=none -c log_duration=off \
     -c log_min_duration_statement=-1 -c statement_timeout=0 -c lock_timeout=0";

/// A connection to the server on its socket in `socket_dir`, as `application` (shown in
/// pg_stat_activity).
pub fn config(
    socket_dir: &Path,
    port: u16,
    user: &str,
    database: &str,
    application: &str,
) -> postgres::Config {
    let mut config = postgres::Config::new();
    config
        .host_path(socket_dir)
        .port(port)
        .user(user)
        .dbname(database)
        .application_name(application);
    config
}

pub struct Session {
    client: postgres::Client,
    count: postgres::Statement,
}

impl Session {
    pub fn connect(socket_dir: &Path, port: u16, user: &str) -> Result<Session> {
        let mut client = config(socket_dir, port, user, "postgres", "pgtmp watchdog")
            // In the startup packet, so they hold before the first statement: whatever -o
            // sets (log_statement=all, a statement_timeout), the polls are never logged and
            // never cancelled.
            .options(SESSION_OPTIONS)
            .connect_timeout(Duration::from_secs(10))
            .connect(postgres::NoTls)
            .with_context(|| format!("cannot connect to the server in {}", socket_dir.display()))?;
        // PostgreSQL 14+ only; an older server rejects the name, which is fine.
        let _ = client.batch_execute("SET idle_session_timeout = 0");
        let count = client
            .prepare(COUNT_CLIENTS)
            .context("cannot prepare the client count query")?;
        Ok(Session { client, count })
    }

    /// Number of connected clients, idle ones included.
    pub fn clients(&mut self) -> Result<i64> {
        let row = self
            .client
            .query_one(&self.count, &[])
            .context("cannot count the server's clients")?;
        Ok(row.get(0))
    }

    /// Runs one statement that returns no rows.
    pub fn execute(&mut self, sql: &str) -> Result<()> {
        self.client
            .batch_execute(sql)
            .with_context(|| format!("cannot run {sql}"))
    }

    /// Gives `user` a password by sending only its SCRAM verifier.
    pub fn set_password(&mut self, user: &str, verifier: &str) -> Result<()> {
        // The verifier holds only base64 letters, digits, '$', ':', '+', '/' and '=': no quotes.
        let sql = format!("ALTER ROLE {} PASSWORD '{verifier}'", quote_ident(user));
        self.client
            .batch_execute(&sql)
            .context("cannot set the password for TCP connections")
    }
}

/// What `pgtmp list` shows of a cluster's clients.
pub struct Activity {
    pub clients: i64,
    /// Seconds since the most recent client was last busy; 0 while one is; None without clients.
    pub idle_seconds: Option<f64>,
    /// The server's version, e.g. "15.18", as the start's json prints it.
    pub version: String,
}

/// [`activity`], given up on after `limit`: the connect timeout bounds only the connection
/// itself, and whatever answers on the socket (a server stuck, or a listener the directory's
/// owner planted in root's cluster directory) must not hang `pgtmp list`. A session that does
/// not answer in time is left to end with the process.
pub fn activity_within(
    socket_dir: &Path,
    port: u16,
    user: &str,
    limit: Duration,
) -> Result<Activity> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (dir, user) = (socket_dir.to_path_buf(), user.to_string());
    std::thread::Builder::new()
        .name("activity".into())
        .spawn(move || {
            let _ = tx.send(activity(&dir, port, &user));
        })
        .context("cannot start a thread to ask the server")?;
    rx.recv_timeout(limit).unwrap_or_else(|_| {
        Err(anyhow::anyhow!(
            "the server in {} did not answer within {} s",
            socket_dir.display(),
            limit.as_secs()
        ))
    })
}

/// Clients other than the watchdog, seen through a short session that the watchdog ignores.
fn activity(socket_dir: &Path, port: u16, user: &str) -> Result<Activity> {
    let mut client = config(socket_dir, port, user, "postgres", "pgtmp list")
        .options(SESSION_OPTIONS)
        .connect_timeout(Duration::from_secs(2))
        .connect(postgres::NoTls)
        .with_context(|| format!("cannot connect to the server in {}", socket_dir.display()))?;
    let row = client
        .query_one(
            "SELECT count(*), coalesce(bool_or(state IS DISTINCT FROM 'idle'), false), \
             extract(epoch FROM now() - max(state_change))::float8, \
             current_setting('server_version') \
             FROM pg_stat_activity \
             WHERE backend_type IN ('client backend', 'walsender') AND pid <> pg_backend_pid() \
             AND application_name IS DISTINCT FROM 'pgtmp watchdog'",
            &[],
        )
        .context("cannot read the server's activity")?;
    let clients: i64 = row.get(0);
    let busy: bool = row.get(1);
    let idle: Option<f64> = row.get(2);
    let version: String = row.get(3);
    Ok(Activity {
        clients,
        version: crate::server::discover::parse_version(&version).unwrap_or(version),
        idle_seconds: match (clients, busy) {
            (0, _) => None,
            (_, true) => Some(0.0),
            _ => Some(idle.unwrap_or(0.0).max(0.0)),
        },
    })
}
