//! The command line: every subcommand and option, their help text and PGTMP_* fallbacks.

mod request;
pub mod settings;

pub use request::remote_refuses;

use crate::os::account::RunAs;
use crate::output::format::Format;
use crate::server::discover::Majors;
use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

// Idle timeout used when neither -w nor PGTMP_TIMEOUT is given (the watchdog's default).
use crate::lifecycle::watchdog::DEFAULT_TIMEOUT;

const LONG_ABOUT: &str = "\
Start a private, throwaway PostgreSQL cluster and print its connection URL.

pgtmp takes a pre-initialized data directory from a pool, starts postgres on a Unix socket in a \
private 0700 directory (or on a free loopback TCP port with -t), prints one URL on stdout and \
exits at once. A detached watchdog stops the cluster and deletes its directory once no client \
has been connected for the idle timeout (-w).";

/// Sections shown after the options in `--help` and as sections of the man page.
pub const EXTRA_SECTIONS: &[(&str, &str)] = &[
    (
        "Examples",
        "\
url=$(pgtmp) && psql \"$url\" -c 'select 1'
url=$(pgtmp -t -w 300)        # TCP on 127.0.0.1 with a password, e.g. for JDBC
pgtmp -k -d ./pgdata          # a cluster in ./pgdata that survives its stop
pgtmp stop \"$url\"             # stop now instead of at the idle timeout
pgtmp run -- make test        # a cluster just for this command (PGHOST... set)
pgtmp run --pg 15,16 -- make test   # once per PostgreSQL major, a cluster each
eval \"$(pgtmp -F env)\"        # PGHOST, PGPORT, PGUSER, PGDATABASE, DATABASE_URL
pgtmp -t -F jdbc              # jdbc:postgresql://127.0.0.1:PORT/test?user=..&password=..
pgtmp list                    # what runs; pgtmp stop --all stops it all
pgtmp doctor                  # what pgtmp would use, and what to fix
pgtmp selftest                # start, query, stop: a smoke test for CI

url=$(pgtmp -f schema.sql)    # schema loaded (then cached) before the URL is printed
db=$(pgtmp clone \"$url\")      # a fresh copy of the loaded state, for one test
pgtmp --now '2024-01-01 12:00:00+00'   # now() frozen in every database of the cluster
pgtmp now \"$url\" '+31 days'          # ... and moved a month on, for every session",
    ),
    (
        "Environment",
        "\
PGTMP_DIR               where pools and clusters live [default: ${TMPDIR:-/tmp}/pgtmp-<uid>;
                        for root ${TMPDIR:-/tmp}/pgtmp-root/<server account>]
PGTMP_POOL_SIZE         prepared data directories kept per installation, about 26 MB each
                        (and per cached schema, at most 2) [default: 8; unset, a burst that
                        empties the pool doubles it for an hour, up to 32 and half of
                        PGTMP_DISK_MAX]
PGTMP_PRESTART          servers kept running, waiting to be claimed by a start (per mode:
                        socket or TCP); unset: one while starts keep coming (a start within
                        PGTMP_PRESTART_TIMEOUT of the previous one), so that a test suite's
                        starts take a few ms and nothing runs once it ends; 0: none
PGTMP_PRESTART_TIMEOUT  seconds a pre-started server waits for a claim [default: 15 when
                        PGTMP_PRESTART is unset, 600 with a number]
PGTMP_NO_SAVED_TEMPLATE set: keep no copy of each installation's template in the cache
                        directory ($XDG_CACHE_HOME or ~/.cache, then pgtmp/templates) of the
                        account the server runs as, where it survives a wiped /tmp
PGTMP_TRACE             1 = print how long each phase of a start took, on stderr
PGTMP_CACHE_DAYS        days a schema cache entry may go unused before gc removes it
                        (its ready copies go after an hour unused) [default: 7]
PGTMP_DISK_MAX          the most the pools and the schema cache may take together, e.g.
                        500M or 2G; the sweep evicts the least recently used cache entries
                        and ready copies beyond it, never a cluster [default: 2G]
PGTMP_REMOTE            the pgtmp serve that starts, clone, stop and run get databases from
                        (--remote)
PGTMP_TCP, PGTMP_PORT, PGTMP_TIMEOUT, PGTMP_KEEP, PGTMP_OPTIONS, PGTMP_FORMAT,
PGTMP_NOW, PGTMP_NO_CACHE, PGTMP_OWNER_PID, PGTMP_BINDIR, PGTMP_PG, PGTMP_PG_PATH, PGTMP_RUN_AS
                        fallbacks for -t, -p, -w, -k, -o, -F, --now, --no-cache, --owner-pid,
                        --bindir, --pg, --pg-path, --run-as; an option written on the command
                        line wins.
                        PGTMP_TCP, PGTMP_KEEP, PGTMP_NO_CACHE: 1/0, yes/no, on/off, true/false
PG*                     the caller's libpq variables are ignored by pgtmp and its servers,
                        except PGPORT, which names the socket file so the port-less URL works",
    ),
    (
        "Files",
        "\
$PGTMP_DIR/<name>/              one cluster: socket directory (0700), data/, postgres.log
$PGTMP_DIR/pool/<key>/ready.*   prepared data directories waiting to be claimed
$PGTMP_DIR/cache/<key>/         the schema cache: a loaded cluster (entry/) and ready copies

$PGTMP_DIR/.swept               when the last background sweep (pgtmp gc) ran",
    ),
    (
        "Output formats",
        "\
uri    postgresql://USER@/test?host=SOCKETDIR, or with -t postgresql://USER:PASSWORD@127.0.0.1:PORT/test
dsn    host=... port=... user=... [password=...] dbname=test (libpq key=value, quoted)
jdbc   jdbc:postgresql://127.0.0.1:PORT/test?user=..&password=.. (needs -t)
env    export PGHOST=... lines (PGPORT, PGUSER, PGDATABASE, DATABASE_URL; with -t PGPASSWORD,
       JDBC_DATABASE_URL), single-quoted: for eval \"$(pgtmp -F env)\" or a dotenv file
json   one object: url, dsn, jdbc (with -t), host, port, socket_dir, user, password (with -t),
       database, data_dir, server_pid, watchdog_pid, version, bindir, timeout, keep
pgtmp stop, clone and schema take the output of any of these but env as their URL.
Off a terminal, uri, dsn and jdbc (and the URLs of clone and schema) end without a newline, as
pg_tmp's URL does, so a caller that reads stdout whole (Ruby %x(), Python check_output, Java
readAllBytes) gets exactly the URL; on a terminal, and after env and json, a newline.",
    ),
    (
        "Seeing what runs",
        "\
pgtmp list (alias ls) shows this account's clusters in PGTMP_DIR, and those it started elsewhere
with -d: URL, server PID, PostgreSQL VERSION, AGE, IDLE (time since a client was last busy; -
when not known), CONNS (connected clients, the watchdog not counted) and SIZE on disk;
--json prints the same as an array of objects. Looking counts as no client.
pgtmp doctor checks, each with pass, warn or FAIL and the fix: the PostgreSQL installations found
(in the order pgtmp looks) and the one used; the account pgtmp runs as and the one the server runs
as; PGTMP_DIR, the socket path limit and whether the server account can reach and write it; the
pools and their last refill error; PGTMP_* variables with invalid values; psql for the examples.
It exits 1 when pgtmp cannot work, and changes nothing.",
    ),
    (
        "Security",
        "\
pgtmp acts only on what belongs to the account the server runs as, and works from directory
handles: a symlink where it expects its own directory is refused, never followed. PGTMP_DIR must
be that account's with mode 0700 (pgtmp makes it so; another account's is never adopted), and
an automatically placed one needs a TMPDIR that is private or has the sticky bit. State files are
read only when they are small regular files of their directory's owner. A pid is signalled only
when proven to be the watchdog or server of that very directory (start time, account, and the
directory it holds or runs in), through a pidfd. See SECURITY.md for the threat model.",
    ),
    (
        "Exit status",
        "0 success, 1 failure, 2 invalid command line. pgtmp run exits with CMD's status \
(128+N if CMD died of signal N), 127 if CMD is not found, 126 if it cannot be executed.",
    ),
];

/// The man page's SEE ALSO: pages named with their section, then a sentence.
pub const SEE_ALSO: (&[(&str, u8)], &str) = (
    &[
        ("psql", 1),
        ("postgres", 1),
        ("initdb", 1),
        ("pg_ctl", 1),
        ("pg_tmp", 1),
        ("pg_virtualenv", 1),
    ],
    "GUIDE.md (the full reference) and SECURITY.md (the threat model) in pgtmp's source.",
);

fn after_help() -> String {
    EXTRA_SECTIONS
        .iter()
        .map(|(title, body)| {
            let body: Vec<String> = body.lines().map(|line| format!("  {line}")).collect();
            format!("{title}:\n{}", body.join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[derive(Parser, Debug)]
#[command(
    name = "pgtmp",
    version,
    about = "Private, throwaway PostgreSQL clusters in milliseconds",
    long_about = LONG_ABOUT,
    after_help = after_help(),
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Options for the default command, `start`, written before it as pg_tmp accepts them.
    #[command(flatten)]
    pub start: StartArgs,

    #[command(flatten)]
    pub global: GlobalArgs,
}

/// A subcommand's `--help` ends with its examples, indented like the main page's sections.
fn examples(lines: &str) -> String {
    let body: Vec<String> = lines.lines().map(|line| format!("  {line}")).collect();
    format!("Examples:\n{}", body.join("\n"))
}

const START_EXAMPLES: &str = "\
url=$(pgtmp start -w 300)          # the same as plain `pgtmp`: a URL on stdout
pgtmp start -t -F jdbc             # jdbc:postgresql://127.0.0.1:PORT/test?user=..&password=..
pgtmp start -k -d ./pgdata         # kept in ./pgdata; the same command starts it again
url=$(pgtmp start -f schema.sql)   # schema loaded (then cached) before the URL is printed";

const STOP_EXAMPLES: &str = "\
pgtmp stop \"$url\"                  # stop now and remove the cluster
pgtmp stop -k -d ./pgdata          # stop, keep ./pgdata for a later `pgtmp -d ./pgdata`
pgtmp -k -d ./pgdata stop          # the same, written as pg_tmp takes it
pgtmp stop -w 5 \"$url\"             # wait until no client is connected (checked every 5 s)
pgtmp stop --all                   # every cluster of this account";

const INITDB_EXAMPLES: &str = "\
pgtmp initdb                       # one more ready pool entry: the next start takes it
pgtmp initdb -d ./pgdata           # prepare ./pgdata; `pgtmp -k -d ./pgdata` starts it";

const SELFTEST_EXAMPLES: &str = "\
pgtmp selftest || exit 1           # first thing in a CI job: start, query, stop
pgtmp --bindir /usr/lib/postgresql/16/bin selftest   # check another installation";

const RUN_EXAMPLES: &str = "\
pgtmp run -- make test             # PGHOST, PGPORT, PGUSER, PGDATABASE, DATABASE_URL set
pgtmp run -t -- mvn test           # with -t also PGPASSWORD and JDBC_DATABASE_URL
pgtmp run -f schema.sql -- pytest  # schema loaded before CMD starts
pgtmp run -- psql                  # a scratch database for one session
pgtmp run --pg 15,16,17 -- make test   # once per PostgreSQL major, a cluster each";

const LIST_EXAMPLES: &str = "\
pgtmp list                         # URL, PID, VERSION, AGE, IDLE, CONNS, SIZE
pgtmp list --all                   # and the kept clusters that have stopped
pgtmp ls --json | jq -r '.[].url'  # the same as JSON";

const KEEP_EXAMPLES: &str = "\
pgtmp keep \"$db\"                   # a test failed: keep its cluster when it stops
pgtmp -d DIR                       # later: the kept cluster again, with its data
pgtmp discard DIR                  # done looking: stop it if it runs, and remove it";

const NOW_EXAMPLES: &str = "\
url=$(pgtmp --now '2024-01-01 12:00:00+00')
pgtmp now \"$url\" '+31 days'          # a month later, for every session at once
pgtmp now \"$url\" '2030-06-01 00:00:00+00'
pgtmp now \"$url\" clock               # follow the real clock again
pgtmp now \"$url\"                     # print the cluster's now()
psql \"$url\" -c \"select pgtmp.set_now('-1 hour')\"   # the same from SQL";

const DISCARD_EXAMPLES: &str = "\
pgtmp discard \"$url\"               # stop the cluster if it runs, and remove it, kept or not
pgtmp list --all --json | jq -r '.[] | select(.running | not) | .dir' |
  xargs -r -n1 pgtmp discard       # every kept cluster that has stopped";

const DOCTOR_EXAMPLES: &str = "\
pgtmp doctor                       # pass/warn/FAIL per check, each with its fix
pgtmp --run-as app doctor          # as root: the checks for server account app";

const CLONE_EXAMPLES: &str = "\
url=$(pgtmp -f schema.sql)         # loaded once
db=$(pgtmp clone \"$url\")           # a fresh database holding a copy of it, for one test
pgtmp clone -F jdbc \"$tcp_url\"     # the clone's URL as JDBC (the cluster needs -t)
pgtmp clone --drop \"$db\"           # drop it now instead of with the cluster";

const SCHEMA_EXAMPLES: &str = "\
s=$(pgtmp schema \"$url\")           # URL whose search_path starts with a fresh schema
pgtmp schema -F jdbc \"$tcp_url\"    # the same as JDBC, with currentSchema";

const SERVE_EXAMPLES: &str = "\
pgtmp serve                                # http://127.0.0.1:5000/ on its own cluster
url=$(curl -fsS http://127.0.0.1:5000/new) # a fresh role and database (faitout's API)
pgtmp serve --listen 0.0.0.0:5000 --token \"$TOKEN\" \\
    --server postgresql://fleet:PASSWORD@db.internal/fleet   # for a fleet, on a shared server";

const GC_EXAMPLES: &str = "\
pgtmp gc -n                        # what would be removed
pgtmp gc                           # remove it; one line per thing removed";

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start a throwaway cluster and print its URL (the default command)
    #[command(after_help = examples(START_EXAMPLES))]
    Start(StartArgs),
    /// Stop a cluster now and remove its directory (kept with -k, or if it was started with -k)
    ///
    /// Only a cluster of the invoking account's, in PGTMP_DIR or started there with -d, is
    /// stopped. Without -w it stops at once and its clients are disconnected. -k, -d and -w
    /// may also be written before `stop`, as pg_tmp takes them (`pgtmp -k -w 60 -d DIR
    /// stop`); no other start option applies to it.
    #[command(after_help = examples(STOP_EXAMPLES))]
    Stop(StopArgs),
    /// Prepare one more ready data directory for the next start and print its path; with -d,
    /// a cluster directory DIR for a later `pgtmp -d DIR`
    ///
    /// Without -d the directory is an entry of the pool (PGTMP_DIR/pool/): the next `pgtmp`
    /// takes exactly it, and gc removes it with its pool. The pool holds at most PGTMP_POOL_SIZE
    /// entries (at least one): when it is full, no new one is made and the path printed is that
    /// of an entry already there, which the next start then takes. This is what pg_tmp's
    /// `initdb` does: a start after it finds a directory ready.
    #[command(after_help = examples(INITDB_EXAMPLES))]
    Initdb(InitdbArgs),
    /// Start a cluster, query it, stop it, and say what was checked: a smoke test of the
    /// installation (pg_tmp's `selftest`); exits 1 naming the step that failed
    ///
    /// The cluster is started with the default options (Unix socket only, from the pool of
    /// PGTMP_DIR; the variables of start options such as PGTMP_TCP or PGTMP_OPTIONS do not
    /// apply), queried through the server's socket and, when the installation has psql,
    /// through the printed URL, then stopped; the check that its server and directory are gone
    /// comes last.
    #[command(after_help = examples(SELFTEST_EXAMPLES))]
    Selftest,
    /// Hand out throwaway databases over HTTP, with faitout's and IntegreSQL's APIs, on its own
    /// cluster or an existing PostgreSQL server
    ///
    /// Runs in the foreground until SIGINT or SIGTERM; prints its base URL on stdout once it
    /// answers, and one line per request on stderr. `GET /new` hands out a fresh database with
    /// its own role and password (faitout's API: a URL, or JSON with `Accept:
    /// application/json`), `GET /clean/DB` drops it; `/api/v1/...` is IntegreSQL's API
    /// (templates per hash, test databases copied from them in advance); `GET /` is a page on
    /// how to use it with live figures, `GET /stats` the same as JSON. Every handed-out database
    /// is dropped with its role after --ttl seconds.
    ///
    /// Without --server, serve runs its own cluster on 127.0.0.1, stopped with everything in it
    /// when serve stops. With --server, it works on that server with an admin role that has
    /// CREATEDB and CREATEROLE, and keeps its records there (schema pgtmp of the URL's
    /// database): a restarted serve forgets nothing, several may share the server.
    #[command(after_help = examples(SERVE_EXAMPLES))]
    Serve(ServeArgs),
    /// Start a cluster, run CMD with PGHOST, PGPORT, PGUSER, PGDATABASE and DATABASE_URL set,
    /// then stop the cluster and exit with CMD's status
    ///
    /// CMD gets DATABASE_URL, PGHOST, PGPORT, PGUSER, PGDATABASE and, with -t, PGPASSWORD and
    /// JDBC_DATABASE_URL, so a bare `psql` connects; libpq variables that would point elsewhere (PGHOSTADDR,
    /// PGSERVICE...) are removed, and so is a PGSSLMODE other than disable, allow, prefer or
    /// require (a TCP cluster serves TLS). CMD runs as the invoking account, root included;
    /// only the server runs as an unprivileged account. The cluster is stopped and removed when
    /// CMD exits, whatever the reason: SIGINT, SIGTERM and SIGHUP sent to pgtmp are passed on
    /// to CMD (a terminal's Ctrl-C reaches it directly) and pgtmp waits for it; should pgtmp
    /// itself be killed, the cluster stops at once anyway. The idle timeout applies only after
    /// CMD, with -k, which keeps the cluster running and says on stderr where it is.
    ///
    /// With --pg 15,16,17 (or --pg all) CMD runs once per PostgreSQL major, each against a
    /// cluster of its own; a line on stderr per major says `ok` or `failed (exit N)`, and the
    /// status is that of the first that failed.
    #[command(after_help = examples(RUN_EXAMPLES))]
    Run(RunArgs),
    /// List this account's running clusters; with --all also the kept ones that have stopped
    #[command(visible_alias = "ls", after_help = examples(LIST_EXAMPLES))]
    List(ListArgs),
    /// Keep the cluster of URL when it stops, and say how to start it again
    ///
    /// URL is any URL pgtmp printed: a cluster's, a clone's or a schema's. From now on, when
    /// the cluster stops (at its idle timeout, when its --owner-pid process has exited, or by
    /// `pgtmp stop`), its directory stays, as with a start's -k. Prints on stderr the command
    /// that starts it again (`pgtmp -d DIR`) and the URL of URL's database once it runs again.
    /// `pgtmp list --all` shows it after it has stopped; `pgtmp discard` removes it.
    #[command(after_help = examples(KEEP_EXAMPLES))]
    Keep(KeepArgs),
    /// Move the frozen time of the cluster of URL (started with --now), for every session
    ///
    /// VALUE is a timestamp (read in the server's time zone unless it names one), `clock`
    /// (follow the real clock), or `+INTERVAL` / `-INTERVAL` (move the frozen instant, or the
    /// offset from the clock, by that much, e.g. '+31 days'). Every database and every session
    /// of the cluster sees the change from its next statement. Prints the new now(); without
    /// VALUE only prints it. From SQL: `select pgtmp.set_now('+31 days')`. A value the server
    /// cannot read is an error and changes nothing.
    #[command(after_help = examples(NOW_EXAMPLES))]
    Now(NowArgs),
    /// Stop a cluster if it runs and remove its directory, kept or not
    ///
    /// Takes the cluster's directory (as `pgtmp list --all` shows it) or a URL pgtmp printed.
    /// Only a cluster directory pgtmp made and knows as yours (in PGTMP_DIR, or started with -d
    /// and registered there) is removed; anything else is refused.
    #[command(after_help = examples(DISCARD_EXAMPLES))]
    Discard(DiscardArgs),
    /// Check the installation, accounts, state directory and pool; say how to fix what is wrong
    #[command(after_help = examples(DOCTOR_EXAMPLES))]
    Doctor,
    /// Print the URL of a fresh database in the cluster of URL: a copy of its loaded state
    #[command(after_help = examples(CLONE_EXAMPLES))]
    Clone(CloneArgs),
    /// Create a fresh schema in URL's database and print a URL that puts it first on search_path
    ///
    /// The `uri` form names the schema in libpq's `options` (`-c search_path=...`), the `jdbc`
    /// form in `currentSchema`.
    #[command(after_help = examples(SCHEMA_EXAMPLES))]
    Schema(SchemaArgs),
    /// Remove what killed or crashed runs left: servers without a watchdog, their directories,
    /// incomplete pool entries; and schema cache entries unused for PGTMP_CACHE_DAYS days
    /// (default 7), their ready copies after an hour unused. Prints one line per thing removed
    #[command(after_help = examples(GC_EXAMPLES))]
    Gc(GcArgs),
}

#[derive(Args, Debug, Clone, Default)]
pub struct GlobalArgs {
    /// Directory holding initdb and postgres; skips the search for an installation
    #[arg(long, global = true, env = "PGTMP_BINDIR", value_name = "DIR")]
    pub bindir: Option<PathBuf>,

    /// PostgreSQL major version to use, among the installations found (`pgtmp doctor` lists
    /// them); `pgtmp run` also takes several, e.g. 15,16,17, or `all`, and runs CMD once per
    /// major, each against a cluster of its own
    #[arg(long = "pg", global = true, env = "PGTMP_PG", value_name = "MAJOR",
          value_parser = parse_majors)]
    pub pg: Option<Majors>,

    /// More places to look for installations for --pg, separated by ':': bin directories, or
    /// directories searched (4 levels deep) for bin/ with initdb and postgres, e.g. where
    /// relocatable server builds are unpacked
    #[arg(
        long = "pg-path",
        global = true,
        env = "PGTMP_PG_PATH",
        value_name = "DIRS"
    )]
    pub pg_path: Option<String>,

    /// Account the server runs as when pgtmp is invoked by root [default: postgres, else nobody,
    /// or the owner of an existing PGTMP_DIR]; root keeps one state directory per account, and
    /// without --run-as list, stop, gc, clone and schema cover them all. PGTMP_RUN_AS is ignored
    /// when pgtmp is not invoked by root
    #[arg(long, global = true, env = "PGTMP_RUN_AS", value_name = "USER")]
    pub run_as: Option<String>,

    /// Get databases from the `pgtmp serve` at this URL instead of a local cluster
    /// (http://HOST:PORT/, with /t/TOKEN/ when it has a token): `pgtmp` (a blank database, or
    /// with -f a copy of a template of the files, loaded once for every client), `pgtmp clone
    /// URL`, `pgtmp stop URL` and `pgtmp run -- CMD`; no PostgreSQL programs are needed
    #[arg(long, global = true, env = "PGTMP_REMOTE", value_name = "URL")]
    pub remote: Option<String>,

    /// Set when `run_as` came from PGTMP_RUN_AS rather than the command line.
    #[arg(skip)]
    pub run_as_from_env: bool,
}

impl GlobalArgs {
    /// What --run-as (or PGTMP_RUN_AS) asks for.
    pub fn run_as(&self) -> RunAs<'_> {
        RunAs {
            name: self.run_as.as_deref(),
            from_env: self.run_as_from_env,
        }
    }
}

#[derive(Args, Debug, Clone, Default)]
pub struct StartArgs {
    /// Listen on a free TCP port on 127.0.0.1 (password required, TLS offered) instead of only a Unix socket
    #[arg(short = 't', long = "tcp", env = "PGTMP_TCP", value_parser = parse_switch)]
    pub tcp: bool,

    /// Listen on this TCP port on 127.0.0.1 (implies -t)
    #[arg(short = 'p', long = "port", env = "PGTMP_PORT", value_name = "PORT",
          allow_hyphen_values = true, value_parser = parse_port)]
    pub port: Option<u16>,

    /// Stop the cluster after this many seconds without a connected client; 0 = never [default: 60]
    #[arg(short = 'w', long = "timeout", env = "PGTMP_TIMEOUT", value_name = "SECONDS",
          allow_hyphen_values = true, value_parser = parse_timeout)]
    pub timeout: Option<u64>,

    /// Keep the cluster's directory when it stops, so `pgtmp start -d DIR` can start it again
    /// (and keeps it again, with or without -k)
    #[arg(short = 'k', long = "keep", env = "PGTMP_KEEP", value_parser = parse_switch)]
    pub keep: bool,

    /// Extra options for postgres, e.g. -o '-c log_statement=all'; applied last, so they win.
    /// Where the server listens and keeps its files (port, listen_addresses,
    /// unix_socket_directories, data_directory, *_file; -p -h -i -k -D) is refused: use -p, -t, -d
    #[arg(
        short = 'o',
        long = "options",
        env = "PGTMP_OPTIONS",
        value_name = "OPTIONS",
        allow_hyphen_values = true
    )]
    pub options: Vec<String>,

    /// Use this directory instead of one from the pool; it is initialized if empty or missing,
    /// and deleted when the cluster stops unless it was started with -k (now or before)
    #[arg(short = 'd', long = "dir", value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// How to print the cluster: `uri` (the default), `dsn` (libpq key=value), `jdbc` (needs
    /// -t), `env` (`export` lines for eval or a dotenv file) or `json` (every detail)
    #[arg(
        short = 'F',
        long = "format",
        env = "PGTMP_FORMAT",
        value_name = "FORMAT",
        value_enum,
        hide_possible_values = true
    )]
    pub format: Option<Format>,

    /// Whether -F was written on the command line rather than taken from PGTMP_FORMAT (known
    /// for `pgtmp run` and `pgtmp start`, whose options are merged).
    #[arg(skip)]
    pub format_written: bool,

    /// Load this SQL file into `test` with psql before printing the URL; repeat for more files,
    /// loaded in order
    #[arg(short = 'f', long = "schema-file", value_name = "FILE")]
    pub schema_files: Vec<PathBuf>,

    /// Make now() return this timestamp in every database and session of the cluster, follow
    /// the clock with `--now clock`, or the clock shifted with e.g. `--now '-1 day'`; `pgtmp now
    /// URL VALUE` moves it later
    #[arg(
        long = "now",
        env = "PGTMP_NOW",
        value_name = "TIMESTAMP",
        allow_hyphen_values = true
    )]
    pub now: Option<String>,

    /// Load the -f files even if the schema cache holds their result, and do not cache it
    #[arg(long = "no-cache", env = "PGTMP_NO_CACHE", value_parser = parse_switch)]
    pub no_cache: bool,

    /// Tie the cluster to process PID (e.g. $$, the calling shell, or the test runner's own
    /// pid): while it runs the cluster never idles out; once it has exited, however it ended,
    /// the cluster stops as soon as no client is connected (or, with -w N, after N seconds
    /// without one). PID must be a running process of yours
    #[arg(long = "owner-pid", env = "PGTMP_OWNER_PID", value_name = "PID",
          allow_hyphen_values = true, value_parser = parse_pid)]
    pub owner_pid: Option<i32>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
    #[command(flatten)]
    pub start: StartArgs,

    /// The command to run, and its arguments (write `--` before it if it starts with `-`)
    #[arg(value_name = "CMD", required = true, trailing_var_arg = true, num_args = 1..)]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct ListArgs {
    /// Print a JSON array instead of a table
    #[arg(long = "json")]
    pub json: bool,

    /// Also list the kept clusters that have stopped: directory, version, when last used,
    /// size, and the command that starts one again
    #[arg(short = 'a', long = "all")]
    pub all: bool,
}

#[derive(Args, Debug, Clone, Default)]
pub struct KeepArgs {
    /// A URL pgtmp printed (of the cluster, a clone or a schema; uri, jdbc, dsn or json)
    #[arg(value_name = "URL")]
    pub url: String,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address and port to answer HTTP on; other than loopback only with --token (and
    /// --server); port 0 picks a free one
    #[arg(
        long,
        env = "PGTMP_SERVE_LISTEN",
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:5000"
    )]
    pub listen: std::net::SocketAddr,

    /// Work on this existing PostgreSQL server, as an admin role with CREATEDB and CREATEROLE
    /// (postgresql://ADMIN:PASSWORD@HOST:PORT/DATABASE), instead of serve's own cluster
    #[arg(long, env = "PGTMP_SERVE_SERVER", value_name = "URL")]
    pub server: Option<String>,

    /// Seconds a handed-out database lives before it is dropped with its role
    #[arg(long, env = "PGTMP_SERVE_TTL", value_name = "SECONDS", default_value = "1800",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub ttl: u64,

    /// Databases kept ready for /new and per finalized template
    #[arg(long, env = "PGTMP_SERVE_POOL", value_name = "N", default_value = "4",
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub pool: u64,

    /// Databases from /new one client (IP address) may have out at once
    #[arg(long = "max-per-client", env = "PGTMP_SERVE_MAX_PER_CLIENT", value_name = "N",
          default_value = "20", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_per_client: u64,

    /// Require this token of every request (Authorization: Bearer TOKEN, or the path prefix
    /// /t/TOKEN/); needed to listen beyond loopback
    #[arg(
        long,
        env = "PGTMP_SERVE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct NowArgs {
    /// A URL pgtmp printed for the cluster (or a clone or schema of it)
    #[arg(value_name = "URL")]
    pub url: String,

    /// A timestamp, `clock`, `+INTERVAL` or `-INTERVAL`; without it, print the cluster's now()
    #[arg(value_name = "VALUE", allow_hyphen_values = true)]
    pub value: Option<String>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct DiscardArgs {
    /// The cluster's directory, or a URL pgtmp printed for it
    #[arg(value_name = "DIR|URL")]
    pub cluster: String,
}

#[derive(Args, Debug, Clone, Default)]
pub struct CloneArgs {
    /// A URL of the cluster as pgtmp printed it (uri, jdbc, dsn or json), or with --drop the
    /// clone's URL
    #[arg(value_name = "URL")]
    pub url: String,

    /// Drop the clone named by URL now instead of at the end of the cluster
    #[arg(long = "drop")]
    pub drop: bool,

    #[command(flatten)]
    pub format: UrlFormat,
}

#[derive(Args, Debug, Clone, Default)]
pub struct SchemaArgs {
    /// A URL pgtmp printed (of `test` or of a clone; uri, jdbc, dsn or json): the schema is made
    /// in its database
    #[arg(value_name = "URL")]
    pub url: String,

    #[command(flatten)]
    pub format: UrlFormat,
}

/// How `clone` and `schema` print the URL they make.
#[derive(Args, Debug, Clone, Default)]
pub struct UrlFormat {
    /// Print the URL as `uri` or, for a TCP cluster, as `jdbc` [default: uri]
    #[arg(
        short = 'F',
        long = "format",
        value_name = "FORMAT",
        // Only these two: an invalid value's error then lists just them.
        value_parser = clap::builder::PossibleValuesParser::new(["uri", "jdbc"])
            .map(|name| if name == "jdbc" { Format::Jdbc } else { Format::Uri }),
        hide_possible_values = true
    )]
    pub format: Option<Format>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct StopArgs {
    /// The URL pgtmp printed for the cluster
    #[arg(value_name = "URL", conflicts_with = "dir")]
    pub url: Option<String>,

    /// The cluster's directory instead of its URL
    #[arg(short = 'd', long = "dir", value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Stop every running cluster of this account, all at once
    #[arg(long = "all", conflicts_with_all = ["url", "dir"])]
    pub all: bool,

    /// Keep the cluster's directory and data, so `pgtmp -d DIR` can start it again (and keeps
    /// it again, with or without -k)
    #[arg(short = 'k', long = "keep")]
    pub keep: bool,

    /// Wait until no client is connected, then stop: check every SECONDS seconds, the first
    /// time SECONDS after the call, as pg_tmp does (0: check continuously). The cluster may
    /// also reach its idle timeout meanwhile, which is not an error
    #[arg(short = 'w', long = "wait", value_name = "SECONDS", allow_hyphen_values = true,
          value_parser = parse_wait)]
    pub wait: Option<u64>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct InitdbArgs {
    /// Prepare this directory (empty or missing) instead of a new one under PGTMP_DIR
    #[arg(short = 'd', long = "dir", value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct GcArgs {
    /// Only print what would be removed
    #[arg(short = 'n', long = "dry-run")]
    pub dry_run: bool,

    /// Also remove everything prepared that no cluster uses: every pool (its ready entries and
    /// template), every schema cache entry with its ready copies, and the templates saved in
    /// the cache directory; the next start prepares anew. Running and kept clusters stay
    #[arg(long = "all")]
    pub all: bool,
}

/// Which start options were written on the command line rather than taken from PGTMP_*.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    pub tcp: bool,
    pub port: bool,
    pub timeout: bool,
    pub keep: bool,
    pub options: bool,
    pub dir: bool,
    pub format: bool,
    pub schema_files: bool,
    pub now: bool,
    pub no_cache: bool,
    pub owner_pid: bool,
}

impl Written {
    fn of(matches: &ArgMatches) -> Written {
        let written = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
        Written {
            tcp: written("tcp"),
            port: written("port"),
            timeout: written("timeout"),
            keep: written("keep"),
            options: written("options"),
            dir: written("dir"),
            format: written("format"),
            schema_files: written("schema_files"),
            now: written("now"),
            no_cache: written("no_cache"),
            owner_pid: written("owner_pid"),
        }
    }
}

/// One of two copies of an option: the later one, unless only the earlier was written on the
/// command line (the later then holds the PGTMP_* value, which a written option beats).
fn pick<T>(earlier: T, earlier_written: bool, later: T, later_written: bool) -> T {
    if earlier_written && !later_written {
        earlier
    } else {
        later
    }
}

impl StartArgs {
    /// Combines options given before `start` (pg_tmp style) with those after it. Both copies
    /// fall back to the same PGTMP_* variables; anything written on the command line beats
    /// them, and between two written values the later wins (`-o` values add up).
    pub fn merged_with(
        self,
        written: Written,
        later: StartArgs,
        later_written: Written,
    ) -> StartArgs {
        let options = match (written.options, later_written.options) {
            (true, true) => [self.options, later.options].concat(),
            (a, b) => pick(self.options, a, later.options, b),
        };
        StartArgs {
            // A flag written anywhere is on; otherwise both copies hold the PGTMP_* value.
            tcp: written.tcp || later.tcp,
            port: pick(self.port, written.port, later.port, later_written.port),
            timeout: pick(
                self.timeout,
                written.timeout,
                later.timeout,
                later_written.timeout,
            ),
            keep: written.keep || later.keep,
            options,
            dir: pick(self.dir, written.dir, later.dir, later_written.dir),
            format: pick(
                self.format,
                written.format,
                later.format,
                later_written.format,
            ),
            // Files written before and after `start` are all loaded, in the order written.
            format_written: written.format || later_written.format,
            schema_files: [self.schema_files, later.schema_files].concat(),
            now: pick(self.now, written.now, later.now, later_written.now),
            no_cache: written.no_cache || later.no_cache,
            owner_pid: pick(
                self.owner_pid,
                written.owner_pid,
                later.owner_pid,
                later_written.owner_pid,
            ),
        }
    }

    /// TCP is on with -t, or implied by -p.
    pub fn wants_tcp(&self) -> bool {
        self.tcp || self.port.is_some()
    }

    /// -w, else 60 s; with --owner-pid the timeout counts from the owner's exit, and without
    /// -w the cluster then stops as soon as no client is connected.
    pub fn idle_timeout(&self) -> u64 {
        match (self.timeout, self.owner_pid) {
            (Some(timeout), _) => timeout,
            (None, Some(_)) => 0,
            (None, None) => DEFAULT_TIMEOUT,
        }
    }
}

/// An on/off value, as the PGTMP_* variables of flags take it (an empty one is off).
fn parse_switch(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "on" | "true" | "t" => Ok(true),
        "0" | "no" | "n" | "off" | "false" | "f" | "" => Ok(false),
        _ => Err("expected 1/0, yes/no, on/off or true/false".into()),
    }
}

/// `16`, `15,16,17` or `all`.
fn parse_majors(text: &str) -> Result<Majors, String> {
    if text.trim().eq_ignore_ascii_case("all") {
        return Ok(Majors::All);
    }
    let majors: Option<Vec<u32>> = text
        .split(',')
        .map(|m| m.trim().parse::<u32>().ok().filter(|&m| m > 0))
        .collect();
    match majors {
        Some(list) if !list.is_empty() => Ok(Majors::List(list)),
        _ => Err(
            "expected a PostgreSQL major version (e.g. 16), several separated by commas (15,16,17), or all"
                .into(),
        ),
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<i64>() {
        Ok(port) if (1..=65535).contains(&port) => Ok(port as u16),
        Ok(_) => Err("a TCP port must be between 1 and 65535; omit -p to get a free one".into()),
        Err(_) => Err("expected a TCP port number (1-65535), e.g. -p 5433".into()),
    }
}

/// The seconds between two checks of `stop -w`.
fn parse_wait(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(seconds) => Ok(seconds),
        Err(_) => Err(
            "expected the seconds between two checks for clients, e.g. -w 5 (0 = check continuously)"
                .into(),
        ),
    }
}

fn parse_timeout(text: &str) -> Result<u64, String> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(
            "expected the idle timeout in whole seconds, e.g. -w 60 (0 = never stop)".into(),
        );
    }
    if text.starts_with('-') {
        return Err("the idle timeout cannot be negative; use 0 to never stop".into());
    }
    text.parse::<u64>().map_err(|_| {
        format!(
            "the idle timeout must be between 0 and {} seconds; use 0 to never stop",
            u64::MAX
        )
    })
}

/// A process id: a positive number.
fn parse_pid(text: &str) -> Result<i32, String> {
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err("expected the pid of a running process, e.g. --owner-pid $$".into()),
    }
}

/// Parses the process arguments; on failure prints help, the version, or a one-line error
/// and returns the exit code to use.
pub fn parse() -> Result<Cli, ExitCode> {
    parse_from(std::env::args_os())
}

pub fn parse_from<I, T>(args: I) -> Result<Cli, ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    loop {
        let parsed = Cli::command()
            .try_get_matches_from(&args)
            .and_then(|matches| Ok((Cli::from_arg_matches(&matches)?, matches)));
        let err = match parsed {
            Ok((cli, matches)) => {
                return resolve(cli, &matches).map_err(|message| {
                    eprintln!("pgtmp: error: {message}; see 'pgtmp stop --help'");
                    ExitCode::from(crate::output::exit::USAGE)
                });
            }
            Err(err) => err,
        };
        if let ErrorKind::DisplayHelp | ErrorKind::DisplayVersion = err.kind() {
            // Printing help to a closed pipe is not worth an error of its own.
            let _ = err.print();
            return Err(ExitCode::SUCCESS);
        }
        let message = one_line(&err);
        let Some(variable) = from_variable(&err) else {
            eprintln!("pgtmp: error: {message}");
            return Err(ExitCode::from(crate::output::exit::USAGE));
        };
        let message = format!(
            "{variable}: {}; unset {variable} or give it a valid value (see 'pgtmp --help')",
            message.trim_end_matches("; see 'pgtmp --help'")
        );
        if starts_a_cluster(&args) {
            eprintln!("pgtmp: error: {message}");
            return Err(ExitCode::from(crate::output::exit::USAGE));
        }
        // A command that starts nothing does not need it: set it aside (doctor reports it).
        if let Ok(mut set_aside) = SET_ASIDE.lock() {
            set_aside.push(message);
        }
        // SAFETY: nothing has started a thread yet; the command line is parsed first thing.
        unsafe { std::env::remove_var(&variable) };
    }
}

/// Messages about PGTMP_* variables of start options whose values are invalid, set aside by a
/// command that starts no cluster (so that `pgtmp doctor` or `pgtmp list` still work).
static SET_ASIDE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// What [`parse_from`] set aside: one message per variable, naming it and the fix.
pub fn set_aside_variables() -> Vec<String> {
    SET_ASIDE.lock().map(|v| v.clone()).unwrap_or_default()
}

/// The PGTMP_* variable a rejected value came from, when it came from one rather than from the
/// command line (a flag takes no value on the command line; an option's value is compared).
fn from_variable(err: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = arg.split(['=', ' ']).next()?.strip_prefix("--")?;
    let command = Cli::command();
    let env = command
        .get_arguments()
        .chain(command.get_subcommands().flat_map(|c| c.get_arguments()))
        .find(|a| a.get_long() == Some(long))?
        .get_env()?
        .to_str()?
        .to_string();
    let set = std::env::var(&env).ok()?;
    let value = match err.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) => value.as_str(),
        _ => "",
    };
    (set == value).then_some(env)
}

/// True unless the first subcommand named is one that starts no cluster.
fn starts_a_cluster(args: &[std::ffi::OsString]) -> bool {
    let command = Cli::command();
    let named = args.iter().skip(1).find_map(|arg| {
        let arg = arg.to_str()?;
        command
            .get_subcommands()
            .find(|c| c.get_name() == arg || c.get_all_aliases().any(|a| a == arg))
    });
    named.is_none_or(|c| matches!(c.get_name(), "start" | "run" | "selftest" | "serve"))
}

/// Folds the options written before `start` (or `run`, or `stop`) into the subcommand's own;
/// an option written before `stop` that it cannot honour is an error (the message), never
/// ignored.
fn resolve(mut cli: Cli, matches: &ArgMatches) -> Result<Cli, String> {
    // A global option's source is propagated to every level, wherever it was written.
    cli.global.run_as_from_env = matches.value_source("run_as") == Some(ValueSource::EnvVariable);
    let later = match &mut cli.command {
        Some(Command::Start(later)) => Some((later, matches.subcommand_matches("start"))),
        Some(Command::Run(run)) => Some((&mut run.start, matches.subcommand_matches("run"))),
        _ => None,
    };
    if let Some((later, Some(sub))) = later {
        // Only the subcommand's arguments are read from here on.
        *later = std::mem::take(&mut cli.start).merged_with(
            Written::of(matches),
            std::mem::take(later),
            Written::of(sub),
        );
    }
    if let Some(Command::Stop(stop)) = &mut cli.command {
        resolve_stop(stop, std::mem::take(&mut cli.start), matches)?;
    }
    Ok(cli)
}

/// `pgtmp -k -w 60 -d DIR stop` is pg_tmp's way to stop a cluster (once its clients have
/// left) and keep it: -k, -w and -d written before `stop` count as stop's own (-w after `stop`
/// wins over one before it). Any other option written there (or --bindir, which stop has no
/// use for) is refused, as is a second cluster named before `stop`.
fn resolve_stop(
    stop: &mut StopArgs,
    before: StartArgs,
    matches: &ArgMatches,
) -> Result<(), String> {
    let written = Written::of(matches);
    let by_hand = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
    let unused = [
        (written.tcp, "-t/--tcp"),
        (written.port, "-p/--port"),
        (written.options, "-o/--options"),
        (written.format, "-F/--format"),
        (written.schema_files, "-f/--schema-file"),
        (written.now, "--now"),
        (written.no_cache, "--no-cache"),
        (written.owner_pid, "--owner-pid"),
        (by_hand("bindir"), "--bindir"),
        (by_hand("pg"), "--pg"),
    ];
    if let Some((_, name)) = unused.iter().find(|(set, _)| *set) {
        return Err(format!(
            "{name} does not apply to `pgtmp stop`, which takes URL, -d DIR, --all, -k and -w"
        ));
    }
    stop.keep |= written.keep;
    if written.timeout && stop.wait.is_none() {
        stop.wait = before.timeout;
    }
    if let Some(dir) = before.dir.filter(|_| written.dir) {
        if stop.dir.is_some() || stop.url.is_some() || stop.all {
            return Err(format!(
                "-d {} before `stop` names a cluster, and so does what follows `stop`; name one",
                dir.display()
            ));
        }
        stop.dir = Some(dir);
    }
    Ok(())
}

/// clap's rendering spans several lines (usage, tips); keep the sentence naming the problem
/// and point at the help for the fix.
fn one_line(err: &clap::Error) -> String {
    let text = err.render().to_string();
    let first = text
        .lines()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("invalid command line");
    let mut first = first.trim().trim_start_matches("error: ").to_string();
    if first.ends_with(':') {
        // "the following required arguments were not provided:" names them on the next line.
        let named: Vec<&str> = text
            .lines()
            .skip_while(|line| !line.trim().ends_with(':'))
            .skip(1)
            .take_while(|line| line.starts_with("  "))
            .map(str::trim)
            .collect();
        first = format!("{} {}", first, named.join(" "));
    }
    use clap::error::{ContextKind, ContextValue};
    match (err.kind(), err.get(ContextKind::ValidValue)) {
        (ErrorKind::ValueValidation, _) => first,
        // The help hides the values of -F (each is described there); the error lists them.
        (ErrorKind::InvalidValue, Some(ContextValue::Strings(values))) if !values.is_empty() => {
            format!("{first}; valid values: {}", values.join(", "))
        }
        _ => format!("{first}; see 'pgtmp --help'"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse_ok(args: &[&str]) -> Cli {
        match parse_from(std::iter::once("pgtmp").chain(args.iter().copied())) {
            Ok(cli) => cli,
            Err(code) => panic!("arguments {args:?} should parse, got {code:?}"),
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let cli = parse_ok(&[]);
        assert!(cli.command.is_none());
        assert!(!cli.start.wants_tcp());
        assert_eq!(cli.start.idle_timeout(), 60);
    }

    #[test]
    fn port_implies_tcp() {
        assert!(parse_ok(&["-p", "5599"]).start.wants_tcp());
    }

    #[test]
    fn pg_tmp_style_options_before_subcommand_merge() {
        let cli = parse_ok(&["-k", "-w", "5", "start", "-t", "-o", "-c work_mem=8MB"]);
        let Some(Command::Start(merged)) = cli.command else {
            panic!("expected start")
        };
        assert!(merged.keep && merged.tcp);
        assert_eq!(merged.timeout, Some(5));
        assert_eq!(merged.options, vec!["-c work_mem=8MB".to_string()]);
        let cli = parse_ok(&[
            "-w", "5", "-o", "-c a=1", "start", "-w", "7", "-o", "-c b=2",
        ]);
        let Some(Command::Start(merged)) = cli.command else {
            panic!("expected start")
        };
        assert_eq!(merged.timeout, Some(7));
        assert_eq!(merged.options, ["-c a=1", "-c b=2"]);
    }

    #[test]
    fn run_takes_start_options_before_and_after_it() {
        let cli = parse_ok(&[
            "-F", "dsn", "-w", "5", "run", "-t", "psql", "-c", "select 1",
        ]);
        let Some(Command::Run(run)) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(run.start.format, Some(Format::Dsn));
        assert_eq!(run.start.timeout, Some(5));
        assert!(run.start.tcp);
        // Everything from CMD on belongs to CMD, options included.
        assert_eq!(run.command, ["psql", "-c", "select 1"]);
        let cli = parse_ok(&["run", "--", "-weird", "-t"]);
        let Some(Command::Run(run)) = cli.command else {
            panic!("expected run")
        };
        assert!(!run.start.tcp);
        assert_eq!(run.command, ["-weird", "-t"]);
        assert!(parse_from(["pgtmp", "run"]).is_err());
        assert!(parse_from(["pgtmp", "stop", "--all", "-d", "x"]).is_err());
    }

    #[test]
    fn stop_takes_k_and_d_on_either_side_and_refuses_the_rest() {
        for args in [
            &["-k", "-d", "x", "stop"][..],
            &["stop", "-k", "-d", "x"],
            &["-k", "stop", "-d", "x"],
            &["-d", "x", "stop", "-k"],
        ] {
            let Some(Command::Stop(stop)) = parse_ok(args).command else {
                panic!("expected stop")
            };
            assert!(stop.keep, "{args:?}");
            assert_eq!(
                stop.dir.as_deref(),
                Some(std::path::Path::new("x")),
                "{args:?}"
            );
        }
        let Some(Command::Stop(stop)) = parse_ok(&["stop", "-k", "URL"]).command else {
            panic!("expected stop")
        };
        assert!(stop.keep && stop.url.as_deref() == Some("URL"));
        for args in [
            &["-t", "stop", "URL"][..],
            &["-w", "x", "stop", "URL"],
            &["stop", "-w", "-1", "URL"],
            &["--bindir", "/x", "stop", "URL"],
            &["stop", "URL", "--bindir", "/x"],
            &["-d", "x", "stop", "URL"],
            &["-d", "x", "stop", "-d", "y"],
            &["-d", "x", "stop", "--all"],
        ] {
            assert!(
                parse_from(std::iter::once("pgtmp").chain(args.iter().copied())).is_err(),
                "{args:?}"
            );
        }
    }

    #[test]
    fn stop_takes_w_on_either_side() {
        for (args, wait) in [
            (&["-w", "60", "-d", "x", "stop"][..], Some(60)),
            (&["stop", "-w", "60", "-d", "x"], Some(60)),
            (&["-w", "60", "stop", "--wait", "7", "-d", "x"], Some(7)),
            (&["-w", "0", "stop", "-d", "x"], Some(0)),
            (&["stop", "-d", "x"], None),
        ] {
            let Some(Command::Stop(stop)) = parse_ok(args).command else {
                panic!("expected stop")
            };
            assert_eq!(stop.wait, wait, "{args:?}");
        }
    }

    #[test]
    fn written_options_beat_the_environment_copy() {
        let env_copy = StartArgs {
            timeout: Some(300),
            options: vec!["-c env=1".into()],
            ..Default::default()
        };
        let written = StartArgs {
            timeout: Some(2),
            port: Some(5433),
            ..Default::default()
        };
        let merged = written.merged_with(
            Written {
                timeout: true,
                port: true,
                ..Default::default()
            },
            env_copy,
            Written::default(),
        );
        assert_eq!(merged.timeout, Some(2));
        assert_eq!(merged.port, Some(5433));
        assert_eq!(merged.options, ["-c env=1"]);
    }

    #[test]
    fn values_are_validated() {
        assert!(parse_timeout("abc").is_err());
        assert!(parse_timeout("-5").is_err());
        assert_eq!(parse_timeout("0"), Ok(0));
        assert!(parse_port("0").is_err());
        assert!(parse_port("70000").is_err());
        assert_eq!(parse_port("65535"), Ok(65535));
    }

    #[test]
    fn help_subcommand_shows_each_page() {
        for args in [
            &["pgtmp", "help"][..],
            &["pgtmp", "help", "clone"],
            &["pgtmp", "-w", "5", "help"],
        ] {
            let err = Cli::command().try_get_matches_from(args).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::DisplayHelp, "{args:?}");
        }
        let page = Cli::command()
            .try_get_matches_from(["pgtmp", "help", "clone"])
            .unwrap_err()
            .render()
            .to_string();
        assert!(page.contains("pgtmp clone --drop"), "{page}");
        // The default command's options still parse, before and after a subcommand.
        assert!(parse_ok(&["-t", "-w", "5"]).start.wants_tcp());
        assert!(matches!(
            parse_ok(&["-k", "stop", "-d", "x"]).command,
            Some(Command::Stop(_))
        ));
    }

    #[test]
    fn every_subcommand_has_examples() {
        let command = Cli::command();
        for sub in command.get_subcommands() {
            let help = sub
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                help.starts_with("Examples:\n  ")
                    && help.contains(&format!("pgtmp {}", sub.get_name()))
                    || sub.get_name() == "list" && help.contains("pgtmp ls"),
                "pgtmp {} --help has no example: {help:?}",
                sub.get_name()
            );
        }
    }

    #[test]
    fn an_invalid_format_lists_the_valid_ones() {
        let err = Cli::try_parse_from(["pgtmp", "-F", "yaml"]).unwrap_err();
        assert!(
            one_line(&err).ends_with("; valid values: uri, dsn, jdbc, env, json"),
            "{}",
            one_line(&err)
        );
        let err = Cli::try_parse_from(["pgtmp", "clone", "-F", "dsn", "URL"]).unwrap_err();
        assert!(
            one_line(&err).ends_with("; valid values: uri, jdbc"),
            "{}",
            one_line(&err)
        );
    }

    #[test]
    fn errors_render_on_one_line() {
        let err = Cli::try_parse_from(["pgtmp", "-w", "-5"]).unwrap_err();
        let line = one_line(&err);
        assert!(!line.contains('\n'));
        assert!(line.contains("negative"), "{line}");
        let err = Cli::try_parse_from(["pgtmp", "--frobnicate"]).unwrap_err();
        assert!(one_line(&err).contains("--frobnicate"));
    }
}
