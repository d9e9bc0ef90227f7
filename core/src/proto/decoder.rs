//! The frame decoder: header in place, limit first, unmask in place, zero-copy payload.

use bytes::{Buf, BytesMut};

use super::error::ProtocolError;
use super::frame::{Frame, FrameHeader};
use super::mask::apply_mask;
use super::Role;

/// Decodes frames from a connection's read buffer.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    role: Role,
    max_payload: u64,
}

impl FrameDecoder {
    /// A decoder for frames received in `role`, refusing payloads over `max_payload` bytes.
    pub fn new(role: Role, max_payload: u64) -> FrameDecoder {
        FrameDecoder { role, max_payload }
    }

    /// The role frames are received in.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The largest payload accepted, in bytes.
    pub fn max_payload(&self) -> u64 {
        self.max_payload
    }

    /// Parses the header and returns the header, its length and the whole frame's length.
    fn frame_extent(
        &self,
        src: &[u8],
    ) -> Result<Option<(FrameHeader, usize, usize)>, ProtocolError> {
        let Some((header, header_len)) = FrameHeader::parse(src, self.role)? else {
            return Ok(None);
        };
        // Check the announced length before waiting for (and buffering) the payload.
        let too_big = ProtocolError::MessageTooBig {
            limit: self.max_payload,
            len: header.payload_len,
        };
        if header.payload_len > self.max_payload {
            return Err(too_big);
        }
        let total = usize::try_from(header.payload_len)
            .ok()
            .and_then(|len| len.checked_add(header_len))
            .ok_or(too_big)?;
        Ok(Some((header, header_len, total)))
    }

    /// Decodes the next frame from the front of `buf`.
    ///
    /// `Ok(None)`: the frame is not complete yet and `buf` is untouched; read
    /// more bytes onto its end (see [`FrameDecoder::needed`]). Otherwise the
    /// frame's bytes are removed from `buf`, and its payload is unmasked in
    /// place and returned as a `Bytes` sharing `buf`'s memory. On error `buf`
    /// is left as it was; the connection is to be failed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        let Some((header, header_len, total)) = self.frame_extent(buf)? else {
            return Ok(None);
        };
        let Some(frame) = buf.get_mut(header_len..total) else {
            return Ok(None);
        };
        // RFC 6455 §5.3: unmask in place (the payload is ours now).
        if let Some(key) = header.mask {
            apply_mask(frame, key);
        }
        buf.advance(header_len);
        let payload = buf.split_to(total - header_len).freeze();
        Ok(Some(Frame { header, payload }))
    }

    /// How many more bytes `buf` needs before [`FrameDecoder::decode`] can
    /// return a frame: a lower bound while the header is incomplete, exact
    /// once it is known; 0 when `decode` will return a frame or an error.
    pub fn needed(&self, buf: &[u8]) -> usize {
        match self.frame_extent(buf) {
            Ok(Some((_, _, total))) => total.saturating_sub(buf.len()),
            Ok(None) => {
                // Only the header is incomplete; its minimum size from what is known.
                let min: usize = match buf.get(1) {
                    None => 2,
                    Some(b1) => {
                        let ext = match b1 & 0x7F {
                            126 => 2,
                            127 => 8,
                            _ => 0,
                        };
                        2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
                    }
                };
                min.saturating_sub(buf.len()).max(1)
            }
            Err(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::close::CloseCode;
    use crate::proto::frame::encode_client_frame;
    use crate::proto::opcode::OpCode;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn server() -> FrameDecoder {
        FrameDecoder::new(Role::Server, 1 << 20)
    }

    #[test]
    fn rfc_5_7_masked_hello_unmasked_in_place() {
        let mut buf = BytesMut::from(
            &[
                0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58, 0x89,
            ][..],
        );
        let base = buf.as_ptr() as usize;
        let f = server().decode(&mut buf).unwrap().unwrap();
        assert_eq!(f.header.opcode, OpCode::Text);
        assert_eq!(&f.payload[..], b"Hello");
        // Zero copy: the payload lives where it arrived, right after the 6-byte header.
        assert_eq!(f.payload.as_ptr() as usize, base + 6);
        assert_eq!(&buf[..], &[0x89]);
    }

    #[test]
    fn rfc_5_7_unmasked_frames_as_client() {
        let mut dec = FrameDecoder::new(Role::Client, 1 << 20);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0x01, 0x03, 0x48, 0x65, 0x6c]);
        buf.extend_from_slice(&[0x80, 0x02, 0x6c, 0x6f]);
        buf.extend_from_slice(&[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        let a = dec.decode(&mut buf).unwrap().unwrap();
        let b = dec.decode(&mut buf).unwrap().unwrap();
        let c = dec.decode(&mut buf).unwrap().unwrap();
        assert_eq!((&a.payload[..], a.header.fin), (&b"Hel"[..], false));
        assert_eq!(
            (&b.payload[..], b.header.opcode),
            (&b"lo"[..], OpCode::Continuation)
        );
        assert_eq!(
            (&c.payload[..], c.header.opcode),
            (&b"Hello"[..], OpCode::Ping)
        );
        assert!(buf.is_empty());
        assert_eq!(dec.decode(&mut buf), Ok(None));
    }

    #[test]
    fn incomplete_frame_leaves_buf_untouched() {
        let mut wire = BytesMut::new();
        encode_client_frame(OpCode::Binary, true, &[7u8; 300], [1, 2, 3, 4], &mut wire);
        let mut dec = server();
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(dec.decode(&mut buf), Ok(None), "cut {cut}");
            assert_eq!(&buf[..], &wire[..cut]);
            assert!(dec.needed(&buf) >= 1);
            if cut >= 8 {
                assert_eq!(dec.needed(&buf), wire.len() - cut);
            }
        }
        let mut buf = wire.clone();
        assert_eq!(dec.needed(&buf), 0);
        let f = dec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(&f.payload[..], &[7u8; 300][..]);
    }

    #[test]
    fn too_big_is_refused_from_the_header_alone() {
        let mut dec = FrameDecoder::new(Role::Server, 1000);
        // Header announcing 64 KiB, with no payload bytes at all.
        let mut buf = BytesMut::from(&[0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4][..]);
        let e = dec.decode(&mut buf).unwrap_err();
        assert_eq!(
            e,
            ProtocolError::MessageTooBig {
                limit: 1000,
                len: 65536
            }
        );
        assert_eq!(e.close_code(), CloseCode::TOO_BIG);
        assert_eq!(dec.needed(&buf), 0);
    }

    #[test]
    fn huge_lengths_do_not_overflow() {
        let mut dec = FrameDecoder::new(Role::Server, u64::MAX);
        let mut buf = BytesMut::from(
            &[
                0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4,
            ][..],
        );
        match dec.decode(&mut buf) {
            // 64-bit hosts: a valid length we just cannot have yet; 32-bit: too big.
            Ok(None) | Err(ProtocolError::MessageTooBig { .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    /// A frame as a test generates it: what a client would send.
    #[derive(Debug, Clone)]
    struct Spec {
        fin: bool,
        opcode: OpCode,
        payload: Vec<u8>,
        mask: [u8; 4],
    }

    fn arb_spec() -> impl Strategy<Value = Spec> {
        let data = (
            any::<bool>(),
            prop_oneof![
                Just(OpCode::Continuation),
                Just(OpCode::Text),
                Just(OpCode::Binary)
            ],
            proptest::collection::vec(any::<u8>(), 0..400),
        );
        let control = (
            Just(true),
            prop_oneof![Just(OpCode::Close), Just(OpCode::Ping), Just(OpCode::Pong)],
            proptest::collection::vec(any::<u8>(), 0..=125),
        );
        (prop_oneof![data, control], any::<[u8; 4]>()).prop_map(|((fin, opcode, payload), mask)| {
            Spec {
                fin,
                opcode,
                payload,
                mask,
            }
        })
    }

    fn encode(specs: &[Spec], role: Role) -> Vec<u8> {
        let mut out = BytesMut::new();
        for s in specs {
            match role {
                Role::Server => encode_client_frame(s.opcode, s.fin, &s.payload, s.mask, &mut out),
                Role::Client => {
                    crate::proto::frame::encode_server_frame(s.opcode, s.fin, &s.payload, &mut out)
                }
            }
        }
        out.to_vec()
    }

    /// Decodes `stream` fed in the given chunk sizes; returns the frames and the final error, if any.
    fn decode_chunked(
        stream: &[u8],
        cuts: &[usize],
        role: Role,
        max: u64,
    ) -> (Vec<Frame>, Option<ProtocolError>) {
        let mut dec = FrameDecoder::new(role, max);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        let mut start = 0;
        let mut points: Vec<usize> = cuts.to_vec();
        points.push(stream.len());
        for p in points {
            buf.extend_from_slice(&stream[start..p]);
            start = p;
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => break,
                    Err(e) => return (frames, Some(e)),
                }
            }
        }
        (frames, None)
    }

    fn sorted_cuts(cuts: &[proptest::sample::Index], len: usize) -> Vec<usize> {
        let mut p: Vec<usize> = cuts.iter().map(|c| c.index(len + 1)).collect();
        p.sort_unstable();
        p
    }

    proptest! {
        #[test]
        fn round_trip_both_roles(specs in proptest::collection::vec(arb_spec(), 1..6), server_role in any::<bool>()) {
            let role = if server_role { Role::Server } else { Role::Client };
            let stream = encode(&specs, role);
            let (frames, err) = decode_chunked(&stream, &[], role, 1 << 20);
            prop_assert_eq!(err, None);
            prop_assert_eq!(frames.len(), specs.len());
            for (f, s) in frames.iter().zip(&specs) {
                prop_assert_eq!(f.header.fin, s.fin);
                prop_assert_eq!(f.header.opcode, s.opcode);
                prop_assert_eq!(f.header.mask, if server_role { Some(s.mask) } else { None });
                prop_assert_eq!(&f.payload[..], &s.payload[..]);
            }
        }

        #[test]
        fn any_chunking_decodes_like_the_whole(specs in proptest::collection::vec(arb_spec(), 1..6),
                                              cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..12),
                                              junk in proptest::collection::vec(any::<u8>(), 0..20),
                                              max in prop_oneof![Just(1u64 << 20), 0u64..300]) {
            let mut stream = encode(&specs, Role::Server);
            stream.extend_from_slice(&junk);
            let points = sorted_cuts(&cuts, stream.len());
            let whole = decode_chunked(&stream, &[], Role::Server, max);
            let chunked = decode_chunked(&stream, &points, Role::Server, max);
            prop_assert_eq!(chunked, whole);
        }

        #[test]
        fn arbitrary_bytes_any_chunking(stream in proptest::collection::vec(any::<u8>(), 0..64),
                                       cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..8),
                                       server_role in any::<bool>()) {
            let role = if server_role { Role::Server } else { Role::Client };
            let points = sorted_cuts(&cuts, stream.len());
            prop_assert_eq!(decode_chunked(&stream, &points, role, 1000), decode_chunked(&stream, &[], role, 1000));
        }
    }

    #[test]
    fn payload_is_frozen_bytes() {
        let mut buf = BytesMut::new();
        encode_client_frame(OpCode::Binary, true, b"abc", [9, 9, 9, 9], &mut buf);
        let f = server().decode(&mut buf).unwrap().unwrap();
        let _: Bytes = f.payload;
    }
}
