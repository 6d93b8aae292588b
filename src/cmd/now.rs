//! `pgtmp now URL [VALUE]`: move the frozen time of a cluster started with `--now` (a
//! timestamp, `clock`, `+INTERVAL`, `-INTERVAL`) for all its sessions, and print its now().

use crate::cli::{GlobalArgs, NowArgs};
use crate::lifecycle::session::Session;
use crate::testdata::clock;
use crate::testdata::files::{self, Server};
use anyhow::Result;

pub fn run(args: NowArgs, global: &GlobalArgs) -> Result<()> {
    let (session, conn) = Session::establish_for_url(global.run_as(), &args.url)?;
    let (instance, state) = session.running(&conn.uri(None))?;
    let mut client = files::connect(&Server::of(&instance, &state), "postgres")?;
    let now = match &args.value {
        Some(value) => clock::set(&mut client, value, "pgtmp now")?,
        None => clock::read(&mut client)?,
    };
    let end = crate::output::format::ending(true);
    crate::output::stdout::print(&format!("{now}{end}"))
}
