//! `pgtmp initdb [-d DIR]`: a prepared cluster directory, not started, for a later `pgtmp -d`.

use super::Session;
use crate::cli::GlobalArgs;
use crate::discover;
use crate::initdb;
use crate::pool::{self, Pool, Taken};
use anyhow::Result;
use std::path::PathBuf;

pub fn run(dir: Option<PathBuf>, global: &GlobalArgs) -> Result<()> {
    let install = discover::find(global.bindir.as_deref())?;
    let path = match dir {
        Some(dir) => {
            let dir = super::absolute_dir(&dir)?;
            let found = super::inspect_dir(&dir)?;
            let session = Session::establish(global, Some(&dir))?;
            super::prepare_dir(&install, &dir, found, &session)?;
            dir
        }
        None => {
            let session = Session::establish(global, None)?;
            let user = session.user().to_string();
            let pool = Pool::open(&session.state, &install, &user)?;
            let (instance, taken) = pool.take(
                &session.state.instance_path(&pool::new_name()?),
                &install,
                &user,
            )?;
            if taken == Taken::Initialized
                && let Err(err) = initdb::create_test_database(&install, &instance, &user)
            {
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
