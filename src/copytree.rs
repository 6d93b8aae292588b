//! Copying a prepared directory tree (a data directory and its companions) quickly: file
//! contents go through `std::fs::copy`, which on Linux uses copy_file_range(2) and so shares
//! extents (reflink) on filesystems that can, and copies inside the kernel elsewhere.

use anyhow::{Context, Result};
use std::fs::{self, DirBuilder};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Copies the contents of directory `src` into directory `dst`, which must exist (and is
/// normally empty). Modes are kept; symbolic links are recreated, never followed; anything
/// else (sockets, FIFOs) is skipped. On failure `dst` may hold a partial copy: the caller owns
/// `dst` and removes it.
pub fn copy_contents(src: &Path, dst: &Path) -> Result<()> {
    let entries = fs::read_dir(src).with_context(|| format!("cannot read {}", src.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", src.display()))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let kind = entry
            .file_type()
            .with_context(|| format!("cannot inspect {}", from.display()))?;
        if kind.is_dir() {
            let mode = entry
                .metadata()
                .with_context(|| format!("cannot inspect {}", from.display()))?
                .permissions()
                .mode();
            DirBuilder::new()
                .mode(mode & 0o7777)
                .create(&to)
                .with_context(|| format!("cannot create {}", to.display()))?;
            copy_contents(&from, &to)?;
        } else if kind.is_file() {
            fs::copy(&from, &to)
                .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
        } else if kind.is_symlink() {
            let target = fs::read_link(&from)
                .with_context(|| format!("cannot read link {}", from.display()))?;
            std::os::unix::fs::symlink(&target, &to)
                .with_context(|| format!("cannot create link {}", to.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_files_dirs_modes_and_links() {
        let root = tempfile::tempdir().unwrap();
        let src = root.path().join("src");
        fs::create_dir_all(src.join("a/b")).unwrap();
        fs::write(src.join("a/b/f"), "hello").unwrap();
        fs::set_permissions(src.join("a"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(src.join("g"), "x").unwrap();
        fs::set_permissions(src.join("g"), fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink("a/b/f", src.join("link")).unwrap();
        let dst = root.path().join("dst");
        fs::create_dir(&dst).unwrap();
        copy_contents(&src, &dst).unwrap();
        assert_eq!(fs::read_to_string(dst.join("a/b/f")).unwrap(), "hello");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dst.join("a")), 0o700);
        assert_eq!(mode(&dst.join("g")), 0o600);
        assert_eq!(fs::read_link(dst.join("link")).unwrap(), Path::new("a/b/f"));
    }

    #[test]
    fn missing_source_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let err = copy_contents(&root.path().join("nope"), root.path()).unwrap_err();
        assert!(format!("{err:#}").contains("cannot read"));
    }
}
