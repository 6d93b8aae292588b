//! The postgres server process: its command line, start, readiness, and deliberate shutdown.

use crate::os::process;
use crate::output::exit;
use crate::server::discover::Installation;
use crate::server::tls;
use crate::state::instance::Instance;
use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use std::fs::File;
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Settings for test clusters. Durability is pointless for a throwaway directory, and the
/// server should be small. Given first so that `-o` can override each of them.
const TEST_SETTINGS: &[&str] = &[
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "shared_buffers=12MB",
    "logging_collector=off",
    "log_destination=stderr",
];

/// Open files a server needs: PostgreSQL 15 refuses to start with fewer than 58 it can still
/// open (48 plus 10 reserved), counted after the ones it inherited.
const MIN_OPEN_FILES: u64 = 64;
/// How far the soft limit is raised when it is below [`MIN_OPEN_FILES`] (if the hard limit
/// allows): what most systems give by default.
const RAISED_OPEN_FILES: u64 = 1024;

/// Makes sure a server can be started within RLIMIT_NOFILE, before anything is made: a soft
/// limit below what PostgreSQL needs is raised up to the hard limit, and a hard limit below it
/// is refused with the fix. Without this the start would fail halfway, where too few
/// descriptors can even keep the half-made directory from being removed.
pub fn ensure_open_files() -> Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).context("cannot read the open files limit")?;
    if soft >= MIN_OPEN_FILES {
        return Ok(());
    }
    if hard < MIN_OPEN_FILES {
        bail!(
            "only {hard} open files are allowed (ulimit -n), but PostgreSQL needs at least \
             {MIN_OPEN_FILES}: raise ulimit -n"
        );
    }
    setrlimit(Resource::RLIMIT_NOFILE, RAISED_OPEN_FILES.min(hard), hard)
        .context("cannot raise the open files limit (ulimit -n)")
}

/// What a server is started with.
pub struct ServerSpec<'a> {
    pub install: &'a Installation,
    pub instance: &'a Instance,
    /// Where the socket file goes: the instance's directory, except where its path is too long.
    pub socket_dir: &'a Path,
    /// TCP port with `tcp`; otherwise only the number in the socket file's name.
    pub port: u16,
    pub tcp: bool,
    /// With `tcp`: the address to listen on instead of 127.0.0.1 (`pgtmp serve --listen`).
    pub listen: Option<IpAddr>,
    /// Extra postgres arguments from `-o`, already split into words.
    pub options: &'a [String],
}

/// Splits `-o` values into postgres arguments with shell quoting rules. Refuses, as a usage
/// error, settings that decide where the server listens or keeps its files: the URL pgtmp
/// prints depends on them, and pgtmp removes what it made.
pub fn split_options(values: &[String]) -> Result<Vec<String>> {
    let mut words = Vec::new();
    for value in values {
        let split = shlex::split(value).ok_or_else(|| {
            exit::usage(format!("-o '{value}' has an unbalanced quote; quote each setting, e.g. -o \"-c search_path='a,b'\""))
        })?;
        if let Some((what, instead)) = reserved_option(&split) {
            return Err(exit::usage(format!(
                "-o '{value}' sets {what}, which pgtmp decides itself so that its URL is right; \
                 {instead}, and drop it from -o"
            )));
        }
        words.extend(split);
    }
    Ok(words)
}

/// postgres' short options that take a value, as its getopt string has them
/// ("B:bc:C:D:d:EeFf:h:ijk:lN:nOPp:r:S:sTt:W:-:"); `-` stands for `--name=value`.
const SHORT_WITH_VALUE: &str = "BcCDdfhkNprStW-";

/// The first argument in `words` that would set where the server listens or keeps its files,
/// read as postgres reads its command line: `-c name=value`, `-cname=value`, `--name=value`
/// (names case-insensitive, `-` for `_`), clustered short flags (`-Fp 6000`) and the short
/// flags -D, -h, -i, -k, -p. Returns what it sets and which pgtmp option to use instead.
fn reserved_option(words: &[String]) -> Option<(String, &'static str)> {
    const PORT: &str = "use -p PORT for a TCP port";
    const LISTEN: &str = "use -t for a TCP listener (on 127.0.0.1 only)";
    const SOCKET: &str = "the socket is always in the cluster's directory; use -d DIR to choose it";
    const FILES: &str = "use -d DIR to choose where the cluster's files are";
    let setting = |name: &str| -> Option<&'static str> {
        match name.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "port" => Some(PORT),
            "listen_addresses" => Some(LISTEN),
            "unix_socket_directories" => Some(SOCKET),
            "data_directory" | "config_file" | "hba_file" | "ident_file" | "external_pid_file" => {
                Some(FILES)
            }
            _ => None,
        }
    };
    let mut rest = words.iter();
    while let Some(word) = rest.next() {
        if word == "--" {
            break;
        }
        let Some(flags) = word.strip_prefix('-').filter(|f| !f.is_empty()) else {
            continue;
        };
        for (at, flag) in flags.char_indices() {
            if flag == 'i' {
                return Some(("listen_addresses (-i)".to_string(), LISTEN));
            }
            if !SHORT_WITH_VALUE.contains(flag) {
                continue;
            }
            let attached = &flags[at + flag.len_utf8()..];
            let value = if attached.is_empty() {
                rest.next().map(String::as_str).unwrap_or_default()
            } else {
                attached
            };
            let found = match flag {
                'c' | '-' => {
                    let name = value.split('=').next().unwrap_or_default();
                    setting(name).map(|instead| (name.trim().to_string(), instead))
                }
                'p' => Some(("port (-p)".to_string(), PORT)),
                'h' => Some(("listen_addresses (-h)".to_string(), LISTEN)),
                'k' => Some(("unix_socket_directories (-k)".to_string(), SOCKET)),
                'D' => Some(("the data directory (-D)".to_string(), FILES)),
                _ => None,
            };
            if found.is_some() {
                return found;
            }
            break;
        }
    }
    None
}

impl ServerSpec<'_> {
    pub fn args(&self) -> Vec<String> {
        let name = self
            .instance
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let socket_dir = self.socket_dir.to_string_lossy().replace('"', "\"\"");
        let mut args = vec![
            "-D".to_string(),
            self.instance.data().to_string_lossy().into_owned(),
            "-p".to_string(),
            self.port.to_string(),
            "-c".to_string(),
            // Quoted: the setting is a comma-separated list, and paths may hold commas.
            format!("unix_socket_directories=\"{socket_dir}\""),
            "-c".to_string(),
            // Never '*': with -t only loopback (or the one address serve was told to listen
            // on), otherwise no TCP listener at all.
            format!(
                "listen_addresses={}",
                match (self.tcp, self.listen) {
                    (true, Some(ip)) => ip.to_string(),
                    (true, None) => "127.0.0.1".to_string(),
                    (false, _) => String::new(),
                }
            ),
            "-c".to_string(),
            format!("cluster_name=pgtmp-{name}"),
        ];
        if self.tls() {
            // Before -o, so that `-o "-c ssl=off"` wins.
            args.push("-c".to_string());
            args.push("ssl=on".to_string());
        }
        for setting in TEST_SETTINGS {
            args.push("-c".to_string());
            args.push((*setting).to_string());
        }
        args.extend(self.options.iter().cloned());
        args
    }

    /// TLS is served on the TCP listener when the data directory has its certificate (made
    /// with it, see [`tls::add_certificate`]); a socket start never needs it: clients do not
    /// use TLS on a Unix socket, and loading the key would only slow the start.
    fn tls(&self) -> bool {
        self.tcp && tls::has_certificate(&self.instance.data())
    }

    /// Starts postgres with its output appended to `log`. On Linux the server gets SIGQUIT
    /// (immediate shutdown) if the process that started it dies, so a killed watchdog never
    /// leaves a server behind.
    pub fn spawn(&self, log: &File) -> Result<Child> {
        let mut cmd = process::pg_command(&self.install.postgres());
        cmd.args(self.args())
            .current_dir(&self.instance.dir)
            .stdout(log.try_clone().context("cannot share the log file")?)
            .stderr(log.try_clone().context("cannot share the log file")?)
            .stdin(Stdio::null());
        #[cfg(target_os = "linux")]
        {
            let parent = nix::unistd::getpid();
            // SAFETY: between fork and exec this only makes async-signal-safe syscalls.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sys::prctl::set_pdeathsig(Signal::SIGQUIT)?;
                    // The parent may have died before the line above took effect.
                    if nix::unistd::getppid() != parent {
                        return Err(std::io::Error::other("parent exited"));
                    }
                    Ok(())
                });
            }
        }
        cmd.spawn().map_err(|err| {
            let what = format!("cannot start {}", self.install.postgres().display());
            crate::output::exit::spawn_error(err, what)
        })
    }
}

pub enum Startup {
    Ready,
    Exited,
    TimedOut,
}

/// Waits until the server reports itself ready in postmaster.pid, the way `pg_ctl -w` does:
/// PostgreSQL writes "ready" on the file's status line once it accepts connections
/// (https://www.postgresql.org/docs/current/storage-file-layout.html). Checked every
/// millisecond, so no time is lost to a fixed sleep.
pub fn wait_ready(child: &mut Child, instance: &Instance, limit: Duration) -> Result<Startup> {
    let pid_file = instance.data().join("postmaster.pid");
    let pid = child.id().to_string();
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(text)) = crate::state::safefs::read_text_at(&pid_file) {
            let mut lines = text.lines();
            // The pid line guards against a stale file left by an earlier run.
            if lines.next() == Some(pid.as_str())
                && lines.nth(6).is_some_and(|s| s.trim() == "ready")
            {
                return Ok(Startup::Ready);
            }
        }
        if child
            .try_wait()
            .context("cannot check on postgres")?
            .is_some()
        {
            return Ok(Startup::Exited);
        }
        if Instant::now() >= deadline {
            return Ok(Startup::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// True once a server this process started has exited (it is reaped then), or when that
/// cannot be told.
pub fn exited(server: &mut Child) -> bool {
    server.try_wait().map_or(true, |status| status.is_some())
}

/// Stops a server this process started, as `shutdown` does.
pub fn stop_child(server: &mut Child) {
    let pid = process::Pid::of(server);
    let _ = shutdown(&pid, || exited(server));
}

/// Stops a server on purpose, escalating if it does not go:
/// SIGINT (fast shutdown: disconnect clients, checkpoint, exit), then SIGQUIT (immediate
/// shutdown: no checkpoint, recovery on a later start), then SIGKILL.
/// See https://www.postgresql.org/docs/current/server-shutdown.html.
/// `gone` reports whether the process has exited (and, for a child, reaps it). `server` is a
/// proven process handle, or the pid of a child not reaped yet (see [`process::Target`]).
pub fn shutdown(server: &impl process::Target, mut gone: impl FnMut() -> bool) -> Result<()> {
    let pid = server.pid();
    let steps = [
        (Signal::SIGINT, Duration::from_secs(10)),
        (Signal::SIGQUIT, Duration::from_secs(5)),
        (Signal::SIGKILL, Duration::from_secs(5)),
    ];
    for (sig, grace) in steps {
        if gone() {
            return Ok(());
        }
        server.send(sig)?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if gone() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    if gone() {
        Ok(())
    } else {
        bail!("postgres (pid {pid}) survived SIGKILL")
    }
}

/// True when the server in `data` is shutting down: its postmaster.pid says `stopping` (line
/// 8), as after a SIGTERM sent by someone else. A smart shutdown waits for every session to end,
/// the watchdog's own included, so the watchdog must notice and finish it.
pub fn is_stopping(data: &Path) -> bool {
    crate::state::safefs::read_text_at(&data.join("postmaster.pid"))
        .ok()
        .flatten()
        .is_some_and(|text| text.lines().nth(7).is_some_and(|l| l.trim() == "stopping"))
}

/// True when the log says the TCP port was taken (by someone who got there first).
pub fn lost_port_race(log: &str) -> bool {
    log.contains("could not bind IPv4 address") && log.contains("Address already in use")
}

/// How much of the end of a server log is read to find why it failed: the reason is in its
/// last lines, and a log can grow without bound.
pub const LOG_TAIL: u64 = 64 * 1024;

/// The lines of a failed start that say why: FATAL, ERROR, PANIC and their DETAIL/HINT, and
/// anything postgres printed without a log prefix (e.g. invalid command-line options).
pub fn failure_lines(log: &str) -> String {
    // "could not bind" is logged at LOG level but says why a TCP start failed.
    let wanted = [
        "FATAL:",
        "ERROR:",
        "PANIC:",
        "DETAIL:",
        "HINT:",
        "could not bind",
    ];
    // "2026-01-01 10:00:00.000 UTC [42] FATAL:  ..." -> "FATAL:  ...": the prefix says nothing.
    let without_prefix = |line: &str| -> String {
        wanted
            .iter()
            .filter_map(|w| line.find(w))
            .min()
            .map_or(line, |at| &line[at..])
            .to_string()
    };
    let lines: Vec<String> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| wanted.iter().any(|w| l.contains(w)) || l.starts_with("postgres:"))
        .filter(|l| !l.contains("database system is shut down"))
        .map(without_prefix)
        .collect();
    if lines.is_empty() {
        process::tail(log, 3)
    } else {
        lines[lines.len().saturating_sub(4)..].join(" | ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn options_come_last_and_socket_only_means_no_listener() {
        let install = Installation {
            bindir: PathBuf::from("/pg/bin"),
        };
        let instance = Instance::new("/tmp/pgtmp-1/abcd1234");
        let options = split_options(&["-c fsync=on -c 'work_mem=8MB'".to_string()]).unwrap();
        let spec = ServerSpec {
            install: &install,
            instance: &instance,
            socket_dir: &instance.dir,
            port: 5432,
            tcp: false,
            listen: None,
            options: &options,
        };
        let args = spec.args();
        assert!(args.contains(&"listen_addresses=".to_string()));
        assert!(args.contains(&"unix_socket_directories=\"/tmp/pgtmp-1/abcd1234\"".to_string()));
        assert_eq!(
            &args[args.len() - 4..],
            ["-c", "fsync=on", "-c", "work_mem=8MB"]
        );
        let spec = ServerSpec { tcp: true, ..spec };
        let beyond = ServerSpec {
            listen: Some("0.0.0.0".parse().unwrap()),
            ..spec
        };
        assert!(
            beyond
                .args()
                .contains(&"listen_addresses=0.0.0.0".to_string())
        );
        let spec = ServerSpec {
            listen: None,
            ..beyond
        };
        assert!(
            spec.args()
                .contains(&"listen_addresses=127.0.0.1".to_string())
        );
        assert!(!spec.args().iter().any(|a| a.contains('*')));
    }

    #[test]
    fn tls_is_on_for_tcp_with_a_certificate_and_options_win() {
        let install = Installation {
            bindir: PathBuf::from("/pg/bin"),
        };
        let root = tempfile::tempdir().unwrap();
        let instance = Instance::new(root.path());
        let options = split_options(&["-c ssl=off".to_string()]).unwrap();
        let spec = ServerSpec {
            install: &install,
            instance: &instance,
            socket_dir: &instance.dir,
            port: 5432,
            tcp: true,
            listen: None,
            options: &options,
        };
        let ssl_on = |spec: &ServerSpec| spec.args().iter().position(|a| a == "ssl=on");
        assert_eq!(ssl_on(&spec), None, "no certificate, no TLS");
        std::fs::create_dir(instance.data()).unwrap();
        for file in [tls::CERT_FILE, tls::KEY_FILE] {
            std::fs::write(instance.data().join(file), "pem").unwrap();
        }
        let at = ssl_on(&spec).expect("TCP with a certificate serves TLS");
        let off = spec.args().iter().position(|a| a == "ssl=off").unwrap();
        assert!(at < off, "-o comes after ssl=on, so it wins");
        assert_eq!(
            ssl_on(&ServerSpec { tcp: false, ..spec }),
            None,
            "socket only"
        );
    }

    #[test]
    fn unbalanced_options_are_rejected() {
        let err = split_options(&["-c 'oops".to_string()]).unwrap_err();
        assert_eq!(exit::code_for(&err), exit::USAGE);
    }

    fn reserved(option: &str) -> Option<String> {
        reserved_option(&shlex::split(option).unwrap()).map(|(what, _)| what)
    }

    #[test]
    fn settings_that_move_the_server_are_refused_in_every_spelling() {
        for option in [
            "-c port=6000",
            "-cport=6000",
            "--port=6000",
            "-c PORT=6000",
            "-c 'Port = 6000'",
            "-c fsync=off -c port=6000",
            "-p 6000",
            "-p6000",
            "-Fp 6000",
            "-Fp6000",
            "-c listen_addresses=*",
            "--listen-addresses=*",
            "--LISTEN_ADDRESSES=*",
            "-h 0.0.0.0",
            "-i",
            "-Fi",
            "-c unix_socket_directories=/tmp",
            "--unix-socket-directories=/tmp",
            "-k /tmp",
            "-k/tmp",
            "-D /elsewhere",
            "-c data_directory=/elsewhere",
            "--config-file=/etc/x.conf",
            "-c hba_file=/etc/hba",
            "--ident_file=/etc/ident",
            "--external-pid-file=/tmp/pid",
        ] {
            assert!(reserved(option).is_some(), "{option} should be refused");
            let err = split_options(&[option.to_string()]).unwrap_err();
            assert_eq!(exit::code_for(&err), exit::USAGE, "{option}");
        }
        let err = split_options(&["-c port=6000".to_string()]).unwrap_err();
        assert!(format!("{err:#}").contains("-p PORT"), "{err:#}");
    }

    #[test]
    fn other_settings_pass() {
        for option in [
            "-c fsync=on",
            "-c work_mem=8MB -c log_statement=all",
            "--work-mem=8MB",
            "-c search_path='port,listen_addresses'",
            "-c application_name=-p",
            "-F",
            "-B 100",
            "-N 20 -S 1024",
            "-c log_min_messages=debug1 -c portal_x.y=1",
            "-d 1",
            "-c ssl=off",
        ] {
            assert_eq!(reserved(option), None, "{option} should pass");
        }
    }

    #[test]
    fn failure_lines_pick_the_reason() {
        let log = "2026-01-01 LOG:  starting\n\
                   2026-01-01 FATAL:  unrecognized configuration parameter \"nope\"\n\
                   2026-01-01 LOG:  database system is shut down\n";
        assert_eq!(
            failure_lines(log),
            "FATAL:  unrecognized configuration parameter \"nope\""
        );
        assert!(lost_port_race(
            "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use"
        ));
    }
}
