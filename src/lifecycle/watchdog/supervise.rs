//! The watchdog's own life, in the forked process: start the server (retrying a taken port),
//! report to the waiting pgtmp, watch for clients, signals, claims and the lifeline, then stop
//! the server and dispose of the directory.

use super::clients::Clients;
use super::report::{Outcome, Report};
use super::{DEFAULT_TIMEOUT, Plan, dispose_after_failure};
use crate::lifecycle::claim::Claim;
use crate::lifecycle::lifeline::{self, Pull};
use crate::os::process::Pid;
use crate::os::secret;
use crate::os::signals::{self, SignalPipe};
use crate::output::trace;
use crate::server::client::Session;
use crate::server::cluster::{self, ServerSpec, Startup};
use crate::server::initdb;
use crate::server::shm;
use crate::state::instance::{Instance, State};
use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::process::Child;
use std::time::{Duration, Instant};

/// How often the watchdog looks at the server: it acts within this long of the deadline.
const TICK: Duration = Duration::from_millis(200);
/// How long a server may take to become ready (crash recovery of a kept cluster included).
const STARTUP_LIMIT: Duration = Duration::from_secs(120);
/// Attempts at an automatically chosen TCP port that someone else took first.
const PORT_ATTEMPTS: usize = 5;

/// How long a claimed server waits for the claim's details before it assumes the defaults.
const CLAIM_LIMIT: Duration = Duration::from_secs(10);

/// In the forked watchdog: starts the server, reports on `writer`, looks after the server and
/// exits.
pub(super) fn be_the_watchdog(plan: Plan, writer: std::io::PipeWriter) -> ! {
    // A process that switched accounts (root handing the server to `postgres`) is not
    // dumpable, which hides its /proc/PID/fd even from its own account; `pgtmp stop` proves a
    // watchdog by the directory descriptor it holds (the lock, kept in `plan.lock` for the
    // watchdog's whole life), so it must be able to look. The switch is for good and nothing of
    // the invoker's is held, so nothing is exposed that the server account could not reach
    // anyway.
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_dumpable(true);
    let mut clock = trace::Clock::start();
    clock.phase("fork");
    let code = match Watchdog::start(plan, writer, clock) {
        Ok((mut watchdog, true)) => watchdog.supervise(),
        // Nobody received the URL (pgtmp was killed while it waited): stop now.
        Ok((mut watchdog, false)) => watchdog.stop(),
        Err(()) => 1,
    };
    std::process::exit(code);
}

struct Watchdog {
    plan: Plan,
    server: Child,
    port: u16,
    clients: Clients,
    signals: SignalPipe,
    /// The server's shared memory, recorded once it was ready.
    segments: crate::state::segments::Segments,
}

impl Watchdog {
    /// Starts the server and reports to the waiting pgtmp; true if the report was delivered.
    /// On failure the directory is disposed of before the error is reported, so the caller
    /// returns to a clean slate.
    fn start(
        plan: Plan,
        mut report: std::io::PipeWriter,
        mut clock: trace::Clock,
    ) -> std::result::Result<(Watchdog, bool), ()> {
        // The backends of a postmaster killed by someone become this process's children
        // instead of init's, so that `end_orphans` can stop them.
        #[cfg(target_os = "linux")]
        let _ = nix::sys::prctl::set_child_subreaper(true);
        match Self::bring_up(plan, &mut clock) {
            Ok(watchdog) => {
                crate::os::testpause::point("ready");
                let ready = Outcome::Ready {
                    port: watchdog.port,
                    server_pid: Pid::of(&watchdog.server),
                    trace: clock.encode(),
                };
                let delivered = Report::send(&mut report, ready);
                Ok((watchdog, delivered))
            }
            Err(failure) => {
                let message = format!("{failure:#}");
                Report::send(&mut report, Outcome::Error { message });
                Err(())
            }
        }
    }

    /// Catches the signals, starts the server and completes the start ([`Self::handshake`]).
    /// A failure is undone here, in one place for each stage: before the server runs only the
    /// directory is disposed of; after, [`Self::abandon`] also stops the server and withdraws
    /// what the handshake published.
    fn bring_up(plan: Plan, clock: &mut trace::Clock) -> Result<Watchdog> {
        let mut verifier = None;
        let running = catch_signals()
            .and_then(|signals| Ok((signals, Self::start_server(&plan, clock, &mut verifier)?)));
        let (signals, (server, port)) = match running {
            Ok(running) => running,
            Err(err) => {
                dispose_after_failure(&plan);
                return Err(err);
            }
        };
        let clients = Clients::new(plan.instance.dir.clone(), port, plan.user.clone());
        let mut watchdog = Watchdog {
            plan,
            server,
            port,
            clients,
            signals,
            segments: crate::state::segments::Segments::default(),
        };
        if let Err(err) = watchdog.handshake(verifier.as_deref()) {
            watchdog.abandon();
            return Err(err);
        }
        clock.phase("handshake");
        Ok(watchdog)
    }

    /// Spawns postgres and waits for it, retrying with another port when an automatically
    /// chosen one was taken between choosing and binding. A server that does not become ready
    /// is stopped on the way out ([`Starting`]); the directory is the caller's to dispose of.
    /// The SCRAM verifier of the TCP password is computed into `verifier` while the server
    /// starts, rather than after.
    fn start_server(
        plan: &Plan,
        clock: &mut trace::Clock,
        verifier: &mut Option<String>,
    ) -> Result<(Child, u16)> {
        let mut log = open_log(&plan.instance)?;
        let mut port = plan.port;
        for attempt in 1..=PORT_ATTEMPTS {
            let log_start = log.seek(SeekFrom::End(0)).unwrap_or(0);
            let spec = ServerSpec {
                install: &plan.install,
                instance: &plan.instance,
                socket_dir: &plan.instance.dir,
                port,
                tcp: plan.tcp,
                listen: plan.listen,
                options: &plan.options,
            };
            let mut server = Starting(Some(spec.spawn(&log)?));
            clock.phase("spawn");
            if verifier.is_none() && !plan.password_set {
                *verifier = plan.password.as_deref().map(secret::scram_verifier);
            }
            crate::os::testpause::point("spawned");
            match cluster::wait_ready(server.child(), &plan.instance, STARTUP_LIMIT)? {
                Startup::Ready => {
                    clock.phase("ready");
                    return Ok((server.ready(), port));
                }
                Startup::TimedOut => bail!(
                    "postgres was not ready after {} s; see {}",
                    STARTUP_LIMIT.as_secs(),
                    plan.instance.log().display()
                ),
                Startup::Exited => {
                    let text = read_from(&mut log, log_start);
                    let retry = plan.tcp && !plan.port_fixed && attempt < PORT_ATTEMPTS;
                    if retry
                        && cluster::lost_port_race(&text)
                        && let Some(next) = portpicker::pick_unused_port()
                    {
                        port = next;
                        continue;
                    }
                    return Err(why_postgres_exited(plan, port, &text));
                }
            }
        }
        bail!("no free TCP port found after {PORT_ATTEMPTS} attempts")
    }

    /// Creates database `test` if it is missing, sets the TCP password and records the state.
    /// A failure is undone by the caller ([`Self::abandon`]).
    ///
    /// Without either of the first two, no session is opened: connecting costs a backend
    /// start, which the caller need not wait for. With one, the session serves the first look
    /// for clients ([`Clients::busy`]), which closes it if there are none.
    fn handshake(&mut self, verifier: Option<&str>) -> Result<()> {
        if self.plan.create_test || verifier.is_some() {
            let mut session =
                Session::connect(&self.plan.instance.dir, self.port, &self.plan.user)?;
            if self.plan.create_test {
                session.execute(&initdb::create_test_sql(&self.plan.user))?;
            }
            if let Some(verifier) = verifier {
                session.set_password(&self.plan.user, verifier)?;
            }
            self.clients.session = Some(session);
        }
        let watchdog_pid = Pid::this();
        let postmaster_pid = Pid::of(&self.server);
        self.segments = shm::of_server(postmaster_pid, &self.plan.instance.data());
        self.plan.instance.write_state(&State {
            watchdog_pid,
            postmaster_pid,
            port: self.port,
            tcp: self.plan.tcp,
            keep: self.plan.keep,
            owner_uid: self.plan.owner_uid,
            user: self.plan.user.clone(),
            timeout: self.plan.timeout,
            watchdog_start: crate::os::procfs::start_time(watchdog_pid),
            postmaster_start: crate::os::procfs::start_time(postmaster_pid),
            segments: self.segments.clone(),
            owner: self.plan.owner.map(|o| (o.pid, o.start)),
        })?;
        if let Some(registration) = &self.plan.registration {
            let path = format!("{}\n", self.plan.instance.dir.display());
            std::fs::write(registration, path)
                .with_context(|| format!("cannot write {}", registration.display()))?;
            if self.plan.keep {
                record_kept(&self.plan);
            }
        }
        if let Some(waiting) = &self.plan.waiting {
            Session::warm_up(&self.plan.instance.dir, self.port, &self.plan.user)?;
            waiting.publish(&self.plan.instance, self.plan.password.as_deref())?;
        }
        Ok(())
    }

    /// Undoes a start that failed once the server ran: withdraws what the handshake
    /// published, stops the server and disposes of the directory.
    fn abandon(&mut self) {
        unregister(&self.plan);
        if let Some(waiting) = &self.plan.waiting {
            waiting.retract(&self.plan.instance);
        }
        self.clients.session = None;
        cluster::stop_child(&mut self.server);
        dispose_after_failure(&self.plan);
    }

    /// Looks after the running server until it is time to stop; returns the exit code.
    fn supervise(&mut self) -> i32 {
        let mut watch = Watch {
            last_busy: Instant::now(),
            claimed_at: None,
            // Not yet looked: the `idle` file for `pgtmp list` is made at the first idle poll.
            was_busy: true,
        };
        let mut lifeline = self.plan.lifeline.take().map(lifeline::Line::new);
        let mut owner = Owned::Not;
        loop {
            let stop_requested = wait_for_signals(&self.signals, TICK);
            if self.server_is_going() {
                break;
            }
            match self.wait_for_claim(stop_requested, &mut watch) {
                Step::Stop => break,
                Step::Next => continue,
                Step::Go => {}
            }
            if stop_requested {
                break;
            }
            // Known once the claim (if any) is in: a claim may bring the owner.
            if let (Owned::Not, Some(process)) = (&owner, self.plan.owner.take()) {
                owner = Owned::By(process.watch());
            }
            if let Some(line) = &mut lifeline {
                match line.pull() {
                    Pull::Held => continue,
                    // `pgtmp run` is gone, but the owner keeps the cluster.
                    Pull::Cut if matches!(&owner, Owned::By(w) if !w.gone()) => lifeline = None,
                    Pull::Cut => break,
                    Pull::Released => {
                        lifeline = None;
                        watch.last_busy = Instant::now();
                    }
                }
            }
            if self.ends_now(&mut owner, &mut watch) {
                break;
            }
        }
        self.stop()
    }

    /// The idle rule of a tick: without an owner, no client for the timeout (0: never); while
    /// the owner runs, never (only the `idle` mark is kept); once it has exited, no client for
    /// the timeout counted from its exit (0: none connected now).
    fn ends_now(&mut self, owner: &mut Owned, watch: &mut Watch) -> bool {
        match owner {
            Owned::Not => self.plan.timeout > 0 && self.idle_too_long(watch),
            Owned::By(process) if !process.gone() => {
                self.idle_too_long(watch);
                false
            }
            Owned::By(_) => {
                *owner = Owned::Exited;
                watch.last_busy = Instant::now();
                self.idle_too_long(watch)
            }
            Owned::Exited => self.idle_too_long(watch),
        }
    }

    /// True when the server is ending or has to: it died by itself, someone asked it to stop,
    /// or its directory was deleted under it.
    fn server_is_going(&mut self) -> bool {
        if cluster::exited(&mut self.server) {
            // The server died by itself (killed?): `stop` finds nothing to stop, but releases
            // what a killed server cannot release itself, its shared memory.
            return true;
        }
        if cluster::is_stopping(&self.plan.instance.data()) {
            // Someone asked the server to stop (SIGTERM): finish what they started.
            return true;
        }
        if !self.plan.instance.state_path().exists() {
            // The directory was deleted under the server: stop it now rather than let it run
            // on without its files.
            if let Some(waiting) = &self.plan.waiting {
                waiting.withdraw();
            }
            return true;
        }
        false
    }

    /// For a pre-started server: takes a claim when one came, and tells whether the server
    /// still waits for one (then the idle timeout and the lifeline do not apply yet).
    fn wait_for_claim(&mut self, stop_requested: bool, watch: &mut Watch) -> Step {
        let Some(waiting) = self.plan.waiting.clone() else {
            return Step::Go;
        };
        match waiting.take_claim(&self.plan.instance) {
            Some(claim) => {
                self.accept(claim);
                watch.last_busy = Instant::now();
                Step::Go
            }
            None if waiting.token.exists() => {
                // Unclaimed: stop when asked or when nobody wanted it in time.
                let unwanted = watch.last_busy.elapsed().as_secs() >= self.plan.timeout;
                if (stop_requested || unwanted) && waiting.withdraw() {
                    Step::Stop
                } else {
                    Step::Next
                }
            }
            None => {
                // Claimed, and the claim's details are on their way.
                let since = *watch.claimed_at.get_or_insert_with(Instant::now);
                if since.elapsed() >= CLAIM_LIMIT {
                    self.accept(Claim {
                        timeout: DEFAULT_TIMEOUT,
                        keep: false,
                        owner: None,
                    });
                    watch.last_busy = Instant::now();
                }
                Step::Next
            }
        }
    }

    /// True once the server has had no client for the whole timeout; keeps the `idle` mark
    /// that `pgtmp list` shows.
    fn idle_too_long(&mut self, watch: &mut Watch) -> bool {
        let timeout = Duration::from_secs(self.plan.timeout);
        let busy = self.clients.busy(Pid::of(&self.server));
        if busy != watch.was_busy {
            self.plan.instance.mark_idle(!busy);
            watch.was_busy = busy;
            if !busy {
                // The last client left at some point since the previous poll: count from now,
                // so the cluster never stops before a whole timeout without clients.
                watch.last_busy = Instant::now();
            }
        }
        if busy {
            watch.last_busy = Instant::now();
            false
        } else {
            watch.last_busy.elapsed() >= timeout
        }
    }

    /// Stops the server now and cleans up; returns the exit code.
    fn stop(&mut self) -> i32 {
        self.clients.session = None;
        cluster::stop_child(&mut self.server);
        self.release_shared_memory();
        self.finish()
    }

    /// Takes on a claiming start's -w and -k; the server is an ordinary one from now on.
    fn accept(&mut self, claim: Claim) {
        self.plan.timeout = claim.timeout;
        self.plan.keep = claim.keep;
        self.plan.owner = claim.owner;
        self.plan.waiting = None;
        if let Ok(Some(mut state)) = self.plan.instance.read_state() {
            state.timeout = claim.timeout;
            state.keep = claim.keep;
            state.owner = claim.owner.map(|o| (o.pid, o.start));
            let _ = self.plan.instance.write_state(&state);
        }
    }

    /// Once the postmaster has exited: if it could not release its shared memory (killed, or
    /// escalated to SIGKILL), ends its orphaned backends, then removes the segments recorded
    /// at the start. After a clean exit they are gone and this does nothing.
    fn release_shared_memory(&self) {
        end_orphans();
        let creator = Pid::of(&self.server);
        if let Some(id) = self.segments.sysv_id {
            shm::wait_detached(id, creator, shm::DETACH_LIMIT);
        }
        shm::release(&self.segments, creator);
    }

    /// Removes the directory, or with -k only the state file; returns the exit code.
    fn finish(&mut self) -> i32 {
        unregister(&self.plan);
        if let Some(waiting) = &self.plan.waiting {
            waiting.retract(&self.plan.instance);
        }
        // The mark, too: a kept directory stays kept whoever starts it again.
        if self.plan.keep || self.plan.instance.is_kept() {
            let _ = self.plan.instance.mark_kept_as(self.plan.tcp);
            self.plan.instance.remove_state();
            record_kept(&self.plan);
            0
        } else {
            // In PGTMP_DIR (no registration): gone from its path at once, deleted after.
            let removed = match self.plan.registration {
                None => self.plan.instance.remove_at_once(),
                Some(_) => self.plan.instance.remove(),
            };
            i32::from(removed.is_err())
        }
    }
}

/// Kills and reaps what is left below the watchdog once its postmaster has exited: backends of
/// a killed postmaster, reparented to the watchdog (a child subreaper). A backend busy in a
/// query does not notice its postmaster's death; it would run on, holding the shared memory,
/// in a directory about to be removed.
fn end_orphans() {
    let orphans = crate::os::procfs::children(Pid::this());
    for &pid in &orphans {
        // Children of this process, not reaped yet (only this loop reaps them): their pids
        // cannot have been reused, so a plain pid reaches them.
        let _ = crate::os::process::signal(pid, nix::sys::signal::Signal::SIGKILL);
    }
    for pid in orphans {
        let _ = nix::sys::wait::waitpid(pid.nix(), None);
    }
}

/// For a kept cluster outside PGTMP_DIR: records it there, so that it is still found once it
/// has stopped (best effort: it only informs `pgtmp list --all` and `pgtmp discard DIR`).
fn record_kept(plan: &Plan) {
    if let Some(state) = plan
        .registration
        .as_deref()
        .and_then(std::path::Path::parent)
    {
        let _ = crate::state::statedir::record_kept(state, &plan.instance.dir);
    }
}

fn unregister(plan: &Plan) {
    if let Some(registration) = &plan.registration {
        let _ = std::fs::remove_file(registration);
    }
}

/// What [`Watchdog::supervise`] keeps between ticks.
struct Watch {
    /// When a client was last seen (or the clock last restarted: a claim, a released lifeline).
    last_busy: Instant,
    /// When a claim of the pre-started server was first seen without its details.
    claimed_at: Option<Instant>,
    /// Whether the previous look found a client.
    was_busy: bool,
}

/// Whether the cluster follows an owner process (`--owner-pid`).
enum Owned {
    Not,
    By(crate::lifecycle::owner::Watch),
    Exited,
}

/// What the supervising loop does after a step.
enum Step {
    /// Stop the server.
    Stop,
    /// Nothing more this tick.
    Next,
    /// Go on with the tick's other checks.
    Go,
}

/// A server spawned but not yet ready: stopped if dropped, so that every way out of a failed
/// start stops it (a server that exited by itself is only reaped).
struct Starting(Option<Child>);

impl Starting {
    fn child(&mut self) -> &mut Child {
        // Some until `ready` takes it, which consumes `self`.
        self.0.as_mut().unwrap_or_else(|| unreachable!())
    }

    /// The server is ready: it is the watchdog's to look after from now on.
    fn ready(mut self) -> Child {
        self.0.take().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(server) = &mut self.0 {
            cluster::stop_child(server);
        }
    }
}

/// Why postgres exited during its start on `port`, from what it wrote to its log (`text`).
fn why_postgres_exited(plan: &Plan, port: u16, text: &str) -> anyhow::Error {
    if plan.tcp && cluster::lost_port_race(text) {
        return anyhow::anyhow!(
            "port {port} is already in use on 127.0.0.1; choose another with -p, \
             or leave -p out to get a free one"
        );
    }
    if text.trim().is_empty() {
        return anyhow::anyhow!(
            "postgres exited at once without writing to {}{}",
            plan.instance.log().display(),
            if disk_full(&plan.instance) {
                ": No space left on device; free some space"
            } else {
                ""
            }
        );
    }
    anyhow::anyhow!(
        "postgres did not start{}: {}",
        if plan.options.is_empty() {
            ""
        } else {
            " (check the -o options)"
        },
        cluster::failure_lines(text)
    )
}

/// True when the file system holding the directory has no space left (for the unprivileged).
fn disk_full(instance: &Instance) -> bool {
    nix::sys::statvfs::statvfs(&instance.dir).is_ok_and(|fs| fs.blocks_available() == 0)
}

fn open_log(instance: &Instance) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .open(instance.log())
        .with_context(|| format!("cannot open {}", instance.log().display()))
}

fn read_from(log: &mut File, offset: u64) -> String {
    let mut text = String::new();
    if log.seek(SeekFrom::Start(offset)).is_ok() {
        let _ = log.read_to_string(&mut text);
    }
    text
}

/// Catches what the watchdog's loop wakes for: SIGCHLD (the server died), SIGUSR1 (a start has
/// claimed its pre-started server), SIGTERM and SIGINT (stop now). A hang-up means nothing to
/// a process that has no terminal.
fn catch_signals() -> Result<SignalPipe> {
    signals::ignore(Signal::SIGHUP)?;
    SignalPipe::catch(&[
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGCHLD,
        Signal::SIGUSR1,
    ])
}

/// Sleeps up to `limit` or until a signal arrives; true if a stop was requested.
fn wait_for_signals(signals: &SignalPipe, limit: Duration) -> bool {
    signals.wait(limit)
        && signals.take().iter().any(|arrived| {
            arrived.signal == Signal::SIGTERM as i32 || arrived.signal == Signal::SIGINT as i32
        })
}
