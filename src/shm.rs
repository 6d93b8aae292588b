//! The shared memory a server uses, recorded while it runs so that it can be released if the
//! server is killed (SIGKILL, the OOM killer) and cannot release it itself.
//!
//! PostgreSQL keeps a small System V segment (its id is on line 7 of postmaster.pid, after the
//! key) and, for dynamic shared memory, POSIX segments `/dev/shm/PostgreSQL.N`; the one the
//! postmaster maps for its whole life is the control segment. A server that stops normally
//! removes all of them; one killed by SIGKILL leaves them behind. The control segment lists the
//! other POSIX segments (those backends create later, e.g. for statistics or a parallel query),
//! so it is read, as PostgreSQL itself does at its next start, before everything is removed.

use std::path::Path;
use std::time::{Duration, Instant};

/// What a running server uses; recorded in the state file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Segments {
    /// System V shared memory id (not key).
    pub sysv_id: Option<i32>,
    /// Names of POSIX segments in /dev/shm.
    pub posix: Vec<String>,
}

/// How long the backends of a killed server get to exit (and detach) before its segments are
/// removed anyway.
pub const DETACH_LIMIT: Duration = Duration::from_secs(10);

/// Reads what the server with postmaster `pid` in `data` uses (after it reported ready).
pub fn of_server(pid: i32, data: &Path) -> Segments {
    let sysv_id = crate::ownership::postmaster_file(data).and_then(|(_, sysv_id)| sysv_id);
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

/// Waits until no process is attached to the System V segment `id` made by `creator` (or it
/// is gone), at most `limit`; false if processes are still attached then.
pub fn wait_detached(id: i32, creator: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while attached(id, creator).is_some_and(|n| n > 0) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
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
    let mut posix = segments.posix.clone();
    if let Some(id) = segments.sysv_id
        && attached(id, creator).is_some()
    {
        // The header names the DSM control segment: found even when it was not recorded (a
        // server, or initdb's bootstrap backend, killed before anything was written down).
        if let Some(handle) = control_handle(id) {
            posix.push(format!("PostgreSQL.{handle}"));
        }
        // SAFETY: IPC_RMID takes no buffer.
        unsafe { nix::libc::shmctl(id, nix::libc::IPC_RMID, std::ptr::null_mut()) };
    }
    posix.sort();
    posix.dedup();
    for name in posix.iter().filter(|n| is_postgres_segment(n)) {
        let path = Path::new("/dev/shm").join(name);
        if !owned(&path) {
            continue;
        }
        if let Ok(bytes) = std::fs::read(&path) {
            for handle in listed_segments(&bytes) {
                let listed = Path::new("/dev/shm").join(format!("PostgreSQL.{handle}"));
                if owned(&listed) {
                    let _ = std::fs::remove_file(listed);
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    }
}

/// PGShmemMagic in PostgreSQL's pg_shmem.h.
const SHMEM_MAGIC: i32 = 679_834_894;

/// The DSM control segment's handle from the System V segment's PGShmemHeader (magic, creator
/// pid, total size, free offset, then `dsm_control`), read through a read-only attachment.
fn control_handle(id: i32) -> Option<u32> {
    const OFFSET: usize = 8 + 2 * std::mem::size_of::<usize>();
    if stat(id)?.shm_segsz < OFFSET + 4 {
        return None;
    }
    // SAFETY: a read-only attachment of a segment at least OFFSET + 4 bytes long, read with
    // unaligned reads and detached before returning.
    unsafe {
        let at = nix::libc::shmat(id, std::ptr::null(), nix::libc::SHM_RDONLY);
        if at as isize == -1 {
            return None;
        }
        let magic = std::ptr::read_unaligned(at.cast::<i32>());
        let handle = std::ptr::read_unaligned(at.cast::<u8>().add(OFFSET).cast::<u32>());
        nix::libc::shmdt(at);
        (magic == SHMEM_MAGIC && handle != 0).then_some(handle)
    }
}

fn owned(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.uid() == me)
}

/// PG_DYNSHMEM_CONTROL_MAGIC in PostgreSQL's dsm.c.
const CONTROL_MAGIC: u32 = 0x9a50_3d32;

/// Handles of the segments a DSM control segment lists as in use (dsm.c's dsm_control_header:
/// magic, nitems, maxitems, then items of `handle, refcnt, ...`). The item size differs between
/// versions (24 bytes up to PostgreSQL 13; 40 from 14, which added segments inside the main
/// shared memory, `npages` > 0, that have no file); it is told from the segment's size.
/// Anything that does not add up yields nothing.
fn listed_segments(bytes: &[u8]) -> Vec<u32> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let long = |at: usize| -> Option<u64> {
        Some(u64::from_ne_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
    };
    let (Some(CONTROL_MAGIC), Some(nitems), Some(maxitems)) = (word(0), word(4), word(8)) else {
        return Vec::new();
    };
    const HEADER: usize = 16;
    let (nitems, maxitems) = (nitems as usize, maxitems as usize);
    let Some(item_size) = [40usize, 24]
        .into_iter()
        .find(|size| maxitems > 0 && HEADER + maxitems * size == bytes.len())
    else {
        return Vec::new();
    };
    if nitems > maxitems {
        return Vec::new();
    }
    (0..nitems)
        .filter_map(|i| {
            let at = HEADER + i * item_size;
            let (handle, refcnt) = (word(at)?, word(at + 4)?);
            // With 40-byte items, npages (at +16) > 0 marks a segment in the main region.
            let in_main_region = item_size == 40 && long(at + 16)? > 0;
            (handle != 0 && refcnt > 0 && !in_main_region).then_some(handle)
        })
        .collect()
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
    fn control_segment_lists_segments_in_use() {
        let maxitems = 3usize;
        let mut seg = vec![0u8; 16 + maxitems * 40];
        seg[0..4].copy_from_slice(&CONTROL_MAGIC.to_ne_bytes());
        seg[4..8].copy_from_slice(&3u32.to_ne_bytes());
        seg[8..12].copy_from_slice(&(maxitems as u32).to_ne_bytes());
        let item = |seg: &mut Vec<u8>, i: usize, handle: u32, refcnt: u32, npages: u64| {
            let at = 16 + i * 40;
            seg[at..at + 4].copy_from_slice(&handle.to_ne_bytes());
            seg[at + 4..at + 8].copy_from_slice(&refcnt.to_ne_bytes());
            seg[at + 16..at + 24].copy_from_slice(&npages.to_ne_bytes());
        };
        item(&mut seg, 0, 111, 2, 0);
        item(&mut seg, 1, 222, 0, 0); // free slot
        item(&mut seg, 2, 333, 2, 4); // in the main region: no file
        assert_eq!(listed_segments(&seg), [111]);
        assert!(listed_segments(&seg[..seg.len() - 1]).is_empty());
        seg[0] ^= 1;
        assert!(listed_segments(&seg).is_empty());
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
