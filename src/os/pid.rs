//! The process id type: a pid is never mixed up with a port, a uid or an exit code.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A process id: its own type, so that a pid is never mixed up with a port, a uid or an exit
/// code, and converted to the kernel's forms here only. Written to state files and reports as
/// the plain number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Pid(i32);

impl Pid {
    pub const fn from_raw(pid: i32) -> Pid {
        Pid(pid)
    }

    pub const fn as_raw(self) -> i32 {
        self.0
    }

    /// This process.
    pub fn this() -> Pid {
        Pid(nix::unistd::getpid().as_raw())
    }

    /// A child that std::process spawned.
    pub fn of(child: &std::process::Child) -> Pid {
        // Linux pids fit in an i32 (pid_max is at most 2^22); std gives them as u32.
        Pid(child.id() as i32)
    }

    /// True for a pid that can name one process (0 and negative ones name groups).
    pub fn is_process(self) -> bool {
        self.0 > 0
    }

    /// The same pid as nix takes it.
    pub fn nix(self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.0)
    }
}

impl From<nix::unistd::Pid> for Pid {
    fn from(pid: nix::unistd::Pid) -> Pid {
        Pid(pid.as_raw())
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
