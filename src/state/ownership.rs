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

/// The start time of a process, in clock ticks since boot (field 22 of /proc/PID/stat): with
/// the pid, it names one process for the machine's uptime. None if the process is gone, or
/// where it cannot be told (not Linux).
#[cfg(target_os = "linux")]
pub fn start_time(pid: Pid) -> Option<u64> {
    stat_field(pid, 22)
}

/// Field `n` (from 1) of /proc/PID/stat, a number: "PID (COMM) STATE PPID ...", where COMM
/// may hold spaces and parentheses, so fields are counted after the last ')'.
#[cfg(target_os = "linux")]
fn stat_field(pid: Pid, n: usize) -> Option<u64> {
    crate::os::process::stat_fields(pid)?
        .get(n.checked_sub(3)?)?
        .parse()
        .ok()
}

/// The processes whose parent is `parent` (Linux; none elsewhere).
pub fn children(parent: Pid) -> Vec<Pid> {
    #[cfg(target_os = "linux")]
    {
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        procs
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .parse::<i32>()
                    .ok()
                    .map(Pid::from_raw)
            })
            .filter(|&pid| stat_field(pid, 4) == u64::try_from(parent.as_raw()).ok())
            .collect()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = parent;
        Vec::new()
    }
}

#[cfg(not(target_os = "linux"))]
pub fn start_time(_pid: Pid) -> Option<u64> {
    None
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
/// its whole life, see watchdog.rs). A lock held on the directory proves nothing by itself:
/// anyone who can open it can lock it.
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
    let proven = is_process_of(pid, started, uid) && holds(pid, st.st_dev, st.st_ino);
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
        && uids(pid) == Some((uid.as_raw(), uid.as_raw()))
        && serves(pid, data.path())
        && std::fs::metadata(format!("/proc/{pid}/cwd"))
            .is_ok_and(|cwd| cwd.dev() == st.st_dev && cwd.ino() == st.st_ino);
    Ok(proven.then_some(Proven { process }))
}

/// True when `pid` is alive, was started at `started` and runs as `uid`.
fn is_process_of(pid: Pid, started: u64, uid: nix::unistd::Uid) -> bool {
    crate::os::process::alive(pid)
        && start_time(pid) == Some(started)
        && uids(pid) == Some((uid.as_raw(), uid.as_raw()))
}

/// The real and effective uid of a process (the `Uid:` line of /proc/PID/status).
fn uids(pid: Pid) -> Option<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut ids = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .map(|id| id.parse::<u32>().ok());
    Some((ids.next()??, ids.next()??))
}

/// True when the process has an open descriptor on the file `dev`/`ino`. Only the process's
/// own account (or root) may look; for anyone else this is false.
fn holds(pid: Pid, dev: u64, ino: u64) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().take(FD_SCAN_LIMIT).any(|fd| {
        // metadata follows the descriptor's link to the open file itself.
        std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino)
    })
}

/// True when the command line of `pid` has `-D DATA`.
fn serves(pid: Pid, data: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let data = data.as_os_str().as_encoded_bytes();
    args.windows(2).any(|w| w[0] == b"-D" && w[1] == data)
}

#[cfg(target_os = "linux")]
fn process_uid(pid: Pid) -> Option<u32> {
    std::fs::metadata(format!("/proc/{pid}"))
        .ok()
        .map(|m| m.uid())
}

#[cfg(not(target_os = "linux"))]
fn process_uid(_pid: Pid) -> Option<u32> {
    None
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
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|entry| {
        let Ok(pid) = entry
            .file_name()
            .to_string_lossy()
            .parse()
            .map(Pid::from_raw)
        else {
            return false;
        };
        process_uid(pid) == Some(me)
            && crate::os::process::alive(pid)
            && std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_stable() {
        let me = Pid::this();
        let started = start_time(me);
        assert!(started.is_some());
        assert_eq!(start_time(me), started);
    }

    #[test]
    fn children_are_found_by_parent() {
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let found = children(Pid::this());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found.contains(&Pid::of(&child)), "{found:?}");
    }

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
