//! `pgtmp initdb [-d DIR]`: one more ready pool entry, which the next start takes (pg_tmp's
//! `initdb`), or with -d a prepared cluster directory, not started, for a later `pgtmp -d`.

use crate::cli::GlobalArgs;
use crate::lifecycle::directory;
use crate::lifecycle::pool::Pool;
use crate::lifecycle::session::Session;
use crate::server::discover;
use anyhow::Result;
use std::path::PathBuf;

pub fn run(dir: Option<PathBuf>, global: &GlobalArgs) -> Result<()> {
    crate::server::cluster::ensure_open_files()?;
    let install = discover::choose(&global.choice()?)?;
    crate::os::account::check_has_entry()?;
    let path = match dir {
        Some(dir) => {
            let dir = directory::absolute(&dir)?;
            let found = directory::inspect(&dir)?;
            let session = Session::establish(global.run_as(), Some(&dir))?;
            directory::prepare(&install, &dir, found, &session.server, session.user())?;
            dir
        }
        None => {
            // Checked before anything is made.
            let pool_size = crate::cli::settings::pool_size()?;
            let session = Session::establish(global.run_as(), None)?;
            let pool = Pool::open(&session.state, &install, session.user(), pool_size)?;
            pool.prepare_next(&install, session.user())?
        }
    };
    crate::output::stdout::print(&format!("{}\n", path.display()))
}
