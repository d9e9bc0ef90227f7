//! Interop of proto's sans-IO server with an RFC 6455 implementation this
//! repository did not write (tungstenite, client role), over an in-memory pipe.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::rc::Rc;

use bytes::BytesMut;
use posrelay_core::proto::{
    CloseCode, CloseState, Connection, Event, Limits, MessageKind, OpCode, Role,
};
use tungstenite::protocol::frame::coding::{Data, OpCode as TOpCode};
use tungstenite::protocol::frame::{CloseFrame as TCloseFrame, Frame as TFrame};
use tungstenite::protocol::{Role as TRole, WebSocket};
use tungstenite::Message as TMessage;

/// One end of an in-memory byte pipe: reads what the test pushes in, keeps what it writes.
#[derive(Clone, Default)]
struct Pipe {
    inbound: Rc<RefCell<VecDeque<u8>>>,
    outbound: Rc<RefCell<Vec<u8>>>,
    /// The other side closed the TCP connection: reads then end with EOF.
    eof: Rc<Cell<bool>>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut inbound = self.inbound.borrow_mut();
        if inbound.is_empty() {
            if self.eof.get() {
                return Ok(0);
            }
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(inbound.len());
        for (dst, src) in buf.iter_mut().zip(inbound.drain(..n)) {
            *dst = src;
        }
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outbound.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn client() -> (WebSocket<Pipe>, Pipe) {
    let pipe = Pipe::default();
    (
        WebSocket::from_raw_socket(pipe.clone(), TRole::Client, None),
        pipe,
    )
}

/// Feeds everything the client wrote to our server in 7-byte reads; collects the events.
fn server_reads(conn: &mut Connection, pipe: &Pipe) -> Vec<Event> {
    let wire = std::mem::take(&mut *pipe.outbound.borrow_mut());
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    for piece in wire.chunks(7) {
        buf.extend_from_slice(piece);
        while let Some(event) = conn.handle_read(&mut buf).expect("valid client stream") {
            events.push(event);
        }
    }
    assert!(buf.is_empty());
    events
}

/// Hands everything the server queued to the client.
fn deliver_to_client(conn: &mut Connection, pipe: &Pipe) {
    while let Some(frame) = conn.poll_transmit() {
        pipe.inbound.borrow_mut().extend(frame.iter().copied());
    }
}

#[test]
fn tungstenite_client_to_proto_server() {
    let (mut ws, pipe) = client();
    let big: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
    ws.send(TMessage::text("Hello")).unwrap();
    ws.send(TMessage::binary(big.clone())).unwrap();
    // A fragmented text message with a ping between its fragments (RFC 6455 §5.4).
    ws.send(TMessage::Frame(TFrame::message(
        b"Hel".to_vec(),
        TOpCode::Data(Data::Text),
        false,
    )))
    .unwrap();
    ws.send(TMessage::Ping(b"are you there".to_vec())).unwrap();
    ws.send(TMessage::Frame(TFrame::message(
        b"lo \xE2\x82".to_vec(),
        TOpCode::Data(Data::Continue),
        false,
    )))
    .unwrap();
    ws.send(TMessage::Frame(TFrame::message(
        b"\xAC".to_vec(),
        TOpCode::Data(Data::Continue),
        true,
    )))
    .unwrap();

    let mut conn = Connection::new(Role::Server, Limits::default());
    let events = server_reads(&mut conn, &pipe);
    assert_eq!(events.len(), 4, "{events:?}");
    let Event::Message(m) = &events[0] else {
        panic!("{:?}", events[0])
    };
    assert_eq!(
        (m.kind, &m.payload.to_bytes()[..]),
        (MessageKind::Text, &b"Hello"[..])
    );
    let Event::Message(m) = &events[1] else {
        panic!("{:?}", events[1])
    };
    assert_eq!(
        (m.kind, &m.payload.to_bytes()[..]),
        (MessageKind::Binary, &big[..])
    );
    assert_eq!(
        events[2],
        Event::Ping(bytes::Bytes::from_static(b"are you there"))
    );
    let Event::Message(m) = &events[3] else {
        panic!("{:?}", events[3])
    };
    assert_eq!(m.kind, MessageKind::Text);
    assert_eq!(&m.payload.to_bytes()[..], "Hello €".as_bytes());

    // Our auto-pong reaches tungstenite as a Pong with the same data.
    deliver_to_client(&mut conn, &pipe);
    assert_eq!(
        ws.read().unwrap(),
        TMessage::Pong(b"are you there".to_vec())
    );

    // Close handshake started by the client: we echo, tungstenite accepts it.
    ws.close(Some(TCloseFrame {
        code: 4000.into(),
        reason: "replaced".into(),
    }))
    .unwrap();
    let events = server_reads(&mut conn, &pipe);
    let [Event::Close(Some(close))] = &events[..] else {
        panic!("{events:?}")
    };
    assert_eq!(
        (close.code, close.reason_str()),
        (CloseCode::REPLACED, "replaced")
    );
    assert_eq!(conn.close_state(), CloseState::Closed);
    deliver_to_client(&mut conn, &pipe);
    // Our echo carries their code back (RFC 6455 §5.5.1), then the handshake is done.
    let Ok(TMessage::Close(Some(echo))) = ws.read() else {
        panic!("no close echo")
    };
    assert_eq!(u16::from(echo.code), 4000);
    // RFC 6455 §7.1.1: with both Close frames exchanged the server closes TCP.
    pipe.eof.set(true);
    match ws.read() {
        Err(tungstenite::Error::ConnectionClosed) => {}
        other => panic!("expected a completed close handshake, got {other:?}"),
    }
}

#[test]
fn proto_server_to_tungstenite_client() {
    let (mut ws, pipe) = client();
    let mut conn = Connection::new(Role::Server, Limits::default());
    let mut wire = Vec::new();
    // Forwarding path: a fresh header plus the payload bytes as they are.
    let mut forward = |opcode: OpCode, fin: bool, payload: &[u8]| {
        wire.extend_from_slice(
            conn.encode_data_header(opcode, fin, payload.len())
                .as_bytes(),
        );
        wire.extend_from_slice(payload);
    };
    let big = vec![0x5Au8; 65_536];
    forward(OpCode::Text, true, "grüß".as_bytes());
    forward(OpCode::Binary, true, &big);
    forward(OpCode::Binary, false, b"frag");
    forward(OpCode::Continuation, true, b"ment");
    pipe.inbound.borrow_mut().extend(wire);
    conn.send_ping(b"idle?");
    conn.send_close(CloseCode::GOING_AWAY, "shutting down");
    deliver_to_client(&mut conn, &pipe);

    assert_eq!(ws.read().unwrap(), TMessage::text("grüß"));
    assert_eq!(ws.read().unwrap(), TMessage::binary(big));
    assert_eq!(ws.read().unwrap(), TMessage::binary(b"fragment".to_vec()));
    assert_eq!(ws.read().unwrap(), TMessage::Ping(b"idle?".to_vec()));
    let TMessage::Close(Some(close)) = ws.read().unwrap() else {
        panic!("no close")
    };
    assert_eq!(
        (u16::from(close.code), &*close.reason),
        (1001, "shutting down")
    );

    // tungstenite answers our Close (and the Ping before it); the handshake completes.
    ws.flush().ok();
    let events = server_reads(&mut conn, &pipe);
    assert!(
        matches!(events.last(), Some(Event::Close(Some(c))) if c.code == CloseCode::GOING_AWAY),
        "{events:?}"
    );
    assert_eq!(conn.close_state(), CloseState::Closed);
    assert_eq!(conn.poll_transmit(), None, "no second close");
}

#[test]
fn proto_client_to_tungstenite_server() {
    let pipe = Pipe::default();
    let mut ws = WebSocket::from_raw_socket(pipe.clone(), TRole::Server, None);
    let mut out = BytesMut::new();
    posrelay_core::proto::encode_client_frame(
        OpCode::Text,
        true,
        b"from proto",
        [9, 8, 7, 6],
        &mut out,
    );
    pipe.inbound.borrow_mut().extend(out.iter().copied());
    assert_eq!(ws.read().unwrap(), TMessage::text("from proto"));
}
