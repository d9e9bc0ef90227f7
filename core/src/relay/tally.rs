//! Undelivered frames summed per (client, device), so one report goes out per pair.

use std::collections::BTreeMap;

use crate::ids::{ClientKey, Serial};

use super::action::ClientEventKind;
use super::queue::Count;

/// Sums of undelivered messages per (client, serial), in a stable order.
#[derive(Debug, Default)]
pub(crate) struct UndeliveredTally(BTreeMap<(ClientKey, Serial), Count>);

impl UndeliveredTally {
    /// Adds `count` for (client, serial); empty counts are ignored.
    pub(crate) fn add(&mut self, client: &ClientKey, serial: &Serial, count: Count) {
        if count.is_empty() {
            return;
        }
        self.0
            .entry((client.clone(), serial.clone()))
            .or_default()
            .merge(count);
    }

    /// Turns the sums into one `Undelivered` event per (client, serial).
    pub(crate) fn into_events(self) -> impl Iterator<Item = (ClientKey, ClientEventKind)> {
        self.0.into_iter().map(|((client, serial), c)| {
            (
                client,
                ClientEventKind::Undelivered {
                    serial,
                    frames: c.frames,
                    bytes: c.bytes,
                },
            )
        })
    }
}
