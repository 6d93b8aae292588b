//! The timing trace (PGTMP_TRACE=1): one stderr line per phase of a run, so anyone can see
//! where the time goes.
//!
//! ```text
//! pgtmp: trace: discover      0.4 ms  (total    0.4 ms)
//! ```
//!
//! Detached processes (the watchdog) cannot write to the caller's stderr; they measure their
//! phases with a [`Clock`] and send them back as text, which [`replay`] prints.

use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Trace {
    origin: Instant,
    last: Instant,
}

static TRACE: Mutex<Option<Trace>> = Mutex::new(None);

/// Starts the clock; phases are measured from here. Does nothing unless `enabled` (PGTMP_TRACE,
/// read by the caller).
pub fn begin(enabled: bool) {
    if enabled {
        let now = Instant::now();
        if let Ok(mut trace) = TRACE.lock() {
            *trace = Some(Trace {
                origin: now,
                last: now,
            });
        }
    }
}

/// Ends phase `name`: prints how long it took since the previous phase ended.
pub fn phase(name: &str) {
    let now = Instant::now();
    if let Ok(mut guard) = TRACE.lock()
        && let Some(trace) = guard.as_mut()
    {
        let took = now - trace.last;
        trace.last = now;
        eprintln!("{}", line(name, took, now - trace.origin));
    }
}

/// Prints phases measured elsewhere (see [`Clock::encode`]) as if they had happened here, one
/// after the other, ending now.
pub fn replay(encoded: &str) {
    let now = Instant::now();
    if let Ok(mut guard) = TRACE.lock()
        && let Some(trace) = guard.as_mut()
    {
        let mut at = trace.last;
        for (name, took) in decode(encoded) {
            at += took;
            eprintln!("{}", line(&name, took, at - trace.origin));
        }
        // Whatever the remote phases do not account for (reading the report) is the caller's.
        trace.last = at.min(now);
    }
}

fn line(name: &str, took: Duration, total: Duration) -> String {
    format!(
        "pgtmp: trace: {name:<12} {:7.1} ms  (total {:7.1} ms)",
        took.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3
    )
}

/// Phases measured in a process that cannot print them.
pub struct Clock {
    last: Instant,
    phases: Vec<(String, Duration)>,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            last: Instant::now(),
            phases: Vec::new(),
        }
    }

    pub fn phase(&mut self, name: &str) {
        let now = Instant::now();
        self.phases.push((name.to_string(), now - self.last));
        self.last = now;
    }

    /// `name=micros,name=micros`: no spaces, so it travels as one word.
    pub fn encode(&self) -> String {
        self.phases
            .iter()
            .map(|(name, took)| format!("{name}={}", took.as_micros()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn decode(encoded: &str) -> Vec<(String, Duration)> {
    encoded
        .split(',')
        .filter_map(|item| {
            let (name, micros) = item.split_once('=')?;
            Some((
                name.to_string(),
                Duration::from_micros(micros.parse().ok()?),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_round_trips() {
        let mut clock = Clock::start();
        clock.phase("spawn");
        clock.phase("ready");
        let decoded = decode(&clock.encode());
        let names: Vec<&str> = decoded.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["spawn", "ready"]);
    }

    #[test]
    fn malformed_items_are_skipped() {
        let decoded = decode("a=5,b,c=x,d=7");
        assert_eq!(
            decoded,
            [
                ("a".to_string(), Duration::from_micros(5)),
                ("d".to_string(), Duration::from_micros(7))
            ]
        );
        assert!(decode("").is_empty());
    }

    #[test]
    fn lines_name_the_phase_and_both_times() {
        let text = line(
            "claim",
            Duration::from_micros(1500),
            Duration::from_millis(20),
        );
        assert!(text.starts_with("pgtmp: trace: claim"), "{text}");
        assert!(
            text.contains("1.5 ms") && text.contains("20.0 ms"),
            "{text}"
        );
    }
}
