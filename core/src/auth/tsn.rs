//! The tsn a device or a POS names a terminal by: bare serial or `<make>-<model>-<serial>`.
//!
//! PROTOCOL.md §2: "`tsn` may be the bare serial number or the fully qualified form
//! `<make>-<model>-<serial>` (the serial is what follows the last `-`; make and model
//! must match the provisioned device, case-insensitively); both name the same device.
//! Every reply and event names the device by its bare serial."

use crate::ids::{DeviceModelName, Serial};
use crate::tenancy::DeviceRecord;

use super::scope::ScopeError;

/// A parsed tsn as a peer wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsnInput {
    serial: Serial,
    qualifier: Option<(DeviceModelName, DeviceModelName)>,
}

impl TsnInput {
    /// Parses a bare serial (`12345678`) or a qualified tsn (`ingenico-axium-12345678`).
    pub fn parse(input: &str) -> Result<Self, ScopeError> {
        let malformed = |reason: String| ScopeError::MalformedTsn {
            input: input.chars().take(200).collect(),
            reason,
        };
        // PROTOCOL.md §2: the serial is what follows the last '-'.
        let Some((qualifier, serial)) = input.rsplit_once('-') else {
            let serial = Serial::new(input).map_err(|e| malformed(e.to_string()))?;
            return Ok(Self {
                serial,
                qualifier: None,
            });
        };
        let serial = Serial::new(serial).map_err(|e| malformed(e.to_string()))?;
        // Make and model cannot contain '-', so what precedes the serial is exactly two parts.
        let Some((make, model)) = qualifier.split_once('-') else {
            return Err(malformed(
                "a qualified tsn is <make>-<model>-<serial>".to_owned(),
            ));
        };
        let make = DeviceModelName::new(make).map_err(|e| malformed(e.to_string()))?;
        let model = DeviceModelName::new(model).map_err(|e| malformed(e.to_string()))?;
        Ok(Self {
            serial,
            qualifier: Some((make, model)),
        })
    }

    /// The bare serial: the device's key, and the name every reply uses.
    pub fn serial(&self) -> &Serial {
        &self.serial
    }

    /// Whether this tsn names `device`: same serial and, if qualified, same make and model
    /// ignoring ASCII case. A mismatch must be answered like an unknown device.
    pub fn matches(&self, device: &DeviceRecord) -> bool {
        if self.serial != device.serial {
            return false;
        }
        match &self.qualifier {
            None => true,
            Some((make, model)) => {
                make.as_str().eq_ignore_ascii_case(device.make.as_str())
                    && model.as_str().eq_ignore_ascii_case(device.model.as_str())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{DomainName, StoreName};

    fn device() -> DeviceRecord {
        DeviceRecord {
            domain: DomainName::new("acme").unwrap(),
            serial: Serial::new("12345678").unwrap(),
            make: DeviceModelName::new("Ingenico").unwrap(),
            model: DeviceModelName::new("axium").unwrap(),
            store: StoreName::new("s1").unwrap(),
            enabled: true,
            client_cert_sha256: Vec::new(),
        }
    }

    #[test]
    fn bare_serial() {
        let tsn = TsnInput::parse("12345678").unwrap();
        assert_eq!(tsn.serial().as_str(), "12345678");
        assert!(tsn.matches(&device()));
        assert!(!TsnInput::parse("12345679").unwrap().matches(&device()));
    }

    #[test]
    fn qualified_matches_case_insensitively() {
        let tsn = TsnInput::parse("INGENICO-Axium-12345678").unwrap();
        assert_eq!(tsn.serial().as_str(), "12345678");
        assert!(tsn.matches(&device()));
    }

    #[test]
    fn qualified_with_wrong_make_or_model_does_not_match() {
        assert!(!TsnInput::parse("verifone-axium-12345678")
            .unwrap()
            .matches(&device()));
        assert!(!TsnInput::parse("ingenico-move5000-12345678")
            .unwrap()
            .matches(&device()));
    }

    #[test]
    fn malformed_inputs_are_refused() {
        for bad in [
            "",
            "-",
            "ingenico-axium-",
            "axium-12345678",
            "a-b-c-12345678",
            "ingenico--12345678",
            "12 34",
            "ingenico-axium-1234/5678",
        ] {
            assert!(
                matches!(TsnInput::parse(bad), Err(ScopeError::MalformedTsn { .. })),
                "{bad:?} should be refused"
            );
        }
        // Spaces are allowed in make and model ("Move 5000").
        assert!(TsnInput::parse("ingenico-move 5000-1").is_ok());
    }
}
