//! The life of a cluster: where its directory comes from (the pool, the schema cache), the
//! detached watchdog that supervises and stops its server, servers pre-started for the next
//! claim, the lifeline that ties a cluster to `pgtmp run`, and the sweep that removes what
//! dead runs left.

pub mod cache;
pub mod claim;
pub mod directory;
pub mod lifeline;
pub mod pool;
pub mod prestart;
pub mod session;
pub mod start;
pub mod sweep;
pub mod watchdog;
