//! Saved templates: a copy of each installation's pool template in the cache directory of the
//! account the server runs as, so that the first start after `/tmp` was wiped (a reboot)
//! copies it instead of running initdb. Every file's size and SHA-256 are recorded when it is
//! saved and checked on the copy each time it is restored; a copy that does not match is
//! refused and the saved template removed.
//!
//! ```text
//! <cache>/pgtmp/templates/          <cache>: $XDG_CACHE_HOME or ~/.cache of that account
//!   <key>/                          key: the pool's (the installation and the superuser)
//!     install                       the installation's bin directory and the superuser
//!     manifest                      one line per directory and file under data/
//!     tree/PGTMP, tree/data/        the template's contents
//!   new.<name>/                     one being saved; never restored
//! ```

use crate::state::copytree;
use crate::state::instance::NAME_ALPHABET;
use crate::state::ownership;
use crate::state::statedir::INSTANCE_NAME_LEN;
use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

const MANIFEST: &str = "manifest";
const TREE: &str = "tree";
const INSTALL: &str = "install";
const BUILDING: &str = "new.";
/// A manifest is read whole; a template's lists some 1,500 entries of under 120 bytes.
const MANIFEST_LIMIT: u64 = 4 << 20;

/// The saved templates of the account this process runs as.
#[derive(Debug, Clone)]
pub struct Saved {
    dir: PathBuf,
}

impl Saved {
    /// The place for this account, made private if missing; None when PGTMP_NO_SAVED_TEMPLATE
    /// is set or the account has no usable cache directory. Like PGTMP_DIR, these variables
    /// are the state's own business. `$XDG_CACHE_HOME` and `$HOME` count only when they are
    /// this account's own directories (root's, when root started pgtmp for a server account,
    /// are not): else the account's home directory from the password database.
    pub fn locate() -> Option<Saved> {
        Self::find(true, nix::unistd::geteuid())
    }

    /// As [`Self::locate`] for the account `uid` (`pgtmp doctor` run by root asks for the
    /// server account's), but only if the place exists: for commands that only look or
    /// remove, which must not make it.
    pub fn existing_for(uid: nix::unistd::Uid) -> Option<Saved> {
        Self::find(false, uid)
    }

    /// True when PGTMP_NO_SAVED_TEMPLATE turns saving off.
    pub fn turned_off() -> bool {
        std::env::var_os("PGTMP_NO_SAVED_TEMPLATE").is_some_and(|v| !v.is_empty())
    }

    fn find(create: bool, me: nix::unistd::Uid) -> Option<Saved> {
        if Self::turned_off() {
            return None;
        }
        let own = |path: &Path| {
            path.is_absolute()
                && fs::symlink_metadata(path).is_ok_and(|m| m.is_dir() && m.uid() == me.as_raw())
        };
        let from_env = |name: &str| std::env::var_os(name).map(PathBuf::from);
        let cache = match from_env("XDG_CACHE_HOME").filter(|p| own(p)) {
            Some(cache) => cache,
            None => {
                let home = from_env("HOME").filter(|p| own(p)).or_else(|| {
                    let user = nix::unistd::User::from_uid(me).ok().flatten()?;
                    Some(user.dir).filter(|p| own(p))
                })?;
                home.join(".cache")
            }
        };
        if !safe_ancestors(&cache, me.as_raw()) {
            return None;
        }
        let dir = cache.join("pgtmp").join("templates");
        if !create {
            // `own`, not is_own_dir: doctor run by root looks at a server account's.
            return (own(&dir) && private(&dir).is_ok()).then_some(Saved { dir });
        }
        // The cache directory and pgtmp's in it may be open to others (a ~/.cache of 0755 is
        // common); the templates directory, which holds TLS keys, may not.
        for step in [&cache, &cache.join("pgtmp"), &dir] {
            ownership::own_dir(step).ok()?;
        }
        private(&dir).ok()?;
        Some(Saved { dir })
    }

    /// Where the saved templates are.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The saved templates (half saved ones included) and what they take on disk.
    pub fn measure(&self) -> crate::state::usage::Part {
        let entries: Vec<PathBuf> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        crate::state::usage::Part {
            bytes: entries
                .iter()
                .map(|p| crate::state::usage::disk_usage(p))
                .sum(),
            count: entries
                .iter()
                .filter(|p| p.join(MANIFEST).is_file())
                .count(),
        }
    }

    /// Copies the template saved under `key` into `dst` (an existing directory, holding
    /// nothing of the names copied) and checks the copy against the manifest. False when
    /// none is saved, or when the copy failed or did not match: then what was copied is
    /// removed from `dst` again, and so is the saved template (the next template made is
    /// saved in its place), unless the copy failed for want of room where it was going.
    pub fn restore(&self, key: &str, dst: &Path) -> bool {
        let entry = self.dir.join(key);
        match self.try_restore(&entry, dst) {
            Ok(restored) => restored,
            Err(err) => {
                if let Ok(names) = fs::read_dir(entry.join(TREE)) {
                    for name in names.filter_map(|e| e.ok()).map(|e| e.file_name()) {
                        let _ = crate::state::safefs::remove_tree_at(&dst.join(name));
                    }
                }
                if !out_of_room(&err) {
                    let _ = crate::state::safefs::remove_tree_at(&entry);
                }
                false
            }
        }
    }

    fn try_restore(&self, entry: &Path, dst: &Path) -> Result<bool> {
        if !ownership::is_own_dir(entry) {
            return Ok(false);
        }
        let expected = match crate::state::safefs::Dir::open(entry)
            .and_then(|dir| dir.read_small(MANIFEST, MANIFEST_LIMIT as usize))
        {
            Ok(Some(text)) => text,
            _ => return Ok(false),
        };
        copytree::copy_contents(&entry.join(TREE), dst)?;
        if manifest(&dst.join("data"))?.as_bytes() != expected.as_slice() {
            bail!(
                "the copy of {} does not match its manifest",
                entry.display()
            );
        }
        Ok(true)
    }

    /// Saves `template` (a complete pool template) under `key` unless one is saved, and
    /// removes the templates saved for the same installation and superuser under other keys
    /// (made by binaries since replaced).
    pub fn save(&self, key: &str, template: &Path, install: &str) -> Result<()> {
        if ownership::is_own_dir(&self.dir.join(key)) {
            return Ok(());
        }
        let name = format!(
            "{BUILDING}{}",
            crate::os::secret::random_string(NAME_ALPHABET, INSTANCE_NAME_LEN)?
        );
        let building = self.dir.join(&name);
        let made = (|| {
            ownership::own_dir(&building)?;
            let tree = building.join(TREE);
            ownership::own_dir(&tree)?;
            copytree::copy_contents(template, &tree)?;
            let dir = crate::state::safefs::Dir::open(&building)?;
            dir.write_atomic(MANIFEST, manifest(&tree.join("data"))?.as_bytes())?;
            dir.write_atomic(INSTALL, install.as_bytes())?;
            fs::rename(&building, self.dir.join(key))
                .with_context(|| format!("cannot publish {}", building.display()))
        })();
        if made.is_err() {
            let _ = crate::state::safefs::remove_tree_at(&building);
        }
        made?;
        self.remove_where(false, |other, text| other != key && text == install);
        Ok(())
    }

    /// Removes every saved template (`pgtmp gc --all`) and any left half saved; returns what
    /// it removed (with `dry_run`, what it would remove, removing nothing).
    pub fn remove_all(&self, dry_run: bool) -> Vec<PathBuf> {
        self.remove_where(dry_run, |_, _| true)
    }

    /// Removes the saved templates `wanted` picks, given the name and the install text, and
    /// those left half saved by a process that died (older than an hour).
    fn remove_where(&self, dry_run: bool, wanted: impl Fn(&str, &str) -> bool) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return removed;
        };
        for path in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            if !ownership::is_own_dir(&path) {
                continue;
            }
            let pick = if name.starts_with(BUILDING) {
                fs::symlink_metadata(&path)
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age.as_secs() > 3600)
            } else {
                let text = crate::state::safefs::read_text_at(&path.join(INSTALL));
                wanted(&name, text.ok().flatten().as_deref().unwrap_or(""))
            };
            if pick && (dry_run || crate::state::safefs::remove_tree_at(&path).is_ok()) {
                removed.push(path);
            }
        }
        removed
    }
}

/// True when no other account can replace `path` or any directory on the way to it: each
/// belongs to root or `uid` and is writable by nobody else, or has the sticky bit (as /tmp
/// has). A missing `path` counts as its parent; a symbolic link on the way (a /home that
/// links elsewhere) only needs a trusted owner, as nobody can change a link itself.
fn safe_ancestors(path: &Path, uid: u32) -> bool {
    path.ancestors().all(|dir| match fs::symlink_metadata(dir) {
        Ok(meta) => {
            let mode = meta.permissions().mode();
            [0, uid].contains(&meta.uid())
                && (meta.is_symlink() || mode & 0o022 == 0 || mode & 0o1000 != 0)
        }
        Err(err) => err.kind() == std::io::ErrorKind::NotFound,
    })
}

/// True when `err` comes from a full disk or an exhausted quota: nothing wrong with what
/// was being copied.
fn out_of_room(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(|io| [nix::libc::ENOSPC, nix::libc::EDQUOT].contains(&io.raw_os_error().unwrap_or(0)))
}

/// Refuses a directory that other accounts may enter.
fn private(path: &Path) -> Result<()> {
    let mode = fs::symlink_metadata(path)
        .with_context(|| format!("cannot inspect {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!("{} is open to other accounts", path.display());
    }
    Ok(())
}

/// One line per entry under `root`, sorted by path: `d MODE PATH` for a directory, `f MODE
/// SIZE SHA256 PATH` for a file. Anything else (a link, a socket) is an error: a template
/// holds none. The files are hashed by several threads (see [`copytree::in_threads`]).
fn manifest(root: &Path) -> Result<String> {
    let mut lines = Vec::new();
    let mut files = Vec::new();
    walk(root, Path::new(""), &mut lines, &mut files)?;
    let hashed = copytree::in_threads(&files, "hashing", |part| {
        part.iter()
            .map(|(path, head, shown)| Ok(format!("{head} {} {shown}\n", file_hash(path)?)))
            .collect::<Result<Vec<String>>>()
    })?;
    lines.extend(hashed.into_iter().flatten());
    lines.sort();
    Ok(lines.join(""))
}

/// A file to hash: its path, and its manifest line's fields before and after the hash.
type ToHash = (PathBuf, String, String);

/// Lists the directories under `root/rel` as lines, and the files to hash.
fn walk(root: &Path, rel: &Path, lines: &mut Vec<String>, files: &mut Vec<ToHash>) -> Result<()> {
    let dir = root.join(rel);
    let entries = fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let path = entry.path();
        let meta = fs::symlink_metadata(&path)
            .with_context(|| format!("cannot inspect {}", path.display()))?;
        let name = rel.join(entry.file_name());
        let shown = name.to_string_lossy();
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_dir() {
            lines.push(format!("d {mode:o} {shown}\n"));
            walk(root, &name, lines, files)?;
        } else if meta.is_file() {
            let head = format!("f {mode:o} {}", meta.len());
            files.push((path, head, shown.into_owned()));
        } else {
            bail!("{} is neither a file nor a directory", path.display());
        }
    }
    Ok(())
}

fn file_hash(path: &Path) -> Result<String> {
    let mut file =
        fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(root: &Path) -> PathBuf {
        let template = root.join("template");
        fs::create_dir_all(template.join("data/base/1")).unwrap();
        fs::write(template.join("PGTMP"), "marker").unwrap();
        fs::write(template.join("data/PG_VERSION"), "15\n").unwrap();
        fs::write(template.join("data/base/1/1259"), vec![7u8; 70_000]).unwrap();
        template
    }

    fn saved_in(root: &Path) -> Saved {
        let dir = root.join("templates");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        Saved { dir }
    }

    #[test]
    fn a_saved_template_comes_back_whole() {
        let root = tempfile::tempdir().unwrap();
        let saved = saved_in(root.path());
        saved
            .save("k1", &template(root.path()), "bin\nuser\n")
            .unwrap();
        let dst = root.path().join("dst");
        fs::create_dir(&dst).unwrap();
        assert!(saved.restore("k1", &dst));
        assert_eq!(
            fs::read(dst.join("data/base/1/1259")).unwrap(),
            vec![7u8; 70_000]
        );
        assert!(dst.join("PGTMP").is_file());
        assert!(
            !saved.restore("other", &root.path().join("dst2")),
            "none saved"
        );
    }

    #[test]
    fn a_changed_byte_is_refused_and_the_saved_template_removed() {
        let root = tempfile::tempdir().unwrap();
        let saved = saved_in(root.path());
        saved
            .save("k1", &template(root.path()), "bin\nuser\n")
            .unwrap();
        let file = saved.dir.join("k1/tree/data/base/1/1259");
        let mut bytes = fs::read(&file).unwrap();
        bytes[65_000] = 8;
        fs::write(&file, bytes).unwrap();
        let dst = root.path().join("dst");
        fs::create_dir(&dst).unwrap();
        fs::write(dst.join("preparing"), "").unwrap();
        assert!(!saved.restore("k1", &dst));
        assert!(!saved.dir.join("k1").exists(), "the damaged template stays");
        let left: Vec<_> = fs::read_dir(&dst)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from("preparing")],
            "the copy stays"
        );
    }

    #[test]
    fn saving_for_an_installation_replaces_its_older_template() {
        let root = tempfile::tempdir().unwrap();
        let saved = saved_in(root.path());
        let template = template(root.path());
        saved.save("old", &template, "bin\nuser\n").unwrap();
        saved.save("other", &template, "elsewhere\nuser\n").unwrap();
        saved.save("new", &template, "bin\nuser\n").unwrap();
        assert!(!saved.dir.join("old").exists());
        assert!(saved.dir.join("other").exists() && saved.dir.join("new").exists());
        assert_eq!(saved.measure().count, 2);
        assert_eq!(saved.remove_all(false).len(), 2);
        assert_eq!(saved.measure().count, 0);
    }
}
