//! Who is involved in a run (the invoking account, the account the server runs as) and where
//! its state lives; establishing it drops root privileges for good.

use crate::lifecycle::directory;
use crate::os::account::{self, Account, RunAs};
use crate::state::statedir::{self, StateDir};
use anyhow::Result;
use std::path::Path;

/// Who is involved in this run and where its state lives. Establishing it switches a root
/// process to the server account for good.
pub struct Session {
    pub invoker: Account,
    pub server: Account,
    pub state: StateDir,
}

impl Session {
    /// `dir` is a `-d` directory that root hands over to the server account if it is empty.
    pub fn establish(run_as: RunAs, dir: Option<&Path>) -> Result<Session> {
        let invoker = Account::current()?;
        let server = account::server_account(&invoker, run_as.for_invoker(invoker.is_root()))?;
        let path = statedir::location_for(invoker.uid.as_raw())?;
        let (state, made) = StateDir::establish(path, &invoker, &server)?;
        // Checked with the server account's ids while root can still remove what it made.
        let checked = account::check_as(&server, || state.check_usable(&server)).and_then(|()| {
            match dir.filter(|_| invoker.uid != server.uid) {
                Some(dir) => directory::hand_over(dir, &server),
                None => Ok(()),
            }
        });
        if let Err(err) = checked {
            if let Some(top) = made {
                statedir::unmake(&state.path, &top);
            }
            return Err(err);
        }
        account::become_account(&server)?;
        Ok(Session {
            invoker,
            server,
            state,
        })
    }

    /// The database superuser: the invoking account's login name.
    pub fn user(&self) -> &str {
        &self.invoker.name
    }
}
