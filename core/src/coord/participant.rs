//! Who takes part in the conversation, and who is responsible for what (DESIGN.md "Thread
//! per core, sharded by tsn").

use std::fmt;

use crate::ids::{ClientKey, DeviceKey};
use crate::relay::{client_shard, owner_shard, SessionKeyring};

/// One participant: a shard of this process, `0..participants`.
///
/// A node of a cluster (PROTOCOL.md §12) will be one more kind of participant; everything
/// in this module speaks of participants, never of threads or sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Participant(pub usize);

impl fmt::Display for Participant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard {}", self.0)
    }
}

/// Who owns a device and who is home to a client. Pure functions of the key, so every
/// participant computes the same answer without asking anyone.
#[derive(Debug, Clone)]
pub struct Placement {
    keyring: SessionKeyring,
    participants: usize,
}

impl Placement {
    /// `participants` is at least 1 (0 is taken as 1).
    pub fn new(keyring: SessionKeyring, participants: usize) -> Self {
        Self {
            keyring,
            participants: participants.max(1),
        }
    }

    /// How many participants there are.
    pub fn participants(&self) -> usize {
        self.participants
    }

    /// Every participant, in order.
    pub fn all(&self) -> impl Iterator<Item = Participant> {
        (0..self.participants).map(Participant)
    }

    /// The participant that owns `device`: its device connection, POS sessions, claim and
    /// queues live there, so a relayed frame never crosses a core.
    pub fn owner_of(&self, device: &DeviceKey) -> Participant {
        let sid = self.keyring.session_id(device);
        Participant(owner_shard(&sid, self.participants).0)
    }

    /// The participant that is home to `client`: all its control channels live there, and
    /// every event for the client is carried there.
    pub fn home_of(&self, client: &ClientKey) -> Participant {
        Participant(client_shard(client, self.participants).0)
    }
}
