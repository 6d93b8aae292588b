//! Detaching: forking a child that outlives the caller and never holds its terminal or pipes.

use anyhow::{Context, Result};
use fork::Fork;

pub enum Forked {
    Parent(i32),
    Child,
}

/// Forks. The child gets its own session (so SIGHUP from a closing terminal and signals sent
/// to the caller's process group never reach it), /dev/null for stdin/stdout/stderr (so
/// `url=$(pgtmp)` returns as soon as pgtmp itself exits) and `/` as working directory.
///
/// Must be called while the process is single-threaded. The child must finish with
/// `std::process::exit`, never by returning into the caller's code.
pub fn fork_detached() -> Result<Forked> {
    // Anything still buffered would otherwise be written twice.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    match fork::fork().context("cannot fork")? {
        Fork::Parent(pid) => Ok(Forked::Parent(pid)),
        Fork::Child => {
            if fork::setsid().is_err()
                || fork::redirect_stdio().is_err()
                || std::env::set_current_dir("/").is_err()
            {
                std::process::exit(1);
            }
            Ok(Forked::Child)
        }
    }
}

/// Makes background work yield to everything else: lowest CPU priority and, on Linux, the idle
/// I/O class. Children (initdb) inherit both.
pub fn lower_priority() {
    // SAFETY: plain syscalls on the calling process with constant arguments.
    unsafe {
        nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, 19);
        #[cfg(target_os = "linux")]
        {
            const IOPRIO_WHO_PROCESS: nix::libc::c_long = 1;
            const IOPRIO_CLASS_IDLE: nix::libc::c_long = 3;
            nix::libc::syscall(
                nix::libc::SYS_ioprio_set,
                IOPRIO_WHO_PROCESS,
                0,
                IOPRIO_CLASS_IDLE << 13,
            );
        }
    }
}
