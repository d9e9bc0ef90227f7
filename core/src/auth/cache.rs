//! A cache of recently verified client credentials.
//!
//! A terminal registers with its POS client's credentials (PROTOCOL.md §2), so after a
//! relay restart thousands of terminals present the same few secrets at once. Checking
//! each with argon2 (~20 ms) would take minutes and leave terminals waiting. A secret
//! that verified recently is remembered as HMAC-SHA256(process key, secret) next to the
//! client record, for a short time; a matching presentation skips argon2.
//!
//! Only successes are cached: an unknown client or a wrong secret always pays the full
//! argon2 cost, so they stay indistinguishable (in answer and time). A cache hit is
//! faster, but only for someone who already holds the right secret. Entries expire
//! (`ttl`), the cache is bounded, and a deleted client is forgotten at once.

use super::secrets::ClientSecret;
use crate::ids::ClientId;
use crate::tenancy::ClientRecord;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// How long a verified secret is remembered by default.
pub const DEFAULT_CREDENTIAL_TTL: Duration = Duration::from_secs(300);

/// Most clients remembered at once; beyond, expired entries are swept, then new ones
/// are simply not cached.
const MAX_ENTRIES: usize = 65_536;

struct Entry {
    mac: [u8; 32],
    record: ClientRecord,
    expires: Instant,
}

/// The cache (shared by the shards; touched per login, never per frame).
pub struct CredentialCache {
    key: [u8; 32],
    ttl: Duration,
    entries: Mutex<HashMap<ClientId, Entry>>,
}

impl CredentialCache {
    /// A cache keyed with `key` (random per process), remembering for `ttl`.
    pub fn new(key: [u8; 32], ttl: Duration) -> Self {
        CredentialCache {
            key,
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn mac(&self, secret: &ClientSecret) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(secret.expose().as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The client, if this exact secret verified for it less than `ttl` ago.
    pub fn check(
        &self,
        client_id: &ClientId,
        secret: &ClientSecret,
        now: Instant,
    ) -> Option<ClientRecord> {
        let mac = self.mac(secret);
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get(client_id)?;
        let same: bool = entry.mac.ct_eq(&mac).into();
        (same && now < entry.expires).then(|| entry.record.clone())
    }

    /// Remembers a secret that has just verified.
    pub fn remember(&self, record: &ClientRecord, secret: &ClientSecret, now: Instant) {
        let mac = self.mac(secret);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, e| now < e.expires);
            if entries.len() >= MAX_ENTRIES {
                return;
            }
        }
        entries.insert(
            record.client_id.clone(),
            Entry {
                mac,
                record: record.clone(),
                expires: now + self.ttl,
            },
        );
    }

    /// Forgets a client (deleted: its credentials must stop working at once).
    pub fn forget(&self, client_id: &ClientId) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(client_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::DomainName;
    use crate::tenancy::{Scope, SecretHash};

    fn record() -> ClientRecord {
        ClientRecord {
            domain: DomainName::new("acme").unwrap(),
            client_id: ClientId::new("c1").unwrap(),
            scope: Scope::Domain,
            secret_hash: SecretHash::from_phc(
                "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            )
            .unwrap(),
            previous_secret: None,
        }
    }

    #[test]
    fn remembers_only_the_right_secret_until_it_expires_or_is_forgotten() {
        let cache = CredentialCache::new([3; 32], Duration::from_secs(60));
        let t0 = Instant::now();
        let rec = record();
        let right = ClientSecret::new("right");
        assert!(cache.check(&rec.client_id, &right, t0).is_none());
        cache.remember(&rec, &right, t0);
        assert_eq!(cache.check(&rec.client_id, &right, t0), Some(rec.clone()));
        assert!(cache
            .check(&rec.client_id, &ClientSecret::new("wrong"), t0)
            .is_none());
        assert!(cache
            .check(&rec.client_id, &right, t0 + Duration::from_secs(60))
            .is_none());
        cache.forget(&rec.client_id);
        assert!(cache.check(&rec.client_id, &right, t0).is_none());
    }
}
