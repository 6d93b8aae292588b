//! PGTMP_DIR: the one directory holding pgtmp's pools and running clusters for an account.

use crate::os::account::Account;
use crate::state::safefs::{self, Dir};
use anyhow::{Context, Result, bail};
use nix::fcntl::{AT_FDCWD, AtFlags};
use nix::sys::stat::FileStat;
use nix::unistd::{AccessFlags, faccessat};
use std::fs::{self, DirBuilder};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Length of an instance directory's name under PGTMP_DIR.
pub const INSTANCE_NAME_LEN: usize = 8;

/// Longest Unix socket path the kernel accepts, without the terminating NUL
/// (sun_path is 108 bytes on Linux, 104 on the BSDs and macOS).
pub const SOCKET_PATH_MAX: usize = if cfg!(target_os = "linux") { 107 } else { 103 };

/// "/.s.PGSQL.65535": the socket file postgres creates in its socket directory.
pub const SOCKET_FILE_LEN: usize = "/.s.PGSQL.65535".len();

/// Length of the socket path postgres will create for an instance in `socket_dir`.
pub fn socket_path_len(socket_dir: &Path) -> usize {
    socket_dir.as_os_str().len() + SOCKET_FILE_LEN
}

/// Length of the socket path of an instance directory directly under `state_dir`.
pub fn instance_socket_len(state_dir: &Path) -> usize {
    state_dir.as_os_str().len() + 1 + INSTANCE_NAME_LEN + SOCKET_FILE_LEN
}

/// Where root keeps its state directories, one per server account (`pgtmp-root/<account>`):
/// a directory of root's own that nobody else can write, so that every state directory in it
/// was made by root and handed over, and root can find them all again (`list`, `stop --all`,
/// `gc`) without trusting anything another account made.
pub const ROOT_STATES: &str = "pgtmp-root";

/// Where the state lives: `PGTMP_DIR` when set, else `${TMPDIR:-/tmp}/pgtmp-<uid>`, or for root
/// `${TMPDIR:-/tmp}/pgtmp-root/<server account>`, falling back to `/tmp` when TMPDIR is so deep
/// that socket paths would not fit.
pub fn location(
    pgtmp_dir: Option<&str>,
    tmpdir: Option<&str>,
    uid: u32,
    server: &str,
) -> Result<PathBuf> {
    if let Some(dir) = pgtmp_dir.filter(|d| !d.is_empty()) {
        let dir = absolute(Path::new(dir))?;
        if has_comma(&dir) {
            bail!(
                "PGTMP_DIR {} contains a comma, which splits the URL's host into two; \
                 set PGTMP_DIR to a path without one",
                dir.display()
            );
        }
        if instance_socket_len(&dir) > SOCKET_PATH_MAX {
            bail!(
                "PGTMP_DIR {} is too long: its sockets would exceed the {SOCKET_PATH_MAX}-byte \
                 Unix socket path limit; use a path of at most {} bytes",
                dir.display(),
                SOCKET_PATH_MAX - (1 + INSTANCE_NAME_LEN + SOCKET_FILE_LEN)
            );
        }
        return Ok(dir);
    }
    let name = if uid == 0 {
        Path::new(ROOT_STATES).join(server)
    } else {
        PathBuf::from(format!("pgtmp-{uid}"))
    };
    let preferred = Path::new(automatic_base(tmpdir)).join(&name);
    if instance_socket_len(&preferred) <= SOCKET_PATH_MAX && !has_comma(&preferred) {
        Ok(preferred)
    } else {
        Ok(Path::new("/tmp").join(name))
    }
}

/// TMPDIR when it is absolute, else /tmp: where an automatically placed state directory goes.
fn automatic_base(tmpdir: Option<&str>) -> &str {
    tmpdir.filter(|t| t.starts_with('/')).unwrap_or("/tmp")
}

/// The directories that may hold root's state directories (see [`ROOT_STATES`]): under TMPDIR
/// and, where TMPDIR is too deep for a socket path, under /tmp.
pub fn root_states(tmpdir: Option<&str>) -> Vec<PathBuf> {
    let mut places = vec![Path::new(automatic_base(tmpdir)).join(ROOT_STATES)];
    let fallback = Path::new("/tmp").join(ROOT_STATES);
    if !places.contains(&fallback) {
        places.push(fallback);
    }
    places
}

/// The names (server accounts) of root's state directories in `place`, a directory of root's
/// own that nobody else can write; nothing when it does not exist, an error when it is not
/// root's private directory (then none of what it holds is trusted).
pub fn root_state_names(place: &Path) -> Result<Vec<String>> {
    let Some(dir) = open_root_states(place)? else {
        return Ok(Vec::new());
    };
    Ok(dir
        .names()?
        .into_iter()
        .filter_map(|name| name.into_string().ok())
        .collect())
}

/// Opens root's [`ROOT_STATES`] directory `place` (None when it does not exist), refusing a
/// symlink and anything but a directory of root's that nobody else can write: another
/// account could have planted a state directory in that.
pub fn open_root_states(place: &Path) -> Result<Option<Dir>> {
    let Some(dir) = Dir::open_if_exists(place)? else {
        return Ok(None);
    };
    let st = dir.stat()?;
    if st.st_uid != 0 || safefs::mode_of(&st) & 0o022 != 0 {
        bail!(
            "{} belongs to uid {} (mode {:o}), not privately to root, so another account could have planted a state directory in it; remove it, or set PGTMP_DIR",
            place.display(),
            st.st_uid,
            safefs::mode_of(&st)
        );
    }
    Ok(Some(dir))
}

/// True when `path` holds a comma: libpq reads a comma in a URL's host as a list of hosts, so
/// no socket directory may have one.
pub fn has_comma(path: &Path) -> bool {
    path.as_os_str().as_encoded_bytes().contains(&b',')
}

/// `location` of `invoker`'s state for servers run as `server`, from this process's PGTMP_DIR
/// and TMPDIR.
pub fn location_for(invoker: &Account, server: &Account) -> Result<PathBuf> {
    location(
        std::env::var("PGTMP_DIR").ok().as_deref(),
        std::env::var("TMPDIR").ok().as_deref(),
        invoker.uid.as_raw(),
        &server.name,
    )
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))
}

/// True when PGTMP_DIR is not set, so that the state directory's place was chosen by pgtmp
/// (under TMPDIR or /tmp) and its parent must be checked too.
pub fn chosen_automatically() -> bool {
    std::env::var_os("PGTMP_DIR").is_none_or(|d| d.is_empty())
}

/// What pgtmp may do with what it found at a state directory's path. The start acts on it,
/// `doctor` reports it: both decide with [`judge_parent`] and [`judge_existing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The server account's own and private: used as it is.
    Use,
    /// Root's own, empty and private: root hands it to the server account.
    HandOver,
}

/// Why a state directory (or the place for one) cannot be used, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub what: String,
    pub fix: String,
}

impl Problem {
    fn new(what: String, fix: String) -> Problem {
        Problem { what, fix }
    }

    pub fn into_error(self) -> anyhow::Error {
        anyhow::anyhow!("{}; {}", self.what, self.fix)
    }
}

/// Whether the parent of an automatically chosen state directory keeps others from replacing
/// it: it must belong to root or to the accounts involved, and be writable by nobody else or
/// have the sticky bit (as /tmp has), under which only an entry's owner (and the directory's)
/// can rename or remove it.
pub fn judge_parent(
    parent: &Path,
    st: &FileStat,
    invoker: &Account,
    server: &Account,
) -> Result<(), Problem> {
    let mode = safefs::mode_of(st);
    let trusted_owner = [0, invoker.uid.as_raw(), server.uid.as_raw()].contains(&st.st_uid);
    let sticky = mode & 0o1000 != 0;
    if trusted_owner && (mode & 0o022 == 0 || sticky) {
        return Ok(());
    }
    let why = if !trusted_owner {
        format!("belongs to uid {}, another account", st.st_uid)
    } else {
        format!("is writable by other accounts without the sticky bit (mode {mode:o})")
    };
    Err(Problem::new(
        format!(
            "the state directory's parent {} {why}, so another account could replace the state directory",
            parent.display()
        ),
        format!(
            "set TMPDIR to a private directory, or PGTMP_DIR to a directory of {}'s own, or `chmod +t {}`",
            server.name,
            parent.display()
        ),
    ))
}

/// Whether an existing state directory can be used: it must be a directory of the server
/// account's, mode 0700, so that nobody else can have planted anything in it. Root also
/// accepts an empty, private directory of its own, which it hands over; it never adopts one
/// that anybody else made.
pub fn judge_existing(
    path: &Path,
    st: &FileStat,
    empty: bool,
    invoker: &Account,
    server: &Account,
) -> Result<Verdict, Problem> {
    let mode = safefs::mode_of(st);
    let shown = path.display();
    if !safefs::is_dir(st) {
        return Err(Problem::new(
            format!("PGTMP_DIR {shown} is not a directory"),
            "remove it or set PGTMP_DIR elsewhere".into(),
        ));
    }
    if st.st_uid == server.uid.as_raw() {
        if mode & 0o777 != 0o700 {
            return Err(Problem::new(
                format!(
                    "PGTMP_DIR {shown} has mode {mode:o}, not 0700, so other accounts could plant files in it"
                ),
                format!("make it private with `chmod 700 {shown}`, or remove it"),
            ));
        }
        return Ok(Verdict::Use);
    }
    if invoker.is_root() && st.st_uid == 0 && empty {
        if mode & 0o022 != 0 {
            return Err(Problem::new(
                format!(
                    "PGTMP_DIR {shown} is writable by other accounts (mode {mode:o}), so they could have planted files in it"
                ),
                format!("make it private with `chmod 700 {shown}`, or remove it"),
            ));
        }
        return Ok(Verdict::HandOver);
    }
    Err(Problem::new(
        format!(
            "PGTMP_DIR {shown} belongs to uid {}, not to {} who runs the server",
            st.st_uid, server.name
        ),
        format!(
            "remove it, or set PGTMP_DIR to a directory of {}'s own",
            server.name
        ),
    ))
}

/// The state directory of this run, created if needed and checked to belong to the account
/// the server runs as.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub path: PathBuf,
}

impl StateDir {
    /// Creates or checks the directory. Called before root drops its privileges, so that root
    /// can hand a fresh (or empty) directory to the server account. Also returns the topmost
    /// directory it created, for `unmake` should the start fail its later checks.
    ///
    /// Every step works on directory handles: a symlink at the path is refused, never
    /// followed, and the directory checked is the one handed over and used.
    pub fn establish(
        path: PathBuf,
        invoker: &Account,
        server: &Account,
    ) -> Result<(StateDir, Option<PathBuf>)> {
        let (parent, name) = match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) => (parent, name),
            _ => bail!(
                "PGTMP_DIR {} cannot be /; set PGTMP_DIR to a directory of its own",
                path.display()
            ),
        };
        let root_states = invoker.is_root()
            && chosen_automatically()
            && parent.file_name() == Some(std::ffi::OsStr::new(ROOT_STATES));
        let made_parents = if root_states {
            establish_root_states(parent, invoker, server)?.then(|| parent.to_path_buf())
        } else {
            topmost_missing(parent)
        };
        if made_parents.is_some() && !root_states {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .with_context(|| {
                    format!(
                        "cannot create {}; set PGTMP_DIR to a directory you can write",
                        parent.display()
                    )
                })?;
        }
        let outcome = Self::establish_in(parent, name, invoker, server);
        match outcome {
            Ok(made) => Ok((
                StateDir { path: path.clone() },
                made_parents.or(made.then(|| path.clone())),
            )),
            Err(err) => {
                if let Some(top) = &made_parents {
                    unmake(parent, top);
                }
                Err(err)
            }
        }
    }

    /// Makes or checks `parent/name`; true when it made it.
    fn establish_in(
        parent: &Path,
        name: &std::ffi::OsStr,
        invoker: &Account,
        server: &Account,
    ) -> Result<bool> {
        let parent_dir = Dir::open(parent).with_context(|| {
            format!(
                "cannot open the state directory's parent {}",
                parent.display()
            )
        })?;
        if chosen_automatically() {
            judge_parent(parent, &parent_dir.stat()?, invoker, server)
                .map_err(Problem::into_error)?;
        }
        let path = parent.join(name);
        match parent_dir.make_dir_for(name, 0o700, server.uid) {
            Ok(dir) => {
                // Ours, just made: private whatever the umask, and the server account's.
                let handed = dir.chmod(0o700).and_then(|()| {
                    if invoker.uid == server.uid {
                        Ok(())
                    } else {
                        dir.chown(server.uid, server.gid, &server.name)
                    }
                });
                if let Err(err) = handed {
                    let _ = parent_dir.remove_empty_dir(name);
                    return Err(err);
                }
                Ok(true)
            }
            Err(err) if !safefs::has_io_kind(&err, std::io::ErrorKind::AlreadyExists) => Err(err
                .context(format!(
                    "cannot create PGTMP_DIR {}; set PGTMP_DIR to a directory you can write",
                    path.display()
                ))),
            Err(_) => {
                let dir = parent_dir
                    .open_dir(name)
                    .map_err(|err| anyhow::anyhow!("PGTMP_DIR {err:#}"))?;
                let st = dir.stat()?;
                // Emptiness matters only for a directory that is not the server's already:
                // no listing of PGTMP_DIR on an ordinary start.
                let empty = st.st_uid != server.uid.as_raw() && dir.is_empty()?;
                let verdict = judge_existing(&path, &st, empty, invoker, server)
                    .map_err(Problem::into_error)?;
                if verdict == Verdict::HandOver {
                    dir.chmod(0o700)?;
                    dir.chown(server.uid, server.gid, &server.name)?;
                }
                Ok(false)
            }
        }
    }

    /// Checks, with the effective ids of the account that runs the server, that the directory
    /// can be used.
    pub fn check_usable(&self, server: &Account) -> Result<()> {
        faccessat(
            AT_FDCWD,
            &self.path,
            AccessFlags::W_OK | AccessFlags::X_OK,
            AtFlags::AT_EACCESS,
        )
        .with_context(|| {
            format!(
                "PGTMP_DIR {} is not writable by {}; set PGTMP_DIR to a directory {} can write{}",
                self.path.display(),
                server.name,
                server.name,
                if server.uid.is_root() {
                    ""
                } else {
                    " (e.g. under /tmp)"
                }
            )
        })
    }

    pub fn instance_path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn pools(&self) -> PathBuf {
        self.path.join("pool")
    }

    /// Where a running cluster outside PGTMP_DIR (`-d DIR`) is registered, so that it can be
    /// found by its TCP URL: a file holding the cluster's path. None for a cluster directly
    /// under PGTMP_DIR, which is found anyway.
    pub fn registration_for(&self, dir: &Path, name: &str) -> Option<PathBuf> {
        (dir.parent() != Some(self.path.as_path()))
            .then(|| self.path.join(format!("{REGISTERED}{name}")))
    }
}

/// Makes or checks root's [`ROOT_STATES`] directory `place`: root's own, writable by nobody
/// else, and mode 0711 when made, so that the server accounts can reach their state
/// directories in it but nobody can list them. True when it made it.
fn establish_root_states(place: &Path, invoker: &Account, server: &Account) -> Result<bool> {
    let (Some(base), Some(name)) = (place.parent(), place.file_name()) else {
        bail!("{} has no parent directory", place.display());
    };
    let base_dir = Dir::open(base).with_context(|| {
        format!(
            "cannot open the state directory's parent {}",
            base.display()
        )
    })?;
    judge_parent(base, &base_dir.stat()?, invoker, server).map_err(Problem::into_error)?;
    match base_dir.make_dir(name, 0o711) {
        Ok(dir) => {
            // Whatever the umask: the server accounts must be able to pass through it.
            if let Err(err) = dir.chmod(0o711) {
                let _ = base_dir.remove_empty_dir(name);
                return Err(err);
            }
            Ok(true)
        }
        Err(err) if !safefs::has_io_kind(&err, std::io::ErrorKind::AlreadyExists) => Err(err
            .context(format!(
                "cannot create {}; set PGTMP_DIR to a directory you can write",
                place.display()
            ))),
        Err(_) => {
            open_root_states(place)?;
            Ok(false)
        }
    }
}

/// The cluster directory a registration in `dir` names, read with bounds.
fn read_registration(dir: &Dir, name: &std::ffi::OsStr) -> Result<Option<PathBuf>> {
    Ok(dir
        .read_text(name)?
        .map(|text| PathBuf::from(text.trim_end_matches('\n'))))
}

/// The topmost of `path` and its ancestors that does not exist yet: what creating `path` makes.
fn topmost_missing(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .take_while(|dir| fs::symlink_metadata(dir).is_err())
        .last()
        .map(Path::to_path_buf)
}

/// Removes the directories from `path` up to `top` that `establish` made, as long as they
/// are still empty: a start that fails its checks leaves nothing behind.
pub fn unmake(path: &Path, top: &Path) {
    for dir in path.ancestors() {
        if fs::remove_dir(dir).is_err() || dir == top {
            break;
        }
    }
}

/// Prefix of the files registering clusters that live outside PGTMP_DIR.
pub const REGISTERED: &str = "elsewhere.";

/// Prefix of the files recording kept clusters that live outside PGTMP_DIR (`-d`), so that
/// `pgtmp list --all` and `pgtmp discard` still find them once they have stopped (a
/// registration lasts only while its cluster runs). One per directory, named by its device and
/// inode, holding its path, like a registration.
pub const KEPT: &str = "kept.";

/// Records in the state directory `state` that the kept cluster directory `dir`, outside it,
/// exists (see [`KEPT`]); recording it again changes nothing.
pub fn record_kept(state: &Path, dir: &Path) -> Result<()> {
    let st = Dir::open(dir)?.stat()?;
    let name = format!("{KEPT}{:x}.{:x}", st.st_dev, st.st_ino);
    Dir::open(state)?.write_atomic(name, format!("{}\n", dir.display()).as_bytes())
}

/// Removes the record of the kept cluster directory `dir` from `state`, if there is one.
pub fn forget_kept(state: &Path, dir: &Path) -> Result<()> {
    let st = Dir::open(dir)?.stat()?;
    let name = format!("{KEPT}{:x}.{:x}", st.st_dev, st.st_ino);
    let state = Dir::open(state)?;
    if state.stat_at(&name)?.is_some() {
        state.remove_file(&name)?;
    }
    Ok(())
}

/// The cluster directory a registration file names, read with bounds (see [`Dir::read_small`]).
pub fn registered_dir(registration: &Path) -> Result<PathBuf> {
    let (Some(parent), Some(name)) = (registration.parent(), registration.file_name()) else {
        bail!("{} is not a registration", registration.display());
    };
    read_registration(&Dir::open(parent)?, name)?
        .with_context(|| format!("{} does not exist", registration.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_location_uses_tmpdir_and_uid() {
        assert_eq!(
            location(None, None, 1000, "me").unwrap(),
            Path::new("/tmp/pgtmp-1000")
        );
        assert_eq!(
            location(None, Some("relative"), 7, "me").unwrap(),
            Path::new("/tmp/pgtmp-7")
        );
        assert_eq!(
            location(Some(""), None, 7, "me").unwrap(),
            Path::new("/tmp/pgtmp-7")
        );
    }

    #[test]
    fn root_gets_one_state_directory_per_server_account() {
        assert_eq!(
            location(None, Some("/var/tmp"), 0, "postgres").unwrap(),
            Path::new("/var/tmp/pgtmp-root/postgres")
        );
        assert_eq!(
            location(None, None, 0, "other").unwrap(),
            Path::new("/tmp/pgtmp-root/other")
        );
        // An explicit PGTMP_DIR is one directory, whoever runs the servers.
        assert_eq!(
            location(Some("/srv/p"), None, 0, "other").unwrap(),
            Path::new("/srv/p")
        );
        assert_eq!(
            root_states(Some("/var/tmp")),
            [
                Path::new("/var/tmp/pgtmp-root"),
                Path::new("/tmp/pgtmp-root")
            ]
        );
        assert_eq!(root_states(None), [Path::new("/tmp/pgtmp-root")]);
    }

    #[test]
    fn commas_are_refused_or_avoided() {
        let err = location(Some("/srv/a,b"), None, 5, "u").unwrap_err();
        assert!(format!("{err:#}").contains("comma"), "{err:#}");
        assert_eq!(
            location(None, Some("/var/a,b"), 5, "u").unwrap(),
            Path::new("/tmp/pgtmp-5")
        );
    }

    #[test]
    fn deep_tmpdir_falls_back_to_tmp() {
        let deep = format!("/{}", "d".repeat(120));
        assert_eq!(
            location(None, Some(&deep), 5, "u").unwrap(),
            Path::new("/tmp/pgtmp-5")
        );
    }

    #[test]
    fn explicit_dir_wins_but_must_fit() {
        assert_eq!(
            location(Some("/srv/p"), Some("/x"), 5, "u").unwrap(),
            Path::new("/srv/p")
        );
        let deep = format!("/{}", "d".repeat(120));
        let err = location(Some(&deep), None, 5, "u").unwrap_err();
        assert!(format!("{err:#}").contains("socket path limit"));
    }

    #[test]
    fn unmake_removes_what_was_made_and_nothing_else() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("a/b/c");
        assert_eq!(topmost_missing(&path), Some(root.path().join("a")));
        fs::create_dir_all(&path).unwrap();
        assert_eq!(topmost_missing(&path), None);
        unmake(&path, &root.path().join("a"));
        assert!(!root.path().join("a").exists());
        assert!(root.path().exists());

        fs::create_dir_all(&path).unwrap();
        fs::write(root.path().join("a/kept"), "").unwrap();
        unmake(&path, &root.path().join("a"));
        assert!(!root.path().join("a/b").exists());
        assert!(
            root.path().join("a/kept").exists(),
            "a non-empty directory stays"
        );
    }

    fn account(uid: u32) -> Account {
        Account {
            uid: nix::unistd::Uid::from_raw(uid),
            gid: nix::unistd::Gid::from_raw(uid),
            name: format!("user{uid}"),
        }
    }

    /// The stat of a real directory with `mode`, owned by this process's account.
    fn stat_with_mode(mode: u32) -> (tempfile::TempDir, FileStat) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(mode)).unwrap();
        let st = nix::sys::stat::stat(dir.path()).unwrap();
        (dir, st)
    }

    #[test]
    fn state_dirs_must_be_the_servers_and_private() {
        let me = nix::unistd::geteuid().as_raw();
        let server = account(me);
        let other = account(me.wrapping_add(1));
        let path = Path::new("/x/p");
        let (_d, private) = stat_with_mode(0o700);
        assert_eq!(
            judge_existing(path, &private, false, &server, &server),
            Ok(Verdict::Use)
        );
        let (_d, open) = stat_with_mode(0o777);
        let problem = judge_existing(path, &open, true, &server, &server).unwrap_err();
        assert!(problem.fix.contains("chmod 700"), "{problem:?}");
        let (_d, group) = stat_with_mode(0o750);
        assert!(judge_existing(path, &group, true, &server, &server).is_err());
        // Someone else's directory is never used, empty or not.
        let problem = judge_existing(path, &private, true, &other, &other).unwrap_err();
        assert!(problem.what.contains("belongs to uid"), "{problem:?}");
    }

    #[test]
    fn parents_must_keep_others_from_replacing_the_state_dir() {
        let me = nix::unistd::geteuid().as_raw();
        let mine = account(me);
        let other = account(me.wrapping_add(1));
        let parent = Path::new("/x");
        let (_d, private) = stat_with_mode(0o755);
        assert!(judge_parent(parent, &private, &mine, &mine).is_ok());
        let (_d, sticky) = stat_with_mode(0o1777);
        assert!(judge_parent(parent, &sticky, &mine, &mine).is_ok());
        let (_d, open) = stat_with_mode(0o777);
        let problem = judge_parent(parent, &open, &mine, &mine).unwrap_err();
        assert!(problem.what.contains("sticky"), "{problem:?}");
        if me != 0 {
            // Another account's private directory: it could replace the state directory.
            assert!(judge_parent(parent, &private, &other, &other).is_err());
        }
    }

    #[test]
    fn socket_paths_fit_for_defaults() {
        let dir = location(None, None, u32::MAX, "u").unwrap();
        assert!(instance_socket_len(&dir) <= SOCKET_PATH_MAX);
    }
}
