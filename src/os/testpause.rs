//! Test-only fault injection: with `PGTMP_TEST_PAUSE=<phase>` pgtmp stops itself (SIGSTOP) when
//! a start reaches that phase, so the fault tests can kill it at an exact point and check that
//! nothing is left behind. Not for normal use: unset, it costs one environment lookup.
//!
//! Phases: `claimed` (a directory is claimed, not yet locked), `locked` (locked, watchdog not yet
//! forked), `spawned` (in the watchdog: postgres started, not yet ready), `ready` (in the
//! watchdog: ready, not yet reported), `reported` (the URL is known, not yet printed),
//! `initialized` (initdb has made a data directory, which is not yet complete).
//!
//! `PGTMP_TEST_FIRST_PORT=<port>` makes `-t` try that port first instead of a free one, so a
//! test can occupy it and check that a port stolen between choice and bind is retried.

use nix::sys::signal::{Signal, raise};

pub fn point(phase: &str) {
    if std::env::var_os("PGTMP_TEST_PAUSE").is_some_and(|p| p == phase) {
        let _ = raise(Signal::SIGSTOP);
    }
}

/// The first port `-t` tries, when a test chose it.
pub fn first_port() -> Option<u16> {
    std::env::var("PGTMP_TEST_FIRST_PORT").ok()?.parse().ok()
}
