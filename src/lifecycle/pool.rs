//! The pool: prepared data directories per installation, claimed atomically by rename and
//! refilled by a detached, low-priority process that copies a per-installation template.
//!
//! ```text
//! PGTMP_DIR/pool/<key>/     key: hash of the installation and the superuser name
//!   lock                    held by the one refiller at work
//!   install                 the installation's bin directory, to notice when it goes away
//!   template/               made once by initdb; never started, only copied
//!   template.new.<name>/    the template being made
//!   new.<name>/             a copy being made; never handed out
//!   ready.<name>/           complete; a start renames it to PGTMP_DIR/<name>
//!   ready.next.<time>.<name>/  one `pgtmp initdb` designated: claimed before any other,
//!                           the latest first
//!   refill.error            why the last refill failed, if it did
//!   depth                   the depth a burst raised the pool to, for an hour (see
//!                           `Pool::target`)
//! ```
//!
//! initdb runs in the foreground only on the very first start for an installation; every
//! later directory is a copy of the template, made in the background if the pool has time and
//! in the foreground if a burst of starts has emptied it.

use crate::lifecycle::tcp_ready;
use crate::os::detach::{self, Forked};
use crate::os::secret;
use crate::server::discover::Installation;
use crate::server::initdb;
use crate::state::copytree;
use crate::state::instance::{Instance, NAME_ALPHABET};
use crate::state::ownership::{self, lock_file};
use crate::state::saved::Saved;
use crate::state::statedir::{INSTANCE_NAME_LEN, StateDir};
use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use std::fs::{self, DirBuilder};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Ready entries kept per installation unless PGTMP_POOL_SIZE says otherwise. Chosen from
/// scripts/bench: with 2, a burst of 8 starts copies the template six times at once and the
/// slowest start takes over a second on a 2-core machine; with 8 every start of the burst,
/// and at least half of 20 back-to-back starts, claims a ready entry. Each entry is about
/// 26 MB of disk.
pub const DEFAULT_SIZE: usize = 8;
/// The most PGTMP_POOL_SIZE may say.
pub const MAX_SIZE: usize = 64;
/// The most entries a pool of the default size grows to after bursts (see [`Pool::target`]).
pub const GROWN_MAX: usize = 32;
/// About what an entry takes on disk, for the room the budget leaves for growth.
pub const ENTRY_BYTES: u64 = 26 << 20;
/// How long a burst keeps the pool grown: an hour after the last start that found it empty.
const GROWN_FOR: std::time::Duration = std::time::Duration::from_secs(3600);
/// The depth bursts raised the pool to (see [`Pool::target`]).
const DEPTH: &str = "depth";
/// Bumped whenever what a prepared entry contains changes, so old entries are not reused (4:
/// a TLS key and certificate, without which a TCP start serves no TLS), or the files by which
/// a start claims a pre-started server of the pool (3: JSON claims; 5: claims name the
/// `--owner-pid` process, which a watchdog of format 4 would not see), so that a start never
/// claims a server whose watchdog reads another format (6: pg_hba.conf asks TLS of clients
/// beyond loopback, for `pgtmp serve --listen`; 7: entries may carry a prepared TCP password,
/// which an older pgtmp would leave in a cluster's directory).
const ENTRY_FORMAT: &str = "7";

const READY: &str = "ready.";
/// A ready entry `pgtmp initdb` printed: the next start takes it (see [`Pool::prepare_next`]).
const NEXT: &str = "ready.next.";
pub const BUILDING: &str = "new.";
const TEMPLATE: &str = "template";
pub const TEMPLATE_BUILDING: &str = "template.new.";
const INSTALL: &str = "install";
/// The refillers' lock (held exclusively while one builds) and the readers' lock of the
/// template (held shared by a start copying it), which `remove_all` takes exclusively.
const LOCK: &str = "lock";
const TEMPLATE_LOCK: &str = "template.lock";

/// How a directory handed out by [`Pool::take`] was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// A ready entry, claimed.
    Claimed,
    /// Copied from the template in the foreground: the pool was empty.
    Copied,
    /// Made by initdb in the foreground, without database `test`, which the start must create:
    /// nothing was prepared for this installation yet.
    Initialized,
}

pub struct Pool {
    pub dir: PathBuf,
    pub size: usize,
    /// The most the pool grows to after bursts; `size`: it never grows.
    pub max: usize,
}

/// FNV-1a: a stable hash (std's hasher may change between Rust releases).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The name of the pool of `install` for superuser `user`: it changes when the installation's
/// binaries change (an upgrade), so entries made by other binaries are never handed out.
fn key(install: &Installation, user: &str) -> Result<String> {
    let hash = fnv1a(&format!(
        "{}\0{user}\0{ENTRY_FORMAT}",
        install.fingerprint()?
    ));
    Ok(format!("{hash:016x}"))
}

/// The paths in `dir` whose names start with `prefix` (`ready.`, `new.`, ...).
pub fn entries(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect()
}

/// Moves one of the `ready.*` copies in `dir` (a pool, or a schema cache entry's copies) to
/// `dest`, which must not exist; false if there was none. rename(2) is atomic, so when several
/// callers race for one copy exactly one gets it and the others try the next.
pub fn claim_ready(dir: &Path, dest: &Path) -> Result<bool> {
    let mut ready = entries(dir, READY);
    // Start at a random copy so that concurrent callers rarely collide at all.
    let mut offset = [0u8; 1];
    secret::random_bytes(&mut offset)?;
    if !ready.is_empty() {
        let start = offset[0] as usize % ready.len();
        ready.rotate_left(start);
    }
    // What `pgtmp initdb` printed goes first, the latest first (their names sort by time); the
    // sort is stable, so the others keep their random order.
    ready.sort_by_cached_key(|entry| std::cmp::Reverse(designated(entry)));
    for entry in ready {
        match fs::rename(&entry, dest) {
            Ok(()) => return Ok(true),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => {
                return Err(err).with_context(|| {
                    format!("cannot claim {} as {}", entry.display(), dest.display())
                });
            }
        }
    }
    Ok(false)
}

/// The name of an entry `pgtmp initdb` designated, which sorts by when it did; None for any
/// other entry.
fn designated(entry: &Path) -> Option<String> {
    let name = entry.file_name()?.to_str()?;
    name.starts_with(NEXT).then(|| name.to_string())
}

/// A fresh name for an entry designated now: the time first, zero-padded so that later names
/// sort after earlier ones.
fn next_name() -> Result<String> {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?;
    Ok(format!("{NEXT}{:020}.{}", since.as_nanos(), new_name()?))
}

/// Adds a `ready.*` copy of `template` to `dir`, made as `new.*` and published by rename;
/// with `tcp` (the installation and superuser), its password prepared (see tcp_ready.rs).
pub fn add_ready_copy(
    dir: &Path,
    template: &Path,
    tcp: Option<(&Installation, &str)>,
) -> Result<()> {
    let ready = dir.join(format!("{READY}{}", new_name()?));
    add_copy_as(dir, template, &ready, tcp)
}

/// Adds a copy of `template` to `dir` as `ready` (a path in `dir`), made as `new.*` first.
fn add_copy_as(
    dir: &Path,
    template: &Path,
    ready: &Path,
    tcp: Option<(&Installation, &str)>,
) -> Result<()> {
    let building = dir.join(format!("{BUILDING}{}", new_name()?));
    build(&building, ready, |made| {
        copytree::copy_contents(template, made)?;
        match tcp {
            Some((install, user)) => tcp_ready::prepare(install, &Instance::new(made), user),
            None => Ok(()),
        }
    })
}

/// Gives the `ready.*` entries in `dir` (a pool, or a schema cache entry's copies) made before
/// `-t` starts came a password too: each is taken out (renamed to `new.*`, so no start claims
/// it half-prepared), prepared and put back. One that fails is removed, as a failed build is.
/// The caller holds the lock of the process that builds in `dir` (which removes `new.*`
/// directories as a dead builder's).
pub fn add_passwords(dir: &Path, install: &Installation, user: &str) -> Result<()> {
    let without = entries(dir, READY)
        .into_iter()
        .filter(|entry| designated(entry).is_none() && !tcp_ready::has_password(entry));
    for entry in without {
        let building = dir.join(format!("{BUILDING}{}", new_name()?));
        if fs::rename(&entry, &building).is_err() {
            continue; // claimed meanwhile
        }
        let prepared =
            tcp_ready::prepare(install, &Instance::new(&building), user).and_then(|()| {
                fs::rename(&building, &entry)
                    .with_context(|| format!("cannot publish {}", entry.display()))
            });
        if let Err(err) = prepared {
            let _ = crate::state::safefs::remove_tree_at(&building);
            return Err(err);
        }
    }
    Ok(())
}

/// Makes a directory at `building` with `make` and publishes it as `done` by rename, so
/// nobody ever sees it half-made; on failure nothing is left.
fn build(building: &Path, done: &Path, make: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    DirBuilder::new()
        .mode(0o700)
        .create(building)
        .with_context(|| format!("cannot create {}", building.display()))?;
    if let Err(err) = make(building) {
        let _ = crate::state::safefs::remove_tree_at(building);
        return Err(err);
    }
    let published = fs::rename(building, done);
    if published.is_err() {
        let _ = crate::state::safefs::remove_tree_at(building);
    }
    published.with_context(|| format!("cannot publish {}", done.display()))
}

/// Removes the pools of installations that are gone or whose binaries changed (an upgrade
/// gives the same bin directory another key): nothing would ever claim their entries. Pools
/// being refilled, or with pre-started servers waiting, are left for a later pass. Returns the
/// pools removed (with `dry_run`, those that would be, removing nothing).
pub fn remove_vanished(pools: &Path, dry_run: bool) -> Vec<PathBuf> {
    remove_where(pools, dry_run, |current| !current)
}

/// Removes every pool nobody uses now (`pgtmp gc --all`): not one being refilled, read by a
/// start copying its template, or holding servers waiting to be claimed. A start then finds
/// nothing prepared and initializes anew.
pub fn remove_all(pools: &Path, dry_run: bool) -> Vec<PathBuf> {
    remove_where(pools, dry_run, |_| true)
}

/// Removes the pools that `wanted` picks (it is told whether the pool is that of its
/// installation as it is now), each only while nobody uses it.
fn remove_where(pools: &Path, dry_run: bool, wanted: impl Fn(bool) -> bool) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    if !ownership::is_own_dir(pools) {
        return removed;
    }
    let Ok(dirs) = fs::read_dir(pools) else {
        return removed;
    };
    for dir in dirs.filter_map(|e| e.ok()).map(|e| e.path()) {
        if !ownership::is_own_dir(&dir) {
            continue;
        }
        let Ok(Some(text)) = crate::state::safefs::read_text_at(&dir.join(INSTALL)) else {
            continue; // being created, or not a pool: leave it
        };
        let mut lines = text.lines();
        let (Some(bindir), Some(user)) = (lines.next(), lines.next()) else {
            continue;
        };
        let install = Installation {
            bindir: PathBuf::from(bindir),
        };
        let current = key(&install, user).ok();
        if !wanted(current.as_deref() == dir.file_name().and_then(|n| n.to_str())) {
            continue;
        }
        // A pool without its lock is being created; the template's readers' lock is made
        // by the first start that copies the template.
        let Some(_refilling) = fs::File::open(dir.join(LOCK))
            .ok()
            .and_then(|f| Flock::lock(f, FlockArg::LockExclusiveNonblock).ok())
        else {
            continue;
        };
        let Ok(_reading) = lock_file(&dir.join(TEMPLATE_LOCK), FlockArg::LockExclusiveNonblock)
        else {
            continue;
        };
        let waiting = fs::read_dir(&dir)
            .map(|entries| entries.filter_map(|e| e.ok()).any(|e| is_token(&e.path())));
        if let Ok(false) = waiting
            && (dry_run || remove_pool(&dir))
        {
            removed.push(dir);
        }
    }
    removed
}

/// Removes a pool, first releasing the shared memory killed initdb runs left for its entries.
fn remove_pool(dir: &Path) -> bool {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        crate::server::shm::release_left_in(&Instance::new(entry.path()).data());
    }
    crate::state::safefs::remove_tree_at(dir).is_ok()
}

/// What the pools take: bytes on disk (entries, templates, everything being built) and the
/// number of ready entries. Only read, so root measures its server accounts' pools too.
pub fn measure(pools: &Path) -> crate::state::usage::Part {
    let count = fs::read_dir(pools)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| entries(&e.path(), READY).len())
        .sum();
    crate::state::usage::Part {
        bytes: crate::state::usage::disk_usage(pools),
        count,
    }
}

/// A fresh random name for an instance directory or pool entry.
pub fn new_name() -> Result<String> {
    secret::random_string(NAME_ALPHABET, INSTANCE_NAME_LEN)
}

impl Pool {
    /// The pool of `install` for `user`, keeping `size` entries ready (PGTMP_POOL_SIZE, validated by the caller).
    pub fn open(state: &StateDir, install: &Installation, user: &str, size: usize) -> Result<Pool> {
        let pools = state.pools();
        ownership::own_dir(&pools)?;
        let dir = pools.join(key(install, user)?);
        ownership::own_dir(&dir)?;
        let install_file = dir.join(INSTALL);
        if !install_file.exists() {
            let text = format!("{}\n{user}\n", install.bindir.display());
            fs::write(&install_file, text)
                .with_context(|| format!("cannot write {}", install_file.display()))?;
        }
        Ok(Pool {
            dir,
            size,
            max: size,
        })
    }

    /// A pool that may grow to `max` entries after bursts.
    pub fn growing_to(self, max: usize) -> Pool {
        Pool {
            max: max.max(self.size),
            ..self
        }
    }

    /// How many entries to keep ready: `size`, or more after a burst found the pool empty
    /// within the last hour (each such start doubles the depth recorded in the pool, up to
    /// `max`), so that the next burst of the same size claims ready entries.
    pub fn target(&self) -> usize {
        if self.max <= self.size {
            return self.size;
        }
        let recorded = crate::state::safefs::Dir::open(&self.dir)
            .ok()
            .filter(|dir| {
                dir.age_of(DEPTH)
                    .is_some_and(|age| age <= GROWN_FOR.as_secs())
            })
            .and_then(|dir| dir.read_number::<usize>(DEPTH));
        recorded.unwrap_or(self.size).clamp(self.size, self.max)
    }

    /// After a start that found no ready entry: doubles the depth, up to `max`.
    fn record_burst(&self) {
        if self.max <= self.size {
            return;
        }
        let depth = (self.target().max(1) * 2).min(self.max);
        if let Ok(dir) = crate::state::safefs::Dir::open(&self.dir) {
            let _ = dir.write_atomic(DEPTH, format!("{depth}\n").as_bytes());
        }
    }

    fn template(&self) -> PathBuf {
        self.dir.join(TEMPLATE)
    }

    /// The template is published by rename only once complete, so being there is enough.
    pub fn has_template(&self) -> bool {
        Instance::new(self.template()).is_cluster()
    }

    fn entries(&self, prefix: &str) -> Vec<PathBuf> {
        entries(&self.dir, prefix)
    }

    pub fn ready_count(&self) -> usize {
        self.entries(READY).len()
    }

    /// Moves a ready entry to `dest` (which must not exist); see [`claim_ready`].
    pub fn claim(&self, dest: &Path) -> Result<Option<Instance>> {
        Ok(claim_ready(&self.dir, dest)?.then(|| Instance::new(dest)))
    }

    /// A prepared directory at `dest`: a ready entry if there is one, else a copy of the
    /// template made now (a burst of calls drained the pool), else a directory made by initdb
    /// now (the first call for this installation). `created` runs as soon as `dest` exists,
    /// before the slow copy or initdb (a start locks it then and lets go of the PGTMP_DIR
    /// gate, so that a sweep never waits behind a foreground initdb).
    pub fn take(
        &self,
        dest: &Path,
        install: &Installation,
        user: &str,
        created: impl FnOnce(&Instance) -> Result<()>,
    ) -> Result<(Instance, Taken)> {
        if let Some(instance) = self.claim(dest)? {
            return Ok((instance, Taken::Claimed));
        }
        if self.has_template() {
            self.record_burst();
        }
        let instance = self.make_at(dest, created, |instance| {
            // Held while the template is read, so that `gc --all` never removes it under
            // the copy; without one, initdb.
            let _reading = self.reading_template()?;
            if self.has_template() {
                copytree::copy_contents(&self.template(), &instance.dir).map(|()| Taken::Copied)
            } else if self.restore_saved(&instance.dir) {
                Ok(Taken::Copied)
            } else {
                let _step = crate::output::progress::step(
                    "initializing a data directory (nothing prepared yet)",
                );
                initdb::prepare_without_test(install, instance, user).map(|()| Taken::Initialized)
            }
        })?;
        Ok(instance)
    }

    /// A ready entry or a copy of the template at `dest`; None when there is neither (nothing
    /// was prepared for this installation yet).
    pub fn take_prepared(&self, dest: &Path) -> Result<Option<Instance>> {
        if let Some(instance) = self.claim(dest)? {
            return Ok(Some(instance));
        }
        let _reading = self.reading_template()?;
        if !self.has_template() {
            return Ok(None);
        }
        let (instance, ()) = self.make_at(
            dest,
            |_| Ok(()),
            |instance| copytree::copy_contents(&self.template(), &instance.dir),
        )?;
        Ok(Some(instance))
    }

    /// Creates `dest`, runs `created` on it, and fills it with `make`; removes it again if
    /// either fails.
    fn make_at<T>(
        &self,
        dest: &Path,
        created: impl FnOnce(&Instance) -> Result<()>,
        make: impl FnOnce(&Instance) -> Result<T>,
    ) -> Result<(Instance, T)> {
        let instance = Instance::create(dest)?;
        match created(&instance).and_then(|()| make(&instance)) {
            Ok(made) => {
                instance.prepared();
                Ok((instance, made))
            }
            Err(err) => {
                let _ = instance.remove();
                Err(err)
            }
        }
    }

    /// The readers' lock of the template (see [`remove_all`]).
    fn reading_template(&self) -> Result<Flock<fs::File>> {
        lock_file(&self.dir.join(TEMPLATE_LOCK), FlockArg::LockShared)
    }

    /// Prepares entries until `size` are ready. Refillers take turns on the lock; each counts
    /// again once it holds it, so a claim made while another refiller worked is never missed.
    pub fn refill(&self, install: &Installation, user: &str) -> Result<()> {
        let _lock = self.lock_for_building()?;
        if let Some(pools) = self.dir.parent() {
            remove_vanished(pools, false);
        }
        if self.size > 0 {
            self.build_template(install, user)?;
        }
        let target = self.target();
        while self.ready_count() < target {
            self.build_one(install, user)?;
        }
        if tcp_ready::wanted(&self.dir) {
            add_passwords(&self.dir, install, user)?;
        }
        let _ = fs::remove_file(self.dir.join("refill.error"));
        Ok(())
    }

    /// Takes the lock of the one process that builds entries, and removes what a builder that
    /// died left half made (holding the lock, any entry still being built is such).
    fn lock_for_building(&self) -> Result<Flock<fs::File>> {
        let lock = lock_file(&self.dir.join(LOCK), FlockArg::LockExclusive)?;
        for stale in self
            .entries(BUILDING)
            .into_iter()
            .chain(self.entries(TEMPLATE_BUILDING))
        {
            crate::server::shm::release_left_in(&Instance::new(&stale).data());
            let _ = crate::state::safefs::remove_tree_at(&stale);
        }
        Ok(lock)
    }

    /// pg_tmp's `initdb`: one more ready entry, designated as the one the next start takes, and
    /// its path. The pool never grows beyond its size (at least one entry): when it is full,
    /// an entry already there is designated instead. Made in the foreground, the template
    /// first if there is none yet.
    pub fn prepare_next(&self, install: &Installation, user: &str) -> Result<PathBuf> {
        let _lock = self.lock_for_building()?;
        self.build_template(install, user)?;
        let next = self.dir.join(next_name()?);
        if self.ready_count() < self.size.max(1) {
            add_copy_as(&self.dir, &self.template(), &next, None)?;
            return Ok(next);
        }
        // Full: the entry a start would claim now becomes the designated one. A start may
        // claim it first; then the next one is tried.
        let mut ready = self.entries(READY);
        ready.sort_by_cached_key(|entry| std::cmp::Reverse(designated(entry)));
        for entry in ready {
            match fs::rename(&entry, &next) {
                Ok(()) => return Ok(next),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => {
                    return Err(err).with_context(|| {
                        format!("cannot rename {} to {}", entry.display(), next.display())
                    });
                }
            }
        }
        add_copy_as(&self.dir, &self.template(), &next, None)?;
        Ok(next)
    }

    /// Makes the template unless it exists: a copy of the saved one (see state/saved.rs), or
    /// initdb and database `test`, never started, which is then saved.
    fn build_template(&self, install: &Installation, user: &str) -> Result<()> {
        if self.has_template() {
            return Ok(());
        }
        let building = self.dir.join(format!("{TEMPLATE_BUILDING}{}", new_name()?));
        let mut restored = false;
        build(&building, &self.template(), |dir| {
            restored = self.restore_saved(dir);
            if restored {
                return Ok(());
            }
            initdb::prepare_for_copies(install, &Instance::new(dir), user)
        })?;
        if !restored && let Some(saved) = Saved::locate() {
            // Best effort: without it, the first start after a wiped /tmp runs initdb.
            let install_text = fs::read_to_string(self.dir.join(INSTALL)).unwrap_or_default();
            let _ = saved.save(self.key(), &self.template(), &install_text);
        }
        Ok(())
    }

    /// This pool's key: its directory's name.
    fn key(&self) -> &str {
        self.dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
    }

    /// Copies the saved template into `dir`; false when there is none (or it was damaged).
    fn restore_saved(&self, dir: &Path) -> bool {
        Saved::locate().is_some_and(|saved| saved.restore(self.key(), dir))
    }

    /// Adds one ready entry, a copy of the template, with a password prepared while `-t`
    /// starts come (see tcp_ready.rs).
    fn build_one(&self, install: &Installation, user: &str) -> Result<()> {
        let tcp = tcp_ready::wanted(&self.dir).then_some((install, user));
        add_ready_copy(&self.dir, &self.template(), tcp)
    }

    /// Starts a detached, low-priority refill unless the pool is already full. A failure is
    /// recorded in `refill.error`: the next start is then merely slower, never broken.
    pub fn refill_in_background(&self, install: &Installation, user: &str) {
        if self.ready_count() >= self.target() {
            return;
        }
        if let Ok(Forked::Child) = detach::fork_detached() {
            detach::lower_priority();
            let code = match self.refill(install, user) {
                Ok(()) => 0,
                Err(err) => {
                    let _ = fs::write(self.dir.join("refill.error"), format!("{err:#}\n"));
                    1
                }
            };
            std::process::exit(code);
        }
    }
}

/// Prefixes of the token files that pre-started servers keep in their pool's directory while
/// they wait for a claim, and once claimed (see lifecycle/prestart.rs).
pub const WAITING: &str = "waiting.";
pub const CLAIMED: &str = "claimed.";

/// True for a token path of a waiting or claimed server (for sweeping dead ones).
pub fn is_token(path: &Path) -> bool {
    path.file_name()
        .map(|n| n.to_string_lossy())
        .is_some_and(|n| n.starts_with(WAITING) || n.starts_with(CLAIMED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_grow_the_pool_up_to_its_max_for_an_hour() {
        let root = tempfile::tempdir().unwrap();
        let pool = Pool {
            dir: root.path().to_path_buf(),
            size: 8,
            max: 8,
        };
        pool.record_burst();
        assert_eq!(pool.target(), 8, "a pool that may not grow stays");
        let pool = pool.growing_to(20);
        assert_eq!(pool.target(), 8);
        pool.record_burst();
        assert_eq!(pool.target(), 16);
        pool.record_burst();
        assert_eq!(pool.target(), 20, "never beyond max");
        let depth = fs::File::options()
            .write(true)
            .open(root.path().join(DEPTH))
            .unwrap();
        let long_ago = std::time::SystemTime::now() - GROWN_FOR * 2;
        depth.set_modified(long_ago).unwrap();
        assert_eq!(
            pool.target(),
            8,
            "an hour after the last burst it is its size again"
        );
    }

    #[test]
    fn hash_is_stable() {
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn designated_entries_are_claimed_first_the_latest_first() {
        let root = tempfile::tempdir().unwrap();
        let pool = Pool {
            dir: root.path().join("pool"),
            size: 4,
            max: 4,
        };
        let earlier = next_name().unwrap();
        let later = next_name().unwrap();
        assert!(later > earlier, "{later} should sort after {earlier}");
        for name in ["ready.aaaa", &earlier, "ready.zzzz", &later] {
            fs::create_dir_all(pool.dir.join(name)).unwrap();
        }
        pool.claim(&root.path().join("one")).unwrap();
        assert!(!pool.dir.join(&later).exists());
        pool.claim(&root.path().join("two")).unwrap();
        assert!(!pool.dir.join(&earlier).exists());
        assert_eq!(pool.ready_count(), 2);
    }

    #[test]
    fn claims_are_exclusive() {
        let root = tempfile::tempdir().unwrap();
        let pool = Pool {
            dir: root.path().join("pool"),
            size: 1,
            max: 1,
        };
        fs::create_dir_all(pool.dir.join("ready.aaaa")).unwrap();
        fs::create_dir_all(pool.dir.join("new.bbbb")).unwrap();
        let first = pool.claim(&root.path().join("one")).unwrap();
        assert_eq!(first, Some(Instance::new(root.path().join("one"))));
        assert_eq!(pool.claim(&root.path().join("two")).unwrap(), None);
    }
}
