//! An account's cluster directories, found and opened without trusting what is in them: the
//! instance directories directly in PGTMP_DIR and the `-d` directories registered there
//! (`elsewhere.*` while they run, `kept.*` for kept ones), each opened as a [`Dir`] handle (never through a symlink) and read only
//! with bounded reads of regular files of the directory's owner, so that nothing planted
//! there (a FIFO, a device, a symlink, a huge file) can make pgtmp hang, read without end or
//! act on another directory.

use crate::state::instance::{self, Instance, STATE, State};
use crate::state::safefs::{self, Dir};
use crate::state::statedir::{INSTANCE_NAME_LEN, KEPT, REGISTERED};
use anyhow::{Context, Result, bail};
use nix::unistd::Uid;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// One cluster directory, opened.
#[derive(Debug)]
pub struct ClusterDir {
    /// The path pgtmp knows the directory by (in PGTMP_DIR, or as registered): the one its
    /// server was started with.
    pub path: PathBuf,
    pub dir: Dir,
}

impl ClusterDir {
    /// The same directory for what goes by path (writing the keep mark, removing it).
    pub fn instance(&self) -> Instance {
        Instance::new(&self.path)
    }

    /// True when the directory is a complete cluster directory made by pgtmp.
    pub fn is_cluster(&self) -> bool {
        instance::is_cluster_in(&self.dir)
    }

    pub fn data(&self) -> Result<Dir> {
        self.dir.open_dir("data")
    }

    /// When the cluster was last used: when its server last wrote to its log (at the latest,
    /// when it stopped).
    pub fn last_used(&self) -> Option<std::time::SystemTime> {
        let st = self.dir.stat_at("postgres.log").ok()??;
        let secs = u64::try_from(st.st_mtime).ok()?;
        std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs))
    }

    /// The major version the data directory was made by, read with bounds.
    pub fn data_version(&self) -> Option<u32> {
        instance::data_version_in(&self.dir).ok()
    }

    /// The state of a cluster that may be running, for going through many: None when there
    /// is none or it is malformed (as a crashed older pgtmp may leave it); a state file pgtmp
    /// does not read (a symlink, a FIFO, too large, another account's) is skipped with a
    /// warning.
    pub fn running_state(&self) -> Option<State> {
        match self.dir.read_text(STATE) {
            Ok(text) => State::parse(&text?).ok(),
            Err(err) => {
                warn_skipping(&self.path, &err);
                None
            }
        }
    }

    /// Removes the directory with everything in it. Its contents go through this handle, so
    /// nothing outside this very directory is touched even if a path in it or above it is
    /// swapped meanwhile; only an empty directory can then be removed by its name.
    pub fn remove(&self) -> Result<()> {
        let (Some(parent), Some(name)) = (self.path.parent(), self.path.file_name()) else {
            bail!("{} has no parent directory", self.path.display());
        };
        self.dir.empty_out()?;
        match Dir::open_if_exists(parent)? {
            Some(parent) => match parent.remove_empty_dir(name) {
                Err(_) if parent.stat_at(name)?.is_none() => Ok(()),
                other => other,
            },
            None => Ok(()),
        }
    }

    /// The state its watchdog recorded, or None when there is none; read through the handle,
    /// only from a small regular file of the directory's owner.
    pub fn read_state(&self) -> Result<Option<State>> {
        instance::read_state_in(&self.dir)
    }
}

/// Prints a warning about something skipped; the rest goes on.
pub fn warn_skipping(what: &Path, err: &anyhow::Error) {
    crate::output::exit::warn(&format!("skipping {}: {err:#}", what.display()));
}

/// Opens PGTMP_DIR itself (None when it does not exist), refusing a symlink, and checks that
/// nobody but its owner can write into it: everything in it is trusted only as its owner's.
pub fn open_state_dir(path: &Path) -> Result<Option<Dir>> {
    let Some(dir) = Dir::open_if_exists(path)? else {
        return Ok(None);
    };
    let st = dir.stat()?;
    if safefs::mode_of(&st) & 0o022 != 0 {
        bail!(
            "PGTMP_DIR {} is writable by other accounts (mode {:o}); make it private with `chmod 700 {}`",
            path.display(),
            safefs::mode_of(&st),
            path.display()
        );
    }
    Ok(Some(dir))
}

/// Every cluster directory of the state directory `state`: the instance directories in it
/// and the directories registered there. Each belongs to the state directory's owner and
/// nobody else can write it. Anything else is skipped with a warning (a symlink, a FIFO, an
/// oversized or foreign registration, a directory of another account's); a registration of
/// a directory that is gone (its cluster stopped meanwhile) is skipped silently.
pub fn all(state: &Dir) -> Vec<ClusterDir> {
    let names = match state.names() {
        Ok(names) => names,
        Err(err) => {
            warn_skipping(state.path(), &err);
            return Vec::new();
        }
    };
    let owner = match state.stat() {
        Ok(st) => Uid::from_raw(st.st_uid),
        Err(err) => {
            warn_skipping(state.path(), &err);
            return Vec::new();
        }
    };
    let mut found = Vec::new();
    for name in names {
        let path = state.child_path(&name);
        let opened = if is_registration(&name) {
            open_registered(state, &name, owner)
        } else if name.len() == INSTANCE_NAME_LEN {
            instance_in(state, &name, owner)
        } else {
            continue;
        };
        match opened {
            // A kept cluster that runs is both registered and recorded as kept.
            Ok(Some(cluster)) if found.iter().any(|c: &ClusterDir| c.path == cluster.path) => {}
            Ok(Some(cluster)) => found.push(cluster),
            Ok(None) => {}
            Err(err) => warn_skipping(&path, &err),
        }
    }
    found
}

/// A registration of a running cluster outside PGTMP_DIR, or the record of a kept one.
fn is_registration(name: &OsStr) -> bool {
    let name = name.as_encoded_bytes();
    name.starts_with(REGISTERED.as_bytes()) || name.starts_with(KEPT.as_bytes())
}

/// The instance directory `name` in `state`, if it is a directory (a symlink or a file with
/// an instance's name is an error).
fn instance_in(state: &Dir, name: &OsStr, owner: Uid) -> Result<Option<ClusterDir>> {
    let Some(dir) = state.open_dir_if_exists(name)? else {
        return Ok(None);
    };
    check_owner(&dir, owner)?;
    Ok(Some(ClusterDir {
        path: state.child_path(name),
        dir,
    }))
}

/// The directory a registration or kept record `name` names, opened, if it is there. A kept
/// record names its directory's device and inode too: a directory found at its path that is
/// another (a directory above it was swapped) is an error, never taken for the one recorded.
fn open_registered(state: &Dir, name: &OsStr, owner: Uid) -> Result<Option<ClusterDir>> {
    let Some(target) = registered(state, name)? else {
        return Ok(None);
    };
    let Some(cluster) = open_owned(&target, owner)? else {
        return Ok(None);
    };
    if let Some((dev, ino)) = kept_identity(name) {
        let st = cluster.dir.stat()?;
        if (st.st_dev, st.st_ino) != (dev, ino) {
            bail!(
                "{} is no longer the directory recorded as kept there (a directory on its path                  was moved or replaced); `pgtmp gc` removes the record",
                target.display()
            );
        }
    }
    Ok(Some(cluster))
}

/// The device and inode a kept record's name (`kept.<dev>.<ino>`, hexadecimal) gives.
pub fn kept_identity(name: &OsStr) -> Option<(u64, u64)> {
    let rest = name.to_str()?.strip_prefix(KEPT)?;
    let (dev, ino) = rest.split_once('.')?;
    Some((
        u64::from_str_radix(dev, 16).ok()?,
        u64::from_str_radix(ino, 16).ok()?,
    ))
}

/// The directory a registration names (None while it is being written, empty).
fn registered(state: &Dir, name: &OsStr) -> Result<Option<PathBuf>> {
    let text = state
        .read_text(name)?
        .with_context(|| format!("{} vanished", state.child_path(name).display()))?;
    if text.is_empty() {
        return Ok(None);
    }
    let target = PathBuf::from(text.trim_end_matches('\n'));
    if !target.is_absolute() {
        bail!(
            "it names {}, which is not an absolute path",
            target.display()
        );
    }
    Ok(Some(target))
}

/// `path` opened as a cluster directory of `owner`'s, None when nothing is there.
fn open_owned(path: &Path, owner: Uid) -> Result<Option<ClusterDir>> {
    let Some(dir) = Dir::open_if_exists(path)? else {
        return Ok(None);
    };
    check_owner(&dir, owner)?;
    Ok(Some(ClusterDir {
        path: path.to_path_buf(),
        dir,
    }))
}

fn check_owner(dir: &Dir, owner: Uid) -> Result<()> {
    let st = dir.stat()?;
    if st.st_uid != owner.as_raw() || safefs::mode_of(&st) & 0o022 != 0 {
        bail!(
            "{} belongs to uid {} (mode {:o}), not privately to uid {owner} who owns PGTMP_DIR",
            dir.path().display(),
            st.st_uid,
            safefs::mode_of(&st)
        );
    }
    Ok(())
}

/// Opens `path` as one of the clusters of the account pgtmp runs as, whose PGTMP_DIR is
/// `state_path`: the directory (not a symlink) belongs to this account, nobody else can
/// write it, and it is directly in PGTMP_DIR or registered there. Anything else is refused
/// with one line saying so.
pub fn own(state_path: &Path, path: &Path) -> Result<ClusterDir> {
    let me = nix::unistd::geteuid();
    let refuse = |why: String| {
        anyhow::anyhow!(
            "{} is not one of your pgtmp clusters: {why}; pass the URL pgtmp printed for one of yours",
            path.display()
        )
    };
    let dir = match Dir::open_if_exists(path) {
        Ok(Some(dir)) => dir,
        Ok(None) => bail!(
            "no cluster in {}: it has stopped already, or never existed",
            path.display()
        ),
        Err(err) => return Err(refuse(denied_or(&err))),
    };
    let st = dir.stat()?;
    if st.st_uid != me.as_raw() {
        return Err(refuse(format!(
            "it belongs to another account (uid {}; pgtmp runs as uid {me} here), and only its owner can use it",
            st.st_uid
        )));
    }
    if safefs::mode_of(&st) & 0o022 != 0 {
        return Err(refuse(format!(
            "other accounts can write into it (mode {:o})",
            safefs::mode_of(&st)
        )));
    }
    let state = match open_state_dir(state_path) {
        Ok(Some(state)) => state,
        Ok(None) => return Err(refuse(format!("{} does not exist", state_path.display()))),
        Err(err) => return Err(refuse(format!("{err:#}"))),
    };
    match known_as(&state, &dir, me)? {
        Some(known) => Ok(ClusterDir { path: known, dir }),
        None => Err(refuse(format!(
            "it is neither in {} nor registered there by a start with -d",
            state_path.display()
        ))),
    }
}

/// Why a directory could not be opened, in words.
fn denied_or(err: &anyhow::Error) -> String {
    if safefs::is_permission_denied(err) {
        "it belongs to another account (permission denied), and only its owner can use it".into()
    } else {
        format!("{err:#}")
    }
}

/// The path by which `state` knows the directory `dir` (the same directory: device and
/// inode), if it does: as one of its instance directories, or as a registered one.
fn known_as(state: &Dir, dir: &Dir, me: Uid) -> Result<Option<PathBuf>> {
    let st = dir.stat()?;
    let same = |other: &Dir| {
        other
            .stat()
            .is_ok_and(|o| o.st_dev == st.st_dev && o.st_ino == st.st_ino)
    };
    if let Some(name) = dir.path().file_name()
        && let Ok(Some(inside)) = state.open_dir_if_exists(name)
        && same(&inside)
    {
        return Ok(Some(state.child_path(name)));
    }
    for name in state.names()? {
        if !is_registration(&name) {
            continue;
        }
        // A registration that cannot be read is no proof; the others may still be.
        if let Ok(Some(cluster)) = open_registered(state, &name, me)
            && same(&cluster.dir)
        {
            return Ok(Some(cluster.path));
        }
    }
    Ok(None)
}

/// The cluster a URL names, proven to be one of the invoker's.
pub fn find_by_url(state_path: &Path, text: &str) -> Result<ClusterDir> {
    match crate::output::url::parse(text)? {
        crate::output::url::Target::Socket(dir) => own(state_path, &dir),
        crate::output::url::Target::Tcp { host, port } => {
            if !matches!(host.as_str(), "127.0.0.1" | "localhost") {
                bail!(
                    "{host} is not this machine's loopback address; pgtmp clusters listen on 127.0.0.1 only"
                );
            }
            if let Some(state) = open_state_dir(state_path)? {
                for cluster in all(&state) {
                    if let Ok(Some(s)) = cluster.read_state()
                        && s.tcp
                        && s.port == port
                    {
                        // Found by its registration or in PGTMP_DIR; checked like any other.
                        return own(state_path, &cluster.path);
                    }
                }
            }
            bail!(
                "no cluster of yours listens on 127.0.0.1:{port} (looked in {})",
                state_path.display()
            )
        }
    }
}

/// The running cluster a URL points to, which must be that of the invoker `owner_uid`.
pub fn running(state_path: &Path, owner_uid: u32, url: &str) -> Result<(Instance, State)> {
    let instance = find_by_url(state_path, url)?.instance();
    let dir = instance.dir.display();
    let state = match instance.read_state() {
        Ok(Some(state)) => state,
        Ok(None) => bail!("no cluster is running in {dir}; it has stopped already"),
        Err(err) => {
            if safefs::is_permission_denied(&err) {
                bail!("the cluster in {dir} belongs to another account; only its owner can use it");
            }
            if !instance.dir.exists() {
                bail!("no cluster in {dir}: it has stopped already, or never existed");
            }
            return Err(err);
        }
    };
    if state.owner_uid != owner_uid {
        bail!(
            "the cluster in {dir} belongs to another account (uid {}); only its owner can use it",
            state.owner_uid
        );
    }
    if !crate::os::process::alive(state.watchdog_pid) {
        bail!("the cluster in {dir} is not running (its watchdog has gone)");
    }
    Ok((instance, state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn private_dir(path: &Path) {
        fs::create_dir(path).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn state_written_by_instance_is_read_through_the_handle() {
        let root = tempfile::tempdir().unwrap();
        let instance = Instance::new(root.path());
        let state = State {
            timeout: u64::MAX,
            ..State::sample()
        };
        instance.write_state(&state).unwrap();
        let cluster = ClusterDir {
            path: root.path().to_path_buf(),
            dir: Dir::open(root.path()).unwrap(),
        };
        assert_eq!(cluster.read_state().unwrap(), Some(state));
        fs::remove_file(instance.state_path()).unwrap();
        symlink("/dev/zero", instance.state_path()).unwrap();
        assert!(cluster.read_state().is_err());
    }

    #[test]
    fn only_instances_and_readable_registrations_are_found() {
        let root = tempfile::tempdir().unwrap();
        let state_path = root.path().join("p");
        private_dir(&state_path);
        private_dir(&state_path.join("abcd1234"));
        private_dir(&state_path.join("pool"));
        let elsewhere = root.path().join("elsewhere");
        private_dir(&elsewhere);
        fs::write(
            state_path.join("elsewhere.good"),
            format!("{}\n", elsewhere.display()),
        )
        .unwrap();
        // Recorded as kept too: still found once. A record whose name is not the directory's
        // device and inode (a directory on the path was swapped) finds nothing.
        crate::state::statedir::record_kept(&state_path, &elsewhere).unwrap();
        fs::write(
            state_path.join("kept.1.2"),
            format!("{}\n", elsewhere.display()),
        )
        .unwrap();
        fs::write(state_path.join("elsewhere.gone"), "/nonexistent/x\n").unwrap();
        symlink("/dev/zero", state_path.join("elsewhere.zero")).unwrap();
        nix::unistd::mkfifo(
            &state_path.join("elsewhere.fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        symlink(&elsewhere, state_path.join("zzzz9999")).unwrap();
        let state = open_state_dir(&state_path).unwrap().unwrap();
        let mut found: Vec<PathBuf> = all(&state).into_iter().map(|c| c.path).collect();
        found.sort();
        assert_eq!(found, [elsewhere.clone(), state_path.join("abcd1234")]);

        // Directly in PGTMP_DIR or registered: one of this account's; anything else is not.
        own(&state_path, &state_path.join("abcd1234")).unwrap();
        assert_eq!(own(&state_path, &elsewhere).unwrap().path, elsewhere);
        let planted = root.path().join("planted");
        private_dir(&planted);
        let err = own(&state_path, &planted).unwrap_err();
        assert!(
            format!("{err:#}").contains("is not one of your pgtmp clusters"),
            "{err:#}"
        );
        let err = own(&state_path, &state_path.join("zzzz9999")).unwrap_err();
        assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
    }
}
