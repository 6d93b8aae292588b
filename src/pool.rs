//! The pool: prepared data directories per installation, claimed atomically by rename and
//! refilled by a detached, low-priority process.
//!
//! ```text
//! PGTMP_DIR/pool/<key>/     key: hash of the installation and the superuser name
//!   lock                    held by the one refiller at work
//!   new.<name>/             being prepared; never handed out
//!   ready.<name>/           complete; a start renames it to PGTMP_DIR/<name>
//!   refill.error            why the last refill failed, if it did
//! ```

use crate::detach::{self, Forked};
use crate::discover::Installation;
use crate::exit;
use crate::initdb;
use crate::instance::{Instance, NAME_ALPHABET};
use crate::secret;
use crate::statedir::{INSTANCE_NAME_LEN, StateDir};
use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use std::fs::{self, DirBuilder};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Ready entries kept per installation unless PGTMP_POOL_SIZE says otherwise.
pub const DEFAULT_SIZE: usize = 2;
/// Bumped whenever what a prepared entry contains changes, so old entries are not reused.
const ENTRY_FORMAT: &str = "1";

const READY: &str = "ready.";
const BUILDING: &str = "new.";

pub struct Pool {
    pub dir: PathBuf,
    pub size: usize,
}

/// FNV-1a: a stable hash (std's hasher may change between Rust releases).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// PGTMP_POOL_SIZE, validated.
pub fn configured_size(value: Option<&str>) -> Result<usize> {
    match value {
        None | Some("") => Ok(DEFAULT_SIZE),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if n <= 64 => Ok(n),
            _ => Err(exit::usage(format!(
                "PGTMP_POOL_SIZE={text} is not a number of entries from 0 to 64; unset it for the default ({DEFAULT_SIZE})"
            ))),
        },
    }
}

/// A fresh random name for an instance directory or pool entry.
pub fn new_name() -> Result<String> {
    secret::random_string(NAME_ALPHABET, INSTANCE_NAME_LEN)
}

impl Pool {
    pub fn open(state: &StateDir, install: &Installation, user: &str) -> Result<Pool> {
        let size = configured_size(std::env::var("PGTMP_POOL_SIZE").ok().as_deref())?;
        let key = fnv1a(&format!(
            "{}\0{user}\0{ENTRY_FORMAT}",
            install.fingerprint()?
        ));
        let dir = state.pools().join(format!("{key:016x}"));
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create pool directory {}", dir.display()))?;
        Ok(Pool { dir, size })
    }

    fn entries(&self, prefix: &str) -> Vec<PathBuf> {
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .map(|e| e.path())
            .collect()
    }

    pub fn ready_count(&self) -> usize {
        self.entries(READY).len()
    }

    /// Moves a ready entry to `dest` (which must not exist). rename(2) is atomic, so when
    /// several callers race for one entry exactly one gets it and the others try the next.
    pub fn claim(&self, dest: &Path) -> Result<Option<Instance>> {
        let mut ready = self.entries(READY);
        // Start at a random entry so that concurrent callers rarely collide at all.
        let mut offset = [0u8; 1];
        secret::random_bytes(&mut offset)?;
        if !ready.is_empty() {
            let start = offset[0] as usize % ready.len();
            ready.rotate_left(start);
        }
        for entry in ready {
            match fs::rename(&entry, dest) {
                Ok(()) => return Ok(Some(Instance::new(dest))),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => {
                    return Err(err).with_context(|| {
                        format!(
                            "cannot claim pool entry {} as {}",
                            entry.display(),
                            dest.display()
                        )
                    });
                }
            }
        }
        Ok(None)
    }

    /// A prepared directory at `dest`: a ready entry if there is one, else one prepared now in
    /// the foreground (the first call on a machine, or a pool drained by a burst of calls).
    pub fn take(&self, dest: &Path, install: &Installation, user: &str) -> Result<Instance> {
        if let Some(instance) = self.claim(dest)? {
            return Ok(instance);
        }
        DirBuilder::new()
            .mode(0o700)
            .create(dest)
            .with_context(|| format!("cannot create {}", dest.display()))?;
        let instance = Instance::new(dest);
        let step = crate::progress::step("initializing a data directory (nothing prepared yet)");
        let prepared = initdb::prepare(install, &instance, user);
        drop(step);
        if let Err(err) = prepared {
            let _ = instance.remove();
            return Err(err);
        }
        Ok(instance)
    }

    /// Prepares entries until `size` are ready. Refillers take turns on the lock; each counts
    /// again once it holds it, so a claim made while another refiller worked is never missed.
    pub fn refill(&self, install: &Installation, user: &str) -> Result<()> {
        let lock_path = self.dir.join("lock");
        let file = fs::File::create(&lock_path)
            .with_context(|| format!("cannot create {}", lock_path.display()))?;
        let _lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| errno)
            .with_context(|| format!("cannot lock {}", lock_path.display()))?;
        // Holding the lock, any entry still being built was left by a refiller that died.
        for stale in self.entries(BUILDING) {
            let _ = fs::remove_dir_all(stale);
        }
        while self.ready_count() < self.size {
            self.build_one(install, user)?;
        }
        let _ = fs::remove_file(self.dir.join("refill.error"));
        Ok(())
    }

    fn build_one(&self, install: &Installation, user: &str) -> Result<()> {
        let name = new_name()?;
        let building = self.dir.join(format!("{BUILDING}{name}"));
        DirBuilder::new()
            .mode(0o700)
            .create(&building)
            .with_context(|| format!("cannot create {}", building.display()))?;
        if let Err(err) = initdb::prepare(install, &Instance::new(&building), user) {
            let _ = fs::remove_dir_all(&building);
            return Err(err);
        }
        let ready = self.dir.join(format!("{READY}{name}"));
        fs::rename(&building, &ready).with_context(|| format!("cannot publish {}", ready.display()))
    }

    /// Starts a detached, low-priority refill unless the pool is already full. A failure is
    /// recorded in `refill.error`: the next start is then merely slower, never broken.
    pub fn refill_in_background(&self, install: &Installation, user: &str) {
        if self.ready_count() >= self.size {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_size_is_validated() {
        assert_eq!(configured_size(None).unwrap(), DEFAULT_SIZE);
        assert_eq!(configured_size(Some("0")).unwrap(), 0);
        assert!(configured_size(Some("abc")).is_err());
        assert!(configured_size(Some("1000")).is_err());
    }

    #[test]
    fn hash_is_stable() {
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn claims_are_exclusive() {
        let root = tempfile::tempdir().unwrap();
        let pool = Pool {
            dir: root.path().join("pool"),
            size: 1,
        };
        fs::create_dir_all(pool.dir.join("ready.aaaa")).unwrap();
        fs::create_dir_all(pool.dir.join("new.bbbb")).unwrap();
        let first = pool.claim(&root.path().join("one")).unwrap();
        assert_eq!(first, Some(Instance::new(root.path().join("one"))));
        assert_eq!(pool.claim(&root.path().join("two")).unwrap(), None);
    }
}
