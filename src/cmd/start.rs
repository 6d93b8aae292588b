//! `pgtmp [start]`: a running cluster and its URL (or `--format`) on stdout.

use crate::cli::{GlobalArgs, StartArgs};
use crate::lifecycle::start;
use crate::lifecycle::watchdog;
use crate::os::testpause;
use crate::output::trace;
use anyhow::{Result, anyhow};
use std::io::Write;

pub fn run(args: StartArgs, global: &GlobalArgs) -> Result<()> {
    if let Some(remote) = &global.remote {
        return from_serve(&args, remote, global);
    }
    let request = args.request(global)?;
    let format = request.format;
    let launched = start::launch(&request, None)?;
    testpause::point("reported");
    let text = launched
        .cluster
        .render(format, || launched.install.version().ok());
    let end = crate::output::format::ending(format.is_one_line());
    let mut stdout = std::io::stdout().lock();
    if let Err(err) = write!(stdout, "{text}{end}").and_then(|()| stdout.flush()) {
        // Nobody learns the URL: the cluster would only wait for its idle timeout.
        let dir = launched.cluster.socket_dir.display().to_string();
        let stopped = watchdog::stop_watchdog(launched.cluster.watchdog_pid, &dir);
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

/// `pgtmp --remote URL [-f FILE...]`: a database from that `pgtmp serve`, printed as a local
/// cluster's URL is.
fn from_serve(args: &StartArgs, remote: &str, global: &GlobalArgs) -> Result<()> {
    let asked = args.remote(global)?;
    let client = crate::serve::remote::Client::new(remote)?;
    let database = client.database(&asked.files)?;
    let end = crate::output::format::ending(asked.format.is_one_line());
    crate::output::stdout::print(&format!("{}{end}", database.render(asked.format)))
}
