//! `--owner-pid`: the process whose life a cluster follows. It is checked at the start (it
//! runs, and as the invoking account), known from then on by its pid and start time together,
//! and watched by the watchdog through a pidfd, so that a pid reused by another process after
//! the owner's exit never keeps the cluster alive.

use crate::os::process::{self, Pid, Pidfd};
use crate::os::procfs;
use crate::output::exit;
use anyhow::Result;

/// The owner: a process, named by its pid and its start time (clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub pid: Pid,
    pub start: u64,
}

impl Owner {
    /// The running process `pid` as the owner of a cluster that the account `uid` starts; a
    /// usage error naming it when there is no such process (or only a zombie) or when it runs
    /// as another account.
    pub fn check(pid: Pid, uid: u32) -> Result<Owner> {
        let gone = || {
            exit::usage(format!(
                "--owner-pid {pid}: there is no such process (it has exited, or never \
                 existed); give the pid of a running process of yours, e.g. $$ for the \
                 calling shell"
            ))
        };
        let start = procfs::start_time(pid).ok_or_else(gone)?;
        let (real, _) = procfs::uids(pid).ok_or_else(gone)?;
        if real != uid {
            return Err(exit::usage(format!(
                "--owner-pid {pid}: that process runs as uid {real}, not as you (uid {uid}); \
                 give the pid of a process of yours"
            )));
        }
        // Looked at again after the checks: they concern the process of this start time.
        if !process::alive(pid) || procfs::start_time(pid) != Some(start) {
            return Err(gone());
        }
        Ok(Owner { pid, start })
    }

    /// Starts watching the owner (in the watchdog). A handle is taken first and the start time
    /// compared after, so the handle is the owner's; if the owner has exited by then (or its
    /// pid already names another process), it counts as gone at once.
    pub fn watch(self) -> Watch {
        let handle = Pidfd::open(self.pid)
            .ok()
            .flatten()
            .filter(|_| procfs::start_time(self.pid) == Some(self.start));
        Watch {
            owner: self,
            handle,
        }
    }

    /// True while the owner runs: the process of its pid has its start time and has not exited.
    /// For callers without a handle (`pgtmp run`, which asks once).
    pub fn runs(&self) -> bool {
        process::alive(self.pid) && procfs::start_time(self.pid) == Some(self.start)
    }
}

/// The watchdog's view of the owner.
pub struct Watch {
    owner: Owner,
    handle: Option<Pidfd>,
}

impl Watch {
    /// True once the owner has exited, however it ended (exit, crash, SIGKILL), zombie or not.
    pub fn gone(&self) -> bool {
        match &self.handle {
            None => true,
            // The start time too, for kernels without pidfds, where the handle holds a pid.
            Some(handle) => {
                handle.has_exited() || procfs::start_time(self.owner.pid) != Some(self.owner.start)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_owns_and_a_child_stops_owning_when_it_exits() {
        let me = Owner::check(Pid::this(), nix::unistd::getuid().as_raw()).unwrap();
        assert!(me.runs() && !me.watch().gone());

        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let owner = Owner::check(Pid::of(&child), nix::unistd::getuid().as_raw()).unwrap();
        let watch = owner.watch();
        assert!(!watch.gone());
        child.kill().unwrap();
        // Killed but not reaped (a zombie): gone already.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !watch.gone() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(watch.gone() && !owner.runs());
        assert!(owner.watch().gone());
        child.wait().unwrap();
        let err = Owner::check(owner.pid, nix::unistd::getuid().as_raw()).unwrap_err();
        assert_eq!(exit::code_for(&err), exit::USAGE);
        assert!(format!("{err:#}").contains("no such process"), "{err:#}");
    }

    #[test]
    fn another_accounts_process_is_refused() {
        let uid = nix::unistd::getuid().as_raw();
        let err = Owner::check(Pid::this(), uid + 1).unwrap_err();
        assert_eq!(exit::code_for(&err), exit::USAGE);
        assert!(format!("{err:#}").contains("not as you"), "{err:#}");
    }
}
