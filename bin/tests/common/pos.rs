//! POS: the §4 control channel, §5 sessions, and a device and POS joined through the
//! relay (the seed 001 flow).

use super::*;

/// A POS control channel (§4). Answers are matched by `request_id`; anything else that
/// arrives meanwhile is kept, in order, for [`Pos::next_event`].
pub struct Pos {
    /// The control-channel WebSocket.
    pub ws: Ws,
    pending: VecDeque<Value>,
    next_id: u64,
}

impl Pos {
    /// Opens `pos-listener` with `Authorization: Bearer`.
    pub fn control(relay: &Relay, token: &str) -> Pos {
        let ws = relay.ws_bearer(&relay.ws_url(POS_LISTENER), token);
        Pos {
            ws,
            pending: VecDeque::new(),
            next_id: 0,
        }
    }

    /// Wraps a control channel opened some other way (custom headers, subprotocols).
    pub fn control_from(ws: Ws) -> Pos {
        Pos {
            ws,
            pending: VecDeque::new(),
            next_id: 0,
        }
    }

    /// Opens a POS session (§5) with `Authorization: Bearer`.
    pub fn session(relay: &Relay, session_url: &str, token: &str) -> Ws {
        relay.ws_bearer(session_url, token)
    }

    /// A fresh request id.
    pub fn new_request_id(&mut self) -> String {
        self.next_id += 1;
        format!("req-{}-{}", self.next_id, random_hex(3))
    }

    /// Sends `msg` (with `request_id` set) and returns the message that repeats it.
    pub fn request(&mut self, mut msg: Value) -> Value {
        let id = self.new_request_id();
        msg["request_id"] = Value::String(id.clone());
        send_json(&mut self.ws, &msg);
        self.answer_to(&id)
    }

    /// Waits for the message whose `request_id` is `id`, keeping others as events.
    pub fn answer_to(&mut self, id: &str) -> Value {
        if let Some(pos) = self.pending.iter().position(|v| v["request_id"] == id) {
            return self.pending.remove(pos).unwrap();
        }
        loop {
            let v = recv_json(&mut self.ws);
            if v["request_id"] == id {
                return v;
            }
            let is_answer = ["claimed", "released", "devices", "error"]
                .iter()
                .any(|t| v["type"] == *t);
            assert!(
                !is_answer,
                "an answer that does not repeat request_id {id:?}: {v}"
            );
            self.pending.push_back(v);
        }
    }

    /// `claim` → the answer (claimed or error).
    pub fn claim(&mut self, tsn: &str) -> Value {
        self.request(json!({ "type": "claim", "tsn": tsn }))
    }

    /// `claim` that must answer `claimed`; returns (session_id, session_url).
    pub fn claim_ok(&mut self, tsn: &str) -> (String, String) {
        let v = self.claim(tsn);
        assert_eq!(v["type"], "claimed", "claim {tsn}: {v}");
        (
            v["session_id"].as_str().expect("session_id").to_string(),
            v["session_url"].as_str().expect("session_url").to_string(),
        )
    }

    /// `release` → the answer.
    pub fn release(&mut self, tsn: &str) -> Value {
        self.request(json!({ "type": "release", "tsn": tsn }))
    }

    /// `devices` → the answer.
    pub fn devices(&mut self) -> Value {
        self.request(json!({ "type": "devices" }))
    }

    /// Sends raw text on the control channel.
    pub fn send_raw(&mut self, text: &str) {
        send_text(&mut self.ws, text);
    }

    /// The next message not yet consumed (events kept by [`Pos::request`] first).
    pub fn next_event(&mut self) -> Value {
        if let Some(v) = self.pending.pop_front() {
            return v;
        }
        recv_json(&mut self.ws)
    }

    /// Every event the relay sent on this channel before a barrier: a `devices` request,
    /// whose answer leaves the relay after anything already on its way to this channel
    /// (one connection is one ordered stream, and the relay's shards keep each pair's
    /// messages in order). "Nothing arrived" is then checked by an event, not by waiting
    /// some time and hoping.
    pub fn events_until_barrier(&mut self) -> Vec<Value> {
        let _answer = self.devices();
        self.pending.drain(..).collect()
    }

    /// The next event if one arrives within `wait`.
    pub fn try_next_event(&mut self, wait: Duration) -> Option<Value> {
        if let Some(v) = self.pending.pop_front() {
            return Some(v);
        }
        match try_recv(&mut self.ws, wait)? {
            Message::Text(t) => Some(serde_json::from_str(&t).expect("JSON event")),
            other => panic!("expected a JSON event, got {}", show(&other)),
        }
    }
}

/// Sums `undelivered` events for `tsn` from `pos` until `frames` frames are reported (or
/// `limit` passes); returns (frames, bytes). Any other event fails the test.
pub fn collect_undelivered(pos: &mut Pos, tsn: &str, frames: u64, limit: Duration) -> (u64, u64) {
    let deadline = Instant::now() + limit;
    let (mut f, mut b) = (0u64, 0u64);
    while f < frames {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(ev) = pos.try_next_event(left.max(Duration::from_millis(1))) else {
            break;
        };
        assert_eq!(ev["type"], "undelivered", "unexpected event {ev}");
        assert_eq!(ev["tsn"], tsn, "undelivered names the bare tsn: {ev}");
        let keys: Vec<&str> = ev.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        let mut keys = keys;
        keys.sort();
        assert_eq!(
            keys,
            ["bytes", "frames", "tsn", "type"],
            "undelivered shape: {ev}"
        );
        f += ev["frames"].as_u64().expect("frames");
        b += ev["bytes"].as_u64().expect("bytes");
    }
    (f, b)
}

/// Asserts an §4 error answer: exact type, request_id, code, and a string message.
pub fn assert_error(v: &Value, request_id: Option<&str>, code: &str) {
    assert_eq!(v["type"], "error", "expected an error: {v}");
    assert_eq!(v["code"], code, "error code: {v}");
    assert!(v["message"].is_string(), "error message is a string: {v}");
    if let Some(id) = request_id {
        assert_eq!(v["request_id"], id, "request_id echoed: {v}");
    }
}

/// A device and a POS joined through the relay: registration, device connection, access
/// token, control channel, claim and session.
pub struct Pair {
    /// The connected device.
    pub device: Device,
    /// The POS control channel.
    pub pos: Pos,
    /// The POS session (data path).
    pub session: Ws,
    /// The POS's access token.
    pub token: String,
    /// The claimed answer.
    pub session_id: String,
    /// `session_url` of the claimed answer.
    pub session_url: String,
}

impl Pair {
    /// Runs steps 1–9 of seed 001 for `tsn` with `creds` (device and POS share them, as a
    /// terminal carries its POS client's credentials).
    pub fn connect(relay: &Relay, domain: &str, tsn: &str, creds: &Creds) -> Pair {
        let device = Device::register_and_connect(relay, tsn, creds);
        let token = relay.token(domain, creds);
        let mut pos = Pos::control(relay, &token);
        let (session_id, session_url) = pos.claim_ok(tsn);
        assert_eq!(
            session_id, device.reg.session_id,
            "the claim names the device's session"
        );
        let session = Pos::session(relay, &session_url, &token);
        Pair {
            device,
            pos,
            session,
            token,
            session_id,
            session_url,
        }
    }

    /// `what` as a text message POS → device, then device → POS; each side must get it
    /// exactly.
    pub fn exchange_text(&mut self, what: &str) {
        send_text(&mut self.session, what);
        match self.device.recv() {
            Message::Text(t) => assert_eq!(t, what),
            other => panic!("{what}: device got {}", show(&other)),
        }
        self.device.send_text(what);
        match recv(&mut self.session) {
            Message::Text(t) => assert_eq!(t, what),
            other => panic!("{what}: POS got {}", show(&other)),
        }
    }
}

/// A text payload of exactly `n` UTF-8 bytes (multi-byte characters included when it fits),
/// distinct per `seed`.
pub fn text_payload(n: usize, seed: u64) -> String {
    let mut s = String::with_capacity(n);
    if n >= 3 {
        s.push('€');
    }
    let mut i = seed;
    while s.len() < n {
        s.push((b'a' + (i % 26) as u8) as char);
        i += 1;
    }
    s
}

/// A binary payload of exactly `n` pseudo-random bytes, distinct per `seed`.
pub fn binary_payload(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}
