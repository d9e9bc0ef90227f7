//! A claim's [`LogRecord`]s as bytes, for the cluster's JetStream log (PROTOCOL.md §11:
//! held messages, the numbers and the claim survive a restart; §12: in a cluster they
//! survive the loss of a node). Pure: no I/O, no allocation beyond the output.
//!
//! # Format (version 1)
//!
//! All numbers are little-endian.
//!
//! ```text
//! encoding = version:u8 (= 1)  count:u32  record{count}
//! record   = tag:u8 fields
//! string   = len:u16 UTF-8 bytes{len}
//! message  = kind:u8 (b'T' text | b'B' binary)  len:u32  payload{len}
//! ```
//!
//! | tag | record                | fields                                                      |
//! |-----|-----------------------|-------------------------------------------------------------|
//! | 1   | `Claim`               | device domain, device serial, client domain, client id, session id (5 strings) |
//! | 2   | `Resumed`             | —                                                           |
//! | 3   | `DeviceHeld`          | seq:u64, message                                            |
//! | 4   | `DeviceAcked`         | upto:u64                                                    |
//! | 5   | `PosQueued`           | seq:u64, message                                            |
//! | 6   | `PosHanding`          | upto:u64                                                    |
//! | 7   | `PosDone`             | upto:u64                                                    |
//! | 8   | `PosReported`         | from:u64, to:u64, bytes:u64                                 |
//! | 9   | `ReportConfirmed`     | from:u64, to:u64                                            |
//! | 10  | `ClaimEnded`          | —                                                           |
//!
//! The record count after the version byte makes every truncation of an encoding an error,
//! including one that ends exactly between two records.
//!
//! Decoding checks everything a [`LogRecord`] promises: ids through their `new`
//! constructors, ranges through [`SeqRange::new`], text payloads as UTF-8; it refuses an
//! unknown version, tag or kind, a truncated input and trailing bytes, and never panics.
//! Payloads are [`Bytes::slice`]s of the input: no copy.
#![forbid(unsafe_code)]

use bytes::Bytes;

use crate::ids::{ClientId, ClientKey, DeviceKey, DomainName, IdError, Serial, SessionId};
use crate::relay::{MessageKind, RelayedMessage};
use crate::store::StoreError;

use super::claim::ClaimRecord;
use super::log::LogRecord;
use super::seq::{Seq, SeqRange};

/// The format version this build writes and reads.
pub const VERSION: u8 = 1;

/// The `table` of the [`StoreError::Corrupt`] a [`RecordCodecError`] becomes.
pub const TABLE: &str = "reliable log (JetStream)";

const TAG_CLAIM: u8 = 1;
const TAG_RESUMED: u8 = 2;
const TAG_DEVICE_HELD: u8 = 3;
const TAG_DEVICE_ACKED: u8 = 4;
const TAG_POS_QUEUED: u8 = 5;
const TAG_POS_HANDING: u8 = 6;
const TAG_POS_DONE: u8 = 7;
const TAG_POS_REPORTED: u8 = 8;
const TAG_REPORT_CONFIRMED: u8 = 9;
const TAG_CLAIM_ENDED: u8 = 10;

const KIND_TEXT: u8 = b'T';
const KIND_BINARY: u8 = b'B';

/// Why bytes are not an encoding of log records. Every variant says where: `offset` is
/// the position in the input of the byte (or field) that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordCodecError {
    /// The input ends inside a field (or before the records its count announces).
    #[error("truncated at byte {offset}: {what} needs {needed} bytes, {left} left")]
    Truncated {
        /// Where the field starts.
        offset: usize,
        /// The field.
        what: &'static str,
        /// Its length.
        needed: usize,
        /// What the input has left from `offset`.
        left: usize,
    },
    /// The first byte is not a version this build reads.
    #[error("unknown format version {version} at byte {offset} (this build reads {VERSION})")]
    UnknownVersion {
        /// Always 0.
        offset: usize,
        /// The version byte.
        version: u8,
    },
    /// A record's tag byte names no record.
    #[error("unknown record tag {tag} at byte {offset}")]
    UnknownTag {
        /// Where the tag is.
        offset: usize,
        /// The tag byte.
        tag: u8,
    },
    /// A message's kind byte is neither `T` nor `B`.
    #[error("unknown message kind {kind:#04x} at byte {offset}")]
    UnknownKind {
        /// Where the kind is.
        offset: usize,
        /// The kind byte.
        kind: u8,
    },
    /// A string or a text payload is not UTF-8.
    #[error("{what} at byte {offset} is not UTF-8")]
    NotUtf8 {
        /// Where its bytes start (after the length).
        offset: usize,
        /// The field.
        what: &'static str,
    },
    /// A string is not a valid identifier of its kind.
    #[error("invalid {what} at byte {offset}: {source}")]
    InvalidId {
        /// Where its bytes start (after the length).
        offset: usize,
        /// The field.
        what: &'static str,
        /// What its constructor refused.
        source: IdError,
    },
    /// A range names message 0 or ends before it starts.
    #[error("invalid range {from}..={to} at byte {offset}")]
    InvalidRange {
        /// Where the range starts.
        offset: usize,
        /// Its first number.
        from: u64,
        /// Its last number.
        to: u64,
    },
    /// Bytes after the last record the count announces.
    #[error("{left} trailing bytes at byte {offset}")]
    TrailingBytes {
        /// Where they start.
        offset: usize,
        /// How many.
        left: usize,
    },
}

impl RecordCodecError {
    /// The error as the store reports it, naming the stored value that did not decode
    /// (the JetStream subject or message sequence): a [`StoreError::Corrupt`] of
    /// [`TABLE`], which the admin API answers with 500.
    pub fn into_store_error(self, key: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            table: TABLE,
            key: key.into(),
            reason: self.to_string(),
        }
    }
}

/// A [`StoreError::Corrupt`] of [`TABLE`] with the key `"(unknown)"`: the codec does not
/// know which stored value it was given. Prefer [`RecordCodecError::into_store_error`]
/// where the caller knows it.
impl From<RecordCodecError> for StoreError {
    fn from(err: RecordCodecError) -> StoreError {
        err.into_store_error("(unknown)")
    }
}

/// The records as one version-1 encoding (see the module documentation).
///
/// # Panics
///
/// Never for records the crate can build: ids are at most 64 bytes (a string's length is a
/// u16) and a message is far below 4 GiB (a payload's length is a u32).
pub fn encode_records(records: &[LogRecord]) -> Vec<u8> {
    let size = records.iter().map(encoded_len_hint).sum::<usize>() + 5;
    let mut out = Vec::with_capacity(size);
    out.push(VERSION);
    let count = u32::try_from(records.len()).expect("fewer than 2^32 records");
    out.extend_from_slice(&count.to_le_bytes());
    for record in records {
        encode_record(&mut out, record);
    }
    out
}

fn encoded_len_hint(record: &LogRecord) -> usize {
    match record {
        LogRecord::Claim(_) => 1 + 5 * (2 + 64),
        LogRecord::DeviceHeld { message, .. } | LogRecord::PosQueued { message, .. } => {
            1 + 8 + 5 + message.payload.len()
        }
        _ => 1 + 24,
    }
}

fn encode_record(out: &mut Vec<u8>, record: &LogRecord) {
    match record {
        LogRecord::Claim(claim) => {
            out.push(TAG_CLAIM);
            put_str(out, claim.device.domain.as_str());
            put_str(out, claim.device.serial.as_str());
            put_str(out, claim.client.domain.as_str());
            put_str(out, claim.client.client_id.as_str());
            put_str(out, claim.session_id.as_str());
        }
        LogRecord::Resumed => out.push(TAG_RESUMED),
        LogRecord::DeviceHeld { seq, message } => {
            out.push(TAG_DEVICE_HELD);
            put_u64(out, seq.get());
            put_message(out, message);
        }
        LogRecord::DeviceAcked { upto } => {
            out.push(TAG_DEVICE_ACKED);
            put_u64(out, upto.get());
        }
        LogRecord::PosQueued { seq, message } => {
            out.push(TAG_POS_QUEUED);
            put_u64(out, seq.get());
            put_message(out, message);
        }
        LogRecord::PosHanding { upto } => {
            out.push(TAG_POS_HANDING);
            put_u64(out, upto.get());
        }
        LogRecord::PosDone { upto } => {
            out.push(TAG_POS_DONE);
            put_u64(out, upto.get());
        }
        LogRecord::PosReported { range, bytes } => {
            out.push(TAG_POS_REPORTED);
            put_u64(out, range.from().get());
            put_u64(out, range.to().get());
            put_u64(out, *bytes);
        }
        LogRecord::ReportConfirmed { range } => {
            out.push(TAG_REPORT_CONFIRMED);
            put_u64(out, range.from().get());
            put_u64(out, range.to().get());
        }
        LogRecord::ClaimEnded => out.push(TAG_CLAIM_ENDED),
    }
}

fn put_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("an id is at most 64 bytes");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_message(out: &mut Vec<u8>, message: &RelayedMessage) {
    out.push(match message.kind {
        MessageKind::Text => KIND_TEXT,
        MessageKind::Binary => KIND_BINARY,
    });
    let len = u32::try_from(message.payload.len()).expect("a message is below 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&message.payload);
}

/// The records of a version-1 encoding, in order. Payloads are slices of `bytes` (no
/// copy). Never panics, whatever `bytes` holds.
pub fn decode_records(bytes: &Bytes) -> Result<Vec<LogRecord>, RecordCodecError> {
    let mut reader = Reader { bytes, pos: 0 };
    let version = reader.u8("version")?;
    if version != VERSION {
        return Err(RecordCodecError::UnknownVersion { offset: 0, version });
    }
    let count = reader.u32("record count")?;
    // Every record takes at least one byte: never reserve more than the input could hold.
    let cap = usize::try_from(count)
        .unwrap_or(usize::MAX)
        .min(reader.left());
    let mut records = Vec::with_capacity(cap);
    for _ in 0..count {
        records.push(reader.record()?);
    }
    let left = reader.left();
    if left > 0 {
        return Err(RecordCodecError::TrailingBytes {
            offset: reader.pos,
            left,
        });
    }
    Ok(records)
}

/// A cursor over the input; every read is checked.
struct Reader<'a> {
    bytes: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn left(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes as a range of the input, and moves past them.
    fn take(&mut self, n: usize, what: &'static str) -> Result<(usize, usize), RecordCodecError> {
        let start = self.pos;
        let truncated = RecordCodecError::Truncated {
            offset: start,
            what,
            needed: n,
            left: self.left(),
        };
        match start.checked_add(n) {
            Some(end) if end <= self.bytes.len() => {
                self.pos = end;
                Ok((start, end))
            }
            _ => Err(truncated),
        }
    }

    fn slice(&mut self, n: usize, what: &'static str) -> Result<&[u8], RecordCodecError> {
        let (start, end) = self.take(n, what)?;
        let bytes: &[u8] = self.bytes;
        bytes.get(start..end).ok_or(RecordCodecError::Truncated {
            offset: start,
            what,
            needed: n,
            left: bytes.len().saturating_sub(start),
        })
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], RecordCodecError> {
        let offset = self.pos;
        let left = self.left();
        self.slice(N, what)?
            .try_into()
            .map_err(|_| RecordCodecError::Truncated {
                offset,
                what,
                needed: N,
                left,
            })
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, RecordCodecError> {
        Ok(u8::from_le_bytes(self.array(what)?))
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, RecordCodecError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, RecordCodecError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, RecordCodecError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn seq(&mut self, what: &'static str) -> Result<Seq, RecordCodecError> {
        self.u64(what).map(Seq::new)
    }

    fn range(&mut self) -> Result<SeqRange, RecordCodecError> {
        let offset = self.pos;
        let from = self.u64("range start")?;
        let to = self.u64("range end")?;
        SeqRange::new(Seq::new(from), Seq::new(to)).ok_or(RecordCodecError::InvalidRange {
            offset,
            from,
            to,
        })
    }

    /// A length-prefixed string, checked by `make` (an id's `new`).
    fn id<T>(
        &mut self,
        what: &'static str,
        make: fn(String) -> Result<T, IdError>,
    ) -> Result<T, RecordCodecError> {
        let len = usize::from(self.u16(what)?);
        let offset = self.pos;
        let raw = self.slice(len, what)?;
        let text = std::str::from_utf8(raw)
            .map_err(|_| RecordCodecError::NotUtf8 { offset, what })?
            .to_owned();
        make(text).map_err(|source| RecordCodecError::InvalidId {
            offset,
            what,
            source,
        })
    }

    fn message(&mut self) -> Result<RelayedMessage, RecordCodecError> {
        let kind_offset = self.pos;
        let kind = match self.u8("message kind")? {
            KIND_TEXT => MessageKind::Text,
            KIND_BINARY => MessageKind::Binary,
            other => {
                return Err(RecordCodecError::UnknownKind {
                    offset: kind_offset,
                    kind: other,
                })
            }
        };
        let len = self.u32("payload length")?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let (start, end) = self.take(len, "payload")?;
        // In range: `take` checked `end <= len()`.
        let payload = self.bytes.slice(start..end);
        if kind == MessageKind::Text && std::str::from_utf8(&payload).is_err() {
            return Err(RecordCodecError::NotUtf8 {
                offset: start,
                what: "text payload",
            });
        }
        Ok(RelayedMessage { kind, payload })
    }

    fn record(&mut self) -> Result<LogRecord, RecordCodecError> {
        let offset = self.pos;
        let tag = self.u8("record tag")?;
        Ok(match tag {
            TAG_CLAIM => {
                let device = DeviceKey {
                    domain: self.id("device domain", DomainName::new)?,
                    serial: self.id("device serial", Serial::new)?,
                };
                let client = ClientKey {
                    domain: self.id("client domain", DomainName::new)?,
                    client_id: self.id("client id", ClientId::new)?,
                };
                let session_id = self.id("session id", SessionId::new)?;
                LogRecord::Claim(ClaimRecord {
                    device,
                    client,
                    session_id,
                })
            }
            TAG_RESUMED => LogRecord::Resumed,
            TAG_DEVICE_HELD => LogRecord::DeviceHeld {
                seq: self.seq("seq")?,
                message: self.message()?,
            },
            TAG_DEVICE_ACKED => LogRecord::DeviceAcked {
                upto: self.seq("upto")?,
            },
            TAG_POS_QUEUED => LogRecord::PosQueued {
                seq: self.seq("seq")?,
                message: self.message()?,
            },
            TAG_POS_HANDING => LogRecord::PosHanding {
                upto: self.seq("upto")?,
            },
            TAG_POS_DONE => LogRecord::PosDone {
                upto: self.seq("upto")?,
            },
            TAG_POS_REPORTED => LogRecord::PosReported {
                range: self.range()?,
                bytes: self.u64("report bytes")?,
            },
            TAG_REPORT_CONFIRMED => LogRecord::ReportConfirmed {
                range: self.range()?,
            },
            TAG_CLAIM_ENDED => LogRecord::ClaimEnded,
            tag => return Err(RecordCodecError::UnknownTag { offset, tag }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reliable::log::conformance::{binary, record, text};
    use crate::reliable::ClaimSnapshot;
    use proptest::prelude::*;

    fn s(n: u64) -> Seq {
        Seq::new(n)
    }

    fn range(a: u64, b: u64) -> SeqRange {
        SeqRange::new(s(a), s(b)).unwrap()
    }

    /// One of every record, with the edge cases of each field.
    fn every_record() -> Vec<LogRecord> {
        let all_bytes: Vec<u8> = (0..=255u8).collect();
        let big: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
        vec![
            LogRecord::Claim(record("1", "pos-a")),
            LogRecord::Resumed,
            LogRecord::DeviceHeld {
                seq: s(1),
                message: text(""),
            },
            LogRecord::DeviceHeld {
                seq: s(u64::MAX),
                message: binary(&all_bytes),
            },
            LogRecord::DeviceHeld {
                seq: s(2),
                message: binary(&[]),
            },
            LogRecord::DeviceAcked { upto: s(u64::MAX) },
            LogRecord::PosQueued {
                seq: s(u64::MAX - 1),
                message: binary(&big),
            },
            LogRecord::PosQueued {
                seq: s(0),
                message: text("é\u{0}\"ok"),
            },
            LogRecord::PosHanding { upto: s(u64::MAX) },
            LogRecord::PosDone { upto: s(0) },
            LogRecord::PosReported {
                range: range(1, u64::MAX),
                bytes: u64::MAX,
            },
            LogRecord::ReportConfirmed {
                range: range(u64::MAX, u64::MAX),
            },
            LogRecord::ClaimEnded,
        ]
    }

    fn decode(bytes: &[u8]) -> Result<Vec<LogRecord>, RecordCodecError> {
        decode_records(&Bytes::copy_from_slice(bytes))
    }

    #[test]
    fn every_record_round_trips() {
        let records = every_record();
        let bytes = Bytes::from(encode_records(&records));
        assert_eq!(bytes[0], VERSION);
        assert_eq!(decode_records(&bytes).unwrap(), records);
        // Each one alone too.
        for r in &records {
            let one = std::slice::from_ref(r);
            assert_eq!(decode(&encode_records(one)).unwrap(), one);
        }
        assert_eq!(decode(&encode_records(&[])).unwrap(), vec![]);
    }

    #[test]
    fn payloads_are_slices_of_the_input() {
        let big = binary(&vec![7u8; 300_000]);
        let bytes = Bytes::from(encode_records(&[LogRecord::PosQueued {
            seq: s(1),
            message: big.clone(),
        }]));
        let got = decode_records(&bytes).unwrap();
        let LogRecord::PosQueued { message, .. } = &got[0] else {
            panic!("{got:?}");
        };
        assert_eq!(message, &big);
        let range = bytes.as_ptr_range();
        assert!(range.contains(&message.payload.as_ptr()), "no copy");
    }

    #[test]
    fn the_format_is_as_documented() {
        let bytes = encode_records(&[
            LogRecord::DeviceAcked { upto: s(0x0102) },
            LogRecord::DeviceHeld {
                seq: s(3),
                message: text("hi"),
            },
        ]);
        let want: Vec<u8> = [
            &[1][..],
            &2u32.to_le_bytes(),
            &[TAG_DEVICE_ACKED],
            &0x0102u64.to_le_bytes(),
            &[TAG_DEVICE_HELD],
            &3u64.to_le_bytes(),
            b"T",
            &2u32.to_le_bytes(),
            b"hi",
        ]
        .concat();
        assert_eq!(bytes, want);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let records = every_record();
        // The 300 KB payload makes every cut of the whole too slow: cut a small encoding
        // everywhere, and the big one around its payload.
        let small: Vec<LogRecord> = records
            .iter()
            .filter(|r| !matches!(r, LogRecord::PosQueued { seq, .. } if *seq == s(u64::MAX - 1)))
            .cloned()
            .collect();
        let bytes = encode_records(&small);
        for cut in 0..bytes.len() {
            let err = decode(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(err, RecordCodecError::Truncated { .. }),
                "cut at {cut}: {err}"
            );
        }
        let bytes = encode_records(&records);
        for cut in (0..400).chain(bytes.len() - 400..bytes.len()) {
            let err = decode(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(err, RecordCodecError::Truncated { .. }),
                "cut at {cut}: {err}"
            );
        }
        // Between two records: the count says more.
        let two = encode_records(&[LogRecord::Resumed, LogRecord::ClaimEnded]);
        assert_eq!(
            decode(&two[..two.len() - 1]),
            Err(RecordCodecError::Truncated {
                offset: 6,
                what: "record tag",
                needed: 1,
                left: 0
            })
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode_records(&[LogRecord::Resumed]);
        bytes.push(TAG_CLAIM_ENDED);
        assert_eq!(
            decode(&bytes),
            Err(RecordCodecError::TrailingBytes { offset: 6, left: 1 })
        );
        let mut bytes = encode_records(&[]);
        bytes.push(0);
        assert!(matches!(
            decode(&bytes),
            Err(RecordCodecError::TrailingBytes { offset: 5, left: 1 })
        ));
    }

    #[test]
    fn invalid_utf8_text_is_refused() {
        let mut bytes = encode_records(&[LogRecord::DeviceHeld {
            seq: s(1),
            message: text("ab"),
        }]);
        let n = bytes.len();
        bytes[n - 1] = 0xff;
        assert_eq!(
            decode(&bytes),
            Err(RecordCodecError::NotUtf8 {
                offset: n - 2,
                what: "text payload"
            })
        );
        // The same bytes as binary are fine.
        let kind = n - 2 - 4 - 1;
        assert_eq!(bytes[kind], b'T');
        bytes[kind] = b'B';
        assert_eq!(
            decode(&bytes).unwrap(),
            vec![LogRecord::DeviceHeld {
                seq: s(1),
                message: binary(b"a\xff"),
            }]
        );
    }

    #[test]
    fn bad_versions_tags_kinds_ids_and_ranges_are_refused() {
        assert_eq!(
            decode(&[2, 0, 0, 0, 0]),
            Err(RecordCodecError::UnknownVersion {
                offset: 0,
                version: 2
            })
        );
        assert!(matches!(
            decode(&[]),
            Err(RecordCodecError::Truncated { offset: 0, .. })
        ));
        assert_eq!(
            decode(&[1, 1, 0, 0, 0, 0]),
            Err(RecordCodecError::UnknownTag { offset: 5, tag: 0 })
        );
        assert_eq!(
            decode(&[1, 1, 0, 0, 0, 11]),
            Err(RecordCodecError::UnknownTag { offset: 5, tag: 11 })
        );

        let mut bytes = encode_records(&[LogRecord::PosQueued {
            seq: s(1),
            message: text("x"),
        }]);
        bytes[5 + 1 + 8] = b'X';
        assert_eq!(
            decode(&bytes),
            Err(RecordCodecError::UnknownKind {
                offset: 14,
                kind: b'X'
            })
        );

        // A serial with a '-' (serials are letters and digits).
        let mut bytes = encode_records(&[LogRecord::Claim(record("ab", "pos-a"))]);
        let serial = 5 + 1 + 2 + 4 + 2;
        assert_eq!(&bytes[serial..serial + 2], b"ab");
        bytes[serial] = b'-';
        assert!(matches!(
            decode(&bytes),
            Err(RecordCodecError::InvalidId {
                offset: 14,
                what: "device serial",
                ..
            })
        ));
        bytes[serial] = 0xc3;
        assert_eq!(
            decode(&bytes),
            Err(RecordCodecError::NotUtf8 {
                offset: 14,
                what: "device serial"
            })
        );
        // An empty domain.
        let bytes = [&[1, 1, 0, 0, 0, TAG_CLAIM][..], &[0, 0]].concat();
        assert!(matches!(
            decode(&bytes),
            Err(RecordCodecError::InvalidId {
                what: "device domain",
                ..
            })
        ));

        for (from, to) in [(0, 0), (0, 5), (5, 4)] {
            let bytes = [
                &[1, 1, 0, 0, 0, TAG_REPORT_CONFIRMED][..],
                &u64::to_le_bytes(from),
                &u64::to_le_bytes(to),
            ]
            .concat();
            assert_eq!(
                decode(&bytes),
                Err(RecordCodecError::InvalidRange {
                    offset: 6,
                    from,
                    to
                })
            );
        }
        // A huge announced count or length is an error, not an allocation.
        assert!(matches!(
            decode(&[1, 0xff, 0xff, 0xff, 0xff]),
            Err(RecordCodecError::Truncated { offset: 5, .. })
        ));
        let bytes = [
            &[1, 1, 0, 0, 0, TAG_DEVICE_HELD][..],
            &1u64.to_le_bytes(),
            b"B",
            &u32::MAX.to_le_bytes(),
        ]
        .concat();
        assert!(matches!(
            decode(&bytes),
            Err(RecordCodecError::Truncated {
                what: "payload",
                ..
            })
        ));
    }

    #[test]
    fn errors_become_corrupt_store_errors() {
        let err = decode(&[9]).unwrap_err();
        let store: StoreError = err.clone().into();
        assert_eq!(store.status(), 500);
        assert_eq!(
            store,
            StoreError::Corrupt {
                table: TABLE,
                key: "(unknown)".into(),
                reason: err.to_string(),
            }
        );
        let named = err.into_store_error("posrelay.reliable.acme.1");
        assert!(
            named.to_string().contains("posrelay.reliable.acme.1"),
            "{named}"
        );
        assert!(
            named.to_string().contains("unknown format version 9"),
            "{named}"
        );
    }

    fn full_snapshot() -> ClaimSnapshot {
        let mut snap = ClaimSnapshot::new(record("1", "pos-a"));
        snap.resumed = true;
        snap.device_acked = s(3);
        snap.held = vec![(s(4), binary(&[0, 255])), (s(6), text(""))];
        snap.pos_handed = s(7);
        snap.pos_done = s(5);
        // Some queued inside a report's range and at or below `pos_done`: the order of
        // `to_records` must keep them.
        snap.queued = vec![
            (s(2), text("low")),
            (s(8), binary(b"req8")),
            (s(9), text("req9")),
            (s(u64::MAX), text("last")),
        ];
        snap.reports = vec![(range(6, 7), 11), (range(9, 9), 4)];
        snap
    }

    #[test]
    fn a_snapshot_rebuilds_from_its_records() {
        let snap = full_snapshot();
        let records = snap.to_records();
        assert_eq!(records[0], LogRecord::Claim(snap.record.clone()));
        assert_eq!(ClaimSnapshot::replay(None, &records), Some(snap.clone()));
        // Through the codec, and over an older state of the same device.
        let decoded = decode(&encode_records(&records)).unwrap();
        let older = Some(ClaimSnapshot::new(record("1", "pos-z")));
        assert_eq!(ClaimSnapshot::replay(older, &decoded), Some(snap.clone()));

        // An empty snapshot is one Claim record.
        let empty = ClaimSnapshot::new(record("2", "pos-b"));
        assert_eq!(
            empty.to_records(),
            vec![LogRecord::Claim(empty.record.clone())]
        );
        assert_eq!(
            ClaimSnapshot::replay(None, &empty.to_records()),
            Some(empty)
        );
    }

    #[test]
    fn replay_starts_at_claims_and_stops_at_ends() {
        let snap = full_snapshot();
        assert_eq!(ClaimSnapshot::replay(None, &[]), None);
        assert_eq!(
            ClaimSnapshot::replay(Some(snap.clone()), &[]),
            Some(snap.clone())
        );
        // Records without a claim are ignored.
        assert_eq!(
            ClaimSnapshot::replay(
                None,
                &[LogRecord::Resumed, LogRecord::PosDone { upto: s(1) }]
            ),
            None
        );
        let mut records = snap.to_records();
        records.push(LogRecord::ClaimEnded);
        assert_eq!(ClaimSnapshot::replay(None, &records), None);
        records.push(LogRecord::DeviceAcked { upto: s(9) });
        assert_eq!(ClaimSnapshot::replay(None, &records), None);
        let b = record("2", "pos-b");
        records.push(LogRecord::Claim(b.clone()));
        records.push(LogRecord::Resumed);
        let mut want = ClaimSnapshot::new(b);
        want.resumed = true;
        assert_eq!(ClaimSnapshot::replay(Some(snap), &records), Some(want));
    }

    fn arb_message() -> impl Strategy<Value = RelayedMessage> {
        prop_oneof![
            ".{0,40}".prop_map(|t| text(&t)),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| binary(&b)),
        ]
    }

    fn arb_range() -> impl Strategy<Value = SeqRange> {
        (1..=u64::MAX, any::<u64>()).prop_map(|(a, n)| range(a, a.saturating_add(n % 1000)))
    }

    fn arb_record() -> impl Strategy<Value = LogRecord> {
        prop_oneof![
            ("[a-z0-9]{1,64}", "[A-Za-z0-9]{1,64}", "[a-z.-]{1,64}").prop_map(
                |(domain, serial, client)| {
                    let mut r = record("1", "x");
                    r.device.domain = DomainName::new(domain.clone()).unwrap();
                    r.device.serial = Serial::new(serial).unwrap();
                    r.client.domain = DomainName::new(domain).unwrap();
                    r.client.client_id = ClientId::new(client).unwrap();
                    LogRecord::Claim(r)
                }
            ),
            Just(LogRecord::Resumed),
            (any::<u64>(), arb_message())
                .prop_map(|(n, message)| LogRecord::DeviceHeld { seq: s(n), message }),
            any::<u64>().prop_map(|n| LogRecord::DeviceAcked { upto: s(n) }),
            (any::<u64>(), arb_message())
                .prop_map(|(n, message)| LogRecord::PosQueued { seq: s(n), message }),
            any::<u64>().prop_map(|n| LogRecord::PosHanding { upto: s(n) }),
            any::<u64>().prop_map(|n| LogRecord::PosDone { upto: s(n) }),
            (arb_range(), any::<u64>())
                .prop_map(|(range, bytes)| LogRecord::PosReported { range, bytes }),
            arb_range().prop_map(|range| LogRecord::ReportConfirmed { range }),
            Just(LogRecord::ClaimEnded),
        ]
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_arbitrary_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..512)
        ) {
            let _ = decode(&bytes);
            // With a valid version and count in front, the record decoder is reached.
            let mut framed = vec![VERSION, 3, 0, 0, 0];
            framed.extend_from_slice(&bytes);
            let _ = decode(&framed);
        }

        #[test]
        fn decode_never_panics_on_mutated_encodings(
            records in proptest::collection::vec(arb_record(), 0..8),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        ) {
            let mut bytes = encode_records(&records);
            for (at, value) in flips {
                let n = bytes.len();
                if let Some(b) = bytes.get_mut(at % n) {
                    *b = value;
                }
            }
            let _ = decode(&bytes);
        }

        #[test]
        fn arbitrary_records_round_trip(
            records in proptest::collection::vec(arb_record(), 0..8)
        ) {
            let bytes = encode_records(&records);
            prop_assert_eq!(decode(&bytes).unwrap(), records);
        }
    }
}
