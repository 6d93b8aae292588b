//! `--format uri|dsn|jdbc|env|json` and PGTMP_FORMAT: every form names the cluster that was
//! started and works from psql and the shell, including for a directory whose path needs
//! quoting.

use crate::common::*;
use std::path::Path;

both_invokers!(
    dsn_connects,
    env_lines_eval_into_a_working_psql,
    json_describes_the_cluster,
    jdbc_needs_tcp,
    format_falls_back_to_the_environment,
    odd_directory_is_quoted_everywhere,
);

fn dsn_connects(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let dsn = sandbox.start(&["-F", "dsn"]);
    assert!(
        dsn.starts_with("host=/") && dsn.ends_with("dbname=test"),
        "{dsn}"
    );
    assert!(!dsn.contains("password"), "{dsn}");
    assert_eq!(sandbox.psql(&dsn, "select current_database()"), "test");
    let dsn = sandbox.start(&["-t", "-F", "dsn"]);
    assert!(dsn.starts_with("host=127.0.0.1 port="), "{dsn}");
    assert!(dsn.contains(" password="), "{dsn}");
    assert_eq!(sandbox.psql(&dsn, "select inet_server_addr()"), "127.0.0.1");
}

fn env_lines_eval_into_a_working_psql(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    for tcp in [false, true] {
        let script = format!(
            r#"eval "$("$PGTMP" -F env {})" && psql -XAt -c "select current_user" && psql -XAt "$DATABASE_URL" -c "select 2""#,
            if tcp { "-t" } else { "" }
        );
        let out = run(&mut sandbox.shell(&script), PGTMP_LIMIT);
        assert!(out.success() && out.stderr.is_empty(), "{out}");
        assert_eq!(out.stdout, format!("{}\n2\n", invoker.name));
    }
    let out = sandbox.run(&["-F", "env"]);
    let text = out.stdout.clone();
    assert!(out.success() && out.stderr.is_empty(), "{out}");
    for name in ["DATABASE_URL", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE"] {
        assert!(
            text.contains(&format!("export {name}='")),
            "no {name} in {text}"
        );
    }
    assert_eq!(text.lines().count(), 5, "{text}");
}

fn json_describes_the_cluster(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let text = sandbox.start(&["-t", "-w", "77", "-F", "json"]);
    let json: serde_json::Value = serde_json::from_str(&text).expect("not JSON");
    let dir = Path::new(json["socket_dir"].as_str().unwrap());
    assert_eq!(dir, sandbox.only_instance());
    assert_eq!(
        Path::new(json["data_dir"].as_str().unwrap()),
        dir.join("data")
    );
    assert_eq!(
        json["server_pid"].as_i64().unwrap() as i32,
        postmaster_pid(dir).unwrap()
    );
    assert_eq!(
        json["watchdog_pid"].as_i64().unwrap() as i32,
        watchdog_pid(dir).unwrap()
    );
    assert_eq!(json["timeout"], 77);
    assert_eq!(json["user"], invoker.name.as_str());
    assert_eq!(json["database"], "test");
    assert_eq!(json["host"], "127.0.0.1");
    let url = json["url"].as_str().unwrap();
    let tcp = parse_tcp_url(url);
    assert_eq!(json["port"], tcp.port);
    assert_eq!(json["password"], tcp.password.as_str());
    assert!(
        json["jdbc"]
            .as_str()
            .unwrap()
            .starts_with("jdbc:postgresql://127.0.0.1:")
    );
    assert_eq!(
        sandbox
            .psql(url, "select current_setting('server_version')")
            .split_whitespace()
            .next()
            .unwrap(),
        json["version"].as_str().unwrap(),
        "the version in the JSON is the server's"
    );
    assert_eq!(sandbox.psql(json["dsn"].as_str().unwrap(), "select 1"), "1");
    // Without TCP there is neither a password nor a JDBC URL.
    let text = sandbox.start(&["-F", "json"]);
    let json: serde_json::Value = serde_json::from_str(&text).expect("not JSON");
    assert!(
        json["jdbc"].is_null() && json["password"].is_null(),
        "{json}"
    );
    assert!(json["host"].as_str().unwrap().starts_with('/'));
}

fn jdbc_needs_tcp(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let out = sandbox.run(&["-F", "jdbc"]);
    let line = check_failed(&out, 2);
    assert!(line.contains("-t") && line.contains("JDBC"), "{line}");
    sandbox.assert_nothing_left("after --format jdbc without -t");
    let jdbc = sandbox.start(&["-t", "-F", "jdbc"]);
    let rest = jdbc
        .strip_prefix("jdbc:postgresql://127.0.0.1:")
        .unwrap_or_else(|| panic!("{jdbc}"));
    let (port, query) = rest.split_once("/test?user=").unwrap();
    let (user, password) = query.split_once("&password=").unwrap();
    assert_eq!(percent_decode(user), invoker.name);
    let url = format!(
        "postgresql://{user}:{password}@127.0.0.1:{port}/test",
        user = percent_encode(&invoker.name)
    );
    assert_eq!(sandbox.psql(&url, "select 1"), "1");
}

fn format_falls_back_to_the_environment(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let out = run(sandbox.pgtmp().env("PGTMP_FORMAT", "dsn"), PGTMP_LIMIT);
    let dsn = check_started(&out, invoker);
    assert!(dsn.starts_with("host="), "{dsn}");
    // Written on the command line, the option wins.
    let out = run(
        sandbox
            .pgtmp()
            .env("PGTMP_FORMAT", "dsn")
            .args(["-F", "uri"]),
        PGTMP_LIMIT,
    );
    assert!(check_started(&out, invoker).starts_with("postgresql://"));
    let out = run(sandbox.pgtmp().env("PGTMP_FORMAT", "xml"), PGTMP_LIMIT);
    let line = check_failed(&out, 2);
    assert!(line.contains("xml"), "{line}");
}

/// A `-d` directory with a space and a quote: the DSN and the env lines still reach it.
fn odd_directory_is_quoted_everywhere(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let dir = sandbox.path("it's odd");
    let dir_arg = dir.to_str().unwrap();
    let dsn = sandbox.start(&["-d", dir_arg, "-F", "dsn"]);
    assert!(dsn.contains("host='"), "{dsn}");
    assert_eq!(
        sandbox.psql(&dsn, "select current_setting('unix_socket_directories')"),
        format!("\"{dir_arg}\"")
    );
    let out = sandbox.run(&["stop", "-d", dir_arg]);
    assert!(out.success(), "{out}");
    let script = format!(
        r#"eval "$("$PGTMP" -F env -d "{dir_arg}")" && printf '%s\n' "$PGHOST" && psql -XAt -c "select 3""#
    );
    let out = run(&mut sandbox.shell(&script), PGTMP_LIMIT);
    assert!(out.success() && out.stderr.is_empty(), "{out}");
    assert_eq!(out.stdout, format!("{dir_arg}\n3\n"));
}
