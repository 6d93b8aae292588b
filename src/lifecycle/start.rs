//! The start path, shared by `pgtmp start` and `pgtmp run`: check what was asked, establish
//! the session, acquire a directory (or a running server), hand it to a watchdog, load the
//! test data, and report; then the follow-up work in the background.

use crate::lifecycle::cache::{self, Cache};
use crate::lifecycle::claim::Claim;
use crate::lifecycle::directory;
use crate::lifecycle::owner::Owner;
use crate::lifecycle::pool::{self, Pool, Taken};
use crate::lifecycle::prestart;
use crate::lifecycle::session::Session;
use crate::lifecycle::sweep;
use crate::lifecycle::tcp_ready;
use crate::lifecycle::watchdog::{self, OnFailure, Plan};
use crate::os::account::RunAs;
use crate::os::detach::{self, Forked};
use crate::os::process::Pid;
use crate::os::secret;
use crate::os::testpause;
use crate::output::exit;
use crate::output::format::{self, Cluster, Format};
use crate::output::trace;
use crate::output::url;
use crate::server::cluster;
use crate::server::discover::{self, Installation};
use crate::state::instance::{Found, Instance};
use crate::state::ownership;
use crate::state::statedir::StateDir;
use crate::testdata::files::{Server, TestData};
use crate::testdata::stock;
use anyhow::{Context, Result, anyhow, bail};
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

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

/// What a start is asked for, as given: `cli/` fills it in from the command line and the
/// PGTMP_* variables (those it validates itself: the pool, pre-started servers, the sweep).
pub struct StartRequest {
    pub format: Format,
    /// -t, or implied by -p.
    pub tcp: bool,
    /// With `tcp`: the address to listen on instead of 127.0.0.1; only `pgtmp serve` sets it
    /// (clients beyond loopback must use TLS, see initdb::PG_HBA).
    pub listen: Option<std::net::IpAddr>,
    pub port: Option<u16>,
    /// Seconds without a client before the cluster stops; 0: never. With an owner: counted
    /// from the owner's exit, and 0 stops it as soon as no client is connected.
    pub timeout: u64,
    pub keep: bool,
    /// `--owner-pid`: the process whose life the cluster follows, not yet checked.
    pub owner_pid: Option<Pid>,
    /// The -o strings, not yet split into arguments.
    pub options: Vec<String>,
    pub dir: Option<PathBuf>,
    pub schema_files: Vec<PathBuf>,
    pub now: Option<String>,
    pub no_cache: bool,
    /// Which PostgreSQL installation: --bindir, --pg, PGTMP_PG_PATH.
    pub install: discover::Choice,
    pub run_as: Option<String>,
    pub run_as_from_env: bool,
    /// Ready pool entries kept per installation, and the most the pool grows to after bursts.
    pub pool_size: usize,
    pub pool_max: usize,
    pub prestart: prestart::Settings,
    /// What the background sweep applies; None: no sweep.
    pub sweep_after: Option<sweep::Policy>,
}

impl StartRequest {
    fn run_as(&self) -> RunAs<'_> {
        RunAs {
            name: self.run_as.as_deref(),
            from_env: self.run_as_from_env,
        }
    }
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
    /// What the background sweep applies; None: no sweep (PGTMP_NO_SWEEP).
    sweep_after: Option<sweep::Policy>,
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
    /// Whether the start could have used a pre-started server (see [`claimable`]), and did.
    served: prestart::Served,
}

impl Launched {
    /// After a start: fills the clone stock and the schema cache (with test data); with a
    /// start from the pool, pre-starts servers (for a series, or PGTMP_PRESTART; at the
    /// caller's priority) and refills the pool (at the lowest). All in detached background
    /// processes.
    pub fn refill_pool(self) {
        if let Some(follow) = &self.test_data {
            let server = Server {
                socket_dir: &self.cluster.socket_dir,
                port: self.cluster.port,
                user: &self.cluster.user,
            };
            let budget = self
                .sweep_after
                .map(|policy| (&self.state, policy.disk_max));
            prepare_in_background(&server, follow, &self.install, budget);
        }
        if let Some(policy) = self.sweep_after {
            sweep::in_background(&self.state, policy);
        }
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
        prestart::replenish_in_background(
            &top_up.pool,
            &owner,
            self.cluster.tcp,
            top_up.served,
            &top_up.prestart,
        );
        top_up
            .pool
            .refill_in_background(&self.install, top_up.session.user());
        trace::phase("background");
    }
}

/// What a start was asked for, checked before anything is touched (so that a refusal leaves
/// nothing behind), with the port, password and directory name already chosen: nothing can
/// fail between claiming a directory and handing it to the watchdog, which disposes of it if
/// the start fails.
struct Checked<'a> {
    args: &'a StartRequest,
    install: Installation,
    options: Vec<String>,
    dir: Option<PathBuf>,
    found: Option<Found>,
    data: Option<TestData>,
    tcp: bool,
    port: u16,
    password: Option<String>,
    /// The role has `password` already: it came prepared with the pool entry.
    password_set: bool,
    name: String,
    owner: Option<Owner>,
}

/// Where the start's directory came from.
enum Acquired {
    /// `-d DIR`, prepared if it was empty or missing.
    Dir(Instance, OnFailure),
    /// A ready copy of the schema cache, or one copied now (then locked before the copy).
    Cached(Instance, Option<ownership::DirLock>),
    /// The pool: a ready entry, a copy of its template, or a fresh initdb (then locked before
    /// the copy or initdb).
    Pool(Instance, Taken, Pool, Option<ownership::DirLock>),
    /// A pre-started server, already running under its own watchdog.
    Running(prestart::Claimed, Pool),
}

/// Starts a cluster as `pgtmp start` does: the one start path, shared with `pgtmp run`.
/// Drops root privileges for good (see `Session::establish`). With a `lifeline` the watchdog
/// stops the cluster when the lifeline is cut and never for being idle while it is held.
///
/// In order: check the request, establish the session, acquire a directory (or a running
/// server), hand it to a watchdog, load the test data, and report.
pub fn launch(args: &StartRequest, lifeline: Option<OwnedFd>) -> Result<Launched> {
    let mut req = check(args)?;
    crate::os::account::check_has_entry()?;
    let session = Session::establish(args.run_as(), req.dir.as_deref())?;
    trace::phase("session");
    let cache = open_cache(&req, &session)?;
    // Held while a directory under PGTMP_DIR exists that this start has not locked yet, so
    // that a sweep never takes it for a dead run's leftover (see ownership.rs).
    let mut gate = None;
    let claimable = claimable(&req, lifeline.is_some());
    let acquired = acquire(
        &req,
        &session,
        cache.as_ref(),
        lifeline.is_some(),
        &mut gate,
    )?;
    let (instance, on_failure, taken, pool, hit, early) = match acquired {
        Acquired::Running(claimed, pool) => return claimed_server(req, session, claimed, pool),
        Acquired::Dir(instance, on_failure) => (instance, on_failure, None, None, false, None),
        Acquired::Cached(instance, early) => (instance, OnFailure::Remove, None, None, true, early),
        Acquired::Pool(instance, taken, pool, early) => (
            instance,
            OnFailure::Remove,
            Some(taken),
            Some(pool),
            false,
            early,
        ),
    };
    trace::phase(match taken {
        None if hit => "cached",
        None => "prepare -d",
        Some(Taken::Claimed) => "claim",
        Some(Taken::Copied) => "copy",
        Some(Taken::Initialized) => "initdb",
    });
    let cached = cache.as_ref().filter(|_| hit);
    use_prepared_password(&mut req, &instance, pool.as_ref(), cached);
    testpause::point("claimed");
    let plan = plan(
        &req, &session, &instance, on_failure, taken, lifeline, early,
    )?;
    drop(gate);
    testpause::point("locked");
    let started = watchdog::launch(plan)?;
    let cluster = report(&req, session.user(), &instance, &started);
    if let Some(data) = req.data.as_ref().filter(|_| !hit) {
        let server = Server {
            socket_dir: &instance.dir,
            port: started.port,
            user: session.user(),
        };
        if let Err(err) = data.load(&server) {
            return Err(abandon(err, &instance, on_failure, args.keep, &cluster.url));
        }
    }
    let test_data = req.data.take().map(|data| FollowUp {
        data,
        cache,
        hit,
        options: req.options.clone(),
        ready_copies: req.args.pool_size.min(cache::MAX_READY),
    });
    Ok(Launched {
        cluster,
        install: req.install,
        test_data,
        state: session.state.clone(),
        sweep_after: req.args.sweep_after,
        top_up: pool.map(|pool| TopUp {
            pool,
            session,
            prestart: req.args.prestart,
            served: if claimable {
                prestart::Served::Missed
            } else {
                prestart::Served::Unclaimable
            },
        }),
    })
}

/// Everything that can be refused without touching anything, checked first; then the port,
/// the password and the directory's name are chosen.
fn check(args: &StartRequest) -> Result<Checked<'_>> {
    format::check(args.format, args.tcp)?;
    // The invoker's real uid: root's session switch comes later.
    let uid = nix::unistd::getuid().as_raw();
    let owner = args
        .owner_pid
        .map(|pid| Owner::check(pid, uid))
        .transpose()?;
    cluster::ensure_open_files()?;
    let options = cluster::split_options(&args.options)?;
    let install = discover::choose(&args.install)?;
    let dir = args.dir.as_deref().map(directory::absolute).transpose()?;
    let found = dir.as_deref().map(directory::inspect).transpose()?;
    // -f files are read now, as the invoking account.
    let data = TestData::read(&args.schema_files, args.now.as_deref(), &install)?;
    if data.as_ref().is_some_and(|d| d.now.is_some())
        && options.iter().any(|o| o.contains("search_path"))
    {
        return Err(exit::usage(
            "-o sets search_path, which would hide the frozen now() of --now (schema pgtmp must              come before pg_catalog); drop it from -o, and set it in the session or the -f files              if you need to, keeping pgtmp before pg_catalog",
        ));
    }
    if data.is_some() && matches!(found, Some(Found::Cluster | Found::PgTmp(_))) {
        return Err(exit::usage(
            "-f and --now prepare a new cluster, but -d names an existing one; give an empty or missing directory",
        ));
    }
    let tcp = args.tcp;
    trace::phase("discover");
    if let Some(port) = args.port {
        check_port(port)?;
    }
    let port = match (tcp, args.port) {
        (_, Some(port)) => port,
        (true, None) => testpause::first_port()
            .or_else(portpicker::pick_unused_port)
            .context("no free TCP port on 127.0.0.1; free one, or use the Unix socket (drop -t)")?,
        (false, None) => socket_port(),
    };
    Ok(Checked {
        args,
        install,
        options,
        dir,
        found,
        data,
        tcp,
        port,
        password: if tcp { Some(secret::password()?) } else { None },
        password_set: false,
        name: pool::new_name()?,
        owner,
    })
}

/// A `-p PORT` the server can listen on: not privileged, and free now.
fn check_port(port: u16) -> Result<()> {
    if port < unprivileged_port_start() {
        return Err(exit::usage(format!(
            "-p {port} is a privileged port (below {}), which the server, running as an \
             unprivileged account, cannot listen on; choose a port of {} or above, or drop -p \
             to get a free one",
            unprivileged_port_start(),
            unprivileged_port_start()
        )));
    }
    if let Err(err) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
        let reason = match err.kind() {
            std::io::ErrorKind::AddrInUse => "is already in use".to_string(),
            _ => format!("cannot be used ({err})"),
        };
        bail!(
            "port {port} on 127.0.0.1 {reason}; choose another with -p, or leave -p out to get a free one"
        );
    }
    Ok(())
}

/// The schema cache entry for this start's test data, unless there is none, it uses `-d` or
/// `--no-cache`.
fn open_cache(req: &Checked, session: &Session) -> Result<Option<Cache>> {
    match &req.data {
        Some(data) if req.dir.is_none() && !req.args.no_cache => {
            let key = cache::key(&req.install, session.user(), &req.options, data)?;
            Ok(Some(Cache::open(&session.state, &key)?))
        }
        _ => Ok(None),
    }
}

/// The start's directory: `-d`, a ready copy of the cache, a pre-started server, or the pool.
/// Takes the PGTMP_DIR gate (in `gate`) before anything is made under PGTMP_DIR.
fn acquire(
    req: &Checked,
    session: &Session,
    cache: Option<&Cache>,
    lifeline: bool,
    gate: &mut Option<ownership::DirLock>,
) -> Result<Acquired> {
    if let (Some(dir), Some(found)) = (&req.dir, &req.found) {
        directory::refuse_pool_entry(dir, &session.state)?;
        let on_failure = directory::prepare(
            &req.install,
            dir,
            found.clone(),
            &session.server,
            session.user(),
        )?;
        let instance = Instance::new(dir);
        if on_failure == OnFailure::Leave {
            directory::check_startable(&req.install, &instance)?;
            instance.make_private()?;
        }
        return Ok(Acquired::Dir(instance, on_failure));
    }
    let dest = session.state.instance_path(&req.name);
    *gate = Some(ownership::lock_shared(&session.state.path)?);
    // A directory made here is locked at once and the gate let go, so that a sweep never
    // waits behind a foreground copy or initdb (it leaves locked directories alone).
    let mut early = None;
    if let Some(cache) = cache {
        if let Some(instance) = cache.take(&dest, |i| lock_made(i, &mut early, gate))? {
            return Ok(Acquired::Cached(instance, early));
        }
        // A copy that failed was removed: its lock goes, and the gate is needed again for
        // what the pool makes at the same place.
        early = None;
        if gate.is_none() {
            *gate = Some(ownership::lock_shared(&session.state.path)?);
        }
    }
    let user = session.user();
    let pool = Pool::open(&session.state, &req.install, user, req.args.pool_size)?
        .growing_to(req.args.pool_max);
    if claimable(req, lifeline)
        && let Some(claimed) =
            prestart::claim(&pool, &session.state, req.tcp, req.port, claim_of(req))?
    {
        return Ok(Acquired::Running(claimed, pool));
    }
    let (instance, taken) = pool.take(&dest, &req.install, user, |i| {
        lock_made(i, &mut early, gate)
    })?;
    Ok(Acquired::Pool(instance, taken, pool, early))
}

/// A prepared entry's password (see tcp_ready.rs) becomes a `-t` start's, already set in the
/// role; every `-t` start asks the refills of where its directory was prepared (`pool`, or
/// the schema cache entry whose copy it is, `cached`) to go on preparing them.
fn use_prepared_password(
    req: &mut Checked,
    instance: &Instance,
    pool: Option<&Pool>,
    cached: Option<&Cache>,
) {
    let prepared_in = match (pool, cached) {
        (Some(pool), _) => &pool.dir,
        (None, Some(cache)) => &cache.dir,
        (None, None) => return, // -d: nothing prepared it
    };
    // Taken by every start, so that no password lingers in a socket cluster's directory.
    let prepared = tcp_ready::take(instance);
    if !req.tcp {
        return;
    }
    tcp_ready::record_demand(prepared_in);
    if let Some(password) = prepared {
        req.password = Some(password);
        req.password_set = true;
        trace::phase("prepared-password");
    }
}

/// Only starts with the settings every pre-started server has can use one; `run` needs a
/// watchdog that holds its lifeline.
fn claimable(req: &Checked, lifeline: bool) -> bool {
    req.args.port.is_none() && req.options.is_empty() && req.data.is_none() && !lifeline
}

/// Locks a directory the start has just made under PGTMP_DIR and lets go of the gate: a
/// sweep leaves a locked directory alone, so it need not wait for the copy or initdb.
fn lock_made(
    instance: &Instance,
    early: &mut Option<ownership::DirLock>,
    gate: &mut Option<ownership::DirLock>,
) -> Result<()> {
    *early = Some(ownership::lock_new(&instance.dir)?);
    *gate = None;
    Ok(())
}

/// What a start asks of a pre-started server it claims.
fn claim_of(req: &Checked) -> Claim {
    Claim {
        timeout: req.args.timeout,
        keep: req.args.keep,
        owner: req.owner,
    }
}

/// A claimed pre-started server, reported as a start: its directory is its watchdog's
/// (locked); -k is recorded for the sweep as for any start.
fn claimed_server(
    req: Checked,
    session: Session,
    claimed: prestart::Claimed,
    pool: Pool,
) -> Result<Launched> {
    trace::phase("claim-running");
    if req.tcp {
        tcp_ready::record_demand(&pool.dir);
    }
    let claim = claim_of(&req);
    if claim.keep {
        claimed.instance.mark_kept()?;
    }
    let started = watchdog::Started {
        port: claimed.state.port,
        server_pid: claimed.state.postmaster_pid,
        watchdog_pid: claimed.state.watchdog_pid,
    };
    let req = Checked {
        password: claimed.password.clone(),
        ..req
    };
    let cluster = report(&req, session.user(), &claimed.instance, &started);
    Ok(Launched {
        cluster,
        install: req.install,
        test_data: None,
        state: session.state.clone(),
        sweep_after: req.args.sweep_after,
        top_up: Some(TopUp {
            pool,
            session,
            prestart: req.args.prestart,
            served: prestart::Served::Claimed,
        }),
    })
}

/// The watchdog's instructions, with the directory locked for this start (and the watchdog
/// it forks): from here until the watchdog reports, the directory is only ever locked by this
/// start and then by its watchdog, so a sweep leaves it alone, and removes it if both are
/// killed. A lock that cannot be taken disposes of the directory.
fn plan(
    req: &Checked,
    session: &Session,
    instance: &Instance,
    on_failure: OnFailure,
    taken: Option<Taken>,
    lifeline: Option<OwnedFd>,
    early: Option<ownership::DirLock>,
) -> Result<Plan> {
    let lock = match lock_instance(instance, req.args.keep, early) {
        Ok(lock) => lock,
        Err(err) => {
            watchdog::dispose(instance, on_failure);
            return Err(err);
        }
    };
    Ok(Plan {
        install: req.install.clone(),
        instance: instance.clone(),
        user: session.user().to_string(),
        owner_uid: session.invoker.uid.as_raw(),
        tcp: req.tcp,
        listen: req.args.listen,
        port: req.port,
        port_fixed: req.args.port.is_some(),
        password: req.password.clone(),
        password_set: req.password_set,
        timeout: req.args.timeout,
        // A directory once started with -k stays kept, whether or not -k is given again.
        keep: req.args.keep || (on_failure == OnFailure::Leave && instance.is_kept()),
        owner: req.owner,
        options: req.options.clone(),
        on_failure,
        create_test: taken == Some(Taken::Initialized),
        registration: session.state.registration_for(&instance.dir, &req.name),
        waiting: None,
        lifeline,
        _lock: lock,
    })
}

/// What a start prints about the cluster in `instance` that `started` runs.
fn report(req: &Checked, user: &str, instance: &Instance, started: &watchdog::Started) -> Cluster {
    Cluster {
        url: match &req.password {
            Some(password) => url::tcp_url(user, password, started.port),
            None => url::socket_url(user, &instance.dir),
        },
        socket_dir: instance.dir.clone(),
        data_dir: instance.data(),
        port: started.port,
        tcp: req.tcp,
        user: user.to_string(),
        password: req.password.clone(),
        server_pid: started.server_pid,
        watchdog_pid: started.watchdog_pid,
        bindir: req.install.bindir.clone(),
        timeout: req.args.timeout,
        keep: req.args.keep,
    }
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
        && let Err(stop_err) = watchdog::stop_watchdog(state.watchdog_pid, &dir)
    {
        return err.context(format!("{stop_err:#}"));
    }
    // With -k the watchdog kept the directory; it was made for this start.
    watchdog::dispose(instance, on_failure);
    err
}

/// Detached and at low priority: fills the clone stock, then builds the schema cache entry
/// after a miss and keeps copies of it ready for the next start; with a `budget` (the state
/// directory and PGTMP_DISK_MAX, unless PGTMP_NO_SWEEP), evicts what it has no room for once
/// the cache grew.
fn prepare_in_background(
    server: &Server,
    follow: &FollowUp,
    install: &Installation,
    budget: Option<(&StateDir, u64)>,
) {
    if let Ok(Forked::Child) = detach::fork_detached() {
        detach::lower_priority();
        let mut failed = stock::refill(server, true).is_err();
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
            failed |= cache
                .refill(follow.ready_copies, install, server.user)
                .is_err();
            if let Some((state, disk_max)) = budget {
                sweep::enforce_budget(state, disk_max);
            }
        }
        std::process::exit(i32::from(failed));
    }
}

/// Locks a directory for this start (and the watchdog it forks), unless `early` already holds
/// it; records -k so that no sweep removes a kept cluster whose watchdog is gone (only now:
/// a half-filled directory marked kept would never be swept).
fn lock_instance(
    instance: &Instance,
    keep: bool,
    early: Option<ownership::DirLock>,
) -> Result<ownership::DirLock> {
    let lock = match early {
        Some(lock) => lock,
        None => ownership::lock_new(&instance.dir)?,
    };
    if keep {
        instance.mark_kept()?;
    }
    Ok(lock)
}
