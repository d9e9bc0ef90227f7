#![no_main]
//! The HTTP/1.1 request head parser and the RFC 6455 upgrade checks over arbitrary bytes.
//! Invariants (asserted in `fuzz_request`): no panic, consumed <= input, a parsed head ends
//! inside the input, errors carry 400/426/431, a bearer entry is never selected.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    posrelay_core::handshake::fuzzing::fuzz_request(data);
});
