//! `pgtmp stop URL | -d DIR | --all`: stop the invoker's clusters now.

use super::Session;
use crate::cli::GlobalArgs;
use crate::cluster;
use crate::exit;
use crate::instance::Instance;
use crate::ownership;
use crate::process;
use crate::url::{self, Target};
use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Longest a watchdog may take to stop its server (fast, then immediate shutdown, then kill).
const STOP_LIMIT: Duration = Duration::from_secs(30);

pub fn run(url: Option<String>, dir: Option<PathBuf>, global: &GlobalArgs) -> Result<()> {
    let session = Session::establish(global, None)?;
    let instance = match (url, dir) {
        (Some(url), _) => find_by_url(&session, &url)?,
        (None, Some(dir)) => Instance::new(
            std::path::absolute(&dir)
                .with_context(|| format!("cannot resolve {}", dir.display()))?,
        ),
        (None, None) => {
            return Err(exit::usage(
                "say which cluster to stop: `pgtmp stop URL`, `pgtmp stop -d DIR`, or `pgtmp stop --all` for every one",
            ));
        }
    };
    stop(&session, &instance)
}

/// `pgtmp stop --all`: every running cluster of the invoking account. One that stops by
/// itself meanwhile is not an error.
pub fn all(global: &GlobalArgs) -> Result<()> {
    let session = Session::establish(global, None)?;
    let mut failures = Vec::new();
    for dir in session.state.clusters() {
        let instance = Instance::new(dir);
        let Ok(Some(state)) = instance.read_state() else {
            // Being prepared, or stopped already.
            continue;
        };
        let running = process::alive(state.watchdog_pid) || process::alive(state.postmaster_pid);
        if state.owner_uid != session.invoker.uid.as_raw() || !running {
            continue;
        }
        if let Err(err) = stop(&session, &instance)
            && instance.read_state().ok().flatten().is_some()
        {
            failures.push(format!("{err:#}"));
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} cluster(s) did not stop: {}",
            failures.len(),
            failures.join("; ")
        );
    }
    Ok(())
}

/// Stops one cluster of the invoker's and waits until it is gone.
fn stop(session: &Session, instance: &Instance) -> Result<()> {
    let dir = instance.dir.display().to_string();
    match std::fs::metadata(&instance.dir) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            bail!("no cluster in {dir}: it has stopped already, or never existed")
        }
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "cannot read {dir}: the cluster belongs to another account; only its owner can stop it"
        ),
        _ => {}
    }
    if !instance.is_cluster() {
        bail!(
            "{dir} is not a pgtmp cluster directory (or not one you can read); pass the URL pgtmp printed"
        );
    }
    let Some(state) = instance.read_state()? else {
        bail!("no cluster is running in {dir}; it has stopped already");
    };
    if state.owner_uid != session.invoker.uid.as_raw() {
        bail!(
            "the cluster in {dir} belongs to another account (uid {}); only its owner can stop it",
            state.owner_uid
        );
    }
    // A live watchdog holds the directory's lock; its pid is signalled only if its start time
    // proves it is still the same process.
    if ownership::is_proven_watchdog(&instance.dir, state.watchdog_pid, state.watchdog_start) {
        // The watchdog stops the server and removes the directory, exactly as at its timeout.
        return stop_watchdog(state.watchdog_pid, &dir);
    }
    if ownership::is_locked(&instance.dir) {
        bail!(
            "the cluster in {dir} is being started or stopped by another pgtmp right now; try again"
        );
    }
    // No watchdog: do its work, on a server proven to be the one recorded.
    if ownership::is_postmaster_of(
        state.postmaster_pid,
        &instance.data(),
        state.postmaster_start,
    ) {
        cluster::shutdown(state.postmaster_pid, || {
            !process::alive(state.postmaster_pid)
        })?;
    }
    crate::shm::release(&state.segments, state.postmaster_pid);
    if state.keep || instance.is_kept() {
        instance.remove_state();
        Ok(())
    } else {
        instance.remove()
    }
}

/// Asks a watchdog to stop its server and dispose of the directory, exactly as at its timeout,
/// and waits until it has.
pub fn stop_watchdog(pid: i32, dir: &str) -> Result<()> {
    process::signal(pid, Signal::SIGTERM)?;
    wait_gone(pid, dir, STOP_LIMIT)
}

/// Waits until the watchdog `pid` (of `dir`) has exited, at most `limit`.
pub fn wait_gone(pid: i32, dir: &str, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while process::alive(pid) {
        if Instant::now() >= deadline {
            bail!(
                "the watchdog (pid {pid}) of {dir} did not stop within {} s",
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

pub fn find_by_url(session: &Session, text: &str) -> Result<Instance> {
    match url::parse(text)? {
        Target::Socket(dir) => Ok(Instance::new(dir)),
        Target::Tcp { host, port } => {
            if !matches!(host.as_str(), "127.0.0.1" | "localhost") {
                bail!(
                    "{host} is not this machine's loopback address; pgtmp clusters listen on 127.0.0.1 only"
                );
            }
            for dir in session.state.clusters() {
                let instance = Instance::new(dir);
                if let Ok(Some(state)) = instance.read_state()
                    && state.tcp
                    && state.port == port
                {
                    return Ok(instance);
                }
            }
            bail!(
                "no cluster of yours listens on 127.0.0.1:{port} (looked in {})",
                session.state.path.display()
            )
        }
    }
}
