//! The bytes each benchmark message carries, and the check every received
//! message goes through.
//!
//! A payload names its pair and its sequence number in a 12-byte header
//! (`pair: u32 LE`, `seq: u64 LE`) and fills the rest with a pattern derived
//! from both, so that a message that arrives on the wrong pair, out of order,
//! twice, truncated or with a flipped byte is counted as a mismatch.

/// Bytes of the header at the start of every payload.
pub const HEADER_LEN: usize = 12;

/// The smallest payload the generator sends (the header must fit).
pub const MIN_SIZE: usize = HEADER_LEN;

/// Which message of which pair a payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The pair's index in the run.
    pub pair: u32,
    /// The message's sequence number within its pair, from 0.
    pub seq: u64,
}

/// Why a received payload is not the one expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// The payload has the wrong length.
    Length {
        /// Length expected.
        expected: usize,
        /// Length received.
        got: usize,
    },
    /// The header names another pair or another message.
    Stamp {
        /// The message expected next.
        expected: Stamp,
        /// What the header says (pair, seq), if it was long enough to say.
        got: Option<Stamp>,
    },
    /// A pattern byte differs.
    Byte {
        /// Offset of the first differing byte.
        offset: usize,
    },
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mismatch::Length { expected, got } => {
                write!(f, "length {got}, expected {expected}")
            }
            Mismatch::Stamp { expected, got } => {
                write!(f, "stamp {got:?}, expected {expected:?}")
            }
            Mismatch::Byte { offset } => write!(f, "byte {offset} differs"),
        }
    }
}

fn pattern_byte(stamp: Stamp, offset: usize) -> u8 {
    (offset as u8)
        .wrapping_mul(31)
        .wrapping_add(stamp.seq as u8)
        ^ (stamp.pair as u8)
}

/// Writes the payload for `stamp` into `out` (its length is the message size,
/// at least [`MIN_SIZE`]; a shorter buffer gets a truncated header).
pub fn fill(stamp: Stamp, out: &mut [u8]) {
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(&stamp.pair.to_le_bytes());
    header[4..].copy_from_slice(&stamp.seq.to_le_bytes());
    let n = out.len().min(HEADER_LEN);
    out[..n].copy_from_slice(&header[..n]);
    for (i, b) in out.iter_mut().enumerate().skip(HEADER_LEN) {
        *b = pattern_byte(stamp, i);
    }
}

/// The payload for `stamp`, `size` bytes long.
pub fn make(stamp: Stamp, size: usize) -> Vec<u8> {
    let mut out = vec![0; size];
    fill(stamp, &mut out);
    out
}

/// Reads the stamp of a payload (`None` if it is shorter than the header).
pub fn stamp_of(payload: &[u8]) -> Option<Stamp> {
    let pair = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?);
    let seq = u64::from_le_bytes(payload.get(4..HEADER_LEN)?.try_into().ok()?);
    Some(Stamp { pair, seq })
}

/// Checks that the payload `pieces` (a message's fragments in order) are
/// exactly [`make`]`(expected, size)`.
pub fn check<'a>(
    expected: Stamp,
    size: usize,
    pieces: impl IntoIterator<Item = &'a [u8]> + Clone,
) -> Result<(), Mismatch> {
    let got_len: usize = pieces.clone().into_iter().map(<[u8]>::len).sum();
    if got_len != size {
        return Err(Mismatch::Length {
            expected: size,
            got: got_len,
        });
    }
    let mut header = [0u8; HEADER_LEN];
    let mut offset = 0;
    for piece in pieces {
        for &b in piece {
            if offset < HEADER_LEN {
                header[offset] = b;
                if offset + 1 == HEADER_LEN {
                    let got = stamp_of(&header);
                    if got != Some(expected) {
                        return Err(Mismatch::Stamp { expected, got });
                    }
                }
            } else if b != pattern_byte(expected, offset) {
                return Err(Mismatch::Byte { offset });
            }
            offset += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Stamp = Stamp { pair: 7, seq: 42 };

    #[test]
    fn round_trip_whole_and_fragmented() {
        let p = make(S, 100);
        assert_eq!(stamp_of(&p), Some(S));
        assert_eq!(check(S, 100, [&p[..]]), Ok(()));
        let (a, b) = p.split_at(5);
        assert_eq!(check(S, 100, [a, b]), Ok(()));
    }

    #[test]
    fn detects_every_kind_of_damage() {
        let p = make(S, 64);
        assert_eq!(
            check(S, 65, [&p[..]]),
            Err(Mismatch::Length {
                expected: 65,
                got: 64
            })
        );
        let next = Stamp { seq: 43, ..S };
        assert_eq!(
            check(next, 64, [&p[..]]),
            Err(Mismatch::Stamp {
                expected: next,
                got: Some(S)
            })
        );
        let other_pair = make(Stamp { pair: 8, seq: 42 }, 64);
        assert!(matches!(
            check(S, 64, [&other_pair[..]]),
            Err(Mismatch::Stamp { .. })
        ));
        let mut flipped = p.clone();
        flipped[40] ^= 1;
        assert_eq!(
            check(S, 64, [&flipped[..]]),
            Err(Mismatch::Byte { offset: 40 })
        );
    }

    #[test]
    fn pattern_differs_between_messages() {
        // The body alone (header aside) tells neighbouring messages apart.
        let a = make(S, 64);
        let b = make(Stamp { seq: 43, ..S }, 64);
        assert_ne!(a[HEADER_LEN..], b[HEADER_LEN..]);
    }
}
