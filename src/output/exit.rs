//! Exit codes: 0 success, 1 runtime failure, 2 invalid command line.

use std::fmt;

/// Exit code for a command line that cannot be used as given (unknown option, malformed value).
pub const USAGE: u8 = 2;
/// Exit code for everything that went wrong while running.
pub const FAILURE: u8 = 1;

/// An error caused by how pgtmp was invoked rather than by the system it ran on.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Says on stderr, once, something the user should know that does not stop the command.
pub fn warn(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "pgtmp: warning: {message}");
}

/// Builds an `anyhow::Error` that exits with the usage code.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// The error of starting a process or thread (`what`: "cannot fork", "cannot run initdb"...),
/// naming the limit that was reached and how to raise it, when it was one: fork(2) and
/// pthread_create(3) fail with EAGAIN at RLIMIT_NPROC (`ulimit -u`), and starting a program
/// with EMFILE when the descriptors for its pipes are exhausted (`ulimit -n`).
pub fn spawn_error(err: std::io::Error, what: impl fmt::Display) -> anyhow::Error {
    let hint = match err.raw_os_error() {
        Some(nix::libc::EAGAIN) => " (too many processes: raise ulimit -u)",
        Some(nix::libc::EMFILE) => " (too many open files: raise ulimit -n)",
        Some(nix::libc::ENFILE) => " (the system ran out of open files)",
        Some(nix::libc::ENOMEM) => " (out of memory)",
        _ => "",
    };
    anyhow::Error::new(err).context(format!("{what}{hint}"))
}

/// An exit status to pass on without a message: what a command run by `pgtmp run` returned,
/// or a failure that has already been reported.
#[derive(Debug)]
pub struct Passed(pub u8);

impl fmt::Display for Passed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for Passed {}

/// The status to exit with silently, if `err` is one.
pub fn passed(err: &anyhow::Error) -> Option<u8> {
    err.downcast_ref::<Passed>().map(|passed| passed.0)
}

/// Prints `err` once as `pgtmp: error: ...` (unless it is a status to pass on silently) and
/// returns the code to exit with.
pub fn report(err: &anyhow::Error) -> u8 {
    if passed(err).is_none() {
        eprintln!("pgtmp: error: {err:#}");
    }
    code_for(err)
}

/// The exit code for an error: usage errors anywhere in the chain win.
pub fn code_for(err: &anyhow::Error) -> u8 {
    if let Some(code) = passed(err) {
        return code;
    }
    if err.chain().any(|cause| cause.is::<UsageError>()) {
        USAGE
    } else {
        FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn usage_errors_keep_their_code_under_context() {
        let err = Err::<(), _>(usage("bad flag"))
            .context("while starting")
            .unwrap_err();
        assert_eq!(code_for(&err), USAGE);
        assert_eq!(code_for(&anyhow::anyhow!("disk full")), FAILURE);
    }

    #[test]
    fn spawn_errors_name_the_limit_to_raise() {
        let again = std::io::Error::from_raw_os_error(nix::libc::EAGAIN);
        let text = format!("{:#}", spawn_error(again, "cannot fork"));
        assert!(
            text.starts_with("cannot fork (too many processes: raise ulimit -u): "),
            "{text}"
        );
        let missing = std::io::Error::from_raw_os_error(nix::libc::ENOENT);
        let text = format!("{:#}", spawn_error(missing, "cannot run psql"));
        assert!(text.starts_with("cannot run psql: "), "{text}");
        assert_eq!(
            code_for(&spawn_error(std::io::Error::other("x"), "y")),
            FAILURE
        );
    }
}
