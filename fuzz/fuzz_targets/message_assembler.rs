//! Connection (Role::Server) over arbitrary bytes: messages stay within the
//! limit, text is UTF-8, chunking changes nothing, what we send back decodes
//! as valid server frames, and nothing panics.
//!
//! Input layout: byte 0 picks the message limit, byte 1 the chunk size, the
//! rest is the wire stream.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use posrelay_core::proto::{
    CloseFrame, Connection, Event, FrameDecoder, Limits, MessageKind, OpCode, ProtocolError, Role,
};

/// Events, the error that ended the run, and the frames queued for sending.
type Outcome = (Vec<Event>, Option<ProtocolError>, Vec<Bytes>);

fn run(input: &[u8], chunk: usize, limits: Limits) -> Outcome {
    let mut conn = Connection::new(Role::Server, limits);
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    let mut error = None;
    'feed: for piece in input.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match conn.handle_read(&mut buf) {
                Ok(Some(event)) => events.push(event),
                Ok(None) => break,
                Err(e) => {
                    // A failed connection stays failed with the same error.
                    assert_eq!(conn.handle_read(&mut buf), Err(e.clone()));
                    error = Some(e);
                    break 'feed;
                }
            }
        }
    }
    let sent = std::iter::from_fn(|| conn.poll_transmit()).collect();
    (events, error, sent)
}

fuzz_target!(|data: &[u8]| {
    let Some((config, input)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max_message = [16usize, 125, 4096, 1 << 20][usize::from(config[0]) % 4];
    let limits = Limits {
        max_frame_payload: 1 << 20,
        max_message,
    };
    let chunk = usize::from(config[1] % 64) + 1;

    let whole = run(input, input.len().max(1), limits);
    let chunked = run(input, chunk, limits);
    // Payload piece boundaries may differ (they follow frames, not reads), so
    // compare messages by content.
    assert_eq!(whole.0.len(), chunked.0.len());
    for (a, b) in whole.0.iter().zip(&chunked.0) {
        match (a, b) {
            (Event::Message(a), Event::Message(b)) => {
                assert_eq!(a.kind, b.kind);
                assert_eq!(a.payload.to_bytes(), b.payload.to_bytes());
            }
            (a, b) => assert_eq!(a, b),
        }
    }
    assert_eq!(whole.1, chunked.1);
    assert_eq!(whole.2, chunked.2);

    let (events, error, sent) = whole;
    for event in &events {
        match event {
            Event::Message(m) => {
                let bytes = m.payload.to_bytes();
                assert!(bytes.len() <= max_message);
                assert_eq!(bytes.len(), m.payload.len());
                if m.kind == MessageKind::Text {
                    assert!(std::str::from_utf8(&bytes).is_ok());
                }
            }
            Event::Ping(p) | Event::Pong(p) => assert!(p.len() <= 125),
            Event::Close(Some(c)) => {
                assert!(c.code.is_valid_on_wire());
                assert!(std::str::from_utf8(&c.reason).is_ok());
            }
            Event::Close(None) => {}
        }
    }

    // What we send is a well-formed server stream: control frames only, one
    // Close at most and nothing after it.
    let mut decoder = FrameDecoder::new(Role::Client, 125);
    let mut closes = 0;
    for frame in &sent {
        assert_eq!(closes, 0, "frame after our close");
        let mut buf = BytesMut::from(&frame[..]);
        let decoded = decoder.decode(&mut buf).expect("valid frame").expect("whole frame");
        assert!(buf.is_empty());
        assert!(decoded.header.opcode.is_control());
        if decoded.header.opcode == OpCode::Close {
            closes += 1;
            let body = CloseFrame::parse(&decoded.payload).expect("valid close body");
            if let Some(e) = &error {
                if !events.iter().any(|ev| matches!(ev, Event::Close(_))) {
                    assert_eq!(body.map(|b| b.code), Some(e.close_code()));
                }
            }
        }
    }
    if error.is_some() {
        assert_eq!(closes, 1, "an error always sends one close");
    }
});
