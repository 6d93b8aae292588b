//! The schema cache: a cluster directory with the `-f` files already loaded, keyed by what
//! went into it, so the next start with the same files copies it instead of loading anything.
//!
//! ```text
//! PGTMP_DIR/cache/
//!   <key>/            key: SHA-256 of the installation, user, settings, --now and file contents
//!     entry/          the loaded cluster directory, cleanly shut down; only ever copied
//!     used            its modification time is the entry's last use (for `sweep`)
//!     lock            held by the one process copying ready entries
//!     new.<name>/     a copy being made
//!     ready.<name>/   a complete copy; a start renames it to PGTMP_DIR/<name>
//!     tcp             a -t start came: copies get their password prepared (tcp_ready.rs)
//!   build.<name>/     an entry being built; renamed to <key> once complete
//!   <key>.lock        held by the one process building <key>
//! ```

use crate::lifecycle::pool;
use crate::lifecycle::tcp_ready;
use crate::server::cluster::{self, ServerSpec, Startup};
use crate::server::discover::Installation;
use crate::server::initdb;
use crate::state::copytree;
use crate::state::instance::Instance;
use crate::state::ownership::{self, lock_file};
use crate::state::statedir::{self, StateDir};
use crate::state::usage::{Part, disk_usage};
use crate::testdata::files::{Server, TestData};
use crate::testdata::stock;
use anyhow::{Context, Result, bail};
use nix::fcntl::FlockArg;
use sha2::{Digest, Sha256};
use std::fs::{self, DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Ready copies kept beside a cache entry: PGTMP_POOL_SIZE, but at most this many, since an
/// entry with a loaded schema is larger than a pool entry (75 MB for a small one).
pub const MAX_READY: usize = 2;

/// Bumped whenever what an entry contains changes, so old entries are never used (2: a TLS
/// key and certificate; 4: pg_hba.conf asks TLS of clients beyond loopback; 5: ready copies
/// may carry a prepared TCP password; older entries age out like unused ones).
const ENTRY_FORMAT: &str = "pgtmp-cache-5";
const READY: &str = "ready.";
const BUILDING: &str = "new.";
const BUILD: &str = "build.";
const TRASH: &str = "trash.";
/// How long a server being loaded for the cache may take to start.
const STARTUP_LIMIT: Duration = Duration::from_secs(120);

/// One key's place in the cache (which may not exist yet).
pub struct Cache {
    pub dir: PathBuf,
}

/// The directory holding every entry.
pub fn root(state: &Path) -> PathBuf {
    state.join("cache")
}

/// The key: changes when the installation, the superuser, the server options, `--now` or any
/// file's contents (or their order) change.
pub fn key(
    install: &Installation,
    user: &str,
    options: &[String],
    data: &TestData,
) -> Result<String> {
    let mut hash = Sha256::new();
    hash.update(ENTRY_FORMAT.as_bytes());
    hash.update(b"\0");
    hash.update(install.fingerprint()?.as_bytes());
    hash.update(format!("\0{}\0{user}\0{}", user.len(), options.len()).as_bytes());
    for option in options {
        hash.update(format!("{}\0{option}\0", option.len()).as_bytes());
    }
    hash.update(data.key_material());
    let digest = hash.finalize();
    Ok(digest[..16].iter().map(|b| format!("{b:02x}")).collect())
}

impl Cache {
    /// The place of `key`, making the cache's directory if it is missing.
    pub fn open(state: &StateDir, key: &str) -> Result<Cache> {
        let root = root(&state.path);
        ownership::own_dir(&root)?;
        Ok(Cache {
            dir: root.join(key),
        })
    }

    fn entry(&self) -> Instance {
        Instance::new(self.dir.join("entry"))
    }

    pub fn exists(&self) -> bool {
        self.entry().is_cluster()
    }

    fn children(&self, prefix: &str) -> Vec<PathBuf> {
        pool::entries(&self.dir, prefix)
    }

    /// The cached cluster at `dest` (which must not exist): a ready copy when there is one,
    /// else a copy made now. None on a miss, or when the entry went away while copying (a
    /// sweep): the caller then loads the files itself.
    pub fn take(
        &self,
        dest: &Path,
        created: impl FnOnce(&Instance) -> Result<()>,
    ) -> Result<Option<Instance>> {
        // A copy that cannot be claimed is a miss of the ready copies only: copy the entry.
        if let Ok(true) = pool::claim_ready(&self.dir, dest) {
            self.touch();
            return Ok(Some(Instance::new(dest)));
        }
        if !self.exists() {
            return Ok(None);
        }
        let instance = Instance::create(dest)?;
        // Locked by the start from here (see Pool::take), so the copy holds up no sweep.
        if let Err(err) = created(&instance) {
            let _ = instance.remove();
            return Err(err);
        }
        if copytree::copy_contents(&self.entry().dir, dest).is_err() || !instance.is_cluster() {
            instance.remove()?;
            return Ok(None);
        }
        instance.prepared();
        instance.make_private()?;
        self.touch();
        Ok(Some(instance))
    }

    /// Records a use now.
    fn touch(&self) {
        let used = self.dir.join("used");
        let _ = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&used)
            .and_then(|f| f.set_modified(SystemTime::now()));
    }

    /// Builds the entry: a fresh cluster directory, a private server on it, the files loaded,
    /// a clean shutdown, then an atomic rename into place. Concurrent builders of one key take
    /// turns; one that finds the entry made meanwhile does nothing.
    pub fn build(
        &self,
        install: &Installation,
        user: &str,
        options: &[String],
        data: &TestData,
    ) -> Result<()> {
        let root = self.dir.parent().context("cache entry without a parent")?;
        let _lock = lock_file(&self.dir.with_extension("lock"), FlockArg::LockExclusive)?;
        if self.exists() {
            return Ok(());
        }
        let building = root.join(format!("{BUILD}{}", pool::new_name()?));
        DirBuilder::new()
            .mode(0o700)
            .create(&building)
            .with_context(|| format!("cannot create {}", building.display()))?;
        let result = self.build_in(&building, install, user, options, data);
        if result.is_err() {
            // The builder's server may have died without releasing its shared memory.
            crate::server::shm::release_left_in(&built_data(&building));
            let _ = crate::state::safefs::remove_tree_at(&building);
        }
        result
    }

    fn build_in(
        &self,
        building: &Path,
        install: &Installation,
        user: &str,
        options: &[String],
        data: &TestData,
    ) -> Result<()> {
        let entry = Instance::new(building.join("entry"));
        DirBuilder::new()
            .mode(0o700)
            .create(&entry.dir)
            .with_context(|| format!("cannot create {}", entry.dir.display()))?;
        initdb::prepare_for_copies(install, &entry, user)?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(entry.log())
            .with_context(|| format!("cannot open {}", entry.log().display()))?;
        load_in(&entry, &log, install, user, options, data)?;
        let _ = fs::remove_file(entry.log());
        let _ = fs::remove_file(entry.data().join("postmaster.opts"));
        let _ = fs::remove_file(entry.dir.join(stock::LOCK));
        match fs::rename(building, &self.dir) {
            Ok(()) => {
                self.touch();
                Ok(())
            }
            // Someone else published it first (e.g. without taking the lock after a sweep).
            Err(_) if self.exists() => {
                let _ = crate::state::safefs::remove_tree_at(building);
                Ok(())
            }
            Err(err) => Err(err).with_context(|| format!("cannot publish {}", self.dir.display())),
        }
    }

    /// Copies the entry until `size` ready copies wait beside it (at most [`MAX_READY`]), with
    /// their passwords prepared while `-t` starts come (see tcp_ready.rs). Only one process
    /// copies at a time; others leave it to that one.
    pub fn refill(&self, size: usize, install: &Installation, user: &str) -> Result<()> {
        if !self.exists() {
            return Ok(());
        }
        let Ok(_lock) = lock_file(&self.dir.join("lock"), FlockArg::LockExclusiveNonblock) else {
            return Ok(());
        };
        for stale in self.children(BUILDING) {
            let _ = crate::state::safefs::remove_tree_at(&stale);
        }
        while self.children(READY).len() < size {
            let tcp = tcp_ready::wanted(&self.dir).then_some((install, user));
            pool::add_ready_copy(&self.dir, &self.entry().dir, tcp)?;
        }
        if tcp_ready::wanted(&self.dir) {
            pool::add_passwords(&self.dir, install, user)?;
        }
        Ok(())
    }
}

/// The data directory of the entry being built in `building`.
fn built_data(building: &Path) -> PathBuf {
    Instance::new(building.join("entry")).data()
}

fn age(path: &Path, now: SystemTime) -> Option<Duration> {
    let modified = fs::metadata(path).and_then(|m| m.modified()).ok()?;
    Some(now.duration_since(modified).unwrap_or_default())
}

/// Ready copies of an entry not used for this long are removed (the entry stays until
/// PGTMP_CACHE_DAYS): each is some 75 MB, worth keeping only while the schema is in use.
pub const READY_IDLE: Duration = Duration::from_secs(3600);

/// What a sweep of the cache removed (or, dry, would remove).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub entries: Vec<PathBuf>,
    pub ready_copies: Vec<PathBuf>,
}

/// Removes cache entries (with their ready copies) not used for `max_age`, the ready copies
/// of entries not used for [`READY_IDLE`], and builds and copies abandoned for `max_age`,
/// under `state_dir` (PGTMP_DIR). With `dry_run` it only says what it would remove.
/// An entry or copy is first renamed away, so a start never sees half of one; a start copying
/// from an entry at that moment falls back to loading the files.
pub fn sweep(state_dir: &Path, max_age: Duration, dry_run: bool) -> Result<Swept> {
    let root = root(state_dir);
    match fs::symlink_metadata(&root) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Swept::default()),
        _ if !ownership::is_own_dir(&root) => bail!(
            "{} is not a directory of this account's own (a symlink, or someone else's); remove it",
            root.display()
        ),
        _ => {}
    }
    let entries = fs::read_dir(&root).with_context(|| format!("cannot read {}", root.display()))?;
    let now = SystemTime::now();
    let older = |path: &Path, limit: Duration| age(path, now).is_some_and(|a| a >= limit);
    let old = |path: &Path| older(path, max_age);
    let mut swept = Swept::default();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            // <key>.lock and <key>.error of an entry that is gone (or was never built).
            if !dry_run && !path.with_extension("").is_dir() && old(&path) {
                let _ = fs::remove_file(&path);
            }
            continue;
        }
        if name.starts_with(TRASH) {
            if !dry_run {
                let _ = crate::state::safefs::remove_tree_at(&path);
            }
        } else if name.starts_with(BUILD) {
            // A build whose builder was killed is removed only when old, but the shared memory
            // its initdb or server left is released at once (that of a live build is attached
            // to a live process, which keeps it; see shm::release_left_in).
            if !dry_run {
                crate::server::shm::release_left_in(&built_data(&path));
            }
            if !dry_run && old(&path) {
                let _ = crate::state::safefs::remove_tree_at(&path);
            }
        } else {
            let used = path.join("used");
            let last_use = if used.exists() { &used } else { &path };
            if !old(last_use) {
                if older(last_use, READY_IDLE) {
                    swept
                        .ready_copies
                        .extend(remove_ready_copies(&root, &path, dry_run)?);
                }
                continue;
            }
            if dry_run {
                swept.entries.push(path);
                continue;
            }
            if remove_entry(&root, &path)? {
                swept.entries.push(path);
            }
        }
    }
    Ok(swept)
}

/// Removes an entry with its ready copies unless a build holds it; true when it went. It is
/// renamed away first, so a start never sees half of it.
fn remove_entry(root: &Path, path: &Path) -> Result<bool> {
    let Ok(_lock) = lock_file(
        &path.with_extension("lock"),
        FlockArg::LockExclusiveNonblock,
    ) else {
        return Ok(false);
    };
    let trash = root.join(format!("{TRASH}{}", pool::new_name()?));
    fs::rename(path, &trash).with_context(|| format!("cannot move {} away", path.display()))?;
    crate::state::safefs::remove_tree_at(&trash)?;
    let _ = fs::remove_file(path.with_extension("lock"));
    let _ = fs::remove_file(path.with_extension("error"));
    Ok(true)
}

/// One complete entry: its path, when it was last used, what it and its ready copies take.
struct Measured {
    path: PathBuf,
    last_use: SystemTime,
    bytes: u64,
    ready_bytes: u64,
    ready_count: usize,
}

/// The complete entries under `state_dir`, least recently used first. Only read (and inside
/// the state directory, which only its account can write): root measures its server
/// accounts' caches too.
fn measure_entries(state_dir: &Path) -> Vec<Measured> {
    let root = root(state_dir);
    let mut found: Vec<Measured> = fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            ![TRASH, BUILD, BUILDING].iter().any(|p| name.starts_with(p))
        })
        .map(|e| {
            let path = e.path();
            let copies = pool::entries(&path, READY);
            let ready_bytes: u64 = copies.iter().map(|c| disk_usage(c)).sum();
            let used = path.join("used");
            let last_use = fs::metadata(if used.exists() { &used } else { &path })
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            Measured {
                bytes: disk_usage(&path).saturating_sub(ready_bytes),
                ready_bytes,
                ready_count: copies.len(),
                last_use,
                path,
            }
        })
        .collect();
    found.sort_by_key(|m| m.last_use);
    found
}

/// What the schema cache takes: its entries, and their ready copies.
pub fn measure(state_dir: &Path) -> (Part, Part) {
    let entries = measure_entries(state_dir);
    let cache = Part {
        bytes: entries.iter().map(|m| m.bytes).sum(),
        count: entries.len(),
    };
    let ready = Part {
        bytes: entries.iter().map(|m| m.ready_bytes).sum(),
        count: entries.iter().map(|m| m.ready_count).sum(),
    };
    (cache, ready)
}

/// Removes what the cache holds, least recently used first, until it takes at most `budget`
/// bytes: first ready copies (a start without one copies the entry), then entries (a start
/// without one loads its files again). With `dry_run` it only says what it would remove.
pub fn evict_to(state_dir: &Path, budget: u64, dry_run: bool) -> Result<Swept> {
    let root = root(state_dir);
    if !ownership::is_own_dir(&root) {
        return Ok(Swept::default());
    }
    let entries = measure_entries(state_dir);
    let mut total: u64 = entries.iter().map(|m| m.bytes + m.ready_bytes).sum();
    let mut swept = Swept::default();
    for entry in entries.iter().filter(|m| m.ready_count > 0) {
        if total <= budget {
            return Ok(swept);
        }
        let removed = remove_ready_copies(&root, &entry.path, dry_run)?;
        if removed.len() == entry.ready_count {
            total = total.saturating_sub(entry.ready_bytes);
        }
        swept.ready_copies.extend(removed);
    }
    for entry in &entries {
        if total <= budget {
            break;
        }
        if dry_run || remove_entry(&root, &entry.path)? {
            total = total.saturating_sub(entry.bytes);
            swept.entries.push(entry.path.clone());
        }
    }
    Ok(swept)
}

/// Removes the ready copies of the entry in `dir`, unless a refill is copying right now (it
/// follows a use, so the entry is in use again). A start claiming a copy at the same moment
/// wins it or finds it gone; either way it never sees half of one.
fn remove_ready_copies(root: &Path, dir: &Path, dry_run: bool) -> Result<Vec<PathBuf>> {
    let copies = pool::entries(dir, READY);
    if dry_run || copies.is_empty() {
        return Ok(copies);
    }
    let Ok(_lock) = lock_file(&dir.join("lock"), FlockArg::LockExclusiveNonblock) else {
        return Ok(Vec::new());
    };
    let mut removed = Vec::new();
    for copy in copies {
        let trash = root.join(format!("{TRASH}{}", pool::new_name()?));
        // Claimed by a start meanwhile: not ours to remove.
        if fs::rename(&copy, &trash).is_err() {
            continue;
        }
        crate::state::safefs::remove_tree_at(&trash)?;
        removed.push(copy);
    }
    Ok(removed)
}

/// Starts the server of a cache entry being built, loads `data` and the clone stock into it,
/// and stops it again (fast shutdown: a checkpoint, so that copies start without recovery).
fn load_in(
    entry: &Instance,
    log: &fs::File,
    install: &Installation,
    user: &str,
    options: &[String],
    data: &TestData,
) -> Result<()> {
    // Socket only, in the entry's own private directory: the port is just a number. The
    // entry's path is longer than an instance's; when its socket would not fit, a short
    // private directory holds it instead.
    let port = 5432;
    let short = if statedir::socket_path_len(&entry.dir) > statedir::SOCKET_PATH_MAX {
        Some(
            tempfile::Builder::new()
                .prefix("pgtmp-build-")
                .tempdir_in("/tmp")
                .context("cannot create a socket directory in /tmp")?,
        )
    } else {
        None
    };
    let socket_dir = short.as_ref().map_or(entry.dir.as_path(), |d| d.path());
    let spec = ServerSpec {
        install,
        instance: entry,
        socket_dir,
        port,
        tcp: false,
        listen: None,
        options,
    };
    let mut server = spec.spawn(log)?;
    let target = Server {
        socket_dir,
        port,
        user,
    };
    // The clone stock is made here too, so that a cached start has it at once instead of
    // making it while its client starts working.
    let loaded = match cluster::wait_ready(&mut server, entry, STARTUP_LIMIT) {
        Ok(Startup::Ready) => data
            .load(&target)
            .and_then(|()| stock::refill(&target, true)),
        Ok(_) => Err(anyhow::anyhow!(
            "postgres did not start for the schema cache: {}",
            cluster::failure_lines(
                &crate::state::safefs::read_tail_at(&entry.log(), cluster::LOG_TAIL)
                    .unwrap_or_default()
            )
        )),
        Err(err) => Err(err),
    };
    // Fast shutdown: a checkpoint, so the copy starts without recovery.
    cluster::stop_child(&mut server);
    loaded?;
    if !cluster::exited(&mut server) {
        bail!("the schema cache's server did not stop");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(root: &Path, key: &str, used_ago: Duration) -> PathBuf {
        let dir = root.join("cache").join(key);
        fs::create_dir_all(dir.join("entry/data")).unwrap();
        fs::create_dir_all(dir.join("ready.abcd1234/data")).unwrap();
        let used = fs::File::create(dir.join("used")).unwrap();
        used.set_modified(SystemTime::now() - used_ago).unwrap();
        dir
    }

    #[test]
    fn sweep_removes_only_entries_unused_for_the_age() {
        let root = tempfile::tempdir().unwrap();
        let day = Duration::from_secs(86_400);
        let old = entry(root.path(), "0123old", 3 * day);
        let fresh = entry(root.path(), "4567new", Duration::from_secs(60));
        let orphan = root.path().join("cache/89abfail.error");
        fs::File::create(&orphan)
            .unwrap()
            .set_modified(SystemTime::now() - 3 * day)
            .unwrap();
        fs::File::create(root.path().join("cache/4567new.lock")).unwrap();
        assert_eq!(
            sweep(root.path(), day, true).unwrap().entries,
            vec![old.clone()]
        );
        assert!(old.join("entry/data").is_dir(), "a dry run removes nothing");
        let removed = sweep(root.path(), day, false).unwrap();
        assert_eq!(removed.entries, vec![old.clone()]);
        assert!(!old.exists() && fresh.join("entry/data").is_dir());
        assert!(
            !orphan.exists(),
            "the error file of a build that never finished stays"
        );
        assert!(root.path().join("cache/4567new.lock").exists());
        assert_eq!(
            fs::read_dir(root.path().join("cache"))
                .unwrap()
                .flatten()
                .filter(|e| e.file_type().unwrap().is_dir())
                .count(),
            1,
            "only the fresh entry is left"
        );
        assert_eq!(sweep(root.path(), day, false).unwrap(), Swept::default());
        assert_eq!(
            sweep(&root.path().join("none"), day, false).unwrap(),
            Swept::default()
        );
    }

    #[test]
    fn sweep_removes_the_ready_copies_of_entries_idle_for_an_hour() {
        let root = tempfile::tempdir().unwrap();
        let week = Duration::from_secs(7 * 86_400);
        let idle = entry(
            root.path(),
            "0123idle",
            READY_IDLE + Duration::from_secs(60),
        );
        let busy = entry(root.path(), "4567busy", Duration::from_secs(60));
        let copy = idle.join("ready.abcd1234");
        let dry = sweep(root.path(), week, true).unwrap();
        assert_eq!(dry.ready_copies, vec![copy.clone()]);
        assert!(
            dry.entries.is_empty() && copy.is_dir(),
            "a dry run removes nothing"
        );
        // While a refill holds the lock, its copies stay.
        let refill = lock_file(&idle.join("lock"), FlockArg::LockExclusiveNonblock).unwrap();
        assert_eq!(sweep(root.path(), week, false).unwrap(), Swept::default());
        drop(refill);
        let swept = sweep(root.path(), week, false).unwrap();
        assert_eq!(swept.ready_copies, vec![copy.clone()]);
        assert!(swept.entries.is_empty());
        assert!(!copy.exists(), "the idle entry's ready copy is gone");
        assert!(
            idle.join("entry/data").is_dir(),
            "the idle entry itself stays"
        );
        assert!(
            busy.join("ready.abcd1234/data").is_dir(),
            "a busy entry keeps its copies"
        );
        let left: Vec<String> = fs::read_dir(root.path().join("cache"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(TRASH))
            .collect();
        assert!(left.is_empty(), "no trash left: {left:?}");
    }

    #[test]
    fn take_misses_without_an_entry() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache {
            dir: root.path().join("cache/abc"),
        };
        assert!(
            cache
                .take(&root.path().join("dest"), |_| Ok(()))
                .unwrap()
                .is_none()
        );
        assert!(!root.path().join("dest").exists());
    }
}
