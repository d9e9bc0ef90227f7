//! A client certificate's fingerprint: what identifies a device on the mTLS listener
//! (PROTOCOL.md §2a) and what the admin API pins to a device (§9 `client_cert_sha256`).

use sha2::{Digest, Sha256};

/// The SHA-256 of a leaf certificate's DER encoding.
///
/// §9: written as 64 hex digits, "either case; answered in lowercase". Its `Debug` output
/// is redacted: a client certificate's fingerprint is never logged.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CertFingerprint([u8; 32]);

/// Why a text is not a fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintError {
    /// Not 64 characters long.
    #[error("a client_cert_sha256 fingerprint is 64 hex digits, this one has {len} characters")]
    Length {
        /// Its length in bytes.
        len: usize,
    },
    /// 64 characters, not all hex digits.
    #[error("a client_cert_sha256 fingerprint is 64 hex digits (0-9, a-f, either case), this one has other characters")]
    NotHex,
}

impl CertFingerprint {
    /// The number of hex digits of a fingerprint.
    pub const HEX_LEN: usize = 64;

    /// The fingerprint of a certificate given as DER.
    pub fn of_der(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }

    /// Parses 64 hex digits, either case (nothing else: no colons, no spaces, no prefix).
    pub fn parse_hex(text: &str) -> Result<Self, FingerprintError> {
        if text.len() != Self::HEX_LEN {
            return Err(FingerprintError::Length { len: text.len() });
        }
        let mut bytes = [0u8; 32];
        let decoded = base16ct::mixed::decode(text, &mut bytes).map(<[u8]>::len);
        match decoded {
            Ok(32) => Ok(Self(bytes)),
            _ => Err(FingerprintError::NotHex),
        }
    }

    /// The 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        let mut buf = [0u8; Self::HEX_LEN];
        match base16ct::lower::encode_str(&self.0, &mut buf) {
            Ok(text) => text.to_owned(),
            // 32 bytes always fit in 64 digits.
            Err(_) => unreachable!("a 64-byte buffer holds the hex of 32 bytes"),
        }
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for CertFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertFingerprint(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_the_der() {
        // FIPS 180-2 appendix B.1: SHA-256("abc").
        let fp = CertFingerprint::of_der(b"abc");
        assert_eq!(
            fp.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hex_of_either_case_is_answered_lowercase() {
        let lower = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let upper = lower.to_ascii_uppercase();
        let mixed: String = lower
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 2 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        for text in [lower, upper.as_str(), mixed.as_str()] {
            let fp = CertFingerprint::parse_hex(text).expect("valid");
            assert_eq!(fp.to_hex(), lower);
            assert_eq!(fp, CertFingerprint::of_der(b"abc"));
        }
    }

    #[test]
    fn anything_but_64_hex_digits_is_refused() {
        let good = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(
            CertFingerprint::parse_hex(&good[..62]),
            Err(FingerprintError::Length { len: 62 })
        );
        assert_eq!(
            CertFingerprint::parse_hex(&format!("{good}00")),
            Err(FingerprintError::Length { len: 66 })
        );
        assert_eq!(
            CertFingerprint::parse_hex(""),
            Err(FingerprintError::Length { len: 0 })
        );
        let colons = "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23";
        assert!(CertFingerprint::parse_hex(colons).is_err());
        let mut not_hex = good.to_owned();
        not_hex.replace_range(10..11, "g");
        assert_eq!(
            CertFingerprint::parse_hex(&not_hex),
            Err(FingerprintError::NotHex)
        );
        // 64 bytes of multi-byte characters are not 64 hex digits.
        let wide = "é".repeat(32);
        assert_eq!(
            CertFingerprint::parse_hex(&wide),
            Err(FingerprintError::NotHex)
        );
    }

    #[test]
    fn debug_never_shows_the_fingerprint() {
        let fp = CertFingerprint::of_der(b"abc");
        assert!(!format!("{fp:?}").contains("ba78"));
    }
}
