//! Pre-started servers: clusters already running and waiting in the pool, so that a start
//! only has to claim one; unclaimed ones stop by themselves after a while. By default one is
//! pre-started while a series of starts goes on (a start that follows another within the
//! series window), so that nothing runs once the series ends; PGTMP_PRESTART=N keeps N.
//!
//! ```text
//! PGTMP_DIR/pool/<key>/
//!   prestart.lock             held by the one process pre-starting servers
//!   series.<mode>             the series' depth (0: not begun); its change time is the last
//!                             start that could have claimed a server
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
use crate::lifecycle::tcp_ready;
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

/// Longest an unclaimed pre-started server runs with PGTMP_PRESTART=N, unless
/// PGTMP_PRESTART_TIMEOUT says otherwise.
pub const DEFAULT_TTL: u64 = 600;
/// Without PGTMP_PRESTART: how long after a start the next one still belongs to the same
/// series, and so how long the server pre-started for it waits (PGTMP_PRESTART_TIMEOUT
/// overrides both).
pub const SERIES_TTL: u64 = 15;
/// Servers kept waiting while a series goes on: one at first, one more each time a start of
/// the series found none waiting (its starts come faster than one server starts), up to
/// [`SERIES_MAX`].
const SERIES_DEPTH: usize = 1;
const SERIES_MAX: usize = 4;
/// Most pre-started servers per pool and mode.
pub const MAX: usize = 16;

/// How many servers to keep waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    /// PGTMP_PRESTART unset: from [`SERIES_DEPTH`] to [`SERIES_MAX`] while starts keep
    /// coming, none otherwise.
    Series,
    /// PGTMP_PRESTART=N: always N (0 is off).
    Fixed(usize),
}

/// How many servers to keep waiting and the seconds an unclaimed one waits before it stops:
/// PGTMP_PRESTART and PGTMP_PRESTART_TIMEOUT, validated by the caller.
#[derive(Clone, Copy)]
pub struct Settings {
    pub depth: Depth,
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

/// What a start was, for the series of pre-started servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// It could not have used a pre-started server (-d, -p, -o, test data, `run`).
    Unclaimable,
    /// It could have, and found none waiting.
    Missed,
    /// It claimed one.
    Claimed,
}

/// After a start of one mode: tops up the waiting servers of that mode to the depth
/// `settings` asks for, in a detached process that keeps the caller's priority (the servers it
/// starts are the ones tests will use). Starts nothing while the pool has no template yet: the
/// first start for an installation is busy enough.
pub fn replenish_in_background(
    pool: &Pool,
    owner: &Owner,
    tcp: bool,
    served: Served,
    settings: &Settings,
) {
    let count = match settings.depth {
        Depth::Fixed(count) => count,
        Depth::Series if served == Served::Unclaimable => 0,
        Depth::Series => series_depth(pool, tcp, settings.ttl, served).unwrap_or(0),
    };
    if count == 0 || waiting_count(pool, tcp) >= count || !pool.has_template() {
        return;
    }
    if let Ok(Forked::Child) = detach::fork_detached() {
        let _ = replenish(pool, owner, tcp, count, settings.ttl);
        std::process::exit(0);
    }
}

/// Records this start in the pool's series file of its mode, which holds the series' depth;
/// the depth to keep when the previous start came less than `window` seconds ago (one more
/// when this one missed a server pre-started for the series), None when this start is the
/// first of a series. The file is replaced, never
/// written through, so a planted link is never followed; one that cannot be read or replaced
/// ends no series but starts none either.
fn series_depth(pool: &Pool, tcp: bool, window: u64, served: Served) -> Option<usize> {
    let name = format!("series.{}", mode(tcp));
    let dir = crate::state::safefs::Dir::open(&pool.dir).ok()?;
    let previous = dir.stat_at(&name).ok().flatten().map(|st| st.st_ctime);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let going_on = previous.is_some_and(|then| (0..window as i64).contains(&(now - then)));
    // 0: the series has not begun (one start so far); the second start begins it at
    // SERIES_DEPTH, and only later misses count, as nothing could wait for the second.
    let depth = if going_on {
        match dir.read_number::<usize>(&name).unwrap_or(0) {
            0 => SERIES_DEPTH,
            depth if served == Served::Missed => (depth + 1).min(SERIES_MAX),
            depth => depth.min(SERIES_MAX),
        }
    } else {
        0
    };
    dir.write_atomic(&name, format!("{depth}\n").as_bytes())
        .ok()?;
    (depth > 0).then_some(depth)
}

fn replenish(pool: &Pool, owner: &Owner, tcp: bool, count: usize, ttl: u64) -> Result<()> {
    // Another process already tops up: it counts after this start's claim, too.
    let lock_path = pool.dir.join("prestart.lock");
    let Ok(_lock) = ownership::lock_file(&lock_path, FlockArg::LockExclusiveNonblock) else {
        return Ok(());
    };
    let mut started = Ok(());
    while started.is_ok() && waiting_count(pool, tcp) < count {
        started = start_one(pool, owner, tcp, ttl);
    }
    // Each server took a pool entry, after the start that asked for it had looked at the
    // pool: the refill is this process's to ask for.
    pool.refill_in_background(owner.install, owner.user);
    started
}

fn start_one(pool: &Pool, owner: &Owner, tcp: bool, ttl: u64) -> Result<()> {
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
    // A password prepared with the entry saves the server a session before it waits.
    let prepared = tcp_ready::take(&instance).filter(|_| tcp);
    let password_set = prepared.is_some();
    let password = match prepared {
        Some(password) => Some(password),
        None if tcp => Some(secret::password()?),
        None => None,
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
        password,
        password_set,
        timeout: ttl,
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
    fn a_series_begins_with_its_second_start_and_grows_with_misses() {
        let root = tempfile::tempdir().unwrap();
        let pool = Pool {
            dir: root.path().to_path_buf(),
            size: 1,
            max: 1,
        };
        let depth = |served| series_depth(&pool, false, 15, served);
        assert_eq!(depth(Served::Missed), None, "a lone start is no series");
        assert_eq!(
            depth(Served::Missed),
            Some(SERIES_DEPTH),
            "the second begins one"
        );
        assert_eq!(depth(Served::Claimed), Some(1));
        assert_eq!(depth(Served::Missed), Some(2), "a miss: one more");
        assert_eq!(depth(Served::Claimed), Some(2), "a claim keeps the depth");
        for _ in 0..10 {
            depth(Served::Missed);
        }
        assert_eq!(depth(Served::Missed), Some(SERIES_MAX));
        assert_eq!(
            series_depth(&pool, true, 15, Served::Missed),
            None,
            "each mode has its own series"
        );
    }

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
