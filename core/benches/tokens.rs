//! Token and provisioning costs: issuing and verifying access tokens, hashing a client
//! secret at production cost, and one durable admin write (redb, Immediate durability).
//!
//! `cargo bench -p posrelay-core --no-default-features --bench tokens`

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use posrelay_core::admin::{AdminApi, AdminToken, NoPresence};
use posrelay_core::auth::{
    generate_client_secret, HashCost, SecretHasher, SigningKey, TokenIssuer, DEFAULT_ACCESS_TTL,
};
use posrelay_core::ids::{ClientId, DomainName, MerchantName, StoreName};
use posrelay_core::store::{ClientRecord, MemStore, RedbStore, Store, StoreRecord};
use posrelay_core::tenancy::Scope;
use rand::rngs::StdRng;
use rand::SeedableRng;

const NOW: u64 = 1_700_000_000;

fn client_world(store: &dyn Store) -> ClientRecord {
    let domain = DomainName::new("acme").unwrap();
    store.create_domain(&domain).unwrap();
    store
        .create_store(&StoreRecord {
            domain: domain.clone(),
            store: StoreName::new("s1").unwrap(),
            merchant: MerchantName::new("m1").unwrap(),
        })
        .unwrap();
    let record = ClientRecord {
        domain,
        client_id: ClientId::new("pos1").unwrap(),
        scope: Scope::Store(StoreName::new("s1").unwrap()),
        secret_hash: SecretHasher::new(HashCost::TEST_ONLY).dummy_hash().clone(),
        previous_secret: None,
    };
    store.create_client(&record).unwrap();
    record
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("posrelay-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn tokens(c: &mut Criterion) {
    let issuer = TokenIssuer::new(&SigningKey::from_bytes([7; 32]));
    let mut rng = StdRng::seed_from_u64(1);
    let mem = MemStore::new();
    let client = client_world(&mem);

    c.bench_function("issue_access", |b| {
        b.iter(|| {
            issuer
                .issue_access(&client, NOW, DEFAULT_ACCESS_TTL, &mut rng)
                .unwrap()
        })
    });

    let token = issuer
        .issue_access(&client, NOW, DEFAULT_ACCESS_TTL, &mut rng)
        .unwrap()
        .token;
    c.bench_function("verify_access/mem_store", |b| {
        b.iter(|| issuer.verify_access(&mem, &token, NOW).unwrap())
    });

    let dir = temp_dir("verify");
    let redb = RedbStore::open(&dir).unwrap();
    client_world(&redb);
    c.bench_function("verify_access/redb_store", |b| {
        b.iter(|| issuer.verify_access(&redb, &token, NOW).unwrap())
    });
    drop(redb);
    let _ = std::fs::remove_dir_all(&dir);
}

fn secrets(c: &mut Criterion) {
    let hasher = SecretHasher::production();
    let mut rng = StdRng::seed_from_u64(2);
    let secret = generate_client_secret(&mut rng);
    let hash = hasher.hash_secret(&secret, &mut rng);
    let mut group = c.benchmark_group("secret");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    group.bench_function("hash_secret/production", |b| {
        b.iter(|| hasher.hash_secret(&secret, &mut rng))
    });
    group.bench_function("verify_secret/production", |b| {
        b.iter(|| assert!(hasher.verify_secret(&hash, secret.expose().as_bytes())))
    });
    group.finish();
}

fn admin_writes(c: &mut Criterion) {
    let dir = temp_dir("admin");
    let store = RedbStore::open(&dir).unwrap();
    let api = AdminApi::new(
        &store,
        AdminToken::new("admin").unwrap(),
        SecretHasher::new(HashCost::TEST_ONLY),
    );
    let mut rng = StdRng::seed_from_u64(3);
    let auth = Some("Bearer admin");
    let r = api.handle(
        "POST",
        "/admin/v1/domains",
        auth,
        br#"{"domain":"acme"}"#,
        &NoPresence,
        &mut rng,
        NOW,
    );
    assert_eq!(r.status, 201);
    let body = br#"{"store":"s1","merchant":"m1"}"#;
    let r = api.handle(
        "POST",
        "/admin/v1/domains/acme/stores",
        auth,
        body,
        &NoPresence,
        &mut rng,
        NOW,
    );
    assert_eq!(r.status, 201);

    let mut group = c.benchmark_group("admin_write_redb_immediate");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(5));
    let mut serial = 0u64;
    group.bench_function("POST devices", |b| {
        b.iter(|| {
            serial += 1;
            let body =
                format!(r#"{{"tsn":"{serial}","make":"ingenico","model":"axium","store":"s1"}}"#);
            let r = api.handle(
                "POST",
                "/admin/v1/domains/acme/devices",
                auth,
                body.as_bytes(),
                &NoPresence,
                &mut rng,
                NOW,
            );
            assert_eq!(r.status, 201);
        })
    });
    let mut flip = false;
    group.bench_function("PATCH device enabled", |b| {
        b.iter(|| {
            flip = !flip;
            let body: &[u8] = if flip {
                br#"{"enabled":false}"#
            } else {
                br#"{"enabled":true}"#
            };
            let r = api.handle(
                "PATCH",
                "/admin/v1/domains/acme/devices/1",
                auth,
                body,
                &NoPresence,
                &mut rng,
                NOW,
            );
            assert_eq!(r.status, 200);
        })
    });
    group.finish();
    drop(api);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, tokens, secrets, admin_writes);
criterion_main!(benches);
