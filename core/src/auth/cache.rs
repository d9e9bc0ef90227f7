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
//!
//! Single flight ([`CredentialCache::verify_once`]): right after a restart the cache is
//! empty, and thousands of terminals present the same client's credentials within the
//! same few milliseconds. Without coordination each of them would pay a verification
//! before the first one's success is remembered (issue 12 measured 1.9 ms of CPU per
//! device). Concurrent verifications of one (client id, secret) now share the first
//! one's result: one verification, however many wait for it. Only a success is shared;
//! when the shared verification fails, each waiting attempt runs its own, so that a
//! wrong secret costs a full verification per attempt and a failure is never taken for
//! a success.

use super::secrets::ClientSecret;
use super::AuthError;
use crate::ids::ClientId;
use crate::tenancy::ClientRecord;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
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

/// One verification in progress, and the attempts waiting for its outcome.
#[derive(Default)]
struct Flight {
    /// `None` while running; then `Some(Some(record))` for a success, `Some(None)` for a
    /// failure (never shared).
    outcome: Mutex<Option<Option<ClientRecord>>>,
    done: Condvar,
}

/// Verifications in progress, by client id and the keyed MAC of the secret presented.
type Flights = HashMap<(ClientId, [u8; 32]), Arc<Flight>>;

/// The cache (shared by the shards; touched per login, never per frame).
pub struct CredentialCache {
    key: [u8; 32],
    ttl: Duration,
    entries: Mutex<HashMap<ClientId, Entry>>,
    flights: Mutex<Flights>,
}

/// Ends a flight when the leader's verification ends, whichever way (a panic included),
/// so that nobody waits for it forever.
struct Landing<'a> {
    flights: &'a Mutex<Flights>,
    key: Option<(ClientId, [u8; 32])>,
    flight: Arc<Flight>,
    outcome: Option<ClientRecord>,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            flights.remove(&key);
        }
        let mut outcome = self
            .flight
            .outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *outcome = Some(self.outcome.take());
        self.flight.done.notify_all();
    }
}

impl CredentialCache {
    /// A cache keyed with `key` (random per process), remembering for `ttl`.
    pub fn new(key: [u8; 32], ttl: Duration) -> Self {
        CredentialCache {
            key,
            ttl,
            entries: Mutex::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
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
        self.check_mac(client_id, &self.mac(secret), now)
    }

    fn check_mac(
        &self,
        client_id: &ClientId,
        mac: &[u8; 32],
        now: Instant,
    ) -> Option<ClientRecord> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get(client_id)?;
        let same: bool = entry.mac.ct_eq(mac).into();
        (same && now < entry.expires).then(|| entry.record.clone())
    }

    /// The client whose id and secret these are: from the cache, or from the
    /// verification of the same (client id, secret) that another attempt is running
    /// right now, or from `verify` (a full verification, run here: call this on a thread
    /// that may block). A success is remembered; a failure is never shared nor cached:
    /// an attempt whose shared verification failed runs `verify` itself.
    pub fn verify_once(
        &self,
        client_id: &ClientId,
        secret: &ClientSecret,
        now: Instant,
        verify: impl FnOnce() -> Result<ClientRecord, AuthError>,
    ) -> Result<ClientRecord, AuthError> {
        let mac = self.mac(secret);
        if let Some(record) = self.check_mac(client_id, &mac, now) {
            return Ok(record);
        }
        let key = (client_id.clone(), mac);
        let (flight, leader) = {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            match flights.get(&key) {
                Some(f) => (f.clone(), false),
                None => {
                    let f = Arc::new(Flight::default());
                    flights.insert(key.clone(), f.clone());
                    (f, true)
                }
            }
        };
        if !leader {
            let mut outcome = flight.outcome.lock().unwrap_or_else(|e| e.into_inner());
            while outcome.is_none() {
                outcome = flight.done.wait(outcome).unwrap_or_else(|e| e.into_inner());
            }
            if let Some(Some(record)) = &*outcome {
                return Ok(record.clone());
            }
            drop(outcome);
            // The shared verification failed: this attempt pays its own.
            let result = verify();
            if let Ok(record) = &result {
                self.remember_mac(record, mac, now);
            }
            return result;
        }
        let mut landing = Landing {
            flights: &self.flights,
            key: Some(key),
            flight,
            outcome: None,
        };
        let result = verify();
        if let Ok(record) = &result {
            self.remember_mac(record, mac, now);
            landing.outcome = Some(record.clone());
        }
        drop(landing);
        result
    }

    /// Remembers a secret that has just verified.
    pub fn remember(&self, record: &ClientRecord, secret: &ClientSecret, now: Instant) {
        self.remember_mac(record, self.mac(secret), now)
    }

    fn remember_mac(&self, record: &ClientRecord, mac: [u8; 32], now: Instant) {
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

    /// Runs `attempts` concurrent `verify_once` calls with `secret`, each verification
    /// taking until every attempt has started (so that they overlap), and counts the
    /// verifications run.
    fn concurrent(
        cache: &Arc<CredentialCache>,
        secret: &'static str,
        attempts: usize,
        succeed: bool,
    ) -> (usize, Vec<Result<ClientRecord, AuthError>>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let started = Arc::new(AtomicUsize::new(0));
        let runs = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let handles: Vec<_> = (0..attempts)
            .map(|_| {
                let (cache, started, runs) = (cache.clone(), started.clone(), runs.clone());
                std::thread::spawn(move || {
                    started.fetch_add(1, Ordering::SeqCst);
                    let rec = record();
                    cache.verify_once(&rec.client_id, &ClientSecret::new(secret), t0, || {
                        runs.fetch_add(1, Ordering::SeqCst);
                        // Overlap: the first verification lasts until all have started.
                        while started.load(Ordering::SeqCst) < attempts {
                            std::thread::yield_now();
                        }
                        if succeed {
                            Ok(record())
                        } else {
                            Err(AuthError::InvalidClient)
                        }
                    })
                })
            })
            .collect();
        let results = handles.into_iter().map(|h| h.join().unwrap()).collect();
        (runs.load(Ordering::SeqCst), results)
    }

    #[test]
    fn concurrent_attempts_with_the_right_secret_share_one_verification() {
        let cache = Arc::new(CredentialCache::new([4; 32], Duration::from_secs(60)));
        let (runs, results) = concurrent(&cache, "right", 32, true);
        assert_eq!(runs, 1, "one verification for 32 concurrent attempts");
        assert!(results.iter().all(|r| r.as_ref() == Ok(&record())));
        // And it is remembered for the next ones.
        let rec = record();
        assert!(cache
            .check(&rec.client_id, &ClientSecret::new("right"), Instant::now())
            .is_some());
    }

    #[test]
    fn a_wrong_secret_costs_a_verification_per_attempt_and_is_never_cached() {
        let cache = Arc::new(CredentialCache::new([5; 32], Duration::from_secs(60)));
        let (runs, results) = concurrent(&cache, "wrong", 16, false);
        assert_eq!(runs, 16, "every failing attempt paid its own verification");
        assert!(results.iter().all(|r| r == &Err(AuthError::InvalidClient)));
        let rec = record();
        assert!(cache
            .check(&rec.client_id, &ClientSecret::new("wrong"), Instant::now())
            .is_none());
        // A failure is not shared with the right secret either.
        let ok = cache.verify_once(
            &rec.client_id,
            &ClientSecret::new("right"),
            Instant::now(),
            || Ok(record()),
        );
        assert_eq!(ok, Ok(record()));
    }

    #[test]
    fn a_verification_that_panics_releases_its_waiters() {
        let cache = Arc::new(CredentialCache::new([6; 32], Duration::from_secs(60)));
        let rec = record();
        let leader = {
            let cache = cache.clone();
            std::thread::spawn(move || {
                let rec = record();
                cache.verify_once(
                    &rec.client_id,
                    &ClientSecret::new("s"),
                    Instant::now(),
                    || panic!("store unreachable"),
                )
            })
        };
        assert!(leader.join().is_err());
        // The flight is gone: the next attempt verifies (and nobody hangs).
        let again = cache.verify_once(
            &rec.client_id,
            &ClientSecret::new("s"),
            Instant::now(),
            || Ok(record()),
        );
        assert_eq!(again, Ok(record()));
        assert!(cache.flights.lock().unwrap().is_empty());
    }
}
