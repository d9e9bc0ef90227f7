//! Control-channel messages (PROTOCOL.md §4), the device registration message (§2), the
//! login message (§7b) and the device-status answers (§10).
//!
//! Everything here is sans-IO: requests are parsed from a byte buffer the caller owns
//! (simd-json parses in place), answers and events are built into `Vec<u8>` ready to be
//! sent as one text message. Nothing here knows about connections, shards or claims:
//! `relay/` decides, `control/` only speaks the JSON.
//!
//! - [`request`]: what a POS sends on its control channel (`claim`, `release`, `devices`).
//! - [`register`]: what a device sends on `device-listener`, and the replies to it.
//! - [`event`]: every relay → POS message of §4.
//! - [`login`]: login by first message (§7b), its answers and its rules in time.
//! - [`device_status`]: the §10 device-status answers (`online`, `last_seen`, `claim`).
//! - [`error`]: why a message was refused, and the wire codes of §2, §4 and §7b.
#![forbid(unsafe_code)]

pub mod device_status;
pub mod error;
pub mod event;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod json;
pub mod login;
pub mod register;
pub mod request;
pub mod request_id;

pub use device_status::{ClaimView, DeviceStatus};
pub use error::{ControlError, ControlErrorCode};
pub use event::DeviceEntry;
pub use login::{LoginDenied, LoginGate, LoginRefused, LoginRequest, LoginState, LoginToken};
pub use register::{CredentialSource, RegisterRequest};
pub use request::{ControlRequest, RequestRejected};
pub use request_id::RequestId;

/// The largest control or registration message the relay parses, in bytes.
///
/// Control messages are a few hundred bytes; anything larger is refused as `bad_request`
/// before it reaches the JSON parser, so a peer cannot make the relay parse (and allocate
/// for) megabytes of JSON.
pub const MAX_CONTROL_MESSAGE: usize = 64 * 1024;
