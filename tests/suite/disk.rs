//! The prepared state's disk: `pgtmp list` and `doctor` show it by kind, and PGTMP_DISK_MAX
//! bounds it by evicting the least recently used schema cache entries and ready copies, never
//! a running or kept cluster, never the pool.

use crate::common::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

both_invokers!(budget_evicts_least_recently_used_cache_only);

/// Bytes below `dir` as du counts them (symlinks not followed).
fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        total += meta.blocks() * 512;
        if meta.is_dir()
            && let Ok(entries) = fs::read_dir(&path)
        {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    total
}

/// The cache entries (their directories) and how many ready copies each has.
fn entries(sandbox: &Sandbox) -> Vec<(PathBuf, usize)> {
    fs::read_dir(sandbox.pgtmp_dir.join("cache"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.join("entry").is_dir())
                .map(|p| {
                    let ready = fs::read_dir(&p)
                        .map(|d| {
                            d.flatten()
                                .filter(|e| e.file_name().to_string_lossy().starts_with("ready."))
                                .count()
                        })
                        .unwrap_or(0);
                    (p, ready)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn ready_pool_entries(sandbox: &Sandbox) -> usize {
    fs::read_dir(sandbox.pgtmp_dir.join("pool"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|pool| {
            fs::read_dir(pool.path())
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.file_name().to_string_lossy().starts_with("ready."))
                        .count()
                })
                .unwrap_or(0)
        })
        .sum()
}

/// Two schema cache entries, each with its ready copy; a cluster running from the first, a
/// kept one stopped. A budget just under what is prepared removes the ready copy of the entry
/// used least recently and nothing else; a budget of nothing removes every cache entry and
/// copy, while the running cluster answers, the kept one stays and the pool keeps its entries.
/// `list` and `doctor` show it all by kind.
fn budget_evicts_least_recently_used_cache_only(invoker: &Invoker) {
    let sandbox = Sandbox::with_pool(invoker, 1).cold();
    let old = invokers_file(&sandbox, "old.sql", "create table old (x int);\n");
    let new = invokers_file(&sandbox, "new.sql", "create table new (x int);\n");
    let old = old.to_str().unwrap();
    let new = new.to_str().unwrap();
    let running = sandbox.start(&["-w", UNTIL_STOPPED, "-f", old]);
    let kept = sandbox.start(&["-k", "-w", UNTIL_STOPPED, "-f", new]);
    let ready = |sandbox: &Sandbox| {
        let found = entries(sandbox);
        found.len() == 2 && found.iter().all(|(_, copies)| *copies == 1)
    };
    assert!(
        wait_until(Duration::from_secs(120), || ready(&sandbox)),
        "two cache entries with a ready copy each: {:?}",
        entries(&sandbox)
    );
    // The entry of old.sql is used again later: new.sql's is the least recently used.
    std::thread::sleep(Duration::from_millis(1100));
    let again = sandbox.start(&["-w", UNTIL_STOPPED, "-f", old]);
    assert!(
        wait_until(Duration::from_secs(120), || ready(&sandbox)),
        "the ready copy taken is replaced: {:?}",
        entries(&sandbox)
    );
    let out = sandbox.run(&["stop", &kept]);
    assert!(out.success(), "{out}");
    let kept_dir = sandbox
        .run(&["list", "--all", "--json"])
        .stdout
        .lines()
        .find(|l| l.contains("\"dir\""))
        .map(|l| l.trim().to_string());
    let pool_before = ready_pool_entries(&sandbox);
    let kept_stays = || {
        let listed = sandbox.run(&["list", "--all", "--json"]).stdout;
        assert!(
            kept_dir
                .as_ref()
                .is_some_and(|d| listed.contains(d.as_str())),
            "the kept cluster stays: {listed}"
        );
    };

    let listed = sandbox.run(&["list", "--all"]);
    let footer = listed.stdout.lines().last().unwrap_or("").to_string();
    assert!(
        footer.starts_with("disk: running ")
            && footer.contains("schema cache ")
            && footer.contains("(2 entries)")
            && footer.contains("ready copies ")
            && footer.contains("PGTMP_DISK_MAX 2.0G"),
        "list's footer shows the disk by kind:\n{listed}"
    );

    let prepared = du(&sandbox.pgtmp_dir.join("pool")) + du(&sandbox.pgtmp_dir.join("cache"));
    let budget = (prepared - 4096).to_string();
    let mut gc = sandbox.pgtmp();
    gc.env("PGTMP_DISK_MAX", &budget).arg("gc");
    let out = run(&mut gc, PGTMP_LIMIT);
    assert!(out.success(), "{out}");
    let removed: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("removed"))
        .collect();
    let newest = entries(&sandbox)
        .into_iter()
        .map(|(p, copies)| (p.clone(), copies, fs::read_dir(p.join("entry")).is_ok()))
        .collect::<Vec<_>>();
    assert_eq!(removed.len(), 1, "one ready copy is enough:\n{out}");
    assert!(removed[0].contains("ready copy"), "{out}");
    assert_eq!(newest.len(), 2, "both entries stay: {newest:?}\n{out}");
    assert_eq!(
        newest.iter().map(|(_, copies, _)| copies).sum::<usize>(),
        1,
        "{newest:?}"
    );
    let last_use = |entry: &Path| {
        let used = entry.join("used");
        let path = if used.exists() {
            used
        } else {
            entry.to_path_buf()
        };
        fs::metadata(path).and_then(|m| m.modified()).unwrap()
    };
    let (with, without): (Vec<_>, Vec<_>) = newest.iter().partition(|(_, copies, _)| *copies == 1);
    assert!(
        last_use(&with[0].0) > last_use(&without[0].0),
        "the ready copy of the entry used least recently went: {removed:?}"
    );

    let mut doctor = sandbox.pgtmp();
    doctor.env("PGTMP_DISK_MAX", "1K").arg("doctor");
    let out = run(&mut doctor, PGTMP_LIMIT);
    assert!(
        out.stdout.lines().any(|l| l.starts_with("warn")
            && l.contains("disk: ")
            && l.contains("over the budget")),
        "doctor warns of a prepared state over PGTMP_DISK_MAX:\n{out}"
    );
    let mut gc = sandbox.pgtmp();
    gc.env("PGTMP_DISK_MAX", "0").arg("gc");
    let out = run(&mut gc, PGTMP_LIMIT);
    assert!(out.success(), "{out}");
    assert!(
        entries(&sandbox).is_empty(),
        "every cache entry goes:\n{out}"
    );
    for url in [&running, &again] {
        assert_eq!(
            sandbox.psql(url, "select 1"),
            "1",
            "a running cluster is untouched"
        );
    }
    assert_eq!(
        ready_pool_entries(&sandbox),
        pool_before,
        "the pool is not evicted:\n{out}"
    );
    kept_stays();
    let reloaded = sandbox.start(&["-w", UNTIL_STOPPED, "-f", new]);
    assert_eq!(
        sandbox.psql(&reloaded, "select count(*) from new"),
        "0",
        "a start without its cache entry loads the files again"
    );

    // gc --all: everything prepared goes, the clusters stay, and a start prepares anew.
    assert!(!pools(&sandbox).is_empty());
    assert!(
        wait_until(Duration::from_secs(60), || {
            let out = sandbox.run(&["gc", "--all"]);
            out.success() && pools(&sandbox).is_empty() && entries(&sandbox).is_empty()
        }),
        "gc --all removes the pool and the cache once their background work is done: {:?} {:?}",
        pools(&sandbox),
        entries(&sandbox)
    );
    for url in [&running, &again, &reloaded] {
        assert_eq!(
            sandbox.psql(url, "select 1"),
            "1",
            "a running cluster is untouched"
        );
    }
    kept_stays();
    let fresh = sandbox.start(&["-w", UNTIL_STOPPED]);
    assert_eq!(sandbox.psql(&fresh, "select 1"), "1");
}

/// The pool directories.
fn pools(sandbox: &Sandbox) -> Vec<PathBuf> {
    fs::read_dir(sandbox.pgtmp_dir.join("pool"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}
