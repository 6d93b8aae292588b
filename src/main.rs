//! Entry point: runs pgtmp and turns the outcome into the process exit code.

fn main() -> std::process::ExitCode {
    pgtmp::run()
}
