//! Stopping one running cluster of the invoker's, shared by `pgtmp stop` and `pgtmp discard`:
//! at once or once its clients have left, through its watchdog when it has one, else by doing
//! the watchdog's work on a server proven to be the recorded one.
//!
//! Only a directory proven to be one of this account's clusters is acted on (see
//! clusters.rs), and only a process proven to be its watchdog or postmaster is signalled,
//! through a handle taken before the proof (ownership.rs).

use crate::lifecycle::session::Session;
use crate::lifecycle::watchdog;
use crate::os::process;
use crate::server::{client, cluster};
use crate::state::clusters::ClusterDir;
use crate::state::instance::State;
use crate::state::ownership;
use anyhow::{Result, bail};
use nix::sys::signal::Signal;
use std::time::Duration;

/// Stops one cluster of the invoker's and waits until it is gone; with `keep` its directory
/// stays (as with a start's -k). With `wait`, first waits until it has no client.
pub fn stop(session: &Session, cluster: &ClusterDir, keep: bool, wait: Option<u64>) -> Result<()> {
    let state = running_state(session, cluster)?;
    let state = match wait {
        None => state,
        Some(interval) => {
            wait_for_no_client(cluster, &state, Duration::from_secs(interval));
            // It may have reached its idle timeout meanwhile: stopped, as asked.
            if !cluster.is_cluster() || matches!(cluster.read_state(), Ok(None)) {
                return Ok(());
            }
            running_state(session, cluster)?
        }
    };
    stop_now(cluster, &state, keep)
}

/// The state of a running cluster of the invoker's in `cluster`.
pub fn running_state(session: &Session, cluster: &ClusterDir) -> Result<State> {
    let dir = cluster.path.display().to_string();
    if !cluster.is_cluster() {
        bail!("{dir} is not a pgtmp cluster directory; pass the URL pgtmp printed");
    }
    let Some(state) = cluster.read_state()? else {
        bail!("no cluster is running in {dir}; it has stopped already");
    };
    if state.owner_uid != session.invoker.uid.as_raw() {
        bail!(
            "the cluster in {dir} belongs to another account (uid {}); only its owner can stop, keep or discard it",
            state.owner_uid
        );
    }
    Ok(state)
}

/// pg_tmp's `stop -w N`: sleeps N seconds, then asks the server how many clients it has, and
/// again until there are none (pg_tmp.sh's `until [ count -lt 2 ]; do sleep N; psql ...`
/// loop; its own psql was the one it counted). A server that does not answer counts as having
/// none, as in pg_tmp. The session asking is not counted, nor is the watchdog's.
fn wait_for_no_client(cluster: &ClusterDir, state: &State, interval: Duration) {
    // -w 0 checks continuously, but not in a busy loop.
    let interval = interval.max(Duration::from_millis(100));
    loop {
        std::thread::sleep(interval);
        let clients = client::activity_within(&cluster.path, state.port, &state.user, ASK_LIMIT)
            .map_or(0, |activity| activity.clients);
        if clients == 0 {
            return;
        }
    }
}

/// How long one check of `stop -w` waits for the server to answer.
const ASK_LIMIT: Duration = Duration::from_secs(3);

/// Stops the running cluster `state` describes, at once.
pub fn stop_now(cluster: &ClusterDir, state: &State, keep: bool) -> Result<()> {
    let dir = cluster.path.display().to_string();
    let me = nix::unistd::geteuid();
    let instance = cluster.instance();
    let watchdog =
        ownership::prove_watchdog(&cluster.dir, state.watchdog_pid, state.watchdog_start, me)?;
    if let Some(watchdog) = watchdog {
        // The watchdog keeps a directory so marked when it stops, whatever it was started with.
        if keep {
            instance.mark_kept()?;
        }
        // It stops the server and removes the directory, exactly as at its timeout.
        watchdog.signal(Signal::SIGTERM)?;
        return watchdog::wait_gone(state.watchdog_pid, &dir, watchdog::STOP_LIMIT);
    }
    if ownership::is_locked(&cluster.path) {
        bail!(
            "the cluster in {dir} is held by a pgtmp process that is not the watchdog its state names (pid {}): it is being started or stopped right now, or its state file was changed; try again, or let it stop at its idle timeout",
            state.watchdog_pid
        );
    }
    // No watchdog: do its work, on a server proven to be the one recorded.
    let data = cluster.data()?;
    let server = match state.postmaster_start {
        Some(started) => {
            ownership::prove_postmaster(&data, state.postmaster_pid, Some(started), me)?
        }
        None => None,
    };
    if keep {
        instance.mark_kept()?;
    }
    if let Some(server) = &server {
        cluster::shutdown(server, || !process::alive(state.postmaster_pid))?;
    }
    crate::server::shm::release(&state.segments, state.postmaster_pid);
    if state.keep || instance.is_kept() {
        instance.mark_kept_as(state.tcp)?;
        instance.remove_state();
        Ok(())
    } else {
        cluster.remove()
    }
}
