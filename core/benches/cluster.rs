//! What the cluster's JetStream operations cost, on three real nats-server processes on
//! loopback (R3): an admin write (publish, quorum acknowledgement, the writer's replica
//! applying it), the time until another node's replica has it, a replica read, a tsn
//! take-over and a fenced append. Prints percentiles; no assertion.
//!
//! `POSRELAY_NATS_SERVER="$(bash .ci/install-nats)" cargo bench -p posrelay-core --features testing --bench cluster`

use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use posrelay_core::cluster::ownership::{append_fenced, ensure_streams, take_over_tsn};
use posrelay_core::cluster::testing::NatsCluster;
use posrelay_core::cluster::{BridgeConfig, JetStreamStore, KvStoreConfig, NatsBridge};
use posrelay_core::ids::{DeviceKey, DeviceModelName, DomainName, MerchantName, Serial, StoreName};
use posrelay_core::ownership::{Incarnation, NodeId, OwnershipRecord};
use posrelay_core::store::{DeviceRecord, Store, StoreRecord};

fn node(urls: Vec<String>) -> (NatsBridge, JetStreamStore) {
    let bridge = NatsBridge::start(BridgeConfig::new(urls, "posrelay bench")).unwrap();
    let store = JetStreamStore::open(&bridge.handle(), &KvStoreConfig::default()).unwrap();
    (bridge, store)
}

fn device(serial: usize) -> DeviceRecord {
    DeviceRecord {
        domain: DomainName::new("acme").unwrap(),
        serial: Serial::new(serial.to_string()).unwrap(),
        make: DeviceModelName::new("ingenico").unwrap(),
        model: DeviceModelName::new("axium").unwrap(),
        store: StoreName::new("s1").unwrap(),
        enabled: true,
        client_cert_sha256: Vec::new(),
    }
}

fn report(what: &str, h: &Histogram<u64>) {
    println!(
        "{what:<48} n={:<5} p50={:>8.1} µs  p90={:>8.1} µs  p99={:>8.1} µs  max={:>8.1} µs",
        h.len(),
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.9) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
        h.max() as f64 / 1e3,
    );
}

fn main() {
    let started = Instant::now();
    let cluster = NatsCluster::start(3);
    println!(
        "three servers with JetStream ready in {:?}",
        started.elapsed()
    );
    let (bridge_a, a) = node(vec![cluster.client_url(0)]);
    let (_bridge_b, b) = node(vec![cluster.client_url(2)]);
    let acme = DomainName::new("acme").unwrap();
    a.create_domain(&acme).unwrap();
    a.create_store(&StoreRecord {
        domain: acme.clone(),
        store: StoreName::new("s1").unwrap(),
        merchant: MerchantName::new("m1").unwrap(),
    })
    .unwrap();

    let mut write = Histogram::<u64>::new(3).unwrap();
    let mut seen = Histogram::<u64>::new(3).unwrap();
    for i in 0..300 {
        let record = device(i);
        let t = Instant::now();
        a.create_device(&record).unwrap();
        let written = t.elapsed();
        write.record(written.as_nanos() as u64).unwrap();
        // Another node: spin until its replica has it (measured from the write's start).
        while b.get_device(&acme, &record.serial).unwrap().is_none() {
            std::hint::spin_loop();
        }
        seen.record(t.elapsed().as_nanos() as u64).unwrap();
    }
    report("admin write (R3 ack + own replica)", &write);
    report("write on A until B's replica has it", &seen);

    let serial = Serial::new("150").unwrap();
    let reads = 1_000_000;
    let t = Instant::now();
    for _ in 0..reads {
        std::hint::black_box(b.get_device(&acme, &serial).unwrap());
    }
    println!(
        "{:<48} {:.0} ns per read",
        "replica read (get_device)",
        t.elapsed().as_nanos() as f64 / reads as f64
    );

    let handle = bridge_a.handle();
    let streams = handle
        .call(|nats| async move { ensure_streams(&nats, 3).await })
        .wait()
        .unwrap()
        .unwrap();
    let records = [
        OwnershipRecord {
            node: NodeId::new("a").unwrap(),
            incarnation: Incarnation::from_random([1; 16]),
        },
        OwnershipRecord {
            node: NodeId::new("b").unwrap(),
            incarnation: Incarnation::from_random([2; 16]),
        },
    ];
    let mut take = Histogram::<u64>::new(3).unwrap();
    let mut fenced = Histogram::<u64>::new(3).unwrap();
    for i in 0..300 {
        let key = DeviceKey {
            domain: acme.clone(),
            serial: Serial::new((i % 30).to_string()).unwrap(),
        };
        let me = records[i % 2].clone();
        let (s, k) = (streams.clone(), key.clone());
        let t = Instant::now();
        let epoch = handle
            .call(move |nats| async move { take_over_tsn(&nats, &s, &k, &me).await })
            .wait()
            .unwrap()
            .unwrap();
        take.record(t.elapsed().as_nanos() as u64).unwrap();
        let t = Instant::now();
        handle
            .call(move |nats| async move {
                append_fenced(&nats, &key, "bench", epoch, Bytes::from_static(b"x")).await
            })
            .wait()
            .unwrap()
            .unwrap();
        fenced.record(t.elapsed().as_nanos() as u64).unwrap();
    }
    report("tsn take-over (leader read + fenced append)", &take);
    report("append fenced on the ownership epoch", &fenced);
    std::thread::sleep(Duration::from_millis(10));
}
