//! File-system actions on pgtmp's own directories (PGTMP_DIR, instance, pool and cache
//! directories, `-d`), done through directory handles so that nothing is trusted between the
//! check and the use.
//!
//! A [`Dir`] is an open descriptor of a directory, opened with `O_DIRECTORY | O_NOFOLLOW`: a
//! symlink where pgtmp expects its own directory is refused, never followed. Everything below
//! a handle is reached with `openat`/`fstatat`/`mkdirat`/`unlinkat` relative to it, one
//! component at a time and never following a symlink, so that renaming or replacing a path
//! after it was checked cannot redirect the action. Files are read only when they are regular
//! files of the directory's own owner and small ([`Dir::read_small`]).

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The most pgtmp reads of any of its own state files (state, registrations, claims, cache
/// entries): each is a few lines. A larger one is not pgtmp's.
pub const STATE_FILE_MAX: usize = 64 * 1024;

/// An open directory, and the path it was opened by (for messages only: the path is never
/// resolved again).
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// The parent of a path is only looked up in, which takes search permission alone: O_PATH
/// (Linux) needs no read permission.
#[cfg(target_os = "linux")]
const PARENT_FLAGS: OFlag = OFlag::O_PATH
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_CLOEXEC);
#[cfg(not(target_os = "linux"))]
const PARENT_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_CLOEXEC);

/// True when the error (anywhere in its chain) is an I/O error of `kind`.
pub fn has_io_kind(err: &anyhow::Error, kind: std::io::ErrorKind) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == kind)
    })
}

/// True when the error (anywhere in its chain) is the system's "permission denied".
pub fn is_permission_denied(err: &anyhow::Error) -> bool {
    has_io_kind(err, std::io::ErrorKind::PermissionDenied)
}

/// What a symlink or a non-directory where a directory was expected means to the user.
fn not_a_dir(path: &Path, errno: Errno) -> anyhow::Error {
    match errno {
        Errno::ELOOP => anyhow::anyhow!(
            "{} is a symbolic link, which pgtmp never follows for its own directories; remove it, or name the real directory",
            path.display()
        ),
        Errno::ENOTDIR => anyhow::anyhow!(
            "{} is not a directory; remove it, or name a directory",
            path.display()
        ),
        errno => anyhow::Error::new(std::io::Error::from(errno))
            .context(format!("cannot open {}", path.display())),
    }
}

/// Tells ELOOP (O_NOFOLLOW met a symlink) from a real ENOTDIR: both come back as one of the
/// two, depending on the kernel and the file type.
fn classify_open_error<Fd: AsFd>(dirfd: Fd, name: &OsStr, errno: Errno) -> Errno {
    if errno != Errno::ENOTDIR && errno != Errno::ELOOP {
        return errno;
    }
    match fstatat(dirfd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if file_type(&st) == SFlag::S_IFLNK => Errno::ELOOP,
        Ok(_) => Errno::ENOTDIR,
        Err(_) => errno,
    }
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// True for a directory stat.
pub fn is_dir(st: &FileStat) -> bool {
    file_type(st) == SFlag::S_IFDIR
}

/// True for the stat of a symlink itself.
pub fn is_symlink(st: &FileStat) -> bool {
    file_type(st) == SFlag::S_IFLNK
}

/// The permission bits of a stat (without the file type).
pub fn mode_of(st: &FileStat) -> u32 {
    st.st_mode & 0o7777
}

impl Dir {
    /// Opens the directory `path`. Its last component must not be a symlink; the components
    /// above it are resolved as usual (they are the user's choice, like `/tmp`).
    pub fn open(path: &Path) -> Result<Dir> {
        Dir::open_if_exists(path)?.with_context(|| format!("{} does not exist", path.display()))
    }

    /// Like [`Dir::open`], but None when nothing is at `path`.
    pub fn open_if_exists(path: &Path) -> Result<Option<Dir>> {
        let (parent, name) = split(path)?;
        let flags = if name.is_some() {
            PARENT_FLAGS
        } else {
            DIR_FLAGS & !OFlag::O_NOFOLLOW
        };
        let parent_fd = match nix::fcntl::open(parent, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(errno) => {
                return Err(std::io::Error::from(errno))
                    .with_context(|| format!("cannot open {}", parent.display()));
            }
        };
        match name {
            None => Ok(Some(Dir {
                fd: parent_fd,
                path: path.to_path_buf(),
            })),
            Some(name) => match openat(&parent_fd, name, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => Ok(Some(Dir {
                    fd,
                    path: path.to_path_buf(),
                })),
                Err(Errno::ENOENT) => Ok(None),
                Err(errno) => Err(not_a_dir(
                    path,
                    classify_open_error(&parent_fd, name, errno),
                )),
            },
        }
    }

    /// The path this directory was opened by, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` inside this directory, for messages and for programs (postgres,
    /// initdb) that take paths.
    pub fn child_path(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    pub fn stat(&self) -> Result<FileStat> {
        fstat(&self.fd).with_context(|| format!("cannot inspect {}", self.path.display()))
    }

    /// Opens the directory `name` inside this one, refusing a symlink.
    pub fn open_dir(&self, name: impl AsRef<Path>) -> Result<Dir> {
        let name = name.as_ref();
        self.open_dir_if_exists(name)?
            .with_context(|| format!("{} does not exist", self.child_path(name).display()))
    }

    pub fn open_dir_if_exists(&self, name: impl AsRef<Path>) -> Result<Option<Dir>> {
        let name = name.as_ref();
        let path = self.child_path(name);
        match openat(&self.fd, name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => Ok(Some(Dir { fd, path })),
            Err(Errno::ENOENT) => Ok(None),
            Err(errno) => Err(not_a_dir(
                &path,
                classify_open_error(&self.fd, name.as_os_str(), errno),
            )),
        }
    }

    /// Creates the directory `name` with `mode` and opens it. Fails if anything is there
    /// already (`AlreadyExists` in the chain), so a directory someone else made first is
    /// never mistaken for this one; the opened directory is checked to be this account's.
    pub fn make_dir(&self, name: impl AsRef<Path>, mode: u32) -> Result<Dir> {
        self.make_dir_for(name, mode, nix::unistd::geteuid())
    }

    /// [`Dir::make_dir`] for a directory that is to be handed to `heir`: it may already be
    /// `heir`'s when opened (another start of the same account made and handed it over in
    /// the meantime), but nobody else's.
    pub fn make_dir_for(&self, name: impl AsRef<Path>, mode: u32, heir: Uid) -> Result<Dir> {
        let name = name.as_ref();
        let path = self.child_path(name);
        mkdirat(&self.fd, name, Mode::from_bits_truncate(mode))
            .map_err(std::io::Error::from)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let dir = self.open_dir(name)?;
        let owner = dir.stat()?.st_uid;
        if owner != nix::unistd::geteuid().as_raw() && owner != heir.as_raw() {
            bail!(
                "{} was replaced by the directory of uid {owner} right after pgtmp made it; remove it and try again",
                path.display()
            );
        }
        Ok(dir)
    }

    /// What `name` inside this directory is, without following a symlink; None if nothing.
    pub fn stat_at(&self, name: impl AsRef<Path>) -> Result<Option<FileStat>> {
        let name = name.as_ref();
        match fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::ENOENT) => Ok(None),
            Err(errno) => Err(std::io::Error::from(errno))
                .with_context(|| format!("cannot inspect {}", self.child_path(name).display())),
        }
    }

    /// Whole seconds since `name` last changed (its mtime); None when it is missing, or
    /// changed in the future (a clock set back).
    pub fn age_of(&self, name: impl AsRef<Path>) -> Option<u64> {
        let changed = u64::try_from(self.stat_at(name).ok().flatten()?.st_mtime).ok()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        now.checked_sub(changed)
    }

    /// True when `name` is a regular file (not a symlink to one).
    pub fn has_file(&self, name: impl AsRef<Path>) -> bool {
        self.stat_at(name)
            .ok()
            .flatten()
            .is_some_and(|st| file_type(&st) == SFlag::S_IFREG)
    }

    /// Opens the file `name` for reading, None when it does not exist. Only a regular file
    /// (no symlink, FIFO or device) that belongs to this directory's owner is opened; anything
    /// else is an error naming it. It is opened with O_NONBLOCK, so that even opening a FIFO
    /// cannot block, and a regular file's read never waits.
    fn open_file(&self, name: &Path) -> Result<Option<(std::fs::File, FileStat)>> {
        let path = self.child_path(name);
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let fd = match openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => bail!(
                "{} is a symbolic link; pgtmp does not follow it",
                path.display()
            ),
            Err(errno) => {
                return Err(std::io::Error::from(errno))
                    .with_context(|| format!("cannot open {}", path.display()));
            }
        };
        let st = fstat(&fd).with_context(|| format!("cannot inspect {}", path.display()))?;
        if file_type(&st) != SFlag::S_IFREG {
            bail!(
                "{} is not a regular file; pgtmp does not read it",
                path.display()
            );
        }
        let owner = self.stat()?.st_uid;
        if st.st_uid != owner {
            bail!(
                "{} belongs to uid {}, not to uid {owner} who owns its directory; pgtmp does not trust it",
                path.display(),
                st.st_uid
            );
        }
        Ok(Some((std::fs::File::from(fd), st)))
    }

    /// Reads the file `name`, None when it does not exist: only a regular file of this
    /// directory's owner (see `open_file`) that holds at most `limit` bytes.
    pub fn read_small(&self, name: impl AsRef<Path>, limit: usize) -> Result<Option<Vec<u8>>> {
        let name = name.as_ref();
        let path = self.child_path(name);
        let Some((file, st)) = self.open_file(name)? else {
            return Ok(None);
        };
        let too_large = || {
            anyhow::anyhow!(
                "{} is larger than {limit} bytes; it is not pgtmp's",
                path.display()
            )
        };
        if st.st_size < 0 || st.st_size as u64 > limit as u64 {
            return Err(too_large());
        }
        let mut bytes = Vec::with_capacity(st.st_size as usize);
        file.take(limit as u64 + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if bytes.len() > limit {
            return Err(too_large());
        }
        Ok(Some(bytes))
    }

    /// The number the small file `name` holds (pgtmp's own counters: a depth, a count); None
    /// when it is missing, unreadable, larger than a number or not one.
    pub fn read_number<T: std::str::FromStr>(&self, name: impl AsRef<Path>) -> Option<T> {
        let bytes = self.read_small(name, 32).ok().flatten()?;
        String::from_utf8_lossy(&bytes).trim().parse().ok()
    }

    /// The last `limit` bytes (at most) of the log file `name`, as text; empty when it does
    /// not exist. The same file checks as [`Dir::read_small`].
    pub fn read_tail(&self, name: impl AsRef<Path>, limit: u64) -> Result<String> {
        use std::io::{Seek, SeekFrom};
        let name = name.as_ref();
        let Some((mut file, st)) = self.open_file(name)? else {
            return Ok(String::new());
        };
        let start = u64::try_from(st.st_size).unwrap_or(0).saturating_sub(limit);
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(start))
            .and_then(|_| file.take(limit).read_to_end(&mut bytes))
            .with_context(|| format!("cannot read {}", self.child_path(name).display()))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// [`Dir::read_small`] of a text file of pgtmp's.
    pub fn read_text(&self, name: impl AsRef<Path>) -> Result<Option<String>> {
        let name = name.as_ref();
        match self.read_small(name, STATE_FILE_MAX)? {
            None => Ok(None),
            Some(bytes) => String::from_utf8(bytes)
                .map(Some)
                .with_context(|| format!("{} is not text", self.child_path(name).display())),
        }
    }

    /// Writes `name` whole: into a new file beside it (mode 0600, never following a symlink),
    /// then renamed over, so readers never see half a file.
    pub fn write_atomic(&self, name: impl AsRef<Path>, contents: &[u8]) -> Result<()> {
        use std::io::Write;
        let name = name.as_ref();
        let path = self.child_path(name);
        let token = crate::os::secret::random_string(b"abcdefghijklmnopqrstuvwxyz0123456789", 8)?;
        let temp = format!(".{}.{token}.tmp", name.display());
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(
            &self.fd,
            temp.as_str(),
            flags,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(std::io::Error::from)
        .with_context(|| format!("cannot create a file in {}", self.path.display()))?;
        let written = std::fs::File::from(fd).write_all(contents);
        let renamed = written.map_err(anyhow::Error::from).and_then(|()| {
            renameat(&self.fd, temp.as_str(), &self.fd, name).map_err(anyhow::Error::from)
        });
        if let Err(err) = renamed {
            let _ = unlinkat(&self.fd, temp.as_str(), UnlinkatFlags::NoRemoveDir);
            return Err(err.context(format!("cannot write {}", path.display())));
        }
        Ok(())
    }

    /// Removes the file (or symlink) `name`; nothing there is fine.
    pub fn remove_file(&self, name: impl AsRef<Path>) -> Result<()> {
        let name = name.as_ref();
        match unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(errno) => Err(std::io::Error::from(errno))
                .with_context(|| format!("cannot remove {}", self.child_path(name).display())),
        }
    }

    /// Removes the empty directory `name`.
    pub fn remove_empty_dir(&self, name: impl AsRef<Path>) -> Result<()> {
        let name = name.as_ref();
        unlinkat(&self.fd, name, UnlinkatFlags::RemoveDir)
            .map_err(std::io::Error::from)
            .with_context(|| format!("cannot remove {}", self.child_path(name).display()))
    }

    /// Removes `name` and, if it is a directory, everything in it. A symlink inside is
    /// removed, never followed, and nothing outside this directory is touched. Nothing at
    /// `name` is fine.
    pub fn remove_tree(&self, name: impl AsRef<Path>) -> Result<()> {
        let name = name.as_ref();
        match self.open_dir_if_exists(name) {
            Ok(Some(dir)) => {
                dir.empty_out()?;
                drop(dir);
                match unlinkat(&self.fd, name, UnlinkatFlags::RemoveDir) {
                    Ok(()) | Err(Errno::ENOENT) => Ok(()),
                    Err(errno) => Err(std::io::Error::from(errno)).with_context(|| {
                        format!("cannot remove {}", self.child_path(name).display())
                    }),
                }
            }
            Ok(None) => Ok(()),
            // A symlink or a file: only the entry itself goes.
            Err(_) => self.remove_file(name),
        }
    }

    /// Removes everything inside this directory, keeping the directory itself.
    pub fn empty_out(&self) -> Result<()> {
        for name in self.names()? {
            self.remove_tree(&name)?;
        }
        Ok(())
    }

    /// Renames the entry `from` of this directory to `to`, also in it; `to` must not exist.
    /// Neither is followed should it be a symlink: the entry itself is renamed.
    pub fn rename(&self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<()> {
        let (from, to) = (from.as_ref(), to.as_ref());
        if self.stat_at(to)?.is_some() {
            bail!("{} is in the way", self.child_path(to).display());
        }
        renameat(&self.fd, from, &self.fd, to)
            .map_err(std::io::Error::from)
            .with_context(|| {
                format!(
                    "cannot rename {} to {}",
                    self.child_path(from).display(),
                    self.child_path(to).display()
                )
            })
    }

    /// The names of the entries of this directory (without `.` and `..`).
    pub fn names(&self) -> Result<Vec<OsString>> {
        // A descriptor of its own: nix's Dir takes ownership and its position moves.
        let fd = openat(&self.fd, ".", DIR_FLAGS, Mode::empty())
            .map_err(std::io::Error::from)
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        let mut dir = nix::dir::Dir::from_fd(fd)
            .map_err(std::io::Error::from)
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry
                .map_err(std::io::Error::from)
                .with_context(|| format!("cannot read {}", self.path.display()))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsStr::from_bytes(name).to_os_string());
            }
        }
        Ok(names)
    }

    /// True when the directory has no entries.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.names()?.is_empty())
    }

    /// Gives the directory itself (not what a symlink at its path might name) to an account.
    pub fn chown(&self, uid: Uid, gid: Gid, name: &str) -> Result<()> {
        fchown(&self.fd, Some(uid), Some(gid))
            .map_err(std::io::Error::from)
            .with_context(|| format!("cannot hand {} to account {name}", self.path.display()))
    }

    /// Sets the directory's own permission bits.
    pub fn chmod(&self, mode: u32) -> Result<()> {
        nix::sys::stat::fchmod(&self.fd, Mode::from_bits_truncate(mode))
            .map_err(std::io::Error::from)
            .with_context(|| format!("cannot set mode {mode:o} on {}", self.path.display()))
    }
}

/// Removes the tree at `path` through its parent's handle (see [`Dir::remove_tree`]): a
/// symlink at `path` or inside it goes itself, never what it points to. Nothing there is fine.
pub fn remove_tree_at(path: &Path) -> Result<()> {
    let (parent, Some(name)) = split(path)? else {
        bail!("refusing to remove /");
    };
    match Dir::open_if_exists(parent)? {
        Some(parent) => parent.remove_tree(name),
        None => Ok(()),
    }
}

/// [`Dir::read_text`] of the file at `path`, through its parent's handle.
pub fn read_text_at(path: &Path) -> Result<Option<String>> {
    let (parent, Some(name)) = split(path)? else {
        bail!("/ is not a file");
    };
    match Dir::open_if_exists(parent)? {
        Some(parent) => parent.read_text(name),
        None => Ok(None),
    }
}

/// [`Dir::read_tail`] of the log at `path`, through its parent's handle.
pub fn read_tail_at(path: &Path, limit: u64) -> Result<String> {
    let (parent, Some(name)) = split(path)? else {
        bail!("/ is not a file");
    };
    match Dir::open_if_exists(parent)? {
        Some(parent) => parent.read_tail(name, limit),
        None => Ok(String::new()),
    }
}

/// `path` as its parent and last component (None for `/`).
fn split(path: &Path) -> Result<(&Path, Option<&OsStr>)> {
    if !path.is_absolute() {
        bail!("{} is not an absolute path", path.display());
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => Ok((parent, Some(name))),
        _ => Ok((path, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_symlink_is_never_opened_as_a_directory() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("target");
        fs::create_dir(&target).unwrap();
        symlink(&target, root.path().join("link")).unwrap();
        let err = Dir::open(&root.path().join("link")).unwrap_err();
        assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
        let dir = Dir::open(root.path()).unwrap();
        let err = dir.open_dir("link").unwrap_err();
        assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
        fs::write(root.path().join("file"), "x").unwrap();
        let err = dir.open_dir("file").unwrap_err();
        assert!(format!("{err:#}").contains("not a directory"), "{err:#}");
        assert!(
            Dir::open_if_exists(&root.path().join("none"))
                .unwrap()
                .is_none()
        );
        // A dangling symlink is a symlink too, not "missing".
        symlink(root.path().join("nowhere"), root.path().join("dangling")).unwrap();
        let err = Dir::open(&root.path().join("dangling")).unwrap_err();
        assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
    }

    #[test]
    fn remove_tree_never_follows_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("precious"), "keep").unwrap();
        let tree = root.path().join("tree");
        fs::create_dir_all(tree.join("a/b")).unwrap();
        fs::write(tree.join("a/b/f"), "x").unwrap();
        symlink(outside.path(), tree.join("a/link")).unwrap();
        symlink(outside.path().join("precious"), tree.join("file-link")).unwrap();
        let dir = Dir::open(root.path()).unwrap();
        dir.remove_tree("tree").unwrap();
        assert!(!tree.exists());
        assert_eq!(
            fs::read_to_string(outside.path().join("precious")).unwrap(),
            "keep"
        );
        // A symlink named as the tree goes itself; its target stays.
        symlink(outside.path(), root.path().join("tree")).unwrap();
        dir.remove_tree("tree").unwrap();
        assert!(outside.path().join("precious").exists());
        dir.remove_tree("missing").unwrap();
    }

    #[test]
    fn small_reads_refuse_what_is_not_a_small_regular_file() {
        let root = tempfile::tempdir().unwrap();
        let dir = Dir::open(root.path()).unwrap();
        fs::write(root.path().join("ok"), "a=1\n").unwrap();
        assert_eq!(dir.read_text("ok").unwrap().as_deref(), Some("a=1\n"));
        assert_eq!(dir.read_text("none").unwrap(), None);
        symlink("/dev/zero", root.path().join("zero")).unwrap();
        assert!(dir.read_text("zero").is_err());
        nix::unistd::mkfifo(&root.path().join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let err = dir.read_text("fifo").unwrap_err();
        assert!(format!("{err:#}").contains("not a regular file"), "{err:#}");
        fs::write(root.path().join("big"), vec![b'x'; STATE_FILE_MAX + 1]).unwrap();
        assert!(dir.read_text("big").is_err());
    }

    #[test]
    fn written_files_replace_whole_and_never_follow_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let dir = Dir::open(root.path()).unwrap();
        dir.write_atomic("state", b"one").unwrap();
        dir.write_atomic("state", b"two").unwrap();
        assert_eq!(
            fs::read_to_string(root.path().join("state")).unwrap(),
            "two"
        );
        symlink(outside.path().join("victim"), root.path().join("link")).unwrap();
        dir.write_atomic("link", b"x").unwrap();
        assert!(!outside.path().join("victim").exists());
        assert_eq!(dir.names().unwrap().len(), 2, "no temporary file is left");
    }

    #[test]
    fn made_directories_are_new_and_checked() {
        let root = tempfile::tempdir().unwrap();
        let dir = Dir::open(root.path()).unwrap();
        let made = dir.make_dir("sub", 0o700).unwrap();
        assert!(made.is_empty().unwrap());
        assert!(
            dir.make_dir("sub", 0o700).is_err(),
            "an existing one is not made again"
        );
        assert_eq!(made.stat().unwrap().st_uid, nix::unistd::geteuid().as_raw());
        made.chmod(0o751).unwrap();
        assert_eq!(mode_of(&made.stat().unwrap()), 0o751);
    }
}
