//! Proof of ownership before pgtmp touches anything: the lock a live pgtmp holds on each of its
//! instance directories, and process start times and command lines, so that a reused pid is
//! never signalled.
//!
//! The lock protocol (flock(2) on directory descriptors, released by the kernel when the last
//! holder dies, whatever kills it):
//! - A start holds PGTMP_DIR shared from before it claims or creates an instance directory until
//!   it holds that directory's own lock; a sweep holds PGTMP_DIR exclusively while it picks what
//!   to remove. So a sweep never sees a directory that a live start has made but not yet locked.
//! - The instance directory's lock is taken by the start and inherited by the watchdog it forks
//!   (not by postgres: the descriptor is close-on-exec), so it is held exactly while a pgtmp
//!   process looks after that directory. An unlocked directory has no live owner.

use crate::os::process::Pid;
use crate::os::procfs;
use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// A held flock on a directory. Dropping it only closes this descriptor: the lock belongs to the
/// open file description, so it stays held while a forked process (the watchdog) still has a
/// copy, and the kernel releases it when the last copy is closed. (nix's `Flock` would unlock
/// explicitly on drop, taking the lock away from the watchdog too.)
pub struct DirLock {
    _file: File,
}

fn open_dir(dir: &Path) -> std::io::Result<File> {
    // O_NOFOLLOW: a symlink planted where a directory was expected is never followed.
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
        .open(dir)
}

fn lock(dir: &Path, operation: nix::libc::c_int) -> Result<Option<DirLock>> {
    let file = open_dir(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    loop {
        // SAFETY: flock(2) on a descriptor this function owns.
        if unsafe { nix::libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(Some(DirLock { _file: file }));
        }
        match nix::errno::Errno::last() {
            nix::errno::Errno::EINTR => continue,
            nix::errno::Errno::EWOULDBLOCK => return Ok(None),
            errno => {
                return Err(errno).with_context(|| format!("cannot lock {}", dir.display()));
            }
        }
    }
}

/// Locks `dir` exclusively, or returns None at once if someone else holds it.
pub fn try_lock(dir: &Path) -> Result<Option<DirLock>> {
    lock(dir, nix::libc::LOCK_EX | nix::libc::LOCK_NB)
}

/// Locks a directory this process has just made or claimed; someone else holding it means a
/// cluster already runs there.
pub fn lock_new(dir: &Path) -> Result<DirLock> {
    try_lock(dir)?.with_context(|| {
        let dir = dir.display();
        format!("a cluster is already running in {dir}; stop it first with `pgtmp stop -d {dir}`")
    })
}

/// Locks `dir` shared, waiting for an exclusive holder (a sweep picking what to remove).
pub fn lock_shared(dir: &Path) -> Result<DirLock> {
    lock(dir, nix::libc::LOCK_SH)?.with_context(|| format!("cannot lock {}", dir.display()))
}

/// Locks a lock file (made, mode 0600, if missing) that refillers and builders take turns on.
/// With a non-blocking `how`, a lock held elsewhere is an error like any other.
pub fn lock_file(path: &Path, how: FlockArg) -> Result<Flock<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    Flock::lock(file, how)
        .map_err(|(_, errno)| errno)
        .with_context(|| format!("cannot lock {}", path.display()))
}

/// True when `path` is a directory (not a symlink to one) of this account.
pub fn is_own_dir(path: &Path) -> bool {
    let me = nix::unistd::geteuid().as_raw();
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir() && m.uid() == me)
}

/// Makes `path` a private directory of this account if it is missing, and refuses it if it
/// is anything else (a symlink planted there is never followed).
pub fn own_dir(path: &Path) -> Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Err(err) if err.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(err).with_context(|| format!("cannot create {}", path.display()));
        }
        _ => {}
    }
    if !is_own_dir(path) {
        anyhow::bail!(
            "{} is not a directory of this account's own (a symlink, or someone else's); remove it",
            path.display()
        );
    }
    Ok(())
}

/// True when a live pgtmp process holds the lock of this instance directory.
pub fn is_locked(dir: &Path) -> bool {
    matches!(try_lock(dir), Ok(None))
}

/// A process proven to be the watchdog or the postmaster of one directory, held by a handle
/// taken before the proof: a signal sent through it reaches that process or none.
#[derive(Debug)]
pub struct Proven {
    process: crate::os::process::Pidfd,
}

impl Proven {
    pub fn pid(&self) -> Pid {
        self.process.pid()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) -> Result<()> {
        self.process.signal(sig)
    }
}

impl crate::os::process::Target for Proven {
    fn pid(&self) -> Pid {
        self.process.pid()
    }

    fn send(&self, sig: nix::sys::signal::Signal) -> Result<()> {
        self.process.signal(sig)
    }
}

/// Most descriptors of a process looked at for the directory's: a watchdog has a handful.
const FD_SCAN_LIMIT: usize = 4096;

/// The watchdog of the directory `dir`, if `pid` is proven to be it: the process has the
/// recorded start time (required), runs as `uid` (real and effective), and holds an open
/// descriptor on this very directory (the watchdog keeps the directory's lock descriptor for
/// its whole life, see lifecycle/watchdog/supervise.rs). A lock held on the directory proves
/// nothing by itself: anyone who can open it can lock it.
pub fn prove_watchdog(
    dir: &crate::state::safefs::Dir,
    pid: Pid,
    started: Option<u64>,
    uid: nix::unistd::Uid,
) -> Result<Option<Proven>> {
    let Some(started) = started else {
        return Ok(None);
    };
    let Some(process) = crate::os::process::Pidfd::open(pid)? else {
        return Ok(None);
    };
    let st = dir.stat()?;
    let proven =
        is_process_of(pid, started, uid) && procfs::holds(pid, st.st_dev, st.st_ino, FD_SCAN_LIMIT);
    Ok(proven.then_some(Proven { process }))
}

/// The postmaster of the data directory `data`, if `pid` is proven to be it: the process has
/// the recorded start time (where one was recorded: postmaster.pid records none), runs as
/// `uid`, has `-D DATA` on its command line and works in this very directory (postgres
/// changes into its data directory at once).
pub fn prove_postmaster(
    data: &crate::state::safefs::Dir,
    pid: Pid,
    started: Option<u64>,
    uid: nix::unistd::Uid,
) -> Result<Option<Proven>> {
    let Some(process) = crate::os::process::Pidfd::open(pid)? else {
        return Ok(None);
    };
    let st = data.stat()?;
    let started_then = started.is_none_or(|s| is_process_of(pid, s, uid));
    let proven = started_then
        && procfs::uids(pid) == Some((uid.as_raw(), uid.as_raw()))
        && serves(pid, data.path())
        && procfs::cwd(pid).is_some_and(|cwd| cwd.dev() == st.st_dev && cwd.ino() == st.st_ino);
    Ok(proven.then_some(Proven { process }))
}

/// True when `pid` is alive, was started at `started` and runs as `uid`.
fn is_process_of(pid: Pid, started: u64, uid: nix::unistd::Uid) -> bool {
    crate::os::process::alive(pid)
        && procfs::start_time(pid) == Some(started)
        && procfs::uids(pid) == Some((uid.as_raw(), uid.as_raw()))
}

/// True when the command line of `pid` has `-D DATA`.
fn serves(pid: Pid, data: &Path) -> bool {
    let data = data.as_os_str().as_encoded_bytes();
    procfs::args(pid).is_some_and(|args| args.windows(2).any(|w| w[0] == b"-D" && w[1] == data))
}

/// The postmaster that the postmaster.pid of data directory `data` names, if it is proven to
/// serve that very directory (see [`prove_postmaster`]; postmaster.pid records no start time)
/// and to run as this account.
pub fn proven_postmaster_of(data: &Path) -> Option<Proven> {
    let (pid, _) = postmaster_file(data)?;
    let dir = crate::state::safefs::Dir::open(data).ok()?;
    prove_postmaster(&dir, pid, None, nix::unistd::geteuid())
        .ok()
        .flatten()
}

/// What a data directory's postmaster.pid says: the postmaster's pid and its System V shared
/// memory id (line 7, after the key), if any.
pub fn postmaster_file(data: &Path) -> Option<(Pid, Option<i32>)> {
    let text = crate::state::safefs::read_text_at(&data.join("postmaster.pid")).ok()??;
    let pid = Pid::from_raw(text.lines().next()?.trim().parse().ok()?);
    let sysv = text
        .lines()
        .nth(6)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|id| id.parse().ok());
    Some((pid, sysv))
}

/// True when a process of this account works inside `dir` (its working directory is there),
/// e.g. an orphaned initdb or a backend of a killed server. False where it cannot be told.
pub fn processes_inside(dir: &Path) -> bool {
    let me = nix::unistd::geteuid().as_raw();
    procfs::pids().into_iter().any(|pid| {
        procfs::owner(pid) == Some(me)
            && crate::os::process::alive(pid)
            && procfs::cwd_path(pid).is_some_and(|cwd| cwd.starts_with(dir))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_are_found_by_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!processes_inside(dir.path()));
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .current_dir(dir.path())
            .spawn()
            .unwrap();
        assert!(processes_inside(dir.path()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!processes_inside(dir.path()));
    }

    #[test]
    fn a_process_that_is_not_postgres_is_no_postmaster() {
        let me = Pid::this();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("postmaster.pid"), format!("{me}\n")).unwrap();
        assert!(proven_postmaster_of(dir.path()).is_none());
    }

    #[test]
    fn directory_locks_exclude_each_other_and_refuse_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let held = try_lock(dir.path()).unwrap();
        assert!(held.is_some());
        assert!(is_locked(dir.path()));
        drop(held);
        assert!(!is_locked(dir.path()));
        // A forked copy keeps the lock after this process's copy is dropped.
        let held = try_lock(dir.path()).unwrap().unwrap();
        // The child holds its copy until the parent closes the pipe: no sleep to guess by.
        // Close-on-exec, so that no program another test spawns meanwhile keeps it open.
        let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let keep = [held._file.as_raw_fd(), read_end.as_raw_fd()];
        // SAFETY: the child only calls close(2), read(2) and _exit(2), which are
        // async-signal-safe, so the other threads of the test harness cannot leave it in a
        // broken state.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // Only the lock and the pipe: descriptors of tests running on other threads
                // (their locks) must not stay held by this child.
                for fd in 3..1024 {
                    if !keep.contains(&fd) {
                        // SAFETY: closing descriptors this child never uses.
                        unsafe { nix::libc::close(fd) };
                    }
                }
                let mut byte = [0u8; 1];
                let _ = nix::unistd::read(&read_end, &mut byte);
                // SAFETY: ends the child at once, running nothing of the parent's.
                unsafe { nix::libc::_exit(0) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(read_end);
                drop(held);
                assert!(is_locked(dir.path()));
                drop(write_end);
                nix::sys::wait::waitpid(child, None).unwrap();
                assert!(!is_locked(dir.path()));
            }
        }
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        assert!(try_lock(&link).is_err());
    }
}
