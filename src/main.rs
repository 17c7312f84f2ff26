//! The `tally` binary: parse the command line and hand over to the crate.

fn main() -> std::process::ExitCode {
    tally::cli::main()
}
