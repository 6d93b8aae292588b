//! Turns a parsed start (its options, the global ones, the PGTMP_* settings) into the
//! domain's `StartRequest`, the one place where the command line meets the start path; and `serve`'s settings.

use super::settings::Settings;
use super::{GlobalArgs, ServeArgs, StartArgs};
use crate::lifecycle::start::StartRequest;
use crate::output::exit;
use crate::output::format::Format;
use crate::server::discover::{Choice, Majors};
use anyhow::Result;
use std::path::PathBuf;

impl StartArgs {
    /// What this start asks for; fails (a usage error) on an invalid PGTMP_* setting, all of
    /// them checked, also those this start will not use (the background sweep's cache age).
    pub fn request(&self, global: &GlobalArgs) -> Result<StartRequest> {
        let settings = Settings::from_env()?;
        Ok(StartRequest {
            format: self.format.unwrap_or_default(),
            tcp: self.wants_tcp(),
            listen: None,
            port: self.port,
            timeout: self.idle_timeout(),
            keep: self.keep,
            owner_pid: self.owner_pid.map(crate::os::process::Pid::from_raw),
            options: self.options.clone(),
            dir: self.dir.clone(),
            schema_files: self.schema_files.clone(),
            now: self.now.clone(),
            no_cache: self.no_cache,
            install: global.choice()?,
            run_as: global.run_as.clone(),
            run_as_from_env: global.run_as_from_env,
            pool_size: settings.pool_size,
            pool_max: settings.pool_max,
            prestart: settings.prestart,
            sweep_after: settings.sweep_after(),
        })
    }
}

impl GlobalArgs {
    /// The installation a command uses: --bindir, or the one major --pg names (several are for
    /// `pgtmp run`, see [`GlobalArgs::several_majors`]), looked for also in PGTMP_PG_PATH.
    pub fn choice(&self) -> Result<Choice> {
        let major = match &self.pg {
            None => None,
            Some(_) if self.bindir.is_some() => return Err(pg_and_bindir()),
            Some(Majors::List(list)) if list.len() == 1 => Some(list[0]),
            Some(_) => {
                return Err(exit::usage(
                    "--pg with several majors (or all) is for `pgtmp run`, which runs CMD once per major; name one major here, e.g. --pg 16",
                ));
            }
        };
        Ok(Choice {
            bindir: self.bindir.clone(),
            major,
            pg_path: self.pg_path(),
        })
    }

    /// The majors of `pgtmp run --pg 15,16` or `--pg all`: None for one major or none.
    pub fn several_majors(&self) -> Result<Option<&Majors>> {
        match &self.pg {
            Some(Majors::List(list)) if list.len() == 1 => Ok(None),
            Some(_) if self.bindir.is_some() => Err(pg_and_bindir()),
            other => Ok(other.as_ref()),
        }
    }

    /// The directories of PGTMP_PG_PATH (`--pg-path`), separated by `:`.
    pub fn pg_path(&self) -> Vec<PathBuf> {
        self.pg_path
            .as_deref()
            .map(|text| {
                std::env::split_paths(text)
                    .filter(|dir| !dir.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn pg_and_bindir() -> anyhow::Error {
    exit::usage(
        "--pg (PGTMP_PG) picks among the installations found, and --bindir (PGTMP_BINDIR) names one: give only one of them",
    )
}

/// A start against a `pgtmp serve` (--remote): only the format and the -f files apply.
pub struct RemoteStart {
    pub format: Format,
    pub files: Vec<PathBuf>,
}

impl StartArgs {
    /// What a start against a `pgtmp serve` asks for; an option that cannot apply to a
    /// database serve hands out is refused, never ignored.
    pub fn remote(&self, global: &GlobalArgs) -> Result<RemoteStart> {
        let refused = [
            (
                self.port.is_some(),
                "-p (serve says where its databases are)",
            ),
            (
                self.timeout.is_some(),
                "-w (a database of serve's lives for its --ttl)",
            ),
            (self.keep, "-k"),
            (
                !self.options.is_empty(),
                "-o (serve's server has its own settings)",
            ),
            (self.dir.is_some(), "-d"),
            (self.now.is_some(), "--now"),
            (self.no_cache, "--no-cache"),
            (self.owner_pid.is_some(), "--owner-pid"),
            (global.pg.is_some(), "--pg (PGTMP_PG)"),
            (global.bindir.is_some(), "--bindir (PGTMP_BINDIR)"),
            (global.run_as.is_some(), "--run-as (PGTMP_RUN_AS)"),
        ];
        if let Some((_, option)) = refused.iter().find(|(given, _)| *given) {
            return Err(remote_refuses(option));
        }
        Ok(RemoteStart {
            format: self.format.unwrap_or_default(),
            files: self.schema_files.clone(),
        })
    }
}

/// The refusal of an option that a database from `pgtmp serve` cannot honour.
pub fn remote_refuses(option: &str) -> anyhow::Error {
    exit::usage(format!(
        "{option} does not apply with --remote (PGTMP_REMOTE), which gets a database from pgtmp serve; drop it, or drop --remote for a local cluster"
    ))
}

impl ServeArgs {
    /// What serve is asked for; an empty token is refused (it would let anyone in).
    pub fn settings(&self) -> Result<crate::serve::Settings> {
        if self.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(crate::output::exit::usage(
                "--token is empty; give a secret of your own, e.g. --token \"$(openssl rand -hex 16)\"",
            ));
        }
        Ok(crate::serve::Settings {
            listen: self.listen,
            server: self.server.clone(),
            ttl: self.ttl,
            pool: self.pool as usize,
            max_per_client: self.max_per_client as usize,
            token: self.token.clone(),
        })
    }

    /// How serve starts its own cluster: as `pgtmp -t` would, with the installation chosen by
    /// the global options; the start options' PGTMP_* variables do not apply.
    pub fn own_cluster(&self, global: &GlobalArgs) -> Result<StartRequest> {
        let start = StartArgs {
            tcp: true,
            ..StartArgs::default()
        };
        let mut request = start.request(global)?;
        // Where the API listens, the databases do: beyond loopback only over TLS.
        let ip = self.listen.ip();
        request.listen = (!ip.is_loopback()).then_some(ip);
        Ok(request)
    }
}
