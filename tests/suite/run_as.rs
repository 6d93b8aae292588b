//! Root with several server accounts (`--run-as`): one state directory per account in root's
//! own `pgtmp-root/`, starts as any account in any order, and `list`, `stop`, `stop --all` and
//! `gc` finding all of root's clusters without `--run-as` being repeated. Root only.

use crate::common::*;
use nix::sys::signal::Signal;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The second server account (besides `postgres`): a dedicated one, so that the suite's
/// ordinary invoker is never a server account of root's meanwhile.
const SECOND: &str = "pgtmp-runas";

/// An account's name and uid.
type Account = (String, u32);

/// The sandbox, the default server account and the second one, when the suite runs as root.
fn setup() -> Option<(Sandbox, Account, Account)> {
    let me = Invoker::current();
    if !me.is_root() {
        cannot_run_here("only root has server accounts to choose with --run-as");
        return None;
    }
    let first = me.server_account();
    let second = ordinary_account(SECOND);
    Some((Sandbox::new(&me), first, second))
}

/// pgtmp with the state directory placed automatically (no PGTMP_DIR), under the sandbox;
/// no background sweep after a start, which could clean up before `gc` is asked to.
fn auto(sandbox: &Sandbox, args: &[&str]) -> Outcome {
    let mut cmd = sandbox.pgtmp();
    cmd.env_remove("PGTMP_DIR")
        .env("PGTMP_NO_SWEEP", "1")
        .env("TMPDIR", &sandbox.root)
        .env_remove("PGTMP_RUN_AS")
        .args(args);
    run(&mut cmd, PGTMP_LIMIT)
}

fn started(out: &Outcome) -> String {
    check_started(out, &Invoker::current())
}

/// The directory of a cluster from its socket URL.
fn dir_of(url: &str) -> PathBuf {
    parse_socket_url(url).dir
}

fn listed(sandbox: &Sandbox, run: impl Fn(&Sandbox, &[&str]) -> Outcome) -> Vec<PathBuf> {
    let out = run(sandbox, &["list", "--json"]);
    assert!(out.success(), "pgtmp list failed:\n{out}");
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("no JSON ({e}):\n{out}"));
    let mut dirs: Vec<PathBuf> = entries
        .iter()
        .map(|e| PathBuf::from(e["dir"].as_str().expect("dir")))
        .collect();
    dirs.sort();
    dirs
}

fn quiet_success(out: &Outcome, what: &str) {
    assert!(
        out.success() && out.stderr.is_empty(),
        "{what} should succeed quietly:\n{out}"
    );
}

fn owner(path: &Path) -> u32 {
    std::fs::metadata(path).map(|m| m.uid()).unwrap_or(u32::MAX)
}

#[test]
fn root_starts_as_any_account_in_any_order_and_finds_them_all() {
    let Some((sandbox, (first, first_uid), (second, second_uid))) = setup() else {
        return;
    };
    let states = sandbox.root.join("pgtmp-root");
    let a = started(&auto(&sandbox, &["-w", UNTIL_STOPPED]));
    let b = started(&auto(&sandbox, &["--run-as", &second, "-w", UNTIL_STOPPED]));
    let c = started(&auto(&sandbox, &["--run-as", &first, "-w", UNTIL_STOPPED]));
    let t = started(&auto(
        &sandbox,
        &["-t", "--run-as", &second, "-w", UNTIL_STOPPED],
    ));
    // One private state directory per account in root's own directory, which nobody can list.
    let meta = std::fs::metadata(&states).expect("pgtmp-root");
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o711));
    for (name, uid) in [(&first, first_uid), (&second, second_uid)] {
        let dir = states.join(name);
        let meta = std::fs::metadata(&dir).expect("state directory");
        assert_eq!((meta.uid(), meta.mode() & 0o777), (uid, 0o700), "{dir:?}");
    }
    assert_eq!(dir_of(&a).parent(), Some(states.join(&first).as_path()));
    assert_eq!(dir_of(&b).parent(), Some(states.join(&second).as_path()));
    assert_eq!(owner(&dir_of(&b)), second_uid);
    for url in [&a, &b, &c, &t] {
        assert_eq!(sandbox.psql(url, "select current_user"), "root");
    }
    let all = listed(&sandbox, auto);
    assert_eq!(
        all.len(),
        4,
        "list shows every server account's clusters: {all:?}"
    );

    // Stopped by URL (socket and TCP) and by directory, without naming the account again.
    let c_dir = dir_of(&c);
    for args in [
        vec!["stop", b.as_str()],
        vec!["stop", t.as_str()],
        vec!["stop", "-d", c_dir.to_str().unwrap()],
    ] {
        quiet_success(&auto(&sandbox, &args), &format!("pgtmp {args:?}"));
    }
    assert_eq!(listed(&sandbox, auto), [dir_of(&a)]);

    // stop --all reaches every account's clusters.
    let d = started(&auto(&sandbox, &["--run-as", &second, "-w", UNTIL_STOPPED]));
    assert_eq!(listed(&sandbox, auto).len(), 2);
    quiet_success(&auto(&sandbox, &["stop", "--all"]), "pgtmp stop --all");
    assert!(listed(&sandbox, auto).is_empty());
    for url in [&a, &d] {
        assert!(!dir_of(url).exists(), "{url} still has its directory");
    }
}

#[test]
fn gc_finds_what_dead_runs_left_under_every_server_account() {
    let Some((sandbox, _, (second, _))) = setup() else {
        return;
    };
    let url = started(&auto(&sandbox, &["--run-as", &second, "-w", UNTIL_STOPPED]));
    let dir = dir_of(&url);
    let watchdog = watchdog_pid(&dir).expect("watchdog pid");
    let postmaster = postmaster_pid(&dir).expect("postmaster pid");
    signal(watchdog, Signal::SIGKILL);
    assert!(wait_until(Duration::from_secs(10), || !alive(watchdog)));
    // Also a live cluster of the default account, which gc leaves alone.
    let kept = started(&auto(&sandbox, &["-w", UNTIL_STOPPED]));
    let out = auto(&sandbox, &["gc"]);
    quiet_success(&out, "pgtmp gc");
    assert!(
        out.stdout.contains(dir.to_str().unwrap()),
        "gc should report what it cleaned in {}'s state:\n{out}",
        second
    );
    assert!(wait_until(Duration::from_secs(10), || !alive(postmaster)));
    assert!(!dir.exists(), "gc left {dir:?}");
    assert_eq!(sandbox.psql(&kept, "select 1"), "1");
}

#[test]
fn a_private_pgtmp_dir_keeps_the_account_root_handed_it_to() {
    let Some((sandbox, _, (second, second_uid))) = setup() else {
        return;
    };
    // PGTMP_DIR set, as the sandbox does: handed to the second account by the first start.
    let url = sandbox.start(&["--run-as", &second, "-w", UNTIL_STOPPED]);
    assert_eq!(owner(&sandbox.pgtmp_dir), second_uid);
    // Later commands without --run-as use the account that owns it.
    let again = sandbox.start(&["-w", UNTIL_STOPPED]);
    assert_eq!(owner(&dir_of(&again)), second_uid);
    assert_eq!(listed(&sandbox, |s, a| s.run(a)), {
        let mut both = vec![dir_of(&url), dir_of(&again)];
        both.sort();
        both
    });
    quiet_success(&sandbox.run(&["stop", &url]), "pgtmp stop URL");
    quiet_success(&sandbox.run(&["stop", "--all"]), "pgtmp stop --all");
    quiet_success(&sandbox.run(&["gc"]), "pgtmp gc");
    assert!(listed(&sandbox, |s, a| s.run(a)).is_empty());
    // Naming another account for it stays an error that says whose it is.
    let out = sandbox.run(&["--run-as", "postgres", "-w", UNTIL_STOPPED]);
    let line = check_failed(&out, 1);
    assert!(
        line.contains(&format!("belongs to uid {second_uid}")),
        "{line}"
    );
}
