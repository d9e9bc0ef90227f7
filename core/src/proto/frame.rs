//! The frame header (RFC 6455 §5.2): parsing with every rule the header alone
//! can show, and minimal encoding into a stack buffer.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::ProtocolError;
use super::mask::apply_mask;
use super::opcode::OpCode;
use super::Role;

/// The longest possible header: 2 fixed bytes, 8 bytes of extended length, 4 bytes of mask.
pub const MAX_HEADER_LEN: usize = 14;

/// RFC 6455 §5.5: all control frames MUST have a payload length of 125 bytes or less.
pub const MAX_CONTROL_PAYLOAD: u64 = 125;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN: this is the final fragment of a message.
    pub fin: bool,
    /// The frame's opcode.
    pub opcode: OpCode,
    /// The masking key, present on client-to-server frames.
    pub mask: Option<[u8; 4]>,
    /// The payload length in bytes.
    pub payload_len: u64,
}

/// An encoded header on the stack: written before the payload bytes, e.g. with `writev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderBuf {
    buf: [u8; MAX_HEADER_LEN],
    len: u8,
}

impl HeaderBuf {
    /// No header: for a frame that is already encoded whole in its payload bytes.
    pub const EMPTY: HeaderBuf = HeaderBuf {
        buf: [0; MAX_HEADER_LEN],
        len: 0,
    };

    /// The encoded header bytes (2 to 14 of them; none for [`HeaderBuf::EMPTY`]).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

impl AsRef<[u8]> for HeaderBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// A decoded frame: its header and its unmasked payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The header as received; `header.mask` is kept for information only,
    /// the payload is already unmasked.
    pub header: FrameHeader,
    /// The unmasked payload, sharing the read buffer's memory (no copy).
    pub payload: Bytes,
}

impl FrameHeader {
    /// Parses a header from the start of `src` as received by `role`.
    ///
    /// Returns `Ok(None)` when `src` holds less than the whole header, else the
    /// header and its length in bytes. Rules are checked in wire order and
    /// only from the bytes they depend on, so the outcome never depends on how
    /// the input was chunked.
    ///
    /// Non-minimal length encodings (e.g. 5 sent in the 16-bit form) are
    /// tolerated: RFC 6455 §5.2 puts "the minimal number of bytes MUST be
    /// used" on the sender, and accepting them harms nobody since lengths are
    /// bounded by our limits anyway. [`FrameHeader::encode`] always emits the
    /// minimal form.
    pub fn parse(src: &[u8], role: Role) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let (b0, b1) = match src {
            [b0, b1, ..] => (*b0, *b1),
            _ => return Ok(None),
        };
        let fin = b0 & 0x80 != 0;
        // RFC 6455 §5.2: RSV1-3 MUST be 0 unless an extension is negotiated (none is).
        let rsv = (b0 >> 4) & 0x7;
        if rsv != 0 {
            return Err(ProtocolError::ReservedBits { bits: rsv });
        }
        // RFC 6455 §5.2: reserved opcodes fail the connection.
        let opcode = OpCode::from_u8(b0 & 0x0F)?;
        // RFC 6455 §5.5: control frames MUST NOT be fragmented.
        if opcode.is_control() && !fin {
            return Err(ProtocolError::FragmentedControlFrame);
        }
        let masked = b1 & 0x80 != 0;
        // RFC 6455 §5.1: a server MUST close on an unmasked frame, a client on a masked one.
        match (role, masked) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedClientFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedServerFrame),
            _ => {}
        }

        let len7 = b1 & 0x7F;
        let (payload_len, mut pos) = match len7 {
            126 => match src.get(2..4) {
                Some(&[hi, lo]) => (u64::from(u16::from_be_bytes([hi, lo])), 4),
                _ => return Ok(None),
            },
            127 => {
                let Some(ext) = src.get(2..10) else {
                    return Ok(None);
                };
                let mut be = [0u8; 8];
                be.copy_from_slice(ext);
                let len = u64::from_be_bytes(be);
                // RFC 6455 §5.2: in the 64-bit form the most significant bit MUST be 0.
                if len >> 63 != 0 {
                    return Err(ProtocolError::PayloadLengthTopBit);
                }
                (len, 10)
            }
            short => (u64::from(short), 2),
        };
        // RFC 6455 §5.5: control frames MUST have a payload length of 125 bytes or less.
        if opcode.is_control() && payload_len > MAX_CONTROL_PAYLOAD {
            return Err(ProtocolError::ControlFrameTooLong(payload_len));
        }

        let mask = if masked {
            let Some(key) = src.get(pos..pos + 4) else {
                return Ok(None);
            };
            pos += 4;
            let mut k = [0u8; 4];
            k.copy_from_slice(key);
            Some(k)
        } else {
            None
        };

        Ok(Some((
            FrameHeader {
                fin,
                opcode,
                mask,
                payload_len,
            },
            pos,
        )))
    }

    /// Encodes the header with the minimal length form (RFC 6455 §5.2).
    ///
    /// Lengths with the top bit set cannot be represented; they are clamped
    /// to `i64::MAX` (no real payload comes near).
    pub fn encode(&self) -> HeaderBuf {
        let mut buf = [0u8; MAX_HEADER_LEN];
        buf[0] = (u8::from(self.fin) << 7) | self.opcode.as_u8();
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let len = self.payload_len.min(i64::MAX as u64);
        let mut pos = 2;
        if len < 126 {
            buf[1] = mask_bit | len as u8;
        } else if let Ok(len16) = u16::try_from(len) {
            buf[1] = mask_bit | 126;
            buf[2..4].copy_from_slice(&len16.to_be_bytes());
            pos = 4;
        } else {
            buf[1] = mask_bit | 127;
            buf[2..10].copy_from_slice(&len.to_be_bytes());
            pos = 10;
        }
        if let Some(key) = self.mask {
            buf[pos..pos + 4].copy_from_slice(&key);
            pos += 4;
        }
        HeaderBuf {
            buf,
            len: pos as u8,
        }
    }
}

/// Appends a whole client frame to `out`: the header with `mask`, then a
/// masked copy of `payload` (a client must copy to mask; RFC 6455 §5.3).
pub fn encode_client_frame(
    opcode: OpCode,
    fin: bool,
    payload: &[u8],
    mask: [u8; 4],
    out: &mut BytesMut,
) {
    let header = FrameHeader {
        fin,
        opcode,
        mask: Some(mask),
        payload_len: payload.len() as u64,
    }
    .encode();
    out.reserve(header.as_bytes().len() + payload.len());
    out.put_slice(header.as_bytes());
    let start = out.len();
    out.put_slice(payload);
    apply_mask(&mut out[start..], mask);
}

/// Appends a whole unmasked (server) frame to `out`: header, then `payload`.
/// Meant for small frames such as control frames; forwarded data should be
/// written as a [`HeaderBuf`] plus the payload `Bytes`, without this copy.
pub fn encode_server_frame(opcode: OpCode, fin: bool, payload: &[u8], out: &mut BytesMut) {
    let header = FrameHeader {
        fin,
        opcode,
        mask: None,
        payload_len: payload.len() as u64,
    }
    .encode();
    out.reserve(header.as_bytes().len() + payload.len());
    out.put_slice(header.as_bytes());
    out.put_slice(payload);
}

/// Encodes a frame to a fresh `Bytes`: masked with `mask` if given, else plain.
pub(crate) fn encode_frame(opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) -> Bytes {
    let mut out = BytesMut::with_capacity(MAX_HEADER_LEN + payload.len());
    match mask {
        Some(key) => encode_client_frame(opcode, true, payload, key, &mut out),
        None => encode_server_frame(opcode, true, payload, &mut out),
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::close::CloseCode;
    use proptest::prelude::*;

    fn parse_server(src: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        FrameHeader::parse(src, Role::Server)
    }

    fn parse_client(src: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        FrameHeader::parse(src, Role::Client)
    }

    #[test]
    fn rfc_5_7_unmasked_hello() {
        let wire = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let (h, n) = parse_client(&wire).unwrap().unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            h,
            FrameHeader {
                fin: true,
                opcode: OpCode::Text,
                mask: None,
                payload_len: 5
            }
        );
        assert_eq!(h.encode().as_bytes(), &wire[..2]);
    }

    #[test]
    fn rfc_5_7_masked_hello() {
        let wire = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (h, n) = parse_server(&wire).unwrap().unwrap();
        assert_eq!(n, 6);
        assert_eq!(h.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!((h.fin, h.opcode, h.payload_len), (true, OpCode::Text, 5));
        assert_eq!(h.encode().as_bytes(), &wire[..6]);
    }

    #[test]
    fn rfc_5_7_fragmented_hello() {
        let first = [0x01, 0x03, 0x48, 0x65, 0x6c];
        let last = [0x80, 0x02, 0x6c, 0x6f];
        let (h1, _) = parse_client(&first).unwrap().unwrap();
        let (h2, _) = parse_client(&last).unwrap().unwrap();
        assert_eq!(
            (h1.fin, h1.opcode, h1.payload_len),
            (false, OpCode::Text, 3)
        );
        assert_eq!(
            (h2.fin, h2.opcode, h2.payload_len),
            (true, OpCode::Continuation, 2)
        );
    }

    #[test]
    fn rfc_5_7_pings() {
        let unmasked = [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let (h, _) = parse_client(&unmasked).unwrap().unwrap();
        assert_eq!((h.opcode, h.payload_len), (OpCode::Ping, 5));
        let masked_pong = [
            0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (h, n) = parse_server(&masked_pong).unwrap().unwrap();
        assert_eq!((h.opcode, h.payload_len, n), (OpCode::Pong, 5, 6));
    }

    #[test]
    fn rfc_5_7_256_bytes_and_64_kib() {
        let h256 = [0x82, 0x7E, 0x01, 0x00];
        let (h, n) = parse_client(&h256).unwrap().unwrap();
        assert_eq!((h.opcode, h.payload_len, n), (OpCode::Binary, 256, 4));
        assert_eq!(h.encode().as_bytes(), &h256);

        let h64k = [0x82, 0x7F, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00];
        let (h, n) = parse_client(&h64k).unwrap().unwrap();
        assert_eq!((h.opcode, h.payload_len, n), (OpCode::Binary, 65536, 10));
        assert_eq!(h.encode().as_bytes(), &h64k);
    }

    #[test]
    fn incomplete_headers_need_more() {
        let full = [0x82, 0xFF, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00, 1, 2, 3, 4];
        for cut in 0..full.len() {
            assert_eq!(parse_server(&full[..cut]), Ok(None), "cut at {cut}");
        }
        let (h, n) = parse_server(&full).unwrap().unwrap();
        assert_eq!((h.payload_len, n, h.mask), (65536, 14, Some([1, 2, 3, 4])));
    }

    #[test]
    fn non_minimal_length_is_tolerated() {
        let (h, n) = parse_client(&[0x82, 0x7E, 0x00, 0x05]).unwrap().unwrap();
        assert_eq!((h.payload_len, n), (5, 4));
        assert_eq!(h.encode().as_bytes(), &[0x82, 0x05]);
    }

    fn code(e: ProtocolError) -> CloseCode {
        e.close_code()
    }

    #[test]
    fn rule_rsv_bits_must_be_zero() {
        for (byte, bits) in [(0xC1, 0b100), (0xA1, 0b010), (0x91, 0b001), (0xF1, 0b111)] {
            let e = parse_server(&[byte, 0x80]).unwrap_err();
            assert_eq!(e, ProtocolError::ReservedBits { bits });
            assert_eq!(code(e), CloseCode::PROTOCOL_ERROR);
        }
    }

    #[test]
    fn rule_reserved_opcodes() {
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            let e = parse_server(&[0x80 | op, 0x80]).unwrap_err();
            assert_eq!(e, ProtocolError::ReservedOpcode(op));
            assert_eq!(code(e), CloseCode::PROTOCOL_ERROR);
        }
    }

    #[test]
    fn rule_control_frames_not_fragmented() {
        for op in [0x08, 0x09, 0x0A] {
            let e = parse_server(&[op, 0x80]).unwrap_err();
            assert_eq!(e, ProtocolError::FragmentedControlFrame);
            assert_eq!(code(e), CloseCode::PROTOCOL_ERROR);
        }
    }

    #[test]
    fn rule_control_payload_at_most_125() {
        assert!(parse_server(&[0x89, 0x80 | 125, 0, 0, 0, 0])
            .unwrap()
            .is_some());
        let e = parse_server(&[0x89, 0x80 | 126, 0, 126]).unwrap_err();
        assert_eq!(e, ProtocolError::ControlFrameTooLong(126));
        assert_eq!(code(e), CloseCode::PROTOCOL_ERROR);
        let e = parse_client(&[0x88, 127, 0, 0, 0, 0, 0, 0, 1, 0]).unwrap_err();
        assert_eq!(e, ProtocolError::ControlFrameTooLong(256));
    }

    #[test]
    fn rule_masking_per_role() {
        let e = parse_server(&[0x81, 0x05]).unwrap_err();
        assert_eq!(e, ProtocolError::UnmaskedClientFrame);
        assert_eq!(code(e), CloseCode::PROTOCOL_ERROR);
        let e = parse_client(&[0x81, 0x85]).unwrap_err();
        assert_eq!(e, ProtocolError::MaskedServerFrame);
        assert_eq!(code(e), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn rule_64_bit_length_top_bit_zero() {
        let e = parse_client(&[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 1]).unwrap_err();
        assert_eq!(e, ProtocolError::PayloadLengthTopBit);
        assert_eq!(code(e), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn encode_client_frame_matches_rfc() {
        let mut out = BytesMut::new();
        encode_client_frame(
            OpCode::Text,
            true,
            b"Hello",
            [0x37, 0xfa, 0x21, 0x3d],
            &mut out,
        );
        assert_eq!(
            &out[..],
            &[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
        let mut out = BytesMut::new();
        encode_server_frame(OpCode::Ping, true, b"Hello", &mut out);
        assert_eq!(&out[..], &[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    }

    fn arb_header() -> impl Strategy<Value = FrameHeader> {
        let data = (
            any::<bool>(),
            prop_oneof![
                Just(OpCode::Continuation),
                Just(OpCode::Text),
                Just(OpCode::Binary)
            ],
            prop_oneof![0u64..200, 0u64..70_000, 0u64..(1 << 63)],
        );
        let control = (
            Just(true),
            prop_oneof![Just(OpCode::Close), Just(OpCode::Ping), Just(OpCode::Pong)],
            0u64..=125,
        );
        (prop_oneof![data, control], any::<Option<[u8; 4]>>()).prop_map(
            |((fin, opcode, payload_len), mask)| FrameHeader {
                fin,
                opcode,
                mask,
                payload_len,
            },
        )
    }

    proptest! {
        #[test]
        fn header_round_trip(h in arb_header()) {
            let role = if h.mask.is_some() { Role::Server } else { Role::Client };
            let enc = h.encode();
            let (back, n) = FrameHeader::parse(enc.as_bytes(), role).unwrap().unwrap();
            prop_assert_eq!(back, h);
            prop_assert_eq!(n, enc.as_bytes().len());
            // Minimal: the smallest form that fits the length.
            let ext = if h.payload_len < 126 { 0 } else if h.payload_len < 65536 { 2 } else { 8 };
            prop_assert_eq!(n, 2 + ext + if h.mask.is_some() { 4 } else { 0 });
        }

        #[test]
        fn parse_never_panics_and_is_prefix_stable(src in proptest::collection::vec(any::<u8>(), 0..20)) {
            for role in [Role::Server, Role::Client] {
                let whole = FrameHeader::parse(&src, role);
                if let Ok(Some((_, n))) = whole {
                    prop_assert!(n <= src.len());
                    // Any longer prefix gives the same answer.
                    for cut in n..=src.len() {
                        prop_assert_eq!(FrameHeader::parse(&src[..cut], role), whole.clone());
                    }
                }
            }
        }
    }
}
