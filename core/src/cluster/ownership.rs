//! Ownership on JetStream: the streams that hold leases and ownership records, and the
//! calls that read an owner, take a tsn over and append fenced writes. The decisions are
//! `crate::ownership`'s; these functions run on the bridge's thread
//! (`BridgeHandle::call`).
//!
//! - `POSRELAY_LEASES` (`posrelay.lease.*`): one record per node, each stored with a
//!   per-message TTL (`Nats-TTL`, ADR-43); when one expires the server leaves a delete
//!   marker (`Nats-Marker-Reason: MaxAge`, kept 15 minutes) that watchers see.
//! - `POSRELAY_OWNERSHIP` (`posrelay.own.*.*` and `posrelay.tsn.*.*.>`): a tsn's ownership
//!   records — each written with `Nats-Rollup: sub`, so only the last is kept; its
//!   sequence is the epoch — and the writes that act for a tsn, each fenced on the last
//!   sequence of the tsn's ownership subject (`Nats-Expected-Last-Subject-Sequence` with
//!   `Nats-Expected-Last-Subject-Sequence-Subject`), so that the server refuses them from a
//!   node that is not the latest owner, whatever that node believes.

use std::time::Duration;

use async_nats::jetstream::stream::{self, Stream};
use async_nats::HeaderMap;
use bytes::Bytes;

use super::{ClusterError, Nats};
use crate::ids::DeviceKey;
use crate::ownership::{
    ownership_subject, take_over, tsn_subject, Epoch, Ownership, OwnershipRecord, TakeOver,
    LEASE_SUBJECTS, OWNERSHIP_SUBJECTS, TSN_SUBJECTS,
};

/// The leases' stream.
pub const LEASES_STREAM: &str = "POSRELAY_LEASES";
/// The ownership records' stream (and the fenced writes that act for a tsn).
pub const OWNERSHIP_STREAM: &str = "POSRELAY_OWNERSHIP";

/// How long the server keeps the marker it leaves when a lease expires.
const LEASE_MARKER_TTL: Duration = Duration::from_secs(15 * 60);

/// How many times a take-over reads again after another node won the race.
const TAKE_OVER_ATTEMPTS: usize = 5;

/// Handles on both streams (cheap to clone).
#[derive(Debug, Clone)]
pub struct OwnershipStreams {
    /// `POSRELAY_LEASES`.
    pub leases: Stream,
    /// `POSRELAY_OWNERSHIP`.
    pub ownership: Stream,
}

/// Gets both streams, creating them (file storage, `replicas` copies) if needed.
pub async fn ensure_streams(
    nats: &Nats,
    replicas: usize,
) -> Result<OwnershipStreams, ClusterError> {
    let leases = stream::Config {
        name: LEASES_STREAM.into(),
        description: Some("posrelay: one lease per node (PROTOCOL.md §12)".into()),
        subjects: vec![LEASE_SUBJECTS.into()],
        max_messages_per_subject: 1,
        num_replicas: replicas,
        storage: stream::StorageType::File,
        allow_message_ttl: true,
        subject_delete_marker_ttl: Some(LEASE_MARKER_TTL),
        ..Default::default()
    };
    let ownership = stream::Config {
        name: OWNERSHIP_STREAM.into(),
        description: Some("posrelay: who owns each tsn, and writes fenced on it".into()),
        subjects: vec![OWNERSHIP_SUBJECTS.into(), TSN_SUBJECTS.into()],
        allow_rollup: true,
        num_replicas: replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    Ok(OwnershipStreams {
        leases: get_or_create(nats, leases).await?,
        ownership: get_or_create(nats, ownership).await?,
    })
}

async fn get_or_create(nats: &Nats, config: stream::Config) -> Result<Stream, ClusterError> {
    if let Ok(stream) = nats.js.get_stream(&config.name).await {
        return Ok(stream);
    }
    match nats.js.create_stream(config.clone()).await {
        Ok(stream) => Ok(stream),
        // Another node created it in between.
        Err(e) => nats
            .js
            .get_stream(&config.name)
            .await
            .map_err(|_| ClusterError::other(e, nats.timeout)),
    }
}

/// The last message on `subject` (read from the stream's leader): its sequence, headers
/// and payload, or `None` if the subject has none.
pub(crate) async fn last_on_subject(
    stream: &Stream,
    subject: &str,
    timeout: Duration,
) -> Result<Option<(u64, HeaderMap, Bytes)>, ClusterError> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind as K;
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(m) => Ok(Some((m.sequence, m.headers, m.payload))),
        Err(e) if matches!(e.kind(), K::NoMessageFound) => Ok(None),
        Err(e) => Err(ClusterError::other(e, timeout)),
    }
}

/// Whether a stored message is a delete marker (the server's, or a KV delete).
pub(crate) fn is_marker(headers: &HeaderMap) -> bool {
    headers
        .get(async_nats::header::NATS_MARKER_REASON)
        .is_some()
        || headers.get("KV-Operation").is_some()
}

/// The tsn's current owner, or `None` if it never had one (or its record is unreadable).
pub async fn current_owner(
    nats: &Nats,
    streams: &OwnershipStreams,
    device: &DeviceKey,
) -> Result<Option<Ownership>, ClusterError> {
    let last =
        last_on_subject(&streams.ownership, &ownership_subject(device), nats.timeout).await?;
    Ok(last.and_then(|(sequence, headers, payload)| {
        if is_marker(&headers) {
            return None;
        }
        Some(Ownership {
            epoch: Epoch::new(sequence),
            record: OwnershipRecord::decode(&payload)?,
        })
    }))
}

/// Publishes with headers and waits for the stream's acknowledgement (its quorum stored
/// it): the stored message's sequence.
pub(crate) async fn publish(
    nats: &Nats,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
) -> Result<u64, ClusterError> {
    let ack = nats
        .js
        .publish_with_headers(subject, headers, payload)
        .await
        .map_err(|e| ClusterError::from_publish(e, nats.timeout))?;
    ack.await
        .map(|ack| ack.sequence)
        .map_err(|e| ClusterError::from_publish(e, nats.timeout))
}

/// Appends an ownership record naming `me`, fenced on `expected` (the epoch of the owner
/// this node saw, [`Epoch::NONE`] if none): the new epoch, or
/// [`ClusterError::WrongLastSequence`] if another record was written since.
pub async fn append_ownership(
    nats: &Nats,
    device: &DeviceKey,
    me: &OwnershipRecord,
    expected: Epoch,
) -> Result<Epoch, ClusterError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        expected.sequence().to_string(),
    );
    headers.insert(async_nats::header::NATS_ROLLUP, "sub");
    publish(
        nats,
        ownership_subject(device),
        headers,
        Bytes::from(me.encode()),
    )
    .await
    .map(Epoch::new)
}

/// `posrelay.tsn.<domain>.<serial>.claim`: who holds the tsn's claim (§12: "claims stay
/// (they live in the cluster's store)"), written by the owner fenced on its epoch, the
/// last one kept (`Nats-Rollup: sub`).
pub const CLAIM_KIND: &str = "claim";

/// The claim record's JSON: `{"client":"<client id>"}`, or `{"client":null}` once released.
#[derive(serde::Serialize, serde::Deserialize)]
struct ClaimJson {
    client: Option<String>,
}

/// §12: records that `claim` (a client id; `None`: nobody) holds the claim of `device`,
/// which `me` owns: fenced on its ownership epoch, so that a node that lost the tsn writes
/// nothing (the ownership record itself is written only when the device arrives).
/// `Ok(false)` when `me` does not own the tsn (any more).
pub async fn record_claim(
    nats: &Nats,
    streams: &OwnershipStreams,
    device: &DeviceKey,
    me: &OwnershipRecord,
    claim: Option<&str>,
) -> Result<bool, ClusterError> {
    for _ in 0..TAKE_OVER_ATTEMPTS {
        let Some(current) = current_owner(nats, streams, device).await? else {
            return Ok(false);
        };
        if current.record != *me {
            return Ok(false);
        }
        if claim_of(nats, streams, device).await?.as_deref() == claim {
            return Ok(true);
        }
        let mut headers = fenced_headers(device, current.epoch);
        headers.insert(async_nats::header::NATS_ROLLUP, "sub");
        let json = ClaimJson {
            client: claim.map(str::to_owned),
        };
        let payload = Bytes::from(simd_json::to_vec(&json).unwrap_or_default());
        match publish(nats, tsn_subject(device, CLAIM_KIND), headers, payload).await {
            Ok(_) => return Ok(true),
            Err(ClusterError::WrongLastSequence) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ClusterError::WrongLastSequence)
}

/// The client id whose claim on `device` the cluster holds, if any.
pub async fn claim_of(
    nats: &Nats,
    streams: &OwnershipStreams,
    device: &DeviceKey,
) -> Result<Option<String>, ClusterError> {
    let last = last_on_subject(
        &streams.ownership,
        &tsn_subject(device, CLAIM_KIND),
        nats.timeout,
    )
    .await?;
    Ok(last.and_then(|(_, headers, payload)| {
        if is_marker(&headers) {
            return None;
        }
        let mut buf = payload.to_vec();
        simd_json::serde::from_slice::<ClaimJson>(&mut buf)
            .ok()?
            .client
    }))
}

/// Takes the tsn over for `me` (a device just connected to this node, PROTOCOL.md §12):
/// reads the owner, appends a record fenced on it, and reads again if another node won
/// the race. The epoch this node owns the tsn at.
pub async fn take_over_tsn(
    nats: &Nats,
    streams: &OwnershipStreams,
    device: &DeviceKey,
    me: &OwnershipRecord,
) -> Result<Epoch, ClusterError> {
    take_over_tsn_from(nats, streams, device, me)
        .await
        .map(|(epoch, _)| epoch)
}

/// [`take_over_tsn`], also returning the owner it took the tsn from (the last one it read
/// before its write went through; `None` if there was none, or if it was already `me`).
pub async fn take_over_tsn_from(
    nats: &Nats,
    streams: &OwnershipStreams,
    device: &DeviceKey,
    me: &OwnershipRecord,
) -> Result<(Epoch, Option<Ownership>), ClusterError> {
    for _ in 0..TAKE_OVER_ATTEMPTS {
        let current = current_owner(nats, streams, device).await?;
        let expected = match take_over(current.as_ref(), me) {
            TakeOver::AlreadyMine { epoch } => return Ok((epoch, None)),
            TakeOver::Write { expected } => expected,
        };
        // A record that does not decode still has a sequence: fence on the subject's
        // last sequence, whatever it holds.
        let expected = match (current.as_ref(), expected) {
            (None, _) => {
                last_on_subject(&streams.ownership, &ownership_subject(device), nats.timeout)
                    .await?
                    .map_or(Epoch::NONE, |(sequence, _, _)| Epoch::new(sequence))
            }
            (Some(_), expected) => expected,
        };
        match append_ownership(nats, device, me, expected).await {
            Ok(epoch) => return Ok((epoch, current)),
            Err(ClusterError::WrongLastSequence) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ClusterError::WrongLastSequence)
}

/// Appends `payload` on `posrelay.tsn.<domain>.<serial>.<kind>`, fenced on `epoch`: the
/// server stores it only if `epoch` is still the last sequence of the tsn's ownership
/// subject; otherwise [`ClusterError::WrongLastSequence`] (this node is a stale owner).
pub async fn append_fenced(
    nats: &Nats,
    device: &DeviceKey,
    kind: &str,
    epoch: Epoch,
    payload: Bytes,
) -> Result<u64, ClusterError> {
    publish(
        nats,
        tsn_subject(device, kind),
        fenced_headers(device, epoch),
        payload,
    )
    .await
}

/// The headers that fence a write acting for `device` on `epoch`: the server stores it
/// only while `epoch` is the last sequence of the tsn's ownership subject.
pub(crate) fn fenced_headers(device: &DeviceKey, epoch: Epoch) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        epoch.sequence().to_string(),
    );
    headers.insert(
        "Nats-Expected-Last-Subject-Sequence-Subject",
        ownership_subject(device),
    );
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing::{on, ownership_record as record, with_streams};
    use crate::ids::{DomainName, Serial};

    #[test]
    fn a_take_over_bumps_the_epoch_and_the_server_fences_the_old_owner() {
        let (_cluster, bridge, streams) = with_streams();
        let device = DeviceKey {
            domain: DomainName::new("acme.com").unwrap(),
            serial: Serial::new("1001").unwrap(),
        };
        let (a, b) = (record("a", 1), record("b", 2));
        let call = |me: OwnershipRecord| {
            let (streams, device) = (streams.clone(), device.clone());
            on(&bridge, move |nats| async move {
                take_over_tsn(&nats, &streams, &device, &me).await
            })
        };
        let fenced = |epoch: Epoch, payload: &'static str| {
            let device = device.clone();
            on(&bridge, move |nats| async move {
                append_fenced(&nats, &device, "queue", epoch, Bytes::from(payload)).await
            })
        };
        let owner = || {
            let (streams, device) = (streams.clone(), device.clone());
            on(&bridge, move |nats| async move {
                current_owner(&nats, &streams, &device).await
            })
            .unwrap()
        };

        // The device connects to node a: a owns the tsn at e1 and may act for it.
        let e1 = call(a.clone()).unwrap();
        assert!(e1.is_newer_than(Epoch::NONE));
        assert_eq!(
            owner(),
            Some(Ownership {
                epoch: e1,
                record: a.clone()
            })
        );
        fenced(e1, "from a, while owner").unwrap();
        // Reconnecting to the same node writes nothing.
        assert_eq!(call(a.clone()).unwrap(), e1);

        // The device moves to node b: the epoch grows.
        let e2 = call(b.clone()).unwrap();
        assert!(e2.is_newer_than(e1));
        assert_eq!(
            owner(),
            Some(Ownership {
                epoch: e2,
                record: b.clone()
            })
        );

        // a, stale, still believes it owns the tsn at e1: the server refuses its writes.
        assert_eq!(
            fenced(e1, "from a, stale"),
            Err(ClusterError::WrongLastSequence)
        );
        let (d, stale) = (device.clone(), a.clone());
        assert_eq!(
            on(&bridge, move |nats| async move {
                append_ownership(&nats, &d, &stale, e1).await
            }),
            Err(ClusterError::WrongLastSequence)
        );
        // b's writes go through, and do not move the epoch.
        fenced(e2, "from b").unwrap();
        fenced(e2, "from b again").unwrap();
        assert_eq!(owner().unwrap().epoch, e2);

        // Two nodes racing to take over from the same epoch: the server lets one through.
        let race = |me: OwnershipRecord| {
            let d = device.clone();
            bridge
                .handle()
                .call(move |nats| async move { append_ownership(&nats, &d, &me, e2).await })
        };
        let (ra, rc) = (race(a.clone()), race(record("c", 3)));
        let results = [ra.wait().unwrap(), rc.wait().unwrap()];
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "{results:?}"
        );
        assert!(results.contains(&Err(ClusterError::WrongLastSequence)));

        // Each tsn keeps its last record only (rollup): e1's record is gone.
        let own = streams.ownership.clone();
        let gone = on(&bridge, move |nats| async move {
            let _ = nats;
            own.get_raw_message(e1.sequence()).await.is_err()
        });
        assert!(gone);

        // §12 "claims stay": the owner records the claim (fenced on its epoch, which does
        // not move: the ownership record is written only when the device arrives); a node
        // that does not own the tsn records nothing; the next owner reads it.
        let winner = owner().unwrap();
        let claim = |me: OwnershipRecord, holder: Option<&'static str>| {
            let (streams, d) = (streams.clone(), device.clone());
            on(&bridge, move |nats| async move {
                record_claim(&nats, &streams, &d, &me, holder).await
            })
        };
        let read = || {
            let (streams, d) = (streams.clone(), device.clone());
            on(&bridge, move |nats| async move {
                claim_of(&nats, &streams, &d).await
            })
            .unwrap()
        };
        assert_eq!(read(), None);
        assert_eq!(claim(winner.record.clone(), Some("pos-1")), Ok(true));
        assert_eq!(read().as_deref(), Some("pos-1"));
        assert_eq!(owner().unwrap().epoch, winner.epoch, "the epoch stays");
        assert_eq!(claim(record("z", 9), None), Ok(false), "not the owner");
        assert_eq!(read().as_deref(), Some("pos-1"));
        let (st, d) = (streams.clone(), device.clone());
        on(&bridge, move |nats| async move {
            take_over_tsn(&nats, &st, &d, &record("y", 8)).await
        })
        .unwrap();
        assert_eq!(read().as_deref(), Some("pos-1"), "the next owner finds it");
        assert_eq!(
            claim(winner.record, None),
            Ok(false),
            "the old owner cannot release it any more"
        );
        assert_eq!(claim(record("y", 8), None), Ok(true), "released");
        assert_eq!(read(), None);
    }
}
