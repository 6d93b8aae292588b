//! Forking, in this one place: plain forks, and detached children that outlive the caller and
//! never hold its terminal or pipes.

use crate::os::process::Pid;
use anyhow::Result;
use fork::Fork;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{Mutex, OnceLock};

/// Descriptors above stderr that pgtmp inherited from its caller (a make jobserver pipe, a
/// script's `exec 9>lock`, ...), noted before pgtmp opens any of its own.
static INHERITED: OnceLock<Vec<i32>> = OnceLock::new();

/// Notes the descriptors inherited from the caller, so that detached children can close
/// them: a watchdog living for minutes must not keep the caller's pipes open or its file
/// locks held. Call first thing in `main`; later calls do nothing.
pub fn note_inherited_fds() {
    INHERITED.get_or_init(|| {
        // The listing's own descriptor was among them and is closed by now.
        crate::os::procfs::own_fds()
            .into_iter()
            .filter(|&fd| fd > 2)
            // SAFETY: F_GETFD only asks whether the descriptor is open.
            .filter(|&fd| unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } >= 0)
            .collect()
    });
}

/// Descriptors of pgtmp's own that no detached child may hold (see [`keep_from_detached`]).
static PRIVATE: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Keeps `fd` out of every detached child forked from now on: `serve`'s listening socket and
/// the write end of its cluster's lifeline, which a watchdog holding them would keep open
/// after serve has gone (the port taken, the lifeline never cut). The descriptor must stay
/// open, unchanged, for the rest of the process.
pub fn keep_from_detached(fd: BorrowedFd) {
    if let Ok(mut private) = PRIVATE.lock() {
        private.push(fd.as_raw_fd());
    }
}

pub enum Forked {
    Parent(Pid),
    Child,
}

/// Forks: the only place pgtmp does (its tests aside). The child is a copy of this process
/// with one thread, the caller's: a lock another thread held at the fork stays locked in the
/// child for good, so there must be no other thread, which debug builds check.
///
/// The child must finish with `std::process::exit`, never by returning into the caller's code.
pub fn fork() -> Result<Forked> {
    debug_assert!(
        crate::os::procfs::thread_count().is_none_or(|threads| threads == 1),
        "fork with other threads running"
    );
    // Anything still buffered would otherwise be written twice.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    match fork::fork().map_err(|err| crate::output::exit::spawn_error(err, "cannot fork"))? {
        Fork::Parent(pid) => Ok(Forked::Parent(Pid::from_raw(pid))),
        Fork::Child => Ok(Forked::Child),
    }
}

/// Forks (see [`fork`]) a child that gets its own session (so SIGHUP from a closing terminal
/// and signals sent to the caller's process group never reach it), /dev/null for
/// stdin/stdout/stderr (so `url=$(pgtmp)` returns as soon as pgtmp itself exits), none of the
/// other descriptors pgtmp inherited (see [`note_inherited_fds`]) and `/` as working directory.
pub fn fork_detached() -> Result<Forked> {
    match fork()? {
        Forked::Parent(pid) => Ok(Forked::Parent(pid)),
        Forked::Child => {
            if fork::setsid().is_err()
                || fork::redirect_stdio().is_err()
                || std::env::set_current_dir("/").is_err()
            {
                std::process::exit(1);
            }
            for &fd in INHERITED.get().map_or(&[][..], Vec::as_slice) {
                // SAFETY: the caller's descriptors are not used by this process: pgtmp never
                // reads or writes them (`run` hands them to its command, which is not forked
                // through here).
                unsafe { nix::libc::close(fd) };
            }
            // The lock is free: there is no other thread (see `fork`).
            let private = PRIVATE.lock().map(|p| p.clone()).unwrap_or_default();
            for fd in private {
                // SAFETY: these belong to objects of the parent's (a listener, a pipe end)
                // that a detached child never touches: it runs its own work and exits with
                // `std::process::exit`, never dropping them.
                unsafe { nix::libc::close(fd) };
            }
            Ok(Forked::Child)
        }
    }
}

/// Makes background work yield to everything else: lowest CPU priority and, on Linux, the idle
/// I/O class. Children (initdb) inherit both.
pub fn lower_priority() {
    lower_priority_of(Pid::this());
}

/// Lowest CPU priority and the idle I/O class for process `pid` of this account. Best effort:
/// it only makes background work politer, so failure changes nothing.
pub fn lower_priority_of(pid: Pid) {
    // Not a pid of one process (0 would be this one, negative ones are groups).
    let Ok(pid) = u32::try_from(pid.as_raw()) else {
        return;
    };
    if pid == 0 {
        return;
    }
    // SAFETY: plain syscalls with integer arguments.
    unsafe {
        nix::libc::setpriority(nix::libc::PRIO_PROCESS, pid, 19);
        #[cfg(target_os = "linux")]
        {
            const IOPRIO_WHO_PROCESS: nix::libc::c_long = 1;
            const IOPRIO_CLASS_IDLE: nix::libc::c_long = 3;
            nix::libc::syscall(
                nix::libc::SYS_ioprio_set,
                IOPRIO_WHO_PROCESS,
                nix::libc::c_long::from(pid),
                IOPRIO_CLASS_IDLE << 13,
            );
        }
    }
}
