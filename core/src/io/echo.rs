//! `posrelay echo`: an RFC 6455 echo server on the protocol core, for conformance
//! runs (Autobahn) and as the smallest use of the io layer.

use super::http::{read_request, ReadRequestError, RequestLimits};
use super::runtime::{resolve_ports, run_shards, RuntimeConfig};
use super::transport::Transport;
use super::ws::{WsIoError, WsStream};
use crate::handshake::{accept_key, error_response, switching_protocols, UpgradeRequest};
use crate::proto::{CloseCode, CloseState, Connection, Event, Limits, Role};
use bytes::BytesMut;
use glommio::net::TcpListener;
use std::net::SocketAddr;

/// What the echo server is told.
#[derive(Debug, Clone)]
pub struct EchoConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Executors.
    pub runtime: RuntimeConfig,
    /// Frame and message limits.
    pub limits: Limits,
    /// Serve `wss://` with this configuration (see `server::load_server_config`).
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

/// Serves echo on every shard until the process is stopped. `on_ready` gets the bound address.
pub fn serve_echo(config: EchoConfig, on_ready: impl FnOnce(SocketAddr)) -> std::io::Result<()> {
    let [addr] = resolve_ports([config.listen])
        .map_err(|e| std::io::Error::new(e.source.kind(), e.explain("--listen")))?;
    let limits = config.limits;
    let tls = config.tls.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    let shards = config.runtime.shards.max(1);
    let runtime = config.runtime.clone();
    let handle = std::thread::spawn(move || {
        run_shards(&runtime, move || async move {
            let listener = match TcpListener::bind(addr) {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(std::io::Error::other(e.to_string())));
                    return;
                }
            };
            loop {
                let Ok(stream) = listener.accept().await else {
                    continue;
                };
                let limits = limits;
                let tls = tls.clone();
                glommio::spawn_local(async move {
                    let _ = stream.set_nodelay(true);
                    let transport = match tls {
                        Some(config) => match Transport::tls(stream, config) {
                            Ok(t) => t,
                            Err(_) => return,
                        },
                        None => Transport::Plain(stream),
                    };
                    serve_connection(transport, limits).await;
                })
                .detach();
            }
        })
    });
    for _ in 0..shards {
        ready_rx.recv().map_err(std::io::Error::other)??;
    }
    on_ready(addr);
    handle
        .join()
        .map_err(|_| std::io::Error::other("echo shards panicked"))??;
    Ok(())
}

async fn serve_connection(mut transport: Transport, limits: Limits) {
    let mut rbuf = BytesMut::with_capacity(4096);
    let request = match read_request(&mut transport, &mut rbuf, &RequestLimits::default()).await {
        Ok(r) => r,
        Err(ReadRequestError::Invalid(err)) => {
            let _ = transport.write_all_vectored(&[&error_response(&err)]).await;
            transport.shutdown().await;
            return;
        }
        Err(_) => return,
    };
    let upgrade = match UpgradeRequest::from_head(&request.head) {
        Ok(u) => u,
        Err(err) => {
            let _ = transport.write_all_vectored(&[&error_response(&err)]).await;
            transport.shutdown().await;
            return;
        }
    };
    let answer = switching_protocols(&accept_key(&upgrade.key), None);
    if transport.write_all_vectored(&[&answer]).await.is_err() {
        return;
    }
    let mut ws = WsStream::new(transport, rbuf, Connection::new(Role::Server, limits));
    loop {
        match ws.next_event().await {
            Ok(Some(Event::Message(message))) => {
                if ws.send_message(&message).await.is_err() {
                    return;
                }
            }
            Ok(Some(Event::Close(_))) => {
                if ws.proto.close_state() == CloseState::Closed {
                    break;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(WsIoError::Protocol(_)) => break,
            Err(WsIoError::Io(_)) => return,
        }
    }
    // RFC 6455 §7.1.1: once the closing handshake is done the server closes TCP first.
    if ws.proto.close_state() != CloseState::Closed {
        let _ = ws.send_close(CloseCode::NORMAL, "").await;
    }
    ws.transport.shutdown().await;
}
