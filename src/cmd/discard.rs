//! `pgtmp discard DIR|URL`: stop a cluster of the invoker's if it runs and remove its
//! directory, kept or not; only a cluster directory pgtmp made and knows as the invoker's
//! (in PGTMP_DIR, or registered or recorded there by a start with -d) is ever removed.

use crate::cli::{DiscardArgs, GlobalArgs};
use crate::lifecycle::kept;
use crate::lifecycle::session::{Session, Target};
use crate::state::clusters;
use anyhow::{Context, Result, bail};
use std::path::Path;

pub fn run(args: DiscardArgs, global: &GlobalArgs) -> Result<()> {
    let text = args.cluster;
    let (session, cluster) = if looks_like_url(&text) {
        let (session, conn) = Session::establish_for_url(global.run_as(), &text)?;
        let cluster = clusters::find_by_url(&session.state.path, &conn.uri(None))?;
        (session, cluster)
    } else {
        let dir = std::path::absolute(Path::new(&text))
            .with_context(|| format!("cannot resolve {text}"))?;
        let session = Session::establish_for(global.run_as(), &Target::Dir(&dir))?;
        let cluster = clusters::own(&session.state.path, &dir)?;
        if cluster.path != dir {
            // Reached under another name: a symlink or a moved directory on the way, which
            // someone else may have put there. Nothing is removed by a name pgtmp did not give.
            bail!(
                "{} leads to the cluster known as {}, through a symlink or a moved directory;                  name it as pgtmp knows it (`pgtmp list --all`)",
                dir.display(),
                cluster.path.display()
            );
        }
        (session, cluster)
    };
    kept::discard(&session, &cluster)
}

/// A URL in one of the forms pgtmp prints, rather than a directory: an existing directory is
/// always taken as one.
fn looks_like_url(text: &str) -> bool {
    let trimmed = text.trim_start();
    !Path::new(text).is_dir()
        && (trimmed.contains("://")
            || trimmed.starts_with("jdbc:")
            || trimmed.starts_with('{')
            || trimmed.contains('='))
}
