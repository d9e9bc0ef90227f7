//! A connection's byte stream: plain TCP or rustls over TCP, read into a `BytesMut`
//! and written with vectored writes (a frame header and its payload in one syscall,
//! the payload never copied in user space on the plain path).

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};

/// How many bytes one read asks the socket for.
pub const READ_CHUNK: usize = 16 * 1024;

/// The byte stream under a connection.
pub enum Transport {
    /// Plain TCP (`ws://`, `http://`).
    Plain(TcpStream),
    /// TLS over TCP (`wss://`, `https://`).
    Tls(Box<TlsTransport>),
}

/// rustls' sans-IO server connection driven over a glommio socket.
pub struct TlsTransport {
    stream: TcpStream,
    conn: rustls::ServerConnection,
    cipher_in: Vec<u8>,
    cipher_out: Vec<u8>,
}

impl Transport {
    /// Wraps an accepted socket in TLS with `config`.
    pub fn tls(
        stream: TcpStream,
        config: std::sync::Arc<rustls::ServerConfig>,
    ) -> io::Result<Self> {
        let mut conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
        // Bound what rustls buffers for us; beyond it our own writes wait for the socket.
        conn.set_buffer_limit(Some(256 * 1024));
        Ok(Transport::Tls(Box::new(TlsTransport {
            stream,
            conn,
            cipher_in: vec![0; READ_CHUNK],
            cipher_out: Vec::new(),
        })))
    }

    /// Rebuilds a TLS transport from a socket and the TLS state it already negotiated.
    pub fn from_tls_parts(stream: TcpStream, conn: rustls::ServerConnection) -> Self {
        Transport::Tls(Box::new(TlsTransport {
            stream,
            conn,
            cipher_in: vec![0; READ_CHUNK],
            cipher_out: Vec::new(),
        }))
    }

    /// The socket under the transport.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &t.stream,
        }
    }

    /// Whether this transport is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// Reads what is available (at most [`READ_CHUNK`] bytes) and appends it to `buf`.
    /// `Ok(0)` is the end of the stream.
    pub async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Transport::Plain(stream) => {
                let start = buf.len();
                // Reserving reclaims the buffer in place once earlier frames were dropped,
                // so a warm connection reads without allocating.
                buf.resize(start + READ_CHUNK, 0);
                let result = stream.read(&mut buf[start..]).await;
                let n = *result.as_ref().unwrap_or(&0);
                buf.truncate(start + n);
                result
            }
            Transport::Tls(tls) => tls.read_into(buf).await,
        }
    }

    /// Writes every part, in order, completely.
    pub async fn write_all_vectored(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => write_all_plain(stream, parts).await,
            Transport::Tls(tls) => {
                for part in parts {
                    tls.conn.writer().write_all(part)?;
                }
                tls.flush().await
            }
        }
    }

    /// Flushes and half-closes the write side (TLS: sends close_notify first).
    pub async fn shutdown(&mut self) {
        match self {
            Transport::Plain(stream) => {
                let _ = stream.close().await;
            }
            Transport::Tls(tls) => {
                tls.conn.send_close_notify();
                let _ = tls.flush().await;
                let _ = tls.stream.close().await;
            }
        }
    }
}

/// Writes `parts` with one `sendmsg` when the socket has room (the usual case), and
/// finishes a partial write through glommio's readiness-driven path.
async fn write_all_plain(stream: &mut TcpStream, parts: &[&[u8]]) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    if total == 0 {
        return Ok(());
    }
    let mut slices = [IoSlice::new(&[]); 4];
    let count = parts.len().min(slices.len());
    for (slot, part) in slices.iter_mut().zip(parts.iter()) {
        *slot = IoSlice::new(part);
    }
    let mut written = if parts.len() <= slices.len() {
        match send_vectored_nonblocking(stream, &slices[..count]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        }
    } else {
        0
    };
    // Finish what the kernel did not take, part by part.
    for part in parts {
        if written >= part.len() {
            written -= part.len();
            continue;
        }
        stream.write_all(&part[written..]).await?;
        written = 0;
    }
    Ok(())
}

/// One non-blocking `sendmsg(2)` of `parts` (`MSG_DONTWAIT | MSG_NOSIGNAL`).
#[allow(unsafe_code)]
pub fn send_vectored_nonblocking(stream: &TcpStream, parts: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: the descriptor belongs to `stream`, which is borrowed for the whole
    // lifetime of `fd`; nothing closes it meanwhile. Differential test:
    // `tests::vectored_fast_path_writes_the_same_bytes`.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    socket2::SockRef::from(&fd)
        .send_vectored_with_flags(parts, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}

impl TlsTransport {
    /// The socket and the TLS state, for a driver that takes the connection over.
    pub fn into_parts(self) -> (TcpStream, rustls::ServerConnection) {
        (self.stream, self.conn)
    }

    async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            let start = buf.len();
            buf.resize(start + READ_CHUNK, 0);
            let plain = self.conn.reader().read(&mut buf[start..]);
            match plain {
                Ok(n) => {
                    buf.truncate(start + n);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => buf.truncate(start),
                Err(e) => {
                    buf.truncate(start);
                    return Err(e);
                }
            }
            if self.conn.wants_write() {
                self.flush().await?;
            }
            let n = self.stream.read(&mut self.cipher_in).await?;
            if n == 0 {
                return Ok(0);
            }
            let mut input = &self.cipher_in[..n];
            while !input.is_empty() {
                self.conn.read_tls(&mut input)?;
                if let Err(e) = self.conn.process_new_packets() {
                    // Tell the peer why (a TLS alert), then fail the connection.
                    let _ = self.flush().await;
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            }
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            self.cipher_out.clear();
            self.conn.write_tls(&mut self.cipher_out)?;
            self.stream.write_all(&self.cipher_out).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::net::TcpListener;
    use glommio::LocalExecutorBuilder;

    /// The vectored fast path and a plain write of the concatenation put the same
    /// bytes on the wire (the differential test for `send_vectored_nonblocking`).
    #[test]
    fn vectored_fast_path_writes_the_same_bytes() {
        LocalExecutorBuilder::default()
            .io_memory(1 << 20)
            .spawn(|| async move {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let header = [0x82u8, 0x7e, 0x01, 0x00];
                let payload: Vec<u8> = (0..=255u8).collect();
                let sent = payload.clone();
                let client = glommio::spawn_local(async move {
                    let payload = sent;
                    let mut s = TcpStream::connect(addr).await.unwrap();
                    write_all_plain(&mut s, &[&header, &payload]).await.unwrap();
                    s.write_all(&header).await.unwrap();
                    s.write_all(&payload).await.unwrap();
                    s.close().await.unwrap();
                });
                let mut server = listener.accept().await.unwrap();
                let mut got = Vec::new();
                server.read_to_end(&mut got).await.unwrap();
                client.await;
                let mut once = header.to_vec();
                once.extend_from_slice(&payload);
                assert_eq!(got.len(), 2 * once.len());
                assert_eq!(&got[..once.len()], &once[..]);
                assert_eq!(&got[once.len()..], &once[..]);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
