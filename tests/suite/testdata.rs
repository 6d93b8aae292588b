//! Test data: `-f` schema files, `--now`, `pgtmp clone`, `pgtmp schema` and the schema cache.

use crate::common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

both_invokers!(
    schema_files_load_in_order,
    pg_dump_file_loads,
    files_into_a_new_dir_only,
    relative_include_is_cached,
    broken_file_leaves_nothing,
    broken_included_file_is_named,
    broken_file_with_keep_stays,
    unreadable_file_is_refused,
    now_fixed_and_clock,
    invalid_now_leaves_nothing,
    clone_while_connected,
    clone_without_files,
    a_clone_says_why_it_waited_and_the_stock_follows_demand,
    parallel_first_clones_all_succeed,
    schema_url_search_path,
    schema_jdbc_form_sets_current_schema,
    clone_takes_every_printed_form,
    cache_hit_and_change_miss,
    concurrent_first_starts_build_one_entry,
);

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

const SCHEMA: &str = "\
create table items (id serial primary key, name text not null);
\\set second 'two'
insert into items (name) values ('one'), (:'second');
";
const FIXTURES: &str = "insert into items (name) select 'three' from items where id = 2;\n";

/// Files load in order with psql semantics (meta-commands, variables), before the URL is
/// printed; `test` stays the user's, and the template clones come from refuses connections.
fn schema_files_load_in_order(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let schema = invokers_file(&sandbox, "schema.sql", SCHEMA);
    let fixtures = invokers_file(&sandbox, "fixtures.sql", FIXTURES);
    let url = sandbox.start(&[
        "-w",
        UNTIL_STOPPED,
        "-f",
        arg(&schema),
        "-f",
        arg(&fixtures),
    ]);
    assert_eq!(
        sandbox.psql(&url, "select string_agg(name, ',' order by id) from items"),
        "one,two,three"
    );
    assert_eq!(
        sandbox.psql(
            &url,
            "select pg_get_userbyid(datdba), (select pg_get_userbyid(relowner) from pg_class \
             where relname = 'items') from pg_database where datname = 'test'"
        ),
        format!("{0}|{0}", invoker.name),
        "test and what the files made belong to the user"
    );
    assert_eq!(
        sandbox.psql(
            &url,
            "select datallowconn from pg_database where datname = 'pgtmp_template'"
        ),
        "f"
    );
    // Loading the files in the other order fails on the second line's dependency.
    let out = sandbox.run(&[
        "-w",
        UNTIL_STOPPED,
        "--no-cache",
        "-f",
        arg(&fixtures),
        "-f",
        arg(&schema),
    ]);
    let line = check_failed(&out, 1);
    assert!(line.contains("fixtures.sql:1:"), "{line}");
}

/// A plain pg_dump file loads.
fn pg_dump_file_loads(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let schema = invokers_file(&sandbox, "schema.sql", SCHEMA);
    let url = sandbox.start(&["-w", UNTIL_STOPPED, "-f", arg(&schema)]);
    let dump = sandbox.path("dump.sql");
    let mut cmd = invoker.command(client("pg_dump"));
    cmd.arg("-f").arg(&dump).arg(&url);
    let out = run(&mut cmd, PSQL_LIMIT);
    if test_bindir().is_some() && out.stderr.contains("server version mismatch") {
        return cannot_run_here(&format!(
            "pg_dump on PATH refuses PGTMP_TEST_BINDIR's newer server: {}",
            out.stderr.trim().replace('\n', "; ")
        ));
    }
    assert!(out.success(), "pg_dump:\n{out}");
    let copy = sandbox.start(&["-w", UNTIL_STOPPED, "-f", arg(&dump)]);
    assert_eq!(
        sandbox.psql(&copy, "select string_agg(name, ',' order by id) from items"),
        "one,two"
    );
}

/// With -d the files load into a new directory (uncached); an existing cluster is refused.
fn files_into_a_new_dir_only(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let schema = invokers_file(&sandbox, "schema.sql", SCHEMA);
    let dir = sandbox.path("kept");
    let url = sandbox.start(&[
        "-k",
        "-w",
        UNTIL_STOPPED,
        "-d",
        arg(&dir),
        "-f",
        arg(&schema),
    ]);
    assert_eq!(sandbox.psql(&url, "select count(*) from items"), "2");
    assert!(
        !sandbox.pgtmp_dir.join("cache").exists(),
        "a -d cluster is not cached"
    );
    let stop = sandbox.run(&["stop", &url]);
    assert!(stop.success(), "{stop}");
    let out = sandbox.run(&["-w", UNTIL_STOPPED, "-d", arg(&dir), "-f", arg(&schema)]);
    let line = check_failed(&out, 2);
    assert!(line.contains("existing"), "{line}");
    let again = sandbox.start(&["-w", UNTIL_STOPPED, "-d", arg(&dir)]);
    assert_eq!(sandbox.psql(&again, "select count(*) from items"), "2");
}

/// `\i` in a file given by a relative path reads from the file's directory, in the
/// foreground load and in the cache's background build alike.
fn relative_include_is_cached(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    fs::create_dir(sandbox.path("db")).unwrap();
    let inv = &sandbox.invoker;
    std::os::unix::fs::chown(sandbox.path("db"), Some(inv.uid), Some(inv.gid)).unwrap();
    invokers_file(&sandbox, "db/main.sql", "\\i part.sql\n");
    // psql reads included files itself: as the server account when invoked by root.
    let part = invokers_file(&sandbox, "db/part.sql", SCHEMA);
    fs::set_permissions(&part, fs::Permissions::from_mode(0o644)).unwrap();
    let start = || {
        let mut cmd = sandbox.pgtmp();
        cmd.current_dir(&sandbox.root)
            .args(["-w", UNTIL_STOPPED, "-f", "db/main.sql"]);
        check_started(&run(&mut cmd, PGTMP_LIMIT), invoker)
    };
    assert_eq!(sandbox.psql(&start(), "select count(*) from items"), "2");
    assert!(
        wait_until(Duration::from_secs(60), || cache_entries(&sandbox) == 1),
        "the cache entry was not built"
    );
    assert_eq!(sandbox.psql(&start(), "select count(*) from items"), "2");
}

/// A failing file: exit 1, one line naming the file, the line and the server's message, and
/// nothing left behind (the watchdog stopped the server and removed its directory).
fn broken_file_leaves_nothing(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let good = invokers_file(&sandbox, "good.sql", SCHEMA);
    let bad = invokers_file(
        &sandbox,
        "bad.sql",
        "create table a (x int);\n\nselect * from no_such_table;\ncreate table b (x int);\n",
    );
    let out = sandbox.run(&["-w", UNTIL_STOPPED, "-f", arg(&good), "-f", arg(&bad)]);
    let line = check_failed(&out, 1);
    assert!(
        line.contains(&format!("{}:3:", bad.display()))
            && line.contains("relation \"no_such_table\" does not exist"),
        "the error names file, line and message: {line}"
    );
    sandbox.assert_nothing_left("a broken -f file");
}

/// An error in a file pulled in with `\ir` names that file (as a path from where pgtmp ran)
/// and its line, like one in a `-f` file; an `\i` of a path relative to where pgtmp ran
/// (psql resolves it from the file's directory) hints at `\ir`.
fn broken_included_file_is_named(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let inv = &sandbox.invoker;
    for dir in ["db", "db/sub"] {
        fs::create_dir(sandbox.path(dir)).unwrap();
        std::os::unix::fs::chown(sandbox.path(dir), Some(inv.uid), Some(inv.gid)).unwrap();
    }
    invokers_file(&sandbox, "db/main.sql", "select 1;\n\\ir sub/bad.sql\n");
    let bad = invokers_file(
        &sandbox,
        "db/sub/bad.sql",
        "select 1;\n\nselect * from nope;\n",
    );
    // psql reads included files itself: as the server account when invoked by root.
    fs::set_permissions(&bad, fs::Permissions::from_mode(0o644)).unwrap();
    invokers_file(&sandbox, "db/rooted.sql", "\\i db/sub/bad.sql\n");
    let run = |file: &str| {
        let mut cmd = sandbox.pgtmp();
        cmd.current_dir(&sandbox.root)
            .args(["-w", UNTIL_STOPPED, "-f", file]);
        run(&mut cmd, PGTMP_LIMIT)
    };
    let line = check_failed(&run("db/main.sql"), 1);
    assert!(
        line.starts_with("pgtmp: error: db/sub/bad.sql:3: ERROR:  relation \"nope\""),
        "{line}"
    );
    let line = check_failed(&run("db/rooted.sql"), 1);
    assert!(
        line.starts_with("pgtmp: error: db/rooted.sql:1: error: db/sub/bad.sql: No such file")
            && line.contains("\\ir"),
        "{line}"
    );
    sandbox.assert_nothing_left("a broken included file");
}

/// With -k a failing file leaves the cluster running for inspection; its URL is on stderr.
fn broken_file_with_keep_stays(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let bad = invokers_file(
        &sandbox,
        "bad.sql",
        "create table a (x int);\ninsert into a values (1);\nselect 1/0;\n",
    );
    let out = sandbox.run(&["-k", "-w", UNTIL_STOPPED, "-f", arg(&bad)]);
    let line = check_failed(&out, 1);
    assert!(
        line.contains("bad.sql:3:") && line.contains("division by zero"),
        "{line}"
    );
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("postgresql://"))
        .unwrap_or_else(|| panic!("no URL on stderr: {line}"));
    assert_eq!(
        sandbox.psql(url, "select x from a"),
        "1",
        "what loaded stays"
    );
    let stop = sandbox.run(&["stop", url]);
    assert!(stop.success(), "{stop}");
}

/// A missing or unreadable file is refused before anything starts.
fn unreadable_file_is_refused(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let missing = sandbox.path("missing.sql");
    let out = sandbox.run(&["-f", arg(&missing)]);
    let line = check_failed(&out, 2);
    assert!(line.contains(arg(&missing)), "{line}");
    sandbox.assert_nothing_left("a missing -f file");
}

/// --now TIMESTAMP freezes now() for every connection to test and its clones;
/// CURRENT_TIMESTAMP is not affected. --now clock follows clock_timestamp().
fn now_fixed_and_clock(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let schema = invokers_file(
        &sandbox,
        "schema.sql",
        "create table events (at timestamptz default now());\n",
    );
    let url = sandbox.start(&[
        "-w",
        UNTIL_STOPPED,
        "--now",
        "2024-02-29 13:14:15.5+00",
        "-f",
        arg(&schema),
    ]);
    let frozen = "2024-02-29 13:14:15.5+00";
    let check = |url: &str| {
        sandbox.psql(url, "insert into events default values");
        assert_eq!(
            sandbox.psql(
                url,
                &format!("select now() = '{frozen}', max(at) = '{frozen}' from events")
            ),
            "t|t",
            "now() and DEFAULT now() are frozen"
        );
        assert_eq!(
            sandbox.psql(
                url,
                "select current_timestamp > '2025-01-01', current_date > '2025-01-01'"
            ),
            "t|t",
            "CURRENT_TIMESTAMP and CURRENT_DATE keep the real clock"
        );
    };
    check(&url);
    let clone = sandbox.run(&["clone", &url]);
    check(&check_started(&clone, invoker));

    let clock = sandbox.start(&["-w", UNTIL_STOPPED, "--now", "clock"]);
    // pg_sleep runs before now() is evaluated; CURRENT_TIMESTAMP is the transaction's start.
    let moved = "select now() - current_timestamp >= interval '40 ms' from pg_sleep(0.05)";
    assert_eq!(
        sandbox.psql(&clock, moved),
        "t",
        "with --now clock, now() moves within a transaction"
    );
    assert_eq!(
        sandbox.psql(&url, moved),
        "f",
        "a frozen now() does not move"
    );
}

/// An invalid --now is a usage error naming the value, with nothing left (even with -k).
fn invalid_now_leaves_nothing(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    for args in [
        &["--now", "yesterday-ish"][..],
        &["-k", "--now", "2024-13-45"],
    ] {
        let out = sandbox.run(args);
        let line = check_failed(&out, 2);
        assert!(line.contains(args[args.len() - 1]), "{line}");
        sandbox.assert_nothing_left("an invalid --now");
    }
}

/// Clones are copies of the loaded state, taken while a client holds a connection to test,
/// distinct between concurrent callers, owned by the user, and droppable early.
fn clone_while_connected(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let schema = invokers_file(&sandbox, "schema.sql", SCHEMA);
    let url = sandbox.start(&["-w", UNTIL_STOPPED, "-t", "-f", arg(&schema)]);
    let mut session = sandbox.psql_session(&url);
    assert_eq!(
        session.query_line(
            "with i as (insert into items (name) values ('later') returning id) select id from i;"
        ),
        "3"
    );
    let clone = check_started(&sandbox.run(&["clone", &url]), invoker);
    parse_tcp_url(&url);
    assert_eq!(
        clone,
        url.replacen("/test", &format!("/{}", database_of(&clone)), 1),
        "the clone's URL is the cluster's (password and port included) for another database"
    );
    assert_eq!(
        sandbox.psql(
            &clone,
            "select count(*), current_database() <> 'test' from items"
        ),
        "2|t",
        "a clone holds the loaded state, not later changes to test"
    );
    sandbox.psql(&clone, "delete from items");
    assert_eq!(session.query_line("select count(*) from items;"), "3");
    assert_eq!(
        sandbox.psql(
            &clone,
            "select pg_get_userbyid(datdba) from pg_database where datname = current_database()"
        ),
        invoker.name
    );

    // Concurrent clones never share a database.
    let urls = sandbox.start_at_once(6, &["clone", &url]);
    let mut names: Vec<String> = urls.iter().map(|u| database_of(u)).collect();
    names.push(database_of(&clone));
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 7, "clones share databases: {names:?}");

    let drop = sandbox.run(&["clone", "--drop", &clone]);
    assert!(drop.success() && drop.stdout.is_empty(), "{drop}");
    let name = database_of(&clone);
    assert_eq!(
        session.query_line(&format!(
            "select count(*) from pg_database where datname = '{name}';"
        )),
        "0"
    );
    let again = sandbox.run(&["clone", "--drop", &url]);
    let line = check_failed(&again, 2);
    assert!(line.contains("not a clone"), "{line}");
    session.close();
}

fn database_of(url: &str) -> String {
    let path = url.split_once("://").unwrap().1;
    let after = path.split_once('/').unwrap().1;
    after.split('?').next().unwrap().to_string()
}

/// A cluster started without files clones its empty state too; only its owner may clone.
fn clone_without_files(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let url = sandbox.start(&["-w", UNTIL_STOPPED]);
    sandbox.psql(&url, "create table only_in_test (x int)");
    let clone = check_started(&sandbox.run(&["clone", &url]), invoker);
    assert_eq!(
        sandbox.psql(
            &clone,
            "select count(*) from pg_class where relname = 'only_in_test'"
        ),
        "0"
    );
    if let Some(other) = Invoker::ordinary().filter(|o| o.uid != invoker.uid) {
        let stranger = Sandbox::new(&other);
        let out = stranger.run(&["clone", &url]);
        let line = check_failed(&out, 1);
        assert!(line.contains("another account"), "{line}");
    }
}

/// The first clone finds no stock: PGTMP_TRACE says so and that it copied; the stock is then
/// refilled deeper than before (demand outran it), and the next clone only renames one.
fn a_clone_says_why_it_waited_and_the_stock_follows_demand(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let url = sandbox.start(&["-w", UNTIL_STOPPED]);
    let traced_clone = || {
        let out = run(
            sandbox
                .pgtmp()
                .env("PGTMP_TRACE", "1")
                .args(["clone", &url]),
            PGTMP_LIMIT,
        );
        assert!(out.success(), "{out}");
        let phases: Vec<String> = out
            .stderr_lines()
            .iter()
            .filter_map(|l| l.strip_prefix("pgtmp: trace: "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        (out.stdout.trim_end().to_string(), phases)
    };
    let (first, phases) = traced_clone();
    assert!(
        phases.contains(&"stock-empty".into()) && phases.contains(&"copy".into()),
        "the first clone did not say it waited for a copy: {phases:?}"
    );
    assert_eq!(sandbox.psql(&first, "select 1"), "1");
    let stock = || {
        sandbox
            .psql(
                &url,
                "select count(*) from pg_database where datname like 'pgtmp\\_stock\\_%'",
            )
            .parse::<usize>()
            .unwrap()
    };
    // The default depth is 3; the miss doubled it.
    assert!(
        wait_until(Duration::from_secs(60), || stock() >= 6),
        "the stock did not grow to 6: {}",
        stock()
    );
    let (second, phases) = traced_clone();
    assert_eq!(phases, ["session", "connect", "claim"], "{phases:?}");
    assert_ne!(first, second);
    assert_eq!(
        sandbox.psql(&second, "select current_database() like 'test\\_%'"),
        "t"
    );
    sandbox.run(&["stop", &url]);
}

/// The first clones of a cluster started without files race to create the template they copy:
/// four at once must all get a database of their own (the losers of that race once failed
/// with a unique violation on pg_database's name index). Three rounds, each a new cluster.
fn parallel_first_clones_all_succeed(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    for _ in 0..3 {
        let url = sandbox.start(&["-w", "30"]);
        let clones = sandbox.start_at_once(4, &["clone", &url]);
        let names: std::collections::HashSet<String> =
            clones.iter().map(|c| database_of(c)).collect();
        assert_eq!(names.len(), 4, "clones share a database: {clones:?}");
        for clone in &clones {
            assert_eq!(sandbox.psql(clone, "select 1"), "1");
        }
        assert!(sandbox.run(&["stop", &url]).success());
    }
}

/// `pgtmp schema URL`: a fresh schema first on the search_path of every connection through
/// the printed URL; it round-trips through `pgtmp schema` and keeps --now working.
fn schema_url_search_path(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let url = sandbox.start(&["-w", UNTIL_STOPPED, "--now", "2020-01-01 00:00:00+00"]);
    let first = check_started(&sandbox.run(&["schema", &url]), invoker);
    assert!(first.contains("options=-csearch_path%3Ds_"), "{first}");
    let schema = sandbox.psql(&first, "select current_schema()");
    assert!(schema.starts_with("s_"), "{schema}");
    sandbox.psql(&first, "create table t (x int)");
    assert_eq!(
        sandbox.psql(
            &url,
            "select schemaname from pg_tables where tablename = 't'"
        ),
        schema
    );
    assert_eq!(
        sandbox.psql(&first, "select now() = '2020-01-01 00:00:00+00'"),
        "t",
        "the schema URL keeps the frozen now()"
    );
    let second = check_started(&sandbox.run(&["schema", &first]), invoker);
    let other = sandbox.psql(&second, "select current_schema()");
    assert!(other.starts_with("s_") && other != schema, "{second}");
    assert_eq!(second.matches("options=").count(), 1, "{second}");
}

/// `pgtmp schema --format jdbc` of a TCP cluster gives pgjdbc's `currentSchema`; a socket
/// cluster has no JDBC form and gets a usage error, with no schema made.
fn schema_jdbc_form_sets_current_schema(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let url = sandbox.start(&["-t", "-w", UNTIL_STOPPED]);
    let jdbc = check_started(&sandbox.run(&["schema", "--format", "jdbc", &url]), invoker);
    let tcp = parse_tcp_url(&url);
    let prefix = format!(
        "jdbc:postgresql://127.0.0.1:{}/test?user={}&password={}&currentSchema=s_",
        tcp.port,
        percent_encode(&tcp.user),
        tcp.password
    );
    assert!(jdbc.starts_with(&prefix), "{jdbc}");
    let schema = jdbc.rsplit("currentSchema=").next().unwrap();
    let schema = percent_decode(schema);
    let name = schema.split(',').next().unwrap().to_string();
    assert_eq!(
        sandbox.psql(
            &url,
            &format!("select count(*) from pg_namespace where nspname = '{name}'")
        ),
        "1",
        "the schema exists"
    );
    let socket = sandbox.start(&["-w", UNTIL_STOPPED]);
    let line = check_failed(&sandbox.run(&["schema", "-F", "jdbc", &socket]), 2);
    assert!(line.contains("-t"), "{line}");
    assert_eq!(
        sandbox.psql(
            &socket,
            "select count(*) from pg_namespace where nspname like 's\\_%'"
        ),
        "0",
        "no schema was made for a refused request"
    );
}

/// `pgtmp clone` and `pgtmp schema` take the cluster in every form pgtmp prints it (a schema
/// URL, JDBC, DSN, JSON); a clone's URL is the cluster's form for the new database, without a
/// schema URL's options, or with `-F jdbc` the JDBC form. Garbage is a usage error.
fn clone_takes_every_printed_form(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let url = sandbox.start(&["-t", "-w", UNTIL_STOPPED]);
    let tcp = parse_tcp_url(&url);
    let schema_url = check_started(&sandbox.run(&["schema", &url]), invoker);
    let clone = check_started(&sandbox.run(&["clone", &schema_url]), invoker);
    let name = database_of(&clone);
    assert_eq!(clone, url.replace("/test", &format!("/{name}")), "{clone}");
    assert_eq!(sandbox.psql(&clone, "select current_schema()"), "public");
    let jdbc = format!(
        "jdbc:postgresql://127.0.0.1:{}/test?user={}&password={}",
        tcp.port,
        percent_encode(&tcp.user),
        tcp.password
    );
    let printed = |format: &str| {
        let out = sandbox.run(&["-t", "-w", UNTIL_STOPPED, "-F", format]);
        assert!(out.success() && out.stderr.is_empty(), "{out}");
        out.stdout.trim().to_string()
    };
    for given in [jdbc.clone(), printed("dsn"), printed("json")] {
        let clone = check_started(&sandbox.run(&["clone", &given]), invoker);
        assert!(clone.starts_with("postgresql://"), "{given} gave {clone}");
        assert_eq!(
            sandbox.psql(&clone, "select current_database() like 'test\\_%'"),
            "t"
        );
        let schema = check_started(&sandbox.run(&["schema", &given]), invoker);
        assert!(
            sandbox
                .psql(&schema, "select current_schema()")
                .starts_with("s_")
        );
    }
    let as_jdbc = check_started(&sandbox.run(&["clone", "-F", "jdbc", &jdbc]), invoker);
    let name = as_jdbc
        .split('?')
        .next()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap();
    assert_eq!(as_jdbc, jdbc.replace("/test?", &format!("/{name}?")));
    assert!(name.starts_with("test_"), "{as_jdbc}");
    let dropped = sandbox.run(&["clone", "--drop", &as_jdbc]);
    assert!(dropped.success() && dropped.stdout.is_empty(), "{dropped}");
    assert_eq!(
        sandbox.psql(
            &url,
            &format!("select count(*) from pg_database where datname = '{name}'")
        ),
        "0",
        "--drop takes the JDBC form too"
    );
    let line = check_failed(&sandbox.run(&["clone", "garbage"]), 2);
    assert!(line.contains("garbage") && !line.contains("-d"), "{line}");
    let socket = sandbox.start(&["-w", UNTIL_STOPPED]);
    let line = check_failed(&sandbox.run(&["clone", "-F", "jdbc", &socket]), 2);
    assert!(line.contains("-t"), "{line}");
}

/// Entries published in the schema cache (not those still being built, `build.*`).
fn cache_entries(sandbox: &Sandbox) -> usize {
    fs::read_dir(sandbox.pgtmp_dir.join("cache"))
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().contains('.'))
                .filter(|e| e.path().join("entry").is_dir())
                .count()
        })
        .unwrap_or(0)
}

/// The second start with the same files comes from the cache (the same load, copied); a
/// change of content is a miss that loads afresh and adds an entry; --no-cache loads too.
fn cache_hit_and_change_miss(invoker: &Invoker) {
    let sandbox = Sandbox::with_pool(invoker, 1);
    // The load's moment identifies it: a copy of a cached load carries the cached moment.
    let text = "create table stamp as select clock_timestamp()::text as t;\n";
    let file = invokers_file(&sandbox, "stamp.sql", text);
    let stamp = |url: &str| sandbox.psql(url, "select t from stamp");
    let first = stamp(&sandbox.start(&["-w", UNTIL_STOPPED, "-f", arg(&file)]));
    assert!(
        wait_until(Duration::from_secs(60), || cache_entries(&sandbox) == 1),
        "the cache entry was not built"
    );
    let second = stamp(&sandbox.start(&["-w", UNTIL_STOPPED, "-f", arg(&file)]));
    let third = stamp(&sandbox.start(&["-w", UNTIL_STOPPED, "-f", arg(&file)]));
    assert_ne!(first, second, "the second start loaded afresh");
    assert_eq!(second, third, "the third start did not come from the cache");
    let fresh = stamp(&sandbox.start(&["-w", UNTIL_STOPPED, "--no-cache", "-f", arg(&file)]));
    assert_ne!(fresh, second, "--no-cache used the cache");

    fs::write(&file, format!("-- changed\n{text}")).unwrap();
    let changed = stamp(&sandbox.start(&["-w", UNTIL_STOPPED, "-f", arg(&file)]));
    assert_ne!(changed, second, "a changed file was a cache hit");
    assert!(
        wait_until(Duration::from_secs(60), || cache_entries(&sandbox) == 2),
        "the changed file got no cache entry of its own"
    );
}

/// Concurrent first starts with the same new file all load it; exactly one cache entry comes
/// of it, and the next start uses it.
fn concurrent_first_starts_build_one_entry(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let file = invokers_file(
        &sandbox,
        "stamp.sql",
        "create table stamp as select clock_timestamp()::text as t;\n",
    );
    let urls = sandbox.start_at_once(3, &["-w", UNTIL_STOPPED, "-f", arg(&file)]);
    for url in &urls {
        assert_eq!(sandbox.psql(url, "select count(*) from stamp"), "1");
    }
    assert!(
        wait_until(Duration::from_secs(90), || {
            cache_entries(&sandbox) == 1
                && !sandbox
                    .procs()
                    .iter()
                    .any(|p| p.to_string().contains("build."))
        }),
        "no cache entry was built"
    );
    let building = fs::read_dir(sandbox.pgtmp_dir.join("cache"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("build."))
        .count();
    assert_eq!(building, 0, "an abandoned build was left in the cache");
    let a = sandbox.start(&["-w", UNTIL_STOPPED, "-f", arg(&file)]);
    let b = sandbox.start(&["-w", UNTIL_STOPPED, "-f", arg(&file)]);
    assert_eq!(
        sandbox.psql(&a, "select t from stamp"),
        sandbox.psql(&b, "select t from stamp"),
        "the entry was not used"
    );
}
