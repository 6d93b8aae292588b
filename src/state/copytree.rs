//! Copying a prepared directory tree (a data directory and its companions) quickly: file
//! contents go through `std::fs::copy`, which on Linux uses copy_file_range(2) and so shares
//! extents (reflink) on filesystems that can, and copies inside the kernel elsewhere; files are
//! copied by several threads at once.

use anyhow::{Context, Result};
use std::fs::{self, DirBuilder};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Most threads copying files at once. Creating files is what costs (a data directory holds
/// over a thousand); each database is a directory of its own, so threads rarely contend.
const MAX_THREADS: usize = 4;
/// Below this many files a single thread is as fast.
const PARALLEL_FROM: usize = 64;

/// Copies the contents of directory `src` into directory `dst`, which must exist (and is
/// normally empty). Modes are kept; symbolic links are recreated, never followed; anything
/// else (sockets, FIFOs) is skipped. On failure `dst` may hold a partial copy: the caller owns
/// `dst` and removes it.
///
/// Directories are made first, then the files are copied by up to [`MAX_THREADS`] scoped
/// threads, all joined before this returns (so the caller may fork afterwards).
pub fn copy_contents(src: &Path, dst: &Path) -> Result<()> {
    let mut files = Vec::new();
    make_tree(src, dst, &mut files)?;
    if files.len() < PARALLEL_FROM {
        return copy_files(&files);
    }
    in_threads(&files, "copying", copy_files).map(|_| ())
}

/// Runs `work` on parts of `items`, one part per scoped thread, up to [`MAX_THREADS`] (and no
/// more than there are cores): the results in the order of the parts, or the first error. The
/// threads are all joined before this returns (so the caller may fork afterwards); `what`
/// names them in errors ("copying", "hashing").
pub fn in_threads<T: Sync, R: Send>(
    items: &[T],
    what: &str,
    work: impl Fn(&[T]) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_THREADS);
    if threads < 2 || items.len() < 2 {
        return Ok(vec![work(items)?]);
    }
    let chunk = items.len().div_ceil(threads);
    let work = &work;
    std::thread::scope(|scope| {
        // A thread that cannot be made (RLIMIT_NPROC, memory) is an error, not a panic; the
        // threads already made are joined first, when the scope ends.
        let workers: Vec<_> = items
            .chunks(chunk)
            .map(|part| {
                std::thread::Builder::new()
                    .spawn_scoped(scope, move || work(part))
                    .map_err(|err| {
                        crate::output::exit::spawn_error(
                            err,
                            format!("cannot start a {what} thread"),
                        )
                    })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker?
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a {what} thread panicked")))
            })
            .collect()
    })
}

/// Recreates the directories and links of `src` under `dst`; lists the files to copy.
fn make_tree(src: &Path, dst: &Path, files: &mut Vec<(PathBuf, PathBuf)>) -> Result<()> {
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
            make_tree(&from, &to, files)?;
        } else if kind.is_file() {
            files.push((from, to));
        } else if kind.is_symlink() {
            let target = fs::read_link(&from)
                .with_context(|| format!("cannot read link {}", from.display()))?;
            std::os::unix::fs::symlink(&target, &to)
                .with_context(|| format!("cannot create link {}", to.display()))?;
        }
    }
    Ok(())
}

fn copy_files(files: &[(PathBuf, PathBuf)]) -> Result<()> {
    for (from, to) in files {
        fs::copy(from, to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
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
    fn many_files_are_copied_by_threads_and_all_arrive() {
        let root = tempfile::tempdir().unwrap();
        let src = root.path().join("src");
        for db in 0..4 {
            fs::create_dir_all(src.join(format!("base/{db}"))).unwrap();
            for file in 0..50 {
                fs::write(
                    src.join(format!("base/{db}/{file}")),
                    format!("{db}.{file}"),
                )
                .unwrap();
            }
        }
        let dst = root.path().join("dst");
        fs::create_dir(&dst).unwrap();
        copy_contents(&src, &dst).unwrap();
        for db in 0..4 {
            for file in 0..50 {
                let text = fs::read_to_string(dst.join(format!("base/{db}/{file}"))).unwrap();
                assert_eq!(text, format!("{db}.{file}"));
            }
        }
    }

    #[test]
    fn a_failing_copy_is_reported() {
        let root = tempfile::tempdir().unwrap();
        let src = root.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("f"), "x").unwrap();
        // The destination directory is missing: nothing can be created in it.
        let err = copy_contents(&src, &root.path().join("missing")).unwrap_err();
        assert!(format!("{err:#}").contains("cannot copy"), "{err:#}");
    }

    #[test]
    fn missing_source_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let err = copy_contents(&root.path().join("nope"), root.path()).unwrap_err();
        assert!(format!("{err:#}").contains("cannot read"));
    }
}
