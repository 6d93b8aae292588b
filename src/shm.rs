//! The shared memory a server uses, recorded while it runs so that it can be released if the
//! server is killed (SIGKILL, the OOM killer) and cannot release it itself.
//!
//! PostgreSQL keeps a small System V segment (its id is on line 7 of postmaster.pid, after the
//! key) and, for dynamic shared memory, POSIX segments `/dev/shm/PostgreSQL.N`; the one the
//! postmaster maps for its whole life is the control segment. A server that stops normally
//! removes all of them; one killed by SIGKILL leaves them behind. Segments that backends create
//! for a parallel query only while it runs are not recorded: they leak only if the postmaster
//! is killed during such a query.

use std::path::Path;

/// What a running server uses; recorded in the state file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Segments {
    /// System V shared memory id (not key).
    pub sysv_id: Option<i32>,
    /// Names of POSIX segments in /dev/shm.
    pub posix: Vec<String>,
}

/// Reads what the server with postmaster `pid` in `data` uses (after it reported ready).
pub fn of_server(pid: i32, data: &Path) -> Segments {
    let sysv_id = std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|text| {
            let line = text.lines().nth(6)?;
            line.split_whitespace().nth(1)?.parse().ok()
        });
    let posix = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|maps| posix_names(&maps))
        .unwrap_or_default();
    Segments { sysv_id, posix }
}

fn posix_names(maps: &str) -> Vec<String> {
    let mut names: Vec<String> = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter_map(|path| path.strip_prefix("/dev/shm/"))
        .filter(|name| is_postgres_segment(name))
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// `PostgreSQL.` followed by digits: nothing else is ever unlinked.
fn is_postgres_segment(name: &str) -> bool {
    name.strip_prefix("PostgreSQL.")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Number of processes still attached to the System V segment, or None if it is gone (or not
/// this account's, or not created by `creator`).
pub fn attached(id: i32, creator: i32) -> Option<u64> {
    let ds = stat(id)?;
    (ds.shm_perm.uid == nix::unistd::geteuid().as_raw() && ds.shm_cpid == creator)
        .then_some(nattch(&ds))
}

// shm_nattch is u64 on Linux, a narrower type elsewhere.
#[allow(clippy::unnecessary_cast)]
fn nattch(ds: &nix::libc::shmid_ds) -> u64 {
    ds.shm_nattch as u64
}

fn stat(id: i32) -> Option<nix::libc::shmid_ds> {
    // SAFETY: shmid_ds is plain data; IPC_STAT fills it or fails.
    unsafe {
        let mut ds: nix::libc::shmid_ds = std::mem::zeroed();
        (nix::libc::shmctl(id, nix::libc::IPC_STAT, &mut ds) == 0).then_some(ds)
    }
}

/// Releases what a dead server (postmaster `creator`) left: the System V segment if this
/// account owns it and `creator` made it (the kernel frees it once its last process detaches),
/// and the recorded POSIX segments this account owns.
pub fn release(segments: &Segments, creator: i32) {
    if let Some(id) = segments.sysv_id
        && attached(id, creator).is_some()
    {
        // SAFETY: IPC_RMID takes no buffer.
        unsafe { nix::libc::shmctl(id, nix::libc::IPC_RMID, std::ptr::null_mut()) };
    }
    let me = nix::unistd::geteuid().as_raw();
    for name in segments.posix.iter().filter(|n| is_postgres_segment(n)) {
        let path = Path::new("/dev/shm").join(name);
        use std::os::unix::fs::MetadataExt;
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.uid() == me) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Renders the segments for the state file: `sysv_id` and a comma-separated list.
pub fn to_fields(segments: &Segments) -> (String, String) {
    (
        segments.sysv_id.map_or(String::new(), |id| id.to_string()),
        segments.posix.join(","),
    )
}

pub fn from_fields(sysv: &str, posix: &str) -> Segments {
    Segments {
        sysv_id: sysv.parse().ok(),
        posix: posix
            .split(',')
            .filter(|n| is_postgres_segment(n))
            .map(str::to_string)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posix_segments_are_found_in_maps() {
        let maps = "7f00-7f01 rw-s 00000000 00:1a 12 /dev/shm/PostgreSQL.1234\n\
                    7f01-7f02 rw-s 00000000 00:1a 13 /dev/shm/PostgreSQL.1234\n\
                    7f02-7f03 rw-s 00000000 00:1a 14 /dev/shm/other\n\
                    7f03-7f04 r-xp 00000000 08:01 15 /usr/lib/postgresql/15/bin/postgres\n";
        assert_eq!(posix_names(maps), ["PostgreSQL.1234"]);
    }

    #[test]
    fn fields_round_trip_and_reject_foreign_names() {
        let s = Segments {
            sysv_id: Some(42),
            posix: vec!["PostgreSQL.1".into(), "PostgreSQL.22".into()],
        };
        let (a, b) = to_fields(&s);
        assert_eq!(from_fields(&a, &b), s);
        assert_eq!(
            from_fields("", "../etc,PostgreSQL.x,PostgreSQL.7").posix,
            ["PostgreSQL.7"]
        );
        assert_eq!(from_fields("", "").sysv_id, None);
    }
}
