//! `pgtmp gc [--dry-run]`: remove what killed or crashed runs left in PGTMP_DIR, now.

use crate::cli::{GcArgs, GlobalArgs};
use crate::lifecycle::session::Session;
use crate::lifecycle::sweep;
use anyhow::Result;

pub fn run(args: &GcArgs, global: &GlobalArgs) -> Result<()> {
    // Checked before anything is made or removed.
    let mut policy = crate::cli::settings::sweep_policy()?;
    if args.all {
        // Every cache entry and ready copy nobody holds is unused for long enough.
        policy.cache_age = std::time::Duration::ZERO;
    }
    Session::in_each(global.run_as(), |session| sweep_one(session, args, policy))
}

/// Sweeps one state directory and prints what was done.
fn sweep_one(session: &Session, args: &GcArgs, policy: sweep::Policy) -> Result<()> {
    let step = crate::output::progress::step(&format!(
        "sweeping {} (stopping what dead runs left may take seconds)",
        session.state.path.display()
    ));
    let actions = sweep::sweep(&session.state, args.dry_run, true, policy).map(|mut actions| {
        if args.all {
            actions.extend(sweep::remove_pools(&session.state, args.dry_run));
        }
        actions
    });
    drop(step);
    let actions = actions?;
    let text: String = actions
        .iter()
        .map(|action| action.describe(args.dry_run) + "\n")
        .collect();
    crate::output::stdout::print(&text)
}
