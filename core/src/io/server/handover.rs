//! Moving an accepted connection to the shard that owns its session or client: the
//! socket (as a file descriptor), the bytes already read, and the TLS state.

use crate::auth::{AccessClaims, DeviceClaims};
use crate::ids::SessionId;
use crate::io::transport::Transport;
use glommio::net::TcpStream;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};

/// Which endpoint the connection asked for, already authenticated.
pub(crate) enum Routed {
    /// §3 device connection.
    Device {
        sid: SessionId,
        claims: DeviceClaims,
    },
    /// §4 control channel.
    Control { claims: AccessClaims },
    /// §5 POS session.
    Session {
        sid: SessionId,
        claims: AccessClaims,
        /// Plain or reliable (§11).
        mode: super::reliable_session::SessionMode,
    },
    /// §2a a device identified by its client certificate, registered already.
    CertDevice {
        sid: SessionId,
        device: crate::ids::DeviceKey,
        cert: crate::tenancy::CertFingerprint,
    },
    /// §5a claim and session in one step (routed to the device's owner).
    DeviceSession {
        tsn: crate::auth::TsnInput,
        claims: AccessClaims,
        /// Plain or reliable (§11: "on §5 and §5a sessions").
        mode: super::reliable_session::SessionMode,
    },
}

/// Everything about a routed connection except its socket.
pub(crate) struct Routing {
    /// Bytes read after the request head.
    pub leftover: Vec<u8>,
    /// The `101 Switching Protocols` answer to write first.
    pub answer: Vec<u8>,
    /// Base of URLs handed out on this connection.
    pub url_base: String,
    /// What it is.
    pub routed: Routed,
    /// Its places under the admission limits, held until it closes.
    pub held: Held,
    /// How a refusal before it opens is told (§7b: in band after a login by message).
    pub refusals: super::login::Refusals,
}

/// The admission slots a connection holds for as long as it is open.
#[derive(Debug)]
pub(crate) struct Held {
    pub _conn: super::admission::ConnSlot,
    /// Boxed: only POS connections hold one, and every long-lived connection's task
    /// carries a `Held` (8 bytes instead of 56 keeps a device connection's task in a
    /// smaller allocator size class).
    pub _client: Option<Box<super::admission::ClientSlot>>,
}

/// A connection in flight between shards. `Send` by construction: a file descriptor,
/// rustls state, bytes and plain data.
pub(crate) struct Handover {
    fd: OwnedFd,
    tls: Option<crate::io::transport::TlsSession>,
    routing: Routing,
}

const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Handover>();
};

impl Handover {
    /// Takes the connection off this shard.
    pub fn new(transport: Transport, routing: Routing) -> std::io::Result<Handover> {
        let (stream, tls) = match transport {
            Transport::Plain(s) => (s, None),
            Transport::Tls(t) => {
                let (s, c) = t.into_parts();
                (s, Some(c))
            }
        };
        let fd = dup_fd(&stream)?;
        // Dropping glommio's stream closes its descriptor; the duplicate keeps the socket.
        drop(stream);
        Ok(Handover { fd, tls, routing })
    }

    /// Rebuilds the transport on the receiving shard.
    pub fn into_transport(self) -> (Transport, Routing) {
        let stream = stream_from_fd(self.fd);
        let transport = match self.tls {
            Some(conn) => Transport::from_tls_parts(stream, conn),
            None => Transport::Plain(stream),
        };
        (transport, self.routing)
    }
}

#[allow(unsafe_code)]
fn dup_fd(stream: &TcpStream) -> std::io::Result<OwnedFd> {
    // SAFETY: the descriptor belongs to `stream`, alive for this whole call; we only
    // duplicate it (fcntl F_DUPFD_CLOEXEC), which does not affect the original.
    let borrowed = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    borrowed.try_clone_to_owned()
}

#[allow(unsafe_code)]
fn stream_from_fd(fd: OwnedFd) -> TcpStream {
    // SAFETY: `fd` is an open, connected TCP socket that we own exclusively (a duplicate
    // made by `dup_fd`); ownership passes to the new stream, which closes it on drop.
    unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    use glommio::net::TcpListener;
    use glommio::LocalExecutorBuilder;

    /// A socket handed over through dup + from_raw_fd carries the same byte stream as
    /// the original (the differential test for the two unsafe calls above).
    #[test]
    fn handed_over_socket_carries_the_same_stream() {
        LocalExecutorBuilder::default()
            .io_memory(1 << 20)
            .spawn(|| async move {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let client = glommio::spawn_local(async move {
                    let mut s = TcpStream::connect(addr).await.unwrap();
                    s.write_all(b"before").await.unwrap();
                    let mut back = [0u8; 5];
                    s.read_exact(&mut back).await.unwrap();
                    s.write_all(b"after").await.unwrap();
                    s.close().await.unwrap();
                    back
                });
                let mut server = listener.accept().await.unwrap();
                let mut first = [0u8; 6];
                server.read_exact(&mut first).await.unwrap();
                assert_eq!(&first, b"before");
                let fd = dup_fd(&server).unwrap();
                drop(server);
                let mut moved = stream_from_fd(fd);
                moved.write_all(b"hello").await.unwrap();
                let mut rest = Vec::new();
                moved.read_to_end(&mut rest).await.unwrap();
                assert_eq!(rest, b"after");
                assert_eq!(&client.await, b"hello");
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
