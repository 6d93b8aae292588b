# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_pgtmp_global_optspecs
    string join \n t/tcp p/port= w/timeout= k/keep o/options= d/dir= F/format= f/schema-file= now= no-cache owner-pid= bindir= pg= pg-path= run-as= h/help V/version
end

function __fish_pgtmp_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_pgtmp_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_pgtmp_using_subcommand
    set -l cmd (__fish_pgtmp_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c pgtmp -n "__fish_pgtmp_needs_command" -s p -l port -d 'Listen on this TCP port on 127.0.0.1 (implies -t)' -r
complete -c pgtmp -n "__fish_pgtmp_needs_command" -s w -l timeout -d 'Stop the cluster after this many seconds without a connected client; 0 = never [default: 60]' -r
complete -c pgtmp -n "__fish_pgtmp_needs_command" -s o -l options -d 'Extra options for postgres, e.g. -o \'-c log_statement=all\'; applied last, so they win. Where the server listens and keeps its files (port, listen_addresses, unix_socket_directories, data_directory, *_file; -p -h -i -k -D) is refused: use -p, -t, -d' -r
complete -c pgtmp -n "__fish_pgtmp_needs_command" -s d -l dir -d 'Use this directory instead of one from the pool; it is initialized if empty or missing, and deleted when the cluster stops unless it was started with -k (now or before)' -r -F
complete -c pgtmp -n "__fish_pgtmp_needs_command" -s F -l format -d 'How to print the cluster: `uri` (the default), `dsn` (libpq key=value), `jdbc` (needs -t), `env` (`export` lines for eval or a dotenv file) or `json` (every detail)' -r -f -a "uri\t'postgresql:// URL (libpq, psql, most drivers)'
dsn\t'libpq key=value connection string'
jdbc\t'jdbc:postgresql:// URL; needs -t (JDBC cannot use Unix sockets)'
env\t'`export PG...=...` lines for `eval "$(pgtmp --format env)"` or a dotenv file (with -t also PGPASSWORD and JDBC_DATABASE_URL)'
json\t'one JSON object with every detail'"
complete -c pgtmp -n "__fish_pgtmp_needs_command" -s f -l schema-file -d 'Load this SQL file into `test` with psql before printing the URL; repeat for more files, loaded in order' -r -F
complete -c pgtmp -n "__fish_pgtmp_needs_command" -l now -d 'Make now() return this timestamp in every database and session of the cluster, follow the clock with `--now clock`, or the clock shifted with e.g. `--now \'-1 day\'`; `pgtmp now URL VALUE` moves it later' -r
complete -c pgtmp -n "__fish_pgtmp_needs_command" -l owner-pid -d 'Tie the cluster to process PID (e.g. $$, the calling shell, or the test runner\'s own pid): while it runs the cluster never idles out; once it has exited, however it ended, the cluster stops as soon as no client is connected (or, with -w N, after N seconds without one). PID must be a running process of yours' -r
complete -c pgtmp -n "__fish_pgtmp_needs_command" -l bindir -d 'Directory holding initdb and postgres; skips the search for an installation' -r -F
complete -c pgtmp -n "__fish_pgtmp_needs_command" -l pg -d 'PostgreSQL major version to use, among the installations found (`pgtmp doctor` lists them); `pgtmp run` also takes several, e.g. 15,16,17, or `all`, and runs CMD once per major, each against a cluster of its own' -r
complete -c pgtmp -n "__fish_pgtmp_needs_command" -l pg-path -d 'More places to look for installations for --pg, separated by \':\': bin directories, or directories searched (4 levels deep) for bin/ with initdb and postgres, e.g. where relocatable server builds are unpacked' -r
complete -c pgtmp -n "__fish_pgtmp_needs_command" -l run-as -d 'Account the server runs as when pgtmp is invoked by root [default: postgres, else nobody, or the owner of an existing PGTMP_DIR]; root keeps one state directory per account, and without --run-as list, stop, gc, clone and schema cover them all. PGTMP_RUN_AS is ignored when pgtmp is not invoked by root' -r
complete -c pgtmp -n "__fish_pgtmp_needs_command" -s t -l tcp -d 'Listen on a free TCP port on 127.0.0.1 (password required, TLS offered) instead of only a Unix socket'
complete -c pgtmp -n "__fish_pgtmp_needs_command" -s k -l keep -d 'Keep the cluster\'s directory when it stops, so `pgtmp start -d DIR` can start it again (and keeps it again, with or without -k)'
complete -c pgtmp -n "__fish_pgtmp_needs_command" -l no-cache -d 'Load the -f files even if the schema cache holds their result, and do not cache it'
complete -c pgtmp -n "__fish_pgtmp_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pgtmp -n "__fish_pgtmp_needs_command" -s V -l version -d 'Print version'
complete -c pgtmp -n "__fish_pgtmp_needs_command" -f -a "start" -d 'Start a throwaway cluster and print its URL (the default command)'
complete -c pgtmp -n "__fish_pgtmp_needs_command" -f -a "stop" -d 'Stop a cluster now and remove its directory (kept with -k, or if it was started with -k)'
complete -c pgtmp -n "__fish_pgtmp_needs_command" -f -a "initdb" -d 'Prepare one more ready data directory for the next start and print its path; with -d, a cluster directory DIR for a later `pgtmp -d DIR`'
complete -c pgtmp -n "__fish_pgtmp_needs_command" -f -a "selftest" -d 'Start a cluster, query it, stop it, and say what was checked: a smoke test of the installation (pg_tmp\'s `selftest`); exits 1 naming the step that failed'
complete -c pgtmp -n "__fish_pgtmp_needs_command" -f -a "serve" -d 'Hand out throwaway databases over HTTP, with faitout\'s and IntegreSQL\'s APIs, on its own cluster or an existing PostgreSQL server'
complete -c pgtmp -n "__fish_pgtmp_needs_command" -f -a "run" -d 'Start a cluster, run CMD with PGHOST, PGPORT, PGUSER, PGDATABASE and DATABASE_URL set, then stop the cluster and exit with CMD\'s status'
complete -c pgtmp -n "__fish_pgtmp_needs_command" -f -a "list" -d 'List this account\'s running clusters; with --all also the kept ones that have stopped'
complete -c pgtmp -n "__fish_pgtmp_needs_command" -f -a "ls" -d 'List this account\'s running clusters; with --all also the kept ones that have stopped'
complete -c pgtmp -n "__fish_pgtmp_needs_command" -f -a "keep" -d 'Keep the cluster of URL when it stops, and say how to start it again'
complete -c pgtmp -n "__fish_pgtmp_needs_command" -f -a "now" -d 'Move the frozen time of the cluster of URL (started with --now), for every session'
complete -c pgtmp -n "__fish_pgtmp_needs_command" -f -a "discard" -d 'Stop a cluster if it runs and remove its directory, kept or not'
complete -c pgtmp -n "__fish_pgtmp_needs_command" -f -a "doctor" -d 'Check the installation, accounts, state directory and pool; say how to fix what is wrong'
complete -c pgtmp -n "__fish_pgtmp_needs_command" -f -a "clone" -d 'Print the URL of a fresh database in the cluster of URL: a copy of its loaded state'
complete -c pgtmp -n "__fish_pgtmp_needs_command" -f -a "schema" -d 'Create a fresh schema in URL\'s database and print a URL that puts it first on search_path'
complete -c pgtmp -n "__fish_pgtmp_needs_command" -f -a "gc" -d 'Remove what killed or crashed runs left: servers without a watchdog, their directories, incomplete pool entries; and schema cache entries unused for PGTMP_CACHE_DAYS days (default 7), their ready copies after an hour unused. Prints one line per thing removed'
complete -c pgtmp -n "__fish_pgtmp_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand start" -s p -l port -d 'Listen on this TCP port on 127.0.0.1 (implies -t)' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand start" -s w -l timeout -d 'Stop the cluster after this many seconds without a connected client; 0 = never [default: 60]' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand start" -s o -l options -d 'Extra options for postgres, e.g. -o \'-c log_statement=all\'; applied last, so they win. Where the server listens and keeps its files (port, listen_addresses, unix_socket_directories, data_directory, *_file; -p -h -i -k -D) is refused: use -p, -t, -d' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand start" -s d -l dir -d 'Use this directory instead of one from the pool; it is initialized if empty or missing, and deleted when the cluster stops unless it was started with -k (now or before)' -r -F
complete -c pgtmp -n "__fish_pgtmp_using_subcommand start" -s F -l format -d 'How to print the cluster: `uri` (the default), `dsn` (libpq key=value), `jdbc` (needs -t), `env` (`export` lines for eval or a dotenv file) or `json` (every detail)' -r -f -a "uri\t'postgresql:// URL (libpq, psql, most drivers)'
dsn\t'libpq key=value connection string'
jdbc\t'jdbc:postgresql:// URL; needs -t (JDBC cannot use Unix sockets)'
env\t'`export PG...=...` lines for `eval "$(pgtmp --format env)"` or a dotenv file (with -t also PGPASSWORD and JDBC_DATABASE_URL)'
json\t'one JSON object with every detail'"
complete -c pgtmp -n "__fish_pgtmp_using_subcommand start" -s f -l schema-file -d 'Load this SQL file into `test` with psql before printing the URL; repeat for more files, loaded in order' -r -F
complete -c pgtmp -n "__fish_pgtmp_using_subcommand start" -l now -d 'Make now() return this timestamp in every database and session of the cluster, follow the clock with `--now clock`, or the clock shifted with e.g. `--now \'-1 day\'`; `pgtmp now URL VALUE` moves it later' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand start" -l owner-pid -d 'Tie the cluster to process PID (e.g. $$, the calling shell, or the test runner\'s own pid): while it runs the cluster never idles out; once it has exited, however it ended, the cluster stops as soon as no client is connected (or, with -w N, after N seconds without one). PID must be a running process of yours' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand start" -l bindir -d 'Directory holding initdb and postgres; skips the search for an installation' -r -F
complete -c pgtmp -n "__fish_pgtmp_using_subcommand start" -l pg -d 'PostgreSQL major version to use, among the installations found (`pgtmp doctor` lists them); `pgtmp run` also takes several, e.g. 15,16,17, or `all`, and runs CMD once per major, each against a cluster of its own' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand start" -l pg-path -d 'More places to look for installations for --pg, separated by \':\': bin directories, or directories searched (4 levels deep) for bin/ with initdb and postgres, e.g. where relocatable server builds are unpacked' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand start" -l run-as -d 'Account the server runs as when pgtmp is invoked by root [default: postgres, else nobody, or the owner of an existing PGTMP_DIR]; root keeps one state directory per account, and without --run-as list, stop, gc, clone and schema cover them all. PGTMP_RUN_AS is ignored when pgtmp is not invoked by root' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand start" -s t -l tcp -d 'Listen on a free TCP port on 127.0.0.1 (password required, TLS offered) instead of only a Unix socket'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand start" -s k -l keep -d 'Keep the cluster\'s directory when it stops, so `pgtmp start -d DIR` can start it again (and keeps it again, with or without -k)'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand start" -l no-cache -d 'Load the -f files even if the schema cache holds their result, and do not cache it'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand start" -s h -l help -d 'Print help'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand stop" -s d -l dir -d 'The cluster\'s directory instead of its URL' -r -F
complete -c pgtmp -n "__fish_pgtmp_using_subcommand stop" -s w -l wait -d 'Wait until no client is connected, then stop: check every SECONDS seconds, the first time SECONDS after the call, as pg_tmp does (0: check continuously). The cluster may also reach its idle timeout meanwhile, which is not an error' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand stop" -l bindir -d 'Directory holding initdb and postgres; skips the search for an installation' -r -F
complete -c pgtmp -n "__fish_pgtmp_using_subcommand stop" -l pg -d 'PostgreSQL major version to use, among the installations found (`pgtmp doctor` lists them); `pgtmp run` also takes several, e.g. 15,16,17, or `all`, and runs CMD once per major, each against a cluster of its own' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand stop" -l pg-path -d 'More places to look for installations for --pg, separated by \':\': bin directories, or directories searched (4 levels deep) for bin/ with initdb and postgres, e.g. where relocatable server builds are unpacked' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand stop" -l run-as -d 'Account the server runs as when pgtmp is invoked by root [default: postgres, else nobody, or the owner of an existing PGTMP_DIR]; root keeps one state directory per account, and without --run-as list, stop, gc, clone and schema cover them all. PGTMP_RUN_AS is ignored when pgtmp is not invoked by root' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand stop" -l all -d 'Stop every running cluster of this account, all at once'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand stop" -s k -l keep -d 'Keep the cluster\'s directory and data, so `pgtmp -d DIR` can start it again (and keeps it again, with or without -k)'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand stop" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand initdb" -s d -l dir -d 'Prepare this directory (empty or missing) instead of a new one under PGTMP_DIR' -r -F
complete -c pgtmp -n "__fish_pgtmp_using_subcommand initdb" -l bindir -d 'Directory holding initdb and postgres; skips the search for an installation' -r -F
complete -c pgtmp -n "__fish_pgtmp_using_subcommand initdb" -l pg -d 'PostgreSQL major version to use, among the installations found (`pgtmp doctor` lists them); `pgtmp run` also takes several, e.g. 15,16,17, or `all`, and runs CMD once per major, each against a cluster of its own' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand initdb" -l pg-path -d 'More places to look for installations for --pg, separated by \':\': bin directories, or directories searched (4 levels deep) for bin/ with initdb and postgres, e.g. where relocatable server builds are unpacked' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand initdb" -l run-as -d 'Account the server runs as when pgtmp is invoked by root [default: postgres, else nobody, or the owner of an existing PGTMP_DIR]; root keeps one state directory per account, and without --run-as list, stop, gc, clone and schema cover them all. PGTMP_RUN_AS is ignored when pgtmp is not invoked by root' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand initdb" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand selftest" -l bindir -d 'Directory holding initdb and postgres; skips the search for an installation' -r -F
complete -c pgtmp -n "__fish_pgtmp_using_subcommand selftest" -l pg -d 'PostgreSQL major version to use, among the installations found (`pgtmp doctor` lists them); `pgtmp run` also takes several, e.g. 15,16,17, or `all`, and runs CMD once per major, each against a cluster of its own' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand selftest" -l pg-path -d 'More places to look for installations for --pg, separated by \':\': bin directories, or directories searched (4 levels deep) for bin/ with initdb and postgres, e.g. where relocatable server builds are unpacked' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand selftest" -l run-as -d 'Account the server runs as when pgtmp is invoked by root [default: postgres, else nobody, or the owner of an existing PGTMP_DIR]; root keeps one state directory per account, and without --run-as list, stop, gc, clone and schema cover them all. PGTMP_RUN_AS is ignored when pgtmp is not invoked by root' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand selftest" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand serve" -l listen -d 'Address and port to answer HTTP on; other than loopback only with --token (and --server); port 0 picks a free one' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand serve" -l server -d 'Work on this existing PostgreSQL server, as an admin role with CREATEDB and CREATEROLE (postgresql://ADMIN:PASSWORD@HOST:PORT/DATABASE), instead of serve\'s own cluster' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand serve" -l ttl -d 'Seconds a handed-out database lives before it is dropped with its role' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand serve" -l pool -d 'Databases kept ready for /new and per finalized template' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand serve" -l max-per-client -d 'Databases from /new one client (IP address) may have out at once' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand serve" -l token -d 'Require this token of every request (Authorization: Bearer TOKEN, or the path prefix /t/TOKEN/); needed to listen beyond loopback' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand serve" -l bindir -d 'Directory holding initdb and postgres; skips the search for an installation' -r -F
complete -c pgtmp -n "__fish_pgtmp_using_subcommand serve" -l pg -d 'PostgreSQL major version to use, among the installations found (`pgtmp doctor` lists them); `pgtmp run` also takes several, e.g. 15,16,17, or `all`, and runs CMD once per major, each against a cluster of its own' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand serve" -l pg-path -d 'More places to look for installations for --pg, separated by \':\': bin directories, or directories searched (4 levels deep) for bin/ with initdb and postgres, e.g. where relocatable server builds are unpacked' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand serve" -l run-as -d 'Account the server runs as when pgtmp is invoked by root [default: postgres, else nobody, or the owner of an existing PGTMP_DIR]; root keeps one state directory per account, and without --run-as list, stop, gc, clone and schema cover them all. PGTMP_RUN_AS is ignored when pgtmp is not invoked by root' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand serve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand run" -s p -l port -d 'Listen on this TCP port on 127.0.0.1 (implies -t)' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand run" -s w -l timeout -d 'Stop the cluster after this many seconds without a connected client; 0 = never [default: 60]' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand run" -s o -l options -d 'Extra options for postgres, e.g. -o \'-c log_statement=all\'; applied last, so they win. Where the server listens and keeps its files (port, listen_addresses, unix_socket_directories, data_directory, *_file; -p -h -i -k -D) is refused: use -p, -t, -d' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand run" -s d -l dir -d 'Use this directory instead of one from the pool; it is initialized if empty or missing, and deleted when the cluster stops unless it was started with -k (now or before)' -r -F
complete -c pgtmp -n "__fish_pgtmp_using_subcommand run" -s F -l format -d 'How to print the cluster: `uri` (the default), `dsn` (libpq key=value), `jdbc` (needs -t), `env` (`export` lines for eval or a dotenv file) or `json` (every detail)' -r -f -a "uri\t'postgresql:// URL (libpq, psql, most drivers)'
dsn\t'libpq key=value connection string'
jdbc\t'jdbc:postgresql:// URL; needs -t (JDBC cannot use Unix sockets)'
env\t'`export PG...=...` lines for `eval "$(pgtmp --format env)"` or a dotenv file (with -t also PGPASSWORD and JDBC_DATABASE_URL)'
json\t'one JSON object with every detail'"
complete -c pgtmp -n "__fish_pgtmp_using_subcommand run" -s f -l schema-file -d 'Load this SQL file into `test` with psql before printing the URL; repeat for more files, loaded in order' -r -F
complete -c pgtmp -n "__fish_pgtmp_using_subcommand run" -l now -d 'Make now() return this timestamp in every database and session of the cluster, follow the clock with `--now clock`, or the clock shifted with e.g. `--now \'-1 day\'`; `pgtmp now URL VALUE` moves it later' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand run" -l owner-pid -d 'Tie the cluster to process PID (e.g. $$, the calling shell, or the test runner\'s own pid): while it runs the cluster never idles out; once it has exited, however it ended, the cluster stops as soon as no client is connected (or, with -w N, after N seconds without one). PID must be a running process of yours' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand run" -l bindir -d 'Directory holding initdb and postgres; skips the search for an installation' -r -F
complete -c pgtmp -n "__fish_pgtmp_using_subcommand run" -l pg -d 'PostgreSQL major version to use, among the installations found (`pgtmp doctor` lists them); `pgtmp run` also takes several, e.g. 15,16,17, or `all`, and runs CMD once per major, each against a cluster of its own' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand run" -l pg-path -d 'More places to look for installations for --pg, separated by \':\': bin directories, or directories searched (4 levels deep) for bin/ with initdb and postgres, e.g. where relocatable server builds are unpacked' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand run" -l run-as -d 'Account the server runs as when pgtmp is invoked by root [default: postgres, else nobody, or the owner of an existing PGTMP_DIR]; root keeps one state directory per account, and without --run-as list, stop, gc, clone and schema cover them all. PGTMP_RUN_AS is ignored when pgtmp is not invoked by root' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand run" -s t -l tcp -d 'Listen on a free TCP port on 127.0.0.1 (password required, TLS offered) instead of only a Unix socket'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand run" -s k -l keep -d 'Keep the cluster\'s directory when it stops, so `pgtmp start -d DIR` can start it again (and keeps it again, with or without -k)'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand run" -l no-cache -d 'Load the -f files even if the schema cache holds their result, and do not cache it'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand run" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand list" -l bindir -d 'Directory holding initdb and postgres; skips the search for an installation' -r -F
complete -c pgtmp -n "__fish_pgtmp_using_subcommand list" -l pg -d 'PostgreSQL major version to use, among the installations found (`pgtmp doctor` lists them); `pgtmp run` also takes several, e.g. 15,16,17, or `all`, and runs CMD once per major, each against a cluster of its own' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand list" -l pg-path -d 'More places to look for installations for --pg, separated by \':\': bin directories, or directories searched (4 levels deep) for bin/ with initdb and postgres, e.g. where relocatable server builds are unpacked' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand list" -l run-as -d 'Account the server runs as when pgtmp is invoked by root [default: postgres, else nobody, or the owner of an existing PGTMP_DIR]; root keeps one state directory per account, and without --run-as list, stop, gc, clone and schema cover them all. PGTMP_RUN_AS is ignored when pgtmp is not invoked by root' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand list" -l json -d 'Print a JSON array instead of a table'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand list" -s a -l all -d 'Also list the kept clusters that have stopped: directory, version, when last used, size, and the command that starts one again'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand list" -s h -l help -d 'Print help'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand ls" -l bindir -d 'Directory holding initdb and postgres; skips the search for an installation' -r -F
complete -c pgtmp -n "__fish_pgtmp_using_subcommand ls" -l pg -d 'PostgreSQL major version to use, among the installations found (`pgtmp doctor` lists them); `pgtmp run` also takes several, e.g. 15,16,17, or `all`, and runs CMD once per major, each against a cluster of its own' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand ls" -l pg-path -d 'More places to look for installations for --pg, separated by \':\': bin directories, or directories searched (4 levels deep) for bin/ with initdb and postgres, e.g. where relocatable server builds are unpacked' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand ls" -l run-as -d 'Account the server runs as when pgtmp is invoked by root [default: postgres, else nobody, or the owner of an existing PGTMP_DIR]; root keeps one state directory per account, and without --run-as list, stop, gc, clone and schema cover them all. PGTMP_RUN_AS is ignored when pgtmp is not invoked by root' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand ls" -l json -d 'Print a JSON array instead of a table'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand ls" -s a -l all -d 'Also list the kept clusters that have stopped: directory, version, when last used, size, and the command that starts one again'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand ls" -s h -l help -d 'Print help'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand keep" -l bindir -d 'Directory holding initdb and postgres; skips the search for an installation' -r -F
complete -c pgtmp -n "__fish_pgtmp_using_subcommand keep" -l pg -d 'PostgreSQL major version to use, among the installations found (`pgtmp doctor` lists them); `pgtmp run` also takes several, e.g. 15,16,17, or `all`, and runs CMD once per major, each against a cluster of its own' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand keep" -l pg-path -d 'More places to look for installations for --pg, separated by \':\': bin directories, or directories searched (4 levels deep) for bin/ with initdb and postgres, e.g. where relocatable server builds are unpacked' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand keep" -l run-as -d 'Account the server runs as when pgtmp is invoked by root [default: postgres, else nobody, or the owner of an existing PGTMP_DIR]; root keeps one state directory per account, and without --run-as list, stop, gc, clone and schema cover them all. PGTMP_RUN_AS is ignored when pgtmp is not invoked by root' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand keep" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand now" -l bindir -d 'Directory holding initdb and postgres; skips the search for an installation' -r -F
complete -c pgtmp -n "__fish_pgtmp_using_subcommand now" -l pg -d 'PostgreSQL major version to use, among the installations found (`pgtmp doctor` lists them); `pgtmp run` also takes several, e.g. 15,16,17, or `all`, and runs CMD once per major, each against a cluster of its own' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand now" -l pg-path -d 'More places to look for installations for --pg, separated by \':\': bin directories, or directories searched (4 levels deep) for bin/ with initdb and postgres, e.g. where relocatable server builds are unpacked' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand now" -l run-as -d 'Account the server runs as when pgtmp is invoked by root [default: postgres, else nobody, or the owner of an existing PGTMP_DIR]; root keeps one state directory per account, and without --run-as list, stop, gc, clone and schema cover them all. PGTMP_RUN_AS is ignored when pgtmp is not invoked by root' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand now" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand discard" -l bindir -d 'Directory holding initdb and postgres; skips the search for an installation' -r -F
complete -c pgtmp -n "__fish_pgtmp_using_subcommand discard" -l pg -d 'PostgreSQL major version to use, among the installations found (`pgtmp doctor` lists them); `pgtmp run` also takes several, e.g. 15,16,17, or `all`, and runs CMD once per major, each against a cluster of its own' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand discard" -l pg-path -d 'More places to look for installations for --pg, separated by \':\': bin directories, or directories searched (4 levels deep) for bin/ with initdb and postgres, e.g. where relocatable server builds are unpacked' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand discard" -l run-as -d 'Account the server runs as when pgtmp is invoked by root [default: postgres, else nobody, or the owner of an existing PGTMP_DIR]; root keeps one state directory per account, and without --run-as list, stop, gc, clone and schema cover them all. PGTMP_RUN_AS is ignored when pgtmp is not invoked by root' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand discard" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand doctor" -l bindir -d 'Directory holding initdb and postgres; skips the search for an installation' -r -F
complete -c pgtmp -n "__fish_pgtmp_using_subcommand doctor" -l pg -d 'PostgreSQL major version to use, among the installations found (`pgtmp doctor` lists them); `pgtmp run` also takes several, e.g. 15,16,17, or `all`, and runs CMD once per major, each against a cluster of its own' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand doctor" -l pg-path -d 'More places to look for installations for --pg, separated by \':\': bin directories, or directories searched (4 levels deep) for bin/ with initdb and postgres, e.g. where relocatable server builds are unpacked' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand doctor" -l run-as -d 'Account the server runs as when pgtmp is invoked by root [default: postgres, else nobody, or the owner of an existing PGTMP_DIR]; root keeps one state directory per account, and without --run-as list, stop, gc, clone and schema cover them all. PGTMP_RUN_AS is ignored when pgtmp is not invoked by root' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand doctor" -s h -l help -d 'Print help'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand clone" -s F -l format -d 'Print the URL as `uri` or, for a TCP cluster, as `jdbc` [default: uri]' -r -f -a "uri\t''
jdbc\t''"
complete -c pgtmp -n "__fish_pgtmp_using_subcommand clone" -l bindir -d 'Directory holding initdb and postgres; skips the search for an installation' -r -F
complete -c pgtmp -n "__fish_pgtmp_using_subcommand clone" -l pg -d 'PostgreSQL major version to use, among the installations found (`pgtmp doctor` lists them); `pgtmp run` also takes several, e.g. 15,16,17, or `all`, and runs CMD once per major, each against a cluster of its own' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand clone" -l pg-path -d 'More places to look for installations for --pg, separated by \':\': bin directories, or directories searched (4 levels deep) for bin/ with initdb and postgres, e.g. where relocatable server builds are unpacked' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand clone" -l run-as -d 'Account the server runs as when pgtmp is invoked by root [default: postgres, else nobody, or the owner of an existing PGTMP_DIR]; root keeps one state directory per account, and without --run-as list, stop, gc, clone and schema cover them all. PGTMP_RUN_AS is ignored when pgtmp is not invoked by root' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand clone" -l drop -d 'Drop the clone named by URL now instead of at the end of the cluster'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand clone" -s h -l help -d 'Print help'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand schema" -s F -l format -d 'Print the URL as `uri` or, for a TCP cluster, as `jdbc` [default: uri]' -r -f -a "uri\t''
jdbc\t''"
complete -c pgtmp -n "__fish_pgtmp_using_subcommand schema" -l bindir -d 'Directory holding initdb and postgres; skips the search for an installation' -r -F
complete -c pgtmp -n "__fish_pgtmp_using_subcommand schema" -l pg -d 'PostgreSQL major version to use, among the installations found (`pgtmp doctor` lists them); `pgtmp run` also takes several, e.g. 15,16,17, or `all`, and runs CMD once per major, each against a cluster of its own' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand schema" -l pg-path -d 'More places to look for installations for --pg, separated by \':\': bin directories, or directories searched (4 levels deep) for bin/ with initdb and postgres, e.g. where relocatable server builds are unpacked' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand schema" -l run-as -d 'Account the server runs as when pgtmp is invoked by root [default: postgres, else nobody, or the owner of an existing PGTMP_DIR]; root keeps one state directory per account, and without --run-as list, stop, gc, clone and schema cover them all. PGTMP_RUN_AS is ignored when pgtmp is not invoked by root' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand schema" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand gc" -l bindir -d 'Directory holding initdb and postgres; skips the search for an installation' -r -F
complete -c pgtmp -n "__fish_pgtmp_using_subcommand gc" -l pg -d 'PostgreSQL major version to use, among the installations found (`pgtmp doctor` lists them); `pgtmp run` also takes several, e.g. 15,16,17, or `all`, and runs CMD once per major, each against a cluster of its own' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand gc" -l pg-path -d 'More places to look for installations for --pg, separated by \':\': bin directories, or directories searched (4 levels deep) for bin/ with initdb and postgres, e.g. where relocatable server builds are unpacked' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand gc" -l run-as -d 'Account the server runs as when pgtmp is invoked by root [default: postgres, else nobody, or the owner of an existing PGTMP_DIR]; root keeps one state directory per account, and without --run-as list, stop, gc, clone and schema cover them all. PGTMP_RUN_AS is ignored when pgtmp is not invoked by root' -r
complete -c pgtmp -n "__fish_pgtmp_using_subcommand gc" -s n -l dry-run -d 'Only print what would be removed'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand gc" -s h -l help -d 'Print help'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand help; and not __fish_seen_subcommand_from start stop initdb selftest serve run list keep now discard doctor clone schema gc help" -f -a "start" -d 'Start a throwaway cluster and print its URL (the default command)'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand help; and not __fish_seen_subcommand_from start stop initdb selftest serve run list keep now discard doctor clone schema gc help" -f -a "stop" -d 'Stop a cluster now and remove its directory (kept with -k, or if it was started with -k)'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand help; and not __fish_seen_subcommand_from start stop initdb selftest serve run list keep now discard doctor clone schema gc help" -f -a "initdb" -d 'Prepare one more ready data directory for the next start and print its path; with -d, a cluster directory DIR for a later `pgtmp -d DIR`'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand help; and not __fish_seen_subcommand_from start stop initdb selftest serve run list keep now discard doctor clone schema gc help" -f -a "selftest" -d 'Start a cluster, query it, stop it, and say what was checked: a smoke test of the installation (pg_tmp\'s `selftest`); exits 1 naming the step that failed'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand help; and not __fish_seen_subcommand_from start stop initdb selftest serve run list keep now discard doctor clone schema gc help" -f -a "serve" -d 'Hand out throwaway databases over HTTP, with faitout\'s and IntegreSQL\'s APIs, on its own cluster or an existing PostgreSQL server'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand help; and not __fish_seen_subcommand_from start stop initdb selftest serve run list keep now discard doctor clone schema gc help" -f -a "run" -d 'Start a cluster, run CMD with PGHOST, PGPORT, PGUSER, PGDATABASE and DATABASE_URL set, then stop the cluster and exit with CMD\'s status'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand help; and not __fish_seen_subcommand_from start stop initdb selftest serve run list keep now discard doctor clone schema gc help" -f -a "list" -d 'List this account\'s running clusters; with --all also the kept ones that have stopped'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand help; and not __fish_seen_subcommand_from start stop initdb selftest serve run list keep now discard doctor clone schema gc help" -f -a "keep" -d 'Keep the cluster of URL when it stops, and say how to start it again'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand help; and not __fish_seen_subcommand_from start stop initdb selftest serve run list keep now discard doctor clone schema gc help" -f -a "now" -d 'Move the frozen time of the cluster of URL (started with --now), for every session'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand help; and not __fish_seen_subcommand_from start stop initdb selftest serve run list keep now discard doctor clone schema gc help" -f -a "discard" -d 'Stop a cluster if it runs and remove its directory, kept or not'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand help; and not __fish_seen_subcommand_from start stop initdb selftest serve run list keep now discard doctor clone schema gc help" -f -a "doctor" -d 'Check the installation, accounts, state directory and pool; say how to fix what is wrong'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand help; and not __fish_seen_subcommand_from start stop initdb selftest serve run list keep now discard doctor clone schema gc help" -f -a "clone" -d 'Print the URL of a fresh database in the cluster of URL: a copy of its loaded state'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand help; and not __fish_seen_subcommand_from start stop initdb selftest serve run list keep now discard doctor clone schema gc help" -f -a "schema" -d 'Create a fresh schema in URL\'s database and print a URL that puts it first on search_path'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand help; and not __fish_seen_subcommand_from start stop initdb selftest serve run list keep now discard doctor clone schema gc help" -f -a "gc" -d 'Remove what killed or crashed runs left: servers without a watchdog, their directories, incomplete pool entries; and schema cache entries unused for PGTMP_CACHE_DAYS days (default 7), their ready copies after an hour unused. Prints one line per thing removed'
complete -c pgtmp -n "__fish_pgtmp_using_subcommand help; and not __fish_seen_subcommand_from start stop initdb selftest serve run list keep now discard doctor clone schema gc help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
