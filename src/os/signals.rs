//! Signals for processes that sleep in poll(2): each caught signal becomes two bytes on a pipe
//! (its number, and whether the kernel sent it), so a loop wakes at once and handles it outside
//! the handler. The handlers are signal-hook's (its registry crate, which alone passes an action
//! the siginfo that tells the terminal from a process); the only action run in one is a write(2).
//!
//! signal-hook keeps its handlers in process-wide state that a fork copies and that unregistering
//! does not undo (the handler stays installed, doing nothing). A process that forks children
//! which must see the default dispositions therefore forks first and catches after, with the
//! signals held meanwhile ([`Held`]) so none is lost: see `pgtmp run`.

use anyhow::{Context, Result};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, sigaction};
use signal_hook_registry::SigId;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

/// si_code of signals the kernel generates itself, e.g. the terminal's Ctrl-C and hang-up.
const SI_KERNEL: i32 = 0x80;

/// One signal that arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrived {
    pub signal: i32,
    /// Sent by the kernel (the terminal's Ctrl-C or hang-up), not by a process's kill(2).
    pub from_kernel: bool,
}

/// The caught signals' pipe. Dropping it unregisters the actions; the signals stay caught and
/// do nothing (signal-hook does not restore a disposition).
pub struct SignalPipe {
    read: OwnedFd,
    ids: Vec<SigId>,
}

impl SignalPipe {
    /// Catches `signals` (with SA_RESTART, as signal-hook installs every handler), writing each
    /// to the pipe.
    pub fn catch(signals: &[Signal]) -> Result<SignalPipe> {
        let (read, write) = pipe()?;
        // The actions own the write end: it is closed only once no handler can use it.
        let write = Arc::new(write);
        let mut pipe = SignalPipe {
            read,
            ids: Vec::new(),
        };
        for &signal in signals {
            let write = Arc::clone(&write);
            let action = move |info: &nix::libc::siginfo_t| {
                let bytes = [info.si_signo as u8, u8::from(info.si_code == SI_KERNEL)];
                // SAFETY: write(2) is async-signal-safe, and the descriptor stays open as long
                // as this action exists. It is non-blocking and the two bytes are below
                // PIPE_BUF, so a full pipe refuses them whole (one pending wake-up is enough)
                // and the pairs never interleave.
                unsafe { nix::libc::write(write.as_raw_fd(), bytes.as_ptr().cast(), 2) };
            };
            // SAFETY: the action only calls write(2), which is async-signal-safe; it allocates
            // nothing, takes no lock and does not panic.
            let id = unsafe { signal_hook_registry::register_sigaction(signal as i32, action) }
                .with_context(|| format!("cannot handle {signal}"))?;
            pipe.ids.push(id);
        }
        Ok(pipe)
    }

    /// Sleeps up to `limit` or until a signal arrives; true if one did (see [`Self::take`]).
    pub fn wait(&self, limit: Duration) -> bool {
        let timeout = PollTimeout::try_from(limit).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.read.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, timeout), Ok(n) if n > 0)
    }

    /// The signals that arrived since the last call, oldest first; does not block.
    pub fn take(&self) -> Vec<Arrived> {
        let mut found = Vec::new();
        // Even, so a read never splits a pair (the pipe only ever holds whole pairs).
        let mut buf = [0u8; 64];
        while let Ok(n) = nix::unistd::read(&self.read, &mut buf) {
            if n == 0 {
                break;
            }
            for pair in buf[..n].chunks(2) {
                found.push(Arrived {
                    signal: i32::from(pair[0]),
                    from_kernel: pair.get(1) == Some(&1),
                });
            }
        }
        found
    }
}

impl Drop for SignalPipe {
    fn drop(&mut self) {
        for &id in &self.ids {
            signal_hook_registry::unregister(id);
        }
    }
}

/// Ignores `signal` (SIG_IGN, which, unlike a caught signal, the programs this process starts
/// inherit).
pub fn ignore(signal: Signal) -> Result<()> {
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: ignoring a signal installs no code.
    unsafe { sigaction(signal, &ignore) }.with_context(|| format!("cannot ignore {signal}"))?;
    Ok(())
}

/// Signals held back (blocked) until this is dropped: they stay pending, and are delivered then
/// to whatever disposition is in force.
pub struct Held {
    held: SigSet,
    previous: SigSet,
}

impl Held {
    pub fn new(signals: &[Signal]) -> Result<Held> {
        let mut set = SigSet::empty();
        for &signal in signals {
            set.add(signal);
        }
        let mut previous = SigSet::empty();
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut previous))
            .context("cannot block signals")?;
        Ok(Held {
            held: set,
            previous,
        })
    }

    /// Takes one of the held signals that is pending or arrives within `limit`, if any.
    pub fn wait(&self, limit: Duration) -> Option<Arrived> {
        let timeout = nix::libc::timespec {
            tv_sec: limit.as_secs().try_into().unwrap_or(nix::libc::time_t::MAX),
            tv_nsec: limit.subsec_nanos().into(),
        };
        let mut info = std::mem::MaybeUninit::<nix::libc::siginfo_t>::zeroed();
        // SAFETY: the set, the siginfo buffer and the timeout are valid for the whole call;
        // sigtimedwait only takes a signal this thread blocks.
        let signal =
            unsafe { nix::libc::sigtimedwait(self.held.as_ref(), info.as_mut_ptr(), &timeout) };
        if signal < 0 {
            return None;
        }
        // SAFETY: zero-initialised, and filled in by sigtimedwait, which returned a signal.
        let info = unsafe { info.assume_init() };
        Some(Arrived {
            signal,
            from_kernel: info.si_code == SI_KERNEL,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Cannot fail: the set is valid and so is SIG_SETMASK.
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&self.previous), None);
    }
}

/// A pipe whose ends are non-blocking (a handler never blocks on a full pipe; draining it stops
/// when it is empty) and close-on-exec (no program pgtmp starts inherits them).
fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let flags = nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC;
    nix::unistd::pipe2(flags).context("cannot create the signal pipe")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_an_empty_pipe_does_not_block() {
        let (read, _write) = pipe().unwrap();
        let mut buf = [0u8; 1];
        let err = nix::unistd::read(&read, &mut buf).unwrap_err();
        assert_eq!(err, nix::errno::Errno::EAGAIN);
    }

    #[test]
    fn a_signal_from_a_process_arrives_in_order_and_not_from_the_kernel() {
        // SIGWINCH: nothing else in the test binary sends or catches it, and its default is
        // to do nothing, so the other tests' threads cannot be disturbed.
        let pipe = SignalPipe::catch(&[Signal::SIGWINCH]).unwrap();
        nix::sys::signal::kill(nix::unistd::getpid(), Signal::SIGWINCH).unwrap();
        assert!(pipe.wait(Duration::from_secs(10)));
        let arrived = pipe.take();
        assert_eq!(
            arrived.first(),
            Some(&Arrived {
                signal: Signal::SIGWINCH as i32,
                from_kernel: false
            })
        );
        assert!(pipe.take().is_empty());
    }
}
