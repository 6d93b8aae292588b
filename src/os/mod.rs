//! Thin wrappers over the operating system: processes and signals, accounts and privilege
//! switches, detaching, the signal self-pipe, secrets, and test pauses.

pub mod account;
pub mod detach;
pub mod process;
pub mod secret;
pub mod selfpipe;
pub mod testpause;
