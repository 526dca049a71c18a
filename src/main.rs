//! The `longquant` command line: parse, call the library, print text or `--json`.
mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
