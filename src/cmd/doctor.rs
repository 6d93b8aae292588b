//! `pgtmp doctor`: what pgtmp would use and whether it can work, each check passing or failing
//! with the fix. Only looks: it starts nothing, creates nothing and changes nothing.

use crate::cli::GlobalArgs;
use crate::os::account::{self, Account};
use crate::output::exit::Passed;
use crate::server::discover::{self, Installation};
use crate::state::safefs::Dir;
use crate::state::statedir::{self, SOCKET_PATH_MAX, Verdict};
use anyhow::Result;
use nix::fcntl::{AT_FDCWD, AtFlags};
use nix::unistd::{AccessFlags, faccessat};
use std::fs;
use std::path::Path;

/// The report: checks in order, printed at the end; any fatal failure makes the exit status 1.
#[derive(Default)]
struct Report {
    fatal: bool,
    text: String,
}

impl Report {
    fn line(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
    }

    fn pass(&mut self, what: &str) {
        self.line(&format!("pass  {what}"));
    }

    fn info(&mut self, what: &str) {
        self.line(&format!("      {what}"));
    }

    /// A failure that does not stop pgtmp from working (exit status stays 0).
    fn warn(&mut self, what: &str, fix: &str) {
        self.line(&format!("warn  {what}\n      fix: {fix}"));
    }

    /// A failure that makes pgtmp unusable.
    fn fail(&mut self, what: &str, fix: &str) {
        self.fatal = true;
        self.line(&format!("FAIL  {what}\n      fix: {fix}"));
    }
}

pub fn run(global: &GlobalArgs) -> Result<()> {
    let mut report = Report::default();
    // A start would refuse these; doctor got past them to report everything else. Both kinds
    // of message end in the fix, "; unset ...".
    let invalid = crate::cli::set_aside_variables()
        .into_iter()
        .chain(crate::cli::settings::problems());
    for message in invalid {
        let (problem, fix) = message.split_once("; unset ").unwrap_or((&message, ""));
        report.fail(problem, &format!("unset {fix}"));
    }
    let install = installations(&mut report, global);
    let accounts = accounts(&mut report, global);
    let state = state_dir(&mut report, accounts.as_ref());
    if let (Some(state), Some(install)) = (&state, &install) {
        pools(&mut report, state, install);
    }
    if let Some(state) = &state {
        disk(&mut report, state);
    }
    if let Some((_, server)) = &accounts {
        saved(&mut report, server);
    }
    match which::which("psql") {
        Ok(psql) => report.pass(&format!("client: {} (for the examples)", psql.display())),
        Err(_) => report.warn(
            "no psql on PATH (pgtmp itself does not need it)",
            "install the PostgreSQL client (Debian/Ubuntu: apt-get install postgresql-client)",
        ),
    }
    report.line(if report.fatal {
        "pgtmp cannot work here until the failures above are fixed"
    } else {
        "pgtmp can work here"
    });
    crate::output::stdout::print(&report.text)?;
    if report.fatal {
        return Err(Passed(crate::output::exit::FAILURE).into());
    }
    Ok(())
}

/// Every installation found, in discovery order, and the one that would be used.
fn installations(report: &mut Report, global: &GlobalArgs) -> Option<Installation> {
    let chosen = global.choice().and_then(|choice| discover::choose(&choice));
    let candidates = discover::candidates(&global.pg_path());
    if candidates.is_empty() {
        report.info("no PostgreSQL installation found in the usual places");
    } else {
        report.info("PostgreSQL installations, in the order pgtmp looks:");
    }
    for (install, source) in &candidates {
        let version = install
            .version()
            .unwrap_or_else(|err| format!("unusable: {err:#}"));
        let used = matches!(&chosen, Ok(c) if c == install);
        report.info(&format!(
            "  {:<32} {:<8} {source}{}",
            install.bindir.display(),
            version,
            if used { "  <- used" } else { "" }
        ));
    }
    match chosen {
        Ok(install) => {
            let why = if global.bindir.is_some() {
                "named by --bindir/PGTMP_BINDIR".to_string()
            } else if global.pg.is_some() {
                "the first of that major, as --pg/PGTMP_PG asks".to_string()
            } else {
                candidates
                    .iter()
                    .find(|(c, _)| *c == install)
                    .map(|(_, source)| format!("the first found ({source})"))
                    .unwrap_or_else(|| "the first found".to_string())
            };
            match install.version() {
                Ok(version) => {
                    report.pass(&format!(
                        "installation: {} (PostgreSQL {version}), {why}",
                        install.bindir.display()
                    ));
                    Some(install)
                }
                Err(err) => {
                    report.fail(
                        &format!("{} does not run: {err:#}", install.postgres().display()),
                        "reinstall PostgreSQL, or point --bindir/PGTMP_BINDIR at a working one",
                    );
                    None
                }
            }
        }
        Err(err) => {
            let text = format!("{err:#}");
            let (problem, fix) = match text.split_once("; install") {
                Some((problem, fix)) => (problem, format!("install{fix}")),
                None => text
                    .split_once("; ")
                    .map(|(p, f)| (p, f.to_string()))
                    .unwrap_or((text.as_str(), "install PostgreSQL or pass --bindir".into())),
            };
            report.fail(problem, &fix);
            None
        }
    }
}

/// Who runs pgtmp and who would run the server.
fn accounts(report: &mut Report, global: &GlobalArgs) -> Option<(Account, Account)> {
    let invoker = match Account::current() {
        Ok(a) => a,
        Err(err) => {
            report.fail(
                &format!("{err:#}"),
                "run pgtmp as an account with a passwd entry",
            );
            return None;
        }
    };
    match crate::lifecycle::session::server_for(&invoker, global.run_as()) {
        Ok(server) if invoker.is_root() => {
            report.pass(&format!(
                "running as root: the server runs as {} (uid {}), commands of `pgtmp run` as root; database user {}",
                server.name, server.uid, invoker.name
            ));
            Some((invoker, server))
        }
        Ok(server) => {
            report.pass(&format!(
                "running as {} (uid {}): the server runs as the same account; database user {}",
                invoker.name, invoker.uid, invoker.name
            ));
            Some((invoker, server))
        }
        Err(err) => {
            let fix = match global.run_as().for_invoker(invoker.is_root()) {
                Some(name) if invoker.is_root() => format!(
                    "create account {name} (useradd --system {name}), or name an existing one with --run-as/PGTMP_RUN_AS"
                ),
                Some(_) => "drop --run-as/PGTMP_RUN_AS: it only applies when root invokes pgtmp"
                    .to_string(),
                None => {
                    "create a 'postgres' account (useradd --system postgres) or pass --run-as USER"
                        .to_string()
                }
            };
            report.fail(&format!("{err:#}"), &fix);
            None
        }
    }
}

/// PGTMP_DIR: where it is, the socket-path limit, and whether the server account can use it.
fn state_dir(
    report: &mut Report,
    accounts: Option<&(Account, Account)>,
) -> Option<statedir::StateDir> {
    // Without a server account (reported above), the invoker's own place is shown.
    let location = match accounts {
        Some((invoker, server)) => statedir::location_for(invoker, server),
        None => Account::current().and_then(|me| statedir::location_for(&me, &me)),
    };
    let path = match location {
        Ok(path) => path,
        Err(err) => {
            report.fail(
                &format!("{err:#}"),
                "set PGTMP_DIR to a shorter path, e.g. /tmp/pgtmp",
            );
            return None;
        }
    };
    let longest = statedir::instance_socket_len(&path);
    report.pass(&format!(
        "PGTMP_DIR {}: socket paths of {longest} bytes fit the limit of {SOCKET_PATH_MAX}",
        path.display()
    ));
    let (invoker, server) = accounts?;
    // Root's automatic state directory lies in root's own pgtmp-root/, which lies in TMPDIR.
    let root_states = (invoker.is_root() && statedir::chosen_automatically())
        .then(|| path.parent())
        .flatten();
    let judged = match root_states {
        Some(place) => place.parent(),
        None => path.parent(),
    };
    if statedir::chosen_automatically()
        && let Some(parent) = judged
        && let Ok(Some(dir)) = Dir::open_if_exists(parent)
        && let Ok(st) = dir.stat()
        && let Err(problem) = statedir::judge_parent(parent, &st, invoker, server)
    {
        report.fail(&problem.what, &problem.fix);
    }
    if let Some(place) = root_states
        && let Err(err) = statedir::open_root_states(place)
    {
        let text = format!("{err:#}");
        let (what, fix) = text.split_once("; ").unwrap_or((&text, "remove it"));
        report.fail(&format!("PGTMP_DIR {}: {what}", path.display()), fix);
        return None;
    }
    // Judged exactly as a start judges it (statedir::judge_existing), through a handle.
    match Dir::open_if_exists(&path) {
        Err(err) if crate::state::safefs::is_permission_denied(&err) => unreachable(
            report,
            &path,
            server,
            &format!("{} cannot reach it ({err:#})", server.name),
        ),
        Err(err) => report.fail(
            &format!("PGTMP_DIR {err:#}"),
            "remove it, or set PGTMP_DIR elsewhere",
        ),
        Ok(None) => missing_state_dir(report, &path, invoker, server),
        Ok(Some(dir)) => existing_state_dir(report, &path, &dir, invoker, server),
    }
    Some(statedir::StateDir { path })
}

/// A PGTMP_DIR the server account cannot use, with the fix.
fn unreachable(report: &mut Report, path: &Path, server: &Account, what: &str) {
    report.fail(
        &format!("PGTMP_DIR {}: {what}", path.display()),
        &format!(
            "set PGTMP_DIR to a directory {} can reach and write, e.g. /tmp/pgtmp",
            server.name
        ),
    )
}

/// An existing state directory, opened: what a start would decide about it.
fn existing_state_dir(
    report: &mut Report,
    path: &Path,
    dir: &Dir,
    invoker: &Account,
    server: &Account,
) {
    let verdict = dir
        .stat()
        .ok()
        .zip(dir.is_empty().ok())
        .map(|(st, empty)| statedir::judge_existing(path, &st, empty, invoker, server));
    match verdict {
        None => unreachable(report, path, server, "cannot be read"),
        Some(Err(problem)) => report.fail(&problem.what, &problem.fix),
        Some(Ok(Verdict::HandOver)) => report.pass(&format!(
            "PGTMP_DIR {} is root's, empty and private; the next start hands it to {}",
            path.display(),
            server.name
        )),
        Some(Ok(Verdict::Use))
            if !accessible_as(server, path, AccessFlags::W_OK | AccessFlags::X_OK) =>
        {
            unreachable(
                report,
                path,
                server,
                &format!(
                    "{} cannot reach it (a directory above it is closed to {})",
                    server.name, server.name
                ),
            )
        }
        Some(Ok(Verdict::Use)) => report.pass(&format!(
            "PGTMP_DIR {} belongs to {}, is private (0700) and writable",
            path.display(),
            server.name
        )),
    }
}

/// A state directory that does not exist yet: whether the first start can make it. As root,
/// only the directory itself is made (and handed to the server account, which must be able
/// to reach it); otherwise the account makes it, and any missing parent, itself.
fn missing_state_dir(report: &mut Report, path: &Path, invoker: &Account, server: &Account) {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let existing = path
        .ancestors()
        .skip(1)
        .find(|a| a.exists())
        .unwrap_or(parent);
    // Root's pgtmp-root/ is made 0711, for the server accounts to pass through.
    let root_states = invoker.is_root()
        && statedir::chosen_automatically()
        && parent.file_name() == Some(std::ffi::OsStr::new(statedir::ROOT_STATES))
        && parent.parent() == Some(existing);
    let problem = if invoker.is_root() && existing != parent && !root_states {
        Some(format!(
            "{} is missing, and directories root would make for it are private to root",
            parent.display()
        ))
    } else if invoker.is_root() && !accessible_as(server, existing, AccessFlags::X_OK) {
        Some(format!(
            "{} cannot enter {}",
            server.name,
            existing.display()
        ))
    } else if !invoker.is_root()
        && !accessible_as(server, existing, AccessFlags::W_OK | AccessFlags::X_OK)
    {
        Some(format!(
            "does not exist, and {} cannot create it in {}",
            server.name,
            existing.display()
        ))
    } else {
        None
    };
    match problem {
        Some(what) => unreachable(report, path, server, &what),
        None => report.pass(&format!(
            "PGTMP_DIR {} does not exist yet; the first start creates it (mode 0700, owner {})",
            path.display(),
            server.name
        )),
    }
}

/// Whether `account` may access `path` with `flags` (which takes entering every directory
/// above it), asked with that account's effective ids.
fn accessible_as(account: &Account, path: &Path, flags: AccessFlags) -> bool {
    account::check_as(account, || {
        Ok(faccessat(AT_FDCWD, path, flags, AtFlags::AT_EACCESS)?)
    })
    .is_ok()
}

/// The pools: ready entries and the last refill error of each.
/// What the prepared state takes against PGTMP_DISK_MAX (an invalid value is reported with
/// the other variables).
fn disk(report: &mut Report, state: &statedir::StateDir) {
    let Ok(max) = crate::cli::settings::disk_max() else {
        return;
    };
    let prepared = crate::lifecycle::disk::measure(state);
    let line = format!("disk: {}", crate::lifecycle::disk::describe(&prepared, max));
    if prepared.bytes() > max {
        report.warn(
            &format!("{line}: over the budget"),
            "`pgtmp gc` evicts the least recently used schema cache entries (a start does within a minute); raise PGTMP_DISK_MAX, or lower PGTMP_POOL_SIZE",
        );
    } else {
        report.pass(&line);
    }
}

/// Where the templates kept for the first start after a wiped /tmp are, and their size.
fn saved(report: &mut Report, server: &Account) {
    use crate::state::saved::Saved;
    if Saved::turned_off() {
        report.pass("saved templates: off (PGTMP_NO_SAVED_TEMPLATE)");
        return;
    }
    match Saved::existing_for(server.uid) {
        Some(saved) => {
            let part = saved.measure();
            report.pass(&format!(
                "saved templates: {} ({}), in {}",
                part.count,
                crate::lifecycle::disk::human(part.bytes),
                saved.path().display()
            ));
        }
        None => report.pass(&format!(
            "saved templates: none yet for {} (the next template made is saved in its cache directory, if it has a private one)",
            server.name
        )),
    }
}

fn pools(report: &mut Report, state: &statedir::StateDir, install: &Installation) {
    // An invalid size is reported with the other variables.
    let Ok(size) = crate::cli::settings::pool_size() else {
        return;
    };
    let dirs: Vec<_> = fs::read_dir(state.pools())
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    if dirs.is_empty() {
        report.pass(&format!(
            "pool: none yet (size {size}); the first start with {} initializes in the foreground",
            install.bindir.display()
        ));
        return;
    }
    for dir in dirs {
        let ready = crate::lifecycle::pool::entries(&dir, "ready.").len();
        let template = if dir.join("template").is_dir() {
            "template made"
        } else {
            "no template yet"
        };
        let waiting = crate::lifecycle::pool::entries(&dir, "waiting.").len();
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match crate::state::safefs::read_text_at(&dir.join("refill.error")) {
            Ok(Some(error)) => report.warn(
                &format!("pool {name}: {ready} of {size} ready, {template}, {waiting} pre-started; the last refill failed: {}", error.trim()),
                "fix the cause above; starts meanwhile prepare their directory in the foreground (slower)",
            ),
            _ => report.pass(&format!(
                "pool {name}: {ready} of {size} ready, {template}, {waiting} pre-started"
            )),
        }
    }
}
