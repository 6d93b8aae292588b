//! Inputs that must not hang, panic or leave anything: `-f` naming something other than a
//! regular file (a FIFO would block forever, /dev/zero never end) fails with one line naming
//! the problem and the fix; nothing is left in PGTMP_DIR.

#[macro_use]
mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

both_invokers!(
    schema_files_must_be_regular_files,
    a_symlink_to_a_schema_file_is_fine,
);

/// Far below PGTMP_LIMIT: a FIFO that blocked the start would show as a timeout.
const REFUSAL_LIMIT: Duration = Duration::from_secs(30);

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A FIFO, /dev/zero and a directory given to `-f`: exit 2 at once, one line naming the file
/// and saying what to pass instead, and nothing made.
fn schema_files_must_be_regular_files(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let fifo = sandbox.path("schema.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    std::os::unix::fs::chown(&fifo, Some(invoker.uid), Some(invoker.gid)).unwrap();
    let dir = sandbox.path("schema.d");
    fs::create_dir(&dir).unwrap();
    let cases: [(PathBuf, &str); 3] = [
        (fifo, "a FIFO"),
        (PathBuf::from("/dev/zero"), "a device"),
        (dir, "a directory"),
    ];
    for (path, kind) in &cases {
        let context = format!("-f {}", path.display());
        let out = run(
            sandbox.pgtmp().args(["-w", "30", "-f", arg(path)]),
            REFUSAL_LIMIT,
        );
        let line = check_failed(&out, 2);
        assert!(
            line.contains(arg(path))
                && line.contains(kind)
                && line.contains("not a regular file")
                && line.contains("pass an SQL file"),
            "{context}: {line}"
        );
        sandbox.assert_nothing_left(&context);
    }
}

/// A symlink the user gives that leads to a regular file is read like the file.
fn a_symlink_to_a_schema_file_is_fine(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let file = sandbox.path("schema.sql");
    fs::write(&file, "create table linked (id int);\n").unwrap();
    let link = sandbox.path("link.sql");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let url = sandbox.start(&["-w", "30", "-f", arg(&link)]);
    assert_eq!(
        sandbox.psql(&url, "select count(*) from linked"),
        "0",
        "the file behind the symlink was not loaded"
    );
    let out = sandbox.run(&["stop", &url]);
    assert!(out.success(), "{out}");
}
