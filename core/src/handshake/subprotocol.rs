//! `Sec-WebSocket-Protocol` negotiation (RFC 6455 §4.2.2 item 5.5, §11.3.4) and
//! the `bearer.<token>` entry of browsers (PROTOCOL.md §7).

use super::error::HandshakeError;
use super::headers::{is_token, Headers};

/// Prefix of the offered entry that carries an access token (PROTOCOL.md §7).
pub const BEARER_PREFIX: &str = "bearer.";

/// The subprotocol the relay always accepts, offered by browsers that have no
/// application protocol of their own (PROTOCOL.md §7).
pub const POSRELAY_PROTOCOL: &str = "posrelay";

/// How the relay picks the subprotocol it answers with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SubprotocolPolicy {
    /// Select the first offered entry that is not `bearer.*` (the default).
    #[default]
    FirstOffered,
    /// Select the first offered entry (in the client's order) that is in this
    /// list or is `posrelay` (`--subprotocols a,b`).
    OneOf(Vec<String>),
}

/// The subprotocols a client offered, in its order of preference.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OfferedProtocols {
    entries: Vec<String>,
}

impl OfferedProtocols {
    /// Reads every `Sec-WebSocket-Protocol` line (RFC 6455 §11.3.4: a
    /// comma-separated list, possibly over several lines). Entries are trimmed;
    /// empty ones are skipped (RFC 9110 §5.6.1); each must be a token (RFC 6455
    /// §4.1: "elements that comprise this value MUST be non-empty strings with
    /// characters [...] that conform to the requirements for elements that
    /// comprise this value as defined by RFC 2616", i.e. tokens).
    pub fn from_headers(headers: &Headers) -> Result<OfferedProtocols, HandshakeError> {
        let mut entries = Vec::new();
        for entry in headers.list("sec-websocket-protocol") {
            if !is_token(entry) {
                return Err(HandshakeError::InvalidSubprotocol {
                    value: entry.to_owned(),
                });
            }
            entries.push(entry.to_owned());
        }
        Ok(OfferedProtocols { entries })
    }

    /// Wraps entries already parsed (for example `UpgradeRequest::protocols`).
    pub fn new(entries: Vec<String>) -> OfferedProtocols {
        OfferedProtocols { entries }
    }

    /// Every offered entry, bearer entry included, in order.
    pub fn entries(&self) -> &[String] {
        &self.entries
    }

    /// The token of the first `bearer.<token>` entry (prefix compared
    /// ASCII case-insensitively, like the `Bearer` auth scheme), if non-empty.
    pub fn bearer_token(&self) -> Option<&str> {
        self.entries.iter().find_map(|e| bearer_token_of(e))
    }

    /// The subprotocol to echo in the 101 answer, if any.
    ///
    /// RFC 6455 §4.2.2 item 5.5: the server selects one of the offered values
    /// (or none). A `bearer.*` entry is never selected: echoing it would send the
    /// token back in clear (PROTOCOL.md §7). Values compare case-sensitively.
    pub fn select(&self, policy: &SubprotocolPolicy) -> Option<String> {
        let mut candidates = self.entries.iter().filter(|e| !is_bearer(e));
        match policy {
            SubprotocolPolicy::FirstOffered => candidates.next().cloned(),
            SubprotocolPolicy::OneOf(allowed) => candidates
                .find(|e| *e == POSRELAY_PROTOCOL || allowed.iter().any(|a| a == *e))
                .cloned(),
        }
    }

    /// The subprotocol to echo on a POS session (PROTOCOL.md §5, §5a): like
    /// [`Self::select`], except that `posrelay.reliable.v1`, when offered, is selected
    /// "before any other entry offered with it" (§11), whatever the policy. The io layer
    /// then runs the session as a reliable one ([`crate::reliable`]).
    pub fn select_for_session(&self, policy: &SubprotocolPolicy) -> Option<String> {
        if self.offers_reliable() {
            return Some(crate::reliable::SUBPROTOCOL.to_owned());
        }
        self.select(policy)
    }

    /// Whether `posrelay.reliable.v1` is among the offered entries (§11).
    pub fn offers_reliable(&self) -> bool {
        self.entries
            .iter()
            .any(|e| e == crate::reliable::SUBPROTOCOL)
    }
}

fn is_bearer(entry: &str) -> bool {
    entry
        .get(..BEARER_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(BEARER_PREFIX))
}

fn bearer_token_of(entry: &str) -> Option<&str> {
    if !is_bearer(entry) {
        return None;
    }
    let token = &entry[BEARER_PREFIX.len()..];
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered(lines: &[&str]) -> OfferedProtocols {
        let mut h = Headers::new();
        for l in lines {
            h.push("Sec-WebSocket-Protocol", *l);
        }
        OfferedProtocols::from_headers(&h).unwrap()
    }

    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig-_A";

    #[test]
    fn parses_lists_over_several_lines() {
        let o = offered(&["sci , bearer.abc", "", "posrelay"]);
        assert_eq!(o.entries(), ["sci", "bearer.abc", "posrelay"]);
        assert!(offered(&[]).entries().is_empty());
    }

    #[test]
    fn invalid_entries_rejected() {
        let mut h = Headers::new();
        h.push("Sec-WebSocket-Protocol", "sci, a b");
        let err = OfferedProtocols::from_headers(&h).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::InvalidSubprotocol {
                value: "a b".into()
            }
        );
        assert_eq!(err.status().0, 400);
    }

    #[test]
    fn bearer_token_found_and_never_selected() {
        let o = offered(&[&format!("bearer.{JWT}, sci")]);
        assert_eq!(o.bearer_token(), Some(JWT));
        assert_eq!(
            o.select(&SubprotocolPolicy::FirstOffered).as_deref(),
            Some("sci")
        );
        let only_bearer = offered(&[&format!("Bearer.{JWT}")]);
        assert_eq!(only_bearer.bearer_token(), Some(JWT));
        assert_eq!(only_bearer.select(&SubprotocolPolicy::FirstOffered), None);
        let policy = SubprotocolPolicy::OneOf(vec![format!("bearer.{JWT}")]);
        assert_eq!(only_bearer.select(&policy), None);
        assert_eq!(offered(&["bearer."]).bearer_token(), None);
        assert_eq!(offered(&["sci"]).bearer_token(), None);
    }

    #[test]
    fn first_offered_policy() {
        let o = offered(&["bearer.x, posrelay, sci"]);
        assert_eq!(
            o.select(&SubprotocolPolicy::FirstOffered).as_deref(),
            Some("posrelay")
        );
        assert_eq!(offered(&[]).select(&SubprotocolPolicy::FirstOffered), None);
    }

    #[test]
    fn a_session_selects_the_reliable_subprotocol_before_any_other() {
        let reliable = Some("posrelay.reliable.v1");
        for policy in [
            SubprotocolPolicy::FirstOffered,
            SubprotocolPolicy::OneOf(vec!["sci".into()]),
            SubprotocolPolicy::OneOf(vec![]),
        ] {
            let o = offered(&["bearer.x, posrelay, posrelay.reliable.v1"]);
            assert!(o.offers_reliable());
            assert_eq!(o.select_for_session(&policy).as_deref(), reliable);
            // Without it, a session negotiates as before.
            let plain = offered(&["bearer.x, posrelay"]);
            assert!(!plain.offers_reliable());
            assert_eq!(
                plain.select_for_session(&policy),
                plain.select(&policy),
                "{policy:?}"
            );
        }
        // Exact and case-sensitive, like every subprotocol value.
        assert!(!offered(&["posrelay.Reliable.v1"]).offers_reliable());
        assert!(!offered(&["posrelay.reliable.v2"]).offers_reliable());
    }

    #[test]
    fn one_of_policy_follows_client_order_and_always_allows_posrelay() {
        let policy = SubprotocolPolicy::OneOf(vec!["b".into(), "a".into()]);
        assert_eq!(offered(&["x, a, b"]).select(&policy).as_deref(), Some("a"));
        assert_eq!(
            offered(&["x, posrelay"]).select(&policy).as_deref(),
            Some("posrelay")
        );
        assert_eq!(offered(&["x, y"]).select(&policy), None);
        assert_eq!(offered(&["A"]).select(&policy), None, "case-sensitive");
        let empty = SubprotocolPolicy::OneOf(vec![]);
        assert_eq!(
            offered(&["sci, posrelay"]).select(&empty).as_deref(),
            Some("posrelay")
        );
    }
}
