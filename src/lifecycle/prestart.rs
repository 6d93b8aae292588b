//! Pre-started servers (PGTMP_PRESTART=N): clusters already running and waiting in the pool,
//! so that a start only has to claim one; unclaimed ones stop by themselves after a while.
//!
//! ```text
//! PGTMP_DIR/pool/<key>/
//!   prestart.lock             held by the one process pre-starting servers
//!   waiting.<mode>.<name>     PGTMP_DIR/<name> runs unclaimed (mode: socket or tcp)
//!   claimed.<name>            a start took it; its watchdog reads the claim and removes this
//! PGTMP_DIR/<name>/
//!   waiting                   present while unclaimed (`pgtmp list` leaves such servers out)
//!   claim                     the claiming start's -w and -k, for the watchdog
//!   password                  a waiting TCP cluster's password (0600), removed by the claim
//! ```
//!
//! Claiming renames `waiting.*` away and the watchdog of an unclaimed server that gives up
//! unlinks it: exactly one of the two succeeds, so a server is never handed out while it
//! stops. Only starts without -d, -p and -o are served this way.

use crate::lifecycle::claim::{Claim, PASSWORD_FILE, Waiting};
use crate::lifecycle::pool::{self, CLAIMED, Pool, WAITING};
use crate::lifecycle::watchdog::{self, OnFailure, Plan};
use crate::os::detach::{self, Forked};
use crate::os::secret;
use crate::server::discover::Installation;
use crate::state::instance::{Instance, State};
use crate::state::ownership;
use crate::state::statedir::StateDir;
use anyhow::{Context, Result, bail};
use nix::fcntl::FlockArg;
use nix::sys::signal::Signal;
use std::fs;
use std::path::PathBuf;

/// Longest an unclaimed pre-started server runs, unless PGTMP_PRESTART_TIMEOUT says otherwise.
pub const DEFAULT_TTL: u64 = 600;
/// Most pre-started servers per pool and mode.
pub const MAX: usize = 16;

/// How many servers to keep waiting (0 is off) and the seconds an unclaimed one waits before
/// it stops: PGTMP_PRESTART and PGTMP_PRESTART_TIMEOUT, validated by the caller.
#[derive(Clone, Copy)]
pub struct Settings {
    pub count: usize,
    pub ttl: u64,
}

fn mode(tcp: bool) -> &'static str {
    if tcp { "tcp" } else { "socket" }
}

/// A pre-started server that a start has just claimed.
pub struct Claimed {
    pub instance: Instance,
    pub state: State,
    pub password: Option<String>,
}

fn tokens(pool: &Pool, tcp: bool) -> Vec<(PathBuf, String)> {
    let prefix = format!("{WAITING}{}.", mode(tcp));
    pool::entries(&pool.dir, &prefix)
        .into_iter()
        .filter_map(|path| {
            let name = path
                .file_name()?
                .to_str()?
                .strip_prefix(&prefix)?
                .to_string();
            Some((path, name))
        })
        .collect()
}

/// Number of servers waiting for a claim.
pub fn waiting_count(pool: &Pool, tcp: bool) -> usize {
    tokens(pool, tcp).len()
}

/// Claims a waiting server of the right mode, if there is one, and tells its watchdog about
/// `claim`. A socket-only server must use `socket_port` (the caller's $PGPORT or 5432) in its
/// socket file's name, since the URL names no port. Servers whose watchdog has died are passed
/// over and their tokens removed.
pub fn claim(
    pool: &Pool,
    state_dir: &StateDir,
    tcp: bool,
    socket_port: u16,
    claim: Claim,
) -> Result<Option<Claimed>> {
    for (token, name) in tokens(pool, tcp) {
        let instance = Instance::new(state_dir.instance_path(&name));
        let state = match instance.read_state() {
            Ok(Some(state)) if tcp || state.port == socket_port => state,
            _ => continue,
        };
        let claimed = pool.dir.join(format!("{CLAIMED}{name}"));
        if fs::rename(&token, &claimed).is_err() {
            continue; // someone else was faster, or it just gave up
        }
        let watchdog = crate::state::safefs::Dir::open(&instance.dir).and_then(|dir| {
            ownership::prove_watchdog(
                &dir,
                state.watchdog_pid,
                state.watchdog_start,
                nix::unistd::geteuid(),
            )
        });
        let Ok(Some(watchdog)) = watchdog else {
            let _ = fs::remove_file(&claimed);
            continue;
        };
        let password = if tcp {
            let path = instance.dir.join(PASSWORD_FILE);
            let password = crate::state::safefs::read_text_at(&path)?
                .with_context(|| format!("{} is missing", path.display()))?;
            let _ = fs::remove_file(&path);
            Some(password)
        } else {
            None
        };
        claim.write(&instance)?;
        // A wake-up only: the watchdog also looks for the claim on every tick.
        let _ = watchdog.signal(Signal::SIGUSR1);
        return Ok(Some(Claimed {
            instance,
            state,
            password,
        }));
    }
    Ok(None)
}

/// Who the pre-started servers are for.
pub struct Owner<'a> {
    pub install: &'a Installation,
    pub user: &'a str,
    pub owner_uid: u32,
    pub state_dir: &'a StateDir,
    /// The number in a socket-only server's socket file name.
    pub socket_port: u16,
}

/// Tops up the waiting servers of one mode to `settings.count`, in a detached process that
/// keeps the caller's priority (the servers it starts are the ones tests will use). Starts
/// nothing while the pool has no template yet: the first start for an installation is busy
/// enough.
pub fn replenish_in_background(pool: &Pool, owner: &Owner, tcp: bool, settings: &Settings) {
    if settings.count == 0 || waiting_count(pool, tcp) >= settings.count || !pool.has_template() {
        return;
    }
    if let Ok(Forked::Child) = detach::fork_detached() {
        let _ = replenish(pool, owner, tcp, settings);
        std::process::exit(0);
    }
}

fn replenish(pool: &Pool, owner: &Owner, tcp: bool, settings: &Settings) -> Result<()> {
    // Another process already tops up: it counts after this start's claim, too.
    let lock_path = pool.dir.join("prestart.lock");
    let Ok(_lock) = ownership::lock_file(&lock_path, FlockArg::LockExclusiveNonblock) else {
        return Ok(());
    };
    while waiting_count(pool, tcp) < settings.count {
        start_one(pool, owner, tcp, settings)?;
    }
    Ok(())
}

fn start_one(pool: &Pool, owner: &Owner, tcp: bool, settings: &Settings) -> Result<()> {
    let name = pool::new_name()?;
    // As for any start: PGTMP_DIR is held shared until the new directory is locked, so that a
    // sweep never takes it for a dead run's leftover (see ownership.rs).
    let gate = ownership::lock_shared(&owner.state_dir.path)?;
    let Some(instance) = pool.take_prepared(&owner.state_dir.instance_path(&name))? else {
        return Ok(());
    };
    let lock = match ownership::try_lock(&instance.dir) {
        Ok(Some(lock)) => lock,
        Ok(None) => bail!("{} is locked by another process", instance.dir.display()),
        Err(err) => {
            watchdog::dispose(&instance, OnFailure::Remove);
            return Err(err);
        }
    };
    drop(gate);
    let port = if tcp {
        portpicker::pick_unused_port().context("no free TCP port on 127.0.0.1")?
    } else {
        owner.socket_port
    };
    let plan = Plan {
        install: owner.install.clone(),
        instance,
        user: owner.user.to_string(),
        owner_uid: owner.owner_uid,
        tcp,
        listen: None,
        port,
        port_fixed: false,
        password: if tcp { Some(secret::password()?) } else { None },
        timeout: settings.ttl,
        keep: false,
        owner: None,
        options: Vec::new(),
        on_failure: OnFailure::Remove,
        create_test: false,
        registration: None,
        lifeline: None,
        _lock: lock,
        waiting: Some(Waiting {
            token: pool.dir.join(format!("{WAITING}{}.{name}", mode(tcp))),
            claimed: pool.dir.join(format!("{CLAIMED}{name}")),
        }),
    };
    watchdog::launch(plan).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_of_claim_and_withdraw_wins() {
        let root = tempfile::tempdir().unwrap();
        let instance = Instance::new(root.path().join("inst"));
        fs::create_dir(&instance.dir).unwrap();
        let waiting = Waiting {
            token: root.path().join("waiting.socket.inst"),
            claimed: root.path().join("claimed.inst"),
        };
        waiting.publish(&instance, None).unwrap();
        assert_eq!(waiting.take_claim(&instance), None, "unclaimed");
        fs::rename(&waiting.token, &waiting.claimed).unwrap();
        assert!(
            !waiting.withdraw(),
            "a claimed server is not the watchdog's to stop"
        );
        assert_eq!(waiting.take_claim(&instance), None, "claim not written yet");
        let claim = Claim {
            timeout: 3,
            keep: false,
            owner: None,
        };
        claim.write(&instance).unwrap();
        assert_eq!(waiting.take_claim(&instance), Some(claim));
        assert!(!waiting.claimed.exists());
    }
}
