//! Driving PostgreSQL itself: finding the installations, initdb, the postgres command line and its
//! start and stop, the probe session, and the server's shared memory.

pub mod client;
pub mod cluster;
pub mod discover;
pub mod initdb;
pub mod shm;
