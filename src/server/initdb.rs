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
    create_test_database(install, instance, user)?;
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
    let text = single_user(install, instance, &create_test_sql(user))?;
    if text.contains("ERROR:") || text.contains("FATAL:") {
        // A backend that died of a PANIC (a full disk) or a signal leaves its shared memory.
        shm::release_left_in(&instance.data());
        bail!("creating database test failed: {}", process::tail(&text, 4));
    }
    Ok(())
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
            "postgres",
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
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("alice"), "\"alice\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
