//! `pgtmp [start]`: a running cluster and its URL on stdout.

use super::Session;
use crate::cache::{self, Cache};
use crate::cli::{GlobalArgs, StartArgs};
use crate::cluster;
use crate::detach::{self, Forked};
use crate::discover::{self, Installation};
use crate::exit;
use crate::instance::Instance;
use crate::pool::{self, Pool};
use crate::secret;
use crate::stock;
use crate::testdata::{Server, TestData};
use crate::url;
use crate::watchdog::{self, OnFailure, Plan};
use anyhow::{Context, Result, anyhow, bail};
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
    // -f files are read now, as the invoking account.
    let data = TestData::from_args(&args, &install)?;
    if data.is_some() && found == Some(crate::instance::Found::Cluster) {
        return Err(exit::usage(
            "-f and --now prepare a new cluster, but -d names an existing one; give an empty or missing directory",
        ));
    }
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
        (true, None) => portpicker::pick_unused_port()
            .context("no free TCP port on 127.0.0.1; free one, or use the Unix socket (drop -t)")?,
        (false, None) => socket_port(),
    };
    let password = if tcp { Some(secret::password()?) } else { None };
    let name = pool::new_name()?;

    let session = Session::establish(global, dir.as_deref())?;
    let user = session.user().to_string();
    let cache = match &data {
        Some(data) if dir.is_none() && !args.no_cache => Some(Cache::open(
            &session.state,
            &cache::key(&install, &user, &options, data)?,
        )),
        _ => None,
    };
    let cached = match &cache {
        Some(cache) => cache.take(&session.state.instance_path(&name))?,
        None => None,
    };
    let hit = cached.is_some();
    let (instance, on_failure, pool) = match (dir, found, cached) {
        (Some(dir), Some(found), _) => {
            let on_failure = super::prepare_dir(&install, &dir, found, &session)?;
            let instance = Instance::new(dir);
            if on_failure == OnFailure::Leave {
                super::check_startable(&install, &instance)?;
                instance.make_private()?;
            }
            (instance, on_failure, None)
        }
        (_, _, Some(instance)) => (instance, OnFailure::Remove, None),
        _ => {
            let pool = Pool::open(&session.state, &install, &user)?;
            let instance = pool.take(&session.state.instance_path(&name), &install, &user)?;
            (instance, OnFailure::Remove, Some(pool))
        }
    };

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
        options: options.clone(),
        on_failure,
        registration: session.state.registration_for(&instance.dir, &name),
    };
    let started = watchdog::launch(plan)?;
    let url = match &password {
        Some(password) => url::tcp_url(&user, password, started.port),
        None => url::socket_url(&user, &instance.dir),
    };
    let server = Server {
        socket_dir: &instance.dir,
        port: started.port,
        user: &user,
    };
    if let Some(data) = data.as_ref().filter(|_| !hit)
        && let Err(err) = data.load(&server)
    {
        return Err(abandon(err, &instance, on_failure, args.keep, &url));
    }
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
    if let Some(data) = &data {
        prepare_in_background(&server, cache.as_ref(), hit, &install, &options, data);
    }
    Ok(())
}

/// After a failed load: the error, and the cluster stopped and removed; with -k it stays
/// running for inspection and the error gives its URL. An invalid --now never keeps anything.
fn abandon(
    err: anyhow::Error,
    instance: &Instance,
    on_failure: OnFailure,
    keep: bool,
    url: &str,
) -> anyhow::Error {
    if keep && exit::code_for(&err) != exit::USAGE {
        return anyhow!("{err:#}; the cluster stays for inspection (-k): {url}");
    }
    let dir = instance.dir.display().to_string();
    if let Ok(Some(state)) = instance.read_state()
        && let Err(stop_err) = super::stop::stop_watchdog(state.watchdog_pid, &dir)
    {
        return err.context(format!("{stop_err:#}"));
    }
    // With -k the watchdog kept the directory; it was made for this start.
    let _ = match on_failure {
        OnFailure::Remove => instance.remove(),
        OnFailure::EmptyOut => instance.empty_out(),
        OnFailure::Leave => Ok(()),
    };
    err
}

/// Detached and at low priority: fills the clone stock, then builds the schema cache entry
/// after a miss and keeps copies of it ready for the next start.
fn prepare_in_background(
    server: &Server,
    cache: Option<&Cache>,
    hit: bool,
    install: &Installation,
    options: &[String],
    data: &TestData,
) {
    if let Ok(Forked::Child) = detach::fork_detached() {
        detach::lower_priority();
        let mut failed = stock::refill(server).is_err();
        if let Some(cache) = cache {
            if !hit {
                // Recorded like the pool's refill.error: the next start merely loads again.
                let error = cache.dir.with_extension("error");
                match cache.build(install, server.user, options, data) {
                    Ok(()) => {
                        let _ = std::fs::remove_file(&error);
                    }
                    Err(err) => {
                        let _ = std::fs::write(&error, format!("{err:#}\n"));
                        failed = true;
                    }
                }
            }
            let size = pool::configured_size(std::env::var("PGTMP_POOL_SIZE").ok().as_deref())
                .unwrap_or(pool::DEFAULT_SIZE);
            failed |= cache.refill(size).is_err();
        }
        std::process::exit(i32::from(failed));
    }
}
