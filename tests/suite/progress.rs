//! The progress line: shown on a terminal while a start runs initdb in the foreground, erased
//! when done; never shown when stderr is not a terminal (the start contract stays one line on
//! stdout and nothing on stderr).

use crate::common::*;

both_invokers!(progress_on_a_terminal, no_progress_off_a_terminal);

/// Runs `pgtmp ARGS` on a pseudo-terminal (util-linux `script`) and returns what it showed.
fn on_terminal(sandbox: &Sandbox, args: &str) -> String {
    let command = format!("\"$PGTMP\" {args}");
    let mut cmd = sandbox.tool("script");
    cmd.args(["-qec", &command, "/dev/null"]);
    let out = run(&mut cmd, PGTMP_LIMIT);
    assert!(out.success(), "{out}");
    out.stdout
}

fn progress_on_a_terminal(invoker: &Invoker) {
    // Pool size 0: nothing is prepared, so the start runs initdb in the foreground.
    let sandbox = Sandbox::new(invoker).cold();
    let shown = on_terminal(&sandbox, &format!("-w {UNTIL_STOPPED}"));
    let line = "pgtmp: initializing a data directory (nothing prepared yet)...";
    let at = shown
        .find(line)
        .unwrap_or_else(|| panic!("no progress line on the terminal: {shown:?}"));
    let rest = &shown[at + line.len()..];
    // Erased (carriage return, erase to end of line) before the URL is printed.
    assert!(
        rest.starts_with("\r\u{1b}[K") && rest[4..].starts_with("postgresql://"),
        "the progress line was not erased before the URL: {shown:?}"
    );
    assert_eq!(rest[4..].lines().count(), 1, "{shown:?}");
    // -d runs initdb in the foreground too.
    let dir = sandbox.path("d");
    let shown = on_terminal(
        &sandbox,
        &format!("-w {UNTIL_STOPPED} -d {}", dir.display()),
    );
    assert!(
        shown.contains(&format!(
            "pgtmp: initializing {}...\r\u{1b}[K",
            dir.display()
        )),
        "{shown:?}"
    );
    // Loading a schema file says so (it may be a large dump), and is erased too.
    std::fs::write(sandbox.path("schema.sql"), "create table t (i int);\n").unwrap();
    let schema = sandbox.path("schema.sql");
    let shown = on_terminal(
        &sandbox,
        &format!("-w {UNTIL_STOPPED} --no-cache -f {}", schema.display()),
    );
    assert!(
        shown.contains(&format!(
            "pgtmp: loading {} (1 KB)...\r\u{1b}[K",
            schema.display()
        )),
        "{shown:?}"
    );
    // gc says what it is doing while it sweeps, and prints its results after.
    let shown = on_terminal(&sandbox, "gc");
    assert!(
        shown.starts_with(&format!("pgtmp: sweeping {}", sandbox.pgtmp_dir.display()))
            && shown.contains("...\r\u{1b}[K"),
        "{shown:?}"
    );
}

fn no_progress_off_a_terminal(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let out = sandbox.run(&["-w", UNTIL_STOPPED]);
    check_started(&out, invoker);
    let dir = sandbox.path("d");
    let out = sandbox.run(&["-w", UNTIL_STOPPED, "-d", dir.to_str().unwrap()]);
    check_started(&out, invoker);
    let out = sandbox.run(&["gc"]);
    assert!(out.success() && out.stderr.is_empty(), "{out}");
}
