//! Shared memory of killed initdb runs: the System V and POSIX segments that the backends of
//! an initdb killed by SIGKILL leave (nothing records them) are gone once `pgtmp gc` has run,
//! and segments of the same account that belong to another cluster stay.
//!
//! Other tests make and free segments of the same accounts meanwhile, so nothing here counts
//! totals: the segments checked are those the killed backend had made and mapped, read from
//! /proc just before the kill.

use crate::common::*;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

both_invokers!(
    killed_initdb_leaves_no_shared_memory,
    killed_refill_leaves_no_shared_memory,
);

/// Longest the cleanup after a kill may take on a loaded machine.
const CLEANUP_LIMIT: Duration = Duration::from_secs(30);

/// Segments a killed backend had: System V (id, creator pid), POSIX names in /dev/shm.
#[derive(Debug, Default)]
struct Seen {
    sysv: BTreeSet<(i32, i32)>,
    posix: BTreeSet<String>,
}

impl Seen {
    /// Those still there.
    fn left(&self) -> Vec<String> {
        let sysv = sysv_segments();
        let mut left: Vec<String> = self
            .sysv
            .iter()
            .filter(|seg| sysv.iter().any(|s| (s.id, s.creator) == **seg))
            .map(|(id, creator)| format!("SysV shmid {id} (created by {creator})"))
            .collect();
        left.extend(
            self.posix
                .iter()
                .filter(|name| Path::new("/dev/shm").join(name).exists())
                .map(|name| format!("/dev/shm/{name}")),
        );
        left
    }

    fn count(&self) -> usize {
        self.sysv.len() + self.posix.len()
    }
}

/// A line of /proc/sysvipc/shm.
struct SysV {
    id: i32,
    creator: i32,
    uid: u32,
}

fn sysv_segments() -> Vec<SysV> {
    let text = fs::read_to_string("/proc/sysvipc/shm").expect("cannot read /proc/sysvipc/shm");
    // key shmid perms size cpid lpid nattch uid gid ...
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(SysV {
                id: f.get(1)?.parse().ok()?,
                creator: f.get(4)?.parse().ok()?,
                uid: f.get(7)?.parse().ok()?,
            })
        })
        .collect()
}

/// A bootstrap or single-user backend of an initdb run in the sandbox (working in a data
/// directory whose path contains `needle`) that has made its System V segment and mapped its
/// POSIX ones, with those segments.
fn initdb_backend(sandbox: &Sandbox, needle: &str, uid: u32) -> Option<(i32, Seen)> {
    sandbox.procs().into_iter().find_map(|p| {
        let standalone = p.cmdline.contains("--boot") || p.cmdline.contains("--single");
        let cwd = fs::read_link(format!("/proc/{}/cwd", p.pid)).ok()?;
        if !standalone || !cwd.to_string_lossy().contains(needle) {
            return None;
        }
        let sysv: BTreeSet<(i32, i32)> = sysv_segments()
            .into_iter()
            .filter(|s| s.creator == p.pid && s.uid == uid)
            .map(|s| (s.id, s.creator))
            .collect();
        let maps = fs::read_to_string(format!("/proc/{}/maps", p.pid)).ok()?;
        let posix: BTreeSet<String> = maps
            .lines()
            .filter_map(|line| line.split_whitespace().nth(5)?.strip_prefix("/dev/shm/"))
            .filter(|name| name.starts_with("PostgreSQL."))
            .map(str::to_string)
            .collect();
        (!sysv.is_empty() && !posix.is_empty()).then_some((p.pid, Seen { sysv, posix }))
    })
}

/// Stops the backend `pid` (SIGSTOP) so that it cannot exit, and release its segments, before
/// the kill; true when it is stopped with all of `seen` still there. A backend that finished
/// between being seen and being stopped is let go (initdb starts another).
fn frozen(pid: i32, seen: &Seen) -> bool {
    signal(pid, Signal::SIGSTOP);
    let stopped = wait_until(Duration::from_secs(5), || {
        matches!(proc_state(pid), Some('T') | Some('Z') | None)
    }) && proc_state(pid) == Some('T');
    if stopped && seen.left().len() == seen.count() {
        return true;
    }
    signal(pid, Signal::SIGCONT);
    false
}

/// Waits for an initdb backend (see [`initdb_backend`]), stops it, then SIGKILLs initdb's process group
/// (initdb, its shell, the backend) and the pgtmp process that ran initdb. Returns what the
/// backend had.
fn kill_mid_initdb(sandbox: &Sandbox, needle: &str) -> Seen {
    let (_, uid) = sandbox.invoker.server_account();
    let mut found = None;
    let appeared = wait_until(PGTMP_LIMIT, || {
        found = initdb_backend(sandbox, needle, uid).filter(|(pid, seen)| frozen(*pid, seen));
        found.is_some()
    });
    assert!(appeared, "no initdb backend with shared memory ran");
    let (backend, seen) = found.unwrap();
    let group = nix::unistd::getpgid(Some(Pid::from_raw(backend))).expect("no process group");
    // pgtmp gives initdb a process group of its own: its leader is initdb, whose parent is the
    // pgtmp (or refill) that ran it.
    let pgtmp = parent_pid(group.as_raw());
    if let Some(pgtmp) = pgtmp {
        signal(pgtmp, Signal::SIGKILL);
    }
    let _ = nix::sys::signal::killpg(group, Signal::SIGKILL);
    eprintln!("killed initdb group {group} (pgtmp {pgtmp:?}) holding {seen:?}");
    seen
}

/// Waits until no process refers to the sandbox.
fn settle(sandbox: &Sandbox, context: &str) {
    let mut left = Vec::new();
    let gone = wait_until(CLEANUP_LIMIT, || {
        left = sandbox.procs();
        left.is_empty() && !sandbox.refill_running()
    });
    assert!(gone, "{context}: processes still run: {left:?}");
}

/// The kill leaked the segments (so the test tests something), and `pgtmp gc` frees them.
fn assert_gc_frees(sandbox: &Sandbox, seen: &Seen, removed: &str, context: &str) {
    settle(sandbox, context);
    assert_eq!(
        seen.left().len(),
        seen.count(),
        "{context}: the killed backend's segments did not outlive it: {seen:?}"
    );
    let out = sandbox.run(&["gc"]);
    assert!(out.success() && out.stderr.is_empty(), "{context}: {out}");
    assert!(
        out.stdout.lines().any(|l| l.starts_with(removed)),
        "{context}: gc did not remove the half-made directory: {out}"
    );
    let mut left = Vec::new();
    let freed = wait_until(Duration::from_secs(10), || {
        left = seen.left();
        left.is_empty()
    });
    assert!(freed, "{context}: shared memory left after gc: {left:?}");
}

/// Another cluster's segments of the server account, which no process is attached to and
/// whose creator is gone (as after a kill): a System V segment with a PGShmemHeader naming
/// another data directory and a control segment, and that control segment.
struct Decoy {
    id: i32,
    posix: PathBuf,
}

impl Decoy {
    fn new(sandbox: &Sandbox) -> Decoy {
        let (name, uid) = sandbox.invoker.server_account();
        let other = sandbox.path("other-cluster");
        fs::create_dir(&other).unwrap();
        let meta = fs::metadata(&other).unwrap();
        // ipcmk, run as the server account, makes the segment and exits.
        let mut ipcmk = Command::new("ipcmk");
        ipcmk.args(["-M", "56", "-p", "0600"]);
        if nix::unistd::geteuid().as_raw() != uid {
            ipcmk.uid(uid);
        }
        let out = run(&mut ipcmk, Duration::from_secs(10));
        assert!(out.success(), "ipcmk as {name} failed: {out}");
        let id: i32 = out
            .stdout
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("no id from ipcmk: {out}"));
        // Unique to this sandbox: the as_self and as_user tests run at the same time.
        let handle = (meta.ino() as u32 ^ std::process::id()).wrapping_mul(2_654_435_761) | 1;
        let posix = PathBuf::from(format!("/dev/shm/PostgreSQL.{handle}"));
        fs::write(&posix, [0u8; 64]).unwrap();
        std::os::unix::fs::chown(&posix, Some(uid), None).unwrap();
        // pg_shmem.h on x86_64 Linux: magic at 0, dsm_control at 24, device 40, inode 48.
        let mut header = [0u8; 56];
        header[0..4].copy_from_slice(&679_834_894i32.to_ne_bytes());
        header[24..28].copy_from_slice(&handle.to_ne_bytes());
        header[40..48].copy_from_slice(&meta.dev().to_ne_bytes());
        header[48..56].copy_from_slice(&meta.ino().to_ne_bytes());
        // SAFETY: attaches the 56-byte segment just made, writes 56 bytes into it, detaches.
        unsafe {
            let at = nix::libc::shmat(id, std::ptr::null(), 0);
            assert_ne!(at as isize, -1, "cannot attach segment {id}");
            std::ptr::copy_nonoverlapping(header.as_ptr(), at.cast::<u8>(), header.len());
            nix::libc::shmdt(at);
        }
        Decoy { id, posix }
    }

    fn assert_intact(&self, context: &str) {
        let sysv = sysv_segments();
        assert!(
            sysv.iter().any(|s| s.id == self.id),
            "{context}: another cluster's System V segment {} was removed",
            self.id
        );
        assert!(
            self.posix.exists(),
            "{context}: another cluster's {} was removed",
            self.posix.display()
        );
    }
}

impl Drop for Decoy {
    fn drop(&mut self) {
        // SAFETY: IPC_RMID takes no buffer.
        unsafe { nix::libc::shmctl(self.id, nix::libc::IPC_RMID, std::ptr::null_mut()) };
        let _ = fs::remove_file(&self.posix);
    }
}

/// `pgtmp initdb` with nothing prepared runs initdb in the foreground; killed there with its
/// initdb, it leaves a half-made directory, which gc removes with its shared memory.
fn killed_initdb_leaves_no_shared_memory(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker).cold();
    let decoy = Decoy::new(&sandbox);
    let mut pgtmp: Child = sandbox
        .pgtmp()
        .arg("initdb")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot run pgtmp");
    let pgtmp_dir = sandbox.pgtmp_dir.to_string_lossy().into_owned();
    let seen = kill_mid_initdb(&sandbox, &pgtmp_dir);
    let status = wait_child(&mut pgtmp, PGTMP_LIMIT, "pgtmp initdb");
    assert!(!status.success(), "pgtmp initdb finished despite the kill");
    assert_gc_frees(&sandbox, &seen, "removed ", "pgtmp initdb killed");
    assert!(sandbox.instance_dirs().is_empty(), "a directory is left");
    decoy.assert_intact("pgtmp initdb killed");
}

/// The background refill killed while its initdb makes the pool's template: gc removes the
/// `template.new.*` entry with its shared memory.
fn killed_refill_leaves_no_shared_memory(invoker: &Invoker) {
    let sandbox = Sandbox::with_pool(invoker, 1).cold();
    let decoy = Decoy::new(&sandbox);
    sandbox.start(&["-w", "1"]);
    let seen = kill_mid_initdb(&sandbox, "/template.new.");
    assert_gc_frees(
        &sandbox,
        &seen,
        "removed incomplete pool entry ",
        "refill killed mid-initdb",
    );
    decoy.assert_intact("refill killed mid-initdb");
}
