//! Directories made by pg_tmp (ephemeralpg), recognised so that `pgtmp -d DIR` can take them
//! over.
//!
//! pg_tmp.sh's `initdb` (which `pg_tmp -d DIR` and `pg_tmp -k -d DIR` run when DIR holds no
//! cluster yet) makes this layout:
//!
//! ```text
//! DIR/                 `mkdir -p`, or `mktemp -d` without -d; also the socket directory
//!   <version>/         `initdb --nosync -D $TD/$PGVER -E UNICODE -A trust`, with
//!                      $PGVER the last word of `pg_ctl -V` (or, before 2.x, of `psql -V`)
//!     postgres.log     the server's log (`pg_ctl -l`)
//!   initdb.out         initdb's output: what marks DIR as pg_tmp's
//!   NEW                present until a start takes the directory
//!   stop.log           output of the background `pg_tmp stop` of a start
//!   .s.PGSQL.<port>*   the socket and its lock file, while a server runs (stale after a kill)
//! ```
//!
//! Converted, the data directory is renamed `data` (pgtmp's layout); one already so named is
//! what a conversion interrupted after the rename left, and is recognised too.

use crate::state::safefs::Dir;
use anyhow::Result;

/// What pg_tmp writes beside the data directory, and pgtmp's keep mark of an interrupted
/// conversion.
const BESIDE: &[&str] = &["initdb.out", "NEW", "stop.log", "pgtmp.keep"];

/// The data directory's name in a directory pg_tmp made, if `dir` is one: `initdb.out`, one
/// data directory (named by a version, or `data`) and nothing else pg_tmp does not write.
/// Err names what makes it not one pgtmp can take (several clusters).
pub fn data_dir_name(dir: &Dir) -> Result<Option<String>, String> {
    let names = dir
        .names()
        .map_err(|err| format!("cannot be read ({err:#})"))?;
    if !dir.has_file("initdb.out") {
        return Ok(None);
    }
    let mut clusters = Vec::new();
    for name in names {
        let Some(name) = name.to_str() else {
            return Ok(None);
        };
        if BESIDE.contains(&name) || name.starts_with(".s.PGSQL.") {
            continue;
        }
        let named_as_pg_tmp_names =
            name == "data" || name.starts_with(|c: char| c.is_ascii_digit());
        let is_data = dir
            .open_dir_if_exists(name)
            .is_ok_and(|d| d.is_some_and(|d| d.has_file("PG_VERSION")));
        if !(named_as_pg_tmp_names && is_data) {
            return Ok(None);
        }
        clusters.push(name.to_string());
    }
    match clusters.len() {
        0 => Ok(None),
        1 => Ok(clusters.pop()),
        _ => {
            clusters.sort();
            Err(format!(
                "holds several pg_tmp clusters ({}), one per PostgreSQL version pg_tmp ran with; move all but the one to keep elsewhere",
                clusters.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn data_dir(root: &std::path::Path, name: &str) {
        fs::create_dir_all(root.join(name)).unwrap();
        fs::write(root.join(name).join("PG_VERSION"), "15\n").unwrap();
    }

    fn recognise(root: &std::path::Path) -> Result<Option<String>, String> {
        data_dir_name(&Dir::open(root).unwrap())
    }

    #[test]
    fn pg_tmp_layouts_are_recognised() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        data_dir(dir, "15.18-0+deb12u1)");
        // Without initdb.out it is any data directory's parent, not pg_tmp's.
        assert_eq!(recognise(dir), Ok(None));
        for name in [
            "initdb.out",
            "NEW",
            "stop.log",
            ".s.PGSQL.5432",
            ".s.PGSQL.5432.lock",
        ] {
            fs::write(dir.join(name), "").unwrap();
        }
        assert_eq!(recognise(dir), Ok(Some("15.18-0+deb12u1)".into())));
        // A conversion cut short after the rename is finished later.
        fs::rename(dir.join("15.18-0+deb12u1)"), dir.join("data")).unwrap();
        fs::write(dir.join("pgtmp.keep"), "").unwrap();
        assert_eq!(recognise(dir), Ok(Some("data".into())));
    }

    #[test]
    fn what_pg_tmp_does_not_make_is_not_taken() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        fs::write(dir.join("initdb.out"), "").unwrap();
        data_dir(dir, "15.4");
        data_dir(dir, "16.1");
        let several = recognise(dir).unwrap_err();
        assert!(several.contains("15.4, 16.1"), "{several}");
        fs::remove_dir_all(dir.join("16.1")).unwrap();
        fs::write(dir.join("notes.txt"), "mine").unwrap();
        assert_eq!(recognise(dir), Ok(None));
        fs::remove_file(dir.join("notes.txt")).unwrap();
        fs::create_dir(dir.join("17")).unwrap();
        assert_eq!(
            recognise(dir),
            Ok(None),
            "a version-named directory without PG_VERSION"
        );
    }
}
