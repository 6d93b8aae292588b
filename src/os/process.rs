//! Subprocesses and signals: a clean environment for PostgreSQL programs, errors that carry
//! the program's own words, liveness checks, and process handles (pidfds) that a signal can
//! reach only the process they were taken on.

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Output, Stdio};

pub use crate::os::pid::Pid;

/// A command for a PostgreSQL program, with the caller's PG* variables removed (PGPORT,
/// PGDATA, PGHOST, PGUSER... would otherwise change what initdb and postgres do) and a fixed
/// C locale so that their messages can be read back.
pub fn pg_command(program: &Path) -> Command {
    pg_command_without(program, std::env::vars_os().map(|(key, _)| key))
}

/// [`pg_command`] for a caller whose environment holds the variables `keys`.
fn pg_command_without(
    program: &Path,
    keys: impl IntoIterator<Item = std::ffi::OsString>,
) -> Command {
    let mut cmd = Command::new(program);
    for key in keys {
        let key = key.to_string_lossy();
        if key.starts_with("PG") && !key.starts_with("PGTMP_") {
            cmd.env_remove(&*key);
        }
    }
    cmd.env("LC_ALL", "C")
        .env_remove("LANG")
        .env_remove("LANGUAGE");
    cmd.stdin(Stdio::null());
    // A process group of its own: signals to the caller's group (Ctrl-C, a CI runner killing
    // the job) reach pgtmp but never a running initdb or postgres directly, which would leak
    // shared memory nobody recorded. Left alone, they end cleanly (a killed pgtmp closes the
    // pipes they read from), and the sweep removes what they made.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd
}

/// Runs a command to completion; on failure the error names `what` and ends with the tail of
/// what the command printed.
pub fn run_checked(cmd: &mut Command, what: &str) -> Result<Output> {
    let out = match cmd.output() {
        Ok(out) => out,
        Err(err) => {
            let program = cmd.get_program().to_string_lossy();
            return Err(crate::output::exit::spawn_error(
                err,
                format!("cannot run {what} ({program})"),
            ));
        }
    };
    if !out.status.success() {
        // stderr last: it says why (initdb's stdout ends with the step that failed).
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        bail!("{what} failed ({}): {}", out.status, tail(&text, 5));
    }
    Ok(out)
}

/// The last `n` non-empty lines of `text`, joined into one line.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// True while a process with this pid exists and has not exited. A zombie (exited, not yet
/// reaped) counts as gone: an orphan is reaped by init, which may take a while.
pub fn alive(pid: Pid) -> bool {
    pid.is_process()
        && !matches!(kill(pid.nix(), None), Err(nix::errno::Errno::ESRCH))
        && !is_zombie(pid)
}

fn is_zombie(pid: Pid) -> bool {
    crate::os::procfs::stat_fields(pid)
        .is_some_and(|fields| fields.first().is_some_and(|state| state == "Z"))
}

/// Sends a signal, treating "already gone" as success.
pub fn signal(pid: Pid, sig: Signal) -> Result<()> {
    match kill(pid.nix(), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(err) => bail!("cannot send {sig} to process {pid}: {err}"),
    }
}

/// A handle on one process: taken before the process is checked and used to signal it after,
/// so that the check and the signal concern the same process even if it exits and its pid is
/// reused in between (a Linux pidfd: a signal through it reaches that process or nobody).
/// Where the kernel has no pidfds (ENOSYS, or not Linux) it holds only the pid, and signals
/// go through kill(2).
#[derive(Debug)]
pub struct Pidfd {
    pid: Pid,
    fd: Option<OwnedFd>,
}

impl Pidfd {
    /// A handle on the process `pid`, or None when there is none.
    pub fn open(pid: Pid) -> Result<Option<Pidfd>> {
        if !pid.is_process() {
            return Ok(None);
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::FromRawFd;
            // SAFETY: pidfd_open(2) takes a pid and flags (0: a blocking handle) and passes no
            // memory; it returns a new descriptor or -1 with errno set.
            let ret = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid.as_raw(), 0) };
            if ret >= 0 {
                // SAFETY: the kernel has just returned this descriptor; it is open and nothing
                // else owns it, so the OwnedFd is its only owner and closes it once.
                let fd = unsafe { OwnedFd::from_raw_fd(ret as std::os::fd::RawFd) };
                return Ok(Some(Pidfd { pid, fd: Some(fd) }));
            }
            match Errno::last() {
                Errno::ESRCH => return Ok(None),
                Errno::ENOSYS => {}
                errno => {
                    return Err(errno)
                        .with_context(|| format!("cannot open a handle on process {pid}"));
                }
            }
        }
        Ok(alive(pid).then_some(Pidfd { pid, fd: None }))
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// True once the process of this handle has exited (a zombie included), looked at without
    /// waiting. A pidfd becomes readable then, and stays so; without one, the pid is asked,
    /// which a process that took the pid over since would answer for.
    pub fn has_exited(&self) -> bool {
        let Some(fd) = &self.fd else {
            return !alive(self.pid);
        };
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        // EINTR: not known yet; the caller looks again.
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
    }

    /// Sends `sig` to the process of this handle; one that has exited meanwhile is fine (and
    /// no other process that got its pid is reached).
    pub fn signal(&self, sig: Signal) -> Result<()> {
        let Some(fd) = &self.fd else {
            return signal(self.pid, sig);
        };
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: pidfd_send_signal(2) with a pidfd this handle owns and keeps open for
            // the call, a valid signal number, a null siginfo (the kernel then fills it in as
            // kill(2) would) and no flags; it writes no memory of ours.
            let ret = unsafe {
                nix::libc::syscall(
                    nix::libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    sig as nix::libc::c_int,
                    std::ptr::null::<nix::libc::siginfo_t>(),
                    0,
                )
            };
            match ret {
                0 => Ok(()),
                _ => match Errno::last() {
                    Errno::ESRCH => Ok(()),
                    errno => bail!("cannot send {sig} to process {}: {errno}", self.pid),
                },
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = fd;
            signal(self.pid, sig)
        }
    }
}

/// What a signal can be sent to: a process handle, or a plain pid where the pid cannot be
/// reused meanwhile (a child this process has not reaped yet).
pub trait Target {
    fn pid(&self) -> Pid;
    fn send(&self, sig: Signal) -> Result<()>;
}

impl Target for Pidfd {
    fn pid(&self) -> Pid {
        self.pid
    }

    fn send(&self, sig: Signal) -> Result<()> {
        self.signal(sig)
    }
}

/// A child's pid: the kernel keeps it for the child until its parent reaps it.
impl Target for Pid {
    fn pid(&self) -> Pid {
        *self
    }

    fn send(&self, sig: Signal) -> Result<()> {
        signal(*self, sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines_on_one_line() {
        assert_eq!(tail("a\n\nb\nc\n", 2), "b | c");
        assert_eq!(tail("", 3), "");
    }

    #[test]
    fn exited_children_are_not_alive() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = Pid::of(&child);
        assert!(alive(Pid::this()));
        // Not reaped until wait() below: a zombie, which must not count as alive.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while alive(pid) && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert!(!alive(pid));
        child.wait().unwrap();
    }

    #[test]
    fn a_handle_signals_its_process_and_nobody_after_it() {
        let mut child = Command::new("sleep").arg("10").spawn().unwrap();
        let pid = Pid::of(&child);
        let handle = Pidfd::open(pid).unwrap().expect("the child exists");
        assert_eq!(handle.pid(), pid);
        handle.signal(Signal::SIGKILL).unwrap();
        child.wait().unwrap();
        // Reaped: the handle names a process that is gone, which is not an error.
        handle.signal(Signal::SIGTERM).unwrap();
        assert!(Pidfd::open(pid).unwrap().is_none() || !alive(pid));
        assert!(Pidfd::open(Pid::from_raw(0)).unwrap().is_none());
    }

    #[test]
    fn failures_carry_output() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo boom >&2; exit 3"]);
        let err = run_checked(&mut cmd, "the test program").unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("the test program failed") && text.contains("boom"),
            "{text}"
        );
    }

    #[test]
    fn pg_variables_are_removed() {
        // The caller's environment is given, not set: other tests run on other threads.
        let keys = ["PGPORT", "PGHOST", "PGTMP_DIR", "PATH"].map(std::ffi::OsString::from);
        let cmd = pg_command_without(Path::new("/bin/true"), keys);
        let removed: Vec<_> = cmd
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        assert!(removed.contains(&"PGPORT".into()) && removed.contains(&"PGHOST".into()));
        assert!(!removed.contains(&"PGTMP_DIR".into()) && !removed.contains(&"PATH".into()));
    }
}
