//! How much disk a directory tree takes, as `du` counts it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What one kind of prepared state takes: bytes on disk, and how many of it there are.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub bytes: u64,
    pub count: usize,
}

/// Bytes allocated on disk below `dir`, as `du` counts them; symlinks are not followed and
/// what vanishes meanwhile is skipped.
pub fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        total += meta.blocks() * 512;
        if meta.is_dir()
            && let Ok(entries) = std::fs::read_dir(&path)
        {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    total
}
