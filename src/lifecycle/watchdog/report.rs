//! The watchdog's one message to the waiting `pgtmp`: a versioned JSON line on a pipe.

use crate::os::process::Pid;
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use std::io::Write;

/// The version of [`Report`]'s format; a reader refuses any other.
const REPORT_VERSION: u32 = 1;

/// The watchdog's one message to the waiting `pgtmp`: one JSON line on a pipe.
#[derive(Serialize, Deserialize)]
pub(super) struct Report {
    version: u32,
    #[serde(flatten)]
    outcome: Outcome,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(tag = "status", rename_all = "lowercase")]
pub(super) enum Outcome {
    /// The server accepts connections; `trace` holds the watchdog's phases (`Clock::encode`).
    Ready {
        port: u16,
        server_pid: Pid,
        trace: String,
    },
    /// The start failed, and the directory has been disposed of.
    Error { message: String },
}

impl Report {
    /// Writes `outcome` on `to`; true if it was delivered.
    pub(super) fn send(to: &mut impl Write, outcome: Outcome) -> bool {
        let report = Report {
            version: REPORT_VERSION,
            outcome,
        };
        serde_json::to_string(&report).is_ok_and(|line| writeln!(to, "{line}").is_ok())
    }

    /// The outcome in `text`; None when there is none (the watchdog died without a word).
    pub(super) fn parse(text: &str) -> Result<Option<Outcome>> {
        let Ok(report) = serde_json::from_str::<Report>(text) else {
            return Ok(None);
        };
        if report.version != REPORT_VERSION {
            bail!(
                "the watchdog reported in version {} of its format, not {REPORT_VERSION}",
                report.version
            );
        }
        Ok(Some(report.outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_as_sent() {
        let mut line = Vec::new();
        let ready = Outcome::Ready {
            port: 5432,
            server_pid: Pid::from_raw(42),
            trace: "fork=10,spawn=20".to_string(),
        };
        assert!(Report::send(&mut line, ready));
        let text = String::from_utf8(line).unwrap();
        assert!(
            text.ends_with('\n') && text.contains("\"version\":1"),
            "{text}"
        );
        let read = Report::parse(&text).unwrap();
        assert_eq!(
            read,
            Some(Outcome::Ready {
                port: 5432,
                server_pid: Pid::from_raw(42),
                trace: "fork=10,spawn=20".to_string(),
            })
        );
    }

    #[test]
    fn no_report_is_a_lost_watchdog_and_another_version_is_refused() {
        assert_eq!(Report::parse("").unwrap(), None);
        assert!(Report::parse(r#"{"version":2,"status":"error","message":"x"}"#).is_err());
        let error = Report::parse(r#"{"version":1,"status":"error","message":"no"}"#);
        assert_eq!(
            error.unwrap(),
            Some(Outcome::Error {
                message: "no".to_string()
            })
        );
    }
}
