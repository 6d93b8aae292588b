//! A directory named with `-d`: checked before anything is made, prepared (made, or
//! initialized when empty), and proven startable when it already holds a cluster.

use crate::lifecycle::watchdog::{self, OnFailure};
use crate::os::account::Account;
use crate::server::discover::Installation;
use crate::server::initdb;
use crate::state::instance::{Found, Instance};
use crate::state::statedir::{self, StateDir};
use crate::state::{ownership, safefs};
use anyhow::{Context, Result, bail};
use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Makes a `-d` path absolute and checks that a socket inside it fits the kernel's limit and
/// that the URL can name it.
pub fn absolute(dir: &Path) -> Result<PathBuf> {
    let dir =
        std::path::absolute(dir).with_context(|| format!("cannot resolve {}", dir.display()))?;
    if statedir::has_comma(&dir) {
        return Err(crate::output::exit::usage(format!(
            "-d {}: the path contains a comma, which splits the URL's host into two; choose a directory without one",
            dir.display()
        )));
    }
    if statedir::socket_path_len(&dir) > statedir::SOCKET_PATH_MAX {
        bail!(
            "-d {}: the path is too long for the server's Unix socket (at most {} bytes); use a shorter one",
            dir.display(),
            statedir::SOCKET_PATH_MAX - statedir::SOCKET_FILE_LEN
        );
    }
    Ok(dir)
}

/// What is at a `-d` path; something pgtmp must not touch is refused before anything is made.
pub fn inspect(dir: &Path) -> Result<Found> {
    let found = Instance::inspect(dir).map_err(|err| {
        if !safefs::is_permission_denied(&err) {
            return err;
        }
        let me = Account::current().map_or_else(|_| "this account".to_string(), |a| a.name);
        anyhow::anyhow!(
            "-d {}: permission denied to account {me}, which needs to reach it (search permission \
             on every parent directory); choose a directory {me} can reach, e.g. under /tmp or \
             your home",
            dir.display()
        )
    })?;
    match found {
        Found::Foreign(reason) => Err(foreign(dir, &reason)),
        found => Ok(found),
    }
}

fn foreign(dir: &Path, reason: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "-d {} {reason}; give an empty or missing directory, or one made by `pgtmp initdb -d`",
        dir.display()
    )
}

/// Turns a missing or empty `-d` directory into a prepared cluster directory, leaving it as it
/// was if that fails. Returns what to do with it should the later start fail.
pub fn prepare(
    install: &Installation,
    dir: &Path,
    found: Found,
    server: &Account,
    user: &str,
) -> Result<OnFailure> {
    let instance = Instance::new(dir);
    if found != Found::Missing {
        claim_existing(dir, &found, server)?;
    }
    let on_failure = match found {
        Found::Missing => {
            make_missing_dir(dir).with_context(|| {
                let server = &server.name;
                format!(
                    "cannot create {} as account {server}, which the server runs as; choose a directory {server} can reach and write (e.g. under /tmp), or create this one with {server} as its owner in a place {server} can reach",
                    dir.display(),
                )
            })?;
            OnFailure::Remove
        }
        Found::Empty => OnFailure::EmptyOut,
        Found::Unfinished => {
            // A start killed while preparing it: made again from scratch, unless a pgtmp is
            // at it right now.
            if ownership::processes_inside(dir) {
                bail!(
                    "-d {}: another pgtmp is preparing this directory; wait for it, or choose another directory",
                    dir.display()
                );
            }
            // Its killed initdb may have left shared memory, proven to be of this very data
            // directory by the segment's header: released before the directory goes.
            crate::server::shm::release_left_in(&instance.data());
            instance.empty_out()?;
            OnFailure::EmptyOut
        }
        Found::Cluster => return Ok(OnFailure::Leave),
        Found::PgTmp(data) => {
            adopt_pg_tmp(install, dir, &data, server, user)?;
            return Ok(OnFailure::Leave);
        }
        Found::Foreign(reason) => return Err(foreign(dir, &reason)),
    };
    let step = crate::output::progress::step(&format!("initializing {}", dir.display()));
    let prepared = initdb::prepare(install, &instance, user);
    drop(step);
    if let Err(err) = prepared {
        watchdog::dispose(&instance, on_failure);
        return Err(err);
    }
    Ok(on_failure)
}

/// Proves that an existing `-d` directory is the server account's own before pgtmp puts a
/// cluster in it (or starts the one there): nobody else may have made it or be able to write
/// into it. An empty one is made private first and then checked to be still empty, so nothing
/// can be slipped in between.
fn claim_existing(dir: &Path, found: &Found, server: &Account) -> Result<()> {
    let handle = safefs::Dir::open(dir)?;
    let st = handle.stat()?;
    if st.st_uid != nix::unistd::geteuid().as_raw() {
        return Err(anyhow::anyhow!(
            "-d {}: the directory belongs to uid {}, not to {}, who runs the server; pgtmp uses only directories of its own: remove it, or give a missing directory",
            dir.display(),
            st.st_uid,
            server.name
        ));
    }
    if *found == Found::Empty {
        handle.chmod(0o700)?;
        if !handle.is_empty()? {
            bail!(
                "-d {}: something appeared in the directory while pgtmp was checking it; give an empty or missing directory",
                dir.display()
            );
        }
    } else if safefs::mode_of(&st) & 0o022 != 0 {
        return Err(anyhow::anyhow!(
            "-d {}: the directory is writable by other accounts (mode {:o}), so they could have changed the cluster in it; make it private with `chmod 700 {}`",
            dir.display(),
            safefs::mode_of(&st),
            dir.display()
        ));
    }
    Ok(())
}

/// Creates a missing `-d` directory: its parents as needed, the directory itself exclusively
/// in its parent's handle, so that one another account made there first is never used.
fn make_missing_dir(dir: &Path) -> Result<()> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        bail!("{} cannot be a cluster directory", dir.display());
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    safefs::Dir::open(parent)?.make_dir(name, 0o700)?;
    Ok(())
}

/// Checks that `-d DIR` names a cluster that pgtmp can start: made by the same major version
/// and not running already.
pub fn check_startable(install: &Installation, instance: &Instance) -> Result<()> {
    let dir = instance.dir.display();
    if instance.read_state()?.is_some() {
        // Its watchdog holds the directory's lock for as long as it lives.
        if ownership::is_locked(&instance.dir) {
            bail!(
                "a cluster is already running in {dir}; stop it first with `pgtmp stop -d {dir}`"
            );
        }
        // The watchdog that wrote it is gone.
        instance.remove_state();
    }
    let have = instance.data_version()?;
    let need = install.major_version()?;
    if have != need {
        bail!(
            "{dir} holds a PostgreSQL {have} cluster, but {} is PostgreSQL {need}; pass --bindir of a PostgreSQL {have} installation",
            install.bindir.display()
        );
    }
    Ok(())
}

/// Gives an existing empty `-d` directory to the server account, as root, before dropping
/// privileges. A missing one is created later by the server account itself, so that it can
/// also remove it again. Works on the directory's handle: a symlink at the path is refused,
/// so root never hands over what a planted link points to, and only a directory of root's
/// own (or the server account's) is taken: never one that another account made.
pub fn hand_over(dir: &Path, server: &Account) -> Result<()> {
    let Ok(Found::Empty) = inspect(dir) else {
        return Ok(());
    };
    let handle = safefs::Dir::open(dir)?;
    let st = handle.stat()?;
    if st.st_uid == server.uid.as_raw() {
        return Ok(());
    }
    if st.st_uid != 0 || safefs::mode_of(&st) & 0o022 != 0 {
        return Err(anyhow::anyhow!(
            "-d {}: the directory belongs to uid {} (mode {:o}); root hands the server account {} only an empty private directory of its own: remove it, or give a missing directory",
            dir.display(),
            st.st_uid,
            safefs::mode_of(&st),
            server.name
        ));
    }
    handle.chmod(0o700)?;
    handle.chown(server.uid, server.gid, &server.name)
}

/// Refuses a `-d` inside the pool (such as the path `pgtmp initdb` prints): an entry started
/// where it lies could be claimed by another start meanwhile. A plain `pgtmp` takes it.
pub fn refuse_pool_entry(dir: &Path, state: &StateDir) -> Result<()> {
    let pools = state.pools();
    let inside = dir.starts_with(&pools)
        || matches!(
            (std::fs::canonicalize(dir), std::fs::canonicalize(&pools)),
            (Ok(dir), Ok(pools)) if dir.starts_with(&pools)
        );
    if inside {
        return Err(crate::output::exit::usage(format!(
            "-d {} is in pgtmp's pool, whose entries a plain `pgtmp` (without -d) takes by itself (the next one takes the entry `pgtmp initdb` printed); run `pgtmp`, or give -d a directory of your own",
            dir.display()
        )));
    }
    Ok(())
}

/// Takes over a directory pg_tmp made (see state/pg_tmp.rs), checked like any existing `-d`:
/// its data directory becomes `data`, pg_hba.conf pgtmp's (pg_tmp's trusts every TCP client,
/// and pgtmp's -t asks for the password it prints), the role `user` and database `test` are
/// made if missing, and it is marked kept, as pg_tmp's kept directories are. Every step can be
/// taken again, so a conversion cut short is finished by the next `pgtmp -d DIR`.
fn adopt_pg_tmp(
    install: &Installation,
    dir: &Path,
    data: &str,
    server: &Account,
    user: &str,
) -> Result<()> {
    let handle = safefs::Dir::open(dir)?;
    let data_path = handle.child_path(data);
    if let Some((pid, _)) = ownership::postmaster_file(&data_path)
        && crate::os::process::alive(pid)
    {
        bail!(
            "-d {}: a server (pid {pid}) runs in {}, pg_tmp's or another; stop it first (`pg_tmp -d {} stop`, or `pg_ctl -D {} stop`)",
            dir.display(),
            data_path.display(),
            dir.display(),
            data_path.display()
        );
    }
    let version = handle
        .open_dir(data)?
        .read_text("PG_VERSION")?
        .and_then(|text| crate::state::instance::parse_major(&text));
    let need = install.major_version()?;
    if version != Some(need) {
        bail!(
            "-d {}: pg_tmp's cluster in {} is of PostgreSQL {}, but {} is PostgreSQL {need}; pass --bindir of that installation",
            dir.display(),
            data_path.display(),
            version.map_or_else(|| "?".to_string(), |v| v.to_string()),
            install.bindir.display()
        );
    }
    let instance = Instance::new(dir);
    instance.mark_kept()?;
    if data != "data" {
        handle.rename(data, "data")?;
    }
    handle
        .open_dir("data")?
        .write_atomic("pg_hba.conf", initdb::PG_HBA.as_bytes())?;
    let step = crate::output::progress::step(&format!("taking over pg_tmp's {}", dir.display()));
    initdb::complete_foreign_cluster(install, &instance, user, &server.name)?;
    drop(step);
    instance.write_marker()
}
