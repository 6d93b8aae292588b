//! `pgtmp now URL [VALUE]`: move the frozen time of a cluster started with `--now` (a
//! timestamp, `clock`, `+INTERVAL`, `-INTERVAL`) for all its sessions, and print its now().

use crate::cli::{GlobalArgs, NowArgs};
use crate::lifecycle::session::{Session, Target};
use crate::testdata::clock;
use crate::testdata::files::{self, Server};
use anyhow::Result;

pub fn run(args: NowArgs, global: &GlobalArgs) -> Result<()> {
    let conn = crate::output::url::read(&args.url)?;
    let cluster_url = conn.uri(None);
    let session = Session::establish_for(global.run_as(), &Target::Url(&cluster_url))?;
    let (instance, state) = crate::state::clusters::running(
        &session.state.path,
        session.invoker.uid.as_raw(),
        &cluster_url,
    )?;
    let server = Server {
        socket_dir: &instance.dir,
        port: state.port,
        user: &state.user,
    };
    let mut client = files::connect(&server, "postgres")?;
    let now = match &args.value {
        Some(value) => clock::set(&mut client, value, "pgtmp now")?,
        None => clock::read(&mut client)?,
    };
    let end = crate::output::format::ending(true);
    crate::output::stdout::print(&format!("{now}{end}"))
}
