//! Client-to-server masking (RFC 6455 §5.3), word at a time, without `unsafe`.

/// XORs `buf` with the 4-byte masking key, as if `buf` were a whole payload.
///
/// RFC 6455 §5.3: octet i of the transformed data is octet i of the original
/// data XOR octet `i MOD 4` of the masking key. Masking twice is the identity.
#[inline]
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    apply_mask_offset(buf, mask, 0);
}

/// XORs `buf` with the masking key as if `buf` started `offset` bytes into
/// the payload, so a payload can be (un)masked in pieces as it arrives.
pub fn apply_mask_offset(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    // RFC 6455 §5.3: j = i MOD 4; rotate the key so buf[0] uses key[offset % 4].
    let key = u32::from_le_bytes(mask).rotate_right(8 * (offset % 4) as u32);
    let key = key.to_le_bytes();
    let word = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);

    // Four words per step gives the optimiser room to use vector registers.
    let mut blocks = buf.chunks_exact_mut(32);
    for block in &mut blocks {
        for chunk in block.chunks_exact_mut(8) {
            xor_word(chunk, word);
        }
    }
    let rest = blocks.into_remainder();
    let mut words = rest.chunks_exact_mut(8);
    for chunk in &mut words {
        xor_word(chunk, word);
    }
    // Every chunk above is a multiple of 4 bytes long, so the tail starts at key[0].
    for (byte, k) in words.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *byte ^= *k;
    }
}

#[inline(always)]
fn xor_word(chunk: &mut [u8], word: u64) {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(chunk);
    chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
}

/// The byte-by-byte reference of [`apply_mask_offset`], for tests and fuzzing.
#[doc(hidden)]
pub fn apply_mask_naive(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= mask[(offset + i) % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc_example_hello() {
        // RFC 6455 §5.7: masked "Hello" with key 37 fa 21 3d.
        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask(&mut payload, [0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(&payload, b"Hello");
    }

    #[test]
    fn offset_rotates_the_key() {
        let mut a = *b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJ";
        let mut b = a;
        apply_mask_offset(&mut a, [1, 2, 3, 4], 3);
        apply_mask_naive(&mut b, [1, 2, 3, 4], 3);
        assert_eq!(a, b);
        assert_eq!(a[0], b'a' ^ 4);
    }

    proptest! {
        #[test]
        fn masking_is_an_involution(data in proptest::collection::vec(any::<u8>(), 0..300),
                                    mask in any::<[u8; 4]>(), offset in 0usize..16) {
            let mut buf = data.clone();
            apply_mask_offset(&mut buf, mask, offset);
            apply_mask_offset(&mut buf, mask, offset);
            prop_assert_eq!(buf, data);
        }

        #[test]
        fn equals_the_naive_loop(data in proptest::collection::vec(any::<u8>(), 0..300),
                                 mask in any::<[u8; 4]>(), offset in 0usize..16) {
            let mut fast = data.clone();
            let mut slow = data;
            apply_mask_offset(&mut fast, mask, offset);
            apply_mask_naive(&mut slow, mask, offset);
            prop_assert_eq!(fast, slow);
        }

        #[test]
        fn any_split_with_offset_equals_whole(data in proptest::collection::vec(any::<u8>(), 0..300),
                                              mask in any::<[u8; 4]>(), split in any::<proptest::sample::Index>()) {
            let mut whole = data.clone();
            apply_mask(&mut whole, mask);
            let at = split.index(data.len() + 1);
            let mut parts = data;
            let (head, tail) = parts.split_at_mut(at);
            apply_mask_offset(head, mask, 0);
            apply_mask_offset(tail, mask, at);
            prop_assert_eq!(parts, whole);
        }
    }
}
