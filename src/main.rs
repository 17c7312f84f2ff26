//! The `tally` binary: parse the command line and hand over to the crate.

/// See Cargo.toml (`mimalloc`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tally::cli::main()
}
