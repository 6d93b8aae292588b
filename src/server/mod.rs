//! Driving PostgreSQL itself: finding the installations, initdb, the postgres command line and its
//! start and stop, the probe session, the server's shared memory and its TLS certificate, and TLS
//! for pgtmp's connections to servers elsewhere.

pub mod client;
pub mod cluster;
pub mod discover;
pub mod initdb;
pub mod shm;
pub mod tls;
pub mod tlsclient;
