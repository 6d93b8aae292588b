//! `pgtmp list` (`ls`): this account's running clusters, and with --all its kept clusters that
//! have stopped, as tables or JSON.

use crate::cli::GlobalArgs;
use crate::lifecycle::disk;
use crate::lifecycle::kept;
use crate::lifecycle::session;
use crate::os::process::Pid;
use crate::output::url;
use crate::server::client;
use crate::state::clusters::{self, ClusterDir};
use crate::state::ownership;
use anyhow::{Context, Result};
use nix::unistd::Uid;
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// One running cluster as listed.
#[derive(Debug, Serialize)]
struct Entry {
    /// Always true: told apart from [`Stopped`] in the JSON of --all.
    running: bool,
    /// A URL for `psql` and `pgtmp stop`. TCP clusters are shown without their password,
    /// which pgtmp does not keep.
    url: String,
    dir: PathBuf,
    server_pid: Pid,
    watchdog_pid: Pid,
    port: u16,
    tcp: bool,
    user: String,
    /// The server's version ("15.18"); only the major version when the server cannot be asked.
    version: Option<String>,
    age_seconds: Option<u64>,
    /// None when not known: no client now, and the watchdog has not looked (e.g. `-w 0`).
    idle_seconds: Option<u64>,
    /// None when the server could not be asked (starting or stopping).
    connections: Option<i64>,
    size_bytes: u64,
    timeout: u64,
    keep: bool,
    /// `--owner-pid`: the process the cluster follows.
    owner_pid: Option<Pid>,
}

/// One element of the JSON array, with its fields in their order.
#[derive(Serialize)]
#[serde(untagged)]
enum Listed<'a> {
    Running(&'a Entry),
    Stopped(&'a Stopped),
}

/// A kept cluster that has stopped, as `list --all` shows it.
#[derive(Debug, Serialize)]
struct Stopped {
    /// Always false.
    running: bool,
    dir: PathBuf,
    /// The URL of `test` once `reopen` has started it again.
    url: String,
    /// The major version the data directory was made by.
    version: Option<String>,
    /// Seconds since its server last wrote to its log (at the latest, when it stopped).
    last_used_seconds: Option<u64>,
    size_bytes: u64,
    keep: bool,
    /// The command that starts it again.
    reopen: String,
}

/// Only reads: nothing is created, and root needs no account switch to read. Root reads a
/// directory the server account owns, so everything is read with bounds, and whatever is
/// not as pgtmp makes it is skipped with a warning (see clusters.rs).
pub fn run(json: bool, all: bool, global: &GlobalArgs) -> Result<()> {
    // Root's clusters lie in one state directory per server account: all of them are read.
    let (invoker, covered) = session::covered(global.run_as())?;
    let mut entries: Vec<Entry> = Vec::new();
    let mut stopped: Vec<Stopped> = Vec::new();
    let mut prepared = disk::Prepared::default();
    for (_, path) in &covered {
        let state = match clusters::open_state_dir(path) {
            Ok(state) => state,
            Err(err) => {
                clusters::warn_skipping(path, &err);
                None
            }
        };
        entries.extend(
            state
                .as_ref()
                .map(clusters::all)
                .unwrap_or_default()
                .iter()
                .filter_map(|cluster| entry(cluster, invoker.uid.as_raw())),
        );
        if state.is_some() {
            let dir = crate::state::statedir::StateDir { path: path.clone() };
            prepared.add(&disk::measure(&dir));
        }
        if all && let Some(state) = &state {
            stopped.extend(
                kept::stopped(state)
                    .iter()
                    .map(|cluster| stopped_entry(cluster, &invoker.name)),
            );
        }
    }
    entries.sort_by_key(|e| std::cmp::Reverse(e.age_seconds));
    stopped.sort_by_key(|e| e.last_used_seconds);
    let text = if json {
        let listed: Vec<Listed> = entries
            .iter()
            .map(Listed::Running)
            .chain(stopped.iter().map(Listed::Stopped))
            .collect();
        serde_json::to_string_pretty(&listed).context("cannot render JSON")? + "\n"
    } else {
        let tables = match (table(&entries), stopped_table(&stopped)) {
            (running, kept) if running.is_empty() || kept.is_empty() => running + &kept,
            (running, kept) => format!("{running}\n{kept}"),
        };
        if tables.is_empty() {
            tables
        } else {
            tables + &footer(&entries, &stopped, &prepared)?
        }
    };
    crate::output::stdout::print(&text)
}

/// The line under the tables: what the clusters listed and the prepared state take on disk.
fn footer(entries: &[Entry], stopped: &[Stopped], prepared: &disk::Prepared) -> Result<String> {
    let max = crate::cli::settings::disk_max()?;
    let running: u64 = entries.iter().map(|e| e.size_bytes).sum();
    let kept: u64 = stopped.iter().map(|e| e.size_bytes).sum();
    let kept = match stopped.len() {
        0 => String::new(),
        n => format!("kept {} ({n}), ", disk::human(kept)),
    };
    Ok(format!(
        "\ndisk: running {} ({}), {kept}{}\n",
        disk::human(running),
        entries.len(),
        disk::describe(prepared, max)
    ))
}

/// A kept cluster that has stopped; `user` is the role its URL names (the invoker's).
fn stopped_entry(cluster: &ClusterDir, user: &str) -> Stopped {
    let last_used = cluster
        .last_used()
        .and_then(|t| SystemTime::now().duration_since(t).ok());
    Stopped {
        running: false,
        dir: cluster.path.clone(),
        url: url::socket_url(user, &cluster.path),
        version: cluster.data_version().map(|v| v.to_string()),
        last_used_seconds: last_used.map(|d| d.as_secs()),
        size_bytes: crate::state::usage::disk_usage(&cluster.path),
        keep: true,
        reopen: kept::reopen_command(
            &cluster.path,
            crate::state::instance::kept_with_tcp_in(&cluster.dir),
        ),
    }
}

/// A running cluster of `owner`'s, or None for anything else: being prepared, waiting to be
/// claimed (pre-started), stopping already, gone meanwhile, or another account's. Running
/// means that its recorded watchdog is proven to look after this directory.
fn entry(cluster: &ClusterDir, owner: u32) -> Option<Entry> {
    let dir = cluster.path.as_path();
    let instance = cluster.instance();
    let state = cluster.running_state()?;
    let account = Uid::from_raw(cluster.dir.stat().ok()?.st_uid);
    let proven = ownership::prove_watchdog(
        &cluster.dir,
        state.watchdog_pid,
        state.watchdog_start,
        account,
    );
    // A pre-started server is nobody's cluster until a start claims it.
    if state.owner_uid != owner
        || !matches!(proven, Ok(Some(_)))
        || crate::lifecycle::claim::is_waiting(&instance)
    {
        return None;
    }
    let url = if state.tcp {
        format!(
            "postgresql://{}@127.0.0.1:{}/{}",
            url::encode(&state.user),
            state.port,
            url::DATABASE
        )
    } else {
        url::socket_url(&state.user, dir)
    };
    let now = SystemTime::now();
    let since = |time: Option<SystemTime>| {
        time.and_then(|t| now.duration_since(t).ok())
            .map(|d| d.as_secs())
    };
    let activity =
        client::activity_within(dir, state.port, &state.user, Duration::from_secs(3)).ok();
    let idle_seconds = match &activity {
        Some(a) if a.clients > 0 => a.idle_seconds.map(|s| s as u64),
        _ => since(instance.idle_since()),
    };
    Some(Entry {
        url,
        dir: dir.to_path_buf(),
        server_pid: state.postmaster_pid,
        watchdog_pid: state.watchdog_pid,
        port: state.port,
        tcp: state.tcp,
        user: state.user,
        version: activity
            .as_ref()
            .map(|a| a.version.clone())
            .or_else(|| cluster.data_version().map(|v| v.to_string())),
        age_seconds: since(instance.started_at()),
        idle_seconds,
        connections: activity.map(|a| a.clients),
        size_bytes: crate::state::usage::disk_usage(dir),
        timeout: state.timeout,
        keep: state.keep || instance.is_kept(),
        owner_pid: state.owner.map(|(pid, _)| pid),
        running: true,
    })
}

fn table(entries: &[Entry]) -> String {
    if entries.is_empty() {
        return String::new();
    }
    let mut rows =
        vec![["URL", "PID", "VERSION", "AGE", "IDLE", "CONNS", "SIZE"].map(String::from)];
    for e in entries {
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
        rows.push([
            e.url.clone(),
            e.server_pid.to_string(),
            or_dash(e.version.clone()),
            or_dash(e.age_seconds.map(duration)),
            or_dash(e.idle_seconds.map(duration)),
            or_dash(e.connections.map(|c| c.to_string())),
            disk::human(e.size_bytes),
        ]);
    }
    aligned(&rows)
}

/// The table of kept clusters that have stopped.
fn stopped_table(entries: &[Stopped]) -> String {
    if entries.is_empty() {
        return String::new();
    }
    let mut rows =
        vec![["KEPT, STOPPED", "VERSION", "LAST USED", "SIZE", "REOPEN"].map(String::from)];
    for e in entries {
        rows.push([
            e.dir.display().to_string(),
            e.version.clone().unwrap_or_else(|| "-".to_string()),
            e.last_used_seconds
                .map_or_else(|| "-".to_string(), |s| format!("{} ago", duration(s))),
            disk::human(e.size_bytes),
            e.reopen.clone(),
        ]);
    }
    aligned(&rows)
}

/// Rows as columns two spaces apart, each as wide as its widest cell.
fn aligned<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
    }
    out
}

/// 42s, 3m05s, 2h07m, 3d04h.
fn duration(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// 512K, 38M, 1.2G.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_read_well() {
        assert_eq!(duration(42), "42s");
        assert_eq!(duration(185), "3m05s");
        assert_eq!(duration(7620), "2h07m");
        assert_eq!(duration(3 * 86400 + 4 * 3600), "3d04h");
        assert_eq!(disk::human(4096), "4K");
        assert_eq!(disk::human(38 * 1024 * 1024), "38M");
        assert_eq!(disk::human(1288490189), "1.2G");
    }
}
