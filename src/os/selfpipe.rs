//! The self-pipe trick's pipe: a signal handler writes a byte to it, and a process sleeping in
//! poll(2) on its read end wakes at once.

use anyhow::{Context, Result};
use std::os::fd::{AsFd, OwnedFd};

/// A pipe whose ends are non-blocking (a handler never blocks on a full pipe; draining it
/// stops when it is empty) and close-on-exec (no program pgtmp starts inherits them).
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe().context("cannot create the signal pipe")?;
    for fd in [&read, &write] {
        nix::fcntl::fcntl(
            fd.as_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .context("cannot make the signal pipe non-blocking")?;
        nix::fcntl::fcntl(
            fd.as_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .context("cannot mark the signal pipe close-on-exec")?;
    }
    Ok((read, write))
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
}
