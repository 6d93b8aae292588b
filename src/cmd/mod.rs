//! The subcommands, one file each: each turns its arguments into calls of the layers below
//! and prints the result; they share code only through those layers, never with each other.

mod clone;
mod discard;
mod doctor;
mod gc;
mod initdb;
mod keep;
mod list;
mod now;
mod run;
mod schema;
mod selftest;
mod serve;
mod start;
mod stop;

use crate::cli::{Cli, Command};
use anyhow::Result;

pub fn dispatch(cli: Cli) -> Result<()> {
    let global = cli.global;
    let remote_applies = matches!(
        cli.command,
        None | Some(Command::Start(_) | Command::Stop(_) | Command::Clone(_) | Command::Run(_))
    );
    if global.remote.is_some() && !remote_applies {
        return Err(crate::output::exit::usage(
            "--remote (PGTMP_REMOTE) applies to starts, clone, stop and run only; drop it for this command",
        ));
    }
    match cli.command {
        None => start::run(cli.start, &global),
        Some(Command::Start(args)) => start::run(args, &global),
        Some(Command::Stop(args)) if args.all && global.remote.is_none() => {
            stop::all(args.keep, args.wait, &global)
        }
        Some(Command::Stop(args)) => stop::run(args, &global),
        Some(Command::Initdb(args)) => initdb::run(args.dir.or(cli.start.dir), &global),
        Some(Command::Run(args)) => run::run(args, &global),
        Some(Command::List(args)) => list::run(args.json, args.all, &global),
        Some(Command::Keep(args)) => keep::run(args, &global),
        Some(Command::Discard(args)) => discard::run(args, &global),
        Some(Command::Now(args)) => now::run(args, &global),
        Some(Command::Doctor) => doctor::run(&global),
        Some(Command::Clone(args)) => clone::run(args, &global),
        Some(Command::Schema(args)) => schema::run(args, &global),
        Some(Command::Gc(args)) => gc::run(&args, &global),
        Some(Command::Selftest) => selftest::run(&global),
        Some(Command::Serve(args)) => serve::run(args, &global),
    }
}
