//! The black-box suite, one module per area, in one test binary: cargo links it once, and the
//! harness runs all of its tests side by side instead of one binary after another (most of
//! them wait on servers, timeouts and polls rather than compute). Run a part of it with
//! `cargo test --test suite MODULE::` (e.g. `faults::`), one test with its full name
//! (`cargo test --test suite -- --exact watchdog::idle_cluster_goes_away::as_self`).
//!
//! Tests share this process: none may change its environment, working directory or signal
//! dispositions, or count what runs on the machine as if it were alone (see `common`).

#[macro_use]
mod common;

mod attack_statedir;
mod attack_stop;
mod bad_input;
mod bounded_input;
mod callers;
mod clients;
mod clock;
mod concurrency;
mod disk;
mod faults;
mod follow;
mod format;
mod generated;
mod layers;
mod list;
mod pgtmp_compat;
mod pool;
mod prestart;
mod progress;
mod run;
mod run_as;
mod serve;
mod shm_leaks;
mod start;
mod stop;
mod tcp;
mod testdata;
mod versions;
mod watchdog;
