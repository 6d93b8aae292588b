//! Eight starts at once in one PGTMP_DIR, from a filled pool and without one: eight distinct,
//! working, isolated clusters.

#[macro_use]
mod common;

use common::*;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

both_invokers!(
    eight_concurrent_starts_from_a_pool,
    eight_concurrent_starts_without_a_pool,
);

const STARTS: usize = 8;

/// Spawns pgtmp STARTS times at the same moment and returns the URLs.
fn start_all_at_once(sandbox: &Sandbox) -> Vec<String> {
    sandbox.start_at_once(STARTS, &["-w", "30"])
}

/// Distinct URLs and directories, each cluster usable, and a table made in one absent from
/// all the others.
fn check_distinct_and_isolated(sandbox: &Sandbox, urls: &[String]) {
    let distinct: HashSet<&String> = urls.iter().collect();
    assert_eq!(distinct.len(), STARTS, "URLs repeat: {urls:#?}");
    let dirs: HashSet<PathBuf> = urls.iter().map(|u| parse_socket_url(u).dir).collect();
    assert_eq!(dirs.len(), STARTS, "directories repeat: {urls:#?}");
    assert_eq!(
        sandbox.instance_dirs().len(),
        STARTS,
        "instance directories under PGTMP_DIR"
    );
    for (i, url) in urls.iter().enumerate() {
        sandbox.psql(url, &format!("create table only_in_{i} (x int)"));
    }
    for (i, url) in urls.iter().enumerate() {
        assert_eq!(
            sandbox.psql(
                url,
                "select string_agg(tablename, ',') from pg_tables where schemaname = 'public'"
            ),
            format!("only_in_{i}"),
            "cluster {i} ({url}) should hold its own table and no other"
        );
    }
}

/// With ready pool entries: some starts claim one (racing for them), the rest prepare their
/// own in the foreground.
fn eight_concurrent_starts_from_a_pool(invoker: &Invoker) {
    let sandbox = Sandbox::with_pool(invoker, 4);
    // A first call fills the pool in the background.
    let out = sandbox.run(&["initdb"]);
    let prepared = PathBuf::from(check_started(&out, invoker));
    sandbox.wait_for_full_pool(4, Duration::from_secs(120));
    std::fs::remove_dir_all(&prepared).unwrap();
    // A claim renames the entry into place, which keeps its inode.
    let ready = sandbox.ready_entry_inodes();

    let urls = start_all_at_once(&sandbox);
    check_distinct_and_isolated(&sandbox, &urls);
    let claimed = sandbox
        .instance_dirs()
        .iter()
        .filter(|dir| ready.contains(&std::fs::metadata(dir).unwrap().ino()))
        .count();
    assert_eq!(
        claimed,
        ready.len(),
        "every ready pool entry should have gone to exactly one of the starts"
    );
}

/// No pool: all eight prepare their directories in the foreground at once.
fn eight_concurrent_starts_without_a_pool(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let urls = start_all_at_once(&sandbox);
    check_distinct_and_isolated(&sandbox, &urls);
}
