//! Thin wrappers over the operating system: processes and signals, accounts and privilege
//! switches, detaching, signals, secrets, and test pauses.

pub mod account;
pub mod detach;
pub mod process;
pub mod secret;
pub mod signals;
pub mod testpause;
