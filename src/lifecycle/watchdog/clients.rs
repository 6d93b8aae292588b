//! Whether a client is connected, told from the postmaster's child processes while none is,
//! so that an idle cluster holds no session of the watchdog's (one backend, ~3 MB).
//!
//! Every backend is a child of the postmaster. Children that are not clients are known by
//! their process title (`postgres: CLUSTER: checkpointer`), or because the server listed them
//! as something other than a client the last time the watchdog asked. Any other child may be
//! a client, so the watchdog connects and asks the server ([`Session::census`]); it keeps that
//! session while clients are connected and closes it once none is. Where the kernel does not
//! list children, or an answer cannot be had, the session decides, or the server counts as
//! busy: a failed look never stops a server in use.

use crate::os::pid::Pid;
use crate::os::procfs;
use crate::server::client::Session;
use std::path::PathBuf;

/// Titles of the server's own processes, which never serve a client, after `postgres: ` and
/// the cluster name: those not in pg_stat_activity on some major (the logger, the statistics
/// collector of 14 and older, the archiver of 13), and those every server has, which saves
/// the first look's connection.
const NOT_CLIENTS: &[&str] = &[
    "logger",
    "stats collector",
    "archiver",
    "checkpointer",
    "background writer",
    "walwriter",
    "autovacuum launcher",
    "logical replication launcher",
    "walsummarizer",
];

/// What the watchdog knows of its server's clients, and the socket to ask the server on.
pub(super) struct Clients {
    socket_dir: PathBuf,
    port: u16,
    user: String,
    /// Open while clients are connected (and from the handshake to the first look).
    pub session: Option<Session>,
    /// Children known to be no client (by title, or listed so by the server), by pid and
    /// start time (a pid alone could be reused by a new backend).
    not_clients: Vec<(Pid, u64)>,
}

impl Clients {
    pub fn new(socket_dir: PathBuf, port: u16, user: String) -> Clients {
        Clients {
            socket_dir,
            port,
            user,
            session: None,
            not_clients: Vec::new(),
        }
    }

    /// True when a client is connected, or when that cannot be told.
    pub fn busy(&mut self, postmaster: Pid) -> bool {
        if self.session.is_none() {
            if self.only_server_processes(postmaster) {
                return false;
            }
            // The session was never opened, closed while idle, or terminated (e.g.
            // pg_terminate_backend by a test): connect.
            self.session = Session::connect(&self.socket_dir, self.port, &self.user).ok();
        }
        let Some(session) = self.session.as_mut() else {
            return true;
        };
        match session.census() {
            Ok(census) if census.clients > 0 => true,
            Ok(census) => {
                // This session's own backend is among `others`: its exit is no client.
                self.not_clients = census
                    .others
                    .into_iter()
                    .map(Pid::from_raw)
                    .filter_map(|pid| Some((pid, procfs::start_time(pid)?)))
                    .collect();
                self.session = None;
                false
            }
            Err(_) => {
                self.session = None;
                true
            }
        }
    }

    /// True when every child of the postmaster is known to be no client. False when one may
    /// be, or the children cannot be listed.
    fn only_server_processes(&mut self, postmaster: Pid) -> bool {
        let Some(children) = procfs::thread_children(postmaster) else {
            return false;
        };
        let mut known = Vec::with_capacity(children.len());
        let mut unknown = false;
        for pid in children {
            let Some(start) = procfs::start_time(pid) else {
                // Gone since the list was read.
                continue;
            };
            // A title once recognised is remembered: the next look need not read it again.
            if self.not_clients.contains(&(pid, start)) || is_server_process(pid) {
                known.push((pid, start));
            } else {
                unknown = true;
            }
        }
        // Only the ones still running, so that a reused pid is never taken for one that exited.
        self.not_clients = known;
        !unknown
    }
}

/// True for a process whose title names one of the server's own processes.
fn is_server_process(pid: Pid) -> bool {
    procfs::args(pid)
        .and_then(|args| args.into_iter().next())
        .is_some_and(|title| server_title(&String::from_utf8_lossy(&title)))
}

/// True for `postgres: [CLUSTER: ]NAME` with NAME one of [`NOT_CLIENTS`]. A client's title is
/// `postgres: [CLUSTER: ]USER DATABASE HOST ACTIVITY`: never one of those names alone.
fn server_title(title: &str) -> bool {
    let Some(rest) = title.strip_prefix("postgres: ") else {
        return false;
    };
    let rest = rest.trim_end_matches(['\0', ' ']);
    let name = rest.rsplit_once(": ").map_or(rest, |(_, name)| name);
    NOT_CLIENTS.contains(&name) || NOT_CLIENTS.contains(&rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_processes_are_told_by_title() {
        assert!(server_title("postgres: pgtmp-ab12: checkpointer "));
        assert!(server_title("postgres: checkpointer"));
        assert!(server_title("postgres: pgtmp-ab12: stats collector \0\0"));
        assert!(server_title("postgres: my: cluster: walwriter"));
        assert!(!server_title(
            "postgres: pgtmp-ab12: alice test [local] idle"
        ));
        assert!(!server_title(
            "postgres: pgtmp-ab12: checkpointer test [local] idle"
        ));
        assert!(!server_title(
            "postgres: pgtmp-ab12: autovacuum worker test"
        ));
        assert!(!server_title(
            "/usr/lib/postgresql/15/bin/postgres -D /tmp/x/data"
        ));
        assert!(!server_title("checkpointer"));
    }
}
