//! FrameDecoder over arbitrary bytes: whole input vs. the same input in
//! chunks must agree exactly; every decoded frame re-encodes and decodes back
//! to itself; nothing panics and nothing is consumed beyond the input.
//!
//! Input layout: byte 0 picks role and payload limit, bytes 1..5 the chunk
//! sizes (cycled), the rest is the wire stream.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use posrelay_core::proto::{mask::apply_mask_naive, Frame, FrameDecoder, ProtocolError, Role};

/// Frames decoded, the error that stopped decoding, and the bytes consumed.
type Outcome = (Vec<Frame>, Option<ProtocolError>, usize);

fn decode(input: &[u8], chunks: &[usize], role: Role, max: u64) -> Outcome {
    let mut decoder = FrameDecoder::new(role, max);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut fed = 0;
    let mut sizes = chunks.iter().cycle();
    while fed < input.len() {
        let size = sizes.next().copied().unwrap_or(input.len()).max(1);
        let end = (fed + size).min(input.len());
        buf.extend_from_slice(&input[fed..end]);
        fed = end;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return (frames, Some(e), fed - buf.len()),
            }
        }
    }
    (frames, None, fed - buf.len())
}

fuzz_target!(|data: &[u8]| {
    let Some((config, input)) = data.split_first_chunk::<5>() else {
        return;
    };
    let role = if config[0] & 1 == 0 { Role::Server } else { Role::Client };
    let max = [125u64, 1000, 1 << 20, u64::MAX][usize::from(config[0] >> 1) % 4];
    let chunks: Vec<usize> = config[1..].iter().map(|&b| usize::from(b % 32) + 1).collect();

    let whole = decode(input, &[input.len().max(1)], role, max);
    let chunked = decode(input, &chunks, role, max);
    assert_eq!(whole, chunked, "chunking changed the result");

    let (frames, _, consumed) = whole;
    assert!(consumed <= input.len());
    let mut wire_len = 0usize;
    for frame in &frames {
        assert_eq!(frame.payload.len() as u64, frame.header.payload_len);
        assert!(frame.header.payload_len <= max);
        // Re-encode (minimal header, payload masked again) and decode back.
        let header = frame.header.encode();
        let mut wire = BytesMut::from(header.as_bytes());
        wire.extend_from_slice(&frame.payload);
        if let Some(key) = frame.header.mask {
            apply_mask_naive(&mut wire[header.as_bytes().len()..], key, 0);
        }
        wire_len += wire.len();
        let mut decoder = FrameDecoder::new(role, max);
        let again = decoder.decode(&mut wire);
        assert_eq!(again, Ok(Some(frame.clone())), "re-encoded frame differs");
        assert!(wire.is_empty());
    }
    // Minimal headers never make a frame longer than it arrived.
    assert!(wire_len <= consumed);
});
