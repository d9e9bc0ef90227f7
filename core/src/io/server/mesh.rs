//! The transport between shards: glommio's `channel_mesh` (one channel per ordered pair
//! of shards, which keeps each pair's messages in order, the one guarantee the
//! coordination layer asks of its transport), plus a local spill queue per destination so
//! that a full channel never blocks a sender and never reorders what it sends.

use super::handover::Handover;
use crate::coord::{CoordMsg, Participant};
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::channels::local_channel::{LocalReceiver, LocalSender};
use glommio::{GlommioError, ResourceType};
use std::cell::Cell;
use std::rc::Rc;

/// What crosses cores: a coordination message, or a connection moving to its owner.
pub(crate) enum ShardMsg {
    /// A connection whose upgrade request named a session or client the receiver owns.
    Handover(Box<Handover>),
    /// The coordination layer's conversation.
    Coord(CoordMsg),
    /// §2a: these client certificates were unpinned (admin API): close the device
    /// connections made with them (1008).
    CertsUnpinned(Vec<crate::tenancy::CertFingerprint>),
    /// §11/§12: a device that arrived from another node brought its reliable claim: the
    /// shard that owns the device restores it (sent before the device's registration, on
    /// the same ordered channel).
    ReliableArrived(Box<crate::reliable::ClaimSnapshot>),
}

/// Messages to one shard that waited for room in its channel, in order.
struct Spill {
    tx: LocalSender<ShardMsg>,
    pending: Cell<usize>,
}

/// This shard's end of the mesh.
pub(crate) struct Mesh {
    index: usize,
    senders: Senders<ShardMsg>,
    spill: Vec<Spill>,
}

impl Mesh {
    /// Wraps the mesh senders; returns the spill queues' receiving ends (one per shard,
    /// this one's unused) for [`Mesh::run_spill`].
    pub fn new(senders: Senders<ShardMsg>) -> (Mesh, Vec<LocalReceiver<ShardMsg>>) {
        let index = senders.peer_id();
        let shards = senders.nr_consumers().max(1);
        let mut spill = Vec::with_capacity(shards);
        let mut spill_rx = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (tx, rx) = glommio::channels::local_channel::new_unbounded();
            spill.push(Spill {
                tx,
                pending: Cell::new(0),
            });
            spill_rx.push(rx);
        }
        (
            Mesh {
                index,
                senders,
                spill,
            },
            spill_rx,
        )
    }

    /// This shard's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// How many shards there are.
    pub fn shards(&self) -> usize {
        self.spill.len()
    }

    /// Sends a coordination message to `to` without waiting.
    pub fn send_coord(&self, to: Participant, msg: CoordMsg) {
        self.send(to.0, ShardMsg::Coord(msg));
    }

    /// Tells every other shard that these client certificates were unpinned.
    pub fn broadcast_unpinned(&self, certs: &[crate::tenancy::CertFingerprint]) {
        for shard in (0..self.shards()).filter(|s| *s != self.index) {
            self.send(shard, ShardMsg::CertsUnpinned(certs.to_vec()));
        }
    }

    /// Sends a reliable claim that arrived with its device to the shard that owns it.
    pub fn send_reliable(&self, shard: usize, snapshot: crate::reliable::ClaimSnapshot) {
        self.send(shard, ShardMsg::ReliableArrived(Box::new(snapshot)));
    }

    /// Sends a message to another shard without waiting. Messages to one shard keep their
    /// order: when the channel is full, this and every later message to that shard wait
    /// in a local spill queue that one task drains in order.
    fn send(&self, shard: usize, msg: ShardMsg) {
        debug_assert_ne!(shard, self.index);
        let Some(spill) = self.spill.get(shard) else {
            tracing::error!(shard, "message for a shard that does not exist");
            return;
        };
        let msg = if spill.pending.get() == 0 {
            match self.senders.try_send_to(shard, msg) {
                Ok(()) => return,
                Err(GlommioError::WouldBlock(ResourceType::Channel(m))) => m,
                Err(_) => {
                    tracing::warn!(shard, "shard channel closed: message not delivered");
                    return;
                }
            }
        } else {
            msg
        };
        spill.pending.set(spill.pending.get() + 1);
        if spill.tx.try_send(msg).is_err() {
            tracing::error!(shard, "spill queue refused a message");
        }
    }

    /// Sends a handover, waiting for room (it carries a socket and must not be lost).
    pub async fn send_handover(&self, shard: usize, handover: Handover) {
        if self
            .senders
            .send_to(shard, ShardMsg::Handover(Box::new(handover)))
            .await
            .is_err()
        {
            tracing::warn!(shard, "handover failed: the target shard is gone");
        }
    }

    /// Drains the spill queue towards `shard`, in order (one task per destination).
    pub async fn run_spill(self: Rc<Self>, shard: usize, rx: LocalReceiver<ShardMsg>) {
        while let Some(msg) = rx.recv().await {
            let _ = self.senders.send_to(shard, msg).await;
            if let Some(spill) = self.spill.get(shard) {
                spill.pending.set(spill.pending.get().saturating_sub(1));
            }
        }
    }
}

/// Spawns one receiving task per peer shard, handing each message to `handle` with the
/// sender's index (per-pair order is kept: one task per pair).
pub(crate) fn spawn_receivers(
    receivers: &mut Receivers<ShardMsg>,
    handle: impl Fn(usize, ShardMsg) + Clone + 'static,
) {
    for (peer, rx) in receivers.streams() {
        let handle = handle.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                handle(peer, msg);
            }
        })
        .detach();
    }
}
