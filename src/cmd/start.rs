//! `pgtmp [start]`: a running cluster and its URL (or `--format`) on stdout; and the start
//! path `pgtmp run` shares.

use super::Session;
use crate::cli::{GlobalArgs, StartArgs};
use crate::cluster;
use crate::discover::{self, Installation};
use crate::format::{self, Cluster};
use crate::instance::Instance;
use crate::pool::{self, Pool, Taken};
use crate::prestart::{self, Claim};
use crate::secret;
use crate::trace;
use crate::url;
use crate::watchdog::{self, OnFailure, Plan};
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::OwnedFd;

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
    let format = args.format.unwrap_or_default();
    let launched = launch(&args, global, None)?;
    let text = launched
        .cluster
        .render(format, || launched.install.version().ok());
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .context(
            "cannot print the URL (stdout closed?); the cluster stops after its idle timeout",
        )?;
    drop(stdout);
    trace::phase("print");
    launched.refill_pool();
    Ok(())
}

/// A started cluster, and what is needed to top up the pool once it has been reported.
pub struct Launched {
    pub cluster: Cluster,
    pub install: Installation,
    /// Set when the cluster came from the pool.
    top_up: Option<TopUp>,
}

/// What the background work after a start from the pool needs.
struct TopUp {
    pool: Pool,
    session: Session,
    socket_port: u16,
    prestart: prestart::Settings,
}

impl Launched {
    /// After a start from the pool: pre-starts servers if asked to (at the caller's priority),
    /// then refills the pool (at the lowest), both in detached background processes.
    pub fn refill_pool(self) {
        let Some(top_up) = self.top_up else {
            return;
        };
        let owner = prestart::Owner {
            install: &self.install,
            user: top_up.session.user(),
            owner_uid: top_up.session.invoker.uid.as_raw(),
            state_dir: &top_up.session.state,
            socket_port: top_up.socket_port,
        };
        prestart::replenish_in_background(&top_up.pool, &owner, self.cluster.tcp, &top_up.prestart);
        top_up
            .pool
            .refill_in_background(&self.install, top_up.session.user());
        trace::phase("background");
    }
}

/// Starts a cluster as `pgtmp start` does: the one start path, shared with `pgtmp run`.
/// Drops root privileges for good (see `Session::establish`). With a `lifeline` the watchdog
/// stops the cluster when the lifeline is cut and never for being idle while it is held.
pub fn launch(
    args: &StartArgs,
    global: &GlobalArgs,
    lifeline: Option<OwnedFd>,
) -> Result<Launched> {
    // Everything that can be refused without touching anything is checked first.
    format::check(args.format.unwrap_or_default(), args.wants_tcp())?;
    let options = cluster::split_options(&args.options)?;
    let prestart = prestart::Settings::from_env()?;
    let install = discover::find(global.bindir.as_deref())?;
    let dir = args.dir.as_deref().map(super::absolute_dir).transpose()?;
    let found = dir.as_deref().map(super::inspect_dir).transpose()?;
    let tcp = args.wants_tcp();
    trace::phase("discover");
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
        (true, None) => portpicker::pick_unused_port()
            .context("no free TCP port on 127.0.0.1; free one, or use the Unix socket (drop -t)")?,
        (false, None) => socket_port(),
    };
    let password = if tcp { Some(secret::password()?) } else { None };
    let name = pool::new_name()?;

    let session = Session::establish(global, dir.as_deref())?;
    let user = session.user().to_string();
    trace::phase("session");
    let (instance, on_failure, pool, taken) = match (dir, found) {
        (Some(dir), Some(found)) => {
            let on_failure = super::prepare_dir(&install, &dir, found, &session)?;
            let instance = Instance::new(dir);
            if on_failure == OnFailure::Leave {
                super::check_startable(&install, &instance)?;
                instance.make_private()?;
            }
            (instance, on_failure, None, Taken::Claimed)
        }
        _ => {
            let pool = Pool::open(&session.state, &install, &user)?;
            // Only starts with the settings every pre-started server has can use one; `run`
            // needs a watchdog that holds its lifeline.
            let claim = Claim {
                timeout: args.idle_timeout(),
                keep: args.keep,
            };
            if args.port.is_none()
                && options.is_empty()
                && lifeline.is_none()
                && let Some(claimed) = prestart::claim(&pool, &session.state, tcp, port, claim)?
            {
                trace::phase("claim-running");
                let url = match &claimed.password {
                    Some(password) => url::tcp_url(&user, password, claimed.state.port),
                    None => url::socket_url(&user, &claimed.instance.dir),
                };
                let cluster = Cluster {
                    url,
                    socket_dir: claimed.instance.dir.clone(),
                    data_dir: claimed.instance.data(),
                    port: claimed.state.port,
                    tcp,
                    user,
                    password: claimed.password,
                    server_pid: claimed.state.postmaster_pid,
                    watchdog_pid: claimed.state.watchdog_pid,
                    bindir: install.bindir.clone(),
                    timeout: claim.timeout,
                    keep: claim.keep,
                };
                return Ok(Launched {
                    cluster,
                    install,
                    top_up: Some(TopUp {
                        pool,
                        session,
                        socket_port: port,
                        prestart,
                    }),
                });
            }
            let (instance, taken) =
                pool.take(&session.state.instance_path(&name), &install, &user)?;
            (instance, OnFailure::Remove, Some(pool), taken)
        }
    };
    trace::phase(match (&pool, taken) {
        (None, _) => "prepare -d",
        (Some(_), Taken::Claimed) => "claim",
        (Some(_), Taken::Copied) => "copy",
        (Some(_), Taken::Initialized) => "initdb",
    });
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
        create_test: taken == Taken::Initialized,
        registration: session.state.registration_for(&instance.dir, &name),
        waiting: None,
        lifeline,
    };
    let started = watchdog::launch(plan)?;
    let url = match &password {
        Some(password) => url::tcp_url(&user, password, started.port),
        None => url::socket_url(&user, &instance.dir),
    };
    // The watchdog records its state before it reports the server ready.
    let state = instance.read_state()?.with_context(|| {
        format!(
            "the watchdog of {} recorded no state",
            instance.dir.display()
        )
    })?;
    let cluster = Cluster {
        url,
        socket_dir: instance.dir.clone(),
        data_dir: instance.data(),
        port: started.port,
        tcp,
        user,
        password,
        server_pid: state.postmaster_pid,
        watchdog_pid: state.watchdog_pid,
        bindir: install.bindir.clone(),
        timeout: args.idle_timeout(),
        keep: args.keep,
    };
    let top_up = pool.map(|pool| TopUp {
        pool,
        session,
        socket_port: port,
        prestart,
    });
    Ok(Launched {
        cluster,
        install,
        top_up,
    })
}
