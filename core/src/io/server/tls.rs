//! TLS for the relay listener: PEM certificate chain and key loaded with rustls, and
//! reloaded without a restart on SIGHUP (new connections get the new certificate);
//! session resumption with stateless tickets; and the TLS-aware answer to a connection
//! refused before its request was read.
//!
//! Resumption (RFC 8446 §2.2, §4.6.1): after a full handshake the relay sends one
//! session ticket, sealed with a key that only this process holds in memory
//! (ChaCha20-Poly1305, rustls' `Ticketer`: a fresh random key every 6 hours, the
//! previous one still accepted, tickets valid 12 hours). A terminal that reconnects
//! presents it and resumes with a PSK (EC)DHE handshake: no certificate, no signature.
//! Nothing is stored per session on the relay; a restart makes every ticket invalid
//! (full handshakes again), and a certificate reload keeps the ticket key.

use super::shard::ShardCtx;
use crate::io::http::with_timeout;
use crate::io::transport::Transport;
use bytes::BytesMut;
use glommio::net::TcpStream;
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The current server configuration, swappable.
pub(crate) struct TlsReloader {
    cert: PathBuf,
    key: PathBuf,
    /// The session ticket key (kept across certificate reloads).
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl TlsReloader {
    /// Loads the certificate and key; fails with a message that names the file.
    pub fn load(cert: &Path, key: &Path) -> std::io::Result<TlsReloader> {
        let ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| std::io::Error::other(format!("cannot make a TLS ticket key: {e}")))?;
        let config = build(cert, key, &ticketer)?;
        Ok(TlsReloader {
            cert: cert.to_owned(),
            key: key.to_owned(),
            ticketer,
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// The configuration for a new connection.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Reads the files again; on error the old certificate stays in use.
    pub fn reload(&self) -> std::io::Result<()> {
        let config = build(&self.cert, &self.key, &self.ticketer)?;
        match self.current.write() {
            Ok(mut c) => *c = Arc::new(config),
            Err(e) => *e.into_inner() = Arc::new(config),
        }
        Ok(())
    }
}

/// The relay's TLS server configuration for `cert` and `key` (PEM files), with a fresh
/// ticket key: what `posrelay echo` and the benchmark's TLS peers serve, so that they
/// compare with the relay on the same TLS parameters.
pub fn load_server_config(cert: &Path, key: &Path) -> std::io::Result<Arc<rustls::ServerConfig>> {
    let ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|e| std::io::Error::other(format!("cannot make a TLS ticket key: {e}")))?;
    Ok(Arc::new(build(cert, key, &ticketer)?))
}

/// A server configuration for `cert` and `key` (PEM) that resumes sessions with
/// tickets sealed by `ticketer`.
fn build(
    cert: &Path,
    key: &Path,
    ticketer: &Arc<dyn rustls::server::ProducesTickets>,
) -> std::io::Result<rustls::ServerConfig> {
    let certs = {
        let mut reader = std::io::BufReader::new(open(cert)?);
        rustls_pemfile::certs(&mut reader)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(cert, &e.to_string()))?
    };
    if certs.is_empty() {
        return Err(bad(cert, "no PEM certificate found"));
    }
    let key_der = {
        let mut reader = std::io::BufReader::new(open(key)?);
        rustls_pemfile::private_key(&mut reader)
            .map_err(|e| bad(key, &e.to_string()))?
            .ok_or_else(|| bad(key, "no PEM private key found"))?
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| bad(cert, &format!("certificate and key do not fit: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Stateless resumption: one ticket per full or resumed handshake (a client uses a
    // TLS 1.3 ticket once), and no session cache held by the relay.
    config.ticketer = ticketer.clone();
    config.send_tls13_tickets = 1;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(config)
}

fn open(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))
}

fn bad(path: &Path, what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    )
}

/// At most this many refusals per shard complete a TLS handshake at once to say `503`;
/// beyond, a refused TLS connection is closed without a word (a full handshake costs
/// hundreds of microseconds of CPU: a flood must not turn refusals into a CPU sink).
const MAX_TLS_REFUSALS: usize = 256;

thread_local! {
    /// TLS refusals in progress on this shard.
    static TLS_REFUSALS: Cell<usize> = const { Cell::new(0) };
}

/// Counts one TLS refusal in progress while it lives.
struct RefusalSlot;

impl RefusalSlot {
    fn take() -> Option<RefusalSlot> {
        TLS_REFUSALS.with(|n| {
            (n.get() < MAX_TLS_REFUSALS).then(|| {
                n.set(n.get() + 1);
                RefusalSlot
            })
        })
    }
}

impl Drop for RefusalSlot {
    fn drop(&mut self) {
        TLS_REFUSALS.with(|n| n.set(n.get() - 1));
    }
}

/// Answers a connection refused before its request was read (an admission limit) with
/// `answer` and closes it. On a plain listener the answer is written at once. On a TLS
/// listener it is never written in plaintext into what the client takes for a TLS
/// stream: the TLS handshake completes first (resumed, and so cheap, for a client that
/// holds a ticket), the client's first request bytes are read, and the answer goes
/// over TLS, followed by close_notify. A TLS client that does not finish its handshake
/// and send its request within the handshake timeout, or a refusal beyond
/// [`MAX_TLS_REFUSALS`] in progress on the shard, gets the connection closed without
/// a word.
pub(crate) async fn refuse_connection(ctx: &ShardCtx, stream: TcpStream, answer: &[u8]) {
    let Some(tls) = &ctx.shared.tls else {
        let mut transport = Transport::Plain(stream);
        let _ = transport.write_all_vectored(&[answer]).await;
        return transport.shutdown().await;
    };
    let Some(_slot) = RefusalSlot::take() else {
        tracing::debug!("too many TLS refusals in progress: closing without an answer");
        drop(stream);
        return;
    };
    let _ = stream.set_nodelay(true);
    let mut transport = match Transport::tls(stream, tls.current()) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "tls setup failed");
            return;
        }
    };
    let mut request = BytesMut::new();
    let timeout = ctx.shared.config.handshake_timeout;
    let read = with_timeout(timeout, transport.read_into(&mut request)).await;
    if matches!(read, Some(Ok(n)) if n > 0) {
        let _ = transport.write_all_vectored(&[answer]).await;
    }
    transport.shutdown().await;
}
