//! Kept clusters: `pgtmp keep` marks a running cluster kept from now on, `pgtmp list --all`
//! finds the kept ones that have stopped, and `pgtmp discard` stops one if it runs and removes
//! it. A kept directory stays when its cluster stops, however it stops (idle timeout, owner's
//! exit, `pgtmp stop`); the same `pgtmp -d DIR` starts it again.

use crate::lifecycle::session::Session;
use crate::lifecycle::stopping;
use crate::output::format::shell_word;
use crate::state::clusters::{self, ClusterDir};
use crate::state::safefs::Dir;
use crate::state::{instance, ownership, statedir};
use anyhow::{Result, bail};
use std::path::{Path, PathBuf};

/// A cluster just marked kept.
pub struct Marked {
    pub dir: PathBuf,
    pub tcp: bool,
}

/// Marks the running cluster `cluster` (one of the invoker's) kept: when it stops, its
/// directory stays. Marking a kept one again changes nothing.
pub fn keep(session: &Session, cluster: &ClusterDir) -> Result<Marked> {
    if cluster.is_cluster() && cluster.instance().is_kept() && cluster.read_state()?.is_none() {
        bail!(
            "the cluster in {dir} has stopped and is kept already; start it again with `{}`",
            reopen_command(&cluster.path, instance::kept_with_tcp_in(&cluster.dir)),
            dir = cluster.path.display()
        );
    }
    let state = stopping::running_state(session, cluster)?;
    cluster.instance().mark_kept_as(state.tcp)?;
    if cluster.path.parent() != Some(session.state.path.as_path()) {
        // Outside PGTMP_DIR: recorded there, so that it is still found once it has stopped.
        statedir::record_kept(&session.state.path, &cluster.path)?;
    }
    Ok(Marked {
        dir: cluster.path.clone(),
        tcp: state.tcp,
    })
}

/// The command that starts the kept cluster in `dir` again (with -t for TCP).
pub fn reopen_command(dir: &Path, tcp: bool) -> String {
    let tcp = if tcp { " -t" } else { "" };
    format!("pgtmp{tcp} -d {}", shell_word(&dir.display().to_string()))
}

/// The kept clusters of the state directory `state` that are not running: pgtmp's complete
/// cluster directories, marked kept, with no watchdog looking after them (a state left by a
/// killed one is stale).
pub fn stopped(state: &Dir) -> Vec<ClusterDir> {
    clusters::all(state)
        .into_iter()
        .filter(|cluster| {
            cluster.is_cluster()
                && cluster.instance().is_kept()
                // Locked while a watchdog (or a start) looks after it.
                && !ownership::is_locked(&cluster.path)
        })
        .collect()
}

/// Stops the cluster `cluster` (one of the invoker's) if it runs, and removes its directory
/// with everything in it, kept or not. Only a complete cluster directory pgtmp made is removed;
/// one that a pgtmp process is starting or stopping right now is refused.
pub fn discard(session: &Session, cluster: &ClusterDir) -> Result<()> {
    let dir = cluster.path.display().to_string();
    if !cluster.is_cluster() {
        bail!(
            "{dir} is not a cluster directory pgtmp made, and pgtmp discard removes nothing else"
        );
    }
    if cluster.read_state()?.is_some() {
        // Stopped with the directory kept, so that what is removed below is removed only once
        // nobody works in it any more.
        let state = stopping::running_state(session, cluster)?;
        stopping::stop_now(cluster, &state, true)?;
    }
    let Some(_lock) = ownership::try_lock(&cluster.path)? else {
        bail!("a pgtmp process is starting or stopping the cluster in {dir} right now; try again");
    };
    if ownership::processes_inside(&cluster.path) {
        bail!("processes still run in {dir}; stop them, or try again in a moment");
    }
    if cluster.path.parent() != Some(session.state.path.as_path()) {
        statedir::forget_kept(&session.state.path, &cluster.path)?;
    }
    cluster.remove()
}
