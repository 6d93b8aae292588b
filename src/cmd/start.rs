//! `pgtmp [start]`: a running cluster and its URL on stdout.

use super::Session;
use crate::cli::{GlobalArgs, StartArgs};
use crate::cluster;
use crate::discover;
use crate::instance::Instance;
use crate::ownership;
use crate::pool::{self, Pool};
use crate::secret;
use crate::sweep;
use crate::testpause;
use crate::url;
use crate::watchdog::{self, OnFailure, Plan};
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};

/// The port number of the socket file when there is no TCP listener: libpq's default, or the
/// caller's $PGPORT, so that the port-less URL works even with PGPORT exported.
fn socket_port() -> u16 {
    std::env::var("PGPORT")
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|&p| p > 0)
        .unwrap_or(5432)
}

pub fn run(args: StartArgs, global: &GlobalArgs) -> Result<()> {
    // Everything that can be refused without touching anything is checked first.
    let options = cluster::split_options(&args.options)?;
    let install = discover::find(global.bindir.as_deref())?;
    let dir = args.dir.as_deref().map(super::absolute_dir).transpose()?;
    let found = dir.as_deref().map(super::inspect_dir).transpose()?;
    let tcp = args.wants_tcp();
    if let Some(port) = args.port
        && let Err(err) = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
    {
        let reason = match err.kind() {
            std::io::ErrorKind::AddrInUse => "is already in use".to_string(),
            _ => format!("cannot be used ({err})"),
        };
        bail!(
            "port {port} on 127.0.0.1 {reason}; choose another with -p, or leave -p out to get a free one"
        );
    }

    // Chosen before a directory is claimed, so that nothing can fail between claiming it and
    // handing it to the watchdog, which disposes of it if the start fails.
    let port = match (tcp, args.port) {
        (_, Some(port)) => port,
        (true, None) => testpause::first_port()
            .or_else(portpicker::pick_unused_port)
            .context("no free TCP port on 127.0.0.1; free one, or use the Unix socket (drop -t)")?,
        (false, None) => socket_port(),
    };
    let password = if tcp { Some(secret::password()?) } else { None };
    let name = pool::new_name()?;

    let session = Session::establish(global, dir.as_deref())?;
    let user = session.user().to_string();
    // Held while a directory under PGTMP_DIR exists that this start has not locked yet, so
    // that a sweep never takes it for a dead run's leftover (see ownership.rs).
    let mut gate = None;
    let (instance, on_failure, pool) = match (dir, found) {
        (Some(dir), Some(found)) => {
            let on_failure = super::prepare_dir(&install, &dir, found, &session)?;
            let instance = Instance::new(dir);
            if on_failure == OnFailure::Leave {
                super::check_startable(&install, &instance)?;
                instance.make_private()?;
            }
            (instance, on_failure, None)
        }
        _ => {
            gate = Some(ownership::lock_shared(&session.state.path)?);
            let pool = Pool::open(&session.state, &install, &user)?;
            let instance = pool.take(&session.state.instance_path(&name), &install, &user)?;
            (instance, OnFailure::Remove, Some(pool))
        }
    };
    testpause::point("claimed");
    // From here until the watchdog reports, the directory is only ever locked by this start
    // and then by its watchdog: a sweep leaves it alone, and removes it if both are killed.
    let lock = match lock_instance(&instance, args.keep) {
        Ok(lock) => lock,
        Err(err) => {
            watchdog::dispose(&instance, on_failure);
            return Err(err);
        }
    };
    drop(gate);
    testpause::point("locked");

    let plan = Plan {
        install: install.clone(),
        instance: instance.clone(),
        user: user.clone(),
        owner_uid: session.invoker.uid.as_raw(),
        tcp,
        port,
        port_fixed: args.port.is_some(),
        password: password.clone(),
        timeout: args.idle_timeout(),
        keep: args.keep,
        options,
        on_failure,
        registration: session.state.registration_for(&instance.dir, &name),
        lock: Some(lock),
    };
    let started = watchdog::launch(plan)?;
    let url = match &password {
        Some(password) => url::tcp_url(&user, password, started.port),
        None => url::socket_url(&user, &instance.dir),
    };
    testpause::point("reported");
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{url}")
        .and_then(|()| stdout.flush())
        .context(
            "cannot print the URL (stdout closed?); the cluster stops after its idle timeout",
        )?;
    drop(stdout);
    if let Some(pool) = pool {
        pool.refill_in_background(&install, &user);
    }
    sweep::in_background(&session.state);
    Ok(())
}

/// Locks a directory for this start (and the watchdog it forks); records -k so that no sweep
/// removes a kept cluster whose watchdog is gone.
fn lock_instance(instance: &Instance, keep: bool) -> Result<ownership::DirLock> {
    let dir = instance.dir.display();
    let lock = ownership::try_lock(&instance.dir)?.with_context(|| {
        format!("a cluster is already running in {dir}; stop it first with `pgtmp stop -d {dir}`")
    })?;
    if keep {
        instance.mark_kept()?;
    }
    Ok(lock)
}
