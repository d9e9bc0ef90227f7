//! posrelay names as NATS subject tokens (and JetStream KV keys, which are subjects).
//!
//! A NATS subject is a list of tokens separated by `.`; a token may not be empty and may
//! not contain `.`, `*`, `>` or whitespace (NATS docs, "Subject-Based Messaging"). KV keys
//! follow the same rules and allow only `[-/_=.a-zA-Z0-9]` (ADR-8). posrelay's names
//! (domains, stores, client ids: letters, digits, `.`, `_`, `-`; serials: letters and
//! digits, see [`crate::ids`]) may contain `.`, so a name is written as one token with
//! every `.` replaced by `=`, a character no name may contain: the mapping is reversible
//! and a name never spans two tokens (domain `a.b` with store `c` and domain `a` with
//! store `b.c` stay apart: `a=b.c` and `a.b=c`).
#![forbid(unsafe_code)]

use std::borrow::Cow;

/// The character that stands for `.` inside a token.
const DOT_STANDIN: char = '=';

/// `name` as one subject token (`.` becomes `=`). `name` must be a validated posrelay
/// name (non-empty, none of `=`, `*`, `>` or whitespace), which every id type guarantees.
pub fn token(name: &str) -> Cow<'_, str> {
    if name.contains('.') {
        Cow::Owned(name.replace('.', "="))
    } else {
        Cow::Borrowed(name)
    }
}

/// The name a token stands for (`=` becomes `.`): the inverse of [`token`].
pub fn untoken(token: &str) -> Cow<'_, str> {
    if token.contains(DOT_STANDIN) {
        Cow::Owned(token.replace(DOT_STANDIN, "."))
    } else {
        Cow::Borrowed(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_never_split_a_name() {
        assert_eq!(token("acme"), "acme");
        assert_eq!(token("acme.com"), "acme=com");
        assert_eq!(token(".a..b."), "=a==b=");
        assert_ne!(
            format!("{}.{}", token("a.b"), token("c")),
            format!("{}.{}", token("a"), token("b.c"))
        );
    }

    #[test]
    fn untoken_inverts_token() {
        for name in ["acme", "acme.com", ".a..b.", "x_y-z", "1"] {
            assert_eq!(untoken(&token(name)), name);
        }
    }
}
