//! Test data for a new cluster: `-f` schema files loaded with psql, `--now` frozen time, and the
//! template database that clones are copied from.
//!
//! Loading runs against a started server (the user's, under its watchdog, or the schema
//! cache's builder): `--now` first, so that `DEFAULT now()` in the files binds to the frozen
//! clock, then each file with `psql -v ON_ERROR_STOP=1`, then `pgtmp_template` is copied from
//! `test` for `pgtmp clone`.

use crate::os::process;
use crate::output::exit;
use crate::server::discover::Installation;
use crate::server::initdb::quote_ident;
use crate::state::instance::{Instance, State};
use anyhow::{Context, Result, bail};
use std::fs;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// The database holding the loaded state; clients never connect to it (connections are not
/// allowed), so copying it always works, even while clients use `test`.
pub const TEMPLATE: &str = "pgtmp_template";
pub use crate::testdata::clock::NOW_SEARCH_PATH;

/// What `--now` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Now {
    /// A timestamp as the user wrote it; the server parses it.
    Fixed(String),
    /// now() follows clock_timestamp().
    Clock,
}

impl Now {
    pub fn parse(text: &str) -> Result<Now> {
        match text.trim() {
            "" => Err(exit::usage(
                "--now needs a timestamp, e.g. --now '2024-01-01 12:00:00+00', or --now clock",
            )),
            "clock" => Ok(Now::Clock),
            text => Ok(Now::Fixed(text.to_string())),
        }
    }
}

/// One `-f` file, read by the invoking account before anything is started.
#[derive(Debug, Clone)]
pub struct SchemaFile {
    /// As given, for messages.
    pub path: PathBuf,
    /// The absolute directory it is in: psql runs there, so `\i` finds files beside it.
    pub dir: PathBuf,
    pub contents: Vec<u8>,
}

/// The test data a start asks for: files to load and the clock.
#[derive(Debug, Clone)]
pub struct TestData {
    pub files: Vec<SchemaFile>,
    pub now: Option<Now>,
    pub psql: PathBuf,
}

/// Reads a `-f` file, which must be a regular file (a symlink to one is fine): a FIFO would
/// block the start forever and a device like /dev/zero never end. It is opened with O_NONBLOCK
/// so that opening a FIFO returns at once (a regular file ignores the flag), checked on the
/// opened descriptor, and read from that same descriptor, so nothing can be swapped in
/// between.
pub fn read_schema_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let unreadable = |err: std::io::Error| {
        exit::usage(format!(
            "-f {}: cannot read it ({err}); give an SQL file you can read",
            path.display()
        ))
    };
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(unreadable)?;
    let kind = file.metadata().map_err(unreadable)?.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "something else"
        };
        return Err(exit::usage(format!(
            "-f {} is {what}, not a regular file; pass an SQL file",
            path.display()
        )));
    }
    let mut contents = Vec::new();
    file.read_to_end(&mut contents).map_err(unreadable)?;
    Ok(contents)
}

/// A running server to load into, reached on its Unix socket.
pub struct Server<'a> {
    pub socket_dir: &'a Path,
    pub port: u16,
    pub user: &'a str,
}

impl<'a> Server<'a> {
    /// The server of the running cluster in `instance`, as its watchdog recorded it in `state`.
    pub fn of(instance: &'a Instance, state: &'a State) -> Server<'a> {
        Server {
            socket_dir: &instance.dir,
            port: state.port,
            user: &state.user,
        }
    }
}

impl TestData {
    /// None without `-f` and `--now`. Files are read here, as the invoking account (root's
    /// server account may not be able to read them); a missing or unreadable one is a usage
    /// error naming it.
    pub fn read(
        schema_files: &[PathBuf],
        now: Option<&str>,
        install: &Installation,
    ) -> Result<Option<TestData>> {
        if schema_files.is_empty() && now.is_none() {
            return Ok(None);
        }
        let now = now.map(Now::parse).transpose()?;
        let mut files = Vec::new();
        for path in schema_files {
            let contents = read_schema_file(path)?;
            // Absolute now: the background cache build runs with `/` as working directory.
            let dir = std::path::absolute(path)
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .unwrap_or_else(|| PathBuf::from("/"));
            files.push(SchemaFile {
                path: path.clone(),
                dir,
                contents,
            });
        }
        Ok(Some(TestData {
            files,
            now,
            psql: find_psql(install)?,
        }))
    }

    /// Loads everything into `test` and makes the template. Errors name the file, the line and
    /// the server's message; an invalid `--now` is a usage error.
    pub fn load(&self, server: &Server) -> Result<()> {
        if let Some(now) = &self.now {
            install_now(server, now)?;
        }
        for file in &self.files {
            self.load_file(server, file)?;
        }
        make_template(server, self.now.is_some())
    }

    fn load_file(&self, server: &Server, file: &SchemaFile) -> Result<()> {
        let _step = crate::output::progress::step(&format!(
            "loading {} ({} KB)",
            file.path.display(),
            file.contents.len().div_ceil(1024)
        ));
        // The contents go through stdin from an unnamed temporary file: psql may run as an
        // account that cannot read the path, and no thread is needed to feed a pipe.
        let mut input = tempfile::tempfile_in(server.socket_dir)
            .context("cannot create a temporary file for psql's input")?;
        input
            .write_all(&file.contents)
            .and_then(|()| input.rewind())
            .context("cannot write psql's input")?;
        // \i with a relative path reads from the file's directory, as it would from a shell
        // started there.
        // This process runs as the server account; as root, that account may be unable to
        // enter the file's directory (/root is 0700): psql then runs in `/`, and a failed
        // include is explained by that.
        let enterable = nix::unistd::access(&file.dir, nix::unistd::AccessFlags::X_OK).is_ok();
        let dir = if enterable { &file.dir } else { Path::new("/") };
        let out = process::pg_command(&self.psql)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(server.socket_dir)
            .args(["-p", &server.port.to_string(), "-U", server.user, "-d"])
            .arg(crate::output::url::DATABASE)
            .args(["-f", "-"])
            .env("PGAPPNAME", "pgtmp load")
            .env("PGOPTIONS", "-c client_min_messages=warning")
            .current_dir(dir)
            .stdin(input)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|err| exit::spawn_error(err, format!("cannot run {}", self.psql.display())))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let unreachable = (!enterable).then_some(file.dir.as_path());
        bail!("{}", describe_failure(&file.path, &stderr, unreachable))
    }

    /// What the schema cache key must cover besides the installation and settings.
    pub fn key_material(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        match &self.now {
            None => bytes.extend_from_slice(b"now:none\0"),
            Some(Now::Clock) => bytes.extend_from_slice(b"now:clock\0"),
            Some(Now::Fixed(text)) => {
                bytes.extend_from_slice(format!("now:fixed:{}\0{text}", text.len()).as_bytes())
            }
        }
        for file in &self.files {
            // Lengths make the boundaries part of the key: "ab"+"c" differs from "a"+"bc".
            bytes.extend_from_slice(format!("\0file:{}\0", file.contents.len()).as_bytes());
            bytes.extend_from_slice(&file.contents);
        }
        bytes
    }
}

/// psql from the server's bin directory, else from PATH.
pub fn find_psql(install: &Installation) -> Result<PathBuf> {
    let beside = install.bindir.join("psql");
    if beside.is_file() {
        return Ok(beside);
    }
    which::which("psql").map_err(|_| {
        anyhow::anyhow!(
            "-f needs psql, which is neither in {} nor on PATH; install the PostgreSQL client \
             (Debian/Ubuntu: apt-get install postgresql-client)",
            install.bindir.display()
        )
    })
}

/// psql's own error line names the file and line: `psql:<stdin>:12: ERROR:  ...` for the
/// file pgtmp fed it (named as the user gave it), `psql:sub/part.sql:3: ...` for one pulled
/// in with `\i`/`\ir` (relative to the directory psql ran in, the given file's). Either way
/// the error reads `FILE:LINE: message`; an include psql could not open gets a hint.
/// `unreachable` is the file's directory when the account running psql cannot enter it.
fn describe_failure(path: &Path, stderr: &str, unreachable: Option<&Path>) -> String {
    let located = stderr.lines().find_map(|line| {
        let rest = line.strip_prefix("psql:")?;
        // FILE:LINE: where FILE may itself hold colons: the first `:DIGITS: ` ends it.
        rest.match_indices(':').find_map(|(at, _)| {
            let after = &rest[at + 1..];
            let (number, message) = after.split_once(": ")?;
            let line = number.parse::<u64>().ok()?;
            Some((&rest[..at], line, message.trim().to_string()))
        })
    });
    let Some((file, line, message)) = located else {
        return format!(
            "{}: psql failed: {}",
            path.display(),
            process::tail(stderr, 3)
        );
    };
    let shown = if file == "<stdin>" {
        path.to_path_buf()
    } else {
        path.parent().unwrap_or(Path::new("")).join(file)
    };
    let mut text = format!("{}:{line}: {message}", shown.display());
    let account = || {
        crate::os::account::Account::current()
            .map_or_else(|_| "the server account".to_string(), |a| a.name)
    };
    let not_found = message.ends_with("No such file or directory");
    if let Some(dir) = unreachable.filter(|_| message.starts_with("error: ") && not_found) {
        let account = account();
        text.push_str(&format!(
            " (psql runs as the server account, {account}, which cannot enter {dir}, the \
             directory of {path}, so it cannot read the files included from there; put the \
             SQL files in a directory {account} can enter and read, or give it access, e.g. \
             chmod o+x on {dir} and each directory above it, or choose another server account \
             with --run-as)",
            dir = dir.display(),
            path = path.display(),
        ));
    } else if message.starts_with("error: ") && not_found {
        text.push_str(&format!(
            " (pgtmp runs psql in the directory of {}, so \\i and \\ir both resolve \
             relative to it, not to where you ran pgtmp; name the file relative to it, \
             preferably with \\ir, or give an absolute path)",
            path.display()
        ));
    } else if message.starts_with("error: ") && message.ends_with("Permission denied") {
        let account = account();
        text.push_str(&format!(
            " (psql reads included files itself, as {account} here; make the file and its \
             directories readable by {account})"
        ));
    }
    text
}

/// A session on the server's socket.
pub fn connect(server: &Server, database: &str) -> Result<postgres::Client> {
    crate::server::client::config(
        server.socket_dir,
        server.port,
        server.user,
        database,
        "pgtmp",
    )
    .connect_timeout(Duration::from_secs(10))
    .connect(postgres::NoTls)
    .with_context(|| {
        format!(
            "cannot connect to database {database} in {}",
            server.socket_dir.display()
        )
    })
}

/// Installs frozen time in the whole cluster (see clock.rs), and puts schema `pgtmp` on
/// `test`'s own search_path too, so that the files loaded next see it at once.
fn install_now(server: &Server, now: &Now) -> Result<()> {
    let value = match now {
        Now::Clock => "clock",
        Now::Fixed(text) => text,
    };
    crate::testdata::clock::install(|database| connect(server, database), value)?;
    connect(server, crate::output::url::DATABASE)?
        .batch_execute(&format!(
            "ALTER DATABASE {} SET search_path = {NOW_SEARCH_PATH}",
            quote_ident(crate::output::url::DATABASE)
        ))
        .context("cannot set the search_path of test for --now")
}

/// Copies `test` into the template clones are made from; connections to it are refused.
fn make_template(server: &Server, now: bool) -> Result<()> {
    let mut client = connect(server, "postgres")?;
    // One statement per message: CREATE DATABASE refuses to run in the implicit transaction
    // of a multi-statement message.
    let mut statements = vec![
        format!(
            "CREATE DATABASE {TEMPLATE} TEMPLATE {} OWNER {}",
            quote_ident(crate::output::url::DATABASE),
            quote_ident(server.user)
        ),
        format!("ALTER DATABASE {TEMPLATE} ALLOW_CONNECTIONS false"),
    ];
    if now {
        // Database settings are not copied with the database: clones take them from here.
        statements.push(format!(
            "ALTER DATABASE {TEMPLATE} SET search_path = {NOW_SEARCH_PATH}"
        ));
    }
    for sql in statements {
        client
            .batch_execute(&sql)
            .context("cannot copy database test into the template for clones")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_values() {
        assert_eq!(Now::parse("clock").unwrap(), Now::Clock);
        assert_eq!(
            Now::parse("2024-01-01").unwrap(),
            Now::Fixed("2024-01-01".into())
        );
        assert_eq!(exit::code_for(&Now::parse(" ").unwrap_err()), exit::USAGE);
    }

    #[test]
    fn failures_name_file_and_line() {
        let stderr = "psql:<stdin>:3: ERROR:  column \"x\" does not exist\nLINE 1: select x;\n";
        assert_eq!(
            describe_failure(Path::new("db/schema.sql"), stderr, None),
            "db/schema.sql:3: ERROR:  column \"x\" does not exist"
        );
        assert!(
            describe_failure(Path::new("a.sql"), "psql: error: connection refused", None)
                .starts_with("a.sql: psql failed: psql: error")
        );
    }

    #[test]
    fn failures_in_included_files_name_that_file_and_line() {
        let stderr = "psql:sub2/bad.sql:3: ERROR:  relation \"nope\" does not exist\n\
                      LINE 1: select * from nope;\n";
        assert_eq!(
            describe_failure(Path::new("db/inc-bad.sql"), stderr, None),
            "db/sub2/bad.sql:3: ERROR:  relation \"nope\" does not exist"
        );
        let missing = "psql:<stdin>:1: error: db/part.sql: No such file or directory\n";
        let text = describe_failure(Path::new("db/main.sql"), missing, None);
        assert!(
            text.starts_with("db/main.sql:1: error: db/part.sql: No such file or directory (")
                && text.contains("\\ir"),
            "{text}"
        );
        // As root, the server account may not even enter the file's directory.
        let text = describe_failure(
            Path::new("/root/db/main.sql"),
            "psql:<stdin>:1: error: part.sql: No such file or directory\n",
            Some(Path::new("/root/db")),
        );
        assert!(
            text.contains("cannot enter /root/db, the directory of /root/db/main.sql")
                && text.contains("--run-as"),
            "{text}"
        );
        let denied = "psql:<stdin>:2: error: part.sql: Permission denied\n";
        let text = describe_failure(Path::new("main.sql"), denied, None);
        assert!(
            text.starts_with("main.sql:2: error: part.sql: Permission denied (psql reads"),
            "{text}"
        );
    }

    #[test]
    fn key_changes_with_contents_and_boundaries() {
        let data = |parts: &[&str], now: Option<Now>| TestData {
            files: parts
                .iter()
                .map(|p| SchemaFile {
                    path: PathBuf::from("x.sql"),
                    dir: PathBuf::from("/"),
                    contents: p.as_bytes().to_vec(),
                })
                .collect(),
            now,
            psql: PathBuf::from("psql"),
        };
        let base = data(&["ab", "c"], None).key_material();
        assert_eq!(base, data(&["ab", "c"], None).key_material());
        assert_ne!(base, data(&["a", "bc"], None).key_material());
        assert_ne!(base, data(&["ab", "d"], None).key_material());
        assert_ne!(base, data(&["ab", "c"], Some(Now::Clock)).key_material());
    }
}
