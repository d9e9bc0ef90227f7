//! Which shard serves what: a device's owning shard and a client's home shard (DESIGN.md
//! "Thread per core, sharded by tsn").

use base64::Engine as _;

use crate::ids::{ClientKey, SessionId};

/// The index of one shard (one executor, one core), `0..shards`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardIndex(pub usize);

/// The shard that owns a device's session: its device connection and its POS sessions are
/// served there, so a relayed frame never crosses a core.
///
/// The first 8 bytes of the decoded session id, as a big-endian `u64`, modulo `shards`.
/// A session id is a keyed hash of (domain, serial), so this is a stable, uniform hash of the
/// canonical tsn. A session id from a URL that is not one of ours (not base64url of 16
/// bytes) still lands on a fixed shard (FNV-1a of its text), where it is answered 4404.
/// `shards == 0` is taken as 1.
pub fn owner_shard(session_id: &SessionId, shards: usize) -> ShardIndex {
    let mut buf = [0u8; 16];
    let hash = match base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode_slice(session_id.as_str(), &mut buf)
    {
        Ok(16) => {
            let mut first = [0u8; 8];
            first.copy_from_slice(buf.get(..8).unwrap_or(&[0; 8]));
            u64::from_be_bytes(first)
        }
        _ => fnv1a(&[session_id.as_str().as_bytes()]),
    };
    reduce(hash, shards)
}

/// The home shard of a client: all its control channels live there, and the events the
/// owning shards produce for it are carried there.
///
/// FNV-1a 64 of `domain || 0x00 || client_id`, modulo `shards` (`0` is taken as 1).
pub fn client_shard(client: &ClientKey, shards: usize) -> ShardIndex {
    let hash = fnv1a(&[
        client.domain.as_str().as_bytes(),
        &[0],
        client.client_id.as_str().as_bytes(),
    ]);
    reduce(hash, shards)
}

fn reduce(hash: u64, shards: usize) -> ShardIndex {
    let shards = u64::try_from(shards.max(1)).unwrap_or(u64::MAX);
    // The remainder is below `shards`, which came from a usize.
    ShardIndex(usize::try_from(hash % shards).unwrap_or(0))
}

/// FNV-1a, 64 bits, over the concatenation of `parts`.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for part in parts {
        for &b in *part {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(PRIME);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ClientId, DomainName};

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        // From the FNV reference test suite (draft-eastlake-fnv).
        assert_eq!(fnv1a(&[b""]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(&[b"foobar"]), 0x8594_4171_f739_67e8);
        assert_eq!(fnv1a(&[b"foo", b"bar"]), fnv1a(&[b"foobar"]));
    }

    #[test]
    fn owner_shard_uses_the_first_eight_decoded_bytes() {
        // "mSm6pz9QvnRyXR-qjo3N4Q" decodes to 99 29 ba a7 3f 50 be 74 ...
        let sid = SessionId::new("mSm6pz9QvnRyXR-qjo3N4Q").expect("valid");
        let want = 0x9929_baa7_3f50_be74u64;
        for shards in 1..=8 {
            assert_eq!(owner_shard(&sid, shards).0 as u64, want % shards as u64);
        }
        assert_eq!(owner_shard(&sid, 0), ShardIndex(0));
    }

    #[test]
    fn foreign_session_ids_land_on_a_stable_shard_without_panicking() {
        for text in [
            "x",
            "not-base64-of-16-bytes-at-all",
            "AAAA",
            &"A".repeat(64),
        ] {
            let sid = SessionId::new(text).expect("valid charset");
            let a = owner_shard(&sid, 7);
            assert_eq!(a, owner_shard(&sid, 7));
            assert!(a.0 < 7);
        }
    }

    #[test]
    fn client_shard_is_stable_and_in_range() {
        let client = |d: &str, c: &str| ClientKey {
            domain: DomainName::new(d).expect("domain"),
            client_id: ClientId::new(c).expect("client"),
        };
        let a = client("acme", "pos1");
        assert_eq!(client_shard(&a, 4), client_shard(&a.clone(), 4));
        assert_eq!(
            client_shard(&a, 1 << 20).0 as u64,
            fnv1a(&[b"acme\0pos1"]) % (1 << 20)
        );
        let spread: std::collections::HashSet<_> = (0..64)
            .map(|i| client_shard(&client("acme", &format!("pos{i}")), 4))
            .collect();
        assert_eq!(spread.len(), 4, "64 clients cover 4 shards");
        assert_eq!(client_shard(&a, 0), ShardIndex(0));
    }
}
