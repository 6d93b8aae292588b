//! Turns a parsed start (its options, the global ones, the PGTMP_* settings) into the
//! domain's `StartRequest`, the one place where the command line meets the start path.

use super::settings::Settings;
use super::{GlobalArgs, StartArgs};
use crate::lifecycle::start::StartRequest;
use anyhow::Result;

impl StartArgs {
    /// What this start asks for; fails (a usage error) on an invalid PGTMP_* setting, all of
    /// them checked, also those this start will not use (the background sweep's cache age).
    pub fn request(&self, global: &GlobalArgs) -> Result<StartRequest> {
        let settings = Settings::from_env()?;
        Ok(StartRequest {
            format: self.format.unwrap_or_default(),
            tcp: self.wants_tcp(),
            port: self.port,
            timeout: self.idle_timeout(),
            keep: self.keep,
            options: self.options.clone(),
            dir: self.dir.clone(),
            schema_files: self.schema_files.clone(),
            now: self.now.clone(),
            no_cache: self.no_cache,
            bindir: global.bindir.clone(),
            run_as: global.run_as.clone(),
            run_as_from_env: global.run_as_from_env,
            pool_size: settings.pool_size,
            prestart: settings.prestart,
            sweep_after: settings.sweep_after(),
        })
    }
}
