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
}
