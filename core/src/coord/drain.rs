//! The order of a graceful shutdown (PROTOCOL.md §6): "closes every WebSocket connection
//! with 1001 … forwards or reports what is queued — `undelivered` reports reach each
//! control channel before its 1001".
//!
//! On each participant: POS sessions close first (a frame crossing their close still reaches
//! its device or is reported), then devices; then the participant tells every other one
//! [`super::CoordMsg::DataClosed`]. Its reports travel ahead of that message (per-pair
//! order), so once a participant has heard `DataClosed` from every other one, every report
//! for its control channels has arrived, and only then does it close them (and everything
//! else still open).

use std::collections::BTreeSet;

use super::participant::Participant;

/// Which connections a drain step closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnClass {
    /// §5 POS sessions.
    PosSessions,
    /// §3 device connections.
    Devices,
    /// Every connection still open: control channels, registrations, logins, anything.
    Everything,
}

/// Where a participant's drain stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainPhase {
    /// Not shutting down.
    Serving,
    /// Waiting for this class of connections to be gone.
    Closing(ConnClass),
    /// Data connections closed here; waiting for every other participant's `DataClosed`.
    WaitingForPeers,
    /// Nothing left to do.
    Drained,
}

/// The drain's state on one participant.
#[derive(Debug)]
pub(crate) struct Drain {
    phase: DrainPhase,
    /// Participants whose `DataClosed` arrived (possibly before our own drain started).
    heard: BTreeSet<Participant>,
    others: BTreeSet<Participant>,
}

/// What a drain step asks of the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Close this class now.
    Close(ConnClass),
    /// Tell every other participant `DataClosed`.
    AnnounceDataClosed,
}

impl Drain {
    pub fn new(others: BTreeSet<Participant>) -> Self {
        Self {
            phase: DrainPhase::Serving,
            heard: BTreeSet::new(),
            others,
        }
    }

    pub fn phase(&self) -> &DrainPhase {
        &self.phase
    }

    /// Starts the drain.
    pub fn start(&mut self) -> Vec<Step> {
        if self.phase != DrainPhase::Serving {
            return Vec::new();
        }
        self.phase = DrainPhase::Closing(ConnClass::PosSessions);
        vec![Step::Close(ConnClass::PosSessions)]
    }

    /// No connection of `class` is left.
    pub fn class_closed(&mut self, class: ConnClass) -> Vec<Step> {
        if self.phase != DrainPhase::Closing(class) {
            return Vec::new();
        }
        match class {
            ConnClass::PosSessions => {
                self.phase = DrainPhase::Closing(ConnClass::Devices);
                vec![Step::Close(ConnClass::Devices)]
            }
            ConnClass::Devices => {
                self.phase = DrainPhase::WaitingForPeers;
                let mut steps = vec![Step::AnnounceDataClosed];
                steps.extend(self.maybe_close_everything());
                steps
            }
            ConnClass::Everything => {
                self.phase = DrainPhase::Drained;
                Vec::new()
            }
        }
    }

    /// `from` has closed its data connections.
    pub fn heard_data_closed(&mut self, from: Participant) -> Vec<Step> {
        self.heard.insert(from);
        self.maybe_close_everything()
    }

    /// Time is up: stop waiting for peers (their reports may be lost; the io logs it).
    pub fn give_up_waiting(&mut self) -> Vec<Step> {
        match self.phase {
            DrainPhase::Closing(ConnClass::PosSessions)
            | DrainPhase::Closing(ConnClass::Devices) => {
                let mut steps = vec![Step::AnnounceDataClosed];
                self.phase = DrainPhase::Closing(ConnClass::Everything);
                steps.push(Step::Close(ConnClass::Everything));
                steps
            }
            DrainPhase::WaitingForPeers => {
                self.phase = DrainPhase::Closing(ConnClass::Everything);
                vec![Step::Close(ConnClass::Everything)]
            }
            _ => Vec::new(),
        }
    }

    /// The participants whose `DataClosed` has not arrived.
    pub fn missing(&self) -> usize {
        self.others.difference(&self.heard).count()
    }

    fn maybe_close_everything(&mut self) -> Vec<Step> {
        if self.phase == DrainPhase::WaitingForPeers && self.missing() == 0 {
            self.phase = DrainPhase::Closing(ConnClass::Everything);
            vec![Step::Close(ConnClass::Everything)]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn others(n: usize) -> BTreeSet<Participant> {
        (1..n).map(Participant).collect()
    }

    #[test]
    fn sessions_then_devices_then_peers_then_everything() {
        let mut d = Drain::new(others(3));
        assert_eq!(d.start(), vec![Step::Close(ConnClass::PosSessions)]);
        assert!(d.start().is_empty(), "starting twice does nothing");
        assert!(
            d.class_closed(ConnClass::Devices).is_empty(),
            "out of order"
        );
        assert_eq!(
            d.class_closed(ConnClass::PosSessions),
            vec![Step::Close(ConnClass::Devices)]
        );
        assert_eq!(
            d.class_closed(ConnClass::Devices),
            vec![Step::AnnounceDataClosed]
        );
        assert_eq!(d.phase(), &DrainPhase::WaitingForPeers);
        assert!(d.heard_data_closed(Participant(1)).is_empty());
        assert_eq!(
            d.heard_data_closed(Participant(2)),
            vec![Step::Close(ConnClass::Everything)]
        );
        assert!(d.class_closed(ConnClass::Everything).is_empty());
        assert_eq!(d.phase(), &DrainPhase::Drained);
    }

    #[test]
    fn peers_heard_early_count() {
        let mut d = Drain::new(others(2));
        assert!(
            d.heard_data_closed(Participant(1)).is_empty(),
            "still serving"
        );
        d.start();
        d.class_closed(ConnClass::PosSessions);
        assert_eq!(
            d.class_closed(ConnClass::Devices),
            vec![Step::AnnounceDataClosed, Step::Close(ConnClass::Everything)]
        );
    }

    #[test]
    fn a_single_participant_needs_no_peers() {
        let mut d = Drain::new(others(1));
        d.start();
        d.class_closed(ConnClass::PosSessions);
        assert_eq!(
            d.class_closed(ConnClass::Devices),
            vec![Step::AnnounceDataClosed, Step::Close(ConnClass::Everything)]
        );
    }

    #[test]
    fn giving_up_still_announces_and_closes_everything() {
        let mut d = Drain::new(others(3));
        d.start();
        assert_eq!(
            d.give_up_waiting(),
            vec![Step::AnnounceDataClosed, Step::Close(ConnClass::Everything)]
        );
        assert_eq!(d.missing(), 2);
        let mut w = Drain::new(others(3));
        w.start();
        w.class_closed(ConnClass::PosSessions);
        w.class_closed(ConnClass::Devices);
        assert_eq!(
            w.give_up_waiting(),
            vec![Step::Close(ConnClass::Everything)]
        );
    }
}
