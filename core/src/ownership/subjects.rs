//! The NATS subjects of leases and ownership records (names as tokens: `crate::subject`).

use super::NodeId;
use crate::ids::DeviceKey;
use crate::subject::token;

/// Every lease subject (the leases stream's filter).
pub const LEASE_SUBJECTS: &str = "posrelay.lease.*";
/// Every ownership record's subject.
pub const OWNERSHIP_SUBJECTS: &str = "posrelay.own.*.*";
/// Every subject of a write that acts for a tsn and is fenced on its ownership record
/// (same stream as the records, so that the fence can name the record's subject).
pub const TSN_SUBJECTS: &str = "posrelay.tsn.*.*.>";

/// `posrelay.lease.<node>`: the node's lease.
pub fn lease_subject(node: &NodeId) -> String {
    format!("posrelay.lease.{}", node.as_str())
}

/// `posrelay.own.<domain>.<serial>`: the tsn's ownership records; the last one is the owner.
pub fn ownership_subject(device: &DeviceKey) -> String {
    format!(
        "posrelay.own.{}.{}",
        token(device.domain.as_str()),
        token(device.serial.as_str())
    )
}

/// `posrelay.tsn.<domain>.<serial>.<kind>`: a write acting for the tsn (queued frames,
/// reliable-session messages), fenced on [`ownership_subject`]. `kind` is one token.
pub fn tsn_subject(device: &DeviceKey, kind: &str) -> String {
    format!(
        "posrelay.tsn.{}.{}.{}",
        token(device.domain.as_str()),
        token(device.serial.as_str()),
        kind
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{DomainName, Serial};

    #[test]
    fn subjects() {
        let device = DeviceKey {
            domain: DomainName::new("acme.com").unwrap(),
            serial: Serial::new("123").unwrap(),
        };
        assert_eq!(ownership_subject(&device), "posrelay.own.acme=com.123");
        assert_eq!(
            tsn_subject(&device, "queue"),
            "posrelay.tsn.acme=com.123.queue"
        );
        assert_eq!(
            lease_subject(&NodeId::new("a").unwrap()),
            "posrelay.lease.a"
        );
    }
}
