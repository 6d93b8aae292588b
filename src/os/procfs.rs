//! The one reader of /proc: what the kernel says about a process (its stat fields and start
//! time, parent, status lines, command line, open descriptors, working directory and owner).
//! Linux only; elsewhere every question has no answer (None, false or empty).

use crate::os::pid::Pid;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

fn path(pid: Pid, file: &str) -> String {
    format!("/proc/{pid}/{file}")
}

/// Every process id the machine has now.
pub fn pids() -> Vec<Pid> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .map(Pid::from_raw)
        .collect()
}

/// The fields of /proc/PID/stat from the third (STATE) on: "PID (COMM) STATE PPID ...", where
/// COMM may hold spaces and parentheses, so fields are counted after the last ')'. None when
/// the process is gone.
pub fn stat_fields(pid: Pid) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(path(pid, "stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Field `n` (from 1) of /proc/PID/stat, a number.
fn stat_number(pid: Pid, n: usize) -> Option<u64> {
    stat_fields(pid)?.get(n.checked_sub(3)?)?.parse().ok()
}

/// The start time of a process, in clock ticks since boot (field 22 of /proc/PID/stat): with
/// the pid, it names one process for the machine's uptime. None if the process is gone.
pub fn start_time(pid: Pid) -> Option<u64> {
    stat_number(pid, 22)
}

/// The processes whose parent is `parent`.
pub fn children(parent: Pid) -> Vec<Pid> {
    let parent = u64::try_from(parent.as_raw()).ok();
    pids()
        .into_iter()
        .filter(|&pid| stat_number(pid, 4) == parent)
        .collect()
}

/// The children of a single-threaded process, as the kernel lists them for its main thread
/// (/proc/PID/task/PID/children): one file read, where [`children`] reads every process's
/// stat. None when the kernel has no such file (CONFIG_PROC_CHILDREN) or it cannot be read.
pub fn thread_children(parent: Pid) -> Option<Vec<Pid>> {
    let text = std::fs::read_to_string(path(parent, &format!("task/{parent}/children"))).ok()?;
    text.split_whitespace()
        .map(|pid| pid.parse::<i32>().ok().map(Pid::from_raw))
        .collect()
}

/// The value of the `key:` line of a status file (/proc/PID/status, /proc/self/status).
fn status_line(file: &str, key: &str) -> Option<String> {
    value_of(&std::fs::read_to_string(file).ok()?, key)
}

fn value_of(status: &str, key: &str) -> Option<String> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .map(|value| value.trim().to_string())
}

/// How many threads this process has (the `Threads:` line of /proc/self/status).
pub fn thread_count() -> Option<usize> {
    status_line("/proc/self/status", "Threads")?.parse().ok()
}

/// The real and effective uid of a process (the `Uid:` line of /proc/PID/status).
pub fn uids(pid: Pid) -> Option<(u32, u32)> {
    let line = status_line(&path(pid, "status"), "Uid")?;
    let mut ids = line.split_whitespace().map(|id| id.parse::<u32>().ok());
    Some((ids.next()??, ids.next()??))
}

/// The account that owns the process (of its /proc directory).
pub fn owner(pid: Pid) -> Option<u32> {
    std::fs::metadata(path(pid, "")).ok().map(|m| m.uid())
}

/// The arguments of the process's command line. None when it cannot be read.
pub fn args(pid: Pid) -> Option<Vec<Vec<u8>>> {
    let cmdline = std::fs::read(path(pid, "cmdline")).ok()?;
    Some(cmdline.split(|&b| b == 0).map(<[u8]>::to_vec).collect())
}

/// What the process's working directory is (followed, so its device and inode).
pub fn cwd(pid: Pid) -> Option<Metadata> {
    std::fs::metadata(path(pid, "cwd")).ok()
}

/// Where the process's working directory is.
pub fn cwd_path(pid: Pid) -> Option<PathBuf> {
    std::fs::read_link(path(pid, "cwd")).ok()
}

/// The paths of the files the process has mapped (column 6 of /proc/PID/maps; empty when it
/// cannot be read).
pub fn mapped_files(pid: Pid) -> Vec<String> {
    std::fs::read_to_string(path(pid, "maps"))
        .map(|maps| mapped_in(&maps))
        .unwrap_or_default()
}

fn mapped_in(maps: &str) -> Vec<String> {
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .map(str::to_string)
        .collect()
}

/// The descriptors this process has open (/proc/self/fd; the listing's own among them).
pub fn own_fds() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The files the process has open (where its descriptors lead; empty when they cannot be
/// read: only the process's own account, or root, may look). Only tests need the paths.
#[cfg(test)]
pub fn open_files(pid: Pid) -> Vec<PathBuf> {
    let Ok(fds) = std::fs::read_dir(path(pid, "fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .collect()
}

/// True when one of the first `limit` open descriptors of the process is on the file
/// `dev`/`ino`. Only the process's own account (or root) may look; for anyone else this is
/// false.
pub fn holds(pid: Pid, dev: u64, ino: u64, limit: usize) -> bool {
    let Ok(fds) = std::fs::read_dir(path(pid, "fd")) else {
        return false;
    };
    fds.flatten().take(limit).any(|fd| {
        // metadata follows the descriptor's link to the open file itself.
        std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_read_by_key() {
        let status = "Name:\tpgtmp\nUmask:\t0022\nThreads:\t3\nUid:\t1\t2\t2\t2\n";
        assert_eq!(value_of(status, "Threads").as_deref(), Some("3"));
        assert_eq!(value_of(status, "Uid").as_deref(), Some("1\t2\t2\t2"));
        assert_eq!(value_of(status, "Thread"), None);
        // The test runs on a thread of its own beside the harness's main thread.
        assert!(thread_count().is_some_and(|threads| threads >= 2));
        let me = nix::unistd::getuid().as_raw();
        assert_eq!(uids(Pid::this()).map(|(real, _)| real), Some(me));
        assert_eq!(owner(Pid::this()), Some(nix::unistd::geteuid().as_raw()));
    }

    #[test]
    fn mapped_files_are_the_sixth_column() {
        let maps = "7f00-7f01 rw-s 00000000 00:1a 12 /dev/shm/PostgreSQL.1\n\
                    7f02-7f03 r--p 00000000 00:00 0\n";
        assert_eq!(mapped_in(maps), ["/dev/shm/PostgreSQL.1"]);
        assert!(own_fds().contains(&0) || own_fds().contains(&1));
    }

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
}
