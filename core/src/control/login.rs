//! Login by first message (PROTOCOL.md §7b): a client whose upgrade carried no
//! credentials at all sends `{"type":"login","token":"…"}` as its first message.
//!
//! - [`LoginRequest::parse`]: the message itself — text only, at most
//!   [`MAX_LOGIN_MESSAGE`] bytes, this JSON and nothing else.
//! - [`logged_in`] and [`login_error`]: the relay's two possible answers.
//! - [`LoginGate`]: the rules in time, on a clock passed in. §7b: "the relay answers `101`
//!   and then sends nothing — no data, no ping — until the client's first message", and a
//!   refused login is answered by silence, then 1008 "once the handshake timeout, counted
//!   from the upgrade, has run out; never earlier, so that a refusal looks like any slow
//!   login".

use std::fmt;
use std::time::{Duration, Instant};

use super::error::{ControlError, ControlErrorCode};
use super::json::{parse_object, required_str, JsonWriter};
use crate::proto::MessageKind;

/// §7b: "its first message, which must be a text message of at most 4 KiB".
pub const MAX_LOGIN_MESSAGE: usize = 4 * 1024;

/// §7b / §8: the close code after a refused login (at the deadline) or a login error answer.
pub const CLOSE_AFTER_LOGIN_FAILURE: u16 = 1008;

/// The token a login message carries: an access token (§4, §5, §5a) or a device token (§3).
///
/// Its `Debug` output is redacted: a login token is never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct LoginToken(String);

impl LoginToken {
    /// The token's text, to be verified.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for LoginToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LoginToken(<redacted>)")
    }
}

/// Why a first message is not a login (§7b "Refused"). Every variant is answered the same
/// way — silence, then 1008 at the deadline — and counts as a failed login (§1); the
/// variant is for the operator's log line and metrics only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginRefused {
    /// A binary first message.
    #[error("the login message must be a text message")]
    Binary,
    /// Over [`MAX_LOGIN_MESSAGE`].
    #[error("the login message is {len} bytes, the limit is {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not `{"type":"login","token":"…"}`.
    #[error("not a login message: {0}")]
    NotLogin(ControlError),
    /// `token` is the empty string.
    #[error("the login token is empty")]
    EmptyToken,
    /// The gate had already taken a first message.
    #[error("a login message after the first message")]
    NotFirst,
}

/// `{"type":"login","token":"<the token that endpoint needs>"}` (§7b).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRequest {
    /// The token to verify as the endpoint's `Authorization: Bearer` would be.
    pub token: LoginToken,
}

impl LoginRequest {
    /// Parses a first message of `kind` (the payload is clobbered: simd-json parses in
    /// place). Unknown extra fields are ignored, as in every other message of the relay.
    pub fn parse(kind: MessageKind, payload: &mut [u8]) -> Result<Self, LoginRefused> {
        if kind != MessageKind::Text {
            return Err(LoginRefused::Binary);
        }
        if payload.len() > MAX_LOGIN_MESSAGE {
            return Err(LoginRefused::TooLarge {
                len: payload.len(),
                max: MAX_LOGIN_MESSAGE,
            });
        }
        let object = parse_object(payload).map_err(LoginRefused::NotLogin)?;
        let kind = required_str(&object, "type").map_err(LoginRefused::NotLogin)?;
        if kind != "login" {
            return Err(LoginRefused::NotLogin(ControlError::unknown_type(kind)));
        }
        let token = required_str(&object, "token").map_err(LoginRefused::NotLogin)?;
        if token.is_empty() {
            return Err(LoginRefused::EmptyToken);
        }
        Ok(Self {
            token: LoginToken(token.to_owned()),
        })
    }
}

/// `{"type":"logged_in","expires_in":<s>}`: the login was accepted (§7b); `expires_in` is
/// the token's remaining lifetime in seconds.
pub fn logged_in(expires_in: u64) -> Vec<u8> {
    JsonWriter::message("logged_in")
        .u64("expires_in", expires_in)
        .finish()
}

/// Why a logged-in client cannot go on, where the upgrade would have been refused for
/// another reason than its credentials (§7b: §5a `404`/`409`/`503`, §5 `403`/`404`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginDenied {
    /// `404`: no such device or session in the client's scope.
    NotFound,
    /// `409`: the device is claimed by another client.
    DeviceBusy,
    /// `503`: the device has no session yet.
    Offline,
    /// `403`: the token is valid, but not for this session.
    Forbidden,
}

impl LoginDenied {
    /// The `code` of the error answer.
    pub fn code(self) -> ControlErrorCode {
        match self {
            Self::NotFound => ControlErrorCode::NotFound,
            Self::DeviceBusy => ControlErrorCode::DeviceBusy,
            Self::Offline => ControlErrorCode::Offline,
            Self::Forbidden => ControlErrorCode::Forbidden,
        }
    }

    /// The HTTP status the upgrade would have answered (§5, §5a).
    pub fn status(self) -> u16 {
        match self {
            Self::NotFound => 404,
            Self::DeviceBusy => 409,
            Self::Offline => 503,
            Self::Forbidden => 403,
        }
    }
}

/// `{"type":"error","code":…,"message":…}`, then the relay closes with
/// [`CLOSE_AFTER_LOGIN_FAILURE`] (§7b).
pub fn login_error(denied: LoginDenied, message: &str) -> Vec<u8> {
    super::event::error(None, denied.code(), message)
}

/// Where a connection that logs in by its first message stands (§7b).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginState {
    /// Waiting for the first message: send nothing.
    AwaitingLogin,
    /// The first message was a login; its token is being verified: send nothing.
    Verifying,
    /// Refused: send nothing, close with 1008 at the deadline.
    Refused,
    /// Accepted: the connection goes on as if the token had come with the upgrade.
    LoggedIn,
}

/// The §7b rules of one connection in time. The io layer feeds it the first message and
/// the outcome of the token check, sends only what [`LoginGate::may_send`] allows, and
/// closes with [`CLOSE_AFTER_LOGIN_FAILURE`] at [`LoginGate::poll_close_at`] — never
/// earlier, whatever happened before.
#[derive(Debug, Clone)]
pub struct LoginGate {
    deadline: Instant,
    state: LoginState,
}

impl LoginGate {
    /// A connection that answered `101` at `upgraded_at`, with the relay's handshake timeout.
    pub fn new(upgraded_at: Instant, handshake_timeout: Duration) -> Self {
        Self {
            deadline: upgraded_at
                .checked_add(handshake_timeout)
                .unwrap_or(upgraded_at),
            state: LoginState::AwaitingLogin,
        }
    }

    /// Where the connection stands.
    pub fn state(&self) -> LoginState {
        self.state
    }

    /// The connection's first message. `Ok`: verify the token, then call
    /// [`handle_accepted`](Self::handle_accepted) or [`handle_rejected`](Self::handle_rejected).
    /// `Err`: the login is refused (count a failed login); wait for the deadline.
    pub fn handle_first_message(
        &mut self,
        kind: MessageKind,
        payload: &mut [u8],
    ) -> Result<LoginToken, LoginRefused> {
        if self.state != LoginState::AwaitingLogin {
            self.state = LoginState::Refused;
            return Err(LoginRefused::NotFirst);
        }
        match LoginRequest::parse(kind, payload) {
            Ok(request) => {
                self.state = LoginState::Verifying;
                Ok(request.token)
            }
            Err(refused) => {
                self.state = LoginState::Refused;
                Err(refused)
            }
        }
    }

    /// The token verified: the `logged_in` answer to send (the first thing the relay sends).
    #[must_use = "the logged_in answer must be sent before anything else"]
    pub fn handle_accepted(&mut self, expires_in: u64) -> Vec<u8> {
        self.state = LoginState::LoggedIn;
        logged_in(expires_in)
    }

    /// The token did not verify (invalid, expired, of the wrong kind or for another
    /// session): stay silent until the deadline.
    pub fn handle_rejected(&mut self) {
        self.state = LoginState::Refused;
    }

    /// Whether the relay may send anything at all (data, ping, error answer): only once
    /// logged in.
    pub fn may_send(&self) -> bool {
        self.state == LoginState::LoggedIn
    }

    /// When to close with 1008 if the connection has not logged in by then: the upgrade
    /// time plus the handshake timeout, whatever the state; `None` once logged in.
    pub fn poll_close_at(&self) -> Option<Instant> {
        (self.state != LoginState::LoggedIn).then_some(self.deadline)
    }

    /// Whether the connection must be closed (1008) at `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.poll_close_at().is_some_and(|at| now >= at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use simd_json::prelude::*;

    fn parse(kind: MessageKind, text: &str) -> Result<LoginRequest, LoginRefused> {
        LoginRequest::parse(kind, &mut text.as_bytes().to_vec())
    }

    #[test]
    fn parses_the_login_message() {
        let req = parse(
            MessageKind::Text,
            r#"{"type":"login","token":"a.b.c","extra":{"tz":-60}}"#,
        )
        .expect("valid");
        assert_eq!(req.token.expose(), "a.b.c");
        assert!(!format!("{req:?}").contains("a.b.c"), "token is redacted");
    }

    #[test]
    fn refuses_everything_else() {
        assert_eq!(
            parse(MessageKind::Binary, r#"{"type":"login","token":"t"}"#),
            Err(LoginRefused::Binary)
        );
        assert_eq!(
            parse(MessageKind::Text, r#"{"type":"login","token":""}"#),
            Err(LoginRefused::EmptyToken)
        );
        for text in [
            r#"{"type":"login"}"#,
            r#"{"type":"login","token":5}"#,
            r#"{"type":"claim","tsn":"1"}"#,
            // Seed 004's own login shape is not this protocol's.
            r#"{"a":"fd1.session.login","v":{"apikey":"k"}}"#,
            "login t",
            "[]",
            "",
        ] {
            assert!(
                matches!(
                    parse(MessageKind::Text, text),
                    Err(LoginRefused::NotLogin(_))
                ),
                "{text:?}"
            );
        }
    }

    #[test]
    fn four_kib_is_the_limit() {
        let base = r#"{"type":"login","token":"t"}"#;
        let mut fits = base.as_bytes().to_vec();
        fits.resize(MAX_LOGIN_MESSAGE, b' ');
        assert!(LoginRequest::parse(MessageKind::Text, &mut fits).is_ok());
        let mut over = base.as_bytes().to_vec();
        over.resize(MAX_LOGIN_MESSAGE + 1, b' ');
        assert_eq!(
            LoginRequest::parse(MessageKind::Text, &mut over),
            Err(LoginRefused::TooLarge {
                len: MAX_LOGIN_MESSAGE + 1,
                max: MAX_LOGIN_MESSAGE
            })
        );
    }

    #[test]
    fn answers_match_section_7b() {
        assert_eq!(
            logged_in(3600),
            br#"{"type":"logged_in","expires_in":3600}"#
        );
        for (denied, code, status) in [
            (LoginDenied::NotFound, "not_found", 404),
            (LoginDenied::DeviceBusy, "device_busy", 409),
            (LoginDenied::Offline, "offline", 503),
            (LoginDenied::Forbidden, "forbidden", 403),
        ] {
            let mut out = login_error(denied, "why");
            let v = simd_json::to_borrowed_value(&mut out).expect("json");
            assert_eq!(v.get("type").and_then(|x| x.as_str()), Some("error"));
            assert_eq!(v.get("code").and_then(|x| x.as_str()), Some(code));
            assert_eq!(v.get("message").and_then(|x| x.as_str()), Some("why"));
            assert!(v.get("request_id").is_none());
            assert_eq!(denied.status(), status);
        }
    }

    #[test]
    fn gate_is_silent_until_logged_in_and_then_has_no_deadline() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(10);
        let mut gate = LoginGate::new(t0, timeout);
        assert_eq!(gate.state(), LoginState::AwaitingLogin);
        assert!(!gate.may_send(), "not even a ping before the login");
        assert_eq!(gate.poll_close_at(), Some(t0 + timeout));
        let token = gate
            .handle_first_message(
                MessageKind::Text,
                &mut br#"{"type":"login","token":"tok"}"#.to_vec(),
            )
            .expect("a login");
        assert_eq!(token.expose(), "tok");
        assert_eq!(gate.state(), LoginState::Verifying);
        assert!(!gate.may_send());
        let answer = gate.handle_accepted(42);
        assert_eq!(answer, logged_in(42));
        assert!(gate.may_send());
        assert_eq!(gate.poll_close_at(), None);
        assert!(!gate.is_expired(t0 + timeout * 2));
    }

    #[test]
    fn a_refusal_closes_exactly_at_the_deadline_never_earlier() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(10);
        // Refused by its shape, right after the upgrade.
        let mut gate = LoginGate::new(t0, timeout);
        assert_eq!(
            gate.handle_first_message(MessageKind::Binary, &mut b"x".to_vec()),
            Err(LoginRefused::Binary)
        );
        assert_eq!(gate.state(), LoginState::Refused);
        assert!(!gate.may_send());
        assert!(!gate.is_expired(t0 + timeout - Duration::from_millis(1)));
        assert!(gate.is_expired(t0 + timeout));
        // Refused by its token: the same deadline, counted from the upgrade.
        let mut gate = LoginGate::new(t0, timeout);
        gate.handle_first_message(
            MessageKind::Text,
            &mut br#"{"type":"login","token":"bad"}"#.to_vec(),
        )
        .expect("a login");
        gate.handle_rejected();
        assert_eq!(gate.poll_close_at(), Some(t0 + timeout));
        assert!(!gate.may_send());
        // A second first message is refused too.
        assert_eq!(
            gate.handle_first_message(
                MessageKind::Text,
                &mut br#"{"type":"login","token":"t"}"#.to_vec()
            ),
            Err(LoginRefused::NotFirst)
        );
        assert_eq!(gate.state(), LoginState::Refused);
    }
}
