//! The body of the `control_messages` fuzz target (wired from `fuzz/`), kept here so that
//! it compiles and is tested with the crate: the JSON a peer sends before the relay trusts
//! it — a control-channel request (§4), a registration (§2), a login message (§7b).

use simd_json::prelude::*;

use super::error::ControlErrorCode;
use super::login::{LoginGate, LoginRefused, LoginRequest, LoginState, MAX_LOGIN_MESSAGE};
use super::register::RegisterRequest;
use super::request::ControlRequest;
use super::request_id::MAX_REQUEST_ID;
use super::{event, MAX_CONTROL_MESSAGE};
use crate::proto::MessageKind;

/// The longest `bad_request` answer to any input: a quoted type or field is cut to
/// `QUOTE_LIMIT`, a parser's reason is short, and a request id is at most
/// `MAX_REQUEST_ID` bytes, each escaped to at most 6.
const MAX_REFUSAL_REPLY: usize = 1024 + 6 * MAX_REQUEST_ID;

/// Feeds `data` to the three parsers and asserts their invariants: no panic; the same
/// answer twice; every refusal of a control request or registration is `bad_request`,
/// its answer valid JSON within [`MAX_REFUSAL_REPLY`] bytes that echoes the `request_id`
/// it read; every accepted request's fields survive the answer's JSON escaping; a login is
/// refused when binary or over 4 KiB, accepted only with a non-empty token, and its gate
/// never lets the relay speak before it; secrets and tokens never show in `Debug`.
///
/// `data` is the message for all three; for the login, a leading `0x01` byte makes it a
/// binary message of the bytes that follow (a text one otherwise).
#[doc(hidden)]
pub fn fuzz_untrusted_json(data: &[u8]) {
    control_request(data);
    registration(data);
    match data.split_first() {
        Some((1, rest)) => login(MessageKind::Binary, rest),
        _ => login(MessageKind::Text, data),
    }
}

fn control_request(data: &[u8]) {
    let first = ControlRequest::parse(&mut data.to_vec());
    assert_eq!(
        first,
        ControlRequest::parse(&mut data.to_vec()),
        "not deterministic"
    );
    match first {
        Ok(request) => {
            assert!(data.len() <= MAX_CONTROL_MESSAGE);
            let rid = request.request_id();
            if let Some(rid) = rid {
                assert!(rid.as_str().len() <= MAX_REQUEST_ID);
            }
            // Whatever the peer put in request_id and tsn comes back out of our JSON intact.
            let tsn = match &request {
                ControlRequest::Claim { tsn, .. } | ControlRequest::Release { tsn, .. } => {
                    Some(tsn.as_str())
                }
                ControlRequest::Devices { .. } => None,
            };
            let mut reply = event::error(rid, ControlErrorCode::NotFound, tsn.unwrap_or(""));
            let value = simd_json::to_borrowed_value(&mut reply).expect("our reply is JSON");
            assert_eq!(
                value.get("request_id").and_then(|v| v.as_str()),
                rid.map(|r| r.as_str())
            );
            assert_eq!(
                value.get("message").and_then(|v| v.as_str()),
                Some(tsn.unwrap_or(""))
            );
        }
        Err(rejected) => {
            assert_eq!(rejected.code(), ControlErrorCode::BadRequest);
            if data.len() > MAX_CONTROL_MESSAGE {
                assert!(matches!(
                    rejected.error,
                    super::ControlError::TooLarge { .. }
                ));
            }
            let mut reply = rejected.reply();
            assert!(reply.len() <= MAX_REFUSAL_REPLY, "reply of {}", reply.len());
            let value = simd_json::to_borrowed_value(&mut reply).expect("our reply is JSON");
            assert_eq!(value.get("type").and_then(|v| v.as_str()), Some("error"));
            assert_eq!(
                value.get("code").and_then(|v| v.as_str()),
                Some("bad_request")
            );
            assert_eq!(
                value.get("request_id").and_then(|v| v.as_str()),
                rejected.request_id.as_ref().map(|r| r.as_str())
            );
        }
    }
}

fn registration(data: &[u8]) {
    let first = RegisterRequest::parse(&mut data.to_vec());
    assert_eq!(
        first,
        RegisterRequest::parse(&mut data.to_vec()),
        "not deterministic"
    );
    match first {
        Ok(request) => {
            assert!(data.len() <= MAX_CONTROL_MESSAGE);
            // The secret does not show in `Debug`: another secret prints the same. (Looking
            // for the secret's text in the output is no test: a secret may spell a field name.)
            let mut other = request.clone();
            other.client_secret =
                crate::auth::ClientSecret::new(format!("{}x", request.client_secret.expose()));
            assert_eq!(
                format!("{request:?}"),
                format!("{other:?}"),
                "secret in Debug"
            );
        }
        Err(error) => {
            assert_eq!(error.code(), ControlErrorCode::BadRequest);
            let mut reply = super::register::error_reply(error.code(), &error.to_string());
            assert!(reply.len() <= MAX_REFUSAL_REPLY, "reply of {}", reply.len());
            simd_json::to_borrowed_value(&mut reply).expect("our reply is JSON");
        }
    }
}

fn login(kind: MessageKind, data: &[u8]) {
    let first = LoginRequest::parse(kind, &mut data.to_vec());
    assert_eq!(
        first,
        LoginRequest::parse(kind, &mut data.to_vec()),
        "not deterministic"
    );
    match &first {
        Ok(request) => {
            assert_eq!(kind, MessageKind::Text);
            assert!(data.len() <= MAX_LOGIN_MESSAGE);
            assert!(!request.token.expose().is_empty());
            // The token is its only field and never shows in `Debug`.
            assert_eq!(
                format!("{request:?}"),
                "LoginRequest { token: LoginToken(<redacted>) }",
                "token in Debug"
            );
        }
        Err(LoginRefused::Binary) => assert_eq!(kind, MessageKind::Binary),
        Err(LoginRefused::TooLarge { len, max }) => {
            assert_eq!((*len, *max), (data.len(), MAX_LOGIN_MESSAGE));
            assert!(*len > MAX_LOGIN_MESSAGE);
        }
        Err(_) => assert!(kind == MessageKind::Text && data.len() <= MAX_LOGIN_MESSAGE),
    }
    // The gate agrees with the parser and stays silent either way until logged in.
    let at = std::time::Instant::now();
    let timeout = std::time::Duration::from_secs(10);
    let mut gate = LoginGate::new(at, timeout);
    let gated = gate.handle_first_message(kind, &mut data.to_vec());
    assert_eq!(gated.is_ok(), first.is_ok());
    let expected = if first.is_ok() {
        LoginState::Verifying
    } else {
        LoginState::Refused
    };
    assert_eq!(gate.state(), expected);
    assert!(!gate.may_send());
    assert_eq!(gate.poll_close_at(), Some(at + timeout));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_on_the_seed_corpus_shapes() {
        for sample in [
            &b""[..],
            br#"{"type":"claim","tsn":"12345678","request_id":"r1"}"#,
            br#"{"type":"devices","request_id":"a\"b\\c\u0000"}"#,
            br#"{"type":"register","tsn":"1","client_id":"c","client_secret":"s3cr3t-s3cr3t"}"#,
            br#"{"type":"register","tsn":"1","custom_registration_data":"{\"client_id\":\"c\",\"client_secret\":\"k\"}"}"#,
            br#"{"type":"register","tsn":"1","client_id":"c","custom_registration_data":{"client_secret":"k"}}"#,
            br#"{"type":"login","token":"eyJhbGciOiJIUzI1NiJ9.e30.sig"}"#,
            br#"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["#,
            b"\xff\xfe{\"type\":\"login\"}",
        ] {
            fuzz_untrusted_json(sample);
        }
        let mut big = br#"{"type":"login","token":"t"}"#.to_vec();
        big.resize(MAX_LOGIN_MESSAGE + 1, b' ');
        fuzz_untrusted_json(&big);
        let long_id = format!(
            r#"{{"type":"devices","request_id":"{}"}}"#,
            "\\u0001".repeat(256)
        );
        fuzz_untrusted_json(long_id.as_bytes());
        fuzz_untrusted_json(&vec![b'{'; MAX_CONTROL_MESSAGE + 10]);
    }

    /// A secret or token that happens to spell part of the `Debug` output's own words
    /// (a field or type name) is not a leak: CI's fuzzer found such an input.
    #[test]
    fn a_secret_that_spells_a_field_name_is_not_a_leak() {
        fuzz_untrusted_json(
            br#"{"type":"register","tsn":"1","client_id":"c","client_secret":"TopLevel"}"#,
        );
        fuzz_untrusted_json(
            br#"{"type":"register","tsn":"1","client_id":"c","client_secret":"RegisterRequest"}"#,
        );
        fuzz_untrusted_json(br#"{"type":"login","token":"LoginRequest"}"#);
    }
}
