//! `--tls`: a certificate generated for the run (trusted by the generator's client and
//! nothing else), the client configuration, and a TLS client stream on glommio driven
//! by rustls' own client connection.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

/// The run's certificate: PEM files for the targets, DER for the client.
#[derive(Debug, Clone)]
pub struct RunCert {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// The certificate (DER), which the client trusts.
    pub der: Vec<u8>,
}

impl RunCert {
    /// A self-signed certificate for 127.0.0.1, written into `dir`.
    pub fn generate(dir: &Path) -> anyhow::Result<RunCert> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let made = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
        ])
        .context("generating the run's certificate")?;
        let cert = dir.join("bench-cert.pem");
        let key = dir.join("bench-key.pem");
        std::fs::write(&cert, made.cert.pem())?;
        std::fs::write(&key, made.key_pair.serialize_pem())?;
        Ok(RunCert {
            cert,
            key,
            der: made.cert.der().to_vec(),
        })
    }

    /// A client configuration that trusts this certificate only; `resume`: keep session
    /// tickets and resume with them (rustls' default), or always make full handshakes.
    pub fn client_config(&self, resume: bool) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        // A certificate rcgen just made always parses.
        let _ = roots.add(rustls::pki_types::CertificateDer::from(self.der.clone()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| unreachable!("ring supports the default versions: {e}"))
            .with_root_certificates(roots)
            .with_no_client_auth();
        if resume {
            // Enough tickets for every device of a storm (each keeps the last one it got).
            config.resumption = rustls::client::Resumption::in_memory_sessions(65_536);
        } else {
            config.resumption = rustls::client::Resumption::disabled();
        }
        Arc::new(config)
    }
}

/// A TLS client connection over a glommio socket (rustls' buffered client).
pub struct TlsClient {
    tcp: TcpStream,
    conn: rustls::ClientConnection,
    /// Ciphertext read from the socket; `rbuf[rpos..rlen]` is not yet given to rustls.
    rbuf: Box<[u8]>,
    rpos: usize,
    rlen: usize,
    /// Ciphertext to write: `wbuf[wpos..]`.
    wbuf: Vec<u8>,
    wpos: usize,
    /// Plaintext bytes a pending `poll_write` already gave rustls.
    accepted: Option<usize>,
}

impl TlsClient {
    /// Starts a TLS session to "127.0.0.1" on `tcp` (the handshake runs as it is used).
    pub fn new(tcp: TcpStream, config: Arc<rustls::ClientConfig>) -> io::Result<TlsClient> {
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1")
            .map_err(|e| io::Error::other(e.to_string()))?;
        let conn = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
        Ok(TlsClient {
            tcp,
            conn,
            rbuf: vec![0; 32 * 1024].into_boxed_slice(),
            rpos: 0,
            rlen: 0,
            wbuf: Vec::new(),
            wpos: 0,
            accepted: None,
        })
    }

    /// How the handshake went (full or resumed), once known.
    pub fn handshake_kind(&self) -> Option<rustls::HandshakeKind> {
        self.conn.handshake_kind()
    }

    /// Writes out every ciphertext byte rustls has for the socket.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            while self.wpos < self.wbuf.len() {
                match Pin::new(&mut self.tcp).poll_write(cx, &self.wbuf[self.wpos..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => self.wpos += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            self.wbuf.clear();
            self.wpos = 0;
            if !self.conn.wants_write() {
                return Poll::Ready(Ok(()));
            }
            self.conn.write_tls(&mut self.wbuf)?;
        }
    }
}

impl AsyncRead for TlsClient {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            match this.conn.reader().read(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            // Ciphertext already read goes to rustls only once the plaintext it gave
            // before is taken: rustls refuses more ("received plaintext buffer full")
            // past 16 KiB of plaintext, which one read of two 16 KiB messages exceeds.
            if this.rpos == this.rlen {
                // The handshake (or a reply rustls owes) goes out before we wait for more.
                if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                    return Poll::Ready(Err(e));
                }
                this.rlen = match Pin::new(&mut this.tcp).poll_read(cx, &mut this.rbuf) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Ok(0)),
                    Poll::Ready(Ok(n)) => n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                };
                this.rpos = 0;
            }
            let mut input = &this.rbuf[this.rpos..this.rlen];
            this.rpos += this.conn.read_tls(&mut input)?;
            if let Err(e) = this.conn.process_new_packets() {
                let _ = this.poll_send(cx);
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
    }
}

impl AsyncWrite for TlsClient {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.accepted.is_none() {
            // Finish what an earlier write left before taking more.
            match this.poll_send(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other.map(|r| r.map(|()| 0)),
            }
            let n = this.conn.writer().write(data)?;
            this.accepted = Some(n);
        }
        match this.poll_send(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(this.accepted.take().unwrap_or(0))),
            Poll::Ready(Err(e)) => {
                this.accepted = None;
                Poll::Ready(Err(e))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.conn.send_close_notify();
        match this.poll_send(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.tcp).poll_close(cx),
            other => other,
        }
    }
}

/// The generator's socket: plain TCP or TLS.
pub enum ClientStream {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://`.
    Tls(Box<TlsClient>),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, data),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_close(cx),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_close(cx),
        }
    }
}
