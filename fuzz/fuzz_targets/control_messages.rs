#![no_main]
//! The JSON a peer sends before the relay trusts it: control-channel requests (§4),
//! registrations (§2, with custom_registration_data) and login messages (§7b). Invariants
//! (asserted in `fuzz_untrusted_json`): no panic, deterministic, every refusal is
//! `bad_request` with a bounded JSON answer echoing what it read, accepted fields survive
//! the answers' escaping, a login is text within 4 KiB with a token and its gate stays
//! silent, secrets and tokens never show in `Debug`.
//!
//! Input layout: the whole input is the message; for the login, a leading 0x01 byte
//! makes it a binary message of the bytes that follow.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    posrelay_core::control::fuzzing::fuzz_untrusted_json(data);
});
