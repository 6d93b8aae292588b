//! `pgtmp run [start options] -- CMD [ARGS...]`: a cluster for the lifetime of one command.
//!
//! ```text
//! pgtmp run (invoking account; root stays root)
//!   ├─ starter (forked; drops root like `pgtmp start`, starts the cluster, reports, exits)
//!   │    └─ watchdog (detached, server account) ── postgres
//!   └─ CMD (the invoking account, with PGHOST... set)
//! ```
//!
//! The cluster is started by a forked child so that this process keeps the invoker's identity
//! for CMD: a root user running `pgtmp run -- make test` expects make to run as root, while
//! postgres refuses to. The watchdog holds the read end of a lifeline (see `lifeline`), so the
//! cluster is stopped when this process goes away however it goes; normally it is stopped
//! explicitly, and waited for, before pgtmp exits with CMD's status.

use crate::cli::{GlobalArgs, RunArgs};
use crate::lifecycle::lifeline::{self, Holder};
use crate::lifecycle::owner::Owner;
use crate::lifecycle::start::{self, StartRequest};
use crate::os::detach::{self, Forked};
use crate::os::process::{self, Pid};
use crate::os::signals::{Arrived, Held, SignalPipe};
use crate::output::exit::{self, Passed};
use crate::output::format::{Cluster, Format};
use crate::server::discover::{self, Installation};
use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use std::ffi::{OsStr, OsString};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Duration;

/// Longest the watchdog may take to stop the server and remove its directory.
const STOP_LIMIT: Duration = Duration::from_secs(60);

/// Signals `pgtmp run` catches: SIGINT, SIGTERM and SIGHUP end it (passed on to CMD, then the
/// cluster is stopped); SIGCHLD wakes it when CMD exits.
const CAUGHT: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGCHLD,
];

/// libpq variables of the caller that would point CMD's clients somewhere else than the
/// cluster, or make them refuse it (GSSAPI encryption it does not offer, a certificate
/// authority it was not signed by). PGSSLMODE is among them only with a value in none of
/// [`SSLMODES_KEPT`].
const REDIRECTING: &[&str] = &[
    "PGHOSTADDR",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGPASSWORD",
    "PGGSSENCMODE",
    "PGREQUIREAUTH",
    "PGTARGETSESSIONATTRS",
    "PGCHANNELBINDING",
];

/// The PGSSLMODE values that work with every cluster, so CMD keeps them: a TCP cluster serves
/// TLS (with a certificate nobody signed, so `verify-ca` and `verify-full` fail), and clients
/// use none on a Unix socket. PGREQUIRESSL=1 says `require` in libpq's older words.
const SSLMODES_KEPT: &[&str] = &["disable", "allow", "prefer", "require"];

/// True when the caller's `name`=`value` would send CMD's clients elsewhere or make them fail.
fn redirects(name: &str, value: &OsStr) -> bool {
    match name {
        "PGSSLMODE" => !SSLMODES_KEPT.iter().any(|kept| value == *kept),
        "PGREQUIRESSL" => value != "0" && value != "1",
        _ => REDIRECTING.contains(&name),
    }
}

pub fn run(mut args: RunArgs, global: &GlobalArgs) -> Result<()> {
    // The format only shapes the line that says where a cluster that outlives CMD (-k,
    // --owner-pid) is. Without either nothing is printed: a written -F is a mistake,
    // PGTMP_FORMAT (meant for starts) is ignored.
    if !args.start.keep && args.start.owner_pid.is_none() {
        if args.start.format_written {
            return Err(exit::usage(
                "pgtmp run prints no URL: -F only shapes the line -k (or --owner-pid) prints about the cluster left running; drop -F, or add -k",
            ));
        }
        args.start.format = None;
    }
    let mut words = args.command.into_iter();
    let program = words
        .next()
        .ok_or_else(|| exit::usage("say which command to run: pgtmp run -- CMD [ARGS...]"))?;
    let arguments: Vec<OsString> = words.collect();
    check_runnable(&program)?;
    if let Some(remote) = &global.remote {
        return run_remote(&args.start, remote, global, &program, &arguments);
    }
    if let Some(majors) = global.several_majors()? {
        let installs = discover::of_majors(&global.pg_path(), majors)?;
        // Each major's start names its installation; --pg has done its part.
        let single = GlobalArgs {
            pg: None,
            ..global.clone()
        };
        let request = args.start.request(&single)?;
        return each_major(request, &installs, &program, &arguments);
    }
    let request = args.start.request(global)?;
    run_once(&request, &program, &arguments)
}

/// `pgtmp run --pg 15,16 -- CMD`: CMD once per installation, each against a cluster of its
/// own, one after the other, each in a child forked for it that runs exactly as `pgtmp run`
/// does with one installation. A line per major says how CMD did; the status is that of
/// the first that failed. The signals `pgtmp run` catches are held here and passed on to the
/// child of the moment; after one, no further major is run.
fn each_major(
    mut request: StartRequest,
    installs: &[Installation],
    program: &OsString,
    arguments: &[OsString],
) -> Result<()> {
    let held = Held::new(&CAUGHT)?;
    let mut failed = None;
    for install in installs {
        let version = install
            .version()
            .unwrap_or_else(|_| install.bindir.display().to_string());
        request.install.bindir = Some(install.bindir.clone());
        let pid = match detach::fork()? {
            Forked::Child => {
                drop(held);
                let code = match run_once(&request, program, arguments) {
                    Ok(()) => 0,
                    Err(err) => exit::report(&err),
                };
                std::process::exit(i32::from(code));
            }
            Forked::Parent(pid) => pid,
        };
        let (code, interrupted) = wait_passing_on(pid, &held)?;
        let verdict = match code {
            0 => "ok".to_string(),
            code => format!("failed (exit {code})"),
        };
        eprintln!("pgtmp: PostgreSQL {version}: {verdict}");
        if code != 0 {
            failed.get_or_insert(code);
        }
        if let Some(signal) = interrupted {
            return Err(Passed(128u8.wrapping_add(signal as u8)).into());
        }
    }
    match failed {
        None => Ok(()),
        Some(code) => Err(Passed(code).into()),
    }
}

/// Waits for the child running one major, passing on the held signals that arrive as
/// `wait_forwarding` does; its status, and the last such signal.
fn wait_passing_on(pid: Pid, held: &Held) -> Result<(u8, Option<i32>)> {
    let mut interrupted = None;
    loop {
        if let Some(arrived) = held.wait(Duration::from_millis(200))
            && arrived.signal != Signal::SIGCHLD as i32
        {
            interrupted = Some(arrived.signal);
            let reached = arrived.from_kernel && in_my_group(pid);
            if !reached && let Ok(signal) = Signal::try_from(arrived.signal) {
                process::signal(pid, signal)?;
            }
        }
        match waitpid(pid.nix(), Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok((code as u8, interrupted)),
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                return Ok((128u8.wrapping_add(signal as u8), interrupted));
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(err) => bail!("cannot wait for process {pid}: {err}"),
        }
    }
}

/// One cluster, CMD against it, the cluster stopped: `pgtmp run` with one installation.
fn run_once(request: &StartRequest, program: &OsString, arguments: &[OsString]) -> Result<()> {
    // Checked here too (the start checks it again), to know the owner after CMD.
    let uid = nix::unistd::getuid().as_raw();
    let owner = request
        .owner_pid
        .map(|pid| Owner::check(pid, uid))
        .transpose()?;
    let held = Held::new(&CAUGHT)?;
    let Started {
        cluster,
        holder,
        signals,
        interrupted,
    } = start_in_child(request, held)?;
    let keep = cluster.keep;
    let format = request.format;
    if let Some(signal) = interrupted {
        finish(&cluster, holder, false, None, format)?;
        return Err(Passed(128 + signal as u8).into());
    }

    let status = match command_for(program, arguments, cluster.environment()).spawn() {
        Ok(mut child) => wait_forwarding(&mut child, &signals)?,
        Err(err) => {
            finish(&cluster, holder, false, None, format)?;
            return Err(not_started(&err, program));
        }
    };
    finish(&cluster, holder, keep, owner.as_ref(), format)?;
    match status_code(status) {
        0 => Ok(()),
        code => Err(Passed(code).into()),
    }
}

/// `pgtmp --remote SERVE run -- CMD`: CMD against a database from that `pgtmp serve`, which
/// is dropped with its role when CMD exits (else at serve's TTL, should pgtmp be killed).
fn run_remote(
    start: &crate::cli::StartArgs,
    remote: &str,
    global: &GlobalArgs,
    program: &OsString,
    arguments: &[OsString],
) -> Result<()> {
    let asked = start.remote(global)?;
    let client = crate::serve::remote::Client::new(remote)?;
    let signals = SignalPipe::catch(&CAUGHT)?;
    let database = client.database(&asked.files)?;
    let url = database.url();
    let status = match command_for(program, arguments, database.environment()).spawn() {
        Ok(mut child) => wait_forwarding(&mut child, &signals),
        Err(err) => {
            client.drop(&url)?;
            return Err(not_started(&err, program));
        }
    };
    let dropped = client.drop(&url);
    let status = status?;
    dropped?;
    match status_code(status) {
        0 => Ok(()),
        code => Err(Passed(code).into()),
    }
}

/// CMD with `environment` for its database, without the caller's libpq variables that would
/// send its clients elsewhere (see [`redirects`]).
fn command_for(
    program: &OsString,
    arguments: &[OsString],
    environment: Vec<(&'static str, String)>,
) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(arguments);
    for (name, value) in std::env::vars_os() {
        if redirects(&name.to_string_lossy(), &value) {
            cmd.env_remove(name);
        }
    }
    cmd.envs(environment);
    cmd
}

/// CMD could not be started: said on stderr, and the shell's status (127 not found, else 126).
fn not_started(err: &std::io::Error, program: &OsString) -> anyhow::Error {
    let code = if err.kind() == ErrorKind::NotFound {
        127
    } else {
        126
    };
    eprintln!(
        "pgtmp: error: cannot run {}: {err}",
        program.to_string_lossy()
    );
    Passed(code).into()
}

/// The shell's convention: the exit code, or 128 + N for death by signal N.
fn status_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.wrapping_add(signal as u8),
        _ => exit::FAILURE,
    }
}

/// Refuses, before any cluster exists, a command that cannot be run: 127 when it is not found,
/// 126 when it is not executable, as a shell does.
fn check_runnable(program: &OsString) -> Result<()> {
    let name = program.to_string_lossy();
    let path = Path::new(program);
    let refuse = |code: u8, why: &str| -> Result<()> {
        eprintln!("pgtmp: error: {name}: {why}");
        Err(Passed(code).into())
    };
    if name.is_empty() {
        return Err(exit::usage(
            "the command to run is empty; pgtmp run -- CMD [ARGS...]",
        ));
    }
    if name.contains('/') {
        return match std::fs::metadata(path) {
            Err(_) => refuse(127, "no such file"),
            Ok(meta) if meta.is_dir() => refuse(126, "is a directory"),
            Ok(_) => match nix::unistd::access(path, nix::unistd::AccessFlags::X_OK) {
                Ok(()) => Ok(()),
                Err(_) => refuse(126, "permission denied (not executable)"),
            },
        };
    }
    match which::which(program) {
        Ok(_) => Ok(()),
        Err(_) => refuse(127, "command not found on PATH"),
    }
}

/// What the start left `pgtmp run` with.
struct Started {
    cluster: Cluster,
    holder: Holder,
    /// The signals `pgtmp run` catches from now on.
    signals: SignalPipe,
    /// The last of them that arrived during the start, if any.
    interrupted: Option<i32>,
}

/// Forks a child that starts the cluster exactly as `pgtmp start` does (dropping root for
/// good) and reports it, then waits for it. A child that failed has printed its own error; its
/// status is passed on.
///
/// `held` holds back the signals `pgtmp run` catches: they are caught only once the starter is
/// forked, so that it and the watchdog it forks have the default dispositions (a signal-hook
/// handler cannot be undone in a child), and none that arrives meanwhile is lost.
fn start_in_child(request: &StartRequest, held: Held) -> Result<Started> {
    let (holder, line) = lifeline::pair()?;
    let (reader, writer) = std::io::pipe().context("cannot create a pipe to the starter")?;
    let pid = match detach::fork()? {
        Forked::Child => {
            // Interrupted like any `pgtmp start`; the watchdog sees the lifeline cut then.
            drop(held);
            // Only `pgtmp run` itself may hold the lifeline: the watchdog forked from here
            // would otherwise keep it from ever being cut.
            drop(holder);
            drop(reader);
            be_the_starter(request, line, writer)
        }
        Forked::Parent(pid) => pid,
    };
    let signals = SignalPipe::catch(&CAUGHT)?;
    drop(held);
    drop(line);
    drop(writer);
    let status = loop {
        match waitpid(pid.nix(), None) {
            Ok(status) => break status,
            Err(nix::errno::Errno::EINTR) => {}
            Err(err) => bail!("cannot wait for the starter process {pid}: {err}"),
        }
    };
    // The signals that arrived meanwhile wait in the pipe; the last one counts.
    let interrupted = forwarded(signals.take())
        .last()
        .map(|arrived| arrived.signal);
    match status {
        WaitStatus::Exited(_, 0) => {}
        WaitStatus::Exited(_, code) => return Err(Passed(code as u8).into()),
        WaitStatus::Signaled(_, signal, _) => return Err(Passed(128 + signal as u8).into()),
        other => bail!("the starter process ended oddly: {other:?}"),
    }
    Ok(Started {
        cluster: read_report(reader)?,
        holder,
        signals,
        interrupted,
    })
}

/// The forked starter: starts the cluster and writes it, as JSON, on `writer`.
fn be_the_starter(request: &StartRequest, line: OwnedFd, mut writer: std::io::PipeWriter) -> ! {
    let code = match start::launch(request, Some(line)) {
        Ok(launched) => {
            let report = serde_json::to_string(&launched.cluster).unwrap_or_default();
            use std::io::Write;
            let written = writeln!(writer, "{report}").is_ok();
            drop(writer);
            launched.refill_pool();
            if written { 0 } else { exit::FAILURE as i32 }
        }
        Err(err) => exit::report(&err) as i32,
    };
    std::process::exit(code);
}

/// The cluster the starter reported, once it has exited.
fn read_report(mut reader: std::io::PipeReader) -> Result<Cluster> {
    // The watchdog inherited the pipe's write end, so read what is there instead of waiting
    // for end of file: the starter wrote its one line before it exited.
    nix::fcntl::fcntl(
        reader.as_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .context("cannot read the starter's report")?;
    let mut report = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => report.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    serde_json::from_slice(&report)
        .map_err(|err| anyhow!("the starter reported no cluster ({err}); try again"))
}

/// The signals to pass on, SIGCHLD (which only wakes `pgtmp run`) left out.
fn forwarded(arrived: Vec<Arrived>) -> impl Iterator<Item = Arrived> {
    arrived
        .into_iter()
        .filter(|arrived| arrived.signal != Signal::SIGCHLD as i32)
}

/// Waits for CMD, passing on the signals pgtmp receives; CMD may take as long as it likes to
/// act on them. A signal from the terminal (Ctrl-C, a hang-up) goes to the whole foreground
/// process group, so it is passed on only if CMD has left pgtmp's group (as sudo does);
/// otherwise CMD would get it twice.
fn wait_forwarding(child: &mut std::process::Child, signals: &SignalPipe) -> Result<ExitStatus> {
    let pid = Pid::of(child);
    loop {
        if let Some(status) = child.try_wait().context("cannot wait for the command")? {
            return Ok(status);
        }
        signals.wait(Duration::from_millis(500));
        for arrived in forwarded(signals.take()) {
            let reached_cmd = arrived.from_kernel && in_my_group(pid);
            if !reached_cmd && let Ok(signal) = Signal::try_from(arrived.signal) {
                process::signal(pid, signal)?;
            }
        }
    }
}

fn in_my_group(pid: Pid) -> bool {
    nix::unistd::getpgid(Some(pid.nix())).is_ok_and(|group| group == nix::unistd::getpgrp())
}

/// Stops the cluster and waits until its directory is gone, or with `keep` (or an `owner` that
/// still runs) lets it run on and says where it is, in `format` where that fits on the line
/// (not `env`).
fn finish(
    cluster: &Cluster,
    holder: Holder,
    keep: bool,
    owner: Option<&Owner>,
    format: Format,
) -> Result<()> {
    let owner = owner.filter(|owner| owner.runs());
    if keep || owner.is_some() {
        holder.release();
        let until = match (owner, cluster.timeout) {
            (Some(owner), 0) => format!(
                "it stops once process {} has exited and no client is connected",
                owner.pid
            ),
            (Some(owner), seconds) => format!(
                "it stops once process {} has exited and no client has been connected for {seconds} s",
                owner.pid
            ),
            (None, 0) => "it runs until `pgtmp stop`".to_string(),
            (None, seconds) => format!("it stops after {seconds} s without a client"),
        };
        let shown = match format {
            Format::Env => cluster.url.clone(),
            _ => cluster.render(format, || {
                Installation {
                    bindir: cluster.bindir.clone(),
                }
                .version()
                .ok()
            }),
        };
        let (what, kept) = if keep {
            ("kept the cluster", "; its directory is kept when it stops")
        } else {
            ("the cluster runs on", "")
        };
        eprintln!(
            "pgtmp: {what}: {shown} (directory {}; {until}{kept})",
            cluster.socket_dir.display()
        );
        return Ok(());
    }
    // The watchdog stops the server and removes the directory, as at its timeout.
    process::signal(cluster.watchdog_pid, Signal::SIGTERM)?;
    drop(holder);
    crate::lifecycle::watchdog::wait_gone(
        cluster.watchdog_pid,
        &cluster.socket_dir.display().to_string(),
        STOP_LIMIT,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sslmodes_that_cannot_work_are_removed() {
        for mode in ["disable", "allow", "prefer", "require"] {
            assert!(!redirects("PGSSLMODE", OsStr::new(mode)), "{mode}");
        }
        for mode in ["verify-ca", "verify-full", "", "REQUIRE"] {
            assert!(redirects("PGSSLMODE", OsStr::new(mode)), "{mode:?}");
        }
        assert!(!redirects("PGREQUIRESSL", OsStr::new("1")));
        assert!(redirects("PGHOSTADDR", OsStr::new("192.0.2.1")));
        assert!(!redirects("PGAPPNAME", OsStr::new("mine")));
    }

    #[test]
    fn statuses_follow_the_shell() {
        assert_eq!(status_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(status_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(status_code(ExitStatus::from_raw(9)), 137);
    }
}
