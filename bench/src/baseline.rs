//! The `baseline` peer: a plain WebSocket relay on tokio + tokio-tungstenite,
//! the way most teams would write one. Devices and POS connect to `/pair`;
//! the first message of each names a pair id; once both ends of a pair are
//! there the relay sends `paired` to both and forwards data frames both ways
//! (pings and pongs stay hop-by-hop, as tungstenite handles them). No auth,
//! no claims, no queues: it is what posrelay's relay hop is compared with.
//!
//! One current-thread runtime, so that pinned to one CPU it is compared on
//! equal terms with `posrelay serve --shards 1`. With TLS (`--tls`), each accepted
//! socket goes through tokio-rustls' `TlsAcceptor` first, the way most teams add TLS
//! to such a server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Waiting<S> = Arc<Mutex<HashMap<String, oneshot::Sender<WebSocketStream<S>>>>>;

/// Serves the baseline relay on `listen` (over TLS with `tls`) until the process is
/// stopped; `on_ready` gets the bound address.
pub fn serve(
    listen: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    on_ready: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        on_ready(listener.local_addr()?);
        match tls {
            None => {
                let waiting: Waiting<TcpStream> = Arc::default();
                loop {
                    let (stream, _) = listener.accept().await?;
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(handle(stream, waiting.clone()));
                }
            }
            Some(config) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                let waiting: Waiting<tokio_rustls::server::TlsStream<TcpStream>> = Arc::default();
                loop {
                    let (stream, _) = listener.accept().await?;
                    let _ = stream.set_nodelay(true);
                    let (acceptor, waiting) = (acceptor.clone(), waiting.clone());
                    tokio::spawn(async move {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            handle(stream, waiting).await;
                        }
                    });
                }
            }
        }
    })
}

#[allow(clippy::result_large_err)] // tungstenite's callback signature
fn only_pair_path(req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
    if req.uri().path() == "/pair" {
        Ok(resp)
    } else {
        let mut err = ErrorResponse::new(Some("not found".into()));
        *err.status_mut() = StatusCode::NOT_FOUND;
        Err(err)
    }
}

async fn handle<S>(stream: S, waiting: Waiting<S>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, only_pair_path).await else {
        return;
    };
    // The first message names the pair.
    let id = loop {
        match ws.next().await {
            Some(Ok(Message::Text(id))) => break id,
            Some(Ok(Message::Binary(id))) => break String::from_utf8_lossy(&id).into_owned(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            _ => return,
        }
    };
    let rx = {
        let mut map = waiting.lock().unwrap_or_else(|e| e.into_inner());
        match map.remove(&id) {
            Some(tx) => match tx.send(ws) {
                // The other end now owns both connections.
                Ok(()) => return,
                // It went away meanwhile: wait in its place.
                Err(back) => {
                    ws = back;
                    let (tx, rx) = oneshot::channel();
                    map.insert(id, tx);
                    rx
                }
            },
            None => {
                let (tx, rx) = oneshot::channel();
                map.insert(id, tx);
                rx
            }
        }
    };
    // Wait for the other end (the typical code does not watch this one meanwhile).
    let (mut tx_a, rx_a) = ws.split();
    let Ok(peer) = rx.await else { return };
    let (mut tx_b, rx_b) = peer.split();
    let paired = Message::Text("paired".into());
    if tx_a.send(paired.clone()).await.is_err() || tx_b.send(paired).await.is_err() {
        return;
    }
    tokio::join!(pump(rx_a, tx_b), pump(rx_b, tx_a));
}

/// Forwards data messages from `rx` to `tx` until either side ends, then closes `tx`.
async fn pump<R, W>(mut rx: R, mut tx: W)
where
    R: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
    W: futures_util::Sink<Message> + Unpin,
{
    while let Some(Ok(msg)) = rx.next().await {
        match msg {
            Message::Close(_) => break,
            Message::Text(_) | Message::Binary(_) => {}
            // Pings and pongs are hop-by-hop: tungstenite answers them.
            _ => continue,
        }
        if tx.send(msg).await.is_err() {
            break;
        }
    }
    let _ = tx.close().await;
}
