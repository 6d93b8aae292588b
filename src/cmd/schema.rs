//! `pgtmp schema URL`: a fresh schema in URL's database and a URL whose connections have it
//! first on their search_path.

use crate::cli::{GlobalArgs, SchemaArgs};
use crate::lifecycle::session::{Session, Target};
use crate::os::secret;
use crate::server::initdb::quote_ident;
use crate::state::instance::NAME_ALPHABET;
use crate::testdata::dburl;
use crate::testdata::files::{self, Server};
use anyhow::{Context, Result};

pub fn run(args: SchemaArgs, global: &GlobalArgs) -> Result<()> {
    let jdbc = dburl::jdbc_wanted(args.format.format, "schema")?;
    // Any form pgtmp prints, in its plain URI form: a schema URL's options are replaced below.
    let url = crate::output::url::read(&args.url)?.uri(None);
    if jdbc {
        // Refused before a schema is made for nothing.
        dburl::jdbc(&url)?;
    }
    let session = Session::establish_for(global.run_as(), &Target::Url(&url))?;
    let (instance, state) = session.running(&url)?;
    let database = dburl::database(&url)?;
    let mut client = files::connect(&Server::of(&instance, &state), &database)?;
    let schema = format!("s_{}", secret::random_string(NAME_ALPHABET, 8)?);
    client
        .batch_execute(&format!("CREATE SCHEMA {}", quote_ident(&schema)))
        .with_context(|| format!("cannot create schema {schema} in {database}"))?;
    // The database's own search_path (with --now, the frozen now()) stays behind it.
    let row = client
        .query_one("SELECT current_setting('search_path')", &[])
        .context("cannot read the search_path")?;
    let rest: String = row.get(0);
    let path = if rest.trim().is_empty() {
        schema
    } else {
        format!("{schema}, {rest}")
    };
    let url = if jdbc {
        dburl::jdbc_with_search_path(&url, &path)?
    } else {
        dburl::with_search_path(&url, &path)?
    };
    let end = crate::output::format::ending(true);
    crate::output::stdout::print(&format!("{url}{end}"))
}
