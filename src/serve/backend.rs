//! Where serve's databases live: its own cluster, started as `pgtmp -t` starts one and tied to
//! serve by a lifeline (it stops when serve goes, however it goes), or an existing server
//! given by `--server URL`, worked on with an admin role that has CREATEDB and CREATEROLE.

use crate::lifecycle::lifeline::{self, Holder};
use crate::lifecycle::start::{self, StartRequest};
use crate::lifecycle::watchdog;
use crate::output::exit;
use crate::server::initdb::quote_ident;
use anyhow::{Context, Result};
use postgres::config::Host;
use postgres::{Client, Config, NoTls};
use std::str::FromStr;
use std::time::Duration;

/// How long a connection to the server may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);

pub struct Backend {
    /// The admin role's connection to its database.
    admin: Config,
    /// The admin database: where schema pgtmp lives.
    pub admin_db: String,
    /// Where clients of handed-out databases connect; None: the host they reached serve by
    /// (serve's own cluster listening on every address).
    host: Option<String>,
    pub port: u16,
    /// Set for serve's own cluster.
    own: Option<Own>,
    /// What to show of the backend: "own cluster" or the server URL without its password.
    pub shown: String,
}

/// serve's own cluster: the lifeline held, and what stopping it needs.
struct Own {
    holder: Holder,
    watchdog_pid: crate::os::process::Pid,
    dir: String,
}

impl Backend {
    /// Starts serve's own cluster. Must be called while the process has one thread: it forks
    /// the watchdog (and drops root for good, as any start does).
    pub fn own(request: &StartRequest) -> Result<Backend> {
        let (holder, line) = lifeline::pair()?;
        // Held by serve alone: a watchdog holding it too would never see it cut.
        crate::os::detach::keep_from_detached(holder.fd());
        let launched = start::launch(request, Some(line))?;
        let cluster = launched.cluster.clone();
        launched.refill_pool();
        let admin = crate::server::client::config(
            &cluster.socket_dir,
            cluster.port,
            &cluster.user,
            "postgres",
            "pgtmp serve",
        );
        let backend = Backend {
            admin,
            admin_db: "postgres".into(),
            host: match request.listen {
                None => Some("127.0.0.1".into()),
                Some(ip) if ip.is_unspecified() => None,
                Some(ip) => Some(ip.to_string()),
            },
            port: cluster.port,
            own: Some(Own {
                holder,
                watchdog_pid: cluster.watchdog_pid,
                dir: cluster.socket_dir.display().to_string(),
            }),
            shown: format!("own cluster in {}", cluster.socket_dir.display()),
        };
        Ok(backend)
    }

    /// Creates schema pgtmp if it is missing, and closes to the roles serve hands out the
    /// databases that were there before: every one in serve's own cluster (postgres,
    /// template1, test); on a shared server only the admin database, when the admin role
    /// owns it (else a note says that the roles may connect to it, and read nothing of
    /// pgtmp's there). On failure serve's own cluster is stopped.
    pub fn prepare(self) -> Result<Backend> {
        let prepared = self.connect(&self.admin_db).and_then(|mut client| {
            crate::serve::store::install(&mut client)?;
            self.close_to_public(&mut client)
        });
        match prepared {
            Ok(()) => Ok(self),
            Err(err) => {
                let _ = self.stop();
                Err(err)
            }
        }
    }

    fn close_to_public(&self, client: &mut Client) -> Result<()> {
        let query = if self.is_own() {
            "SELECT datname FROM pg_database WHERE datallowconn"
        } else {
            "SELECT datname FROM pg_database \
             WHERE datname = current_database() AND datdba = (SELECT oid FROM pg_roles WHERE rolname = current_user)"
        };
        let names: Vec<String> = client
            .query(query, &[])
            .context("cannot list the databases to close")?
            .iter()
            .map(|row| row.get(0))
            .collect();
        if names.is_empty() {
            eprintln!(
                "pgtmp serve: note: the roles serve hands out may connect to database {} (not the admin role's own), though they read nothing of schema pgtmp there; REVOKE CONNECT ON DATABASE {} FROM PUBLIC to close it",
                self.admin_db,
                quote_ident(&self.admin_db)
            );
        }
        for name in names {
            client
                .batch_execute(&format!(
                    "REVOKE ALL ON DATABASE {} FROM PUBLIC",
                    quote_ident(&name)
                ))
                .with_context(|| format!("cannot revoke CONNECT on {name} from PUBLIC"))?;
        }
        Ok(())
    }

    /// An existing server, by the admin role's URL.
    pub fn server(url: &str) -> Result<Backend> {
        let mut admin = Config::from_str(url).map_err(|err| {
            exit::usage(format!(
                "--server {}: not a PostgreSQL URL ({err}); give postgresql://ADMIN:PASSWORD@HOST:PORT/DATABASE",
                hide_password(url)
            ))
        })?;
        let host = match admin.get_hosts().first() {
            Some(Host::Tcp(name)) => name.clone(),
            Some(Host::Unix(path)) => path.display().to_string(),
            None => {
                return Err(exit::usage(format!(
                    "--server {}: the URL names no host; give postgresql://ADMIN:PASSWORD@HOST:PORT/DATABASE",
                    hide_password(url)
                )));
            }
        };
        let port = admin.get_ports().first().copied().unwrap_or(5432);
        let admin_db = admin
            .get_dbname()
            .or(admin.get_user())
            .unwrap_or("postgres")
            .to_string();
        admin.application_name("pgtmp serve");
        Ok(Backend {
            admin,
            admin_db,
            host: Some(host),
            port,
            own: None,
            shown: hide_password(url),
        })
    }

    /// Where a client that reached serve at `reached` (its Host header) finds the databases.
    pub fn host_for(&self, reached: Option<&str>) -> String {
        if let Some(host) = &self.host {
            return host.clone();
        }
        let reached = reached.unwrap_or("127.0.0.1");
        let host = match reached.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(rest),
            None => reached.rsplit_once(':').map_or(reached, |(host, _)| host),
        };
        host.to_string()
    }

    /// The host shown at start.
    pub fn host_shown(&self) -> &str {
        self.host
            .as_deref()
            .unwrap_or("(the host clients reach serve by)")
    }

    pub fn is_own(&self) -> bool {
        self.own.is_some()
    }

    /// A connection of the admin role to `database`.
    pub fn connect(&self, database: &str) -> Result<Client> {
        let mut config = self.admin.clone();
        config.dbname(database).connect_timeout(CONNECT_LIMIT);
        let connected = if self.is_own() {
            // Its own cluster's socket: no TLS on a Unix socket.
            config.connect(NoTls)
        } else {
            config.connect(crate::server::tlsclient::connector()?)
        };
        connected
            .with_context(|| format!("cannot connect to database {database} on {}", self.shown))
    }

    /// Stops serve's own cluster and waits until it is gone; nothing for an existing server.
    pub fn stop(self) -> Result<()> {
        let Some(own) = self.own else {
            return Ok(());
        };
        // The watchdog stops the server and removes the directory, as at its timeout.
        let stopped = watchdog::stop_watchdog(own.watchdog_pid, &own.dir);
        drop(own.holder);
        stopped
    }
}

/// `url` with any password replaced by `***`, for messages and the status page.
pub fn hide_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{hosts}{tail}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            hide_password("postgresql://fleet:s3cret@db.example:5432/fleet?sslmode=require"),
            "postgresql://fleet:***@db.example:5432/fleet?sslmode=require"
        );
        assert_eq!(
            hide_password("postgresql://fleet@db/x"),
            "postgresql://fleet@db/x"
        );
        assert_eq!(hide_password("host=db"), "host=db");
    }
}
