//! `pgtmp keep URL`: mark the cluster of URL (a cluster's, a clone's or a schema's URL) kept
//! from now on, and say on stderr how to reopen it and reach the database URL names.

use crate::cli::{GlobalArgs, KeepArgs};
use crate::lifecycle::kept;
use crate::lifecycle::session::Session;
use crate::output::url;
use anyhow::Result;

pub fn run(args: KeepArgs, global: &GlobalArgs) -> Result<()> {
    let (session, conn) = Session::establish_for_url(global.run_as(), &args.url)?;
    let cluster = crate::state::clusters::find_by_url(&session.state.path, &conn.uri(None))?;
    let marked = kept::keep(&session, &cluster)?;
    // The database on the socket, which the reopened cluster serves at the same address
    // whether or not it is started with -t again.
    let reach = url::Conn {
        user: Some(session.user().to_string()),
        host: marked.dir.display().to_string(),
        database: conn.database.clone(),
        ..url::Conn::default()
    }
    .uri(None);
    eprintln!(
        "pgtmp: kept {dir}: it stays when the cluster stops; start it again with `{reopen}`, \
         then connect to {reach}; `pgtmp discard {dir}` removes it",
        dir = marked.dir.display(),
        reopen = kept::reopen_command(&marked.dir, marked.tcp),
    );
    Ok(())
}
