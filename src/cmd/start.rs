//! `pgtmp [start]`: a running cluster and its URL (or `--format`) on stdout; and the start
//! path `pgtmp run` shares.

use super::Session;
use crate::cli::{GlobalArgs, StartArgs};
use crate::lifecycle::cache::{self, Cache};
use crate::lifecycle::claim::Claim;
use crate::lifecycle::pool::{self, Pool, Taken};
use crate::lifecycle::prestart;
use crate::lifecycle::sweep;
use crate::lifecycle::watchdog::{self, OnFailure, Plan};
use crate::os::detach::{self, Forked};
use crate::os::secret;
use crate::os::testpause;
use crate::output::exit;
use crate::output::format::{self, Cluster};
use crate::output::trace;
use crate::output::url;
use crate::server::cluster;
use crate::server::discover::{self, Installation};
use crate::state::instance::Instance;
use crate::state::ownership;
use crate::state::statedir::StateDir;
use crate::testdata::files::{Server, TestData};
use crate::testdata::stock;
use anyhow::{Context, Result, anyhow, bail};
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

/// The lowest port an unprivileged account may listen on (Linux lets the administrator lower
/// it from 1024).
fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(1024)
}

pub fn run(args: StartArgs, global: &GlobalArgs) -> Result<()> {
    let format = args.format.unwrap_or_default();
    let launched = launch(&args, global, None)?;
    testpause::point("reported");
    let text = launched
        .cluster
        .render(format, || launched.install.version().ok());
    let mut stdout = std::io::stdout().lock();
    if let Err(err) = writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        // Nobody learns the URL: the cluster would only wait for its idle timeout.
        let dir = launched.cluster.socket_dir.display().to_string();
        let stopped = super::stop::stop_watchdog(launched.cluster.watchdog_pid, &dir);
        let err = anyhow!(err).context(match stopped {
            Ok(()) => "cannot print the URL (stdout closed or full?); the cluster was stopped"
                .to_string(),
            Err(stop_err) => format!(
                "cannot print the URL (stdout closed or full?), nor stop the cluster ({stop_err:#}); stop it with `pgtmp stop -d {dir}`"
            ),
        });
        return Err(err);
    }
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
    /// Set when -f or --now prepared the cluster.
    test_data: Option<FollowUp>,
    /// Where the background sweep looks.
    state: StateDir,
}

/// What the background work after a start with test data needs.
struct FollowUp {
    data: TestData,
    cache: Option<Cache>,
    hit: bool,
    options: Vec<String>,
    /// Ready copies to keep beside the cache entry.
    ready_copies: usize,
}

/// What the background work after a start from the pool needs.
struct TopUp {
    pool: Pool,
    session: Session,
    prestart: prestart::Settings,
}

impl Launched {
    /// After a start: fills the clone stock and the schema cache (with test data); with a
    /// start from the pool, pre-starts servers if asked to (at the caller's priority) and
    /// refills the pool (at the lowest). All in detached background processes.
    pub fn refill_pool(self) {
        if let Some(follow) = &self.test_data {
            let server = Server {
                socket_dir: &self.cluster.socket_dir,
                port: self.cluster.port,
                user: &self.cluster.user,
            };
            prepare_in_background(&server, follow, &self.install);
        }
        sweep::in_background(&self.state);
        let Some(top_up) = self.top_up else {
            return;
        };
        let owner = prestart::Owner {
            install: &self.install,
            user: top_up.session.user(),
            owner_uid: top_up.session.invoker.uid.as_raw(),
            state_dir: &top_up.session.state,
            socket_port: socket_port(),
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
    cluster::ensure_open_files()?;
    let options = cluster::split_options(&args.options)?;
    let prestart = prestart::Settings::from_env()?;
    let pool_size = pool::size_from_env()?;
    crate::lifecycle::sweep::cache_max_age()?;
    let install = discover::find(global.bindir.as_deref())?;
    let dir = args.dir.as_deref().map(super::absolute_dir).transpose()?;
    let found = dir.as_deref().map(super::inspect_dir).transpose()?;
    // -f files are read now, as the invoking account.
    let data = TestData::read(&args.schema_files, args.now.as_deref(), &install)?;
    if data.is_some() && found == Some(crate::state::instance::Found::Cluster) {
        return Err(exit::usage(
            "-f and --now prepare a new cluster, but -d names an existing one; give an empty or missing directory",
        ));
    }
    let tcp = args.wants_tcp();
    trace::phase("discover");
    if let Some(port) = args.port
        && port < unprivileged_port_start()
    {
        return Err(exit::usage(format!(
            "-p {port} is a privileged port (below {}), which the server, running as an \
             unprivileged account, cannot listen on; choose a port of {} or above, or drop -p \
             to get a free one",
            unprivileged_port_start(),
            unprivileged_port_start()
        )));
    }
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

    crate::os::account::check_has_entry()?;
    let session = Session::establish(global, dir.as_deref())?;
    let user = session.user().to_string();
    trace::phase("session");
    // Held while a directory under PGTMP_DIR exists that this start has not locked yet, so
    // that a sweep never takes it for a dead run's leftover (see ownership.rs).
    let mut gate = None;
    let cache = match &data {
        Some(data) if dir.is_none() && !args.no_cache => Some(Cache::open(
            &session.state,
            &cache::key(&install, &user, &options, data)?,
        )?),
        _ => None,
    };
    let cached = match &cache {
        Some(cache) => {
            gate = Some(ownership::lock_shared(&session.state.path)?);
            cache.take(&session.state.instance_path(&name))?
        }
        None => None,
    };
    let hit = cached.is_some();
    let (instance, on_failure, pool, taken) = match (dir, found, cached) {
        (Some(dir), Some(found), _) => {
            let on_failure = super::prepare_dir(&install, &dir, found, &session)?;
            let instance = Instance::new(dir);
            if on_failure == OnFailure::Leave {
                super::check_startable(&install, &instance)?;
                instance.make_private()?;
            }
            (instance, on_failure, None, Taken::Claimed)
        }
        (_, _, Some(instance)) => (instance, OnFailure::Remove, None, Taken::Claimed),
        _ => {
            if gate.is_none() {
                gate = Some(ownership::lock_shared(&session.state.path)?);
            }
            let pool = Pool::open(&session.state, &install, &user, pool_size)?;
            // Only starts with the settings every pre-started server has can use one; `run`
            // needs a watchdog that holds its lifeline.
            let claim = Claim {
                timeout: args.idle_timeout(),
                keep: args.keep,
            };
            if args.port.is_none()
                && options.is_empty()
                && data.is_none()
                && lifeline.is_none()
                && let Some(claimed) = prestart::claim(&pool, &session.state, tcp, port, claim)?
            {
                trace::phase("claim-running");
                // A running server's directory is its watchdog's (locked); -k is recorded for
                // the sweep as for any start.
                if claim.keep {
                    claimed.instance.mark_kept()?;
                }
                let state = session.state.clone();
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
                        prestart,
                    }),
                    test_data: None,
                    state,
                });
            }
            let (instance, taken) =
                pool.take(&session.state.instance_path(&name), &install, &user)?;
            (instance, OnFailure::Remove, Some(pool), taken)
        }
    };
    trace::phase(match (&pool, taken) {
        (None, _) if hit => "cached",
        (None, _) => "prepare -d",
        (Some(_), Taken::Claimed) => "claim",
        (Some(_), Taken::Copied) => "copy",
        (Some(_), Taken::Initialized) => "initdb",
    });
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
        // A directory once started with -k stays kept, whether or not -k is given again.
        keep: args.keep || (on_failure == OnFailure::Leave && instance.is_kept()),
        options: options.clone(),
        on_failure,
        create_test: taken == Taken::Initialized,
        registration: session.state.registration_for(&instance.dir, &name),
        waiting: None,
        lifeline,
        _lock: lock,
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
    let cluster = Cluster {
        url,
        socket_dir: instance.dir.clone(),
        data_dir: instance.data(),
        port: started.port,
        tcp,
        user,
        password,
        server_pid: started.server_pid,
        watchdog_pid: started.watchdog_pid,
        bindir: install.bindir.clone(),
        timeout: args.idle_timeout(),
        keep: args.keep,
    };
    let state = session.state.clone();
    let top_up = pool.map(|pool| TopUp {
        pool,
        session,
        prestart,
    });
    let test_data = data.map(|data| FollowUp {
        data,
        cache,
        hit,
        options,
        ready_copies: pool_size.min(cache::MAX_READY),
    });
    Ok(Launched {
        cluster,
        install,
        top_up,
        test_data,
        state,
    })
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
    watchdog::dispose(instance, on_failure);
    err
}

/// Detached and at low priority: fills the clone stock, then builds the schema cache entry
/// after a miss and keeps copies of it ready for the next start.
fn prepare_in_background(server: &Server, follow: &FollowUp, install: &Installation) {
    if let Ok(Forked::Child) = detach::fork_detached() {
        detach::lower_priority();
        let mut failed = stock::refill(server).is_err();
        if let Some(cache) = &follow.cache {
            if !follow.hit {
                // Recorded like the pool's refill.error: the next start merely loads again.
                let error = cache.dir.with_extension("error");
                match cache.build(install, server.user, &follow.options, &follow.data) {
                    Ok(()) => {
                        let _ = std::fs::remove_file(&error);
                    }
                    Err(err) => {
                        let _ = std::fs::write(&error, format!("{err:#}\n"));
                        failed = true;
                    }
                }
            }
            failed |= cache.refill(follow.ready_copies).is_err();
        }
        std::process::exit(i32::from(failed));
    }
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
