//! What PGTMP_DIR holds prepared for later starts (the pools, the schema cache entries and
//! their ready copies), what that takes on disk, and its budget (PGTMP_DISK_MAX), which the
//! sweep keeps by evicting the least recently used cache entries and ready copies; running and
//! kept clusters are never part of it.

use crate::lifecycle::cache;
use crate::lifecycle::pool;
use crate::state::statedir::StateDir;
use crate::state::usage::Part;

/// The budget when PGTMP_DISK_MAX is unset: a full pool of 8 entries (some 280 MB) and a few
/// schema cache entries with their ready copies (about 230 MB each).
pub const DEFAULT_MAX: u64 = 2 << 30;

/// The prepared state of one state directory.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    pub pool: Part,
    pub cache: Part,
    pub ready: Part,
}

impl Prepared {
    /// Adds another state directory's (root's server accounts each have one).
    pub fn add(&mut self, other: &Prepared) {
        for (mine, theirs) in [
            (&mut self.pool, other.pool),
            (&mut self.cache, other.cache),
            (&mut self.ready, other.ready),
        ] {
            mine.bytes += theirs.bytes;
            mine.count += theirs.count;
        }
    }

    pub fn bytes(&self) -> u64 {
        self.pool.bytes + self.cache.bytes + self.ready.bytes
    }
}

pub fn measure(state: &StateDir) -> Prepared {
    let (cache, ready) = cache::measure(&state.path);
    Prepared {
        pool: pool::measure(&state.pools()),
        cache,
        ready,
    }
}

/// Bytes as people read them: 512K, 35M, 2.1G.
pub fn human(bytes: u64) -> String {
    const K: u64 = 1024;
    match bytes {
        b if b < K * K => format!("{}K", b.div_ceil(K)),
        b if b < K * K * K => format!("{}M", b.div_ceil(K * K)),
        b => format!("{:.1}G", b as f64 / (K * K * K) as f64),
    }
}

/// The prepared state in one line, e.g. `pool 280M (8 ready), schema cache 78M (1 entry),
/// ready copies 150M (2)`, and how it stands against `max`.
pub fn describe(prepared: &Prepared, max: u64) -> String {
    let plural = |n: usize, one: &str, many: &str| {
        if n == 1 {
            one.to_string()
        } else {
            many.to_string()
        }
    };
    format!(
        "pool {} ({} ready), schema cache {} ({} {}), ready copies {} ({}); {} of PGTMP_DISK_MAX {}",
        human(prepared.pool.bytes),
        prepared.pool.count,
        human(prepared.cache.bytes),
        prepared.cache.count,
        plural(prepared.cache.count, "entry", "entries"),
        human(prepared.ready.bytes),
        prepared.ready.count,
        human(prepared.bytes()),
        human(max)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(0), "0K");
        assert_eq!(human(1), "1K");
        assert_eq!(human(35 << 20), "35M");
        assert_eq!(human(DEFAULT_MAX), "2.0G");
    }
}
