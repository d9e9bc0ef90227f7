//! `baseline --listen ADDR`: the plain tokio + tokio-tungstenite relay that
//! posrelay is compared with (see `posrelay_bench::baseline`). Prints
//! `listening on ws://ADDR` once it accepts connections.

use std::io::Write as _;
use std::net::SocketAddr;

fn main() -> std::io::Result<()> {
    let mut listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9002));
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => {
                let v = args.next().unwrap_or_default();
                listen = v
                    .parse()
                    .map_err(|_| std::io::Error::other(format!("bad --listen {v}")))?;
            }
            _ => {
                return Err(std::io::Error::other(format!(
                    "unknown argument {a}; usage: baseline --listen ADDR"
                )))
            }
        }
    }
    posrelay_bench::baseline::serve(listen, None, |addr| {
        println!("listening on ws://{addr}");
        let _ = std::io::stdout().flush();
    })
}
