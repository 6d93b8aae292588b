//! The watchdog: a detached process that starts the server, reports readiness to the waiting
//! `pgtmp`, then stops the server and removes its directory once it has been idle too long,
//! when asked to (`pgtmp stop`), or when the server dies by itself.
//!
//! The watchdog is the server's parent, so it learns of the server's death at once (SIGCHLD),
//! and on Linux the server dies with it (parent-death signal).
//!
//! `launch` (here) forks it and waits for its report ([`report`]); [`supervise`] is the
//! watchdog's own life: start, report, watch, stop.

mod clients;
mod report;
mod supervise;

use report::{Outcome, Report};
use supervise::be_the_watchdog;

use crate::lifecycle::claim::Waiting;
use crate::lifecycle::owner::Owner;
use crate::os::detach::{self, Forked};
use crate::os::process::Pid;
use crate::output::trace;
use crate::server::cluster;
use crate::server::discover::Installation;
use crate::state::instance::Instance;
use anyhow::{Context, Result, bail};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Seconds without a client after which a cluster stops, unless -w says otherwise.
pub const DEFAULT_TIMEOUT: u64 = 60;

/// What to do with the directory when the start fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// pgtmp made the directory for this start: delete it.
    Remove,
    /// The directory existed empty (`-d`): delete what pgtmp put in it.
    EmptyOut,
    /// An existing cluster (`-d` of a kept directory): leave it as it was.
    Leave,
}

/// Everything the watchdog needs to start and look after one cluster.
pub struct Plan {
    pub install: Installation,
    pub instance: Instance,
    pub user: String,
    pub owner_uid: u32,
    pub tcp: bool,
    /// With `tcp`: the address to listen on instead of 127.0.0.1 (`pgtmp serve --listen`).
    pub listen: Option<std::net::IpAddr>,
    pub port: u16,
    /// True when the user chose the port (-p): then a taken port is an error, not a retry.
    pub port_fixed: bool,
    pub password: Option<String>,
    /// The role has `password` already (prepared with the pool entry): nothing to set.
    pub password_set: bool,
    pub timeout: u64,
    pub keep: bool,
    /// `--owner-pid`: while it runs the cluster never idles out; once it has exited, the
    /// cluster stops after `timeout` seconds without a client (0: as soon as none is connected).
    pub owner: Option<Owner>,
    pub options: Vec<String>,
    pub on_failure: OnFailure,
    /// The directory has no database `test` yet (made by initdb just now): create it before
    /// reporting ready.
    pub create_test: bool,
    /// A file in PGTMP_DIR pointing at a cluster that lives elsewhere, kept while it runs.
    pub registration: Option<PathBuf>,
    /// A pre-started server: it waits in the pool for a start to claim it (whose -w and -k
    /// then apply) and stops after `timeout` seconds if none does.
    pub waiting: Option<Waiting>,
    /// `pgtmp run`'s lifeline: while held, the idle timeout is suspended; once cut, the
    /// cluster stops.
    pub lifeline: Option<OwnedFd>,
    /// The directory's lock (ownership.rs), taken by the start and held by the watchdog for
    /// its whole life: a sweep never touches a directory while it is held, and `pgtmp stop`
    /// proves the watchdog by this open descriptor. Held, never read.
    pub _lock: crate::state::ownership::DirLock,
}

/// How long pgtmp waits for the server of a watchdog that died during the start to go (it has
/// SIGQUIT from the kernel) before it removes the directory anyway.
const LOST_WATCHDOG_LIMIT: Duration = Duration::from_secs(10);

/// What the waiting `pgtmp` learns.
pub struct Started {
    pub port: u16,
    pub watchdog_pid: Pid,
    pub server_pid: Pid,
}

/// Forks the watchdog and waits for its report. Returns once the server accepts connections,
/// or with the reason it could not start (by then everything has been cleaned up).
pub fn launch(plan: Plan) -> Result<Started> {
    let (forked, reader, writer) = match fork_watchdog() {
        Ok(forked) => forked,
        Err(err) => {
            // No watchdog, so nobody else will: the directory goes as after any failed start.
            dispose_after_failure(&plan);
            return Err(err);
        }
    };
    match forked {
        Forked::Parent(pid) => {
            drop(writer);
            await_report(&plan, pid, reader)
        }
        Forked::Child => {
            drop(reader);
            be_the_watchdog(plan, writer)
        }
    }
}

/// In the waiting `pgtmp`: the watchdog `pid`'s report, read until the watchdog closes the pipe.
fn await_report(plan: &Plan, pid: Pid, mut reader: std::io::PipeReader) -> Result<Started> {
    let mut text = String::new();
    reader
        .read_to_string(&mut text)
        .context("cannot read the watchdog's report")?;
    let outcome = Report::parse(&text)?;
    if let Some(Outcome::Ready {
        port,
        server_pid,
        trace: phases,
    }) = outcome
    {
        trace::replay(&phases);
        return Ok(Started {
            port,
            watchdog_pid: pid,
            server_pid,
        });
    }
    // The watchdog has cleaned up and exited; reap it so nothing is left.
    let _ = nix::sys::wait::waitpid(pid.nix(), None);
    if let Some(Outcome::Error { message }) = outcome {
        bail!("{}", message.trim_end());
    }
    clean_up_after_lost_watchdog(plan);
    bail!("the watchdog exited before the server was ready (was it killed?); try again")
}

/// Disposes of the directory of a watchdog that died without a word (killed, or could not
/// detach), which cleaned up nothing. A server it started gets SIGQUIT from the kernel (Linux);
/// the directory goes only once the server has.
fn clean_up_after_lost_watchdog(plan: &Plan) {
    if let Some(server) = crate::state::ownership::proven_postmaster_of(&plan.instance.data()) {
        let pid = server.pid();
        let _ = cluster::shutdown(&server, || !crate::os::process::alive(pid));
    }
    // A postmaster too young to have written postmaster.pid, or its children, may still be at
    // work in the directory: removing it under them would leave it half there.
    let deadline = Instant::now() + LOST_WATCHDOG_LIMIT;
    while crate::state::ownership::processes_inside(&plan.instance.dir) && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    dispose_after_failure(plan);
}

/// The pipe the watchdog reports on, and the fork that makes the watchdog.
fn fork_watchdog() -> Result<(Forked, std::io::PipeReader, std::io::PipeWriter)> {
    let (reader, writer) = std::io::pipe().map_err(|err| {
        crate::output::exit::spawn_error(err, "cannot create a pipe to the watchdog")
    })?;
    Ok((detach::fork_detached()?, reader, writer))
}

fn dispose_after_failure(plan: &Plan) {
    dispose(&plan.instance, plan.on_failure);
}

/// Undoes what a failed start made of a directory.
pub fn dispose(instance: &Instance, on_failure: OnFailure) {
    let _ = match on_failure {
        OnFailure::Remove => instance.remove(),
        OnFailure::EmptyOut => instance.empty_out(),
        OnFailure::Leave => Ok(()),
    };
}

/// Longest a watchdog may take to stop its server (fast, then immediate shutdown, then kill).
pub const STOP_LIMIT: Duration = Duration::from_secs(30);

/// Asks a watchdog this process has just launched or claimed to stop its server and dispose
/// of the directory, exactly as at its timeout, and waits until it has.
pub fn stop_watchdog(pid: Pid, dir: &str) -> Result<()> {
    crate::os::process::signal(pid, nix::sys::signal::Signal::SIGTERM)?;
    wait_gone(pid, dir, STOP_LIMIT)
}

/// Waits until the watchdog `pid` (of `dir`) has exited, at most `limit`.
pub fn wait_gone(pid: Pid, dir: &str, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while crate::os::process::alive(pid) {
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
