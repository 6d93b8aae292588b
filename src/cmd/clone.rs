//! `pgtmp clone URL`: a fresh database in the same cluster, a copy of its loaded state; and
//! `pgtmp clone --drop URL`, which drops one early.

use crate::cli::{CloneArgs, GlobalArgs};
use crate::lifecycle::session::{Session, Target};
use crate::os::detach::{self, Forked};
use crate::testdata::dburl;
use crate::testdata::files::{self, Server};
use crate::testdata::stock;
use anyhow::Result;

pub fn run(args: CloneArgs, global: &GlobalArgs) -> Result<()> {
    let jdbc = dburl::jdbc_wanted(args.format.format, "clone")?;
    if let Some(remote) = &global.remote {
        let client = crate::serve::remote::Client::new(remote)?;
        if args.drop {
            return client.drop(&args.url);
        }
        let database = client.clone_of(&args.url)?;
        let url = if jdbc {
            database.jdbc()
        } else {
            database.url()
        };
        let end = crate::output::format::ending(true);
        return crate::output::stdout::print(&format!("{url}{end}"));
    }
    // Any form pgtmp prints; a clone's URL is the cluster's URL form without the input's
    // parameters (a schema URL's options name a schema the clone does not have).
    let conn = crate::output::url::read(&args.url)?;
    let cluster_url = conn.uri(None);
    if jdbc && !args.drop {
        // Refused before a clone is taken for nothing.
        dburl::jdbc(&cluster_url)?;
    }
    let session = Session::establish_for(global.run_as(), &Target::Url(&cluster_url))?;
    let (instance, state) = session.running(&cluster_url)?;
    crate::output::trace::phase("session");
    let server = Server::of(&instance, &state);
    let mut client = files::connect(&server, "postgres")?;
    crate::output::trace::phase("connect");
    if args.drop {
        return stock::drop_clone(&mut client, &dburl::database(&cluster_url)?);
    }
    let (name, had) = stock::claim(&mut client, &state.user)?;
    drop(client);
    let url = conn.uri(Some(&name));
    let url = if jdbc { dburl::jdbc(&url)? } else { url };
    let end = crate::output::format::ending(true);
    crate::output::stdout::print(&format!("{url}{end}"))?;
    // Demand outran the stock: deeper from now on, and refilled at the caller's priority
    // (clones are waited for); otherwise at the lowest.
    let quiet = had == stock::Had::Claimed;
    if !quiet {
        let _ = stock::raise_depth(server.socket_dir);
    }
    if let Ok(Forked::Child) = detach::fork_detached() {
        if quiet {
            detach::lower_priority();
        }
        std::process::exit(i32::from(stock::refill(&server, quiet).is_err()));
    }
    Ok(())
}
