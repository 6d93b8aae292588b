//! The sweep: removes what dead pgtmp runs left in PGTMP_DIR (`pgtmp gc`, and at most once a
//! minute in the background after a start).
//!
//! What it removes, each only after proving it is pgtmp's own and that no live pgtmp process
//! looks after it (see ownership.rs for the lock protocol):
//! - instance directories nobody holds the lock of: a directory with pgtmp's marker (or the
//!   mark of a killed start that was still preparing it, see instance.rs), owned by
//!   this account, directly under PGTMP_DIR, never through a symlink. A server still running
//!   there is stopped first (its pid proven by start time and command line), the shared
//!   memory of a killed one is released, and a directory started with -k is kept;
//! - registrations of clusters outside PGTMP_DIR (`-d`) whose watchdog is gone, after stopping
//!   their server the same way; nothing outside PGTMP_DIR is ever removed;
//! - records of kept clusters outside PGTMP_DIR whose directory is gone or no longer kept;
//! - directories a watchdog killed while removing them left under their hidden name (`.gone.*`);
//! - incomplete pool entries (`pool/<key>/new.*`) while no refiller holds that pool's lock.
//!
//! Before a directory that may hold a data directory is removed, the shared memory that killed
//! processes left for it (an initdb's backends record nothing) is released: see
//! [`shm::release_left_in`].

use crate::os::process;
use crate::server::cluster;
use crate::server::shm;
use crate::state::instance::GONE;
use crate::state::instance::{Instance, NAME_ALPHABET, State};
use crate::state::ownership::{self, DirLock};
use crate::state::statedir::{self, INSTANCE_NAME_LEN, KEPT, REGISTERED, StateDir};
use anyhow::{Result, bail};
use nix::fcntl::{Flock, FlockArg};
use nix::unistd::geteuid;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A background sweep runs at most this often (recorded in PGTMP_DIR/.swept).
pub const INTERVAL: Duration = Duration::from_secs(60);
/// How long `pgtmp gc` waits for starts that are claiming a directory right now.
const GATE_WAIT: Duration = Duration::from_secs(30);
const STAMP: &str = ".swept";

/// One thing a sweep did (or, in a dry run, would do), with what it was done to.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Removed: what it was, with its path ("stale registration /tmp/...").
    Removed(String),
    /// Stopped: the server, with its pid and directory.
    Stopped(String),
    /// Left alone, and why ("/tmp/...: processes still run in it").
    Skipped(String),
}

impl Action {
    /// The line `pgtmp gc` prints: "removed ...", or in a dry run "would remove ...".
    pub fn describe(&self, dry_run: bool) -> String {
        match (self, dry_run) {
            (Action::Removed(what), false) => format!("removed {what}"),
            (Action::Removed(what), true) => format!("would remove {what}"),
            (Action::Stopped(what), false) => format!("stopped {what}"),
            (Action::Stopped(what), true) => format!("would stop {what}"),
            (Action::Skipped(why), _) => format!("skipped {why}"),
        }
    }
}

/// What a sweep did, in order.
pub type Actions = Vec<Action>;

/// What a sweep keeps of the prepared state, validated by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// How long a schema cache entry may go unused (PGTMP_CACHE_DAYS).
    pub cache_age: Duration,
    /// The most the pools and the schema cache may take together (PGTMP_DISK_MAX).
    pub disk_max: u64,
}

/// Sweeps PGTMP_DIR. `wait`: wait for starts that hold PGTMP_DIR (else skip the instance
/// directories this time). `dry_run`: only say what would be done.
pub fn sweep(state: &StateDir, dry_run: bool, wait: bool, policy: Policy) -> Result<Actions> {
    let mut actions = Actions::new();
    let (orphans, registrations) = lock_idle(state, wait)?;
    for (instance, _lock) in &orphans {
        if let Err(err) = sweep_instance(instance, dry_run, &mut actions) {
            actions.push(Action::Skipped(format!(
                "{}: {err:#}",
                instance.dir.display()
            )));
        }
    }
    sweep_registrations(&registrations, dry_run, &mut actions);
    sweep_kept_records(state, dry_run, &mut actions);
    sweep_gone(state, dry_run, &mut actions);
    sweep_prepared(state, policy, dry_run, &mut actions);
    Ok(actions)
}

/// An idle instance directory, locked by this sweep.
type Orphan = (Instance, DirLock);
/// A registration, and the directory it names when that is idle (locked), or None when it
/// names nothing.
type Registration = (PathBuf, Option<(Instance, DirLock)>);

/// Locks every idle directory of PGTMP_DIR and every idle registered one, under the gate:
/// under it nobody is between making a directory and locking it. The slow work (stopping
/// servers) then runs without the gate, holding up no start. Without the gate (`wait` false
/// and a start holds it), nothing.
fn lock_idle(state: &StateDir, wait: bool) -> Result<(Vec<Orphan>, Vec<Registration>)> {
    let me = nix::unistd::geteuid().as_raw();
    let mut orphans = Vec::new();
    let mut registrations = Vec::new();
    let Some(_gate) = acquire_gate(&state.path, wait)? else {
        return Ok((orphans, registrations));
    };
    for entry in fs::read_dir(&state.path).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.uid() != me {
            continue;
        }
        if meta.is_dir() && is_instance_name(&name) {
            if let Ok(Some(lock)) = ownership::try_lock(&path) {
                orphans.push((Instance::new(path), lock));
            }
        } else if meta.is_file() && name.starts_with(REGISTERED) {
            let target = statedir::registered_dir(&path).unwrap_or_default();
            match ownership::try_lock(&target) {
                Ok(None) => {}
                Ok(Some(lock)) => registrations.push((path, Some((Instance::new(target), lock)))),
                // Gone, or not a directory: the registration points at nothing.
                Err(_) => registrations.push((path, None)),
            }
        }
    }
    Ok((orphans, registrations))
}

/// Stops the servers of dead `-d` clusters (their directories are left alone) and removes
/// their registrations.
fn sweep_registrations(registrations: &[Registration], dry_run: bool, actions: &mut Actions) {
    for (registration, target) in registrations {
        if let Some((instance, _lock)) = target
            && instance.is_cluster()
            && let Err(err) = stop_orphaned_server(
                instance,
                instance.read_state().ok().flatten().as_ref(),
                dry_run,
                actions,
            )
        {
            actions.push(Action::Skipped(format!(
                "{}: {err:#}",
                instance.dir.display()
            )));
            continue;
        }
        if !dry_run {
            let _ = fs::remove_file(registration);
        }
        actions.push(Action::Removed(format!(
            "stale registration {}",
            registration.display()
        )));
    }
}

/// Removes the records of kept clusters outside PGTMP_DIR (see statedir::KEPT) that name
/// nothing kept any more: the directory was removed by hand, is no longer a kept pgtmp
/// cluster, or its path now leads to another directory. The directories themselves are never touched.
fn sweep_kept_records(state: &StateDir, dry_run: bool, actions: &mut Actions) {
    for (name, path) in own_entries(state, KEPT, fs::Metadata::is_file) {
        let recorded = crate::state::clusters::kept_identity(name.as_ref());
        let kept = statedir::registered_dir(&path).is_ok_and(|target| {
            let instance = Instance::new(&target);
            let same = crate::state::safefs::Dir::open(&target)
                .and_then(|dir| dir.stat())
                .is_ok_and(|st| Some((st.st_dev, st.st_ino)) == recorded);
            same && instance.is_cluster() && instance.is_kept()
        });
        if kept {
            continue;
        }
        if !dry_run {
            let _ = fs::remove_file(&path);
        }
        actions.push(Action::Removed(format!(
            "stale record of a kept cluster {}",
            path.display()
        )));
    }
}

/// The entries of PGTMP_DIR named `prefix...` that are this account's own and of the kind
/// `is_kind` tells (looked at without following a symlink): their names and paths.
fn own_entries(
    state: &StateDir,
    prefix: &str,
    is_kind: fn(&fs::Metadata) -> bool,
) -> Vec<(String, PathBuf)> {
    let me = nix::unistd::geteuid().as_raw();
    fs::read_dir(&state.path)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).ok()?;
            (name.starts_with(prefix) && is_kind(&meta) && meta.uid() == me).then_some((name, path))
        })
        .collect()
}

/// Removes what a watchdog killed while deleting a directory left under its hidden name
/// (`.gone.<name>`, see Instance::remove_at_once): this account's own directories of that name
/// in PGTMP_DIR that no process holds the lock of and none works in.
fn sweep_gone(state: &StateDir, dry_run: bool, actions: &mut Actions) {
    for (name, path) in own_entries(state, GONE, fs::Metadata::is_dir) {
        if !name.strip_prefix(GONE).is_some_and(is_instance_name) {
            continue;
        }
        let Ok(Some(_lock)) = ownership::try_lock(&path) else {
            continue;
        };
        if ownership::processes_inside(&path) {
            continue;
        }
        if !dry_run && crate::state::safefs::remove_tree_at(&path).is_err() {
            continue;
        }
        actions.push(Action::Removed(format!(
            "what a removal cut short left: {}",
            path.display()
        )));
    }
}

/// What is prepared ahead: incomplete pool entries, pools of vanished installations, unused
/// schema cache entries and idle ready copies.
fn sweep_prepared(state: &StateDir, policy: Policy, dry_run: bool, actions: &mut Actions) {
    let pools = state.pools();
    if fs::symlink_metadata(&pools).is_ok() && !ownership::is_own_dir(&pools) {
        actions.push(Action::Skipped(format!(
            "{}: not a directory of this account's own (a symlink, or someone else's); remove it",
            pools.display()
        )));
    } else {
        sweep_pools(state, dry_run, actions);
        for pool in crate::lifecycle::pool::remove_vanished(&pools, dry_run) {
            actions.push(Action::Removed(format!(
                "pool of a vanished or upgraded installation {}",
                pool.display()
            )));
        }
    }
    match crate::lifecycle::cache::sweep(&state.path, policy.cache_age, dry_run) {
        Ok(swept) => removed(
            actions,
            &swept,
            "unused schema cache entry {}",
            "ready copy {} of a schema cache entry idle for an hour",
        ),
        Err(err) => actions.push(Action::Skipped(format!("the schema cache: {err:#}"))),
    }
    keep_within_budget(state, policy.disk_max, dry_run, actions);
}

/// Removes every pool nobody uses now and every saved template (`pgtmp gc --all`), and says
/// what it did.
pub fn remove_pools(state: &StateDir, dry_run: bool) -> Actions {
    let pools = state.pools();
    let removed = crate::lifecycle::pool::remove_all(&pools, dry_run);
    let mut actions: Actions = removed
        .iter()
        .map(|pool| Action::Removed(format!("pool {}", pool.display())))
        .collect();
    if let Some(saved) = crate::state::saved::Saved::existing_for(nix::unistd::geteuid()) {
        actions.extend(
            saved
                .remove_all(dry_run)
                .iter()
                .map(|path| Action::Removed(format!("saved template {}", path.display()))),
        );
    }
    let left = fs::read_dir(&pools)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !removed.contains(&e.path()))
        .map(|e| {
            Action::Skipped(format!(
                "{}: in use (being refilled, copied from, or holding pre-started servers); try again",
                e.path().display()
            ))
        });
    if !dry_run {
        actions.extend(left);
    }
    actions
}

/// One action per cache entry and ready copy removed, each said with its template (`{}` is the
/// path): ready copies first, as they went first.
fn removed(actions: &mut Actions, swept: &crate::lifecycle::cache::Swept, entry: &str, copy: &str) {
    for path in &swept.ready_copies {
        actions.push(Action::Removed(
            copy.replace("{}", &path.display().to_string()),
        ));
    }
    for path in &swept.entries {
        actions.push(Action::Removed(
            entry.replace("{}", &path.display().to_string()),
        ));
    }
}

/// After a start added to the schema cache: evicts what the budget has no room for now,
/// rather than at the next sweep (at most one a minute), which a run of starts with different
/// files would outpace.
pub fn enforce_budget(state: &StateDir, disk_max: u64) {
    keep_within_budget(state, disk_max, false, &mut Actions::new());
}

/// Evicts the least recently used schema cache entries and ready copies while the pools and
/// the cache take more than `disk_max` together (the pools are bounded by their size).
fn keep_within_budget(state: &StateDir, disk_max: u64, dry_run: bool, actions: &mut Actions) {
    let pools = crate::lifecycle::pool::measure(&state.pools()).bytes;
    let budget = disk_max.saturating_sub(pools);
    match crate::lifecycle::cache::evict_to(&state.path, budget, dry_run) {
        Ok(evicted) => removed(
            actions,
            &evicted,
            "least recently used schema cache entry {} (over PGTMP_DISK_MAX)",
            "ready copy {} (over PGTMP_DISK_MAX)",
        ),
        Err(err) => actions.push(Action::Skipped(format!(
            "keeping the schema cache within PGTMP_DISK_MAX: {err:#}"
        ))),
    }
}

/// Days a schema cache entry may go unused before a sweep removes it (PGTMP_CACHE_DAYS).
pub const DEFAULT_CACHE_DAYS: u64 = 7;

/// The most PGTMP_CACHE_DAYS may say: ten years.
pub const MAX_CACHE_DAYS: u64 = 3650;

fn acquire_gate(dir: &Path, wait: bool) -> Result<Option<DirLock>> {
    let deadline = Instant::now() + if wait { GATE_WAIT } else { Duration::ZERO };
    loop {
        if let Some(lock) = ownership::try_lock(dir)? {
            return Ok(Some(lock));
        }
        if Instant::now() >= deadline {
            if wait {
                bail!(
                    "a pgtmp start has been claiming a directory in {} for {} s; try again",
                    dir.display(),
                    GATE_WAIT.as_secs()
                );
            }
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_instance_name(name: &str) -> bool {
    name.len() == INSTANCE_NAME_LEN && name.bytes().all(|b| NAME_ALPHABET.contains(&b))
}

/// pgtmp's own: its marker, or the mark of a start that was killed while preparing it.
fn made_by_pgtmp(instance: &Instance) -> bool {
    instance.is_cluster() || instance.is_being_prepared()
}

/// Deals with one instance directory whose lock this sweep holds.
fn sweep_instance(instance: &Instance, dry_run: bool, actions: &mut Actions) -> Result<()> {
    if !made_by_pgtmp(instance) {
        return Ok(());
    }
    // A state of a pgtmp from before these locks records no start times: its watchdog, if its
    // pid still runs, may be alive without holding the lock. Left alone.
    let state = instance.read_state().ok().flatten();
    if let Some(state) = &state
        && state.watchdog_start.is_none()
        && process::alive(state.watchdog_pid)
    {
        return Ok(());
    }
    stop_orphaned_server(instance, state.as_ref(), dry_run, actions)?;
    if !dry_run && ownership::processes_inside(&instance.dir) {
        // An orphaned initdb, or backends of a killed server: the next sweep gets it.
        bail!("processes still run in it");
    }
    if !dry_run {
        // What a killed initdb (or any process that recorded nothing) left: found only while
        // the data directory exists.
        shm::release_left_in(&instance.data());
    }
    if instance.is_kept() {
        if state.is_some() {
            if !dry_run {
                instance.remove_state();
            }
            actions.push(Action::Removed(format!(
                "the stale state of kept cluster {}",
                instance.dir.display()
            )));
        }
        return Ok(());
    }
    if !dry_run {
        instance.remove()?;
    }
    actions.push(Action::Removed(instance.dir.display().to_string()));
    Ok(())
}

/// Stops the server still running in a directory whose watchdog is gone, and releases the
/// shared memory of one that was killed. Fails (so nothing is removed) while anything of the
/// server may still run. `state` is the directory's recorded state, if it has one.
fn stop_orphaned_server(
    instance: &Instance,
    state: Option<&State>,
    dry_run: bool,
    actions: &mut Actions,
) -> Result<()> {
    let data = instance.data();
    // Proven through a pidfd taken before the checks, so the shutdown reaches that very
    // process or none (see ownership::prove_postmaster).
    let recorded = state.and_then(|s| {
        let dir = crate::state::safefs::Dir::open(&data).ok()?;
        ownership::prove_postmaster(&dir, s.postmaster_pid, s.postmaster_start, geteuid())
            .ok()
            .flatten()
    });
    let running = recorded.or_else(|| ownership::proven_postmaster_of(&data));
    if let Some(server) = running {
        let pid = server.pid();
        actions.push(Action::Stopped(format!(
            "server (pid {pid}) of {}",
            instance.dir.display()
        )));
        if dry_run {
            return Ok(());
        }
        cluster::shutdown(&server, || !process::alive(pid))?;
    }
    // A killed server leaves its shared memory, and its backends exit shortly after it.
    let (segments, creator) = match state {
        Some(s) => (s.segments.clone(), s.postmaster_pid),
        None => match ownership::postmaster_file(&data) {
            Some((pid, sysv_id)) => (
                crate::state::segments::Segments {
                    sysv_id,
                    posix: Vec::new(),
                },
                pid,
            ),
            None => return Ok(()),
        },
    };
    let limit = if dry_run {
        Duration::ZERO
    } else {
        shm::DETACH_LIMIT
    };
    if let Some(id) = segments.sysv_id
        && !shm::wait_detached(id, creator, limit)
    {
        bail!("processes of its killed server are still attached to its shared memory");
    }
    if !dry_run {
        shm::release(&segments, creator);
    }
    Ok(())
}

/// Removes `new.*` entries of pools whose refiller is gone (nobody holds `lock`), holding the
/// lock meanwhile so that no refiller starts on them.
fn sweep_pools(state: &StateDir, dry_run: bool, actions: &mut Actions) {
    for pool in fs::read_dir(state.pools()).into_iter().flatten().flatten() {
        let dir = pool.path();
        if !ownership::is_own_dir(&dir) {
            continue;
        }
        let lock_path = dir.join("lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(!dry_run)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&lock_path);
        let _lock = match file {
            Ok(file) => match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => Some(lock),
                Err(_) => continue,
            },
            Err(err) if dry_run && err.kind() == std::io::ErrorKind::NotFound => None,
            Err(_) => continue,
        };
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            // The token of a pre-started server whose watchdog is gone (its directory is then
            // unlocked, or gone).
            if crate::lifecycle::pool::is_token(&path) {
                let server = name.rsplit('.').next().unwrap_or_default();
                if !ownership::is_locked(&state.instance_path(server)) {
                    if !dry_run {
                        let _ = fs::remove_file(&path);
                    }
                    actions.push(Action::Removed(format!("stale token {}", path.display())));
                }
                continue;
            }
            if (name.starts_with(crate::lifecycle::pool::BUILDING)
                || name.starts_with(crate::lifecycle::pool::TEMPLATE_BUILDING))
                && ownership::is_own_dir(&path)
            {
                if ownership::processes_inside(&path) {
                    // The orphaned initdb of a killed refiller: the next sweep gets it.
                    actions.push(Action::Skipped(format!(
                        "{}: processes still run in it",
                        path.display()
                    )));
                    continue;
                }
                if !dry_run {
                    shm::release_left_in(&path.join("data"));
                    if crate::state::safefs::remove_tree_at(&path).is_err() {
                        continue;
                    }
                }
                actions.push(Action::Removed(format!(
                    "incomplete pool entry {}",
                    path.display()
                )));
            }
        }
    }
}

/// Seconds since the epoch recorded in PGTMP_DIR/.swept, if any.
fn last_sweep(state: &StateDir) -> Option<u64> {
    let mut text = String::new();
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(state.path.join(STAMP))
        .ok()?
        .read_to_string(&mut text)
        .ok()?;
    text.trim().parse().ok()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// True (and the time recorded) when no sweep ran in the last [`INTERVAL`].
pub fn due(state: &StateDir) -> bool {
    let now = now();
    if last_sweep(state).is_some_and(|last| last <= now && now - last < INTERVAL.as_secs()) {
        return false;
    }
    let path = state.path.join(STAMP);
    let _ = fs::remove_file(&path);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{now}"))
        .is_ok()
}

/// After a start: sweeps in a detached, low-priority process if one is due. Costs the caller
/// one read of `.swept` (and a fork, at most once a minute).
pub fn in_background(state: &StateDir, policy: Policy) {
    if !due(state) {
        return;
    }
    if let Ok(crate::os::detach::Forked::Child) = crate::os::detach::fork_detached() {
        crate::os::detach::lower_priority();
        let _ = sweep(state, false, false, policy);
        std::process::exit(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default cache age, as a start or gc passes it.
    const WEEK: Policy = Policy {
        cache_age: Duration::from_secs(7 * 86_400),
        disk_max: u64::MAX,
    };

    #[test]
    fn a_removal_cut_short_is_finished() {
        let (root, state) = state_dir();
        let gone = root.path().join(".gone.abcd1234");
        fs::create_dir_all(gone.join("data/base")).unwrap();
        fs::write(gone.join("data/base/1"), "x").unwrap();
        let other = root.path().join(".gone.not-an-instance");
        fs::create_dir(&other).unwrap();
        let mut actions = Actions::new();
        sweep_gone(&state, true, &mut actions);
        assert!(gone.exists() && actions.len() == 1, "{actions:?}");
        wait_for_copies_to_close(root.path());
        let mut actions = Actions::new();
        sweep_gone(&state, false, &mut actions);
        assert!(!gone.exists() && other.exists(), "{actions:?}");
    }

    fn state_dir() -> (tempfile::TempDir, StateDir) {
        let root = tempfile::tempdir().unwrap();
        let state = StateDir {
            path: root.path().to_path_buf(),
        };
        (root, state)
    }

    /// Waits until no other process holds a descriptor of anything under `root`.
    ///
    /// A child that another test thread forks gets a copy of every descriptor this process has
    /// at that moment and keeps it until its exec: close-on-exec acts only then. A copy of a
    /// lock holds the lock, so a directory whose lock a sweep took and let go of may for that
    /// while still be locked, and the next sweep rightly leaves it alone as looked after. This
    /// process holds no descriptor of those directories once the sweep is done, so after the
    /// copies are closed no new one can be made.
    fn wait_for_copies_to_close(root: &Path) {
        use crate::os::{pid::Pid, procfs};
        let me = Pid::this();
        let holders = || -> Vec<String> {
            procfs::pids()
                .into_iter()
                .filter(|&pid| pid != me)
                .flat_map(|pid| {
                    procfs::open_files(pid)
                        .into_iter()
                        .filter(|target| target.starts_with(root))
                        .map(move |target| format!("pid {pid}: {}", target.display()))
                })
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut held = holders();
        while !held.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
            held = holders();
        }
        assert!(
            held.is_empty(),
            "other processes hold descriptors: {held:?}"
        );
    }

    #[test]
    fn instance_names_are_recognised() {
        assert!(is_instance_name("abcd1234"));
        assert!(!is_instance_name("pool"));
        assert!(!is_instance_name("ABCD1234"));
        assert!(!is_instance_name("abcd12345"));
    }

    #[test]
    fn sweeps_are_rate_limited() {
        let (_root, state) = state_dir();
        assert!(due(&state));
        assert!(!due(&state));
        fs::write(state.path.join(STAMP), format!("{}\n", now() - 61)).unwrap();
        assert!(due(&state));
    }

    #[test]
    fn only_dead_runs_leftovers_are_removed() {
        let (_root, state) = state_dir();
        let p = &state.path;
        // Left by a killed start: marker and data, unlocked.
        fs::create_dir_all(p.join("aaaa1111/data")).unwrap();
        fs::write(p.join("aaaa1111/data/PG_VERSION"), "15\n").unwrap();
        Instance::new(p.join("aaaa1111")).write_marker().unwrap();
        // A killed foreground initdb: data/ and the mark of a directory being prepared.
        fs::create_dir_all(p.join("bbbb2222/data/base")).unwrap();
        Instance::new(p.join("bbbb2222")).mark_preparing().unwrap();
        // Looks like one but has no mark: not pgtmp's.
        fs::create_dir_all(p.join("backup01/data/photos")).unwrap();
        // Locked by a live start.
        fs::create_dir_all(p.join("cccc3333/data")).unwrap();
        let held = ownership::try_lock(&p.join("cccc3333")).unwrap().unwrap();
        // Not pgtmp's: a foreign file inside, a wrong name, a symlink to a directory.
        fs::create_dir_all(p.join("dddd4444/data")).unwrap();
        fs::write(p.join("dddd4444/notes.txt"), "mine").unwrap();
        fs::create_dir_all(p.join("mydata")).unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::create_dir_all(outside.path().join("data")).unwrap();
        std::os::unix::fs::symlink(outside.path(), p.join("eeee5555")).unwrap();
        // Kept (-k) clusters stay.
        fs::create_dir_all(p.join("ffff6666/data")).unwrap();
        fs::write(p.join("ffff6666/data/PG_VERSION"), "15\n").unwrap();
        Instance::new(p.join("ffff6666")).write_marker().unwrap();
        Instance::new(p.join("ffff6666")).mark_kept().unwrap();
        // Pool: an incomplete entry, a ready one, and a locked pool.
        fs::create_dir_all(p.join("pool/k1/new.x1")).unwrap();
        fs::create_dir_all(p.join("pool/k1/ready.y1")).unwrap();
        fs::create_dir_all(p.join("pool/k2/new.x2")).unwrap();
        let lock = fs::File::create(p.join("pool/k2/lock")).unwrap();
        let _refiller = Flock::lock(lock, FlockArg::LockExclusive).unwrap();
        std::os::unix::fs::symlink(outside.path(), p.join("pool/k1/new.link")).unwrap();

        let dry = sweep(&state, true, true, WEEK).unwrap();
        assert_eq!(dry.len(), 3, "{dry:?}");
        assert!(p.join("aaaa1111").exists() && p.join("pool/k1/new.x1").exists());
        // The dry run's locks may live on in a child of another test for a moment.
        wait_for_copies_to_close(p);

        let done = sweep(&state, false, true, WEEK).unwrap();
        assert_eq!(done, dry);
        assert!(!p.join("aaaa1111").exists());
        assert!(!p.join("bbbb2222").exists());
        assert!(!p.join("pool/k1/new.x1").exists());
        for kept in [
            "cccc3333",
            "dddd4444/notes.txt",
            "mydata",
            "ffff6666/PGTMP",
            "pool/k1/ready.y1",
            "pool/k2/new.x2",
            "backup01/data/photos",
        ] {
            assert!(p.join(kept).exists(), "{kept} was removed");
        }
        assert!(fs::symlink_metadata(p.join("eeee5555")).is_ok());
        assert!(fs::symlink_metadata(p.join("pool/k1/new.link")).is_ok());
        assert!(outside.path().join("data").exists());
        drop(held);
    }

    #[test]
    fn planted_pool_and_cache_symlinks_are_never_followed() {
        let (_root, state) = state_dir();
        let outside = tempfile::tempdir().unwrap();
        let o = outside.path();
        // What a sweep would remove if it found it inside pool/ or cache/.
        fs::create_dir_all(o.join("k1/new.x1")).unwrap();
        fs::write(o.join("k1/install"), "/nonexistent/bin\nme\n").unwrap();
        fs::create_dir_all(o.join("trash.x")).unwrap();
        fs::create_dir_all(o.join("build.y")).unwrap();
        let old = SystemTime::now() - Duration::from_secs(30 * 86_400);
        for dir in ["k1", "trash.x", "build.y"] {
            fs::File::open(o.join(dir))
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        std::os::unix::fs::symlink(o, state.pools()).unwrap();
        std::os::unix::fs::symlink(o, crate::lifecycle::cache::root(&state.path)).unwrap();

        let done = sweep(&state, false, true, WEEK).unwrap();
        assert_eq!(done.len(), 2, "{done:?}");
        assert!(
            done.iter().all(|a| matches!(a, Action::Skipped(_))),
            "{done:?}"
        );
        for kept in ["k1/new.x1", "trash.x", "build.y"] {
            assert!(o.join(kept).exists(), "{kept} was removed");
        }
        assert!(!o.join("k1/lock").exists());
    }

    #[test]
    fn a_live_watchdog_of_an_older_pgtmp_is_left_alone() {
        let (_root, state) = state_dir();
        let dir = state.path.join("gggg7777");
        fs::create_dir_all(dir.join("data")).unwrap();
        fs::write(dir.join("data/PG_VERSION"), "15\n").unwrap();
        let instance = Instance::new(&dir);
        instance.write_marker().unwrap();
        // No start times, as written before they were recorded; this process as the watchdog.
        let me = std::process::id();
        fs::write(
            dir.join("pgtmp.state"),
            format!("watchdog_pid={me}\npostmaster_pid={me}\nport=1\ntcp=0\nkeep=0\nowner_uid=0\nuser=x\ntimeout=1\n"),
        )
        .unwrap();
        assert!(sweep(&state, false, true, WEEK).unwrap().is_empty());
        assert!(dir.exists());
    }

    #[test]
    fn a_held_gate_skips_instances_or_makes_gc_wait() {
        let (_root, state) = state_dir();
        fs::create_dir_all(state.path.join("bbbb2222/data")).unwrap();
        let _start = ownership::lock_shared(&state.path).unwrap();
        assert!(sweep(&state, false, false, WEEK).unwrap().is_empty());
        assert!(state.path.join("bbbb2222").exists());
    }
}
