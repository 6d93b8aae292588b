//! `pgtmp serve`: throwaway databases over HTTP until SIGINT or SIGTERM.

use crate::cli::{GlobalArgs, ServeArgs};
use anyhow::Result;

pub fn run(args: ServeArgs, global: &GlobalArgs) -> Result<()> {
    let settings = args.settings()?;
    let own = args.own_cluster(global)?;
    crate::serve::run(settings, own)
}
