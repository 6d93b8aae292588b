//! Preparing a data directory: initdb, pg_hba.conf, the TLS certificate, and the `test`
//! database, ready to start.

use crate::os::process;
use crate::server::discover::Installation;
use crate::server::shm;
use crate::server::tls;
use crate::state::instance::Instance;
use anyhow::{Context, Result, bail};
use std::fs;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::process::Stdio;

/// Authentication: trust on the Unix socket, whose 0700 directory keeps other accounts out;
/// SCRAM passwords over TCP, which listens on 127.0.0.1 only, except for `pgtmp serve
/// --listen` beyond loopback: clients from elsewhere must then also use TLS.
pub const PG_HBA: &str = "\
# Written by pgtmp.
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  trust
local   replication  all                  trust
host    all          all   127.0.0.1/32   scram-sha-256
host    replication  all   127.0.0.1/32   scram-sha-256
hostssl all          all   0.0.0.0/0      scram-sha-256
hostssl all          all   ::/0           scram-sha-256
";

/// Makes `instance.dir` (existing and empty) a complete cluster directory whose superuser is
/// `user` and which holds a database `test` owned by it.
pub fn prepare(install: &Installation, instance: &Instance, user: &str) -> Result<()> {
    init_cluster(install, instance, user)?;
    finish_preparing(install, instance, user)
}

/// As [`prepare`], for a directory that is copied again and again (a pool template, a cache
/// entry): the catalogs' statistics are dropped first (see [`drop_catalog_statistics`]).
pub fn prepare_for_copies(install: &Installation, instance: &Instance, user: &str) -> Result<()> {
    init_cluster(install, instance, user)?;
    drop_catalog_statistics(install, instance)?;
    finish_preparing(install, instance, user)
}

/// The rest of a preparation after initdb: database `test`, then what nothing reads removed.
fn finish_preparing(install: &Installation, instance: &Instance, user: &str) -> Result<()> {
    create_test_database(install, instance, user)?;
    trim_recycled_wal(install, instance)?;
    drop_space_maps(instance)?;
    instance.write_marker()
}

/// Runs initdb into `instance.dir` (existing and empty), writes pg_hba.conf and adds the TLS
/// certificate (see [`tls::add_certificate`]), but creates no database `test`: the first
/// start must create it (see [`create_test_sql`]). This is the fastest way to a startable
/// cluster when nothing is prepared.
pub fn prepare_without_test(install: &Installation, instance: &Instance, user: &str) -> Result<()> {
    init_cluster(install, instance, user)?;
    instance.write_marker()
}

/// The statement that creates database `test` owned by `user`.
pub fn create_test_sql(user: &str) -> String {
    format!("CREATE DATABASE test OWNER {}", quote_ident(user))
}

fn init_cluster(install: &Installation, instance: &Instance, user: &str) -> Result<()> {
    instance.make_private()?;
    instance.mark_preparing()?;
    let data = instance.data();
    // Made here rather than by initdb: a failing initdb then removes only what is inside it,
    // and the directory, whose inode is what ties the shared memory its killed (or panicked)
    // backends left to it, stays until that is released.
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&data)
        .with_context(|| format!("cannot create {}", data.display()))?;
    // --no-sync: the directory is throwaway; fsync would only add seconds. C locale and UTF8
    // make clusters identical on every machine, whatever the caller's LANG.
    let initialized = process::run_checked(
        process::pg_command(&install.initdb())
            .arg("--pgdata")
            .arg(&data)
            .args([
                "--username",
                user,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                // 1 MB instead of 16 MB of WAL: a smaller directory to copy into the pool,
                // invisible to tests short of `SHOW wal_segment_size`.
                "--wal-segsize",
                "1",
            ])
            .arg("--no-sync")
            .current_dir(&instance.dir),
        "initdb",
    );
    if let Err(err) = initialized {
        shm::release_left_in(&data);
        return Err(err);
    }
    let hba = data.join("pg_hba.conf");
    fs::write(&hba, PG_HBA).with_context(|| format!("cannot write {}", hba.display()))?;
    tls::add_certificate(install, &data)?;
    crate::os::testpause::point("initialized");
    Ok(())
}

/// Creates `test` in single-user mode: no socket, no listener, about 60 ms.
pub fn create_test_database(install: &Installation, instance: &Instance, user: &str) -> Result<()> {
    single_user_ok(
        install,
        instance,
        "postgres",
        &create_test_sql(user),
        "creating database test failed",
    )
}

/// Gives `user` the password whose SCRAM verifier is `verifier`, in single-user mode, so that
/// the directory is ready for a TCP start before one asks (a running server would need a
/// session of its own, a backend start before the URL can be printed).
pub fn set_password_offline(
    install: &Installation,
    instance: &Instance,
    user: &str,
    verifier: &str,
) -> Result<()> {
    // The verifier holds only base64 letters, digits, '$', ':', '+', '/' and '=': no quotes.
    let sql = format!("ALTER ROLE {} PASSWORD '{verifier}'", quote_ident(user));
    single_user_ok(
        install,
        instance,
        "postgres",
        &sql,
        "cannot set the password",
    )
}

/// Removes what initdb's ANALYZE recorded about the catalogs in each of its databases (`test`,
/// made later, copies template1): 150 KB of pg_statistic each, 0.6 MB of every copy. Only the
/// planner reads them, to estimate catalog queries; without them it estimates from the sizes
/// pg_class records, and autovacuum gathers them again for catalogs that a test changes much.
/// Statistics of a test's own tables are never affected: they come from its own ANALYZE.
fn drop_catalog_statistics(install: &Installation, instance: &Instance) -> Result<()> {
    // Single-user mode may enter template0, which refuses connections.
    for database in ["template1", "template0", "postgres"] {
        single_user_ok(
            install,
            instance,
            database,
            "DELETE FROM pg_statistic\nVACUUM FULL pg_statistic",
            &format!("cannot drop the catalog statistics of {database}"),
        )?;
    }
    Ok(())
}

/// Removes the WAL segments a clean shutdown left recycled for later use: those after the
/// segment of the latest checkpoint, which nothing reads (the server makes new ones when it
/// needs them). Four of the five segments of a fresh cluster, 4 MB of every copy made of it.
/// Nothing is removed without pg_controldata, or when it says something this does not read.
pub fn trim_recycled_wal(install: &Installation, instance: &Instance) -> Result<()> {
    let data = instance.data();
    let controldata = install.bindir.join("pg_controldata");
    // Relocatable builds may ship only the server: the segments then stay.
    if !controldata.is_file() {
        return Ok(());
    }
    let out = process::run_checked(
        process::pg_command(&controldata).arg(&data),
        "pg_controldata",
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(last) = last_needed_segment(&text) else {
        return Ok(());
    };
    let wal = data.join("pg_wal");
    for entry in fs::read_dir(&wal).with_context(|| format!("cannot read {}", wal.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if is_segment_name(&name) && name > last {
            fs::remove_file(wal.join(&name))
                .with_context(|| format!("cannot remove {}/{name}", wal.display()))?;
        }
    }
    Ok(())
}

/// Removes the free space maps and visibility maps (`*_fsm`, `*_vm`) of the catalogs, which
/// the server rebuilds as it needs them: a missing free space map only means an insert
/// extends the table rather than filling a gap, a missing visibility map that no page is known
/// all-visible yet (so an index-only scan of a catalog reads its heap). Nothing a test can see
/// but `pg_relation_size(..., 'fsm')`; they are 296 of a fresh cluster's 1,267 files and 4.7 MB
/// of its 31 MB, which every copy of the template would create and write again.
fn drop_space_maps(instance: &Instance) -> Result<()> {
    let data = instance.data();
    let mut dirs = vec![data.join("global")];
    let base = data.join("base");
    for entry in fs::read_dir(&base).with_context(|| format!("cannot read {}", base.display()))? {
        dirs.push(
            entry
                .with_context(|| format!("cannot read {}", base.display()))?
                .path(),
        );
    }
    for dir in dirs {
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let relation = name
                .strip_suffix("_fsm")
                .or_else(|| name.strip_suffix("_vm"));
            if relation.is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit())) {
                fs::remove_file(entry.path())
                    .with_context(|| format!("cannot remove {}", entry.path().display()))?;
            }
        }
    }
    Ok(())
}

/// A WAL segment file's name: 24 hexadecimal digits.
fn is_segment_name(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The name of the segment holding the latest checkpoint record, on the timeline of its REDO
/// segment, from pg_controldata's output.
fn last_needed_segment(controldata: &str) -> Option<String> {
    let field = |label: &str| {
        controldata
            .lines()
            .find_map(|line| line.strip_prefix(label))
            .map(str::trim)
    };
    let redo = field("Latest checkpoint's REDO WAL file:").filter(|n| is_segment_name(n))?;
    let (high, low) = field("Latest checkpoint location:")?.split_once('/')?;
    let lsn = (u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?;
    let size: u64 = field("Bytes per WAL segment:")?.parse().ok()?;
    if size == 0 || !size.is_power_of_two() {
        return None;
    }
    let segment = lsn / size;
    let per_id = 0x1_0000_0000 / size;
    let name = format!(
        "{}{:08X}{:08X}",
        &redo[..8],
        segment / per_id,
        segment % per_id
    );
    // The checkpoint record is never before its REDO point.
    (name.as_str() >= redo).then_some(name)
}

/// Gives a cluster that another tool made what pgtmp's have: the superuser role `user` (unless
/// it is the one initdb made, `owner`) and database `test`; what exists already stays as it is.
pub fn complete_foreign_cluster(
    install: &Installation,
    instance: &Instance,
    user: &str,
    owner: &str,
) -> Result<()> {
    let mut sql = String::new();
    if user != owner {
        sql.push_str(&format!(
            "CREATE ROLE {} SUPERUSER LOGIN\n",
            quote_ident(user)
        ));
    }
    sql.push_str(&create_test_sql(user));
    let text = single_user(install, instance, &sql)?;
    let failed = text.lines().any(|line| {
        line.contains("FATAL:") || (line.contains("ERROR:") && !line.contains("already exists"))
    });
    if failed {
        shm::release_left_in(&instance.data());
        bail!(
            "preparing role {user} and database test failed: {}",
            process::tail(&text, 4)
        );
    }
    Ok(())
}

/// Runs `sql` (one statement a line) in single-user mode as the server account, and returns
/// everything postgres printed; fails only if postgres itself failed.
fn single_user(install: &Installation, instance: &Instance, sql: &str) -> Result<String> {
    single_user_in(install, instance, "postgres", sql)
}

/// [`single_user_in`], failing with `what` and the end of the output when a statement failed.
fn single_user_ok(
    install: &Installation,
    instance: &Instance,
    database: &str,
    sql: &str,
    what: &str,
) -> Result<()> {
    let text = single_user_in(install, instance, database, sql)?;
    if text.contains("ERROR:") || text.contains("FATAL:") {
        // A backend that died of a PANIC (a full disk) or a signal leaves its shared memory.
        shm::release_left_in(&instance.data());
        bail!("{what}: {}", process::tail(&text, 4));
    }
    Ok(())
}

/// Runs `sql`, one statement per line, in `database` in single-user mode; returns what the
/// backend printed.
fn single_user_in(
    install: &Installation,
    instance: &Instance,
    database: &str,
    sql: &str,
) -> Result<String> {
    let mut child = process::pg_command(&install.postgres())
        .arg("--single")
        .arg("-D")
        .arg(instance.data())
        .args([
            "-F",
            "-c",
            "full_page_writes=off",
            "-c",
            "log_min_messages=error",
            // What the callers look for (ERROR:, FATAL:) stays English whatever the cluster's
            // settings (a -f file may ALTER SYSTEM SET lc_messages).
            "-c",
            "lc_messages=C",
            database,
        ])
        .current_dir(&instance.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| crate::output::exit::spawn_error(err, "cannot run postgres --single"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(format!("{sql}\n").as_bytes())
            .context("cannot send statements to postgres --single")?;
    }
    let out = child
        .wait_with_output()
        .context("postgres --single did not finish")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        // A backend that died of a PANIC (a full disk) or a signal leaves its shared memory.
        shm::release_left_in(&instance.data());
        bail!("postgres --single failed: {}", process::tail(&text, 4));
    }
    Ok(text)
}

/// Double-quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_segments_after_the_checkpoint_are_recycled() {
        let text = "Latest checkpoint location:           0/A1FA10\n\
                    Latest checkpoint's REDO WAL file:    00000001000000000000000A\n\
                    Bytes per WAL segment:                1048576\n";
        assert_eq!(
            last_needed_segment(text).as_deref(),
            Some("00000001000000000000000A")
        );
        let big = "Latest checkpoint location:           1/2000028\n\
                   Latest checkpoint's REDO WAL file:    000000010000000100000002\n\
                   Bytes per WAL segment:                16777216\n";
        assert_eq!(
            last_needed_segment(big).as_deref(),
            Some("000000010000000100000002")
        );
        assert_eq!(
            last_needed_segment("Latest checkpoint location: 0/1\n"),
            None
        );
        assert!(is_segment_name("00000001000000000000000A"));
        assert!(!is_segment_name("archive_status"));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("alice"), "\"alice\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
