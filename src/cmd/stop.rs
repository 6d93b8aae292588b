//! `pgtmp stop URL | -d DIR | --all [-k] [-w SECONDS]`: stop the invoker's clusters now (or,
//! with -w, once their clients have left), and with -k keep their directories.
//!
//! How a cluster is stopped, and what is proven before, is lifecycle/stopping.rs's: a
//! directory someone else made, or a state file naming an unrelated process, makes pgtmp
//! refuse, never signal.

use crate::cli::{GlobalArgs, StopArgs};
use crate::lifecycle::session::{Session, Target};
use crate::lifecycle::stopping::stop;
use crate::os::process;
use crate::output::exit;
use crate::state::clusters::{self, ClusterDir};
use anyhow::{Context, Result, bail};

pub fn run(args: StopArgs, global: &GlobalArgs) -> Result<()> {
    if let Some(remote) = &global.remote {
        return drop_remote(&args, remote);
    }
    let cluster = match (args.url, args.dir) {
        (Some(url), _) => {
            let session = Session::establish_for(global.run_as(), &Target::Url(&url))?;
            let cluster = clusters::find_by_url(&session.state.path, &url)?;
            (session, cluster)
        }
        (None, Some(dir)) => {
            let dir = std::path::absolute(&dir)
                .with_context(|| format!("cannot resolve {}", dir.display()))?;
            let session = Session::establish_for(global.run_as(), &Target::Dir(&dir))?;
            let cluster = clusters::own(&session.state.path, &dir)?;
            (session, cluster)
        }
        (None, None) => {
            return Err(exit::usage(
                "say which cluster to stop: `pgtmp stop URL`, `pgtmp stop -d DIR`, or `pgtmp stop --all` for every one",
            ));
        }
    };
    let (session, cluster) = cluster;
    stop(&session, &cluster, args.keep, args.wait)
}

/// `pgtmp --remote SERVE stop URL`: the database of URL dropped with its role by serve.
fn drop_remote(args: &StopArgs, remote: &str) -> Result<()> {
    for (given, option) in [
        (args.dir.is_some(), "-d"),
        (args.keep, "-k"),
        (args.wait.is_some(), "-w"),
        (args.all, "--all"),
    ] {
        if given {
            return Err(crate::cli::remote_refuses(option));
        }
    }
    let Some(url) = &args.url else {
        return Err(exit::usage(
            "say which database to drop: `pgtmp --remote SERVE stop URL`",
        ));
    };
    crate::serve::remote::Client::new(remote)?.drop(url)
}

/// `pgtmp stop --all`: every running cluster of the invoking account, all at once (for root,
/// of every server account in turn). One that stops by itself meanwhile is not an error;
/// every one that fails is reported.
pub fn all(keep: bool, wait: Option<u64>, global: &GlobalArgs) -> Result<()> {
    Session::in_each(global.run_as(), |session| all_of(session, keep, wait))
}

/// Threads are fine here: the session switch is done before any exists, and nothing forks
/// afterwards.
fn all_of(session: &Session, keep: bool, wait: Option<u64>) -> Result<()> {
    let Some(state) = clusters::open_state_dir(&session.state.path)? else {
        return Ok(());
    };
    let running: Vec<ClusterDir> = clusters::all(&state)
        .into_iter()
        // Without a state: being prepared, or stopped already.
        .filter(|cluster| {
            cluster.running_state().is_some_and(|s| {
                s.owner_uid == session.invoker.uid.as_raw()
                    && (process::alive(s.watchdog_pid) || process::alive(s.postmaster_pid))
            })
        })
        .collect();
    let failures: Vec<String> = std::thread::scope(|scope| {
        let stops: Vec<_> = running
            .iter()
            .map(|cluster| {
                scope.spawn(move || match stop(session, cluster, keep, wait) {
                    Err(err) if cluster.read_state().ok().flatten().is_some() => {
                        Some(format!("{err:#}"))
                    }
                    _ => None,
                })
            })
            .collect();
        stops
            .into_iter()
            .filter_map(|stop| {
                stop.join()
                    .unwrap_or_else(|_| Some("a stop panicked".into()))
            })
            .collect()
    });
    if !failures.is_empty() {
        bail!(
            "{} cluster(s) did not stop: {}",
            failures.len(),
            failures.join("; ")
        );
    }
    Ok(())
}
