//! Who is involved in a run (the invoking account, the account the server runs as) and where
//! its state lives; establishing it drops root privileges for good. Root keeps one state
//! directory per server account, so a command on existing clusters finds the account first:
//! the one whose state holds the cluster named, or each of them in turn.

use crate::lifecycle::directory;
use crate::os::account::{self, Account, RunAs};
use crate::os::detach::{self, Forked};
use crate::output::url;
use crate::state::clusters;
use crate::state::instance::{Instance, State};
use crate::state::safefs::Dir;
use crate::state::statedir::{self, StateDir};
use anyhow::{Context, Result, anyhow, bail};
use nix::sys::wait::{WaitStatus, waitpid};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// Who is involved in this run and where its state lives. Establishing it switches a root
/// process to the server account for good.
pub struct Session {
    pub invoker: Account,
    pub server: Account,
    pub state: StateDir,
}

/// The cluster a command acts on, as the user named it.
pub enum Target<'a> {
    /// Any form of URL pgtmp prints.
    Url(&'a str),
    /// A cluster directory (absolute).
    Dir(&'a Path),
}

impl Session {
    /// `dir` is a `-d` directory that root hands over to the server account if it is empty.
    pub fn establish(run_as: RunAs, dir: Option<&Path>) -> Result<Session> {
        let invoker = Account::current()?;
        let server = server_for(&invoker, run_as)?;
        Session::establish_as(invoker, server, dir)
    }

    fn establish_as(invoker: Account, server: Account, dir: Option<&Path>) -> Result<Session> {
        let path = statedir::location_for(&invoker, &server)?;
        let (state, made) = StateDir::establish(path, &invoker, &server)?;
        // Checked with the server account's ids while root can still remove what it made.
        let checked = account::check_as(&server, || state.check_usable(&server)).and_then(|()| {
            match dir.filter(|_| invoker.uid != server.uid) {
                Some(dir) => directory::hand_over(dir, &server),
                None => Ok(()),
            }
        });
        if let Err(err) = checked {
            if let Some(top) = made {
                statedir::unmake(&state.path, &top);
            }
            return Err(err);
        }
        account::become_account(&server)?;
        Ok(Session {
            invoker,
            server,
            state,
        })
    }

    /// The session of a command on one existing cluster (`stop`, `clone`, `schema`): for root
    /// without a --run-as, that of the server account whose state holds `target`, so that
    /// it need not be named again. Which one that is is only looked up here (as `list`
    /// reads); the session's account then proves the cluster its own as always.
    pub fn establish_for(run_as: RunAs, target: &Target) -> Result<Session> {
        let (invoker, mut covered) = covered(run_as)?;
        let index = match covered.len() {
            1 => 0,
            _ => holder_of(&covered, target).unwrap_or(0),
        };
        let (server, _) = covered.swap_remove(index);
        Session::establish_as(invoker, server, None)
    }

    /// [`Session::establish_for`] the cluster of a URL in any form pgtmp prints it; also returns
    /// the URL as read (`uri(None)` of it is the cluster's URL).
    pub fn establish_for_url(run_as: RunAs, text: &str) -> Result<(Session, url::Conn)> {
        let conn = url::read(text)?;
        let session = Session::establish_for(run_as, &Target::Url(&conn.uri(None)))?;
        Ok((session, conn))
    }

    /// The running cluster of the invoker's that `cluster_url` names: its directory and state.
    pub fn running(&self, cluster_url: &str) -> Result<(Instance, State)> {
        clusters::running(&self.state.path, self.invoker.uid.as_raw(), cluster_url)
    }

    /// Runs `work` in the session of every server account [`covered`] names: in this process
    /// when there is one, else each in a child forked for it (a process drops root only once),
    /// one after the other. Every failure is reported, in one error.
    pub fn in_each(run_as: RunAs, work: impl Fn(&Session) -> Result<()>) -> Result<()> {
        let (invoker, covered) = covered(run_as)?;
        if let [(server, _)] = covered.as_slice() {
            return work(&Session::establish_as(invoker, server.clone(), None)?);
        }
        let mut failures = Vec::new();
        for (server, _) in covered {
            let name = server.name.clone();
            if let Err(err) =
                in_child(|| work(&Session::establish_as(invoker.clone(), server, None)?))
            {
                failures.push(format!("as {name}: {err:#}"));
            }
        }
        match failures.as_slice() {
            [] => Ok(()),
            [one] => Err(anyhow!("{one}")),
            many => bail!("{}", many.join("; ")),
        }
    }

    /// The database superuser: the invoking account's login name.
    pub fn user(&self) -> &str {
        &self.invoker.name
    }
}

/// The account a start of `invoker`'s runs the server as: the invoker itself, or for root
/// the account --run-as (or PGTMP_RUN_AS) names, else the owner of an existing PGTMP_DIR
/// (the account root handed it to), else `postgres` (else `nobody`).
pub fn server_for(invoker: &Account, run_as: RunAs) -> Result<Account> {
    let named = run_as.for_invoker(invoker.is_root());
    if invoker.is_root()
        && named.is_none()
        && !statedir::chosen_automatically()
        && let Some(owner) = explicit_dir_owner()?
    {
        return Ok(owner);
    }
    account::server_account(invoker, named)
}

/// The invoker, and the server accounts whose state a command on existing clusters covers,
/// each with its state directory's path. For anyone but root, the invoker itself. For root:
/// the account --run-as (or PGTMP_RUN_AS) names; else with PGTMP_DIR set the account that
/// owns it; else every account root has a state directory for (in `pgtmp-root/`), or the
/// default server account when there is none.
pub fn covered(run_as: RunAs) -> Result<(Account, Vec<(Account, PathBuf)>)> {
    let invoker = Account::current()?;
    let named = run_as.for_invoker(invoker.is_root());
    let mut servers = Vec::new();
    if invoker.is_root() && named.is_none() && statedir::chosen_automatically() {
        servers = root_servers();
    }
    if servers.is_empty() {
        servers.push(server_for(&invoker, run_as)?);
    }
    let mut covered = Vec::new();
    for server in servers {
        let path = statedir::location_for(&invoker, &server)?;
        if !covered.iter().any(|(_, p)| *p == path) {
            covered.push((server, path));
        }
    }
    Ok((invoker, covered))
}

/// The accounts root has state directories for, by their names in root's own `pgtmp-root/`
/// (which nobody else can write into); a name that is no (unprivileged) account is skipped.
fn root_servers() -> Vec<Account> {
    let tmpdir = std::env::var("TMPDIR").ok();
    let mut servers: Vec<Account> = Vec::new();
    for place in statedir::root_states(tmpdir.as_deref()) {
        let names = statedir::root_state_names(&place).unwrap_or_else(|err| {
            clusters::warn_skipping(&place, &err);
            Vec::new()
        });
        for name in names {
            match Account::by_name(&name) {
                Ok(Some(server)) if !server.is_root() => {
                    if !servers.contains(&server) {
                        servers.push(server);
                    }
                }
                _ => clusters::warn_skipping(
                    &place.join(&name),
                    &anyhow!("no unprivileged account is named {name}"),
                ),
            }
        }
    }
    servers
}

/// The unprivileged account owning an existing PGTMP_DIR, when it is one with an entry in
/// the user database: the account root handed it to.
fn explicit_dir_owner() -> Result<Option<Account>> {
    let tmpdir = std::env::var("TMPDIR").ok();
    let pgtmp_dir = std::env::var("PGTMP_DIR").ok();
    let path = statedir::location(pgtmp_dir.as_deref(), tmpdir.as_deref(), 0, "")?;
    let Ok(Some(dir)) = Dir::open_if_exists(&path) else {
        return Ok(None);
    };
    let uid = dir.stat()?.st_uid;
    Ok(Account::by_uid(uid)?.filter(|owner| !owner.is_root()))
}

/// Which of the covered accounts holds the cluster `target` names: the owner of a socket
/// URL's or `-d` directory, or the one with a TCP cluster on the URL's port. Only picks whose
/// session to establish; that session checks the rest.
fn holder_of(covered: &[(Account, PathBuf)], target: &Target) -> Option<usize> {
    let dir = match target {
        Target::Dir(dir) => dir.to_path_buf(),
        Target::Url(text) => match url::parse(text).ok()? {
            url::Target::Socket(dir) => dir,
            url::Target::Tcp { port, .. } => {
                return covered.iter().position(|(_, path)| listens_on(path, port));
            }
        },
    };
    let uid = Dir::open_if_exists(&dir).ok()??.stat().ok()?.st_uid;
    covered
        .iter()
        .position(|(server, _)| server.uid.as_raw() == uid)
}

/// True when the state directory at `path` has a TCP cluster on `port`.
fn listens_on(path: &Path, port: u16) -> bool {
    let Ok(Some(state)) = clusters::open_state_dir(path) else {
        return false;
    };
    clusters::all(&state).iter().any(|cluster| {
        cluster
            .read_state()
            .is_ok_and(|s| s.is_some_and(|s| s.tcp && s.port == port))
    })
}

/// Runs `work` in a forked child and waits for it; its error comes back through a pipe.
fn in_child(work: impl FnOnce() -> Result<()>) -> Result<()> {
    let (mut reader, mut writer) = std::io::pipe().context("cannot create a pipe")?;
    let pid = match detach::fork()? {
        Forked::Child => {
            drop(reader);
            let code = match work() {
                Ok(()) => 0,
                Err(err) => {
                    let _ = write!(writer, "{err:#}");
                    i32::from(crate::output::exit::code_for(&err).max(1))
                }
            };
            let _ = std::io::stdout().flush();
            std::process::exit(code);
        }
        Forked::Parent(pid) => pid,
    };
    drop(writer);
    let status = loop {
        match waitpid(pid.nix(), None) {
            Ok(status) => break status,
            Err(nix::errno::Errno::EINTR) => {}
            Err(err) => bail!("cannot wait for process {pid}: {err}"),
        }
    };
    // A process the child left running may hold the write end: read what is there.
    nix::fcntl::fcntl(
        reader.as_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .context("cannot read the child's report")?;
    let mut report = Vec::new();
    let _ = reader.read_to_end(&mut report);
    let message = String::from_utf8_lossy(&report);
    match status {
        WaitStatus::Exited(_, 0) => Ok(()),
        WaitStatus::Exited(..) if !message.is_empty() => Err(anyhow!("{message}")),
        other => bail!("process {pid} ended with {other:?}"),
    }
}
