//! Tenant isolation, as a property: whatever two domains A and B provision, no client
//! of one obtains a token in the other's domain, resolves (claims) a device of the other,
//! or holds a token that names the other's resources.
//!
//! Provisioning goes through the real admin API, tokens through the real token endpoint.

use posrelay_core::admin::{AdminApi, AdminToken, NoPresence, TokenEndpoint, TokenRequest};
use posrelay_core::auth::{
    devices_in_scope, resolve_device, verify_client, ClientSecret, CredentialCache, HashCost,
    LoginAttempts, LoginThrottled, ScopeError, SecretHasher, SigningKey, TokenIssuer, TsnInput,
    DEVICE_TOKEN_TTL,
};
use posrelay_core::ids::{DomainName, Serial, SessionId};
use posrelay_core::store::{MemStore, Store};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

const NOW: u64 = 1_700_000_000;

/// No failed-login limits: this property is about domains, not rates.
struct Unlimited;

impl LoginAttempts for Unlimited {
    fn check(&self, _client_id: Option<&str>) -> Result<(), LoginThrottled> {
        Ok(())
    }
    fn failed(&self, _client_id: Option<&str>) {}
    fn succeeded(&self, _client_id: &str) {}
}
const DOMAINS: [&str; 2] = ["alpha", "beta"];
const AUTH: Option<&str> = Some("Bearer admin");

/// One provisioning call, in domain `DOMAINS[domain]`.
#[derive(Debug, Clone)]
enum Op {
    Store {
        domain: usize,
        store: u8,
    },
    Client {
        domain: usize,
        store: Option<u8>,
    },
    Device {
        domain: usize,
        serial: u8,
        store: u8,
    },
    Disable {
        domain: usize,
        serial: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let domain = 0..2usize;
    prop_oneof![
        (domain.clone(), 0..3u8).prop_map(|(domain, store)| Op::Store { domain, store }),
        (domain.clone(), proptest::option::of(0..3u8))
            .prop_map(|(domain, store)| Op::Client { domain, store }),
        // A small serial pool, so that both domains often hold the same serial.
        (domain.clone(), 0..6u8, 0..3u8).prop_map(|(domain, serial, store)| Op::Device {
            domain,
            serial,
            store
        }),
        (domain, 0..6u8).prop_map(|(domain, serial)| Op::Disable { domain, serial }),
    ]
}

struct Client {
    domain: usize,
    id: String,
    secret: String,
}

fn created_client(body: &[u8]) -> (String, String) {
    #[derive(serde::Deserialize)]
    struct Created {
        client_id: String,
        client_secret: String,
    }
    let mut body = body.to_vec();
    let c: Created = simd_json::serde::from_slice(&mut body).expect("client JSON");
    (c.client_id, c.client_secret)
}

fn token_request(id: &str, secret: &str) -> String {
    format!("grant_type=client_credentials&client_id={id}&client_secret={secret}")
}

/// Provisions `ops` in two domains, then checks every client created; returns how many.
fn check_isolation(ops: &[Op]) -> Result<usize, TestCaseError> {
    let store = MemStore::new();
    let hasher = SecretHasher::new(HashCost::TEST_ONLY);
    let admin = AdminApi::new(
        &store,
        AdminToken::new("admin").unwrap(),
        SecretHasher::new(HashCost::TEST_ONLY),
    );
    let issuer = TokenIssuer::new(&SigningKey::from_bytes([9; 32]));
    let mut rng = StdRng::seed_from_u64(1);

    for name in DOMAINS {
        let body = format!(r#"{{"domain":"{name}"}}"#);
        let r = admin.handle(
            "POST",
            "/admin/v1/domains",
            AUTH,
            body.as_bytes(),
            &NoPresence,
            &mut rng,
            NOW,
        );
        prop_assert_eq!(r.status, 201);
    }
    let mut clients = Vec::new();
    for op in ops {
        match *op {
            Op::Store { domain, store } => {
                let path = format!("/admin/v1/domains/{}/stores", DOMAINS[domain]);
                let body = format!(r#"{{"store":"s{store}","merchant":"m"}}"#);
                admin.handle(
                    "POST",
                    &path,
                    AUTH,
                    body.as_bytes(),
                    &NoPresence,
                    &mut rng,
                    NOW,
                );
            }
            Op::Client { domain, store } => {
                let path = format!("/admin/v1/domains/{}/clients", DOMAINS[domain]);
                let body = match store {
                    Some(s) => format!(r#"{{"store":"s{s}"}}"#),
                    None => "{}".to_owned(),
                };
                let r = admin.handle(
                    "POST",
                    &path,
                    AUTH,
                    body.as_bytes(),
                    &NoPresence,
                    &mut rng,
                    NOW,
                );
                if r.status == 201 {
                    let (id, secret) = created_client(&r.body);
                    clients.push(Client { domain, id, secret });
                }
            }
            Op::Device {
                domain,
                serial,
                store,
            } => {
                let path = format!("/admin/v1/domains/{}/devices", DOMAINS[domain]);
                let body = format!(
                    r#"{{"tsn":"{}","make":"ingenico","model":"axium","store":"s{store}"}}"#,
                    100 + u32::from(serial)
                );
                admin.handle(
                    "POST",
                    &path,
                    AUTH,
                    body.as_bytes(),
                    &NoPresence,
                    &mut rng,
                    NOW,
                );
            }
            Op::Disable { domain, serial } => {
                let path = format!(
                    "/admin/v1/domains/{}/devices/{}",
                    DOMAINS[domain],
                    100 + u32::from(serial)
                );
                admin.handle(
                    "PATCH",
                    &path,
                    AUTH,
                    br#"{"enabled":false}"#,
                    &NoPresence,
                    &mut rng,
                    NOW,
                );
            }
        }
    }

    // A cache of verified secrets, as the relay has: a secret verified in its own domain
    // must not open the other one.
    let cache = CredentialCache::new([5; 32], std::time::Duration::from_secs(60));
    let endpoint = TokenEndpoint {
        store: &store,
        hasher: &hasher,
        issuer: &issuer,
        access_ttl: 3600,
        cache: Some(&cache),
    };
    for client in &clients {
        let own = DOMAINS[client.domain];
        let other = DOMAINS[1 - client.domain];
        let other_domain = DomainName::new(other).unwrap();
        let form = token_request(&client.id, &client.secret);

        // No token in the other domain, and the credentials do not verify there.
        let r = endpoint.handle(
            &TokenRequest {
                domain: other,
                authorization: None,
                content_type: None,
                body: form.as_bytes(),
            },
            &Unlimited,
            NOW,
            std::time::Instant::now(),
            &mut rng,
        );
        prop_assert_eq!(r.status, 401);
        prop_assert!(verify_client(
            &store,
            &hasher,
            other,
            &client.id,
            &ClientSecret::new(client.secret.clone()),
            NOW,
            &mut rng
        )
        .is_err());

        // A token in its own domain names its own domain only.
        let r = endpoint.handle(
            &TokenRequest {
                domain: own,
                authorization: None,
                content_type: None,
                body: form.as_bytes(),
            },
            &Unlimited,
            NOW,
            std::time::Instant::now(),
            &mut rng,
        );
        prop_assert_eq!(r.status, 200);
        #[derive(serde::Deserialize)]
        struct Tok {
            access_token: String,
        }
        let mut body = r.body.clone();
        let tok: Tok = simd_json::serde::from_slice(&mut body).unwrap();
        let claims = issuer
            .verify_access(&store, &tok.access_token, NOW)
            .unwrap();
        prop_assert_eq!(claims.domain.as_str(), own);
        // Now that the secret is cached, the other domain still refuses it.
        let r = endpoint.handle(
            &TokenRequest {
                domain: other,
                authorization: None,
                content_type: None,
                body: form.as_bytes(),
            },
            &Unlimited,
            NOW,
            std::time::Instant::now(),
            &mut rng,
        );
        prop_assert_eq!(r.status, 401);

        // Its scope never lists or resolves a device of the other domain, by bare or
        // qualified tsn — even when the other domain has the same serial.
        for device in devices_in_scope(&store, &claims).unwrap() {
            prop_assert_eq!(device.domain.as_str(), own);
        }
        for device in store.list_devices(&other_domain).unwrap() {
            for tsn in [
                device.serial.to_string(),
                format!("ingenico-axium-{}", device.serial),
            ] {
                match resolve_device(&store, &claims, &TsnInput::parse(&tsn).unwrap()) {
                    Ok(found) => prop_assert_eq!(found.domain.as_str(), own),
                    Err(e) => {
                        let not_found = matches!(e, ScopeError::NotFound { .. });
                        prop_assert!(not_found, "{:?}", e);
                    }
                }
            }
        }

        // A device token of this client verifies for its own session only.
        let key = claims.client();
        let serial = Serial::new("100").unwrap();
        let mine = SessionId::from_random([1; 16]);
        let theirs = SessionId::from_random([2; 16]);
        let device_token = issuer
            .issue_device(&key, &serial, &mine, NOW, DEVICE_TOKEN_TTL, &mut rng)
            .unwrap();
        prop_assert!(issuer
            .verify_device(&store, &device_token.token, &theirs, NOW)
            .is_err());
        // And an access token is never a device token.
        prop_assert!(issuer
            .verify_device(&store, &tok.access_token, &mine, NOW)
            .is_err());
    }
    Ok(clients.len())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn no_client_crosses_tenants(ops in proptest::collection::vec(op(), 1..24)) {
        check_isolation(&ops)?;
    }
}

/// The interesting case spelled out: both domains hold serial 100 in store s0, each has
/// a store client and a domain-wide client.
#[test]
fn same_serial_in_both_domains_stays_apart() {
    let mut ops = Vec::new();
    for domain in 0..2 {
        ops.push(Op::Store { domain, store: 0 });
        ops.push(Op::Device {
            domain,
            serial: 0,
            store: 0,
        });
        ops.push(Op::Device {
            domain,
            serial: domain as u8 + 1,
            store: 0,
        });
        ops.push(Op::Client {
            domain,
            store: Some(0),
        });
        ops.push(Op::Client {
            domain,
            store: None,
        });
    }
    assert_eq!(check_isolation(&ops).unwrap(), 4);
}
