//! pgtmp: private, throwaway PostgreSQL clusters in milliseconds.
//!
//! The crate is organised by what each module owns; `run` is the only entry point the binary uses.

pub mod account;
pub mod cache;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod clusters;
pub mod cmd;
pub mod copytree;
pub mod dburl;
pub mod detach;
pub mod discover;
pub mod exit;
pub mod format;
pub mod initdb;
pub mod instance;
pub mod lifeline;
pub mod ownership;
pub mod pool;
pub mod prestart;
pub mod process;
pub mod progress;
pub mod safefs;
pub mod secret;
pub mod selfpipe;
pub mod shm;
pub mod statedir;
pub mod stock;
pub mod sweep;
pub mod testdata;
pub mod testpause;
pub mod trace;
pub mod url;
pub mod watchdog;

use std::process::ExitCode;

/// Parses the command line, runs the command, prints any error once and returns the exit code.
pub fn run() -> ExitCode {
    detach::note_inherited_fds();
    trace::begin();
    let cli = match cli::parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match cmd::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => ExitCode::from(exit::report(&err)),
    }
}
