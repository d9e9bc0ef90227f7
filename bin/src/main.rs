//! The `posrelay` binary: serve the relay, run the echo server, and operator helpers.

mod admin_cli;
mod check;
mod cli;
mod client;
mod config;
mod demo;
mod logging;
mod serve;
mod sim;
mod units;

use clap::Parser;

/// mimalloc: an idle relay holds many small allocations per connection, and glibc's
/// malloc adds a header and rounding to each (BENCHMARKS.md, idle).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    match cli.run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // Not eprintln!: it panics when stderr cannot be written.
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "posrelay: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}
