//! Accounts: who invoked pgtmp, which account the server runs as, and dropping root for it.
//!
//! postgres refuses to run as root, and CI containers run as root. Invoked by root, pgtmp
//! switches the whole process to an unprivileged account right after reading its command line,
//! so every file it makes is owned by the account the server runs as; the database role in the
//! URL is still the invoker's login name.

use crate::output::exit;
use anyhow::{Context, Result, bail};
use nix::unistd::{Gid, Uid, User, getgroups, setegid, seteuid, setgid, setgroups, setuid};

/// An operating-system account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub uid: Uid,
    pub gid: Gid,
    pub name: String,
}

impl Account {
    fn from_user(user: User) -> Account {
        Account {
            uid: user.uid,
            gid: user.gid,
            name: user.name,
        }
    }

    pub fn is_root(&self) -> bool {
        self.uid.is_root()
    }

    /// The account running this process. Containers sometimes run uids without a passwd
    /// entry; then $USER, or "uid<N>", names the database role.
    pub fn current() -> Result<Account> {
        let uid = Uid::effective();
        let gid = Gid::effective();
        match User::from_uid(uid) {
            Ok(Some(user)) => Ok(Account::from_user(user)),
            _ => {
                let name = std::env::var("USER")
                    .ok()
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| format!("uid{uid}"));
                Ok(Account { uid, gid, name })
            }
        }
    }

    /// The account with `uid`, when the user database has one.
    pub fn by_uid(uid: u32) -> Result<Option<Account>> {
        let user = User::from_uid(Uid::from_raw(uid))
            .with_context(|| format!("cannot look up uid {uid}"))?;
        Ok(user.map(Account::from_user))
    }

    pub fn by_name(name: &str) -> Result<Option<Account>> {
        let user =
            User::from_name(name).with_context(|| format!("cannot look up account '{name}'"))?;
        Ok(user.map(Account::from_user))
    }
}

/// The account asked for with `--run-as` (or PGTMP_RUN_AS), before knowing who invokes pgtmp.
#[derive(Clone, Copy, Default)]
pub struct RunAs<'a> {
    pub name: Option<&'a str>,
    /// The name came from PGTMP_RUN_AS rather than the command line.
    pub from_env: bool,
}

impl RunAs<'_> {
    /// The name that applies to an invoker: PGTMP_RUN_AS is meant for root (e.g. exported in a
    /// CI image) and ignored for anyone else, as is an empty one; a written --run-as always
    /// counts.
    pub fn for_invoker(&self, invoker_is_root: bool) -> Option<&str> {
        self.name
            .filter(|name| !self.from_env || (invoker_is_root && !name.is_empty()))
    }
}

/// The account the server runs as: the invoker itself, or for root `--run-as`/`PGTMP_RUN_AS`,
/// else `postgres` when it exists, else `nobody`.
pub fn server_account(invoker: &Account, run_as: Option<&str>) -> Result<Account> {
    if !invoker.is_root() {
        return match run_as {
            Some(name) if name != invoker.name => Err(exit::usage(format!(
                "--run-as {name} only applies when pgtmp is invoked by root; drop it \
                 (the server runs as {} already)",
                invoker.name
            ))),
            _ => Ok(invoker.clone()),
        };
    }
    if let Some(name) = run_as {
        if name.is_empty() {
            return Err(exit::usage(
                "--run-as needs an account name, e.g. --run-as postgres; or leave it out to run \
                 the server as postgres (else nobody)",
            ));
        }
        let account = Account::by_name(name)?.ok_or_else(|| {
            exit::usage(format!(
                "--run-as {name}: no such account; create it (useradd --system {name}) or name an existing one"
            ))
        })?;
        if account.is_root() {
            return Err(exit::usage(format!(
                "--run-as {name}: postgres refuses to run as root; name an unprivileged account"
            )));
        }
        return Ok(account);
    }
    for name in ["postgres", "nobody"] {
        if let Some(account) = Account::by_name(name)?.filter(|a| !a.is_root()) {
            return Ok(account);
        }
    }
    bail!(
        "invoked by root, but neither a 'postgres' nor a 'nobody' account exists to run the server; create one or pass --run-as USER"
    )
}

/// Switches this process to `account` for good (only when it differs from the current one).
/// Must run before any thread exists.
pub fn become_account(account: &Account) -> Result<()> {
    if Uid::effective() == account.uid {
        return Ok(());
    }
    setgroups(&[account.gid]).context("cannot drop supplementary groups (setgroups)")?;
    setgid(account.gid)
        .with_context(|| format!("cannot switch to group {} (setgid)", account.gid))?;
    setuid(account.uid)
        .with_context(|| format!("cannot switch to account {} (setuid)", account.name))?;
    Ok(())
}

/// initdb refuses to run as a uid without an entry in the user database ("could not look up
/// effective user ID"), as containers sometimes run: say so before anything is made. Root's
/// server account is always looked up by name, so this is about ordinary invokers.
pub fn check_has_entry() -> Result<()> {
    let uid = Uid::effective();
    if uid.is_root() || matches!(User::from_uid(uid), Ok(Some(_))) {
        return Ok(());
    }
    bail!(
        "uid {uid} has no entry in the user database (/etc/passwd), and initdb refuses to run \
         without one; add one (e.g. useradd --uid {uid} NAME), or run pgtmp as an account that has one"
    )
}

/// Runs `check` with the effective ids of `account` and switches back afterwards, so that root
/// can see what the server account may do before dropping privileges for good (and undo what
/// it made if the answer is no). Runs `check` unchanged when already that account.
/// Must run before any thread exists.
pub fn check_as<T>(account: &Account, check: impl FnOnce() -> Result<T>) -> Result<T> {
    let (uid, gid) = (Uid::effective(), Gid::effective());
    if uid == account.uid {
        return check();
    }
    let groups = getgroups().context("cannot read supplementary groups (getgroups)")?;
    setgroups(&[account.gid]).context("cannot drop supplementary groups (setgroups)")?;
    setegid(account.gid)
        .with_context(|| format!("cannot switch to group {} (setegid)", account.gid))?;
    seteuid(account.uid)
        .with_context(|| format!("cannot switch to account {} (seteuid)", account.name))?;
    let result = check();
    seteuid(uid).context("cannot switch back to the invoking account (seteuid)")?;
    setegid(gid).context("cannot switch back to the invoking group (setegid)")?;
    setgroups(&groups).context("cannot restore supplementary groups (setgroups)")?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_root_runs_the_server_itself() {
        let me = Account {
            uid: Uid::from_raw(1000),
            gid: Gid::from_raw(1000),
            name: "me".into(),
        };
        assert_eq!(server_account(&me, None).unwrap(), me);
        assert_eq!(server_account(&me, Some("me")).unwrap(), me);
        let err = server_account(&me, Some("postgres")).unwrap_err();
        assert_eq!(exit::code_for(&err), exit::USAGE);
    }

    #[test]
    fn root_never_runs_the_server_as_root() {
        let root = Account {
            uid: Uid::from_raw(0),
            gid: Gid::from_raw(0),
            name: "root".into(),
        };
        assert!(server_account(&root, Some("root")).is_err());
        assert!(server_account(&root, Some("no-such-account-pgtmp")).is_err());
        if let Ok(account) = server_account(&root, None) {
            assert!(!account.is_root());
        }
    }
}
