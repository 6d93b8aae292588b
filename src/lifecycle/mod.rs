//! The life of a cluster: where its directory comes from (the pool, the schema cache), the
//! detached watchdog that supervises and stops its server, servers pre-started for the next
//! claim, the lifeline that ties a cluster to `pgtmp run`, the owner process of `--owner-pid`, and the sweep that removes what
//! dead runs left and keeps the prepared state within its disk budget.

pub mod cache;
pub mod claim;
pub mod directory;
pub mod disk;
pub mod kept;
pub mod lifeline;
pub mod owner;
pub mod pool;
pub mod prestart;
pub mod session;
pub mod start;
pub mod stopping;
pub mod sweep;
mod tcp_ready;
pub mod watchdog;
