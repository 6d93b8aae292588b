//! pgtmp: private, throwaway PostgreSQL clusters in milliseconds.
//!
//! The crate is layered; each layer only uses the ones below it:
//!
//! ```text
//! cli        the command line and PGTMP_* settings
//! cmd        one thin file per subcommand
//! serve      databases over HTTP (faitout's and IntegreSQL's APIs)
//! lifecycle  watchdog, pre-started servers, lifeline
//! server     PostgreSQL programs     state  on-disk state (safefs)     testdata  -f, clones
//! output     formats, URLs, exit     os     processes, accounts, signals
//! ```
//!
//! `run` is the only entry point the binary uses; `cli` is public for the generated manual.

pub mod cli;
mod cmd;
mod lifecycle;
mod os;
mod output;
mod serve;
mod server;
mod state;
mod testdata;

use output::{exit, trace};
use std::process::ExitCode;

/// Parses the command line, runs the command, prints any error once and returns the exit code.
pub fn run() -> ExitCode {
    os::detach::note_inherited_fds();
    trace::begin(cli::settings::trace());
    let cli = match cli::parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match cmd::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => ExitCode::from(exit::report(&err)),
    }
}
