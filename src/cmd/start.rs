//! `pgtmp [start]`: a running cluster and its URL on stdout.

use super::Session;
use crate::cli::{GlobalArgs, StartArgs};
use crate::cluster;
use crate::discover;
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
            // Only starts with the settings every pre-started server has can use one.
            let claim = Claim {
                timeout: args.idle_timeout(),
                keep: args.keep,
            };
            if args.port.is_none()
                && options.is_empty()
                && let Some(claimed) = prestart::claim(&pool, &session.state, tcp, port, claim)?
            {
                trace::phase("claim-running");
                let url = match &claimed.password {
                    Some(password) => url::tcp_url(&user, password, claimed.state.port),
                    None => url::socket_url(&user, &claimed.instance.dir),
                };
                print_url(&url)?;
                top_up(&pool, &session, &install, tcp, port, &prestart);
                return Ok(());
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
    };
    let started = watchdog::launch(plan)?;
    let url = match &password {
        Some(password) => url::tcp_url(&user, password, started.port),
        None => url::socket_url(&user, &instance.dir),
    };
    print_url(&url)?;
    if let Some(pool) = pool {
        top_up(&pool, &session, &install, tcp, port, &prestart);
    }
    Ok(())
}

fn print_url(url: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{url}")
        .and_then(|()| stdout.flush())
        .context(
            "cannot print the URL (stdout closed?); the cluster stops after its idle timeout",
        )?;
    trace::phase("print");
    Ok(())
}

/// After a start from the pool: pre-starts servers if asked to (at the caller's priority),
/// then refills the pool (at the lowest).
fn top_up(
    pool: &Pool,
    session: &Session,
    install: &discover::Installation,
    tcp: bool,
    port: u16,
    prestart: &prestart::Settings,
) {
    let owner = prestart::Owner {
        install,
        user: session.user(),
        owner_uid: session.invoker.uid.as_raw(),
        state_dir: &session.state,
        socket_port: port,
    };
    prestart::replenish_in_background(pool, &owner, tcp, prestart);
    pool.refill_in_background(install, session.user());
    trace::phase("background");
}
