//! Test data: `-f` files and `--now` loaded into a cluster (the clock frozen, and movable, for
//! the whole cluster), the stock of ready clones, and the URLs of clones and schemas.

pub mod clock;
pub mod dburl;
pub mod files;
pub mod stock;
