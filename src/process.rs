//! Subprocesses and signals: a clean environment for PostgreSQL programs, errors that carry
//! the program's own words, and liveness checks.

use anyhow::{Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// A command for a PostgreSQL program, with the caller's PG* variables removed (PGPORT,
/// PGDATA, PGHOST, PGUSER... would otherwise change what initdb and postgres do) and a fixed
/// C locale so that their messages can be read back.
pub fn pg_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("PG") && !key.starts_with("PGTMP_") {
            cmd.env_remove(&*key);
        }
    }
    cmd.env("LC_ALL", "C")
        .env_remove("LANG")
        .env_remove("LANGUAGE");
    cmd.stdin(Stdio::null());
    // A process group of its own: signals to the caller's group (Ctrl-C, a CI runner killing
    // the job) reach pgtmp but never a running initdb or postgres directly, which would leak
    // shared memory nobody recorded. Left alone, they end cleanly (a killed pgtmp closes the
    // pipes they read from), and the sweep removes what they made.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd
}

/// Runs a command to completion; on failure the error names `what` and ends with the tail of
/// what the command printed.
pub fn run_checked(cmd: &mut Command, what: &str) -> Result<Output> {
    let out = match cmd.output() {
        Ok(out) => out,
        Err(err) => {
            let program = cmd.get_program().to_string_lossy();
            return Err(crate::exit::spawn_error(
                err,
                format!("cannot run {what} ({program})"),
            ));
        }
    };
    if !out.status.success() {
        // stderr last: it says why (initdb's stdout ends with the step that failed).
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        bail!("{what} failed ({}): {}", out.status, tail(&text, 5));
    }
    Ok(out)
}

/// The last `n` non-empty lines of `text`, joined into one line.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// True while a process with this pid exists and has not exited. A zombie (exited, not yet
/// reaped) counts as gone: an orphan is reaped by init, which may take a while.
pub fn alive(pid: i32) -> bool {
    pid > 0
        && !matches!(
            kill(Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        )
        && !is_zombie(pid)
}

#[cfg(target_os = "linux")]
fn is_zombie(pid: i32) -> bool {
    // /proc/PID/stat: "PID (COMM) STATE ..."; COMM may hold spaces and parentheses.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[cfg(not(target_os = "linux"))]
fn is_zombie(_pid: i32) -> bool {
    false
}

/// Sends a signal, treating "already gone" as success.
pub fn signal(pid: i32, sig: Signal) -> Result<()> {
    match kill(Pid::from_raw(pid), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(err) => bail!("cannot send {sig} to process {pid}: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines_on_one_line() {
        assert_eq!(tail("a\n\nb\nc\n", 2), "b | c");
        assert_eq!(tail("", 3), "");
    }

    #[test]
    fn exited_children_are_not_alive() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        assert!(alive(std::process::id() as i32));
        // Not reaped until wait() below: a zombie, which must not count as alive.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while alive(pid) && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert!(!alive(pid));
        child.wait().unwrap();
    }

    #[test]
    fn failures_carry_output() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo boom >&2; exit 3"]);
        let err = run_checked(&mut cmd, "the test program").unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("the test program failed") && text.contains("boom"),
            "{text}"
        );
    }

    #[test]
    fn pg_variables_are_removed() {
        // SAFETY: this test's process has no other threads touching the environment at this
        // point that could race, and the variable is unique to this test.
        unsafe { std::env::set_var("PGPORT_PGTMP_TEST_ONLY", "1") };
        let cmd = pg_command(Path::new("/bin/true"));
        let removed = cmd
            .get_envs()
            .any(|(k, v)| k == "PGPORT_PGTMP_TEST_ONLY" && v.is_none());
        assert!(removed);
    }
}
