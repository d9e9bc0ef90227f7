//! Client-credential checks: the one place that decides whether an id and a secret are good.

use rand::{CryptoRng, RngCore};

use super::secrets::{ClientSecret, SecretHasher};
use super::AuthError;
use crate::ids::{ClientId, DomainName};
use crate::store::Store;
use crate::tenancy::ClientRecord;
use crate::tenancy::SecretHash;

/// The client whose id and secret these are, in this domain.
///
/// An unknown (or malformed) domain, an unknown (or malformed) client id and a wrong
/// secret all answer [`AuthError::InvalidClient`] (PROTOCOL.md §1: "so a domain cannot be
/// probed") and cost the same time: when there is no stored hash to check against, the
/// candidate is verified against the hasher's dummy hash of the same cost.
///
/// After a rotation the previous secret is good too until its deadline (`now`, unix
/// seconds); the current one is checked first.
///
/// A secret that verified against a hash from before issue 12 (argon2id) has its hash
/// replaced by a current one (a fresh salt from `rng`) in the store, so that every
/// client moves to the current hash at its next successful login. Until then, a wrong
/// secret for such a client costs an argon2 verification where one for an unknown client
/// costs an HMAC: the client's existence shows in the time, for a 128-bit random client
/// id that a prober would have to know already. (Only the current hash migrates: a
/// rotated-out one is good for its grace period and then gone.) On a cluster node an
/// unknown client id also costs a round trip to NATS ([`Store::read_latest`]), which
/// shows in the time the same way.
pub fn verify_client<S: Store + ?Sized>(
    store: &S,
    hasher: &SecretHasher,
    domain: &str,
    client_id: &str,
    secret: &ClientSecret,
    now: u64,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<ClientRecord, AuthError> {
    let record = match (DomainName::new(domain), ClientId::new(client_id)) {
        (Ok(domain), Ok(client_id)) => match store.get_client(&domain, &client_id)? {
            Some(record) => Some(record),
            // §12: a client created through another node a moment ago may not have
            // reached this one's replica yet: catch up before calling it unknown (a
            // cluster is then unreachable only if the answer was going to be 401 anyway).
            None => match store.read_latest() {
                Ok(()) => store.get_client(&domain, &client_id)?,
                Err(_) => None,
            },
        },
        _ => None,
    };
    let hash: &SecretHash = match &record {
        Some(record) => &record.secret_hash,
        None => hasher.dummy_hash(),
    };
    let current_ok = hasher.verify_secret(hash, secret.expose().as_bytes());
    let previous_ok = !current_ok
        && record
            .as_ref()
            .and_then(|r| r.previous_secret.as_ref())
            .filter(|p| p.valid_at(now))
            .is_some_and(|p| hasher.verify_secret(&p.hash, secret.expose().as_bytes()));
    match record {
        Some(record) if previous_ok => Ok(record),
        Some(mut record) if current_ok => {
            if hasher.needs_rehash(&record.secret_hash) {
                let new = hasher.hash_secret(secret, rng);
                // A failed write only postpones the migration to the next login.
                if let Ok(true) = store.replace_client_secret_hash(
                    &record.domain,
                    &record.client_id,
                    &record.secret_hash,
                    &new,
                ) {
                    record.secret_hash = new;
                }
            }
            Ok(record)
        }
        _ => Err(AuthError::InvalidClient),
    }
}

/// The client with this id in any domain, looked up again after catching up with the
/// store's last write if it is not found at once (a client created through another node
/// of a cluster a moment ago, PROTOCOL.md §12). Off the shards only: it may wait on the
/// network.
pub fn find_client_caught_up<S: Store + ?Sized>(
    store: &S,
    client_id: &ClientId,
) -> Result<Option<ClientRecord>, crate::store::StoreError> {
    match store.find_client(client_id)? {
        Some(record) => Ok(Some(record)),
        None => match store.read_latest() {
            Ok(()) => store.find_client(client_id),
            Err(_) => Ok(None),
        },
    }
}

/// A new client's credentials: the record to store and the secret to show once.
pub fn new_client_credentials(
    hasher: &SecretHasher,
    rng: &mut (impl RngCore + CryptoRng),
) -> (ClientId, ClientSecret, SecretHash) {
    let client_id = super::secrets::generate_client_id(rng);
    let secret = super::secrets::generate_client_secret(rng);
    let hash = hasher.hash_secret(&secret, rng);
    (client_id, secret, hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::HashCost;
    use crate::store::MemStore;
    use crate::tenancy::Scope;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(99)
    }

    /// A client stored with an argon2id hash (as before issue 12) logs in, and from then
    /// on its stored hash is the current kind; wrong secrets migrate nothing.
    #[test]
    fn an_argon2_hash_verifies_and_is_migrated_at_the_next_successful_login() {
        let store = MemStore::new();
        let legacy = SecretHasher::legacy_argon2(HashCost::TEST_ONLY);
        let hasher = SecretHasher::new(HashCost::TEST_ONLY);
        let mut r = rng();
        let acme = DomainName::new("acme").unwrap();
        store.create_domain(&acme).unwrap();
        let (client_id, secret, secret_hash) = new_client_credentials(&legacy, &mut r);
        assert!(secret_hash.as_phc().starts_with("$argon2id$"));
        let record = ClientRecord {
            domain: acme.clone(),
            client_id: client_id.clone(),
            scope: Scope::Domain,
            secret_hash,
            previous_secret: None,
        };
        store.create_client(&record).unwrap();
        let wrong = ClientSecret::new("wrong");
        assert_eq!(
            verify_client(
                &store,
                &hasher,
                "acme",
                client_id.as_str(),
                &wrong,
                0,
                &mut r
            ),
            Err(AuthError::InvalidClient)
        );
        let stored = |s: &MemStore| {
            s.get_client(&acme, &client_id)
                .unwrap()
                .unwrap()
                .secret_hash
        };
        assert!(
            stored(&store).as_phc().starts_with("$argon2id$"),
            "a failure migrates nothing"
        );
        let got = verify_client(
            &store,
            &hasher,
            "acme",
            client_id.as_str(),
            &secret,
            0,
            &mut r,
        )
        .unwrap();
        assert!(got.secret_hash.as_phc().starts_with("$hmac-sha256$"));
        assert_eq!(
            stored(&store),
            got.secret_hash,
            "the store holds the new hash"
        );
        // The same secret still works, and nothing else does.
        assert!(verify_client(
            &store,
            &hasher,
            "acme",
            client_id.as_str(),
            &secret,
            0,
            &mut r
        )
        .is_ok());
        assert_eq!(
            verify_client(
                &store,
                &hasher,
                "acme",
                client_id.as_str(),
                &wrong,
                0,
                &mut r
            ),
            Err(AuthError::InvalidClient)
        );
    }

    fn setup() -> (MemStore, SecretHasher, ClientRecord, ClientSecret) {
        let store = MemStore::new();
        let hasher = SecretHasher::new(HashCost::TEST_ONLY);
        let mut rng = StdRng::seed_from_u64(7);
        store
            .create_domain(&DomainName::new("acme").unwrap())
            .unwrap();
        let (client_id, secret, secret_hash) = new_client_credentials(&hasher, &mut rng);
        let record = ClientRecord {
            domain: DomainName::new("acme").unwrap(),
            client_id,
            scope: Scope::Domain,
            secret_hash,
            previous_secret: None,
        };
        store.create_client(&record).unwrap();
        (store, hasher, record, secret)
    }

    #[test]
    fn a_rotated_out_secret_is_good_until_its_deadline_only() {
        let (store, hasher, record, old) = setup();
        let mut rng = StdRng::seed_from_u64(8);
        let (_, new, new_hash) = new_client_credentials(&hasher, &mut rng);
        store
            .rotate_client_secret(&record.domain, &record.client_id, &new_hash, 100)
            .unwrap();
        let id = record.client_id.as_str();
        for (secret, now, ok) in [
            (&new, 50, true),
            (&old, 99, true),
            (&old, 100, false),
            (&new, 1_000, true),
        ] {
            let got = verify_client(&store, &hasher, "acme", id, secret, now, &mut rng);
            assert_eq!(got.is_ok(), ok, "now {now}");
        }
    }

    #[test]
    fn right_secret_gives_the_client() {
        let (store, hasher, record, secret) = setup();
        let got = verify_client(
            &store,
            &hasher,
            "acme",
            record.client_id.as_str(),
            &secret,
            0,
            &mut rng(),
        );
        assert_eq!(got, Ok(record));
    }

    #[test]
    fn unknown_client_pays_a_full_argon2_verification() {
        let (store, hasher, _record, secret) = setup();
        assert!(!hasher.dummy_built());
        let got = verify_client(&store, &hasher, "acme", "nobody", &secret, 0, &mut rng());
        assert_eq!(got, Err(AuthError::InvalidClient));
        // The only way to build the dummy is to verify against it.
        assert!(hasher.dummy_built());
    }

    #[test]
    fn every_failure_is_the_same_invalid_client() {
        let (store, hasher, record, secret) = setup();
        let id = record.client_id.as_str();
        let wrong = ClientSecret::new("wrong");
        for (domain, client, secret) in [
            ("acme", id, &wrong),
            ("acme", "unknown", &secret),
            ("other", id, &secret),
            ("bad/domain", id, &secret),
            ("acme", "bad id!", &secret),
        ] {
            assert_eq!(
                verify_client(&store, &hasher, domain, client, secret, 0, &mut rng()),
                Err(AuthError::InvalidClient),
                "{domain} {client}"
            );
        }
    }
}
