//! `pgtmp initdb [-d DIR]`: a prepared cluster directory, not started, for a later `pgtmp -d`.

use super::Session;
use crate::cli::GlobalArgs;
use crate::lifecycle::pool::{self, Pool, Taken};
use crate::server::discover;
use crate::server::initdb;
use crate::state::ownership;
use anyhow::Result;
use std::path::PathBuf;

pub fn run(dir: Option<PathBuf>, global: &GlobalArgs) -> Result<()> {
    crate::server::cluster::ensure_open_files()?;
    let install = discover::find(global.bindir.as_deref())?;
    crate::os::account::check_has_entry()?;
    let path = match dir {
        Some(dir) => {
            let dir = super::absolute_dir(&dir)?;
            let found = super::inspect_dir(&dir)?;
            let session = Session::establish(global, Some(&dir))?;
            super::prepare_dir(&install, &dir, found, &session)?;
            dir
        }
        None => {
            // Checked before anything is made.
            let pool_size = crate::cli::settings::pool_size()?;
            let session = Session::establish(global, None)?;
            let user = session.user().to_string();
            // The gate is held until the new directory is locked, and the lock until it is
            // marked kept, so no sweep removes it meanwhile; the slow initdb or copy holds up
            // no sweep.
            let mut gate = Some(ownership::lock_shared(&session.state.path)?);
            let pool = Pool::open(&session.state, &install, &user, pool_size)?;
            let mut lock = None;
            let (instance, taken) = pool.take(
                &session.state.instance_path(&pool::new_name()?),
                &install,
                &user,
                |instance| {
                    lock = Some(ownership::lock_new(&instance.dir)?);
                    gate = None;
                    Ok(())
                },
            )?;
            let _lock = match lock {
                Some(lock) => lock,
                None => ownership::lock_new(&instance.dir)?,
            };
            drop(gate);
            if taken == Taken::Initialized
                && let Err(err) = initdb::create_test_database(&install, &instance, &user)
            {
                let _ = instance.remove();
                return Err(err);
            }
            // Asked for by name: a sweep must not take it for a dead start's leftover.
            if let Err(err) = instance.mark_kept() {
                let _ = instance.remove();
                return Err(err);
            }
            pool.refill_in_background(&install, &user);
            instance.dir
        }
    };
    println!("{}", path.display());
    Ok(())
}
