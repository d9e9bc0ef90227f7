//! Incremental UTF-8 validation across fragments, failing fast (RFC 6455 §8.1).

use super::error::ProtocolError;

/// Validates a text message fragment by fragment.
///
/// RFC 6455 §8.1: when an endpoint finds that a text message is not valid
/// UTF-8 it MUST fail the connection; Autobahn (section 6) checks that this
/// happens at the first byte that cannot be part of a valid sequence, even in
/// the middle of a code point (e.g. `F4 90` fails at `90`, the surrogate
/// `ED A0` at `A0`, overlong `E0 80` at `80`). `std::str::from_utf8` already
/// rejects exactly those bytes (its `error_len()` is `None` only for a valid
/// but unfinished prefix), so it does the bulk work and this type only carries
/// an unfinished code point from one fragment to the next.
#[derive(Debug, Clone, Default)]
pub struct Utf8Validator {
    /// The bytes of an unfinished code point from the previous fragments.
    pending: [u8; 4],
    /// How many of `pending` are used (0 when between code points).
    pending_len: u8,
}

impl Utf8Validator {
    /// A validator at the start of a message.
    pub fn new() -> Utf8Validator {
        Utf8Validator::default()
    }

    /// Validates the next fragment; fails as soon as a byte makes the message invalid.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), ProtocolError> {
        if self.pending_len > 0 {
            let have = usize::from(self.pending_len);
            // The lead byte was accepted by from_utf8, so it is 0xC2..=0xF4.
            let width = match self.pending[0] {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                _ => 4,
            };
            let take = (width - have).min(bytes.len());
            let mut cp = self.pending;
            cp[have..have + take].copy_from_slice(&bytes[..take]);
            let total = have + take;
            match std::str::from_utf8(&cp[..total]) {
                Ok(_) => {
                    self.pending_len = 0;
                    bytes = &bytes[take..];
                }
                Err(e) if e.error_len().is_none() => {
                    // Still a valid prefix, and this fragment is used up.
                    self.pending = cp;
                    self.pending_len = total as u8;
                    return Ok(());
                }
                Err(_) => return Err(ProtocolError::InvalidUtf8),
            }
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                // A valid but unfinished code point at the end: 1 to 3 bytes.
                let tail = &bytes[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(ProtocolError::InvalidUtf8),
        }
    }

    /// Checks the end of the message: an unfinished code point is invalid.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        if self.pending_len == 0 {
            Ok(())
        } else {
            Err(ProtocolError::InvalidUtf8)
        }
    }

    /// Forgets any state, ready for the next message.
    pub fn reset(&mut self) {
        self.pending_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `chunks` in order; returns the index of the chunk that failed, or
    /// `Ok(finish result)`.
    fn run(chunks: &[&[u8]]) -> Result<Result<(), ProtocolError>, usize> {
        let mut v = Utf8Validator::new();
        for (i, c) in chunks.iter().enumerate() {
            if v.feed(c).is_err() {
                return Err(i);
            }
        }
        Ok(v.finish())
    }

    #[test]
    fn fails_in_the_middle_of_a_code_point() {
        // Each pair: the second byte already makes the sequence invalid.
        for bad in [
            [0xF4u8, 0x90], // > U+10FFFF
            [0xED, 0xA0],   // surrogate
            [0xE0, 0x80],   // overlong 3-byte
            [0xE0, 0x9F],
            [0xF0, 0x80], // overlong 4-byte
            [0xF0, 0x8F],
        ] {
            assert_eq!(run(&[&bad[..1], &bad[1..]]), Err(1), "{bad:x?}");
        }
        for lead in [0xC0u8, 0xC1, 0xF5, 0xFF, 0x80] {
            assert_eq!(run(&[b"ok", &[lead]]), Err(1), "{lead:x}");
        }
    }

    #[test]
    fn valid_prefixes_wait() {
        let euro = "€".as_bytes(); // E2 82 AC
        assert_eq!(run(&[&euro[..1], &euro[1..2], &euro[2..]]), Ok(Ok(())));
        let smile = "😀".as_bytes();
        assert_eq!(
            run(&[&smile[..1], &[], &smile[1..3], &smile[3..]]),
            Ok(Ok(()))
        );
        assert_eq!(
            run(&[&[0xF4, 0x8F], &[0xBF, 0xBF, b'a']]),
            Ok(Ok(())),
            "U+10FFFF is the last valid code point"
        );
    }

    #[test]
    fn unfinished_at_the_end_is_invalid() {
        assert_eq!(run(&[b"abc\xE2\x82"]), Ok(Err(ProtocolError::InvalidUtf8)));
        assert_eq!(
            run(&[b"\xF0", b"\x9F"]),
            Ok(Err(ProtocolError::InvalidUtf8))
        );
    }

    #[test]
    fn autobahn_6_3_1_fails_at_the_surrogate() {
        // κόσμε + ED A0 80 + edited: fail when A0 arrives.
        let mut bytes = "κόσμε".as_bytes().to_vec();
        let at = bytes.len() + 1;
        bytes.extend_from_slice(&[0xED, 0xA0, 0x80, 0x65, 0x64, 0x69, 0x74, 0x65, 0x64]);
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(run(&chunks), Err(at));
    }

    /// Position of the byte at which a prefix of `bytes` becomes invalid.
    fn first_invalid_byte(bytes: &[u8]) -> Option<usize> {
        match std::str::from_utf8(bytes) {
            Ok(_) => None,
            Err(e) => {
                let v = e.valid_up_to();
                match e.error_len() {
                    None => None,
                    // An impossible lead byte is itself the culprit; otherwise the
                    // byte after the longest valid prefix is.
                    Some(l) if matches!(bytes[v], 0xC2..=0xF4) => Some(v + l),
                    Some(_) => Some(v),
                }
            }
        }
    }

    fn utf8ish() -> impl Strategy<Value = Vec<u8>> {
        // Mostly valid text with some corruption, so both outcomes are common.
        (
            ".{0,40}",
            proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 0..3),
        )
            .prop_map(|(s, edits)| {
                let mut b = s.into_bytes();
                for (i, byte) in edits {
                    if !b.is_empty() {
                        let at = i.index(b.len());
                        b[at] = byte;
                    }
                }
                b
            })
    }

    proptest! {
        #[test]
        fn any_chunking_agrees_with_std(bytes in utf8ish(),
                                        cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..6)) {
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for p in points {
                chunks.push(&bytes[start..p]);
                start = p;
            }
            chunks.push(&bytes[start..]);

            let whole_ok = std::str::from_utf8(&bytes).is_ok();
            match run(&chunks) {
                Ok(fin) => {
                    prop_assert_eq!(fin.is_ok(), whole_ok);
                    // If we never failed while feeding, no byte was invalid mid-stream.
                    prop_assert_eq!(first_invalid_byte(&bytes), None);
                }
                Err(idx) => {
                    prop_assert!(!whole_ok);
                    // The failing chunk is the one holding the first invalid byte.
                    let pos = first_invalid_byte(&bytes).expect("failed with no invalid byte");
                    let chunk_start: usize = chunks[..idx].iter().map(|c| c.len()).sum();
                    prop_assert!(chunk_start <= pos && pos < chunk_start + chunks[idx].len(),
                        "failed in chunk {} [{}..{}) but first invalid byte is {}",
                        idx, chunk_start, chunk_start + chunks[idx].len(), pos);
                }
            }
        }
    }
}
