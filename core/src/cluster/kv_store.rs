//! The [`Store`] on a JetStream key-value bucket, replicated across the NATS cluster.
//!
//! - **Writes** are conditional publishes on the bucket's stream: a create expects the
//!   key's last subject sequence to be 0 (or the revision of its delete marker), an update
//!   or a delete the revision it read (`Nats-Expected-Last-Subject-Sequence`, written as an
//!   explicit header on every publish: async-nats' `create_with_ttl` loses its TTL on a
//!   deleted key, and its `create` reads through a direct get that a follower may answer
//!   stale, so this module builds its publishes itself). JetStream acknowledges a publish
//!   once the stream's quorum has stored it (R3 on three servers: two of them), so an
//!   admin call answers only once its write is durable (PROTOCOL.md §9, §12). Uniqueness
//!   (a domain, a store, a client id across domains, a device) is the server's fence, not
//!   a check this node makes.
//! - **Reads** come from this node's [`Replica`], kept current by a watch on the bucket
//!   on the bridge's thread: a token check or a registration never waits on the network.
//!   "Current": a write acknowledged through node A is visible on node B once B's watch
//!   has delivered it (normally a few milliseconds; a node cut off from NATS answers from
//!   what it had). A node reads its own writes: a write returns only once its own replica
//!   has applied it. Before a write concludes that something it needs does not exist
//!   (`UnknownDomain`, …) or already exists (`Duplicate…`), or after the server refused a
//!   fence, the replica is brought up to the stream's last sequence as the stream leader
//!   reports it, so those answers are never the artefact of a lagging watch.
//!
//! Not atomic across keys (KV has no transactions): a store, client or device is created
//! after its domain (and store) was seen to exist; nothing deletes domains or stores yet,
//! so that order cannot be broken. When deletions of parents arrive, NATS atomic batch
//! publishes (ADR-50, nats-server 2.12) can fence a create on its parent's revision.
//!
//! Every method of the trait may block for up to the bridge's request timeout: call them
//! from the blocking pool, never from a shard — except the reads, which only take a read
//! lock on the replica.

use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_lite::StreamExt as _;

use super::{BridgeHandle, ClusterError};
use crate::ids::{ClientId, DomainName, Serial, StoreName};
use crate::store::kv_layout::{self, KvKey, MetaKey};
use crate::store::replica::{KvChange, Replica};
use crate::store::{ClientRecord, DeviceRecord, Store, StoreError, StoreRecord};
use crate::tenancy::{CertFingerprint, Scope, SecretHash};

/// Where the tenancy lives in JetStream.
#[derive(Debug, Clone)]
pub struct KvStoreConfig {
    /// The bucket's name (its stream is `KV_<bucket>`).
    pub bucket: String,
    /// Replicas of the bucket when this node creates it: 3 on a three-server cluster
    /// (a quorum of two must store each write), 1 on a single dev server.
    pub replicas: usize,
    /// How long opening may wait for NATS and for the replica to load.
    pub load_timeout: Duration,
}

impl Default for KvStoreConfig {
    fn default() -> Self {
        Self {
            bucket: "posrelay-tenancy".into(),
            replicas: 3,
            load_timeout: Duration::from_secs(30),
        }
    }
}

/// The replica and the revision it has applied, shared with the watch task.
#[derive(Default)]
struct Shared {
    replica: RwLock<Replica>,
    applied: Mutex<u64>,
    advanced: Condvar,
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, Replica> {
        self.replica.read().unwrap_or_else(|p| p.into_inner())
    }

    fn apply(&self, entry: &kv::Entry) {
        let value = match entry.operation {
            kv::Operation::Put => Some(&entry.value[..]),
            kv::Operation::Delete | kv::Operation::Purge => None,
        };
        let (result, applied) = {
            let mut replica = self.replica.write().unwrap_or_else(|p| p.into_inner());
            let result = replica.handle_change(KvChange {
                key: &entry.key,
                revision: entry.revision,
                value,
            });
            (result, replica.applied())
        };
        if let Err(e) = result {
            tracing::error!(key = %entry.key, revision = entry.revision, error = %e,
                "cluster store: a record does not decode and is ignored on this node; fix or delete it");
        }
        *self.applied.lock().unwrap_or_else(|p| p.into_inner()) = applied;
        self.advanced.notify_all();
    }

    fn applied(&self) -> u64 {
        *self.applied.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the replica has applied `revision`, at most until `deadline`.
    fn wait_applied(&self, revision: u64, deadline: Instant) -> bool {
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        while *applied < revision {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            applied = self
                .advanced
                .wait_timeout(applied, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

// Shards share the store (`Arc<dyn Store>`) and read it from their threads.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<JetStreamStore>();
};

/// What a conditional write does after looking at the replica.
enum Plan<T> {
    /// Publish `value` (`None`: a delete marker) to `key`, expecting its last revision to
    /// be `expected`; answer `then` once stored.
    Write {
        key: KvKey,
        value: Option<Vec<u8>>,
        expected: u64,
        then: T,
    },
    /// Answer without writing.
    Answer(Result<T, StoreError>),
}

/// How many times a conditional write reads again after a refused fence.
const MAX_ATTEMPTS: usize = 5;

/// The tenancy in a replicated JetStream KV bucket (PROTOCOL.md §12).
pub struct JetStreamStore {
    bridge: BridgeHandle,
    kv: kv::Store,
    shared: Arc<Shared>,
    timeout: Duration,
    /// Dropping it ends the watch task.
    _stop_watch: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for JetStreamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamStore")
            .field("bucket", &self.kv.name)
            .field("applied", &self.shared.applied())
            .finish()
    }
}

impl JetStreamStore {
    /// Opens the bucket (creating it with `config.replicas` if it does not exist), starts
    /// the watch that keeps this node's replica current, and returns once the replica
    /// holds everything the bucket held when it was opened. Blocks; fails after
    /// `config.load_timeout` with what went wrong.
    pub fn open(bridge: &BridgeHandle, config: &KvStoreConfig) -> Result<Self, StoreError> {
        let deadline = Instant::now() + config.load_timeout;
        let mut warned = false;
        let (kv, last) = loop {
            let cfg = config.clone();
            let attempt = bridge
                .call(move |nats| async move {
                    let kv = ensure_bucket(&nats, &cfg).await?;
                    let info = kv
                        .stream
                        .get_info()
                        .await
                        .map_err(|e| ClusterError::other(e, nats.timeout))?;
                    Ok::<_, ClusterError>((kv, info.state.last_sequence))
                })
                .wait()
                .and_then(|r| r);
            match attempt {
                Ok(opened) => break opened,
                Err(ClusterError::Stopped) => return Err(ClusterError::Stopped.into_store_error()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(StoreError::Unavailable {
                        reason: format!(
                        "cannot open the cluster store (bucket {:?}) within {:?}: {e}; check that \
                             nats-server 2.11+ runs with JetStream at the --cluster addresses",
                        config.bucket, config.load_timeout
                    ),
                    })
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!(error = %e, bucket = %config.bucket, timeout = ?config.load_timeout,
                            "cluster store not reachable yet; retrying");
                        warned = true;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        };
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let (watch_kv, watch_shared) = (kv.clone(), shared.clone());
        bridge
            .spawn(move |_| watch(watch_kv, watch_shared, stopped))
            .map_err(ClusterError::into_store_error)?;
        if !shared.wait_applied(last, deadline) {
            return Err(StoreError::Unavailable {
                reason: format!(
                    "the cluster store's watch delivered revision {} of {last} within {:?}",
                    shared.applied(),
                    config.load_timeout
                ),
            });
        }
        tracing::info!(bucket = %config.bucket, revision = last, "cluster store loaded");
        Ok(Self {
            bridge: bridge.clone(),
            timeout: bridge_timeout(bridge),
            kv,
            shared,
            _stop_watch: stop,
        })
    }

    /// The stream sequence up to which this node's replica holds every change.
    pub fn applied_revision(&self) -> u64 {
        self.shared.applied()
    }

    fn load_or_create_key(&self, meta: MetaKey, fresh: [u8; 32]) -> Result<[u8; 32], StoreError> {
        let key = KvKey::Meta(meta);
        self.conditional(|r| match r.meta_key(meta) {
            Ok(Some(stored)) => Plan::Answer(Ok(stored)),
            Err(e) => Plan::Answer(Err(e)),
            Ok(None) => match r.revision(&key).expected_for_create() {
                Some(expected) => Plan::Write {
                    key: key.clone(),
                    value: Some(fresh.to_vec()),
                    expected,
                    then: fresh,
                },
                None => Plan::Answer(Err(StoreError::Storage {
                    reason: format!("{} is present but unreadable", key.to_key()),
                })),
            },
        })
    }

    /// Brings the replica up to the stream's last sequence as its leader reports it.
    fn sync(&self) -> Result<(), StoreError> {
        self.bridge
            .require_connected()
            .map_err(ClusterError::into_store_error)?;
        let kv = self.kv.clone();
        let last = self
            .bridge
            .call(move |nats| async move {
                kv.stream
                    .get_info()
                    .await
                    .map(|info| info.state.last_sequence)
                    .map_err(|e| ClusterError::other(e, nats.timeout))
            })
            .wait()
            .and_then(|r| r)
            .map_err(ClusterError::into_store_error)?;
        self.wait_applied(last)
    }

    fn wait_applied(&self, revision: u64) -> Result<(), StoreError> {
        if self
            .shared
            .wait_applied(revision, Instant::now() + self.timeout)
        {
            Ok(())
        } else {
            Err(StoreError::Unavailable {
                reason: format!(
                    "revision {revision} is stored but this node's replica has not seen it within {:?} \
                     (its watch is behind at {})",
                    self.timeout,
                    self.shared.applied()
                ),
            })
        }
    }

    /// Publishes to `key` expecting its last revision; the stored message's sequence.
    fn publish(
        &self,
        key: &KvKey,
        value: Option<Vec<u8>>,
        expected: u64,
    ) -> Result<u64, ClusterError> {
        self.bridge.require_connected()?;
        let subject = format!("{}{}", self.kv.prefix, key.to_key());
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            expected.to_string(),
        );
        if value.is_none() {
            headers.insert("KV-Operation", "DEL");
        }
        let payload = Bytes::from(value.unwrap_or_default());
        self.bridge
            .call(move |nats| async move {
                let timeout = nats.timeout;
                let ack = nats
                    .js
                    .publish_with_headers(subject, headers, payload)
                    .await
                    .map_err(|e| ClusterError::from_publish(e, timeout))?;
                ack.await
                    .map(|ack| ack.sequence)
                    .map_err(|e| ClusterError::from_publish(e, timeout))
            })
            .wait()
            .and_then(|r| r)
    }

    /// Runs a conditional write (see the module's documentation).
    fn conditional<T>(&self, mut plan: impl FnMut(&Replica) -> Plan<T>) -> Result<T, StoreError> {
        let mut synced = false;
        for _ in 0..MAX_ATTEMPTS {
            let next = plan(&self.shared.read());
            match next {
                Plan::Answer(Ok(answer)) => return Ok(answer),
                Plan::Answer(Err(e)) if synced || !confirmable(&e) => return Err(e),
                Plan::Answer(Err(_)) => {
                    self.sync()?;
                    synced = true;
                }
                Plan::Write {
                    key,
                    value,
                    expected,
                    then,
                } => match self.publish(&key, value, expected) {
                    Ok(revision) => {
                        self.wait_applied(revision)?;
                        return Ok(then);
                    }
                    Err(ClusterError::WrongLastSequence) => {
                        self.sync()?;
                        synced = true;
                    }
                    Err(e) => return Err(e.into_store_error()),
                },
            }
        }
        Err(StoreError::Unavailable {
            reason: format!("{MAX_ATTEMPTS} conflicting writes in a row; retry"),
        })
    }

    fn create(
        &self,
        key: KvKey,
        value: Vec<u8>,
        duplicate: impl Fn() -> StoreError,
    ) -> impl FnMut(&Replica) -> Plan<()> {
        move |r| match r.revision(&key).expected_for_create() {
            Some(expected) => Plan::Write {
                key: key.clone(),
                value: Some(value.clone()),
                expected,
                then: (),
            },
            None => Plan::Answer(Err(duplicate())),
        }
    }
}

/// Whether a refusal from the replica is worth confirming against the stream: "does not
/// exist" and "exists already" may be a lagging watch; an invalid name is not.
fn confirmable(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::UnknownDomain { .. }
            | StoreError::UnknownStore { .. }
            | StoreError::UnknownDevice { .. }
            | StoreError::UnknownClient { .. }
            | StoreError::DuplicateDomain { .. }
            | StoreError::DuplicateStore { .. }
            | StoreError::DuplicateDevice { .. }
            | StoreError::DuplicateClient { .. }
    )
}

fn bridge_timeout(bridge: &BridgeHandle) -> Duration {
    bridge
        .call(|nats| async move { nats.timeout })
        .wait()
        .unwrap_or(Duration::from_secs(5))
}

fn unknown_device(domain: &DomainName, serial: &Serial) -> StoreError {
    StoreError::UnknownDevice {
        domain: domain.to_string(),
        serial: serial.to_string(),
    }
}

/// "2 stores, 1 device": what still belongs to something that is to be deleted.
fn holdings(counts: &[(usize, &str)]) -> String {
    counts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, noun)| crate::store::plural(*n, noun))
        .collect::<Vec<_>>()
        .join(", ")
}

fn unknown_domain(domain: &DomainName) -> StoreError {
    StoreError::UnknownDomain {
        domain: domain.to_string(),
    }
}

fn need_store(r: &Replica, domain: &DomainName, store: &StoreName) -> Result<(), StoreError> {
    if !r.domain_exists(domain) {
        return Err(unknown_domain(domain));
    }
    if !r.store_exists(domain, store) {
        return Err(StoreError::UnknownStore {
            domain: domain.to_string(),
            store: store.to_string(),
        });
    }
    Ok(())
}

/// Gets the bucket, or creates it: file storage, one revision per key, `replicas` copies.
async fn ensure_bucket(nats: &super::Nats, cfg: &KvStoreConfig) -> Result<kv::Store, ClusterError> {
    if let Ok(kv) = nats.js.get_key_value(&cfg.bucket).await {
        let replicas = kv.stream.cached_info().config.num_replicas;
        if replicas != cfg.replicas {
            tracing::warn!(bucket = %cfg.bucket, replicas, configured = cfg.replicas,
                "the cluster store's bucket exists with another replica count; keeping it");
        }
        return Ok(kv);
    }
    let created = nats
        .js
        .create_key_value(kv::Config {
            bucket: cfg.bucket.clone(),
            description: "posrelay tenancy: domains, stores, clients, devices, shared keys".into(),
            history: 1,
            max_value_size: 64 * 1024,
            storage: async_nats::jetstream::stream::StorageType::File,
            num_replicas: cfg.replicas,
            ..Default::default()
        })
        .await;
    match created {
        Ok(kv) => {
            tracing::info!(bucket = %cfg.bucket, replicas = cfg.replicas, "cluster store bucket created");
            Ok(kv)
        }
        // Another node created it in between.
        Err(e) => nats
            .js
            .get_key_value(&cfg.bucket)
            .await
            .map_err(|_| ClusterError::other(e, nats.timeout)),
    }
}

/// Keeps `shared` current: watches every key of the bucket (first the last revision of
/// each, then every change), and watches again from the next revision whenever the watch
/// ends (the connection moved to another server, the consumer was lost).
async fn watch(kv: kv::Store, shared: Arc<Shared>, mut stop: tokio::sync::oneshot::Receiver<()>) {
    let mut backoff = Duration::from_millis(50);
    let mut failing = false;
    loop {
        let from = shared.applied() + 1;
        let watch = if from == 1 {
            kv.watch_with_history(">").await
        } else {
            kv.watch_all_from_revision(from).await
        };
        match watch {
            Ok(mut entries) => {
                if failing {
                    tracing::info!(bucket = %kv.name, from, "cluster store watch resumed");
                    failing = false;
                }
                backoff = Duration::from_millis(50);
                loop {
                    let next = futures_lite::future::or(
                        async {
                            let _ = (&mut stop).await;
                            None
                        },
                        async { Some(entries.next().await) },
                    )
                    .await;
                    match next {
                        None => return,
                        Some(Some(Ok(entry))) => shared.apply(&entry),
                        Some(Some(Err(e))) => {
                            tracing::warn!(bucket = %kv.name, error = %e, "cluster store watch failed; watching again");
                            break;
                        }
                        Some(None) => {
                            tracing::warn!(bucket = %kv.name, "cluster store watch ended; watching again");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(bucket = %kv.name, error = %e,
                        "cannot watch the cluster store; reads answer from what this node has until it can");
                    failing = true;
                }
            }
        }
        let stopped = futures_lite::future::or(
            async {
                let _ = (&mut stop).await;
                true
            },
            async {
                tokio::time::sleep(backoff).await;
                false
            },
        )
        .await;
        if stopped {
            return;
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

impl JetStreamStore {
    /// Claims the `pin.<fp>` record of each fingerprint in `pins` that the device does not
    /// already have (`held`) for the device: a create, or a fenced overwrite of a stale
    /// record; `FingerprintPinned` when another device lists it. The first step of every
    /// write that gives a device pins (§2a: one device per fingerprint, across nodes).
    fn claim_pins(
        &self,
        domain: &DomainName,
        serial: &Serial,
        pins: &[CertFingerprint],
        held: &[CertFingerprint],
    ) -> Result<(), StoreError> {
        for (position, fp) in pins.iter().enumerate() {
            if held.contains(fp) {
                continue;
            }
            let value = kv_layout::encode_pin(domain, serial)?;
            self.conditional(|r| {
                let key = KvKey::Pin(*fp);
                match r.pin(fp) {
                    Some(((d, s), _)) if d == domain && s == serial => Plan::Answer(Ok(())),
                    Some(((d, s), rev)) => match r.device(d, s) {
                        Some((holder, _)) if holder.is_pinned(fp) => {
                            Plan::Answer(Err(StoreError::FingerprintPinned {
                                position,
                                domain: d.to_string(),
                                serial: s.to_string(),
                            }))
                        }
                        // A stale record: the fingerprint is free.
                        _ => Plan::Write {
                            key,
                            value: Some(value.clone()),
                            expected: rev,
                            then: (),
                        },
                    },
                    None => match r.revision(&key).expected_for_create() {
                        Some(expected) => Plan::Write {
                            key,
                            value: Some(value.clone()),
                            expected,
                            then: (),
                        },
                        None => Plan::Answer(Err(StoreError::Unavailable {
                            reason: "the pin index changed meanwhile; retry".into(),
                        })),
                    },
                }
            })?;
        }
        Ok(())
    }
}

impl Store for JetStreamStore {
    fn create_domain(&self, domain: &DomainName) -> Result<(), StoreError> {
        let d = domain.clone();
        self.conditional(self.create(KvKey::Domain(d.clone()), b"{}".to_vec(), || {
            StoreError::DuplicateDomain {
                domain: d.to_string(),
            }
        }))
    }

    fn domain_exists(&self, domain: &DomainName) -> Result<bool, StoreError> {
        Ok(self.shared.read().domain_exists(domain))
    }

    fn create_store(&self, record: &StoreRecord) -> Result<(), StoreError> {
        let value = kv_layout::encode_store(record)?;
        let key = KvKey::Store(record.domain.clone(), record.store.clone());
        let mut create = self.create(key, value, || StoreError::DuplicateStore {
            domain: record.domain.to_string(),
            store: record.store.to_string(),
        });
        self.conditional(|r| {
            if !r.domain_exists(&record.domain) {
                return Plan::Answer(Err(unknown_domain(&record.domain)));
            }
            create(r)
        })
    }

    fn store_exists(&self, domain: &DomainName, store: &StoreName) -> Result<bool, StoreError> {
        Ok(self.shared.read().store_exists(domain, store))
    }

    fn create_client(&self, record: &ClientRecord) -> Result<(), StoreError> {
        let value = kv_layout::encode_client(record)?;
        let key = KvKey::Client(record.client_id.clone());
        let mut create = self.create(key, value, || StoreError::DuplicateClient {
            domain: record.domain.to_string(),
            client_id: record.client_id.to_string(),
        });
        self.conditional(|r| {
            let parent = match &record.scope {
                Scope::Store(store) => need_store(r, &record.domain, store),
                Scope::Domain if r.domain_exists(&record.domain) => Ok(()),
                Scope::Domain => Err(unknown_domain(&record.domain)),
            };
            match parent {
                Ok(()) => create(r),
                Err(e) => Plan::Answer(Err(e)),
            }
        })
    }

    fn delete_client(&self, domain: &DomainName, client_id: &ClientId) -> Result<(), StoreError> {
        self.conditional(|r| {
            if !r.domain_exists(domain) {
                return Plan::Answer(Err(unknown_domain(domain)));
            }
            match r.client(client_id) {
                Some((client, revision)) if client.domain == *domain => Plan::Write {
                    key: KvKey::Client(client_id.clone()),
                    value: None,
                    expected: revision,
                    then: (),
                },
                _ => Plan::Answer(Err(StoreError::UnknownClient {
                    domain: domain.to_string(),
                    client_id: client_id.to_string(),
                })),
            }
        })
    }

    fn get_client(
        &self,
        domain: &DomainName,
        client_id: &ClientId,
    ) -> Result<Option<ClientRecord>, StoreError> {
        Ok(self.shared.read().domain_client(domain, client_id).cloned())
    }

    fn find_client(&self, client_id: &ClientId) -> Result<Option<ClientRecord>, StoreError> {
        Ok(self.shared.read().client(client_id).map(|(c, _)| c.clone()))
    }

    fn create_device(&self, record: &DeviceRecord) -> Result<(), StoreError> {
        let value = kv_layout::encode_device(record)?;
        if !record.client_cert_sha256.is_empty() {
            if self.get_device(&record.domain, &record.serial)?.is_some() {
                return Err(StoreError::DuplicateDevice {
                    domain: record.domain.to_string(),
                    serial: record.serial.to_string(),
                });
            }
            self.claim_pins(
                &record.domain,
                &record.serial,
                &record.client_cert_sha256,
                &[],
            )?;
        }
        let key = KvKey::Device(record.domain.clone(), record.serial.clone());
        let mut create = self.create(key, value, || StoreError::DuplicateDevice {
            domain: record.domain.to_string(),
            serial: record.serial.to_string(),
        });
        self.conditional(|r| match need_store(r, &record.domain, &record.store) {
            Ok(()) => create(r),
            Err(e) => Plan::Answer(Err(e)),
        })
    }

    fn set_device_enabled(
        &self,
        domain: &DomainName,
        serial: &Serial,
        enabled: bool,
    ) -> Result<DeviceRecord, StoreError> {
        self.conditional(|r| {
            if !r.domain_exists(domain) {
                return Plan::Answer(Err(unknown_domain(domain)));
            }
            let Some((current, revision)) = r.device(domain, serial) else {
                return Plan::Answer(Err(StoreError::UnknownDevice {
                    domain: domain.to_string(),
                    serial: serial.to_string(),
                }));
            };
            let updated = DeviceRecord {
                enabled,
                ..current.clone()
            };
            match kv_layout::encode_device(&updated) {
                Ok(value) => Plan::Write {
                    key: KvKey::Device(domain.clone(), serial.clone()),
                    value: Some(value),
                    expected: revision,
                    then: updated,
                },
                Err(e) => Plan::Answer(Err(e)),
            }
        })
    }

    fn get_device(
        &self,
        domain: &DomainName,
        serial: &Serial,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        Ok(self
            .shared
            .read()
            .device(domain, serial)
            .map(|(d, _)| d.clone()))
    }

    fn list_devices(&self, domain: &DomainName) -> Result<Vec<DeviceRecord>, StoreError> {
        self.shared
            .read()
            .list_devices(domain)
            .ok_or_else(|| unknown_domain(domain))
    }

    fn set_device_pins(
        &self,
        domain: &DomainName,
        serial: &Serial,
        pins: &[CertFingerprint],
    ) -> Result<DeviceRecord, StoreError> {
        // One KV write per key: each new fingerprint is first claimed with its own
        // `pin.<fp>` record (a create, or a fenced overwrite of a stale one), which is what
        // keeps a fingerprint on one device across nodes; then the device record; then
        // the records of the fingerprints it no longer has are deleted. A crash in between
        // leaves at most a pin record that names a device not listing the fingerprint:
        // lookups and later pins treat such a record as free.
        if !self.domain_exists(domain)? {
            return Err(unknown_domain(domain));
        }
        let current = self
            .get_device(domain, serial)?
            .ok_or_else(|| unknown_device(domain, serial))?;
        self.claim_pins(domain, serial, pins, &current.client_cert_sha256)?;
        let updated = self.conditional(|r| {
            if !r.domain_exists(domain) {
                return Plan::Answer(Err(unknown_domain(domain)));
            }
            let Some((device, revision)) = r.device(domain, serial) else {
                return Plan::Answer(Err(unknown_device(domain, serial)));
            };
            let updated = DeviceRecord {
                client_cert_sha256: pins.to_vec(),
                ..device.clone()
            };
            match kv_layout::encode_device(&updated) {
                Ok(value) => Plan::Write {
                    key: KvKey::Device(domain.clone(), serial.clone()),
                    value: Some(value),
                    expected: revision,
                    then: updated,
                },
                Err(e) => Plan::Answer(Err(e)),
            }
        })?;
        for fp in current
            .client_cert_sha256
            .iter()
            .filter(|fp| !pins.contains(fp))
        {
            let removed = self.conditional(|r| match r.pin(fp) {
                Some(((d, s), rev)) if d == domain && s == serial => Plan::Write {
                    key: KvKey::Pin(*fp),
                    value: None,
                    expected: rev,
                    then: (),
                },
                _ => Plan::Answer(Ok(())),
            });
            if let Err(e) = removed {
                // Harmless (a stale record is treated as free); say so for the operator.
                tracing::warn!(error = %e, "cannot delete the index record of a removed pin");
            }
        }
        Ok(updated)
    }

    fn find_device_by_fingerprint(
        &self,
        fingerprint: &CertFingerprint,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        let r = self.shared.read();
        Ok(r.pin(fingerprint)
            .and_then(|((d, s), _)| r.device(d, s))
            .map(|(device, _)| device)
            .filter(|device| device.is_pinned(fingerprint))
            .cloned())
    }

    fn list_domains(&self) -> Result<Vec<DomainName>, StoreError> {
        Ok(self.shared.read().domains())
    }

    fn delete_domain(&self, domain: &DomainName) -> Result<(), StoreError> {
        self.conditional(|r| {
            if !r.domain_exists(domain) {
                return Plan::Answer(Err(unknown_domain(domain)));
            }
            let holds = holdings(&[
                (r.stores_of(domain).len(), "store"),
                (r.clients_of(domain).len(), "client"),
                (r.devices_of(domain).count(), "device"),
            ]);
            if !holds.is_empty() {
                return Plan::Answer(Err(StoreError::NotEmpty {
                    what: format!("domain {:?}", domain.as_str()),
                    holds,
                }));
            }
            let key = KvKey::Domain(domain.clone());
            match r.revision(&key) {
                crate::store::replica::KeyRevision::Live(expected) => Plan::Write {
                    key,
                    value: None,
                    expected,
                    then: (),
                },
                _ => Plan::Answer(Err(unknown_domain(domain))),
            }
        })
    }

    fn list_stores(&self, domain: &DomainName) -> Result<Vec<StoreRecord>, StoreError> {
        let r = self.shared.read();
        if !r.domain_exists(domain) {
            return Err(unknown_domain(domain));
        }
        Ok(r.stores_of(domain))
    }

    fn delete_store(&self, domain: &DomainName, store: &StoreName) -> Result<(), StoreError> {
        self.conditional(|r| {
            if let Err(e) = need_store(r, domain, store) {
                return Plan::Answer(Err(e));
            }
            let scope = Scope::Store(store.clone());
            let holds = holdings(&[
                (
                    r.clients_of(domain)
                        .iter()
                        .filter(|c| c.scope == scope)
                        .count(),
                    "client",
                ),
                (
                    r.devices_of(domain).filter(|d| d.store == *store).count(),
                    "device",
                ),
            ]);
            if !holds.is_empty() {
                return Plan::Answer(Err(StoreError::NotEmpty {
                    what: format!("store {:?} in domain {:?}", store.as_str(), domain.as_str()),
                    holds,
                }));
            }
            let key = KvKey::Store(domain.clone(), store.clone());
            match r.revision(&key) {
                crate::store::replica::KeyRevision::Live(expected) => Plan::Write {
                    key,
                    value: None,
                    expected,
                    then: (),
                },
                _ => Plan::Answer(Err(StoreError::UnknownStore {
                    domain: domain.to_string(),
                    store: store.to_string(),
                })),
            }
        })
    }

    fn list_clients(&self, domain: &DomainName) -> Result<Vec<ClientRecord>, StoreError> {
        let r = self.shared.read();
        if !r.domain_exists(domain) {
            return Err(unknown_domain(domain));
        }
        Ok(r.clients_of(domain))
    }

    fn replace_client_secret_hash(
        &self,
        domain: &DomainName,
        client_id: &ClientId,
        old: &SecretHash,
        new: &SecretHash,
    ) -> Result<bool, StoreError> {
        self.conditional(|r| match r.client(client_id) {
            Some((client, revision)) if client.domain == *domain && client.secret_hash == *old => {
                let updated = ClientRecord {
                    secret_hash: new.clone(),
                    ..client.clone()
                };
                match kv_layout::encode_client(&updated) {
                    Ok(value) => Plan::Write {
                        key: KvKey::Client(client_id.clone()),
                        value: Some(value),
                        expected: revision,
                        then: true,
                    },
                    Err(e) => Plan::Answer(Err(e)),
                }
            }
            // Gone, moved, or not that hash any more (rotated meanwhile): nothing written.
            _ => Plan::Answer(Ok(false)),
        })
    }

    fn rotate_client_secret(
        &self,
        domain: &DomainName,
        client_id: &ClientId,
        new: &SecretHash,
        old_valid_until: u64,
    ) -> Result<ClientRecord, StoreError> {
        self.conditional(|r| {
            if !r.domain_exists(domain) {
                return Plan::Answer(Err(unknown_domain(domain)));
            }
            match r.client(client_id) {
                Some((client, revision)) if client.domain == *domain => {
                    let updated = ClientRecord {
                        secret_hash: new.clone(),
                        previous_secret: Some(crate::tenancy::PreviousSecret {
                            hash: client.secret_hash.clone(),
                            valid_until: old_valid_until,
                        }),
                        ..client.clone()
                    };
                    match kv_layout::encode_client(&updated) {
                        Ok(value) => Plan::Write {
                            key: KvKey::Client(client_id.clone()),
                            value: Some(value),
                            expected: revision,
                            then: updated,
                        },
                        Err(e) => Plan::Answer(Err(e)),
                    }
                }
                _ => Plan::Answer(Err(StoreError::UnknownClient {
                    domain: domain.to_string(),
                    client_id: client_id.to_string(),
                })),
            }
        })
    }

    fn load_or_create_signing_key(&self, fresh: [u8; 32]) -> Result<[u8; 32], StoreError> {
        self.load_or_create_key(MetaKey::SigningKey, fresh)
    }

    /// Every node of a cluster gets the same key, so that a device keeps its `session_id`
    /// across nodes (PROTOCOL.md §12).
    fn read_latest(&self) -> Result<(), StoreError> {
        self.sync()
    }

    fn load_or_create_session_key(&self, fresh: [u8; 32]) -> Result<[u8; 32], StoreError> {
        self.load_or_create_key(MetaKey::SessionKey, fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing::NatsCluster;
    use crate::cluster::{BridgeConfig, LinkState, NatsBridge};
    use crate::store::conformance::{self, client_rec, d, device_rec, store_rec};

    /// One node's view of the cluster: its bridge (to `urls`) and its store.
    struct Node {
        store: JetStreamStore,
        bridge: NatsBridge,
    }

    fn node(urls: Vec<String>, bucket: &str) -> Node {
        let mut config = BridgeConfig::new(urls, "posrelay test");
        config.request_timeout = Duration::from_secs(2);
        let bridge = NatsBridge::start(config).unwrap();
        let store = JetStreamStore::open(
            &bridge.handle(),
            &KvStoreConfig {
                bucket: bucket.into(),
                replicas: 3,
                load_timeout: Duration::from_secs(20),
            },
        )
        .unwrap();
        Node { store, bridge }
    }

    /// Polls `cond` every 5 ms until it holds, at most `timeout`.
    fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond() {
            assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn follows_the_store_rules_on_three_replicas() {
        let cluster = NatsCluster::start(3);
        let n = node(cluster.client_urls(), "conformance");
        conformance::check(&n.store);
        // What it wrote is on the servers, not in this node: a node that opens the
        // bucket afresh loads it all, deleted clients included.
        let fresh = node(vec![cluster.client_url(2)], "conformance");
        assert_eq!(fresh.store.applied_revision(), n.store.applied_revision());
        assert_eq!(
            fresh.store.list_devices(&d("acme")).unwrap(),
            n.store.list_devices(&d("acme")).unwrap()
        );
        assert_eq!(
            fresh.store.load_or_create_signing_key([9; 32]).unwrap(),
            [1; 32]
        );
        assert_eq!(
            fresh
                .store
                .find_client(&ClientId::new("unique1").unwrap())
                .unwrap(),
            None
        );
        // A deleted client's id can be created again (the create expects the marker).
        let again = client_rec("idx-b", "unique1", Scope::Domain);
        fresh.store.create_client(&again).unwrap();
        assert_eq!(
            fresh.store.find_client(&again.client_id).unwrap(),
            Some(again)
        );
    }

    #[test]
    fn nodes_share_provisioning_keys_and_uniqueness() {
        let cluster = NatsCluster::start(3);
        let a = node(vec![cluster.client_url(0)], "shared");
        let b = node(vec![cluster.client_url(2)], "shared");

        // Provisioning through A holds on B once B's watch delivered it.
        a.store.create_domain(&d("acme")).unwrap();
        a.store.create_store(&store_rec("acme", "s1")).unwrap();
        let client = client_rec("acme", "pos1", Scope::Domain);
        a.store.create_client(&client).unwrap();
        a.store
            .create_device(&device_rec("acme", "1001", "s1"))
            .unwrap();
        let serial = Serial::new("1001").unwrap();
        eventually("B sees A's device", Duration::from_secs(10), || {
            b.store.get_device(&d("acme"), &serial).unwrap().is_some()
        });
        assert_eq!(
            b.store.find_client(&client.client_id).unwrap(),
            Some(client.clone())
        );
        // B writes on top of A's records (its replica knows their revisions).
        let off = b
            .store
            .set_device_enabled(&d("acme"), &serial, false)
            .unwrap();
        assert!(!off.enabled);
        eventually("A sees B's update", Duration::from_secs(10), || {
            !a.store
                .get_device(&d("acme"), &serial)
                .unwrap()
                .unwrap()
                .enabled
        });
        // Back to back on two nodes: whether or not A's replica has B's update yet, A's
        // write lands on top of it (a write expecting a stale revision is refused by the
        // server, and A reads again).
        b.store
            .set_device_enabled(&d("acme"), &serial, true)
            .unwrap();
        let back = a
            .store
            .set_device_enabled(&d("acme"), &serial, false)
            .unwrap();
        assert!(!back.enabled);

        // One signing key and one session key for every node, whoever stores it first.
        let key_a = a.store.load_or_create_signing_key([1; 32]).unwrap();
        let key_b = b.store.load_or_create_signing_key([2; 32]).unwrap();
        assert_eq!(key_a, key_b);
        let sid_b = b.store.load_or_create_session_key([3; 32]).unwrap();
        let sid_a = a.store.load_or_create_session_key([4; 32]).unwrap();
        assert_eq!((sid_a, sid_b), ([3; 32], [3; 32]));
        // So a device gets the same session_id whichever node it registers with.
        let device = device_rec("acme", "1001", "s1").key();
        assert_eq!(
            crate::relay::SessionKeyring::new(sid_a).session_id(&device),
            crate::relay::SessionKeyring::new(sid_b).session_id(&device)
        );

        // Racing creates of the same names: exactly one wins each race, the other is
        // told it exists (a client id is unique across domains too).
        for round in 0..5 {
            let name = format!("race{round}");
            let (ra, rb) = std::thread::scope(|s| {
                let ta = s.spawn(|| a.store.create_domain(&d(&name)));
                let tb = s.spawn(|| b.store.create_domain(&d(&name)));
                (ta.join().unwrap(), tb.join().unwrap())
            });
            assert!(
                matches!(
                    (&ra, &rb),
                    (Ok(()), Err(StoreError::DuplicateDomain { .. }))
                        | (Err(StoreError::DuplicateDomain { .. }), Ok(()))
                ),
                "{ra:?} {rb:?}"
            );
            let id = format!("twin{round}");
            let (ca, cb) = std::thread::scope(|s| {
                let ta = s.spawn(|| {
                    a.store
                        .create_client(&client_rec("acme", &id, Scope::Domain))
                });
                let tb = s.spawn(|| {
                    b.store
                        .create_client(&client_rec(&name, &id, Scope::Domain))
                });
                (ta.join().unwrap(), tb.join().unwrap())
            });
            assert_eq!(
                [&ca, &cb].iter().filter(|r| r.is_ok()).count(),
                1,
                "{ca:?} {cb:?}"
            );
            assert!(
                [&ca, &cb]
                    .iter()
                    .any(|r| matches!(r, Err(StoreError::DuplicateClient { .. }))),
                "{ca:?} {cb:?}"
            );
        }
        drop(b.bridge);
    }

    #[test]
    fn without_a_quorum_writes_fail_and_reads_still_answer() {
        let mut cluster = NatsCluster::start(3);
        let n = node(cluster.client_urls(), "quorum");
        n.store.create_domain(&d("acme")).unwrap();
        n.store.create_store(&store_rec("acme", "s1")).unwrap();
        n.store
            .create_device(&device_rec("acme", "1", "s1"))
            .unwrap();

        // Two of three servers gone: JetStream cannot store anything on a quorum, so a
        // write must not answer as if it had (PROTOCOL.md §12: durable when it answers).
        cluster.kill(1);
        cluster.kill(2);
        let err = n.store.create_domain(&d("later")).unwrap_err();
        assert_eq!(err.status(), 503, "{err}");
        // The hot path keeps answering from the replica.
        let serial = Serial::new("1").unwrap();
        assert!(n.store.get_device(&d("acme"), &serial).unwrap().is_some());

        // Every server gone: refused at once, still readable.
        cluster.kill(0);
        eventually("link down", Duration::from_secs(10), || {
            n.bridge.handle().link().state == LinkState::Disconnected
        });
        let err = n.store.create_store(&store_rec("acme", "s2")).unwrap_err();
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
        // Refused because the link is known to be down, not after waiting out a timeout.
        assert!(err.to_string().contains("not connected to NATS"), "{err}");
        assert!(n.store.get_device(&d("acme"), &serial).unwrap().is_some());

        // Back: writes work again, and the watch resumed.
        for i in 0..3 {
            cluster.start_again(i).unwrap();
        }
        cluster
            .wait_ready(crate::cluster::testing::READY_TIMEOUT)
            .unwrap();
        // After all three servers restart, JetStream elects a meta leader, then the
        // bucket's stream leader (raft elections of several seconds each in
        // nats-server, longer when other test clusters share the CPU): the bound is
        // generous, the assertion is that writes come back at all. A try that timed out
        // may have been stored after all (the stream took it, its answer was lost): the
        // next try then finds the store, which is a write that worked. The last error
        // says why, if none does.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let last = match n.store.create_store(&store_rec("acme", "s2")) {
                Ok(()) | Err(StoreError::DuplicateStore { .. }) => break,
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "writes did not work again within 90 s; last error: {last}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        n.store
            .create_device(&device_rec("acme", "2", "s2"))
            .unwrap();
        assert_eq!(n.store.list_devices(&d("acme")).unwrap().len(), 2);
    }
}
