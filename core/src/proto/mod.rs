//! Sans-IO RFC 6455 framing: frame codec, masking, close frames, UTF-8
//! validation, message assembly and the per-connection close handshake.
//!
//! Nothing here touches a socket, a clock or an executor: bytes come in as
//! `BytesMut`, frames to send come out of [`Connection::poll_transmit`] as
//! `Bytes`, and the io layer moves them. The opening handshake lives in
//! `crate::handshake`; this module starts once the connection is upgraded.
//!
//! Data path: [`FrameDecoder::decode`] parses the header in place, checks the
//! limit before waiting for the payload, unmasks in place and hands out the
//! payload as a zero-copy `Bytes`. Forwarding writes a fresh
//! [`FrameHeader::encode`] (a stack [`HeaderBuf`]) followed by those same
//! payload bytes.
#![forbid(unsafe_code)]

pub mod close;
pub mod connection;
pub mod decoder;
pub mod error;
pub mod frame;
pub mod mask;
pub mod message;
pub mod opcode;
pub mod utf8;

pub use close::{encode_close_payload, CloseCode, CloseFrame, ClosePayload};
pub use connection::{CloseState, Connection, Limits, MaskSource};
pub use decoder::FrameDecoder;
pub use error::{ProtocolError, ProtocolErrorKind};
pub use frame::{
    encode_client_frame, encode_server_frame, Frame, FrameHeader, HeaderBuf, MAX_HEADER_LEN,
};
pub use mask::{apply_mask, apply_mask_offset};
pub use message::{Event, Message, MessageAssembler, MessageKind, Payload};
pub use opcode::OpCode;
pub use utf8::Utf8Validator;

/// Which end of the WebSocket we are; decides the masking rules (RFC 6455 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// We are the server: incoming frames MUST be masked, outgoing frames are not.
    Server,
    /// We are the client: incoming frames MUST NOT be masked, outgoing frames are.
    Client,
}

impl Role {
    /// Whether frames *received* in this role must carry a masking key
    /// (RFC 6455 §5.1: a client masks every frame it sends, a server masks none).
    pub fn expects_masked_input(self) -> bool {
        matches!(self, Role::Server)
    }
}
