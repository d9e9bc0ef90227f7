//! Session ids, derived rather than stored: `base64url(HMAC-SHA256(key, domain || 0x00 || serial)[..16])`.
//!
//! A device keeps its session id across reconnects for as long as the relay runs (§0: "a
//! POS session outlives a terminal's reconnect"), every shard computes it without shared
//! state, and without the key it is unpredictable: 128 bits of a keyed PRF (§0 asks for
//! "at least 128 bits of randomness"). The key is drawn once at relay start and never
//! stored, so a restart gives every device a new session id (§6: sessions do not survive
//! a restart).

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ids::{DeviceKey, SessionId};

type HmacSha256 = Hmac<Sha256>;

/// The relay's session-id key (32 random bytes drawn at start).
#[derive(Clone)]
pub struct SessionKeyring {
    /// HMAC state with the key already absorbed; cloned per derivation.
    mac: HmacSha256,
}

impl SessionKeyring {
    /// A keyring over `key`, which must come from a CSPRNG.
    pub fn new(key: [u8; 32]) -> Self {
        // RFC 2104 §2: HMAC accepts keys of any length, so this cannot fail.
        let mac = match HmacSha256::new_from_slice(&key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        Self { mac }
    }

    /// A keyring with a key drawn from `rng` (pass a CSPRNG such as `rand::rngs::OsRng`).
    pub fn from_rng(rng: &mut impl rand::RngCore) -> Self {
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        Self::new(key)
    }

    /// The session id of `device`: the same for the same device as long as this keyring lives.
    ///
    /// The domain is separated from the serial by a 0x00 byte, which neither may contain
    /// (see [`crate::ids`]), so distinct (domain, serial) pairs never hash the same input.
    pub fn session_id(&self, device: &DeviceKey) -> SessionId {
        let mut mac = self.mac.clone();
        mac.update(device.domain.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(device.serial.as_str().as_bytes());
        let tag = mac.finalize().into_bytes();
        let mut first = [0u8; 16];
        first.copy_from_slice(tag.get(..16).unwrap_or(&[0; 16]));
        SessionId::from_random(first)
    }
}

impl fmt::Debug for SessionKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKeyring(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{DomainName, Serial};

    fn device(domain: &str, serial: &str) -> DeviceKey {
        DeviceKey {
            domain: DomainName::new(domain).expect("domain"),
            serial: Serial::new(serial).expect("serial"),
        }
    }

    fn key() -> [u8; 32] {
        std::array::from_fn(|i| i as u8)
    }

    #[test]
    fn matches_an_independent_hmac_sha256() {
        // Python: hmac.new(bytes(range(32)), b"acme\x0012345678", hashlib.sha256).digest()[:16],
        // base64url without padding.
        let ring = SessionKeyring::new(key());
        assert_eq!(
            ring.session_id(&device("acme", "12345678")).as_str(),
            "mSm6pz9QvnRyXR-qjo3N4Q"
        );
    }

    #[test]
    fn stable_across_calls_and_differs_per_domain_serial_and_key() {
        let ring = SessionKeyring::new(key());
        let a = ring.session_id(&device("acme", "1"));
        assert_eq!(a, ring.session_id(&device("acme", "1")));
        assert_eq!(a, ring.clone().session_id(&device("acme", "1")));
        assert_ne!(a, ring.session_id(&device("acme", "2")));
        assert_ne!(a, ring.session_id(&device("acme2", "1")));
        // Concatenation ambiguity: ("ab","1") vs ("a","b1") must differ.
        assert_ne!(
            ring.session_id(&device("ab", "1")),
            ring.session_id(&device("a", "b1"))
        );
        let mut other = key();
        other[0] ^= 1;
        assert_ne!(
            a,
            SessionKeyring::new(other).session_id(&device("acme", "1"))
        );
        assert_eq!(a.as_str().len(), 22, "128 bits in base64url");
    }

    #[test]
    fn debug_hides_the_key() {
        let ring = SessionKeyring::new(key());
        assert_eq!(format!("{ring:?}"), "SessionKeyring(<redacted>)");
    }
}
