//! The `handshake` scenario: how many connections per second the target takes on one
//! CPU. `--handshake-clients` clients each connect, make one HTTP request (a path the
//! target answers with an error), read to the end, and start again. With `--tls` it
//! runs twice: full TLS handshakes (the client keeps no ticket), then resumed ones
//! (the client presents the ticket of its previous connection: TLS 1.3 PSK, no
//! certificate, no signature). Measured: connections per second and the target's CPU
//! per connection, over the measured window after a warm-up.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use serde::Serialize;

use crate::flow::Env;
use crate::procfs;
use crate::tls::{ClientStream, RunCert, TlsClient};

/// One phase's figures.
#[derive(Debug, Clone, Serialize)]
pub struct HandshakeFigures {
    /// Connections completed in the measured window.
    pub connections: u64,
    /// Connections per second.
    pub per_second: f64,
    /// Target CPU per connection (µs).
    pub target_cpu_us_per_connection: Option<f64>,
    /// Of the measured connections, how many resumed a TLS session.
    pub resumed: u64,
    /// Connections that failed.
    pub errors: u64,
}

/// What the scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct HandshakeOutcome {
    /// Clients connecting at once.
    pub clients: usize,
    /// Full handshakes (or, without TLS, plain connections).
    pub full: HandshakeFigures,
    /// Resumed TLS handshakes (`None` without TLS).
    pub resumed: Option<HandshakeFigures>,
}

struct Counts {
    done: Cell<u64>,
    resumed: Cell<u64>,
    errors: Cell<u64>,
    stop: Cell<bool>,
}

/// One connection: connect, (TLS), one request, read to the end; whether it resumed.
async fn one(
    env: &Env,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
) -> anyhow::Result<bool> {
    let tcp = TcpStream::connect(env.ws)
        .await
        .map_err(std::io::Error::from)?;
    tcp.set_nodelay(true).map_err(std::io::Error::from)?;
    let mut stream = match tls {
        Some(config) => ClientStream::Tls(Box::new(TlsClient::new(tcp, config.clone())?)),
        None => ClientStream::Plain(tcp),
    };
    stream
        .write_all(b"GET /posrelay-bench-handshake HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = vec![0u8; 4096];
    let mut got = 0;
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => got += n,
            // A peer that closes without close_notify (tokio-rustls on a refused request).
            Err(_) if got > 0 => break,
            Err(e) => {
                // The handshake completed if the session says how it went.
                if let ClientStream::Tls(t) = &stream {
                    if t.handshake_kind().is_some() {
                        break;
                    }
                }
                return Err(e.into());
            }
        }
    }
    Ok(match &stream {
        ClientStream::Tls(t) => t.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        ClientStream::Plain(_) => false,
    })
}

async fn phase(
    env: Rc<Env>,
    tls: Option<(&RunCert, bool)>,
    clients: usize,
    warmup: Duration,
    duration: Duration,
    pid: u32,
) -> HandshakeFigures {
    let counts = Rc::new(Counts {
        done: Cell::new(0),
        resumed: Cell::new(0),
        errors: Cell::new(0),
        stop: Cell::new(false),
    });
    let tasks: Vec<_> = (0..clients.max(1))
        .map(|_| {
            let (env, counts) = (env.clone(), counts.clone());
            // Each client keeps its own tickets, as a terminal does (rustls' client cache
            // holds 8 TLS 1.3 tickets per server name: clients sharing one config would
            // find none left when more than 8 connect at once).
            let tls = tls.map(|(cert, resume)| cert.client_config(resume));
            glommio::spawn_local(async move {
                while !counts.stop.get() {
                    match one(&env, tls.as_ref()).await {
                        Ok(resumed) => {
                            counts.done.set(counts.done.get() + 1);
                            counts
                                .resumed
                                .set(counts.resumed.get() + u64::from(resumed));
                        }
                        Err(_) => {
                            counts.errors.set(counts.errors.get() + 1);
                            glommio::timer::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            })
        })
        .collect();
    glommio::timer::sleep(warmup).await;
    let (done0, resumed0, errors0) = (counts.done.get(), counts.resumed.get(), counts.errors.get());
    let cpu0 = procfs::cpu_ticks(pid).ok();
    let t0 = Instant::now();
    glommio::timer::sleep(duration).await;
    let cpu1 = procfs::cpu_ticks(pid).ok();
    let elapsed = t0.elapsed().as_secs_f64();
    let connections = counts.done.get() - done0;
    let resumed = counts.resumed.get() - resumed0;
    let errors = counts.errors.get() - errors0;
    counts.stop.set(true);
    for t in tasks {
        t.await;
    }
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) if connections > 0 => {
            Some(b.since(a).as_duration().as_secs_f64() * 1e6 / connections as f64)
        }
        _ => None,
    };
    HandshakeFigures {
        connections,
        per_second: connections as f64 / elapsed.max(1e-9),
        target_cpu_us_per_connection: cpu,
        resumed,
        errors,
    }
}

/// Runs the scenario: full handshakes, then (with TLS) resumed ones.
pub async fn run_handshakes(
    env: Rc<Env>,
    cert: Option<RunCert>,
    clients: usize,
    warmup: Duration,
    duration: Duration,
    pid: u32,
) -> HandshakeOutcome {
    let full = phase(
        env.clone(),
        cert.as_ref().map(|c| (c, false)),
        clients,
        warmup,
        duration,
        pid,
    )
    .await;
    let resumed = match &cert {
        Some(c) => Some(phase(env, Some((c, true)), clients, warmup, duration, pid).await),
        None => None,
    };
    HandshakeOutcome {
        clients,
        full,
        resumed,
    }
}
