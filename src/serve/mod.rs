//! `pgtmp serve`: throwaway databases over HTTP, with faitout's API and IntegreSQL's, on
//! serve's own cluster or an existing server; the records of what was handed out live in that
//! server (store.rs), so that a restart forgets nothing and several serve processes share it.
//!
//! ```text
//! main thread: listen, start the backend (forks, so before any thread), catch SIGINT/SIGTERM
//!   ├─ HTTP workers (http.rs) ── faitout.rs, integresql.rs, page.rs
//!   ├─ filler (worker.rs): the ready pool
//!   └─ expiry (worker.rs): what is past its time
//! ```

mod backend;
mod faitout;
mod http;
mod integresql;
mod page;
mod provision;
pub mod remote;
mod reply;
mod service;
mod store;
mod worker;

pub use service::Settings;

use crate::lifecycle::start::StartRequest;
use crate::os::signals::SignalPipe;
use crate::output::exit;
use anyhow::{Context, Result};
use backend::Backend;
use nix::sys::signal::Signal;
use service::Service;
use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

/// HTTP worker threads: requests that wait (for a template being built, for a database being
/// made) hold one each.
const WORKERS: usize = 16;

/// Refuses what cannot be served, before anything is started.
fn check(settings: &Settings) -> Result<()> {
    let ip = settings.listen.ip();
    if !ip.is_loopback() && settings.token.is_none() {
        return Err(exit::usage(format!(
            "--listen {}: serving beyond this machine needs a token, so that only your clients get databases; add --token TOKEN (or PGTMP_SERVE_TOKEN), or listen on 127.0.0.1",
            settings.listen
        )));
    }
    Ok(())
}

/// Runs serve until SIGINT or SIGTERM; `own` is how to start its own cluster when there is no
/// `--server`.
pub fn run(settings: Settings, own: StartRequest) -> Result<()> {
    check(&settings)?;
    let listener = TcpListener::bind(settings.listen).map_err(|err| {
        exit::usage(format!(
            "cannot listen on {}: {err}; choose another --listen address or port",
            settings.listen
        ))
    })?;
    let address = listener
        .local_addr()
        .context("cannot read the address listened on")?;
    // The port is serve's: the cluster's watchdog must not keep it after serve has gone.
    crate::os::detach::keep_from_detached(std::os::fd::AsFd::as_fd(&listener));
    let backend = match &settings.server {
        Some(url) => Backend::server(url)?,
        // Forks the watchdog: this process still has a single thread.
        None => Backend::own(&own)?,
    };
    let backend = backend.prepare()?;
    let signals = SignalPipe::catch(&[Signal::SIGINT, Signal::SIGTERM])?;
    let http = tiny_http::Server::from_listener(listener, None)
        .map_err(|err| anyhow::anyhow!("cannot serve HTTP on {address}: {err}"))?;
    let service = Arc::new(Service::new(backend, settings)?);
    let threads = spawn(&service, Arc::new(http))?;
    eprintln!(
        "pgtmp serve: listening on http://{address}/, databases on {}:{} ({})",
        service.backend.host_shown(),
        service.backend.port,
        service.backend.shown
    );
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "http://{address}/")
        .and_then(|()| stdout.flush())
        .context("cannot print the URL")?;
    drop(stdout);
    while !signals.wait(Duration::from_secs(1)) || signals.take().is_empty() {}
    eprintln!("pgtmp serve: stopping");
    service.stop();
    for thread in threads {
        let _ = thread.join();
    }
    shut_down(service)
}

/// The HTTP workers, the filler and the expiry.
fn spawn(
    service: &Arc<Service>,
    http: Arc<tiny_http::Server>,
) -> Result<Vec<std::thread::JoinHandle<()>>> {
    let mut threads = Vec::new();
    for n in 0..WORKERS {
        let (service, http) = (Arc::clone(service), Arc::clone(&http));
        threads.push(
            std::thread::Builder::new()
                .name(format!("http-{n}"))
                .spawn(move || http::work(&http, &service))
                .map_err(|err| exit::spawn_error(err, "cannot start a thread"))?,
        );
    }
    let filler = Arc::clone(service);
    let expiry = Arc::clone(service);
    for (name, body) in [
        (
            "filler",
            Box::new(move || worker::fill(&filler)) as Box<dyn FnOnce() + Send>,
        ),
        ("expiry", Box::new(move || worker::expire(&expiry))),
    ] {
        threads.push(
            std::thread::Builder::new()
                .name(name.into())
                .spawn(body)
                .map_err(|err| exit::spawn_error(err, "cannot start a thread"))?,
        );
    }
    Ok(threads)
}

/// After the threads: on a shared server, drops this serve's pool entries nobody got (what
/// was handed out stays recorded, for the expiry of whichever serve runs then); serve's own
/// cluster is stopped with everything in it.
fn shut_down(service: Arc<Service>) -> Result<()> {
    let service = Arc::into_inner(service).context("a thread of serve did not stop")?;
    if !service.backend.is_own() {
        worker::drop_unhanded(&service)?;
    }
    service.backend.stop()
}
