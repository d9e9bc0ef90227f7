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
pub fn verify_client<S: Store + ?Sized>(
    store: &S,
    hasher: &SecretHasher,
    domain: &str,
    client_id: &str,
    secret: &ClientSecret,
    now: u64,
) -> Result<ClientRecord, AuthError> {
    let record = match (DomainName::new(domain), ClientId::new(client_id)) {
        (Ok(domain), Ok(client_id)) => store.get_client(&domain, &client_id)?,
        _ => None,
    };
    let hash: &SecretHash = match &record {
        Some(record) => &record.secret_hash,
        None => hasher.dummy_hash(),
    };
    let secret_ok = hasher.verify_secret(hash, secret.expose().as_bytes())
        || record
            .as_ref()
            .and_then(|r| r.previous_secret.as_ref())
            .filter(|p| p.valid_at(now))
            .is_some_and(|p| hasher.verify_secret(&p.hash, secret.expose().as_bytes()));
    match record {
        Some(record) if secret_ok => Ok(record),
        _ => Err(AuthError::InvalidClient),
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
            let got = verify_client(&store, &hasher, "acme", id, secret, now);
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
        );
        assert_eq!(got, Ok(record));
    }

    #[test]
    fn unknown_client_pays_a_full_argon2_verification() {
        let (store, hasher, _record, secret) = setup();
        assert!(!hasher.dummy_built());
        let got = verify_client(&store, &hasher, "acme", "nobody", &secret, 0);
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
                verify_client(&store, &hasher, domain, client, secret, 0),
                Err(AuthError::InvalidClient),
                "{domain} {client}"
            );
        }
    }
}
