//! Security: what another account (or root's server account) plants where pgtmp keeps its
//! state cannot turn pgtmp against its user. Symlinks are refused, never followed; a state
//! directory someone else made, or one others can write, is never adopted; a lost mkdir race
//! is detected. Each test checks that what was planted kept its owner, mode and contents.

use crate::common::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

both_invokers!(
    symlinked_state_dir_is_refused,
    symlinked_dir_option_is_refused,
    foreign_state_dir_is_never_adopted,
    state_dir_open_to_others_is_refused,
    tmpdir_without_sticky_bit_is_refused,
    lost_mkdir_race_is_detected,
    dangling_symlink_as_pgtmp_dir,
);

/// pgtmp with its state directory chosen automatically under `tmpdir` (no PGTMP_DIR).
fn auto_pgtmp(sandbox: &Sandbox, tmpdir: &Path) -> Command {
    let mut cmd = sandbox.pgtmp();
    cmd.env_remove("PGTMP_DIR").env("TMPDIR", tmpdir);
    cmd
}

/// What pgtmp makes in `tmpdir` for the automatic state directory of `invoker`, and so where
/// another account could plant something: the state directory itself, or for root the
/// directory of root's own that holds one state directory per server account.
fn auto_state_dir(tmpdir: &Path, invoker: &Invoker) -> PathBuf {
    if invoker.is_root() {
        tmpdir.join("pgtmp-root")
    } else {
        tmpdir.join(format!("pgtmp-{}", invoker.uid))
    }
}

/// The owner and mode pgtmp gives what `auto_state_dir` names: the server account's and 0700,
/// or for root's pgtmp-root/ root's and 0711.
fn auto_owner_and_mode(invoker: &Invoker) -> (u32, u32) {
    if invoker.is_root() {
        (0, 0o711)
    } else {
        (invoker.server_account().1, 0o700)
    }
}

/// Owner, mode and entries of a path (not following a symlink at it).
fn snapshot(path: &Path) -> (u32, u32, Vec<String>) {
    let meta = fs::symlink_metadata(path).unwrap();
    let entries = if meta.is_dir() {
        let mut names: Vec<String> = fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    } else {
        Vec::new()
    };
    (meta.uid(), meta.mode() & 0o7777, entries)
}

/// An empty directory of `invoker`'s own with mode 0755: what a planted symlink points at.
fn own_empty_dir(sandbox: &Sandbox, name: &str) -> PathBuf {
    let dir = sandbox.path(name);
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&dir, Some(sandbox.invoker.uid), Some(sandbox.invoker.gid)).unwrap();
    dir
}

/// The attacker account, or None (reported) where the suite cannot switch accounts.
fn attacker() -> Option<Invoker> {
    let attacker = Invoker::attacker();
    if attacker.is_none() {
        cannot_run_here("a second account to attack with needs the suite to run as root");
    }
    attacker
}

/// Runs a shell command as `who`, which must succeed.
fn as_account(who: &Invoker, script: &str) {
    let out = run(who.command("sh").args(["-c", script]), PSQL_LIMIT);
    assert!(out.success(), "`{script}` as {who} failed:\n{out}");
}

/// The state directory's path is a symlink to an empty directory (root's own, for root): the
/// start refuses it and hands nothing to the server account. For root the symlink is made by
/// the server account itself, which owns the state directory's place.
fn symlinked_state_dir_is_refused(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let target = own_empty_dir(&sandbox, "target");
    let before = snapshot(&target);
    let link = auto_state_dir(&sandbox.root, invoker);
    symlink(&target, &link).unwrap();
    let (_, server_uid) = invoker.server_account();
    std::os::unix::fs::lchown(&link, Some(server_uid), None).unwrap();
    let out = run(
        auto_pgtmp(&sandbox, &sandbox.root).args(["-w", "5"]),
        PGTMP_LIMIT,
    );
    let line = check_failed(&out, 1);
    assert!(line.contains("symbolic link"), "{line}");
    assert!(
        line.contains(&link.display().to_string()),
        "names the link: {line}"
    );
    assert_eq!(snapshot(&target), before, "the symlink's target changed");
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let doctor = run(
        auto_pgtmp(&sandbox, &sandbox.root).arg("doctor"),
        PGTMP_LIMIT,
    );
    assert_eq!(doctor.code(), Some(1), "{doctor}");
    assert!(
        doctor.stdout.contains("FAIL  PGTMP_DIR") && doctor.stdout.contains("symbolic link"),
        "{doctor}"
    );
    assert_eq!(snapshot(&target), before, "doctor changed the target");
}

/// `-d` names a symlink to an empty directory: refused, and the target keeps its owner and
/// mode. As root, an empty directory of another account's is not handed over either.
fn symlinked_dir_option_is_refused(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let target = own_empty_dir(&sandbox, "target");
    let before = snapshot(&target);
    let link = sandbox.path("link");
    symlink(&target, &link).unwrap();
    let out = sandbox.run(&["-w", "5", "-d", link.to_str().unwrap()]);
    let line = check_failed(&out, 1);
    assert!(line.contains("symbolic link"), "{line}");
    assert_eq!(snapshot(&target), before, "the symlink's target changed");
    sandbox.assert_nothing_left("after a refused -d symlink");
    if !invoker.is_root() {
        return;
    }
    let Some(attacker) = attacker() else { return };
    let foreign = sandbox.path("foreign");
    as_account(
        &attacker,
        &format!("mkdir -m 777 {0} && chmod 777 {0}", foreign.display()),
    );
    let before = snapshot(&foreign);
    let out = sandbox.run(&["-w", "5", "-d", foreign.to_str().unwrap()]);
    let line = check_failed(&out, 1);
    assert!(line.contains("belongs to uid"), "{line}");
    assert_eq!(
        snapshot(&foreign),
        before,
        "root took another account's directory"
    );
}

/// Another account made the state directory first, empty and world-writable: pgtmp refuses
/// it (it would let that account swap the socket) and leaves it exactly as it was.
fn foreign_state_dir_is_never_adopted(invoker: &Invoker) {
    let Some(attacker) = attacker() else { return };
    let sandbox = Sandbox::new(invoker);
    let planted = auto_state_dir(&sandbox.root, invoker);
    as_account(
        &attacker,
        &format!("mkdir {0} && chmod 777 {0}", planted.display()),
    );
    let before = snapshot(&planted);
    let out = run(
        auto_pgtmp(&sandbox, &sandbox.root).args(["-w", "5"]),
        PGTMP_LIMIT,
    );
    let line = check_failed(&out, 1);
    assert!(
        line.contains(&format!("belongs to uid {}", attacker.uid)),
        "{line}"
    );
    assert_eq!(snapshot(&planted), before, "the planted directory changed");
}

/// A PGTMP_DIR of the invoker's own (root's, for root) left open to everyone: refused with
/// the fix, and doctor fails it too.
fn state_dir_open_to_others_is_refused(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    fs::create_dir(&sandbox.pgtmp_dir).unwrap();
    fs::set_permissions(&sandbox.pgtmp_dir, fs::Permissions::from_mode(0o777)).unwrap();
    let (_, server_uid) = invoker.server_account();
    let owner = if invoker.is_root() { 0 } else { server_uid };
    std::os::unix::fs::chown(&sandbox.pgtmp_dir, Some(owner), None).unwrap();
    let before = snapshot(&sandbox.pgtmp_dir);
    let line = check_failed(&sandbox.run(&["-w", "5"]), 1);
    assert!(line.contains("chmod 700"), "{line}");
    assert_eq!(snapshot(&sandbox.pgtmp_dir), before);
    let doctor = sandbox.run(&["doctor"]);
    assert_eq!(doctor.code(), Some(1), "{doctor}");
    assert!(
        doctor.stdout.contains("FAIL  PGTMP_DIR") && doctor.stdout.contains("chmod 700"),
        "{doctor}"
    );
}

/// TMPDIR is world-writable without the sticky bit, so anyone could rename the state
/// directory made in it and put their own in its place: refused, and doctor says so.
fn tmpdir_without_sticky_bit_is_refused(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let tmpdir = own_empty_dir(&sandbox, "tmp");
    fs::set_permissions(&tmpdir, fs::Permissions::from_mode(0o777)).unwrap();
    let out = run(auto_pgtmp(&sandbox, &tmpdir).args(["-w", "5"]), PGTMP_LIMIT);
    let line = check_failed(&out, 1);
    assert!(line.contains("sticky"), "{line}");
    assert_eq!(
        snapshot(&tmpdir).2,
        Vec::<String>::new(),
        "something was made in TMPDIR"
    );
    let doctor = run(auto_pgtmp(&sandbox, &tmpdir).arg("doctor"), PGTMP_LIMIT);
    assert_eq!(doctor.code(), Some(1), "{doctor}");
    assert!(
        doctor.stdout.contains("FAIL") && doctor.stdout.contains("sticky"),
        "{doctor}"
    );
    // With the sticky bit, as /tmp has, it is fine.
    fs::set_permissions(&tmpdir, fs::Permissions::from_mode(0o1777)).unwrap();
    let out = run(auto_pgtmp(&sandbox, &tmpdir).args(["-w", "5"]), PGTMP_LIMIT);
    let url = check_started(&out, invoker);
    assert_eq!(sandbox.psql(&url, "select 1"), "1");
}

/// Another account keeps making and removing the state directory while the invoker's first
/// start makes it: the start either wins, and its directory is the server account's and
/// private, or fails cleanly. It never uses a directory the attacker made.
fn lost_mkdir_race_is_detected(invoker: &Invoker) {
    let Some(attacker) = attacker() else { return };
    for round in 0..4 {
        let sandbox = Sandbox::new(invoker);
        let target = auto_state_dir(&sandbox.root, invoker);
        let script = format!(
            "while :; do mkdir {0} 2>/dev/null && chmod 777 {0}; rmdir {0} 2>/dev/null; done",
            target.display()
        );
        let mut racer = attacker
            .command("sh")
            .args(["-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = run(
            auto_pgtmp(&sandbox, &sandbox.root).args(["-w", "5"]),
            PGTMP_LIMIT,
        );
        racer.kill().unwrap();
        racer.wait().unwrap();
        if out.success() {
            let url = check_started(&out, invoker);
            let (uid, mode, _) = snapshot(&target);
            let (owner, private) = auto_owner_and_mode(invoker);
            assert_eq!(uid, owner, "round {round}: {target:?} is not uid {owner}'s");
            assert_eq!(mode & 0o777, private, "round {round}: mode {mode:o}");
            assert_eq!(sandbox.psql(&url, "select 1"), "1");
        } else {
            let line = check_failed(&out, 1);
            eprintln!("round {round}: refused: {line}");
            if let Ok(meta) = fs::symlink_metadata(&target) {
                assert_ne!(
                    meta.uid(),
                    auto_owner_and_mode(invoker).0,
                    "round {round}: a failed start left its directory"
                );
            }
        }
    }
}

/// A PGTMP_DIR that is a dangling symlink gets an error that says so (not "File exists").
fn dangling_symlink_as_pgtmp_dir(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    symlink(sandbox.path("nowhere"), &sandbox.pgtmp_dir).unwrap();
    let line = check_failed(&sandbox.run(&["-w", "5"]), 1);
    assert!(line.contains("symbolic link"), "{line}");
    assert!(
        !sandbox.path("nowhere").exists(),
        "the link's target was created"
    );
}
