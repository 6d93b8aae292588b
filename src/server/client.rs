//! The watchdog's database session: sets the password, and counts clients when the processes
//! alone cannot tell.
//!
//! It connects to database `postgres`: it never appears as a session in `test` (so
//! `CREATE DATABASE x TEMPLATE test` and `DROP DATABASE test` are never blocked). The watchdog
//! holds it only while clients are connected, so an idle cluster costs no backend of its own.

use crate::server::initdb::quote_ident;
use anyhow::{Context, Result, anyhow};
use std::path::Path;
use std::time::Duration;

/// Client sessions other than this one and `pgtmp list`'s look (which must not keep a cluster
/// alive), and the pids of every other process the server lists. Background workers,
/// autovacuum and the like have other backend types; walsenders serve replication clients such
/// as pg_basebackup. Text, for the simple protocol: one round trip, no statement to prepare.
const CENSUS: &str = "SELECT count(*) FILTER (WHERE counted), \
     coalesce(string_agg(pid::text, ' ') FILTER (WHERE NOT counted), '') \
     FROM (SELECT pid, backend_type IN ('client backend', 'walsender') \
       AND pid <> pg_backend_pid() \
       AND application_name IS DISTINCT FROM 'pgtmp list' AS counted \
       FROM pg_stat_activity) AS a";

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
    /// Whether the session-level settings a long-lived session needs are made.
    settled: bool,
}

/// What the server says of its processes.
pub struct Census {
    /// Connected clients, idle ones included.
    pub clients: i64,
    /// The other processes it lists: this session, `pgtmp list`'s, background processes.
    pub others: Vec<i32>,
}

impl Session {
    /// Connects; nothing but the startup packet, so that a start waits for one round trip.
    pub fn connect(socket_dir: &Path, port: u16, user: &str) -> Result<Session> {
        let client = config(socket_dir, port, user, "postgres", "pgtmp watchdog")
            // In the startup packet, so they hold before the first statement: whatever -o
            // sets (log_statement=all, a statement_timeout), the polls are never logged and
            // never cancelled.
            .options(SESSION_OPTIONS)
            .connect_timeout(Duration::from_secs(10))
            .connect(postgres::NoTls)
            .with_context(|| format!("cannot connect to the server in {}", socket_dir.display()))?;
        Ok(Session {
            client,
            settled: false,
        })
    }

    /// Connects to database `test` once and leaves: the server then has the catalog caches
    /// of `test` written (the relation cache's init file), which the first client's connection
    /// would otherwise build, a few ms of a pre-started server's first query. The session ends
    /// before the server is handed out, so it never blocks `CREATE DATABASE ... TEMPLATE test`.
    pub fn warm_up(socket_dir: &Path, port: u16, user: &str) -> Result<()> {
        let client = config(socket_dir, port, user, "test", "pgtmp warm-up")
            .options(SESSION_OPTIONS)
            .connect_timeout(Duration::from_secs(10))
            .connect(postgres::NoTls)
            .with_context(|| format!("cannot connect to the server in {}", socket_dir.display()))?;
        client
            .close()
            .context("cannot end the warm-up session with the server")
    }

    /// The clients and the other processes the server lists now.
    pub fn census(&mut self) -> Result<Census> {
        if !self.settled {
            // PostgreSQL 14+ only; an older server rejects the name, which is fine.
            let _ = self.client.batch_execute("SET idle_session_timeout = 0");
            self.settled = true;
        }
        let messages = self
            .client
            .simple_query(CENSUS)
            .context("cannot count the server's clients")?;
        let row = messages
            .iter()
            .find_map(|message| match message {
                postgres::SimpleQueryMessage::Row(row) => Some(row),
                _ => None,
            })
            .ok_or_else(|| anyhow!("the server's client count came without a row"))?;
        let clients = row
            .get(0)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("the server's client count is not a number"))?;
        let others = row
            .get(1)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect();
        Ok(Census { clients, others })
    }

    /// Runs one statement that returns no rows.
    pub fn execute(&mut self, sql: &str) -> Result<()> {
        self.client
            .batch_execute(sql)
            .with_context(|| format!("cannot run {sql}"))
    }

    /// Gives `user`, the session's own role, a password by sending only its SCRAM verifier.
    ///
    /// Written to pg_authid directly, as its superuser may: `ALTER ROLE ... PASSWORD` first
    /// checks that the password is not the empty one, which for a SCRAM verifier means
    /// 4096 rounds of PBKDF2 on the server, 7 ms of every `-t` start (measured on 15). The
    /// verifier is made by pgtmp from a random password, never the empty one; the catalog
    /// update invalidates the server's caches as ALTER ROLE's does. A role that is not a
    /// superuser (a pg_tmp cluster's?) gets ALTER ROLE.
    pub fn set_password(&mut self, user: &str, verifier: &str) -> Result<()> {
        // The verifier holds only base64 letters, digits, '$', ':', '+', '/' and '=': no quotes.
        let direct =
            format!("UPDATE pg_authid SET rolpassword = '{verifier}' WHERE rolname = current_user");
        let updated = self.client.simple_query(&direct).ok().and_then(|messages| {
            messages.iter().find_map(|message| match message {
                postgres::SimpleQueryMessage::CommandComplete(rows) => Some(*rows),
                _ => None,
            })
        });
        if updated == Some(1) {
            return Ok(());
        }
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
