//! The files by which a start claims a pre-started server and that server's watchdog learns
//! of it (see prestart.rs for the whole protocol): shared by both sides, so that neither needs
//! the other's module.

use crate::lifecycle::owner::Owner;
use crate::os::process::Pid;
use crate::state::instance::Instance;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::PathBuf;

const CLAIM_FILE: &str = "claim";
/// A waiting TCP cluster's password (0600), removed by the claim.
pub const PASSWORD_FILE: &str = "password";
const WAITING_MARK: &str = "waiting";

/// True for a pre-started server nobody has claimed yet.
pub fn is_waiting(instance: &Instance) -> bool {
    instance.dir.join(WAITING_MARK).exists()
}

/// The version of the claim file's format. A claim only passes between a start and a
/// watchdog of the same pool, and a pool is never shared with another format (the pool's
/// `ENTRY_FORMAT` changed with this one), so no other version is ever read.
const CLAIM_VERSION: u32 = 2;

/// What a start asks of the server it claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub timeout: u64,
    pub keep: bool,
    /// `--owner-pid`: the process whose life the cluster follows.
    pub owner: Option<Owner>,
}

/// The claim file as written: JSON, with the format's version.
#[derive(Serialize, Deserialize)]
struct ClaimFile {
    version: u32,
    timeout: u64,
    keep: bool,
    owner_pid: Option<Pid>,
    owner_start: Option<u64>,
}

impl Claim {
    fn render(&self) -> Result<String> {
        let file = ClaimFile {
            version: CLAIM_VERSION,
            timeout: self.timeout,
            keep: self.keep,
            owner_pid: self.owner.map(|o| o.pid),
            owner_start: self.owner.map(|o| o.start),
        };
        serde_json::to_string(&file).context("cannot render the claim")
    }

    fn parse(text: &str) -> Option<Claim> {
        let file: ClaimFile = serde_json::from_str(text).ok()?;
        (file.version == CLAIM_VERSION).then_some(Claim {
            timeout: file.timeout,
            keep: file.keep,
            owner: match (file.owner_pid, file.owner_start) {
                (Some(pid), Some(start)) => Some(Owner { pid, start }),
                _ => None,
            },
        })
    }

    /// The claim a start left for the watchdog of `instance`, if there is one.
    pub fn read(instance: &Instance) -> Option<Claim> {
        crate::state::safefs::read_text_at(&instance.dir.join(CLAIM_FILE))
            .ok()
            .flatten()
            .and_then(|text| Claim::parse(&text))
    }

    pub fn write(&self, instance: &Instance) -> Result<()> {
        instance.write_file(&instance.dir.join(CLAIM_FILE), self.render()?.as_bytes())
    }
}

/// Where the watchdog of a waiting server finds out whether it was claimed.
#[derive(Debug, Clone)]
pub struct Waiting {
    /// `waiting.<mode>.<name>`: present while unclaimed.
    pub token: PathBuf,
    /// `claimed.<name>`: what a claim renames the token to.
    pub claimed: PathBuf,
}

impl Waiting {
    /// Announces the server as ready to be claimed; `password` is a TCP cluster's.
    pub fn publish(&self, instance: &Instance, password: Option<&str>) -> Result<()> {
        if let Some(password) = password {
            instance.write_file(&instance.dir.join(PASSWORD_FILE), password.as_bytes())?;
        }
        let mark = instance.dir.join(WAITING_MARK);
        fs::write(&mark, "").with_context(|| format!("cannot write {}", mark.display()))?;
        fs::File::create_new(&self.token)
            .with_context(|| format!("cannot create {}", self.token.display()))?;
        Ok(())
    }

    /// Gives up waiting: true if the server is now the watchdog's to stop, false if a start
    /// claimed it first.
    pub fn withdraw(&self) -> bool {
        match fs::remove_file(&self.token) {
            Ok(()) => true,
            Err(err) => err.kind() != std::io::ErrorKind::NotFound,
        }
    }

    /// The claim, once a start has made it; removes its traces.
    pub fn take_claim(&self, instance: &Instance) -> Option<Claim> {
        if self.token.exists() {
            return None;
        }
        let claim = Claim::read(instance)?;
        let _ = fs::remove_file(instance.dir.join(CLAIM_FILE));
        let _ = fs::remove_file(instance.dir.join(WAITING_MARK));
        let _ = fs::remove_file(&self.claimed);
        Some(claim)
    }

    /// Removes whatever is left of the announcement (the server stops).
    pub fn retract(&self, instance: &Instance) {
        let _ = fs::remove_file(&self.token);
        let _ = fs::remove_file(&self.claimed);
        let _ = fs::remove_file(instance.dir.join(PASSWORD_FILE));
        let _ = fs::remove_file(instance.dir.join(WAITING_MARK));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_round_trip() {
        let claim = Claim {
            timeout: 7,
            keep: true,
            owner: Some(Owner {
                pid: Pid::from_raw(42),
                start: 1234,
            }),
        };
        let text = claim.render().unwrap();
        assert_eq!(Claim::parse(&text), Some(claim));
        let without = Claim {
            owner: None,
            ..claim
        };
        assert_eq!(Claim::parse(&without.render().unwrap()), Some(without));
        assert_eq!(
            Claim::parse(&text.replace("\"version\":2", "\"version\":1")),
            None
        );
        assert_eq!(Claim::parse("timeout=7\nkeep=1\n"), None);
        assert_eq!(
            Claim::parse("{\"version\":2,\"timeout\":-1,\"keep\":true}"),
            None
        );
    }
}
