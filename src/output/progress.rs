//! Progress on a terminal: one line on stderr saying what a slow step is doing, erased when
//! it ends. Nothing at all when stderr is not a terminal, so that scripts see pgtmp's contract
//! (one line on stdout, nothing on stderr) unchanged.
//!
//! ```ignore
//! let _step = progress::step("initializing a data directory (first run)");
//! slow_work()?;   // the line disappears when `_step` is dropped, on success or error
//! ```

use std::io::{IsTerminal, Write};

/// A step being shown; dropping it erases the line.
#[must_use = "the line is erased when the step is dropped"]
pub struct Step {
    shown: bool,
}

/// Shows `what` on stderr if it is a terminal.
pub fn step(what: &str) -> Step {
    step_on(std::io::stderr().is_terminal(), what)
}

fn step_on(terminal: bool, what: &str) -> Step {
    if terminal {
        let mut err = std::io::stderr().lock();
        // No newline: the line is overwritten in place when the step ends.
        let _ = write!(err, "pgtmp: {what}...");
        let _ = err.flush();
    }
    Step { shown: terminal }
}

impl Drop for Step {
    fn drop(&mut self) {
        if self.shown {
            let mut err = std::io::stderr().lock();
            // Back to the start of the line, and clear it (ECMA-48 EL).
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_shown_off_a_terminal() {
        assert!(!step_on(false, "x").shown);
    }
}
