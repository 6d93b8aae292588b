//! PGTMP_DIR: the one directory holding pgtmp's pools and running clusters for an account.

use crate::account::Account;
use anyhow::{Context, Result, bail};
use nix::fcntl::{AT_FDCWD, AtFlags};
use nix::unistd::{AccessFlags, chown, faccessat};
use std::fs::{self, DirBuilder};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
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

/// Where the state lives: `PGTMP_DIR` when set, else `${TMPDIR:-/tmp}/pgtmp-<uid>`, falling back
/// to `/tmp` when TMPDIR is so deep that socket paths would not fit.
pub fn location(pgtmp_dir: Option<&str>, tmpdir: Option<&str>, uid: u32) -> Result<PathBuf> {
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
    let name = format!("pgtmp-{uid}");
    let base = tmpdir.filter(|t| t.starts_with('/')).unwrap_or("/tmp");
    let preferred = Path::new(base).join(&name);
    if instance_socket_len(&preferred) <= SOCKET_PATH_MAX && !has_comma(&preferred) {
        Ok(preferred)
    } else {
        Ok(Path::new("/tmp").join(name))
    }
}

/// True when `path` holds a comma: libpq reads a comma in a URL's host as a list of hosts, so
/// no socket directory may have one.
pub fn has_comma(path: &Path) -> bool {
    path.as_os_str().as_encoded_bytes().contains(&b',')
}

/// `location` for the account `uid`, from this process's PGTMP_DIR and TMPDIR.
pub fn location_for(uid: u32) -> Result<PathBuf> {
    location(
        std::env::var("PGTMP_DIR").ok().as_deref(),
        std::env::var("TMPDIR").ok().as_deref(),
        uid,
    )
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))
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
    pub fn establish(
        path: PathBuf,
        invoker: &Account,
        server: &Account,
    ) -> Result<(StateDir, Option<PathBuf>)> {
        let made = topmost_missing(&path);
        match fs::metadata(&path) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&path)
                    .with_context(|| {
                        format!(
                            "cannot create PGTMP_DIR {}; set PGTMP_DIR to a directory you can write",
                            path.display()
                        )
                    })?;
                if invoker.uid != server.uid
                    && let Err(err) = chown(&path, Some(server.uid), Some(server.gid))
                {
                    if let Some(top) = &made {
                        unmake(&path, top);
                    }
                    return Err(err).with_context(|| {
                        format!(
                            "cannot hand PGTMP_DIR {} to account {}",
                            path.display(),
                            server.name
                        )
                    });
                }
            }
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("cannot inspect PGTMP_DIR {}", path.display()));
            }
            Ok(meta) if !meta.is_dir() => bail!(
                "PGTMP_DIR {} is not a directory; remove it or set PGTMP_DIR elsewhere",
                path.display()
            ),
            Ok(meta) if meta.uid() != server.uid.as_raw() => {
                let empty = fs::read_dir(&path)
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(false);
                if invoker.is_root() && empty {
                    chown(&path, Some(server.uid), Some(server.gid)).with_context(|| {
                        format!(
                            "cannot hand PGTMP_DIR {} to account {}",
                            path.display(),
                            server.name
                        )
                    })?;
                } else {
                    bail!(
                        "PGTMP_DIR {} belongs to uid {}, not to {} who runs the server; remove it \
                         or set PGTMP_DIR to a directory of {}'s own",
                        path.display(),
                        meta.uid(),
                        server.name,
                        server.name
                    );
                }
            }
            Ok(_) => {}
        }
        let made = made.filter(|_| path.is_dir());
        Ok((StateDir { path }, made))
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

    /// The directories of this account's clusters: those under PGTMP_DIR and the registered
    /// ones elsewhere. Running or not; callers read each one's state.
    pub fn clusters(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.path) else {
            return Vec::new();
        };
        let mut dirs = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with(REGISTERED) {
                if let Ok(dir) = registered_dir(&path) {
                    dirs.push(dir);
                }
            } else if name.len() == INSTANCE_NAME_LEN && path.is_dir() {
                dirs.push(path);
            }
        }
        dirs
    }
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

/// The cluster directory a registration file names.
pub fn registered_dir(registration: &Path) -> std::io::Result<PathBuf> {
    let text = fs::read_to_string(registration)?;
    Ok(PathBuf::from(text.trim_end_matches('\n')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_location_uses_tmpdir_and_uid() {
        assert_eq!(
            location(None, None, 1000).unwrap(),
            Path::new("/tmp/pgtmp-1000")
        );
        assert_eq!(
            location(None, Some("/var/tmp"), 0).unwrap(),
            Path::new("/var/tmp/pgtmp-0")
        );
        assert_eq!(
            location(None, Some("relative"), 7).unwrap(),
            Path::new("/tmp/pgtmp-7")
        );
        assert_eq!(
            location(Some(""), None, 7).unwrap(),
            Path::new("/tmp/pgtmp-7")
        );
    }

    #[test]
    fn commas_are_refused_or_avoided() {
        let err = location(Some("/srv/a,b"), None, 5).unwrap_err();
        assert!(format!("{err:#}").contains("comma"), "{err:#}");
        assert_eq!(
            location(None, Some("/var/a,b"), 5).unwrap(),
            Path::new("/tmp/pgtmp-5")
        );
    }

    #[test]
    fn deep_tmpdir_falls_back_to_tmp() {
        let deep = format!("/{}", "d".repeat(120));
        assert_eq!(
            location(None, Some(&deep), 5).unwrap(),
            Path::new("/tmp/pgtmp-5")
        );
    }

    #[test]
    fn explicit_dir_wins_but_must_fit() {
        assert_eq!(
            location(Some("/srv/p"), Some("/x"), 5).unwrap(),
            Path::new("/srv/p")
        );
        let deep = format!("/{}", "d".repeat(120));
        let err = location(Some(&deep), None, 5).unwrap_err();
        assert!(format!("{err:#}").contains("socket path limit"));
    }

    #[test]
    fn clusters_elsewhere_are_registered_and_listed() {
        let root = tempfile::tempdir().unwrap();
        let state = StateDir {
            path: root.path().to_path_buf(),
        };
        fs::create_dir(root.path().join("abcd1234")).unwrap();
        fs::create_dir(root.path().join("pool")).unwrap();
        assert_eq!(
            state.registration_for(&root.path().join("abcd1234"), "abcd1234"),
            None
        );
        let elsewhere = Path::new("/srv/my cluster");
        let registration = state.registration_for(elsewhere, "zzzz9999").unwrap();
        fs::write(&registration, format!("{}\n", elsewhere.display())).unwrap();
        let mut found = state.clusters();
        found.sort();
        let mut expected = [root.path().join("abcd1234"), elsewhere.to_path_buf()];
        expected.sort();
        assert_eq!(found, expected);
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

    #[test]
    fn socket_paths_fit_for_defaults() {
        let dir = location(None, None, u32::MAX).unwrap();
        assert!(instance_socket_len(&dir) <= SOCKET_PATH_MAX);
    }
}
