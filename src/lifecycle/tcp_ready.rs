//! Pool entries (and ready copies of schema cache entries) made ready for TCP: once `-t`
//! starts are seen, refills give each new one a password of its own before any start claims
//! it, so that a `-t` start prints its URL as soon as the server is up, as a socket start
//! does, instead of first opening a session to set the password (a backend start, ~10 ms of
//! every `-t` start).
//!
//! ```text
//! PGTMP_DIR/pool/<key>/ (or PGTMP_DIR/cache/<key>/, for its ready copies)
//!   tcp                       a -t start came within the hour (its change time): refills
//!                             prepare passwords
//!   ready.<name>/tcp.password the entry's password (0600); the role has its verifier already
//! ```
//!
//! Every entry's password is drawn afresh, as a start draws one: no two clusters share one.
//! A start takes the file whatever its mode (a socket start too, so no password lingers in
//! its directory); only a `-t` start uses it.

use crate::os::secret;
use crate::server::discover::Installation;
use crate::server::initdb;
use crate::state::instance::Instance;
use crate::state::safefs::Dir;
use anyhow::Result;
use std::path::Path;
use std::time::Duration;

/// The pool's mark of TCP demand.
const DEMAND: &str = "tcp";
/// An entry's prepared password.
const PASSWORD: &str = "tcp.password";
/// How long one `-t` start keeps refills preparing passwords.
const WANTED_FOR: Duration = Duration::from_secs(3600);
/// A mark younger than this is not renewed: starts in a row write it once.
const RENEW_AFTER: Duration = Duration::from_secs(300);

/// True when a `-t` start came to the pool in `pool_dir` within the hour.
pub fn wanted(pool_dir: &Path) -> bool {
    Dir::open(pool_dir)
        .ok()
        .and_then(|dir| dir.age_of(DEMAND))
        .is_some_and(|age| age <= WANTED_FOR.as_secs())
}

/// Marks TCP demand in the pool (called by every `-t` start from it); best effort: without
/// the mark, the next `-t` start merely sets its password itself.
pub fn record_demand(pool_dir: &Path) {
    let Ok(dir) = Dir::open(pool_dir) else {
        return;
    };
    if dir
        .age_of(DEMAND)
        .is_none_or(|age| age > RENEW_AFTER.as_secs())
    {
        let _ = dir.write_atomic(DEMAND, b"");
    }
}

/// Gives the entry being made in `instance` a fresh password: its verifier into the role
/// `user`, the password into the entry's file.
pub fn prepare(install: &Installation, instance: &Instance, user: &str) -> Result<()> {
    let password = secret::password()?;
    let verifier = secret::scram_verifier(&password);
    initdb::set_password_offline(install, instance, user, &verifier)?;
    instance.write_file(&instance.dir.join(PASSWORD), password.as_bytes())
}

/// True when the entry at `entry` has a password prepared.
pub fn has_password(entry: &Path) -> bool {
    Dir::open(entry).is_ok_and(|dir| dir.has_file(PASSWORD))
}

/// The password prepared for a claimed entry, now the start's directory, and removed from it;
/// None when there is none (or it is not one pgtmp wrote: the start then sets its own).
pub fn take(instance: &Instance) -> Option<String> {
    let dir = instance.open().ok()?;
    if !dir.has_file(PASSWORD) {
        return None;
    }
    let text = dir.read_text(PASSWORD);
    // Removed whatever the read said; a password that stays in the file is not used (the
    // start sets one of its own, so the file's is never the live one).
    let removed = dir.remove_file(PASSWORD).is_ok();
    let text = text.ok().flatten().filter(|_| removed)?;
    let valid =
        text.len() == secret::PASSWORD_LEN && text.bytes().all(|b| b.is_ascii_alphanumeric());
    valid.then_some(text)
}
