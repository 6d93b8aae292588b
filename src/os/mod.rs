//! Thin wrappers over the operating system: processes, pidfds and /proc, accounts and
//! privilege switches, forking and detaching, signals, secrets, and test pauses.

pub mod account;
pub mod detach;
pub mod pid;
pub mod process;
pub mod procfs;
pub mod secret;
pub mod signals;
pub mod testpause;
