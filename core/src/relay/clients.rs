//! `ClientHub`: the control channels of the clients this shard is home to (PROTOCOL.md §4).
//!
//! All control channels of one client live on its home shard ([`super::client_shard`]).
//! The hub counts them, tells every shard when a client's count goes 0 ↔ >0 (claim grace),
//! fans events out to every channel, and keeps `undelivered` reports that find no channel
//! open, summed per tsn, until the client opens one.
//!
//! A `device_status` that finds no channel open is dropped: it is a snapshot, and a POS
//! that comes back learns the state from `claim` or `devices`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use crate::ids::{ClientKey, Serial};

use super::action::ClientEventKind;
use super::close;
use super::conn::ConnId;
use super::queue::Count;

/// An output of [`ClientHub`], drained with `poll_action`.
#[must_use = "an action is work the caller must carry out"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubAction {
    /// The client's control-channel count went 0 → >0 (`online`) or back to 0: broadcast
    /// to every shard's [`super::DeviceShard::handle_client_presence`].
    Presence {
        /// Which client.
        client: ClientKey,
        /// Whether it now has a control channel.
        online: bool,
    },
    /// Send this event on that control channel ([`ClientEventKind::to_json`]).
    SendEvent {
        /// The control channel.
        conn: ConnId,
        /// The event.
        event: ClientEventKind,
    },
    /// Close that control channel with this code (§8).
    CloseConn {
        /// Which.
        conn: ConnId,
        /// The close code.
        code: u16,
        /// The close reason.
        reason: &'static str,
    },
}

/// The control-channel state of the clients whose home is this shard.
#[derive(Debug, Default)]
pub struct ClientHub {
    channels: HashMap<ClientKey, BTreeSet<ConnId>>,
    pending: HashMap<ClientKey, BTreeMap<Serial, Count>>,
    actions: VecDeque<HubAction>,
}

impl ClientHub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// A control channel of `client` opened (token already checked).
    ///
    /// The first one announces the client present, then receives the `undelivered` reports
    /// kept while no channel was open (§4), one per tsn, before any other event.
    pub fn handle_control_opened(&mut self, client: &ClientKey, conn: ConnId, _now: Instant) {
        let set = self.channels.entry(client.clone()).or_default();
        if !set.insert(conn) || set.len() > 1 {
            return;
        }
        self.actions.push_back(HubAction::Presence {
            client: client.clone(),
            online: true,
        });
        // §4: "undelivered reports that find no open control channel are kept, summed per
        // tsn, and sent when that client next opens one."
        for (serial, count) in self.pending.remove(client).unwrap_or_default() {
            self.actions.push_back(HubAction::SendEvent {
                conn,
                event: ClientEventKind::Undelivered {
                    serial,
                    frames: count.frames,
                    bytes: count.bytes,
                },
            });
        }
    }

    /// A control channel of `client` closed; the last one announces the client absent.
    pub fn handle_control_closed(&mut self, client: &ClientKey, conn: ConnId, _now: Instant) {
        let Some(set) = self.channels.get_mut(client) else {
            return;
        };
        if !set.remove(&conn) || !set.is_empty() {
            return;
        }
        self.channels.remove(client);
        self.actions.push_back(HubAction::Presence {
            client: client.clone(),
            online: false,
        });
    }

    /// An event for `client` from a device's owning shard: sent on every open channel of the
    /// client (§4: "events go to each"); kept (undelivered) or dropped (device_status) when
    /// none is open.
    pub fn handle_client_event(
        &mut self,
        client: &ClientKey,
        event: ClientEventKind,
        _now: Instant,
    ) {
        if self.send_to_channels(client, &event) {
            return;
        }
        if let ClientEventKind::Undelivered {
            serial,
            frames,
            bytes,
        } = event
        {
            self.pending
                .entry(client.clone())
                .or_default()
                .entry(serial)
                .or_default()
                .merge(Count { frames, bytes });
        }
    }

    /// §12: an event for `client` from another node: sent on every open channel of the
    /// client here; nothing is kept when none is open (the node that owns the device
    /// keeps the client's undelivered reports).
    pub fn handle_remote_client_event(
        &mut self,
        client: &ClientKey,
        event: ClientEventKind,
        _now: Instant,
    ) {
        let _sent = self.send_to_channels(client, &event);
    }

    /// Sends `event` on every open channel of `client`; `false` if it has none.
    fn send_to_channels(&mut self, client: &ClientKey, event: &ClientEventKind) -> bool {
        let Some(set) = self.channels.get(client) else {
            return false;
        };
        for &conn in set {
            self.actions.push_back(HubAction::SendEvent {
                conn,
                event: event.clone(),
            });
        }
        true
    }

    /// §9: the client was deleted. Its channels are closed (1008) and its kept reports
    /// dropped. No `Presence` follows: every shard hears of the deletion itself.
    pub fn handle_client_deleted(&mut self, client: &ClientKey) {
        self.pending.remove(client);
        for conn in self.channels.remove(client).unwrap_or_default() {
            self.actions.push_back(HubAction::CloseConn {
                conn,
                code: close::POLICY,
                reason: "client deleted",
            });
        }
    }

    /// §6 shutdown: closes every control channel with 1001. Call it once every shard's
    /// shutdown reports have been handed to [`Self::handle_client_event`], so that
    /// "undelivered reports reach each control channel before its 1001". Reports kept for
    /// clients without a channel are dropped (the process is exiting) and their number
    /// returned, for the log.
    pub fn handle_shutdown(&mut self) -> usize {
        let lost = self.pending.values().map(BTreeMap::len).sum();
        self.pending.clear();
        let mut conns: Vec<ConnId> = self.channels.drain().flat_map(|(_, set)| set).collect();
        conns.sort();
        for conn in conns {
            self.actions.push_back(HubAction::CloseConn {
                conn,
                code: close::GOING_AWAY,
                reason: "relay shutting down",
            });
        }
        lost
    }

    /// The next output, in the order produced.
    pub fn poll_action(&mut self) -> Option<HubAction> {
        self.actions.pop_front()
    }

    /// The clients with at least one control channel open here.
    pub fn clients_present(&self) -> Vec<ClientKey> {
        self.channels
            .iter()
            .filter(|(_, conns)| !conns.is_empty())
            .map(|(client, _)| client.clone())
            .collect()
    }

    /// How many control channels `client` has here.
    pub fn channel_count(&self, client: &ClientKey) -> usize {
        self.channels.get(client).map_or(0, BTreeSet::len)
    }
}
