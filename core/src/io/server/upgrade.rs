//! What every WebSocket endpoint works out before it answers 101 (PROTOCOL.md §7, §7a):
//! the answer itself (accept key, selected subprotocol), the bearer token from
//! `Authorization` or a `bearer.` subprotocol, the base of the URLs it hands out; and the
//! checks a POS connection passes before it is routed (its access token, the per-client
//! limit).

use super::admission::{ConnSlot, UnauthSlot};
use super::handover::Held;
pub(crate) use super::reliable_session::SessionMode;
use super::shard::ShardCtx;
use crate::auth::{AccessClaims, AuthError};
use crate::handshake::{
    accept_key, switching_protocols, OfferedProtocols, SubprotocolPolicy, UpgradeRequest,
    BEARER_PREFIX,
};
use crate::io::transport::Transport;
use bytes::BytesMut;

/// What every WebSocket endpoint works out before answering 101.
pub(crate) struct Prelude {
    /// The `101` answer (accept key and selected subprotocol).
    pub answer: Vec<u8>,
    /// The bearer token, from `Authorization` or a `bearer.` subprotocol (§7).
    pub bearer: Option<String>,
    /// Base of the URLs handed out (§7a).
    pub url_base: String,
    /// Whether the 101 selects `posrelay.reliable.v1` (§11; POS sessions only).
    pub mode: SessionMode,
}

impl Prelude {
    pub fn new(ctx: &ShardCtx, upgrade: &UpgradeRequest) -> Prelude {
        Prelude::with_selection(ctx, upgrade, OfferedProtocols::select)
    }

    /// For a POS session (§5, §5a): `posrelay.reliable.v1`, when offered, is selected before
    /// anything else and makes the session reliable (§11).
    pub fn for_session(ctx: &ShardCtx, upgrade: &UpgradeRequest) -> Prelude {
        Prelude::with_selection(ctx, upgrade, OfferedProtocols::select_for_session)
    }

    fn with_selection(
        ctx: &ShardCtx,
        upgrade: &UpgradeRequest,
        select: fn(&OfferedProtocols, &SubprotocolPolicy) -> Option<String>,
    ) -> Prelude {
        let offered = OfferedProtocols::new(upgrade.protocols.clone());
        let from_header = upgrade.authorization.as_deref().and_then(|h| {
            let (scheme, token) = h.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        });
        let bearer = from_header.or_else(|| offered.bearer_token().map(str::to_owned));
        let policy = &ctx.shared.config.subprotocols;
        let selected = select(&offered, policy);
        let mode = SessionMode::of(selected.as_deref());
        let has_application_offer = offered
            .entries()
            .iter()
            .any(|e| !e.starts_with(BEARER_PREFIX));
        if selected.is_none()
            && has_application_offer
            && matches!(policy, SubprotocolPolicy::OneOf(_))
        {
            // RFC 6455 §4.2.2: the server may select none; browsers then fail the handshake.
            tracing::debug!(offered = ?offered.entries().iter().filter(|e| !e.starts_with(BEARER_PREFIX)).collect::<Vec<_>>(), "no offered subprotocol is allowed");
        }
        let answer = switching_protocols(&accept_key(&upgrade.key), selected.as_deref());
        let scheme = if ctx.shared.tls.is_some() {
            "wss"
        } else {
            "ws"
        };
        let url_base = match &ctx.shared.config.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("{scheme}://{}", upgrade.host),
        };
        Prelude {
            answer,
            bearer,
            url_base,
            mode,
        }
    }

    /// The bearer token, or the refusal of its absence.
    pub fn bearer(&self) -> Result<&str, AuthError> {
        self.bearer.as_deref().ok_or_else(|| AuthError::InvalidToken {
            reason: "no bearer token: send Authorization: Bearer <token> or the subprotocol bearer.<token>".into(),
        })
    }
}

/// A routed connection as its role's `serve` takes it: boxed, so that the connection's
/// future keeps one pointer of arguments for its whole life instead of a second copy of
/// every argument beside the locals made from them (async fn arguments are never
/// overlapped with other state).
pub(crate) struct Accepted<R> {
    /// The upgraded socket.
    pub transport: Transport,
    /// Bytes read after the upgrade request.
    pub rbuf: BytesMut,
    /// The 101 answer, still to be written.
    pub answer: Vec<u8>,
    /// Admission slots, released when the connection ends.
    pub held: Held,
    /// How a refusal before the connection opens is told (HTTP, or in band after §7b).
    pub refusals: super::login::Refusals,
    /// What the role needs (session id, claims...).
    pub role: R,
}

impl Accepted<()> {
    pub fn with_role<R>(self, role: R) -> Box<Accepted<R>> {
        Box::new(Accepted {
            transport: self.transport,
            rbuf: self.rbuf,
            answer: self.answer,
            held: self.held,
            refusals: self.refusals,
            role,
        })
    }
}

/// A POS connection (control channel or session), its credentials verified
/// (`pos_login::authenticate`: an access token, or Basic client credentials, §7c): it stops
/// counting as anonymous and takes a place under the per-client limit. `Err` is the HTTP
/// answer to write instead.
pub(crate) fn admit_pos(
    ctx: &ShardCtx,
    claims: Result<AccessClaims, Vec<u8>>,
    unauth: UnauthSlot,
    conn: ConnSlot,
) -> Result<(AccessClaims, Held), Vec<u8>> {
    let claims = claims?;
    unauth.authenticated();
    match ctx.shared.admission.admit_client(&claims.client()) {
        Ok(slot) => Ok((
            claims,
            Held {
                _conn: conn,
                _client: Some(Box::new(slot)),
            },
        )),
        Err(why) => Err(super::reply::refusal(
            why,
            "this client has too many open connections: close some, or retry later",
        )),
    }
}
