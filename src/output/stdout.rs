//! Writing a command's result to stdout: all of it or an error, never a panic on a closed pipe.

use anyhow::{Context, Result};
use std::io::Write;

/// Writes `text` to stdout and flushes it. A closed or full stdout (`pgtmp doctor | head -1`)
/// is an error naming it, not a panic as `println!` would make it.
pub fn print(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot print to stdout (closed?)")
}
