//! The lifeline: a pipe from `pgtmp run` to the watchdog of its cluster, so that the cluster
//! stops as soon as `pgtmp run` is gone, however it went (SIGKILL included), and never stops
//! for being idle while the command runs.
//!
//! The run process holds the write end, the watchdog the read end. The watchdog reads end of
//! file once every copy of the write end is closed, i.e. when `pgtmp run` has exited; one byte
//! before that (`release`, for `run -k`) hands the cluster over to its ordinary idle timeout.

use anyhow::{Context, Result};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::io::{PipeReader, PipeWriter, Read, Write};
use std::os::fd::{AsFd, OwnedFd};

/// The run side: holding it keeps the cluster alive.
pub struct Holder {
    write: PipeWriter,
}

/// Makes a lifeline; the read end goes to the watchdog (`watchdog::Plan::lifeline`). Both ends
/// are close-on-exec, so neither the command nor the server inherits them.
pub fn pair() -> Result<(Holder, OwnedFd)> {
    let (read, write) = std::io::pipe().context("cannot create the lifeline pipe")?;
    Ok((Holder { write }, OwnedFd::from(read)))
}

impl Holder {
    /// The write end, to keep out of detached children (see `detach::keep_from_detached`).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.write.as_fd()
    }

    /// Lets the cluster outlive this process: it then stops at its idle timeout.
    pub fn release(mut self) {
        let _ = self.write.write_all(b"k");
    }
}

/// What the watchdog finds on its end.
#[derive(Debug, PartialEq, Eq)]
pub enum Pull {
    /// `pgtmp run` is still there.
    Held,
    /// `pgtmp run -k` let go: the idle timeout applies from now on.
    Released,
    /// `pgtmp run` is gone: stop now.
    Cut,
}

/// The watchdog side.
pub struct Line {
    read: PipeReader,
}

impl Line {
    pub fn new(fd: OwnedFd) -> Line {
        Line {
            read: PipeReader::from(fd),
        }
    }

    /// Looks without waiting.
    pub fn pull(&mut self) -> Pull {
        let mut fds = [PollFd::new(self.read.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(0) => return Pull::Held,
            Ok(_) => {}
            // EINTR: look again at the next tick.
            Err(_) => return Pull::Held,
        }
        // Readable: a byte or end of file is there, so this read does not block.
        let mut byte = [0u8; 1];
        match self.read.read(&mut byte) {
            Ok(1) => Pull::Released,
            _ => Pull::Cut,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_released_and_cut() {
        let (holder, fd) = pair().unwrap();
        let mut line = Line::new(fd);
        assert_eq!(line.pull(), Pull::Held);
        holder.release();
        assert_eq!(line.pull(), Pull::Released);

        let (holder, fd) = pair().unwrap();
        let mut line = Line::new(fd);
        drop(holder);
        assert_eq!(line.pull(), Pull::Cut);
    }
}
