//! The `posrelay` binary: serve the relay, run the echo server, and operator helpers.

mod cli;
mod config;
mod logging;
mod serve;
mod units;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    match cli.run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("posrelay: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}
