//! §12 forwarded sessions, on the wire between two nodes: "a session opened on any other
//! node works as well, its frames forwarded between nodes".
//!
//! The POS session's connection lives on the node it reached (the *edge*); the device and
//! its claim live on the node that owns the tsn (the *owner*), where a stand-in session
//! takes the connection's place. They talk on core NATS subjects addressed to one node:
//!
//! | subject | sent by | what |
//! |---|---|---|
//! | `posrelay.node.<owner>.fwd.open` | the edge (request) | open a stand-in for `sid` on behalf of `client`; the owner answers [`OpenReply`] |
//! | `posrelay.node.<node>.fwd.<shard>.<end>` | either side | one [`ForwardFrame`] for the end `<end>` on that node's shard `<shard>` |
//!
//! Each direction numbers its frames from 0 ([`ForwardFrame::seq`]): core NATS delivers a
//! publisher's messages in order but may drop them (a slow consumer, a reconnect), so a
//! gap ends the session with 1012 on both sides instead of losing a message silently
//! (§6: "no relayed frame disappears without its sender being told").
//! Flow control is by credit: a sender keeps at most [`FORWARD_WINDOW`] payload bytes
//! unacknowledged; the receiver acknowledges ([`FrameBody::Ack`]) what it has handed on
//! (to the device's connection, or the POS's), so a slow peer slows its sender down as
//! §6 backpressure does within one node.
#![forbid(unsafe_code)]

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::ids::{ClientId, ClientKey, DomainName, SessionId};
use crate::ownership::NodeId;
use crate::proto::MessageKind;

/// Payload bytes a sender may have unacknowledged per session and direction.
pub const FORWARD_WINDOW: u64 = 1024 * 1024;

/// The largest payload one frame carries: longer fragments are cut (§5: "fragmentation
/// may be rejoined or passed on; the message seen by the other side is the same"), well
/// under nats-server's default `max_payload` of 1 MiB.
pub const MAX_FORWARD_CHUNK: usize = 256 * 1024;

/// `posrelay.node.<node>.fwd.open`.
pub fn open_subject(node: &NodeId) -> String {
    format!("posrelay.node.{}.fwd.open", node.as_str())
}

/// `posrelay.node.<node>.fwd.<shard>.<end>`.
pub fn frame_subject(node: &NodeId, shard: usize, end: u64) -> String {
    format!("posrelay.node.{}.fwd.{shard}.{end}", node.as_str())
}

/// `posrelay.node.<node>.fwd.ping`: answered at once by a live node; a node that is gone
/// has no subscriber there, and the asker hears "no responders" from NATS at once.
pub fn ping_subject(node: &NodeId) -> String {
    format!("posrelay.node.{}.fwd.ping", node.as_str())
}

/// What a subject under `posrelay.node.<me>.fwd.` addresses (its tail after that prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardAddress {
    /// `open`.
    Open,
    /// `ping`.
    Ping,
    /// `<shard>.<end>`.
    Frame { shard: usize, end: u64 },
}

impl ForwardAddress {
    /// Reads the tail of a subject; `None` for anything else.
    pub fn parse(tail: &str) -> Option<Self> {
        match tail {
            "open" => return Some(Self::Open),
            "ping" => return Some(Self::Ping),
            _ => {}
        }
        let (shard, end) = tail.split_once('.')?;
        Some(Self::Frame {
            shard: shard.parse().ok()?,
            end: end.parse().ok()?,
        })
    }
}

/// The edge asks the owner for a stand-in session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenRequest {
    /// The session id from the POS's URL.
    pub session_id: String,
    /// The client the POS authenticated as.
    pub domain: String,
    /// Its id.
    pub client_id: String,
    /// Where the owner sends the session's frames: the edge node,
    pub edge_node: String,
    /// its shard,
    pub edge_shard: usize,
    /// and the end there (the POS connection's id).
    pub edge_end: u64,
    /// Whether the POS selected `posrelay.reliable.v1` (§11): the stand-in speaks it.
    #[serde(default)]
    pub reliable: bool,
}

impl OpenRequest {
    /// The session and the client, if the request names valid ones.
    pub fn parts(&self) -> Option<(SessionId, ClientKey, NodeId)> {
        let sid = SessionId::new(self.session_id.clone()).ok()?;
        let client = ClientKey {
            domain: DomainName::new(self.domain.clone()).ok()?,
            client_id: ClientId::new(self.client_id.clone()).ok()?,
        };
        let edge = NodeId::new(&self.edge_node).ok()?;
        Some((sid, client, edge))
    }
}

/// Why the owner did not open a stand-in: the edge answers the POS as a local session
/// would have been answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenRefusal {
    /// No such session on the owner either (404).
    UnknownSession,
    /// The claim is another client's (403).
    NotClaimHolder,
    /// The owner could not open it (malformed request, draining, lease lost): 503.
    Unavailable,
}

/// The owner's answer to an [`OpenRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenReply {
    /// Where the edge sends the POS's frames: the owner's shard,
    pub shard: usize,
    /// and the stand-in's end there. Meaningless when refused.
    pub end: u64,
    /// Set when refused.
    pub refused: Option<OpenRefusal>,
}

impl OpenReply {
    /// A refusal.
    pub fn refused(why: OpenRefusal) -> Self {
        Self {
            shard: 0,
            end: 0,
            refused: Some(why),
        }
    }
}

/// One frame between the two ends of a forwarded session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardFrame {
    /// Its number in its direction, from 0.
    pub seq: u64,
    /// What it carries.
    pub body: FrameBody,
}

/// What a [`ForwardFrame`] carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameBody {
    /// A fragment of a relayed message: its kind (of the whole message), whether it is
    /// the message's first and last fragment, and its bytes.
    Data {
        kind: MessageKind,
        first: bool,
        fin: bool,
        payload: Bytes,
    },
    /// The receiver has handed on this many payload bytes in all (cumulative credit).
    Ack(u64),
    /// The session ended on the sender's side: the other side closes with this code.
    Close { code: u16, reason: String },
    /// Are you there? (answered with [`FrameBody::Pong`]).
    Ping,
    /// Yes.
    Pong,
    /// The session ended on the owner because its device moved to another node (§12): the
    /// edge opens it again there ("a POS session stays open while its device moves").
    Moved,
}

/// Why a frame from another node was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("forwarded frame too short ({0} bytes)")]
    Short(usize),
    #[error("forwarded frame of unknown type {0}")]
    UnknownType(u8),
    #[error("forwarded close reason is not UTF-8")]
    Reason,
}

const DATA: u8 = 0;
const ACK: u8 = 1;
const CLOSE: u8 = 2;
const PING: u8 = 3;
const PONG: u8 = 4;
const MOVED: u8 = 5;

const TEXT: u8 = 1;
const FIRST: u8 = 2;
const FIN: u8 = 4;

impl ForwardFrame {
    /// `[type u8][seq u64 BE]` then, for data, `[flags u8][payload]`; for an ack
    /// `[bytes u64 BE]`; for a close `[code u16 BE][reason UTF-8]`.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(16);
        let (kind, rest_len) = match &self.body {
            FrameBody::Data { payload, .. } => (DATA, 1 + payload.len()),
            FrameBody::Ack(_) => (ACK, 8),
            FrameBody::Close { reason, .. } => (CLOSE, 2 + reason.len()),
            FrameBody::Ping => (PING, 0),
            FrameBody::Pong => (PONG, 0),
            FrameBody::Moved => (MOVED, 0),
        };
        out.reserve(rest_len);
        out.put_u8(kind);
        out.put_u64(self.seq);
        match &self.body {
            FrameBody::Data {
                kind,
                first,
                fin,
                payload,
            } => {
                let mut flags = 0;
                if *kind == MessageKind::Text {
                    flags |= TEXT;
                }
                if *first {
                    flags |= FIRST;
                }
                if *fin {
                    flags |= FIN;
                }
                out.put_u8(flags);
                out.put_slice(payload);
            }
            FrameBody::Ack(n) => out.put_u64(*n),
            FrameBody::Close { code, reason } => {
                out.put_u16(*code);
                out.put_slice(reason.as_bytes());
            }
            FrameBody::Ping | FrameBody::Pong | FrameBody::Moved => {}
        }
        out.freeze()
    }

    /// Reads a frame (the payload of a data frame is a slice of `bytes`, not a copy).
    pub fn decode(bytes: Bytes) -> Result<Self, FrameError> {
        let short = || FrameError::Short(bytes.len());
        let kind = *bytes.first().ok_or_else(short)?;
        let seq = u64::from_be_bytes(
            bytes
                .get(1..9)
                .ok_or_else(short)?
                .try_into()
                .unwrap_or([0; 8]),
        );
        let rest = bytes.slice(9..);
        let body = match kind {
            DATA => {
                let flags = *rest.first().ok_or_else(short)?;
                FrameBody::Data {
                    kind: if flags & TEXT != 0 {
                        MessageKind::Text
                    } else {
                        MessageKind::Binary
                    },
                    first: flags & FIRST != 0,
                    fin: flags & FIN != 0,
                    payload: rest.slice(1..),
                }
            }
            ACK => FrameBody::Ack(u64::from_be_bytes(
                rest.get(..8)
                    .ok_or_else(short)?
                    .try_into()
                    .unwrap_or([0; 8]),
            )),
            CLOSE => {
                let code = u16::from_be_bytes(
                    rest.get(..2)
                        .ok_or_else(short)?
                        .try_into()
                        .unwrap_or([0; 2]),
                );
                let reason = std::str::from_utf8(&rest[2..]).map_err(|_| FrameError::Reason)?;
                FrameBody::Close {
                    code,
                    reason: reason.to_owned(),
                }
            }
            PING => FrameBody::Ping,
            PONG => FrameBody::Pong,
            MOVED => FrameBody::Moved,
            other => return Err(FrameError::UnknownType(other)),
        };
        Ok(Self { seq, body })
    }
}

/// Numbers the frames one end sends, and checks those it receives.
#[derive(Debug, Default)]
pub struct Sequencer {
    next_out: u64,
    next_in: u64,
}

impl Sequencer {
    /// Numbers `body` as the next frame out.
    #[must_use]
    pub fn next(&mut self, body: FrameBody) -> ForwardFrame {
        let seq = self.next_out;
        self.next_out += 1;
        ForwardFrame { seq, body }
    }

    /// Accepts `frame` if it is the next one in; `Err(expected)` when one was lost or
    /// came out of order (the session must end: something was not delivered).
    pub fn handle_incoming(&mut self, frame: &ForwardFrame) -> Result<(), u64> {
        if frame.seq != self.next_in {
            return Err(self.next_in);
        }
        self.next_in += 1;
        Ok(())
    }
}

/// Cuts a message's fragments into frames of at most [`MAX_FORWARD_CHUNK`] bytes, in
/// order; the last one has `fin`. An empty message is one empty frame.
pub fn data_bodies(kind: MessageKind, parts: &[Bytes]) -> Vec<FrameBody> {
    let mut chunks: Vec<Bytes> = Vec::new();
    for part in parts {
        let mut at = 0;
        while at < part.len() {
            let end = (at + MAX_FORWARD_CHUNK).min(part.len());
            chunks.push(part.slice(at..end));
            at = end;
        }
    }
    if chunks.is_empty() {
        chunks.push(Bytes::new());
    }
    let last = chunks.len() - 1;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, payload)| FrameBody::Data {
            kind,
            first: i == 0,
            fin: i == last,
            payload,
        })
        .collect()
}

/// Gathers data frames into whole messages (§5: "a message is forwarded only once the
/// relay holds all of it"), refusing more than `max_message` bytes.
#[derive(Debug)]
pub struct ForwardAssembler {
    max_message: usize,
    kind: MessageKind,
    parts: Vec<Bytes>,
    len: usize,
    open: bool,
}

/// A data frame that does not continue what came before.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssembleError {
    #[error("forwarded fragment out of place")]
    OutOfPlace,
    #[error("forwarded message over {max} bytes")]
    TooLarge { max: usize },
}

impl ForwardAssembler {
    /// An assembler for messages of at most `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Self {
            max_message,
            kind: MessageKind::Binary,
            parts: Vec::new(),
            len: 0,
            open: false,
        }
    }

    /// Takes one data frame; the whole message (its kind and fragments) once `fin`.
    pub fn handle_data(
        &mut self,
        kind: MessageKind,
        first: bool,
        fin: bool,
        payload: Bytes,
    ) -> Result<Option<(MessageKind, Vec<Bytes>)>, AssembleError> {
        if first == self.open {
            return Err(AssembleError::OutOfPlace);
        }
        if first {
            self.kind = kind;
            self.open = true;
        }
        self.len += payload.len();
        if self.len > self.max_message {
            return Err(AssembleError::TooLarge {
                max: self.max_message,
            });
        }
        if !payload.is_empty() || self.parts.is_empty() {
            self.parts.push(payload);
        }
        if !fin {
            return Ok(None);
        }
        self.open = false;
        self.len = 0;
        Ok(Some((self.kind, std::mem::take(&mut self.parts))))
    }
}

/// Publishes forwarded frames from the shards in the order they were handed over: one
/// task on the bridge's thread takes them off one channel (a task per publish could
/// reorder them while the client's queue is full).
#[derive(Clone, Debug)]
pub struct ForwardPublisher {
    tx: tokio::sync::mpsc::UnboundedSender<(String, Bytes)>,
}

impl ForwardPublisher {
    /// Starts the publishing task on `bridge`.
    pub fn start(bridge: &super::BridgeHandle) -> Result<Self, super::ClusterError> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Bytes)>();
        bridge.spawn(move |nats| async move {
            while let Some((subject, payload)) = rx.recv().await {
                if let Err(e) = nats.client.publish(subject, payload).await {
                    // The receiving end notices the gap in the numbering and ends the
                    // session (1012): nothing is lost silently.
                    tracing::warn!(error = %e, "cannot publish a forwarded session's frame");
                }
            }
        })?;
        Ok(Self { tx })
    }

    /// Queues `frame` for `subject`; never blocks.
    pub fn publish(&self, subject: String, frame: &ForwardFrame) {
        let _ = self.tx.send((subject, frame.encode()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(body: FrameBody) {
        let frame = ForwardFrame { seq: 7, body };
        assert_eq!(ForwardFrame::decode(frame.encode()), Ok(frame));
    }

    #[test]
    fn every_frame_comes_back_as_it_was() {
        round_trip(FrameBody::Data {
            kind: MessageKind::Text,
            first: true,
            fin: false,
            payload: Bytes::from_static(b"{\"a\":1}"),
        });
        round_trip(FrameBody::Data {
            kind: MessageKind::Binary,
            first: false,
            fin: true,
            payload: Bytes::new(),
        });
        round_trip(FrameBody::Ack(u64::MAX));
        round_trip(FrameBody::Close {
            code: 4000,
            reason: "replaced".into(),
        });
        round_trip(FrameBody::Ping);
        round_trip(FrameBody::Pong);
        round_trip(FrameBody::Moved);
    }

    #[test]
    fn nonsense_is_refused_not_misread() {
        assert_eq!(
            ForwardFrame::decode(Bytes::new()),
            Err(FrameError::Short(0))
        );
        assert_eq!(
            ForwardFrame::decode(Bytes::from_static(&[0, 0, 0])),
            Err(FrameError::Short(3))
        );
        let mut unknown = vec![9u8];
        unknown.extend_from_slice(&[0; 8]);
        assert_eq!(
            ForwardFrame::decode(Bytes::from(unknown)),
            Err(FrameError::UnknownType(9))
        );
        let mut ack = vec![ACK];
        ack.extend_from_slice(&[0; 8 + 7]);
        assert!(matches!(
            ForwardFrame::decode(Bytes::from(ack)),
            Err(FrameError::Short(_))
        ));
        let mut close = vec![CLOSE];
        close.extend_from_slice(&[0; 8]);
        close.extend_from_slice(&[0x0f, 0xa0, 0xff]);
        assert_eq!(
            ForwardFrame::decode(Bytes::from(close)),
            Err(FrameError::Reason)
        );
    }

    #[test]
    fn a_lost_or_reordered_frame_is_noticed() {
        let mut out = Sequencer::default();
        let mut inn = Sequencer::default();
        let a = out.next(FrameBody::Ping);
        let b = out.next(FrameBody::Pong);
        let c = out.next(FrameBody::Ack(1));
        assert_eq!(inn.handle_incoming(&a), Ok(()));
        assert_eq!(inn.handle_incoming(&c), Err(1), "b was lost");
        let mut again = Sequencer::default();
        assert_eq!(again.handle_incoming(&b), Err(0), "out of order");
    }

    #[test]
    fn messages_are_cut_and_joined_back_verbatim() {
        let big = Bytes::from(vec![7u8; MAX_FORWARD_CHUNK * 2 + 5]);
        let parts = vec![Bytes::from_static(b"head"), big.clone(), Bytes::new()];
        let bodies = data_bodies(MessageKind::Binary, &parts);
        assert_eq!(bodies.len(), 4, "4 + 256K + 256K + 5: four frames");
        let mut asm = ForwardAssembler::new(1 << 22);
        let mut whole = None;
        for body in bodies {
            let FrameBody::Data {
                kind,
                first,
                fin,
                payload,
            } = body
            else {
                panic!("data")
            };
            assert!(payload.len() <= MAX_FORWARD_CHUNK);
            whole = asm.handle_data(kind, first, fin, payload).unwrap();
        }
        let (kind, parts) = whole.expect("whole at fin");
        assert_eq!(kind, MessageKind::Binary);
        let joined: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        let mut want = b"head".to_vec();
        want.extend_from_slice(&big);
        assert_eq!(joined, want);
        // An empty message travels as one empty frame and comes back empty.
        let empty = data_bodies(MessageKind::Text, &[]);
        assert_eq!(empty.len(), 1);
        let FrameBody::Data { payload, .. } = &empty[0] else {
            panic!("data")
        };
        assert!(payload.is_empty());
    }

    #[test]
    fn fragments_out_of_place_or_too_large_are_refused() {
        let mut asm = ForwardAssembler::new(4);
        let b = |s: &'static str| Bytes::from_static(s.as_bytes());
        assert_eq!(
            asm.handle_data(MessageKind::Text, false, true, b("x")),
            Err(AssembleError::OutOfPlace)
        );
        assert_eq!(
            asm.handle_data(MessageKind::Text, true, false, b("ab")),
            Ok(None)
        );
        assert_eq!(
            asm.handle_data(MessageKind::Text, true, true, b("c")),
            Err(AssembleError::OutOfPlace)
        );
        let mut asm = ForwardAssembler::new(4);
        assert_eq!(
            asm.handle_data(MessageKind::Binary, true, true, b("12345")),
            Err(AssembleError::TooLarge { max: 4 })
        );
    }

    #[test]
    fn subjects_are_read_back() {
        let node = NodeId::new("b").unwrap();
        assert_eq!(open_subject(&node), "posrelay.node.b.fwd.open");
        assert_eq!(frame_subject(&node, 1, 42), "posrelay.node.b.fwd.1.42");
        assert_eq!(ForwardAddress::parse("open"), Some(ForwardAddress::Open));
        assert_eq!(ForwardAddress::parse("ping"), Some(ForwardAddress::Ping));
        assert_eq!(ping_subject(&node), "posrelay.node.b.fwd.ping");
        assert_eq!(
            ForwardAddress::parse("1.42"),
            Some(ForwardAddress::Frame { shard: 1, end: 42 })
        );
        assert_eq!(ForwardAddress::parse("x.1"), None);
        assert_eq!(ForwardAddress::parse("1"), None);
    }
}
