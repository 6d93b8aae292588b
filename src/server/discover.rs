//! Finding a PostgreSQL server installation: the directory holding `initdb` and `postgres`.

use crate::os::process;
use crate::state::instance::parse_major;
use anyhow::{Context, Result, bail};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A directory with the PostgreSQL server programs pgtmp needs. Only `initdb` and `postgres`
/// are required: several distributions ship server bin directories without psql.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installation {
    pub bindir: PathBuf,
}

/// Patterns of well-known installation directories; `*` is a version.
const WELL_KNOWN: &[&str] = &[
    "/usr/lib/postgresql/*/bin",
    "/usr/pgsql-*/bin",
    "/usr/local/pgsql/bin",
    "/opt/homebrew/opt/postgresql@*/bin",
    "/usr/local/opt/postgresql@*/bin",
    "/Applications/Postgres.app/Contents/Versions/*/bin",
];

impl Installation {
    pub fn initdb(&self) -> PathBuf {
        self.bindir.join("initdb")
    }

    pub fn postgres(&self) -> PathBuf {
        self.bindir.join("postgres")
    }

    /// Accepts `dir` when it holds executable `initdb` and `postgres`.
    pub fn at(dir: &Path) -> Option<Installation> {
        let bindir = fs::canonicalize(dir).ok()?;
        let ok = ["initdb", "postgres"]
            .iter()
            .all(|p| is_executable(&bindir.join(p)));
        ok.then_some(Installation { bindir })
    }

    /// The major version, from `postgres --version` ("postgres (PostgreSQL) 15.18 (Debian...)").
    pub fn major_version(&self) -> Result<u32> {
        let version = self.version()?;
        parse_major(&version).with_context(|| format!("cannot read a version from '{version}'"))
    }

    /// The full version, e.g. "15.18", from `postgres --version`.
    pub fn version(&self) -> Result<String> {
        let out = process::run_checked(
            process::pg_command(&self.postgres()).arg("--version"),
            "postgres --version",
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_version(&text)
            .with_context(|| format!("cannot read a version from '{}'", text.trim()))
    }

    /// Identifies this installation for the pool: its path, and the size and modification time
    /// of its `postgres`, so that entries made by a since-upgraded package are not reused.
    pub fn fingerprint(&self) -> Result<String> {
        let postgres = self.postgres();
        let meta = fs::metadata(&postgres)
            .with_context(|| format!("cannot read {}", postgres.display()))?;
        Ok(format!(
            "{}\0{}\0{}\0{}",
            self.bindir.display(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec()
        ))
    }
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" -> "15.18".
pub fn parse_version(version_output: &str) -> Option<String> {
    version_output
        .split_whitespace()
        .find(|word| word.starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_string)
}

/// Where an installation was found, in the order `find` looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Path,
    PgConfig,
    WellKnown(&'static str),
    /// A directory of PGTMP_PG_PATH (`--pg-path`).
    PgPath(PathBuf),
}

/// Which majors `--pg` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Majors {
    /// These, in this order (one for every command but `pgtmp run`).
    List(Vec<u32>),
    /// One installation of every major found, oldest first.
    All,
}

/// How to choose the installation: `--bindir` names one; `--pg` picks a major among those
/// found, also in the directories of PGTMP_PG_PATH (`--pg-path`), which are searched last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Choice {
    pub bindir: Option<PathBuf>,
    pub major: Option<u32>,
    pub pg_path: Vec<PathBuf>,
}

/// How deep below a PGTMP_PG_PATH directory a `bin/` with initdb and postgres is looked for
/// (an npm build unpacks to `VERSION/package/native/bin`).
const PG_PATH_DEPTH: usize = 4;

/// The installation `choice` asks for.
pub fn choose(choice: &Choice) -> Result<Installation> {
    if let Some(major) = choice.major {
        return of_major(&choice.pg_path, major);
    }
    match find(choice.bindir.as_deref()) {
        Err(err) if choice.bindir.is_none() => {
            // Nothing in the usual places: the newest in PGTMP_PG_PATH, if any.
            let extra = in_pg_path(&choice.pg_path);
            let newest = extra
                .iter()
                .filter_map(|(install, _)| Some((install.major_version().ok()?, install)))
                .max_by_key(|(major, _)| *major);
            newest.map(|(_, install)| install.clone()).ok_or(err)
        }
        other => other,
    }
}

/// The first installation found of major `major`; an error lists the majors there are.
pub fn of_major(pg_path: &[PathBuf], major: u32) -> Result<Installation> {
    let found = by_major(pg_path);
    if let Some((_, install)) = found.iter().find(|(m, _)| *m == major) {
        return Ok(install.clone());
    }
    let mut majors: Vec<u32> = found.iter().map(|(m, _)| *m).collect();
    majors.sort_unstable();
    let have: Vec<String> = majors.iter().map(u32::to_string).collect();
    bail!(
        "--pg {major}: no PostgreSQL {major} installation found; installed: {}; install it, \
         or add the directory holding its bin/ to PGTMP_PG_PATH (--pg-path)",
        if have.is_empty() {
            "none".to_string()
        } else {
            have.join(", ")
        }
    )
}

/// One installation per major asked for, in order: `--pg 15,16` or `--pg all`.
pub fn of_majors(pg_path: &[PathBuf], majors: &Majors) -> Result<Vec<Installation>> {
    match majors {
        Majors::List(list) => list.iter().map(|&m| of_major(pg_path, m)).collect(),
        Majors::All => {
            let mut found = by_major(pg_path);
            if found.is_empty() {
                bail!(
                    "--pg all: no PostgreSQL installation found; install one, or add the directory holding its bin/ to PGTMP_PG_PATH (--pg-path)"
                );
            }
            found.sort_by_key(|(m, _)| *m);
            Ok(found.into_iter().map(|(_, install)| install).collect())
        }
    }
}

/// The first installation found of every major, in the order they are found.
fn by_major(pg_path: &[PathBuf]) -> Vec<(u32, Installation)> {
    let mut found: Vec<(u32, Installation)> = Vec::new();
    for (install, _) in candidates(pg_path) {
        if let Ok(major) = install.major_version()
            && !found.iter().any(|(m, _)| *m == major)
        {
            found.push((major, install));
        }
    }
    found
}

/// The installations in the PGTMP_PG_PATH directories: each is one (a bin directory), or is
/// searched for `bin/` directories that are, newest version name first.
fn in_pg_path(pg_path: &[PathBuf]) -> Vec<(Installation, Source)> {
    let mut found = Vec::new();
    for root in pg_path {
        let mut level = vec![root.clone()];
        for depth in 0..=PG_PATH_DEPTH {
            let mut next = Vec::new();
            for dir in level {
                if let Some(install) = Installation::at(&dir) {
                    found.push((install, Source::PgPath(root.clone())));
                    continue;
                }
                if depth < PG_PATH_DEPTH {
                    next.extend(subdirectories(&dir));
                }
            }
            level = next;
        }
    }
    found
}

/// The directories in `dir`, newest version name first.
fn subdirectories(dir: &Path) -> Vec<PathBuf> {
    let names = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| {
                    let e = e.ok()?;
                    // Followed: installations are often reached through symlinks.
                    fs::metadata(e.path()).ok()?.is_dir().then_some(e)
                })
                .filter_map(|e| e.file_name().into_string().ok())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    newest_first(names)
        .into_iter()
        .map(|name| dir.join(name))
        .collect()
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Path => f.write_str("initdb on PATH"),
            Source::PgConfig => f.write_str("pg_config --bindir"),
            Source::WellKnown(pattern) => write!(f, "well-known place {pattern}"),
            Source::PgPath(root) => write!(f, "PGTMP_PG_PATH {}", root.display()),
        }
    }
}

/// Every installation `find` would consider, in the order it considers them, each once, then
/// those in the PGTMP_PG_PATH directories `pg_path`; the first is the one it uses (unless
/// `--bindir` or `--pg` names another).
pub fn candidates(pg_path: &[PathBuf]) -> Vec<(Installation, Source)> {
    let mut found: Vec<(Installation, Source)> = Vec::new();
    let mut add = |install: Option<Installation>, source: Source| {
        if let Some(install) = install
            && !found.iter().any(|(seen, _)| *seen == install)
        {
            found.push((install, source));
        }
    };
    if let Ok(initdb) = which::which("initdb") {
        let real = fs::canonicalize(&initdb).unwrap_or(initdb);
        add(real.parent().and_then(Installation::at), Source::Path);
    }
    add(
        pg_config_bindir().and_then(|dir| Installation::at(&dir)),
        Source::PgConfig,
    );
    for pattern in WELL_KNOWN {
        for dir in expand(pattern) {
            add(Installation::at(&dir), Source::WellKnown(pattern));
        }
    }
    for (install, source) in in_pg_path(pg_path) {
        add(Some(install), source);
    }
    found
}

/// Finds the installation to use: `--bindir`/`PGTMP_BINDIR`, then `initdb` on PATH, then
/// `pg_config --bindir`, then well-known places, newest major version first.
pub fn find(explicit: Option<&Path>) -> Result<Installation> {
    if let Some(dir) = explicit {
        return explicit_bindir(dir);
    }
    let mut looked = Vec::new();
    match which::which("initdb") {
        Ok(initdb) => {
            // Follow symlinks (e.g. /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb)
            // to the directory that also holds the matching postgres.
            let real = fs::canonicalize(&initdb).unwrap_or(initdb);
            if let Some(found) = real.parent().and_then(Installation::at) {
                return Ok(found);
            }
            looked.push(format!(
                "initdb on PATH ({}), but no postgres beside it",
                real.display()
            ));
        }
        Err(_) => looked.push("initdb on PATH".to_string()),
    }
    match pg_config_bindir() {
        Some(dir) => {
            if let Some(found) = Installation::at(&dir) {
                return Ok(found);
            }
            looked.push(format!("pg_config --bindir ({})", dir.display()));
        }
        None => looked.push("pg_config --bindir".to_string()),
    }
    for pattern in WELL_KNOWN {
        for dir in expand(pattern) {
            if let Some(found) = Installation::at(&dir) {
                return Ok(found);
            }
        }
        looked.push((*pattern).to_string());
    }
    bail!(
        "no PostgreSQL server installation (initdb and postgres) found; looked at: {}; \
         install one (Debian/Ubuntu: apt-get install postgresql; Fedora/RHEL: dnf install \
         postgresql-server; macOS: brew install postgresql@17) or point pgtmp at one with \
         --bindir DIR or PGTMP_BINDIR",
        looked.join(", ")
    )
}

fn explicit_bindir(dir: &Path) -> Result<Installation> {
    if !dir.is_dir() {
        bail!(
            "--bindir/PGTMP_BINDIR {}: no such directory; point it at the directory holding initdb and postgres \
             (e.g. /usr/lib/postgresql/15/bin)",
            dir.display()
        );
    }
    Installation::at(dir).with_context(|| {
        format!(
            "--bindir/PGTMP_BINDIR {}: initdb and postgres are not both there; point it at PostgreSQL's \
             server bin directory (`pg_config --bindir` prints it)",
            dir.display()
        )
    })
}

fn pg_config_bindir() -> Option<PathBuf> {
    let pg_config = which::which("pg_config").ok()?;
    let out = process::pg_command(&pg_config)
        .arg("--bindir")
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let dir = text.trim();
    (out.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir))
}

/// Expands the single `*` in `pattern` against the file system, newest version first.
fn expand(pattern: &str) -> Vec<PathBuf> {
    let Some((head, tail)) = pattern.split_once('*') else {
        return vec![PathBuf::from(pattern)];
    };
    let (parent, prefix) = head.rsplit_once('/').unwrap_or(("", head));
    let names = fs::read_dir(if parent.is_empty() { "/" } else { parent })
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter_map(|name| name.strip_prefix(prefix).map(str::to_string))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    newest_first(names)
        .into_iter()
        .map(|version| PathBuf::from(format!("{head}{version}{tail}")))
        .collect()
}

/// Orders version strings newest first: numerically by each dotted part ("10" after "9.6"
/// and before "16"); names without a number ("latest") come after all numbered ones.
pub fn newest_first(mut versions: Vec<String>) -> Vec<String> {
    fn key(version: &str) -> Vec<u64> {
        version
            .split('.')
            .map_while(|part| part.parse().ok())
            .collect()
    }
    versions.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        match (ka.is_empty(), kb.is_empty()) {
            (false, true) => std::cmp::Ordering::Less,
            (true, false) => std::cmp::Ordering::Greater,
            _ => kb.cmp(&ka).then_with(|| a.cmp(b)),
        }
    });
    versions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_newest_first_numerically() {
        let sorted = newest_first(
            ["9.6", "13", "latest", "16", "10", "18", "17.2"]
                .map(String::from)
                .to_vec(),
        );
        assert_eq!(sorted, ["18", "17.2", "16", "13", "10", "9.6", "latest"]);
    }

    #[test]
    fn major_version_parses() {
        assert_eq!(
            parse_major("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_major("postgres (PostgreSQL) 18beta1"), Some(18));
        assert_eq!(parse_major("postgres (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_major("nonsense"), None);
        assert_eq!(
            parse_version("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)").as_deref(),
            Some("15.18")
        );
    }

    #[test]
    fn explicit_bindir_must_exist() {
        let err = find(Some(Path::new("/nonexistent/pg/bin"))).unwrap_err();
        assert!(format!("{err:#}").contains("no such directory"));
    }

    #[test]
    fn explicit_bindir_must_hold_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let err = find(Some(dir.path())).unwrap_err();
        assert!(format!("{err:#}").contains("initdb and postgres are not both there"));
    }

    #[test]
    fn pg_path_finds_bin_directories_below_it() {
        let root = tempfile::tempdir().unwrap();
        for dir in ["16.1/package/native/bin", "13.2/bin", "empty/x/y"] {
            let bin = root.path().join(dir);
            fs::create_dir_all(&bin).unwrap();
            if dir.ends_with("bin") {
                for program in ["initdb", "postgres"] {
                    fs::write(bin.join(program), "").unwrap();
                    fs::set_permissions(bin.join(program), fs::Permissions::from_mode(0o755))
                        .unwrap();
                }
            }
        }
        let mut found: Vec<PathBuf> = in_pg_path(&[root.path().to_path_buf()])
            .into_iter()
            .map(|(install, _)| install.bindir)
            .collect();
        found.sort();
        let real = fs::canonicalize(root.path()).unwrap();
        assert_eq!(
            found,
            [real.join("13.2/bin"), real.join("16.1/package/native/bin")]
        );
    }

    #[test]
    fn expansion_walks_versions_newest_first() {
        let root = tempfile::tempdir().unwrap();
        for v in ["13", "16", "9.6"] {
            fs::create_dir_all(root.path().join(format!("pg-{v}/bin"))).unwrap();
        }
        let pattern = format!("{}/pg-*/bin", root.path().display());
        let found: Vec<_> = expand(&pattern)
            .into_iter()
            .map(|p| p.strip_prefix(root.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(found, ["pg-16/bin", "pg-13/bin", "pg-9.6/bin"]);
    }
}
