//! Frozen time for the whole cluster: `--now` in every database (also those made later by
//! `CREATE DATABASE`, as Django's test runner does), moved by `pgtmp now` and `pgtmp.set_now()`
//! for every session at once.

use crate::common::*;
use std::fs;
use std::process::Command;

both_invokers!(
    frozen_time_reaches_every_database_and_moves,
    bad_values_change_nothing,
    django_test_runner_sees_frozen_time,
);

const FROZEN: &str = "2024-01-01 12:00:00+00";

fn db_url(url: &str, database: &str) -> String {
    url.replace("/test?", &format!("/{database}?"))
}

fn frozen_time_reaches_every_database_and_moves(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let url = sandbox.start(&["-w", UNTIL_STOPPED, "--now", FROZEN]);
    let mut session = sandbox.psql_session(&url);
    let now = "select now()::text;";
    assert_eq!(session.query_line("set timezone = 'UTC';"), "SET");
    assert_eq!(session.query_line(now), FROZEN);
    // A database made later from the default template, and the `postgres` database.
    sandbox.psql(&url, "create database later");
    let later = db_url(&url, "later");
    sandbox.psql(&later, "create table t (at timestamptz default now())");
    assert_eq!(
        sandbox.psql(
            &later,
            "with row as (insert into t default values returning at) \
             select (select at from row) = now() and now() = '2024-01-01 12:00:00+00'"
        ),
        "t",
        "DEFAULT now() in a later database"
    );
    assert_eq!(
        sandbox.psql(
            &db_url(&url, "postgres"),
            "select now() = '2024-01-01 12:00:00+00'"
        ),
        "t"
    );

    // Moved for every session: the connected one sees it from its next statement.
    let out = sandbox.run(&["now", &url, "+31 days"]);
    assert!(
        out.success() && out.stdout.starts_with("2024-02-01 12:00:00"),
        "{out}"
    );
    assert_eq!(session.query_line(now), "2024-02-01 12:00:00+00");
    assert_eq!(
        sandbox.psql(
            &later,
            "select statement_timestamp() = '2024-02-01 12:00:00+00'"
        ),
        "t"
    );
    // From SQL, in another session; a rolled-back change changes nothing.
    sandbox.psql(&later, "select pgtmp.set_now('-1 day')");
    assert_eq!(session.query_line(now), "2024-01-31 12:00:00+00");
    sandbox.psql(&url, "begin; select pgtmp.set_now('2000-01-01'); rollback");
    assert_eq!(session.query_line(now), "2024-01-31 12:00:00+00");
    let printed = sandbox.run(&["now", &url]);
    assert!(
        printed.stdout.starts_with("2024-01-31 12:00:00"),
        "{printed}"
    );
    // The sign is the whole interval's: 26 hours back, not 22.
    let out = sandbox.run(&["now", &url, "-1 day 2 hours"]);
    assert!(out.stdout.starts_with("2024-01-30 10:00:00"), "{out}");
    assert!(sandbox.run(&["now", &url, "+1 day 2 hours"]).success());
    assert_eq!(session.query_line(now), "2024-01-31 12:00:00+00");

    // The clock again, then offset from it.
    assert!(sandbox.run(&["now", &url, "clock"]).success());
    let near = "select abs(extract(epoch from now() - clock_timestamp())) < 5;";
    assert_eq!(session.query_line(near), "t");
    assert!(sandbox.run(&["now", &url, "+2 days"]).success());
    let ahead =
        "select now() - clock_timestamp() between interval '47 hours' and interval '49 hours';";
    assert_eq!(session.query_line(ahead), "t");
    assert!(sandbox.run(&["now", &url, FROZEN]).success());
    assert_eq!(session.query_line(now), FROZEN);
    // A keyword is not a function call: CURRENT_TIMESTAMP is the real transaction start.
    assert_eq!(
        session.query_line("select current_timestamp > '2025-01-01';"),
        "t"
    );
    session.close();
}

fn bad_values_change_nothing(invoker: &Invoker) {
    let sandbox = Sandbox::new(invoker);
    let url = sandbox.start(&["-w", UNTIL_STOPPED, "--now", FROZEN]);
    for bad in ["not a time", "+3 fortnights", "-", "2024-13-45", "infinity"] {
        let out = sandbox.run(&["now", &url, bad]);
        let line = check_failed(&out, 2);
        assert!(line.contains(&format!("'{bad}'")), "{out}");
    }
    let out = sandbox.try_psql(&url, "select pgtmp.set_now(NULL)");
    assert!(!out.success(), "{out}");
    assert_eq!(
        sandbox.psql(&url, "select now() = '2024-01-01 12:00:00+00'"),
        "t"
    );
    // Before year 1 too: the era is kept.
    let out = sandbox.run(&["now", &url, "0500-06-01 00:00:00+00 BC"]);
    assert!(out.success() && out.stdout.ends_with("BC"), "{out}");
    assert_eq!(
        sandbox.psql(&url, "select now() < '0001-01-01 00:00:00+00'"),
        "t"
    );
    // A search_path in -o would hide the frozen now(): refused, with nothing left.
    let out = sandbox.run(&["--now", FROZEN, "-o", "-c search_path=public"]);
    let line = check_failed(&out, 2);
    assert!(line.contains("search_path"), "{out}");
    // A relative --now at the start: the clock, shifted.
    let behind = sandbox.start(&["-w", UNTIL_STOPPED, "--now", "-1 day"]);
    assert_eq!(
        sandbox.psql(
            &behind,
            "select clock_timestamp() - now() between interval '23 hours' and interval '25 hours'"
        ),
        "t"
    );
    let plain = sandbox.start(&["-w", UNTIL_STOPPED]);
    for args in [
        &["now", plain.as_str(), "+1 day"][..],
        &["now", plain.as_str()],
    ] {
        let out = sandbox.run(args);
        let line = check_failed(&out, 2);
        assert!(line.contains("--now clock"), "{out}");
    }
    assert_eq!(
        sandbox.psql(&plain, "select to_regnamespace('pgtmp') is null"),
        "t"
    );
}

/// Django's own test runner (`manage.py test`) makes database `test_test` with CREATE DATABASE
/// and migrates it; a migration's `DEFAULT now()` and raw `select now()` see the frozen time.
fn django_test_runner_sees_frozen_time(invoker: &Invoker) {
    let python = "/usr/bin/python3";
    if !works(invoker, python, &["-c", "import django, psycopg2"]) {
        return missing(
            "Django and psycopg2",
            "Debian: apt-get install python3-django python3-psycopg2",
        );
    }
    let sandbox = Sandbox::new(invoker);
    let project = sandbox.path("project");
    fs::create_dir_all(project.join("app/migrations")).unwrap();
    let files = [
        (
            "manage.py",
            "import os, sys\nos.environ.setdefault('DJANGO_SETTINGS_MODULE', 'settings')\nfrom django.core.management import execute_from_command_line\nexecute_from_command_line(sys.argv)\n",
        ),
        (
            "settings.py",
            "import os\nSECRET_KEY = 'x'\nUSE_TZ = True\nINSTALLED_APPS = ['app']\nDEFAULT_AUTO_FIELD = 'django.db.models.AutoField'\nDATABASES = {'default': {'ENGINE': 'django.db.backends.postgresql', 'NAME': os.environ['PGDATABASE'], 'HOST': os.environ['PGHOST'], 'PORT': os.environ['PGPORT'], 'USER': os.environ['PGUSER']}}\n",
        ),
        ("app/__init__.py", ""),
        ("app/migrations/__init__.py", ""),
        (
            "app/models.py",
            "from django.db import models\n\nclass Event(models.Model):\n    at = models.DateTimeField()\n",
        ),
        (
            "app/migrations/0001_initial.py",
            "from django.db import migrations, models\n\nclass Migration(migrations.Migration):\n    initial = True\n    dependencies = []\n    operations = [\n        migrations.CreateModel(name='Event', fields=[('id', models.AutoField(primary_key=True)), ('at', models.DateTimeField())]),\n        migrations.RunSQL('ALTER TABLE app_event ALTER COLUMN at SET DEFAULT now()'),\n    ]\n",
        ),
        (
            "app/tests.py",
            "from django.db import connection\nfrom django.test import TestCase\n\nFROZEN = '2024-01-01 12:00:00+00'\n\nclass FrozenTime(TestCase):\n    def test_now_is_frozen_in_the_test_database(self):\n        with connection.cursor() as cur:\n            cur.execute('select current_database(), now() = %s', [FROZEN])\n            database, frozen = cur.fetchone()\n            self.assertEqual(database, 'test_test')\n            self.assertTrue(frozen)\n            cur.execute('insert into app_event default values returning at = %s', [FROZEN])\n            self.assertTrue(cur.fetchone()[0])\n",
        ),
    ];
    for (name, text) in files {
        fs::write(project.join(name), text).unwrap();
    }
    let out = run(
        Command::new("chown")
            .args(["-R", &format!("{}:{}", invoker.uid, invoker.gid)])
            .arg(&project),
        PSQL_LIMIT,
    );
    assert!(out.success(), "{out}");
    let mut cmd = sandbox.pgtmp();
    cmd.args([
        "run",
        "--now",
        FROZEN,
        "--",
        python,
        "manage.py",
        "test",
        "--noinput",
        "-v",
        "2",
    ])
    .current_dir(&project);
    let out = run(&mut cmd, PGTMP_LIMIT);
    assert!(
        out.success() && out.stderr.contains("Ran 1 test") && out.stderr.contains("\nOK"),
        "Django's test runner with --now:\n{out}"
    );
    sandbox.assert_nothing_left("pgtmp run of Django's tests");
}
