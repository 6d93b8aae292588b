//! The PGTMP_* variables pgtmp reads itself rather than through clap (pool size, pre-started
//! servers, cache age, trace, background sweep): each is validated here, once, into plain values
//! that the commands pass down, so that the domain never reads the environment. A detached
//! background process (refill, sweep) gets the values validated before it forked.
//!
//! PGTMP_DIR is the state directory's own business (`state::statedir`); the test-only hooks
//! (PGTMP_TEST_*) stay beside the code they pause or steer.

use crate::lifecycle::{disk, pool, prestart, sweep};
use crate::output::exit;
use anyhow::Result;
use std::str::FromStr;
use std::time::Duration;

/// What a start needs from the environment, every value validated.
pub struct Settings {
    /// Ready entries kept per installation (PGTMP_POOL_SIZE).
    pub pool_size: usize,
    /// The most the pool may grow to after bursts: `pool_size` when PGTMP_POOL_SIZE is set,
    /// else as much as half of PGTMP_DISK_MAX holds, up to [`pool::GROWN_MAX`].
    pub pool_max: usize,
    /// Servers kept waiting and how long each waits (PGTMP_PRESTART, PGTMP_PRESTART_TIMEOUT).
    pub prestart: prestart::Settings,
    /// What the sweep keeps of the prepared state (PGTMP_CACHE_DAYS, PGTMP_DISK_MAX).
    pub policy: sweep::Policy,
    /// False when PGTMP_NO_SWEEP is set: no sweep after a start.
    pub background_sweep: bool,
}

/// How a variable's value is looked up: the process environment, or a given map in tests.
type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

fn from_process(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Settings {
    /// Every variable a start reads, validated; the first invalid one is the (usage) error.
    pub fn from_env() -> Result<Settings> {
        Self::from_lookup(&from_process)
    }

    /// What a sweep after a start applies, or None when no sweep is to follow.
    pub fn sweep_after(&self) -> Option<sweep::Policy> {
        self.background_sweep.then_some(self.policy)
    }

    fn from_lookup(lookup: Lookup) -> Result<Settings> {
        Ok(Settings {
            prestart: prestart_of(lookup)?,
            pool_size: pool_size_of(lookup)?,
            pool_max: pool_max_of(lookup)?,
            policy: policy_of(lookup)?,
            background_sweep: lookup("PGTMP_NO_SWEEP").is_none(),
        })
    }
}

/// PGTMP_POOL_SIZE, validated (for a command that needs only the pool).
pub fn pool_size() -> Result<usize> {
    pool_size_of(&from_process)
}

/// PGTMP_CACHE_DAYS and PGTMP_DISK_MAX, validated (for `pgtmp gc`).
pub fn sweep_policy() -> Result<sweep::Policy> {
    policy_of(&from_process)
}

/// PGTMP_DISK_MAX, validated (for `pgtmp list` and `doctor`).
pub fn disk_max() -> Result<u64> {
    disk_max_of(&from_process)
}

fn policy_of(lookup: Lookup) -> Result<sweep::Policy> {
    Ok(sweep::Policy {
        cache_age: cache_max_age_of(lookup)?,
        disk_max: disk_max_of(lookup)?,
    })
}

/// PGTMP_DISK_MAX: bytes, or with a suffix K, M, G or T (powers of 1024), e.g. 2G.
fn disk_max_of(lookup: Lookup) -> Result<u64> {
    let Some(text) = lookup("PGTMP_DISK_MAX").filter(|t| !t.is_empty()) else {
        return Ok(disk::DEFAULT_MAX);
    };
    let (digits, unit) = match text.char_indices().last() {
        Some((at, c)) if c.is_ascii_alphabetic() => (&text[..at], c.to_ascii_uppercase()),
        _ => (text.as_str(), 'B'),
    };
    let shift = match unit {
        'B' => Some(0),
        'K' => Some(10),
        'M' => Some(20),
        'G' => Some(30),
        'T' => Some(40),
        _ => None,
    };
    digits
        .parse::<u64>()
        .ok()
        .zip(shift)
        .and_then(|(n, shift)| n.checked_mul(1u64 << shift))
        .ok_or_else(|| {
            exit::usage(format!(
                "PGTMP_DISK_MAX={text} is not a size such as 500M or 2G; unset it for the default ({})",
                disk::human(disk::DEFAULT_MAX)
            ))
        })
}

/// True when PGTMP_TRACE is set to something other than empty or 0.
pub fn trace() -> bool {
    trace_of(&from_process)
}

/// One message per variable whose value is invalid, each naming it and ending in
/// "; unset ..." (the fix), for `pgtmp doctor`.
pub fn problems() -> Vec<String> {
    problems_of(&from_process)
}

fn problems_of(lookup: Lookup) -> Vec<String> {
    [
        pool_size_of(lookup).err(),
        prestart_of(lookup).err(),
        cache_max_age_of(lookup).err(),
        disk_max_of(lookup).err(),
    ]
    .into_iter()
    .flatten()
    .map(|err| format!("{err:#}"))
    .collect()
}

fn trace_of(lookup: Lookup) -> bool {
    lookup("PGTMP_TRACE").is_some_and(|v| !v.is_empty() && v != "0")
}

fn pool_size_of(lookup: Lookup) -> Result<usize> {
    let default = pool::DEFAULT_SIZE;
    number(lookup, "PGTMP_POOL_SIZE", default, |n| n <= pool::MAX_SIZE).map_err(|text| {
        exit::usage(format!(
            "PGTMP_POOL_SIZE={text} is not a number of entries from 0 to {}; unset it for the default ({default})",
            pool::MAX_SIZE
        ))
    })
}

fn pool_max_of(lookup: Lookup) -> Result<usize> {
    let size = pool_size_of(lookup)?;
    if lookup("PGTMP_POOL_SIZE").is_some_and(|v| !v.is_empty()) {
        return Ok(size);
    }
    let room = disk_max_of(lookup)? / 2 / pool::ENTRY_BYTES;
    Ok((room as usize).min(pool::GROWN_MAX).max(size))
}

/// PGTMP_PRESTART unset (or empty): a server pre-started while a series of starts goes on,
/// waiting [`prestart::SERIES_TTL`] seconds; a number: that many, waiting
/// [`prestart::DEFAULT_TTL`]; PGTMP_PRESTART_TIMEOUT sets the wait of either.
fn prestart_of(lookup: Lookup) -> Result<prestart::Settings> {
    let max = prestart::MAX;
    let (depth, default) = match lookup("PGTMP_PRESTART").as_deref() {
        None | Some("") => (prestart::Depth::Series, prestart::SERIES_TTL),
        Some(_) => {
            let count = number(lookup, "PGTMP_PRESTART", 0, |n| n <= max).map_err(|text| {
                exit::usage(format!(
                    "PGTMP_PRESTART={text} is not a number of servers from 0 to {max}; unset it to pre-start one while starts keep coming, or set 0 for none"
                ))
            })?;
            (prestart::Depth::Fixed(count), prestart::DEFAULT_TTL)
        }
    };
    let ttl = number(lookup, "PGTMP_PRESTART_TIMEOUT", default, |n| n > 0).map_err(|text| {
        exit::usage(format!(
            "PGTMP_PRESTART_TIMEOUT={text} is not a number of seconds above 0; unset it for the default ({default})"
        ))
    })?;
    Ok(prestart::Settings { depth, ttl })
}

fn cache_max_age_of(lookup: Lookup) -> Result<Duration> {
    let (default, max) = (sweep::DEFAULT_CACHE_DAYS, sweep::MAX_CACHE_DAYS);
    let days = number(lookup, "PGTMP_CACHE_DAYS", default, |d| d <= max).map_err(|text| {
        exit::usage(format!(
            "PGTMP_CACHE_DAYS={text} is not a whole number of days from 0 to {max}; \
             unset it for the default ({default})"
        ))
    })?;
    Ok(Duration::from_secs(days * 86_400))
}

/// The number `name` says, `default` when it is unset or empty, or the rejected text when it
/// is not a number `fits` accepts (each caller words its own message).
fn number<T: FromStr + Copy>(
    lookup: Lookup,
    name: &str,
    default: T,
    fits: impl Fn(T) -> bool,
) -> Result<T, String> {
    match lookup(name).as_deref() {
        None | Some("") => Ok(default),
        Some(text) => text
            .parse::<T>()
            .ok()
            .filter(|n| fits(*n))
            .ok_or_else(|| text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    fn usage_error_naming<T>(result: Result<T>, name: &str) {
        let Err(err) = result else {
            panic!("{name}: accepted");
        };
        assert_eq!(exit::code_for(&err), exit::USAGE, "{err}");
        assert!(err.to_string().starts_with(&format!("{name}=")), "{err}");
        assert!(err.to_string().contains("; unset it"), "{err}");
    }

    #[test]
    fn defaults_when_unset_or_empty() {
        for lookup in [
            with(&[]),
            with(&[("PGTMP_POOL_SIZE", ""), ("PGTMP_PRESTART", "")]),
        ] {
            let settings = Settings::from_lookup(&lookup).unwrap();
            assert_eq!(settings.pool_size, pool::DEFAULT_SIZE);
            assert_eq!(
                settings.pool_max,
                pool::GROWN_MAX,
                "2G holds 32 entries twice"
            );
            assert_eq!(settings.prestart.depth, prestart::Depth::Series);
            assert_eq!(settings.prestart.ttl, prestart::SERIES_TTL);
            assert_eq!(
                settings.policy.cache_age,
                Duration::from_secs(sweep::DEFAULT_CACHE_DAYS * 86_400)
            );
            assert_eq!(settings.policy.disk_max, disk::DEFAULT_MAX);
            assert!(settings.background_sweep);
            assert!(!trace_of(&lookup));
        }
    }

    #[test]
    fn valid_values_are_taken() {
        let lookup = with(&[
            ("PGTMP_POOL_SIZE", "0"),
            ("PGTMP_PRESTART", "4"),
            ("PGTMP_PRESTART_TIMEOUT", "5"),
            ("PGTMP_CACHE_DAYS", "0"),
            ("PGTMP_DISK_MAX", "500m"),
            ("PGTMP_NO_SWEEP", ""),
            ("PGTMP_TRACE", "1"),
        ]);
        let settings = Settings::from_lookup(&lookup).unwrap();
        assert_eq!(settings.pool_size, 0);
        assert_eq!(settings.pool_max, 0, "a size set is the size");
        let small = with(&[("PGTMP_DISK_MAX", "100M")]);
        assert_eq!(
            pool_max_of(&small).unwrap(),
            pool::DEFAULT_SIZE,
            "no room to grow"
        );
        assert_eq!(settings.prestart.depth, prestart::Depth::Fixed(4));
        assert_eq!(settings.prestart.ttl, 5);
        let off = prestart_of(&with(&[("PGTMP_PRESTART", "0")])).unwrap();
        assert_eq!(off.depth, prestart::Depth::Fixed(0));
        assert_eq!(off.ttl, prestart::DEFAULT_TTL);
        assert_eq!(settings.policy.cache_age, Duration::ZERO);
        assert_eq!(settings.policy.disk_max, 500 << 20);
        for (text, bytes) in [("0", 0), ("4096", 4096), ("2K", 2048), ("1T", 1 << 40)] {
            assert_eq!(
                disk_max_of(&with(&[("PGTMP_DISK_MAX", text)])).unwrap(),
                bytes
            );
        }
        assert!(!settings.background_sweep);
        assert!(trace_of(&lookup));
        assert!(!trace_of(&with(&[("PGTMP_TRACE", "0")])));
        assert!(problems_of(&lookup).is_empty());
    }

    #[test]
    fn invalid_values_are_usage_errors_naming_the_variable() {
        for bad in ["abc", "65", "-1"] {
            usage_error_naming(
                pool_size_of(&with(&[("PGTMP_POOL_SIZE", bad)])),
                "PGTMP_POOL_SIZE",
            );
        }
        for bad in ["lots", "-1", "100"] {
            usage_error_naming(
                prestart_of(&with(&[("PGTMP_PRESTART", bad)])),
                "PGTMP_PRESTART",
            );
        }
        for bad in ["0", "soon"] {
            let lookup = with(&[("PGTMP_PRESTART_TIMEOUT", bad)]);
            usage_error_naming(prestart_of(&lookup), "PGTMP_PRESTART_TIMEOUT");
        }
        for bad in ["abc", "-1", "1.5", "3651", " 7"] {
            let lookup = with(&[("PGTMP_CACHE_DAYS", bad)]);
            usage_error_naming(cache_max_age_of(&lookup), "PGTMP_CACHE_DAYS");
        }
        for bad in ["abc", "-1", "2X", "G", "1.5G", "99999999999T"] {
            let lookup = with(&[("PGTMP_DISK_MAX", bad)]);
            usage_error_naming(disk_max_of(&lookup), "PGTMP_DISK_MAX");
        }
    }

    #[test]
    fn doctor_hears_of_every_invalid_variable() {
        let lookup = with(&[
            ("PGTMP_POOL_SIZE", "lots"),
            ("PGTMP_PRESTART_TIMEOUT", "0"),
            ("PGTMP_CACHE_DAYS", "abc"),
        ]);
        let problems = problems_of(&lookup);
        assert_eq!(problems.len(), 3, "{problems:?}");
        for (problem, name) in problems.iter().zip([
            "PGTMP_POOL_SIZE",
            "PGTMP_PRESTART_TIMEOUT",
            "PGTMP_CACHE_DAYS",
        ]) {
            assert!(
                problem.starts_with(name) && problem.contains("; unset "),
                "{problem}"
            );
        }
        assert!(Settings::from_lookup(&lookup).is_err());
    }
}
