//! Making and dropping what serve hands out, with the admin role: a LOGIN role per database
//! (random password, stored as a SCRAM verifier; no superuser, CREATEDB or CREATEROLE), the
//! database owned by it, CONNECT revoked from PUBLIC so that a role reaches nothing but its
//! own database; a template's copy made its role's own with REASSIGN OWNED.
//!
//! Each step is recorded first (see store.rs): what a crash leaves half made is dropped by
//! the expiry like anything else.

use crate::os::secret;
use crate::serve::backend::Backend;
use crate::serve::store::{self, Record};
use crate::server::initdb::quote_ident;
use anyhow::{Context, Result};
use postgres::Client;

/// Letters of generated database names: lower case, so they need no quoting anywhere.
const NAME_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// Seconds a database being made stays recorded before the expiry takes it for abandoned.
const MAKING_LIMIT: f64 = 600.0;

/// A fresh name for a blank database and its role.
pub fn blank_name() -> Result<String> {
    Ok(format!(
        "pgtmp_{}",
        secret::random_string(NAME_ALPHABET, 16)?
    ))
}

/// `CREATE ROLE` for a database's own role.
fn create_role(client: &mut Client, name: &str, password: &str) -> Result<()> {
    let verifier = secret::scram_verifier(password);
    client
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION \
             PASSWORD '{verifier}'; GRANT {role} TO CURRENT_USER",
            role = quote_ident(name),
        ))
        .with_context(|| format!("cannot create role {name}"))
}

/// A new password for `name`'s role.
pub fn set_password(client: &mut Client, name: &str, password: &str) -> Result<()> {
    let verifier = secret::scram_verifier(password);
    client
        .batch_execute(&format!(
            "ALTER ROLE {} PASSWORD '{verifier}'",
            quote_ident(name)
        ))
        .with_context(|| format!("cannot set the password of role {name}"))
}

/// Makes database `record.name` with its role, a copy of `template` (its database and role's
/// name) or a blank one; ready to hand out once this returns.
pub fn make(
    backend: &Backend,
    client: &mut Client,
    record: &Record,
    template: Option<(i32, &str)>,
    maker: &str,
    ready_for: f64,
) -> Result<()> {
    let name = &record.name;
    store::begin_database(
        client,
        record,
        template.map(|(id, _)| id),
        maker,
        MAKING_LIMIT,
    )?;
    create_role(client, name, &record.password)?;
    let from = match template {
        Some((_, source)) => format!(" TEMPLATE {}", quote_ident(source)),
        None => String::new(),
    };
    client
        .batch_execute(&format!(
            "CREATE DATABASE {db} OWNER {db}{from}",
            db = quote_ident(name)
        ))
        .with_context(|| format!("cannot create database {name}"))?;
    client
        .batch_execute(&format!(
            "REVOKE ALL ON DATABASE {} FROM PUBLIC",
            quote_ident(name)
        ))
        .with_context(|| format!("cannot revoke CONNECT on {name} from PUBLIC"))?;
    if let Some((_, source)) = template {
        // The template's objects belong to its role; in the copy they become the copy's.
        let mut copy = backend.connect(name)?;
        copy.batch_execute(&format!(
            "REASSIGN OWNED BY {} TO {}",
            quote_ident(source),
            quote_ident(name)
        ))
        .with_context(|| format!("cannot give the objects of {name} to its role"))?;
    }
    store::database_ready(client, name, ready_for)
}

/// Makes the database and role of template `id`, which its client fills in: owned by the
/// admin role (so that REASSIGN OWNED in a copy never touches it), with CONNECT, CREATE and
/// TEMPORARY for the template's role, and schema public open to it.
pub fn make_template(
    backend: &Backend,
    client: &mut Client,
    id: i32,
    password: &str,
) -> Result<()> {
    let name = store::template_name(id);
    let db = quote_ident(&name);
    create_role(client, &name, password)?;
    client
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .with_context(|| format!("cannot create database {name}"))?;
    client
        .batch_execute(&format!(
            "REVOKE ALL ON DATABASE {db} FROM PUBLIC; \
             GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {db} TO {db}"
        ))
        .with_context(|| format!("cannot grant {name} its database"))?;
    let mut template = backend.connect(&name)?;
    template
        .batch_execute(&format!("GRANT ALL ON SCHEMA public TO {db}"))
        .with_context(|| format!("cannot open schema public of {name} to its role"))?;
    Ok(())
}

/// Closes template `id` to its role for good, so that it can be copied: no more connections
/// (those open are ended), no more login.
pub fn seal_template(client: &mut Client, id: i32) -> Result<()> {
    let name = store::template_name(id);
    let db = quote_ident(&name);
    client
        .batch_execute(&format!(
            "REVOKE ALL ON DATABASE {db} FROM {db}; ALTER ROLE {db} NOLOGIN"
        ))
        .with_context(|| format!("cannot close template {name}"))?;
    end_sessions(client, &name)
}

/// Ends every session on database `name`.
fn end_sessions(client: &mut Client, name: &str) -> Result<()> {
    client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&name],
        )
        .with_context(|| format!("cannot end the sessions on {name}"))?;
    Ok(())
}

/// Drops database `name` and its role, ending the sessions on it first; what is already gone
/// is fine.
pub fn drop_database(client: &mut Client, name: &str) -> Result<()> {
    let db = quote_ident(name);
    // A session may connect between the two steps; a few rounds see it out.
    let mut last = None;
    for _ in 0..5 {
        end_sessions(client, name)?;
        match client.batch_execute(&format!("DROP DATABASE IF EXISTS {db}")) {
            Ok(()) => {
                last = None;
                break;
            }
            Err(err) => last = Some(err),
        }
    }
    if let Some(err) = last {
        return Err(err).with_context(|| format!("cannot drop database {name}"));
    }
    client
        .batch_execute(&format!("DROP ROLE IF EXISTS {db}"))
        .with_context(|| format!("cannot drop role {name}"))
}
