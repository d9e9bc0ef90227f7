//! A WebSocket connection over a [`Transport`]: bytes in, `proto::Connection` events
//! out, messages written as a fresh header plus the unchanged payload bytes.

use super::transport::Transport;
use crate::proto::{
    CloseCode, Connection, Event, HeaderBuf, Message, MessageKind, OpCode, Payload, ProtocolError,
};
use bytes::{Bytes, BytesMut};
use std::io;

/// Why reading the next event stopped.
#[derive(Debug, thiserror::Error)]
pub enum WsIoError {
    /// The peer broke RFC 6455; a Close with the matching code was sent.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// One WebSocket connection (either role) on a socket.
pub struct WsStream {
    /// The socket (plain or TLS).
    pub transport: Transport,
    /// Bytes read and not yet decoded.
    pub rbuf: BytesMut,
    /// The sans-IO protocol state.
    pub proto: Connection,
}

impl WsStream {
    /// Wraps a socket whose handshake is done; `leftover` holds bytes that arrived after it.
    pub fn new(transport: Transport, leftover: BytesMut, proto: Connection) -> Self {
        WsStream {
            transport,
            rbuf: leftover,
            proto,
        }
    }

    /// The next event. `Ok(None)` means the peer closed the TCP stream.
    ///
    /// Control frames the protocol queued (pongs, close replies, the close that
    /// reports a protocol error) are written before this returns.
    pub async fn next_event(&mut self) -> Result<Option<Event>, WsIoError> {
        loop {
            match self.proto.handle_read(&mut self.rbuf) {
                Ok(Some(event)) => {
                    self.flush_control().await?;
                    return Ok(Some(event));
                }
                Ok(None) => {}
                Err(err) => {
                    let _ = self.flush_control().await;
                    return Err(WsIoError::Protocol(err));
                }
            }
            self.flush_control().await?;
            if self.transport.read_into(&mut self.rbuf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Writes the control frames the protocol state has queued.
    pub async fn flush_control(&mut self) -> io::Result<()> {
        while let Some(frame) = self.proto.poll_transmit() {
            self.transport.write_all_vectored(&[&frame]).await?;
        }
        Ok(())
    }

    /// Writes `message` with its opcode, payload bytes and boundaries unchanged.
    pub async fn send_message(&mut self, message: &Message) -> io::Result<()> {
        write_message(
            &mut self.transport,
            &self.proto,
            message.kind,
            &message.payload,
        )
        .await
    }

    /// Sends a text message (a whole JSON document, for example).
    pub async fn send_text(&mut self, text: Vec<u8>) -> io::Result<()> {
        let message = Message {
            kind: MessageKind::Text,
            payload: Payload::Single(Bytes::from(text)),
        };
        self.send_message(&message).await
    }

    /// Sends a Close with `code` (once) and flushes it.
    pub async fn send_close(&mut self, code: CloseCode, reason: &str) -> io::Result<()> {
        self.proto.send_close(code, reason);
        self.flush_control().await
    }
}

/// Writes a message: one frame for a single payload, the same fragments for a fragmented one.
pub async fn write_message(
    transport: &mut Transport,
    proto: &Connection,
    kind: MessageKind,
    payload: &Payload,
) -> io::Result<()> {
    match payload {
        Payload::Single(bytes) => {
            write_frame(
                transport,
                proto.encode_data_header(kind_opcode(kind), true, bytes.len()),
                bytes,
            )
            .await
        }
        Payload::Fragments(parts) => {
            let last = parts.len().saturating_sub(1);
            for (i, part) in parts.iter().enumerate() {
                let opcode = if i == 0 {
                    kind_opcode(kind)
                } else {
                    OpCode::Continuation
                };
                write_frame(
                    transport,
                    proto.encode_data_header(opcode, i == last, part.len()),
                    part,
                )
                .await?;
            }
            if parts.is_empty() {
                write_frame(
                    transport,
                    proto.encode_data_header(kind_opcode(kind), true, 0),
                    &Bytes::new(),
                )
                .await?;
            }
            Ok(())
        }
    }
}

async fn write_frame(
    transport: &mut Transport,
    header: HeaderBuf,
    payload: &Bytes,
) -> io::Result<()> {
    transport
        .write_all_vectored(&[header.as_bytes(), payload])
        .await
}

/// The opcode of a message's first frame.
pub fn kind_opcode(kind: MessageKind) -> OpCode {
    match kind {
        MessageKind::Text => OpCode::Text,
        MessageKind::Binary => OpCode::Binary,
    }
}
