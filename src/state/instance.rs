//! An instance directory: the layout of one cluster's private directory and its state file.
//!
//! ```text
//! DIR/              mode 0700; also the server's Unix socket directory
//!   data/           the PostgreSQL data directory
//!   postgres.log    everything the server prints
//!   PGTMP           marker: a complete directory pgtmp prepared (proof of ownership)
//!   PGTMP.preparing marker: pgtmp is filling the directory (proof of ownership of what a killed
//!                   start or refill leaves half made); replaced by PGTMP when complete
//!   pgtmp.state     present while a watchdog looks after a running server
//!   idle            present while the watchdog sees no client; its mtime says since when
//!   pgtmp.keep      the cluster was started with -k: a sweep never removes this directory
//! ```
//!
//! A directory being removed may go by `.gone.<name>` beside it meanwhile.
//!
//! While a pgtmp process looks after the directory it holds a flock on it (see ownership.rs).

use crate::os::process::Pid;
use crate::state::safefs::{self, Dir};
use crate::state::segments::{self, Segments};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub const MARKER: &str = "PGTMP";
const PREPARING: &str = "PGTMP.preparing";
pub const STATE: &str = "pgtmp.state";
const IDLE: &str = "idle";
const KEEP: &str = "pgtmp.keep";
/// Prefix of the hidden name a directory being removed goes by (see [`Instance::remove_at_once`]).
pub const GONE: &str = ".gone.";

/// Letters of instance and pool entry names: short, so socket paths stay short.
pub const NAME_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub dir: PathBuf,
}

/// What is at a path given with `-d`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Missing,
    Empty,
    Cluster,
    /// Left half made by a pgtmp that was killed while preparing it.
    Unfinished,
    /// Made by pg_tmp (see pg_tmp.rs): a cluster in the data directory of this name.
    PgTmp(String),
    /// Something pgtmp must not touch, with the reason.
    Foreign(String),
}

/// What a watchdog records about the cluster it looks after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub watchdog_pid: Pid,
    pub postmaster_pid: Pid,
    pub port: u16,
    pub tcp: bool,
    pub keep: bool,
    /// The uid that invoked pgtmp (root stays 0 although files belong to the server account).
    pub owner_uid: u32,
    pub user: String,
    pub timeout: u64,
    /// Start times of the two processes (ownership::start_time), so that a pid reused by
    /// another process is never signalled. None off Linux, or in a state of an older pgtmp.
    pub watchdog_start: Option<u64>,
    pub postmaster_start: Option<u64>,
    /// The server's shared memory, to release should it be killed.
    pub segments: Segments,
    /// `--owner-pid`: the process the cluster follows, and its start time.
    pub owner: Option<(Pid, u64)>,
}

impl Instance {
    pub fn new(dir: impl Into<PathBuf>) -> Instance {
        Instance { dir: dir.into() }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join(STATE)
    }

    /// The directory itself, opened without following a symlink: every file-system action on
    /// it goes through this handle (see safefs.rs).
    pub fn open(&self) -> Result<Dir> {
        Dir::open(&self.dir)
    }

    /// Records that this directory is to be kept (-k), before any process looks after it.
    pub fn mark_kept(&self) -> Result<()> {
        self.open()?.write_atomic(
            KEEP,
            b"started with pgtmp -k: kept when its cluster stops\n",
        )
    }

    /// Records that this directory is kept and whether its cluster ran with -t, so that the
    /// command that reopens it (`pgtmp list --all`) can say -t.
    pub fn mark_kept_as(&self, tcp: bool) -> Result<()> {
        let text: &[u8] = if tcp {
            b"kept when its cluster stops; last started with -t\n"
        } else {
            b"kept when its cluster stops\n"
        };
        self.open()?.write_atomic(KEEP, text)
    }

    /// True when the directory was started with -k.
    pub fn is_kept(&self) -> bool {
        self.open()
            .is_ok_and(|dir| dir.stat_at(KEEP).is_ok_and(|st| st.is_some()))
    }

    /// A complete cluster directory made by pgtmp.
    pub fn is_cluster(&self) -> bool {
        self.open().is_ok_and(|dir| is_cluster_in(&dir))
    }

    /// Marks the directory complete.
    pub fn write_marker(&self) -> Result<()> {
        let dir = self.open()?;
        dir.write_atomic(
            MARKER,
            b"pgtmp instance directory; removed when its cluster stops\n",
        )?;
        let _ = dir.remove_file(PREPARING);
        Ok(())
    }

    /// Records, before anything else goes into the directory, that pgtmp is filling it.
    pub fn mark_preparing(&self) -> Result<()> {
        self.open()?
            .write_atomic(PREPARING, b"pgtmp is preparing this directory\n")
    }

    /// Removes the mark of [`Instance::mark_preparing`]: the directory is complete.
    pub fn prepared(&self) {
        if let Ok(dir) = self.open() {
            let _ = dir.remove_file(PREPARING);
        }
    }

    /// True when pgtmp marked the directory as being filled (and did not finish, or is still
    /// at it).
    pub fn is_being_prepared(&self) -> bool {
        self.open().is_ok_and(|dir| dir.has_file(PREPARING))
    }

    /// Makes `dir` (which must not exist) a private directory marked as being prepared. It is
    /// made in its parent's handle, so a directory someone else made there first is refused.
    pub fn create(dir: &Path) -> Result<Instance> {
        let (parent, name) = split(dir)?;
        Dir::open(parent)?.make_dir(name, 0o700)?;
        let instance = Instance::new(dir);
        if let Err(err) = instance.mark_preparing() {
            let _ = instance.remove();
            return Err(err);
        }
        Ok(instance)
    }

    /// The major version the data directory was made by.
    pub fn data_version(&self) -> Result<u32> {
        data_version_in(&self.open()?)
    }

    /// Classifies what is at `dir` for `-d`. A symlink there is refused, not followed.
    pub fn inspect(dir: &Path) -> Result<Found> {
        let (parent, name) = split(dir)?;
        let Some(parent) = Dir::open_if_exists(parent)? else {
            return Ok(Found::Missing);
        };
        match parent.stat_at(name)? {
            None => return Ok(Found::Missing),
            Some(st) if safefs::is_symlink(&st) => {
                return Ok(Found::Foreign(
                    "is a symbolic link, which pgtmp never follows; name the real directory".into(),
                ));
            }
            Some(st) if !safefs::is_dir(&st) => {
                return Ok(Found::Foreign("is not a directory".into()));
            }
            Some(_) => {}
        }
        let handle = parent.open_dir(name)?;
        if handle.is_empty()? {
            return Ok(Found::Empty);
        }
        let instance = Instance::new(dir);
        if instance.is_cluster() {
            return Ok(Found::Cluster);
        }
        if instance.is_being_prepared() {
            return Ok(Found::Unfinished);
        }
        match crate::state::pg_tmp::data_dir_name(&handle) {
            Ok(Some(data)) => return Ok(Found::PgTmp(data)),
            Ok(None) => {}
            Err(reason) => return Ok(Found::Foreign(reason)),
        }
        if handle.has_file("PG_VERSION") {
            return Ok(Found::Foreign(
                "is a bare PostgreSQL data directory, not one made by pgtmp".into(),
            ));
        }
        Ok(Found::Foreign(
            "is not empty and holds no pgtmp cluster".into(),
        ))
    }

    /// Makes the directory private again (the socket lives in it and is trust-authenticated).
    pub fn make_private(&self) -> Result<()> {
        self.open()?.chmod(0o700)
    }

    /// Records `state` (as JSON, see [`StateFile`]), replacing any earlier record at once.
    pub fn write_state(&self, state: &State) -> Result<()> {
        self.write_file(&self.state_path(), state.render()?.as_bytes())
    }

    /// Writes `path` (a file directly in this directory) beside and renames it over, so
    /// readers never see half a file; made with mode 0600, never through a symlink.
    pub fn write_file(&self, path: &Path, contents: &[u8]) -> Result<()> {
        let name = path
            .file_name()
            .filter(|_| path.parent() == Some(self.dir.as_path()))
            .with_context(|| {
                format!("{} is not a file of {}", path.display(), self.dir.display())
            })?;
        self.open()?.write_atomic(name, contents)
    }

    /// The state of a running cluster, or None when no watchdog has recorded one. Read with
    /// bounds (a regular file of the directory's owner, small), so a planted FIFO, device or
    /// symlink is an error, never followed.
    pub fn read_state(&self) -> Result<Option<State>> {
        read_state_in(&self.open()?)
    }

    pub fn remove_state(&self) {
        if let Ok(dir) = self.open() {
            let _ = dir.remove_file(STATE);
            let _ = dir.remove_file(IDLE);
        }
    }

    /// When `name` in this directory was last modified.
    fn modified(&self, name: &str) -> Option<SystemTime> {
        let st = self.open().ok()?.stat_at(name).ok()??;
        let secs = u64::try_from(st.st_mtime).ok()?;
        let nanos = u32::try_from(st.st_mtime_nsec).ok()?;
        SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
    }

    /// When the watchdog recorded the state: when the server became ready.
    pub fn started_at(&self) -> Option<SystemTime> {
        self.modified(STATE)
    }

    /// Records whether the watchdog sees clients: the `idle` file exists, made when the last
    /// one left, while there are none. Best effort: it only informs `pgtmp list`.
    pub fn mark_idle(&self, idle: bool) {
        let Ok(dir) = self.open() else {
            return;
        };
        let _ = if idle {
            dir.write_atomic(IDLE, b"")
        } else {
            dir.remove_file(IDLE)
        };
    }

    /// Since when the watchdog has seen no client, if it has looked.
    pub fn idle_since(&self) -> Option<SystemTime> {
        self.modified(IDLE)
    }

    /// Deletes the whole directory, through its parent's handle: a symlink inside (or at its
    /// path) is removed, never followed, and nothing outside it is touched.
    pub fn remove(&self) -> Result<()> {
        safefs::remove_tree_at(&self.dir)
    }

    /// Deletes the whole directory, gone from its path at once: it is first renamed to a hidden
    /// name beside it (`.gone.<name>`, in the same parent), then deleted under that name, which
    /// takes a while for a data directory of thousands of files. What a process killed
    /// meanwhile leaves, the sweep removes. If the rename fails, the tree is deleted in place.
    pub fn remove_at_once(&self) -> Result<()> {
        let (parent, name) = split(&self.dir)?;
        let hidden = format!("{GONE}{}", name.to_string_lossy());
        let parent = Dir::open(parent)?;
        match parent.rename(name, &hidden) {
            Ok(()) => parent.remove_tree(&hidden),
            Err(_) => self.remove(),
        }
    }

    /// Deletes everything inside the directory but the directory itself (for a `-d DIR` that
    /// existed, empty, before pgtmp filled it).
    pub fn empty_out(&self) -> Result<()> {
        self.open()?.empty_out()
    }
}

/// True when the opened instance directory `dir` is a complete cluster directory made by
/// pgtmp: its marker and `data/PG_VERSION`, regular files reached without following a symlink.
pub fn is_cluster_in(dir: &Dir) -> bool {
    dir.has_file(MARKER)
        && dir
            .open_dir_if_exists("data")
            .is_ok_and(|data| data.is_some_and(|d| d.has_file("PG_VERSION")))
}

/// True when the kept directory `dir` (opened) last ran with -t (see
/// [`Instance::mark_kept_as`]); read with bounds.
pub fn kept_with_tcp_in(dir: &Dir) -> bool {
    dir.read_text(KEEP)
        .ok()
        .flatten()
        .is_some_and(|text| text.contains("with -t"))
}

/// The major version the data directory in the opened instance directory `dir` was made by.
pub fn data_version_in(dir: &Dir) -> Result<u32> {
    let path = dir.child_path("data").join("PG_VERSION");
    let text = dir
        .open_dir("data")?
        .read_text("PG_VERSION")?
        .with_context(|| format!("{} is missing", path.display()))?;
    parse_major(&text).with_context(|| format!("{} is malformed", path.display()))
}

/// The state recorded in the opened instance directory `dir`, or None when no watchdog has
/// recorded one; read with bounds (see [`Instance::read_state`]).
pub fn read_state_in(dir: &Dir) -> Result<Option<State>> {
    let Some(text) = dir.read_text(STATE)? else {
        return Ok(None);
    };
    State::parse(&text)
        .map(Some)
        .with_context(|| format!("{} is malformed", dir.child_path(STATE).display()))
}

/// An instance path as its parent directory and name.
fn split(dir: &Path) -> Result<(&Path, &std::ffi::OsStr)> {
    match (dir.parent(), dir.file_name()) {
        (Some(parent), Some(name)) => Ok((parent, name)),
        _ => bail!("{} cannot be a cluster directory", dir.display()),
    }
}

/// The version of the state file's format that [`Instance::write_state`] writes. The key=value
/// text of pgtmp before it (version 0, without the field) is still read, so that a cluster
/// started by the previous binary can still be listed and stopped.
const STATE_VERSION: u32 = 1;

/// The state file as written: [`State`] with the format's version, field by field.
#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    watchdog_pid: Pid,
    postmaster_pid: Pid,
    port: u16,
    tcp: bool,
    keep: bool,
    owner_uid: u32,
    user: String,
    timeout: u64,
    watchdog_start: Option<u64>,
    postmaster_start: Option<u64>,
    shm_sysv_id: Option<i32>,
    shm_posix: Vec<String>,
    /// Added within version 1: absent in the records of a pgtmp without `--owner-pid`.
    #[serde(default)]
    owner_pid: Option<Pid>,
    #[serde(default)]
    owner_start: Option<u64>,
}

impl State {
    fn render(&self) -> Result<String> {
        let file = StateFile {
            version: STATE_VERSION,
            watchdog_pid: self.watchdog_pid,
            postmaster_pid: self.postmaster_pid,
            port: self.port,
            tcp: self.tcp,
            keep: self.keep,
            owner_uid: self.owner_uid,
            user: self.user.clone(),
            timeout: self.timeout,
            watchdog_start: self.watchdog_start,
            postmaster_start: self.postmaster_start,
            shm_sysv_id: self.segments.sysv_id,
            shm_posix: self.segments.posix.clone(),
            owner_pid: self.owner.map(|(pid, _)| pid),
            owner_start: self.owner.map(|(_, start)| start),
        };
        let mut text = serde_json::to_string(&file).context("cannot render the state")?;
        text.push('\n');
        Ok(text)
    }

    /// Reads what [`Instance::write_state`] writes, or the key=value text of the pgtmp before
    /// (read through a handle, with bounds, by the caller).
    pub fn parse(text: &str) -> Result<State> {
        let state = if text.trim_start().starts_with('{') {
            Self::parse_json(text)?
        } else {
            Self::parse_key_value(text)?
        };
        if !state.watchdog_pid.is_process() || !state.postmaster_pid.is_process() {
            bail!("process ids must be positive");
        }
        Ok(state)
    }

    fn parse_json(text: &str) -> Result<State> {
        // The version first: a newer format may not have the fields this one expects.
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let Version { version } = serde_json::from_str(text).context("no version")?;
        if version != STATE_VERSION {
            bail!("format version {version} is not {STATE_VERSION}: written by another pgtmp");
        }
        let file: StateFile = serde_json::from_str(text).context("not a state record")?;
        Ok(State {
            watchdog_pid: file.watchdog_pid,
            postmaster_pid: file.postmaster_pid,
            port: file.port,
            tcp: file.tcp,
            keep: file.keep,
            owner_uid: file.owner_uid,
            user: file.user,
            timeout: file.timeout,
            watchdog_start: file.watchdog_start,
            postmaster_start: file.postmaster_start,
            // Only names a server's segments can have are ever unlinked, whoever wrote them.
            segments: Segments {
                sysv_id: file.shm_sysv_id,
                posix: file
                    .shm_posix
                    .into_iter()
                    .filter(|n| segments::is_postgres_segment(n))
                    .collect(),
            },
            owner: file.owner_pid.zip(file.owner_start),
        })
    }

    /// The key=value lines of the pgtmp before version 1.
    fn parse_key_value(text: &str) -> Result<State> {
        let get = |key: &str| -> Result<&str> {
            text.lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                .with_context(|| format!("no {key}"))
        };
        let num = |key: &str| -> Result<i64> {
            get(key)?
                .parse::<i64>()
                .with_context(|| format!("{key} is not a number"))
        };
        Ok(State {
            watchdog_pid: Pid::from_raw(
                i32::try_from(num("watchdog_pid")?).context("watchdog_pid out of range")?,
            ),
            postmaster_pid: Pid::from_raw(
                i32::try_from(num("postmaster_pid")?).context("postmaster_pid out of range")?,
            ),
            port: u16::try_from(num("port")?).context("port out of range")?,
            tcp: num("tcp")? != 0,
            keep: num("keep")? != 0,
            owner_uid: u32::try_from(num("owner_uid")?).context("owner_uid out of range")?,
            user: get("user")?.to_string(),
            timeout: get("timeout")?
                .parse()
                .context("timeout is not a number of seconds")?,
            watchdog_start: get("watchdog_start").ok().and_then(|t| t.parse().ok()),
            postmaster_start: get("postmaster_start").ok().and_then(|t| t.parse().ok()),
            segments: segments::from_fields(
                get("shm_sysv_id").unwrap_or(""),
                get("shm_posix").unwrap_or(""),
            ),
            owner: None,
        })
    }
}

/// "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" -> 15; "9.6.24" -> 9.
pub fn parse_major(version_output: &str) -> Option<u32> {
    let number = version_output
        .split_whitespace()
        .find(|word| word.starts_with(|c: char| c.is_ascii_digit()))?;
    number.split(['.', 'b', 'r', 'd']).next()?.parse().ok()
}

#[cfg(test)]
impl State {
    /// A state with every field set, for the unit tests of the modules that read it.
    pub fn sample() -> State {
        State {
            watchdog_pid: Pid::from_raw(10),
            postmaster_pid: Pid::from_raw(11),
            port: 5432,
            tcp: true,
            keep: false,
            owner_uid: 0,
            user: "root".into(),
            timeout: 60,
            watchdog_start: Some(123),
            postmaster_start: None,
            segments: Segments {
                sysv_id: Some(7),
                posix: vec!["PostgreSQL.99".into()],
            },
            owner: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let instance = Instance::new(dir.path());
        assert_eq!(instance.read_state().unwrap(), None);
        instance.write_state(&State::sample()).unwrap();
        assert_eq!(instance.read_state().unwrap(), Some(State::sample()));
        // Every timeout -w accepts, the largest included.
        let longest = State {
            timeout: u64::MAX,
            ..State::sample()
        };
        instance.write_state(&longest).unwrap();
        assert_eq!(instance.read_state().unwrap(), Some(longest));
    }

    #[test]
    fn state_of_the_previous_pgtmp_is_read() {
        // Exactly what the key=value writer of version 0 wrote for sample().
        let old = "watchdog_pid=10\npostmaster_pid=11\nport=5432\ntcp=1\nkeep=0\nowner_uid=0\n\
                   user=root\ntimeout=60\nwatchdog_start=123\npostmaster_start=\n\
                   shm_sysv_id=7\nshm_posix=PostgreSQL.99\n";
        assert_eq!(State::parse(old).unwrap(), State::sample());
        // Before the start times and segments were recorded.
        let older = "watchdog_pid=10\npostmaster_pid=11\nport=5432\ntcp=0\nkeep=1\nowner_uid=0\nuser=x\ntimeout=60\n";
        let state = State::parse(older).unwrap();
        assert!(
            state.keep && state.watchdog_start.is_none() && state.segments == Segments::default()
        );
        assert!(State::parse("watchdog_pid=0\npostmaster_pid=11\nport=1\ntcp=0\nkeep=0\nowner_uid=0\nuser=x\ntimeout=6\n").is_err());
    }

    #[test]
    fn state_records_are_checked() {
        let text = State::sample().render().unwrap();
        assert!(text.contains("\"version\":1"), "{text}");
        let newer = text.replace("\"version\":1", "\"version\":2");
        assert!(format!("{:#}", State::parse(&newer).unwrap_err()).contains("version 2"));
        let foreign = text.replace("PostgreSQL.99", "../../etc/passwd");
        assert!(State::parse(&foreign).unwrap().segments.posix.is_empty());
        let dead = text.replace("\"watchdog_pid\":10", "\"watchdog_pid\":-1");
        assert!(State::parse(&dead).is_err());
        for bad in ["{", "{}", "{\"version\":1}", "garbage"] {
            assert!(State::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn inspect_tells_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            Instance::inspect(&dir.path().join("nope")).unwrap(),
            Found::Missing
        );
        assert_eq!(Instance::inspect(dir.path()).unwrap(), Found::Empty);
        fs::write(dir.path().join("file"), "x").unwrap();
        assert!(matches!(
            Instance::inspect(dir.path()).unwrap(),
            Found::Foreign(_)
        ));
        assert!(matches!(
            Instance::inspect(&dir.path().join("file")).unwrap(),
            Found::Foreign(reason) if reason.contains("not a directory")
        ));
    }
}
