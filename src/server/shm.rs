//! The shared memory a server uses, recorded while it runs so that it can be released if the
//! server is killed (SIGKILL, the OOM killer) and cannot release it itself.
//!
//! PostgreSQL keeps a small System V segment (its id is on line 7 of postmaster.pid, after the
//! key) and, for dynamic shared memory, POSIX segments `/dev/shm/PostgreSQL.N`; the one the
//! postmaster maps for its whole life is the control segment. A server that stops normally
//! removes all of them; one killed by SIGKILL leaves them behind. The control segment lists the
//! other POSIX segments (those backends create later, e.g. for statistics or a parallel query),
//! so it is read, as PostgreSQL itself does at its next start, before everything is removed.
//!
//! Processes that record nothing leave the same: every `postgres --check`, `--boot` and
//! `--single` that initdb runs (and `--single` for database `test`) makes one System V segment
//! and a control segment, and a bootstrap backend a 1 MB segment the control segment lists;
//! killed mid-initdb, or dying of a PANIC (a full disk), they leave all three, with at most a
//! `postmaster.pid` naming a negative pid (a standalone backend). They are found from the data
//! directory instead, with PostgreSQL's own proof (sysv_shmem.c, PGSharedMemoryAttach): the
//! System V segment starts with a PGShmemHeader whose `device` and `inode` are the data
//! directory's, so [`release_left_in`] frees exactly the segments of this account whose header
//! names that directory, no process is attached to and whose creator is gone; the POSIX ones
//! are then reached as above, from the header's `dsm_control` and the control segment's list
//! (in SIGKILLs of a PostgreSQL 15 initdb at some twenty points, everything left was reached
//! this way). Another cluster's or program's segments never carry the directory's inode, so they
//! survive. Not reachable this way: the one segment initdb itself makes and unlinks at once to
//! choose the DSM type, and a control segment whose creator was killed between making it and
//! writing its handle into the header; both windows are microseconds long.

use crate::os::process::Pid;
use crate::state::segments::{Segments, is_postgres_segment};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long the backends of a killed server get to exit (and detach) before its segments are
/// removed anyway.
pub const DETACH_LIMIT: Duration = Duration::from_secs(10);

/// Reads what the server with postmaster `pid` in `data` uses (after it reported ready).
pub fn of_server(pid: Pid, data: &Path) -> Segments {
    let sysv_id = crate::state::ownership::postmaster_file(data).and_then(|(_, sysv_id)| sysv_id);
    let posix = posix_names(&crate::os::procfs::mapped_files(pid));
    Segments { sysv_id, posix }
}

fn posix_names(mapped: &[String]) -> Vec<String> {
    let mut names: Vec<String> = mapped
        .iter()
        .filter_map(|path| path.strip_prefix("/dev/shm/"))
        .filter(|name| is_postgres_segment(name))
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Waits until no process is attached to the System V segment `id` made by `creator` (or it
/// is gone), at most `limit`; false if processes are still attached then.
pub fn wait_detached(id: i32, creator: Pid, limit: Duration) -> bool {
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
pub fn attached(id: i32, creator: Pid) -> Option<u64> {
    let ds = stat(id)?;
    (ds.shm_perm.uid == nix::unistd::geteuid().as_raw() && ds.shm_cpid == creator.as_raw())
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
pub fn release(segments: &Segments, creator: Pid) {
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

/// What pgtmp uses of a PGShmemHeader (pg_shmem.h; the layout is checked against a real
/// PostgreSQL server by a test).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    dsm_control: u32,
    device: u64,
    inode: u64,
}

const fn align(offset: usize, to: usize) -> usize {
    offset.div_ceil(to) * to
}

// The C layout of PGShmemHeader: int32 magic; pid_t creatorPID; Size totalsize, freeoffset;
// dsm_handle (uint32) dsm_control; void *index; dev_t device; ino_t inode. On x86_64 Linux:
// dsm_control at 24, index at 32, device at 40, inode at 48, 56 bytes in all (the size of the
// segment PostgreSQL makes with the default shared_memory_type=mmap).
const WORD: usize = std::mem::size_of::<usize>();
const DSM_CONTROL_AT: usize = 8 + 2 * WORD;
const INDEX_AT: usize = align(DSM_CONTROL_AT + 4, WORD);
const DEVICE_AT: usize = align(INDEX_AT + WORD, std::mem::align_of::<nix::libc::dev_t>());
const INODE_AT: usize = align(
    DEVICE_AT + std::mem::size_of::<nix::libc::dev_t>(),
    std::mem::align_of::<nix::libc::ino_t>(),
);
const HEADER_LEN: usize = INODE_AT + std::mem::size_of::<nix::libc::ino_t>();

/// The header at the start of a System V segment's bytes; None unless it is PostgreSQL's.
fn parse_header(bytes: &[u8]) -> Option<Header> {
    let field = |at: usize, len: usize| -> Option<u64> {
        let bytes = bytes.get(at..at + len)?;
        Some(match len {
            4 => u64::from(u32::from_ne_bytes(bytes.try_into().ok()?)),
            8 => u64::from_ne_bytes(bytes.try_into().ok()?),
            _ => return None,
        })
    };
    let magic = i32::from_ne_bytes(bytes.get(0..4)?.try_into().ok()?);
    if magic != SHMEM_MAGIC {
        return None;
    }
    Some(Header {
        dsm_control: u32::from_ne_bytes(
            bytes
                .get(DSM_CONTROL_AT..DSM_CONTROL_AT + 4)?
                .try_into()
                .ok()?,
        ),
        device: field(DEVICE_AT, std::mem::size_of::<nix::libc::dev_t>())?,
        inode: field(INODE_AT, std::mem::size_of::<nix::libc::ino_t>())?,
    })
}

/// The PGShmemHeader of System V segment `id`, copied out through a read-only attachment.
fn read_header(id: i32) -> Option<Header> {
    if stat(id)?.shm_segsz < HEADER_LEN {
        return None;
    }
    let mut bytes = [0u8; HEADER_LEN];
    // SAFETY: a read-only attachment of a segment at least HEADER_LEN bytes long (checked
    // above; a segment's size never changes), copied byte-wise into a buffer of that length
    // and detached before returning.
    unsafe {
        let at = nix::libc::shmat(id, std::ptr::null(), nix::libc::SHM_RDONLY);
        if at as isize == -1 {
            return None;
        }
        std::ptr::copy_nonoverlapping(at.cast::<u8>(), bytes.as_mut_ptr(), HEADER_LEN);
        nix::libc::shmdt(at);
    }
    parse_header(&bytes)
}

/// The DSM control segment's handle from the System V segment's header.
fn control_handle(id: i32) -> Option<u32> {
    read_header(id)
        .map(|h| h.dsm_control)
        .filter(|&handle| handle != 0)
}

/// The ids of the System V segments in the system (/proc/sysvipc/shm: a heading, then one
/// line per segment, its id second).
fn sysv_ids() -> Vec<i32> {
    std::fs::read_to_string("/proc/sysvipc/shm")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

/// The device and inode of the data directory `data` if it is a directory of this account's
/// own, from the opened directory itself (never through a symlink).
fn identity(data: &Path) -> Option<(u64, u64)> {
    use nix::fcntl::{OFlag, open};
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = open(data, flags, nix::sys::stat::Mode::empty()).ok()?;
    let st = nix::sys::stat::fstat(&fd).ok()?;
    #[allow(clippy::unnecessary_cast)] // dev_t and ino_t are narrower on some systems.
    (st.st_uid == nix::unistd::geteuid().as_raw()).then_some((st.st_dev as u64, st.st_ino as u64))
}

/// Releases the shared memory that dead PostgreSQL processes (a killed initdb's backends, a
/// standalone backend, a server that recorded nothing) left for the data directory `data`:
/// the System V segments of this account whose header names `data` (device and inode), with
/// no process attached and whose creator is gone, and the POSIX segments they lead to (see
/// [`release`]). Call it before removing `data`: once it is gone its inode proves nothing.
/// Safe at any time: a live process's segments are attached. Returns how many System V
/// segments it released.
pub fn release_left_in(data: &Path) -> usize {
    let Some((device, inode)) = identity(data) else {
        return 0;
    };
    let me = nix::unistd::geteuid().as_raw();
    let mut released = 0;
    for id in sysv_ids() {
        let Some(ds) = stat(id) else {
            continue;
        };
        let orphaned = ds.shm_perm.uid == me
            && nattch(&ds) == 0
            && !crate::os::process::alive(Pid::from_raw(ds.shm_cpid));
        if orphaned && read_header(id).is_some_and(|h| h.device == device && h.inode == inode) {
            let segments = Segments {
                sysv_id: Some(id),
                posix: Vec::new(),
            };
            release(&segments, Pid::from_raw(ds.shm_cpid));
            released += 1;
        }
    }
    released
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posix_segments_are_found_among_mapped_files() {
        let mapped = [
            "/dev/shm/PostgreSQL.1234",
            "/dev/shm/PostgreSQL.1234",
            "/dev/shm/other",
            "/usr/lib/postgresql/15/bin/postgres",
        ]
        .map(String::from);
        assert_eq!(posix_names(&mapped), ["PostgreSQL.1234"]);
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
    fn the_header_gives_control_segment_device_and_inode() {
        let mut seg = vec![0u8; HEADER_LEN];
        seg[0..4].copy_from_slice(&SHMEM_MAGIC.to_ne_bytes());
        seg[DSM_CONTROL_AT..DSM_CONTROL_AT + 4].copy_from_slice(&0xdead_beef_u32.to_ne_bytes());
        seg[DEVICE_AT..DEVICE_AT + 8].copy_from_slice(&65024u64.to_ne_bytes());
        seg[INODE_AT..INODE_AT + 8].copy_from_slice(&10_011_031u64.to_ne_bytes());
        let header = Header {
            dsm_control: 0xdead_beef,
            device: 65024,
            inode: 10_011_031,
        };
        assert_eq!(parse_header(&seg), Some(header));
        if cfg!(all(target_os = "linux", target_pointer_width = "64")) {
            assert_eq!(
                (DSM_CONTROL_AT, DEVICE_AT, INODE_AT, HEADER_LEN),
                (24, 40, 48, 56)
            );
        }
        assert_eq!(parse_header(&seg[..HEADER_LEN - 1]), None, "too short");
        seg[0] ^= 1;
        assert_eq!(parse_header(&seg), None, "not PostgreSQL's");
    }

    /// Runs `program` as the account that can run PostgreSQL here: this one, or postgres for
    /// root (which PostgreSQL refuses to run as).
    fn as_server(program: &Path, owner: Option<&nix::unistd::User>) -> std::process::Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new(program);
        if let Some(user) = owner {
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        cmd.env("LC_ALL", "C");
        cmd
    }

    /// A standalone backend, ended cleanly (its input closed) when the test ends.
    struct Backend(std::process::Child);

    impl Drop for Backend {
        fn drop(&mut self) {
            drop(self.0.stdin.take());
            let _ = self.0.wait();
        }
    }

    /// The layout checked against what a real PostgreSQL server writes: a standalone backend's
    /// segment names its data directory, and its control segment exists. Killed, its segments
    /// are released from the directory alone (unless run as root, whose backend runs as
    /// postgres: this account then owns none of them, which the black-box tests cover).
    #[test]
    fn a_real_servers_header_names_its_data_directory() {
        use std::os::unix::fs::MetadataExt;
        let Ok(install) = crate::server::discover::find(None) else {
            assert!(std::env::var("CI").is_err(), "CI must have PostgreSQL");
            eprintln!("SKIPPED: no PostgreSQL installation found");
            return;
        };
        let root = nix::unistd::geteuid().is_root();
        let owner = root.then(|| nix::unistd::User::from_name("postgres").unwrap().unwrap());
        let dir = tempfile::tempdir().unwrap();
        if let Some(user) = &owner {
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
        }
        let data = dir.path().join("data");
        let out = as_server(&install.initdb(), owner.as_ref())
            .args(["--no-sync", "-A", "trust", "-U", "x", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let backend = as_server(&install.postgres(), owner.as_ref())
            .arg("--single")
            .arg("-D")
            .arg(&data)
            .arg("postgres")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut backend = Backend(backend);
        // The header is complete once the control segment's handle is in it: PostgreSQL makes
        // that segment after the System V one (whose id postmaster.pid shows first).
        let deadline = Instant::now() + Duration::from_secs(30);
        let (id, header) = loop {
            let sysv = crate::state::ownership::postmaster_file(&data).and_then(|(_, id)| id);
            if let Some(id) = sysv
                && let Some(header) = read_header(id).filter(|h| h.dsm_control != 0)
            {
                break (id, header);
            }
            assert!(Instant::now() < deadline, "no complete header in time");
            std::thread::sleep(Duration::from_millis(10));
        };
        let meta = std::fs::metadata(&data).unwrap();
        let control = Path::new("/dev/shm").join(format!("PostgreSQL.{}", header.dsm_control));
        assert_eq!(stat(id).unwrap().shm_segsz, HEADER_LEN);
        assert_eq!((header.device, header.inode), (meta.dev(), meta.ino()));
        assert!(control.is_file(), "{} is missing", control.display());
        assert_eq!(
            release_left_in(&data),
            0,
            "released a live backend's memory"
        );
        if root {
            return;
        }
        backend.0.kill().unwrap();
        backend.0.wait().unwrap();
        assert_eq!(release_left_in(&data), 1);
        assert!(stat(id).is_none() && !control.exists(), "not released");
    }
}
