//! The command line: `posrelay serve`, `echo`, `demo`, `device-sim`, `pos-sim`, `admin`.

use crate::config::ServeArgs;
use crate::logging::{self, LogFormat};
use clap::{CommandFactory as _, Parser, Subcommand};
use std::net::SocketAddr;

/// `--version`: the release, the commit it was built from and the build date
/// (bin/build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("POSRELAY_COMMIT"),
    ", built ",
    env!("POSRELAY_BUILD_DATE"),
    ")"
);

/// posrelay: a self-hosted cloud connector for payment terminals.
///
/// Terminals keep a WebSocket to the relay; POS software claims a terminal by its
/// serial number and the two exchange frames through the relay, untouched.
#[derive(Debug, Parser)]
#[command(name = "posrelay", version = VERSION, propagate_version = true, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay (embedded store in --data-dir; nothing else to install).
    Serve(Box<ServeArgs>),
    /// Check the configuration as serve would read it, without starting (like nginx -t).
    CheckConfig(Box<ServeArgs>),
    /// Run an RFC 6455 echo server on the protocol core (for conformance tests).
    Echo(EchoArgs),
    /// Try it: a relay, two simulated terminals and a POS through the whole flow, then keep serving.
    Demo(Box<crate::demo::DemoArgs>),
    /// Simulate a payment terminal: register, answer requests, reconnect with backoff.
    DeviceSim(crate::sim::device::DeviceSimArgs),
    /// Simulate a POS: get a token, claim a terminal, send messages, print replies.
    PosSim(crate::sim::pos::PosSimArgs),
    /// Provision from the command line: domains, stores, POS clients, terminals.
    Admin(crate::admin_cli::AdminArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): posrelay man > posrelay.1
    Man,
}

/// Flags of `posrelay echo`.
#[derive(Debug, clap::Args)]
struct EchoArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:9001", value_name = "ADDR")]
    listen: SocketAddr,
    /// Number of shards [default: all cores]
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Largest message accepted, in bytes
    #[arg(long, default_value_t = 16 << 20, value_name = "BYTES")]
    max_message_bytes: usize,
}

impl Cli {
    /// Runs the chosen command.
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Serve(args) => {
                let settings = args.resolve()?;
                let _log = logging::init(settings.log_format);
                crate::serve::run(settings)
            }
            Command::CheckConfig(args) => crate::check::run(&args),
            Command::Echo(args) => {
                let _log = logging::init(LogFormat::Text);
                run_echo(args)
            }
            Command::Demo(args) => crate::demo::run(*args),
            Command::DeviceSim(args) => {
                let _log = logging::init(LogFormat::Text);
                crate::sim::device::run(args)
            }
            Command::PosSim(args) => {
                let _log = logging::init(LogFormat::Text);
                crate::sim::pos::run(args)
            }
            Command::Admin(args) => crate::admin_cli::run(args),
            Command::Completions { shell } => {
                let mut out = Vec::new();
                clap_complete::generate(shell, &mut Cli::command(), "posrelay", &mut out);
                write_stdout(&out)
            }
            Command::Man => {
                let mut out = Vec::new();
                clap_mangen::Man::new(Cli::command()).render(&mut out)?;
                write_stdout(&out)
            }
        }
    }
}

/// Writes generated text to stdout (a closed pipe is an error, not a panic).
fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()?;
    Ok(())
}

fn run_echo(args: EchoArgs) -> anyhow::Result<()> {
    use posrelay_core::io::echo::{serve_echo, EchoConfig};
    use posrelay_core::io::runtime::RuntimeConfig;
    use posrelay_core::proto::Limits;
    let mut runtime = RuntimeConfig::default();
    if let Some(n) = args.shards {
        runtime.shards = n;
    }
    let config = EchoConfig {
        listen: args.listen,
        runtime,
        limits: Limits {
            max_frame_payload: args.max_message_bytes as u64,
            max_message: args.max_message_bytes,
        },
        tls: None,
    };
    serve_echo(config, |addr| {
        // The first line on stdout is the address: tests and scripts read it.
        println!("listening on ws://{addr}");
        tracing::info!(%addr, "echo server ready");
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Client ids and secrets are base64url: one in 64 starts with `-`, and must still be
    /// taken as a value, not as an unknown option.
    #[test]
    fn ids_and_secrets_that_start_with_a_dash_are_values() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("posrelay").chain(args.iter().copied()))
                .map_err(|e| e.to_string())
        };
        let device = parse(&[
            "device-sim",
            "--tsn",
            "12345678",
            "--client-id",
            "-abc",
            "--client-secret",
            "-def",
        ])
        .unwrap();
        let Command::DeviceSim(d) = device.command else {
            panic!("{device:?}")
        };
        assert_eq!(d.client_id.as_deref(), Some("-abc"));
        let pos = parse(&[
            "pos-sim",
            "--domain",
            "acme",
            "--tsn",
            "12345678",
            "--client-id",
            "-abc",
            "--client-secret",
            "-def",
        ])
        .unwrap();
        let Command::PosSim(p) = pos.command else {
            panic!("{pos:?}")
        };
        assert_eq!(
            (p.client_id.as_str(), p.client_secret.as_str()),
            ("-abc", "-def")
        );
        for sub in ["rotate-secret", "delete-client"] {
            parse(&["admin", sub, "--domain", "acme", "-abc"]).unwrap();
        }
    }
}
