//! Client secrets: generation from a CSPRNG, hashing, constant-time checks.
//!
//! A secret is shown once by the admin API (PROTOCOL.md §9) and only a PHC-encoded hash
//! of it is stored.
//!
//! **Which hash (issue 12).** Client secrets are 256 random bits made by the relay, not
//! passwords people choose. A slow password hash (argon2, bcrypt) exists to make
//! guessing a *low-entropy* password from its stolen hash expensive; against 2^256
//! candidates no hash speed matters, which is why OWASP's password storage guidance
//! is about user passwords while machine-made API keys and tokens are commonly stored
//! with one keyed or salted SHA-256. argon2 cost this relay 20 ms of CPU and 12 MiB of
//! memory per verification (per blocking thread), on the path of every login and of
//! every registration storm. New hashes are therefore HMAC-SHA-256 keyed with a fresh
//! 16-byte salt per secret (`$hmac-sha256$v=1$<salt>$<mac>`, a PHC string, so the store
//! schema is unchanged), compared in constant time. argon2id hashes already stored
//! still verify (recomputed with the parameters written in them, into argon2 working
//! memory kept per thread), and [`SecretHasher::needs_rehash`] tells the caller to
//! replace one after its next successful use (`verify_client` does).

use std::cell::RefCell;
use std::fmt;
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::{CryptoRng, RngCore};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::ids::ClientId;
use crate::tenancy::SecretHash;

/// A client secret in clear: 32 random bytes (256 bits), base64url without padding.
///
/// Its `Debug` output is redacted so that it cannot end up in a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret(String);

impl ClientSecret {
    /// Wraps a secret presented by a client (not validated: any text may be a guess).
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret's text, to be shown once to the operator or checked against a hash.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret(<redacted>)")
    }
}

/// A fresh client secret: 32 bytes from a CSPRNG (>= 128 bits), base64url without padding.
pub fn generate_client_secret(rng: &mut (impl RngCore + CryptoRng)) -> ClientSecret {
    let mut bytes = [0u8; 32];
    rng.fill_bytes(&mut bytes);
    ClientSecret(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// A fresh client id: 16 random bytes (128 bits), base64url without padding (22 characters).
pub fn generate_client_id(rng: &mut (impl RngCore + CryptoRng)) -> ClientId {
    let mut bytes = [0u8; 16];
    rng.fill_bytes(&mut bytes);
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    // base64url's alphabet ([A-Za-z0-9_-]) is inside ClientId's, and 22 <= 64 characters.
    ClientId::new(text)
        .unwrap_or_else(|_| unreachable!("base64url of 16 bytes is a valid ClientId"))
}

/// Argon2id cost parameters for client secrets.
///
/// [`HashCost::PRODUCTION`] is m = 12 MiB, t = 3, p = 1: one of OWASP's recommended
/// argon2id settings (equivalent to m = 19 MiB, t = 2), measured at about 20 ms per hash
/// on this project's 2-core machine (release build). [`HashCost::TEST_ONLY`] is the
/// cheapest setting argon2 allows, for unit and property tests in debug builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashCost {
    /// Memory in KiB (argon2 `m`).
    pub memory_kib: u32,
    /// Passes over memory (argon2 `t`).
    pub iterations: u32,
    /// Lanes (argon2 `p`).
    pub parallelism: u32,
}

impl HashCost {
    /// The production cost: m = 12288 KiB, t = 3, p = 1 (about 20 ms per hash here).
    pub const PRODUCTION: HashCost = HashCost {
        memory_kib: 12 * 1024,
        iterations: 3,
        parallelism: 1,
    };

    /// Minimal cost (m = 8 KiB, t = 1): only for tests, never for real secrets.
    pub const TEST_ONLY: HashCost = HashCost {
        memory_kib: 8,
        iterations: 1,
        parallelism: 1,
    };
}

/// The PHC identifier of the current hash.
const HMAC_SHA256: &str = "hmac-sha256";

/// Hashes client secrets (HMAC-SHA-256 with a per-secret salt) and verifies them (and
/// the argon2id hashes stored before); keeps the dummy hash that makes an unknown client
/// cost as much time as a wrong secret.
#[derive(Debug)]
pub struct SecretHasher {
    argon2: Argon2<'static>,
    /// Hash argon2id (the `cost`) instead of HMAC-SHA-256: only to make legacy hashes in
    /// tests of the migration.
    legacy: bool,
    dummy: OnceLock<SecretHash>,
}

impl SecretHasher {
    /// A hasher for `cost`. Panics only if `cost` is outside argon2's limits, which is a
    /// programming error (the constants above are within them).
    pub fn new(cost: HashCost) -> Self {
        let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
            .unwrap_or_else(|e| panic!("argon2 cost {cost:?} is invalid: {e}"));
        Self {
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            legacy: false,
            dummy: OnceLock::new(),
        }
    }

    /// A hasher that makes argon2id hashes with `cost`, as the relay did before issue 12:
    /// the stored hashes that verification and migration must still accept.
    pub fn legacy_argon2(cost: HashCost) -> Self {
        Self {
            legacy: true,
            ..Self::new(cost)
        }
    }

    /// Whether `hash` should be replaced by a fresh one from [`Self::hash_secret`] once
    /// its secret has verified (an argon2id hash from before issue 12).
    pub fn needs_rehash(&self, hash: &SecretHash) -> bool {
        !self.legacy && !hash.as_phc().starts_with("$hmac-sha256$")
    }

    /// A hasher with [`HashCost::PRODUCTION`].
    pub fn production() -> Self {
        Self::new(HashCost::PRODUCTION)
    }

    /// Hashes `secret` with a fresh 16-byte salt from `rng`.
    pub fn hash_secret(
        &self,
        secret: &ClientSecret,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> SecretHash {
        let mut salt = [0u8; 16];
        rng.fill_bytes(&mut salt);
        self.hash_with_salt(secret.expose().as_bytes(), &salt)
    }

    fn hash_with_salt(&self, secret: &[u8], salt: &[u8; 16]) -> SecretHash {
        if !self.legacy {
            let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
            let mac = hmac_sha256(salt, secret);
            return SecretHash::from_trusted_phc(format!(
                "${HMAC_SHA256}$v=1${}${}",
                b64.encode(salt),
                b64.encode(mac)
            ));
        }
        // 16 bytes are within the PHC salt limits, and the parameters were checked in `new`.
        let salt = SaltString::encode_b64(salt)
            .unwrap_or_else(|e| unreachable!("a 16-byte salt is valid: {e}"));
        let hash = self
            .argon2
            .hash_password(secret, &salt)
            .unwrap_or_else(|e| unreachable!("argon2 with checked parameters cannot fail: {e}"));
        SecretHash::from_trusted_phc(hash.to_string())
    }

    /// Whether `candidate` is the secret of `hash` (argon2 verification, constant-time
    /// comparison of the outputs). A hash that does not parse never verifies.
    pub fn verify_secret(&self, hash: &SecretHash, candidate: &[u8]) -> bool {
        match PasswordHash::new(hash.as_phc()) {
            Ok(parsed) if parsed.algorithm.as_str() == HMAC_SHA256 => {
                verify_hmac(&parsed, candidate).unwrap_or(false)
            }
            Ok(parsed) => verify_in_thread_memory(&parsed, candidate).unwrap_or(false),
            Err(_) => false,
        }
    }

    /// Takes this thread's argon2 working memory for this hasher's cost now (what the
    /// thread's first verification would otherwise do), so that a server's resident
    /// memory is at its working size from the start.
    ///
    /// Since issue 12 new hashes are HMAC-SHA-256 and argon2 verifies only hashes stored
    /// before, each once (it is then migrated): nothing is reserved up front (12 MiB per
    /// shard for nothing); a legacy verification grows the memory when it needs it.
    pub fn reserve_thread_memory(&self) {
        if self.legacy {
            with_thread_memory(self.argon2.params().block_count(), |_| ());
        }
    }

    /// [`SecretHasher::verify_secret`] through the `password-hash` crate's own verifier
    /// (argon2 allocates its memory): the reference the thread-memory path is tested
    /// against.
    #[cfg(test)]
    fn verify_secret_reference(&self, hash: &SecretHash, candidate: &[u8]) -> bool {
        use argon2::password_hash::PasswordVerifier;
        match PasswordHash::new(hash.as_phc()) {
            Ok(parsed) => self.argon2.verify_password(candidate, &parsed).is_ok(),
            Err(_) => false,
        }
    }

    /// A fixed hash with this hasher's cost, built on first use: verifying a candidate
    /// against it costs what a real verification costs, and it never verifies a secret a
    /// client could know (its input is a constant no generated secret can equal, since
    /// generated secrets are 43 base64url characters).
    pub fn dummy_hash(&self) -> &SecretHash {
        self.dummy.get_or_init(|| {
            self.hash_with_salt(b"posrelay dummy secret: unknown client", &[0x5a; 16])
        })
    }

    /// Whether the dummy hash has been built (that is, used) yet.
    #[cfg(test)]
    pub(crate) fn dummy_built(&self) -> bool {
        self.dummy.get().is_some()
    }
}

thread_local! {
    /// argon2 working memory of this thread's verifications, grown to the largest cost
    /// seen (12 MiB for [`HashCost::PRODUCTION`]) and kept.
    static ARGON2_MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on the first `blocks` blocks of this thread's argon2 working memory,
/// growing it first if a larger cost needs more.
fn with_thread_memory<R>(blocks: usize, f: impl FnOnce(&mut [Block]) -> R) -> R {
    ARGON2_MEMORY.with(|memory| {
        let mut memory = memory.borrow_mut();
        if memory.len() < blocks {
            memory.resize(blocks, Block::default());
        }
        f(&mut memory[..blocks])
    })
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Verifies an `$hmac-sha256$v=1$<salt>$<mac>` hash: HMAC-SHA-256 keyed with the salt,
/// compared in constant time. `None`: the hash is malformed.
fn verify_hmac(parsed: &PasswordHash<'_>, candidate: &[u8]) -> Option<bool> {
    if parsed.version != Some(1) {
        return None;
    }
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    let salt = b64.decode(parsed.salt?.as_str()).ok()?;
    let expected = parsed.hash?;
    if expected.len() != 32 || salt.len() < 16 {
        return None;
    }
    let computed = hmac_sha256(&salt, candidate);
    Some(computed.ct_eq(expected.as_bytes()).into())
}

/// What `PasswordVerifier::verify_password` does (the same algorithm, version,
/// parameters and output length as the PHC string, then a constant-time comparison of
/// the outputs), with the working memory from [`ARGON2_MEMORY`]. `None`: the stored
/// hash names something argon2 refuses.
fn verify_in_thread_memory(parsed: &PasswordHash<'_>, candidate: &[u8]) -> Option<bool> {
    let (salt, expected) = (parsed.salt?, parsed.hash?);
    let algorithm = Algorithm::try_from(parsed.algorithm).ok()?;
    let version = parsed
        .version
        .map(Version::try_from)
        .transpose()
        .ok()?
        .unwrap_or_default();
    let params = Params::try_from(parsed).ok()?;
    let blocks = params.block_count();
    let argon2 = Argon2::new(algorithm, version, params);
    let mut salt_buf = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_buf).ok()?;
    let computed = with_thread_memory(blocks, |memory| {
        argon2::password_hash::Output::init_with(expected.len(), |out| {
            argon2
                .hash_password_into_with_memory(candidate, salt, out, memory)
                .map_err(|_| argon2::password_hash::Error::Password)
        })
    });
    // `Output`'s equality is constant-time.
    Some(computed.ok()? == expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn secrets_are_256_bits_of_base64url() {
        let mut rng = StdRng::seed_from_u64(1);
        let a = generate_client_secret(&mut rng);
        let b = generate_client_secret(&mut rng);
        assert_eq!(a.expose().len(), 43);
        assert_ne!(a, b);
        assert!(a
            .expose()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(format!("{a:?}"), "ClientSecret(<redacted>)");
    }

    #[test]
    fn client_ids_are_valid_and_distinct() {
        let mut rng = StdRng::seed_from_u64(2);
        let a = generate_client_id(&mut rng);
        let b = generate_client_id(&mut rng);
        assert_eq!(a.as_str().len(), 22);
        assert_ne!(a, b);
    }

    #[test]
    fn hash_verifies_the_secret_and_nothing_else() {
        let hasher = SecretHasher::legacy_argon2(HashCost::TEST_ONLY);
        let mut rng = StdRng::seed_from_u64(3);
        let secret = generate_client_secret(&mut rng);
        let hash = hasher.hash_secret(&secret, &mut rng);
        assert!(hash.as_phc().starts_with("$argon2id$v=19$m=8,t=1,p=1$"));
        assert!(hasher.verify_secret(&hash, secret.expose().as_bytes()));
        assert!(!hasher.verify_secret(&hash, b"wrong"));
        assert!(!hasher.verify_secret(&hash, b""));
        // Same secret, fresh salt: a different hash that verifies too.
        let again = hasher.hash_secret(&secret, &mut rng);
        assert_ne!(hash, again);
        assert!(hasher.verify_secret(&again, secret.expose().as_bytes()));
    }

    #[test]
    fn thread_memory_verification_agrees_with_the_reference_verifier() {
        // Several costs (the memory is grown and reused), right and wrong secrets,
        // hashes made elsewhere with other parameters, and malformed ones.
        let mut rng = StdRng::seed_from_u64(11);
        for cost in [
            HashCost::TEST_ONLY,
            HashCost {
                memory_kib: 64,
                iterations: 2,
                parallelism: 1,
            },
            HashCost {
                memory_kib: 32,
                iterations: 1,
                parallelism: 2,
            },
        ] {
            let hasher = SecretHasher::legacy_argon2(cost);
            for _ in 0..8 {
                let secret = generate_client_secret(&mut rng);
                let hash = hasher.hash_secret(&secret, &mut rng);
                let right = secret.expose().as_bytes();
                let mut wrong = right.to_vec();
                let flip = (rng.next_u32() as usize) % wrong.len();
                wrong[flip] ^= 1;
                for candidate in [right, &wrong[..], b"", b"x"] {
                    assert_eq!(
                        hasher.verify_secret(&hash, candidate),
                        hasher.verify_secret_reference(&hash, candidate),
                        "{cost:?}"
                    );
                }
                assert!(hasher.verify_secret(&hash, right));
                assert!(!hasher.verify_secret(&hash, &wrong));
            }
        }
        let hasher = SecretHasher::legacy_argon2(HashCost::TEST_ONLY);
        for phc in [
            "$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAA",
            "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHRzYWx0",
            "$argon2id$v=16$m=8,t=1,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAA",
            "$argon2id$v=19$m=1,t=1,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAA",
            "$scrypt$ln=4,r=8,p=1$c2FsdA$AAAA",
        ] {
            let hash = SecretHash::from_trusted_phc(phc.to_string());
            assert_eq!(
                hasher.verify_secret(&hash, b"secret"),
                hasher.verify_secret_reference(&hash, b"secret"),
                "{phc}"
            );
        }
    }

    #[test]
    fn production_cost_is_written_in_the_hash() {
        let hasher = SecretHasher::legacy_argon2(HashCost::PRODUCTION);
        let hash = hasher.dummy_hash();
        assert!(hash.as_phc().starts_with("$argon2id$v=19$m=12288,t=3,p=1$"));
    }

    #[test]
    fn stored_hash_must_parse() {
        assert!(SecretHash::from_phc("not a phc string").is_err());
        let hasher = SecretHasher::new(HashCost::TEST_ONLY);
        let dummy = hasher.dummy_hash().clone();
        assert_eq!(SecretHash::from_phc(dummy.as_phc()).unwrap(), dummy);
        assert!(!hasher.verify_secret(&dummy, b"anything"));
    }

    #[test]
    fn new_hashes_are_salted_hmac_sha256_and_argon2_hashes_still_verify() {
        let mut rng = StdRng::seed_from_u64(21);
        let hasher = SecretHasher::production();
        let secret = generate_client_secret(&mut rng);
        let hash = hasher.hash_secret(&secret, &mut rng);
        assert!(
            hash.as_phc().starts_with("$hmac-sha256$v=1$"),
            "{}",
            hash.as_phc()
        );
        assert!(
            SecretHash::from_phc(hash.as_phc()).is_ok(),
            "a valid PHC string"
        );
        assert!(hasher.verify_secret(&hash, secret.expose().as_bytes()));
        let mut wrong = secret.expose().as_bytes().to_vec();
        wrong[0] ^= 1;
        assert!(!hasher.verify_secret(&hash, &wrong));
        assert!(!hasher.verify_secret(&hash, b""));
        // A fresh salt per secret: the same secret hashes differently.
        let again = hasher.hash_secret(&secret, &mut rng);
        assert_ne!(hash, again);
        assert!(hasher.verify_secret(&again, secret.expose().as_bytes()));
        assert!(!hasher.needs_rehash(&hash));
        // A hash stored before (argon2id) verifies with the same hasher and asks for a rehash.
        let old = SecretHasher::legacy_argon2(HashCost::TEST_ONLY).hash_secret(&secret, &mut rng);
        assert!(hasher.verify_secret(&old, secret.expose().as_bytes()));
        assert!(!hasher.verify_secret(&old, &wrong));
        assert!(hasher.needs_rehash(&old));
        // Malformed HMAC hashes never verify.
        for phc in [
            "$hmac-sha256$v=2$c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "$hmac-sha256$v=1$c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "$hmac-sha256$v=1$c2FsdHNhbHRzYWx0c2FsdA$AAAA",
            "$hmac-sha256$v=1$c2FsdHNhbHRzYWx0c2FsdA",
        ] {
            let h = SecretHash::from_trusted_phc(phc.to_string());
            assert!(!hasher.verify_secret(&h, b"secret"), "{phc}");
        }
        // The dummy (unknown clients) costs what a current verification costs.
        assert!(hasher.dummy_hash().as_phc().starts_with("$hmac-sha256$"));
    }
}
