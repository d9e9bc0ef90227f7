//! The client against the relay's own state machine: in memory (every envelope routed by
//! hand, a relay restart included), and over real sockets to a small relay in a thread.

use super::*;
use posrelay_core::ids::{ClientId, ClientKey, DeviceKey, DomainName, Serial, SessionId};
use posrelay_core::relay::ConnId;
use posrelay_core::reliable::{
    ClaimRecord, MemReliableLog, ReliableClaim, ReliableLimits, ReliableLog, Transmit,
};
use std::sync::Arc;

fn record() -> ClaimRecord {
    ClaimRecord {
        device: DeviceKey {
            domain: DomainName::new("acme").unwrap(),
            serial: Serial::new("1").unwrap(),
        },
        client: ClientKey {
            domain: DomainName::new("acme").unwrap(),
            client_id: ClientId::new("pos").unwrap(),
        },
        session_id: SessionId::from_random([5; 16]),
    }
}

fn text(t: &str) -> WsMessage {
    WsMessage {
        kind: MessageKind::Text,
        data: Bytes::copy_from_slice(t.as_bytes()),
    }
}

/// A relay with a terminal that answers every message with `re:` + the message.
struct Relay {
    claim: ReliableClaim,
    log: Arc<MemReliableLog>,
    now: Instant,
    device: ConnId,
    /// What the device received, in order.
    device_got: Vec<String>,
    session: Option<ConnId>,
    to_pos: VecDeque<Bytes>,
    closes: Vec<u16>,
}

impl Relay {
    fn new(log: Arc<MemReliableLog>) -> Relay {
        let claim = match log.load().unwrap().pop() {
            Some(snapshot) => {
                ReliableClaim::restore(snapshot, ReliableLimits::default(), Instant::now())
            }
            None => ReliableClaim::new(record(), ReliableLimits::default()),
        };
        let mut relay = Relay {
            claim,
            log,
            now: Instant::now(),
            device: ConnId(1),
            device_got: Vec::new(),
            session: None,
            to_pos: VecDeque::new(),
            closes: Vec::new(),
        };
        relay.claim.handle_device_connected(relay.device, relay.now);
        relay.pump();
        relay
    }

    fn open(&mut self, conn: u64) {
        self.session = Some(ConnId(conn));
        self.to_pos.clear();
        self.claim.handle_session_opened(ConnId(conn), self.now);
        self.pump();
    }

    fn handle_pos(&mut self, envelope: Bytes) {
        let conn = self.session.expect("a session");
        self.claim
            .handle_pos_message(conn, relay::MessageKind::Text, envelope, self.now)
            .expect("the client follows the protocol");
        self.pump();
    }

    fn pump(&mut self) {
        loop {
            if let Some(batch) = self.claim.poll_log() {
                self.log.commit(std::slice::from_ref(&batch)).unwrap();
                self.claim.handle_logged(batch.ticket, self.now);
                continue;
            }
            let Some(t) = self.claim.poll_transmit() else {
                return;
            };
            match t {
                Transmit::Pos { conn, envelope } if Some(conn) == self.session => {
                    self.to_pos.push_back(envelope)
                }
                Transmit::Pos { .. } => {}
                Transmit::ClosePos { code, .. } => self.closes.push(code),
                Transmit::Device { conn, seq, message } => {
                    let got = String::from_utf8(message.payload.to_vec()).unwrap();
                    self.claim.handle_device_written(conn, seq, self.now);
                    let answer = RelayedMessage {
                        kind: relay::MessageKind::Text,
                        payload: Bytes::from(format!("re:{got}")),
                    };
                    self.device_got.push(got);
                    let _ = self.claim.handle_device_message(conn, answer, self.now);
                }
            }
        }
    }
}

/// Delivers everything the relay sent to the client, which answers; the application
/// processes each device message at once. Returns the answers seen, in order.
fn exchange(relay: &mut Relay, pos: &mut ReliableState, answers: &mut Vec<String>) {
    while let Some(envelope) = relay.to_pos.pop_front() {
        let handled = pos.handle(MessageKind::Text, envelope).unwrap();
        for event in handled.events {
            if let Event::Message { seq, message } = event {
                answers.push(message.text().unwrap().to_owned());
                if let Some(ack) = pos.processed(seq) {
                    relay.handle_pos(ack);
                }
            }
        }
        for envelope in handled.send {
            relay.handle_pos(envelope);
        }
    }
}

#[test]
fn nothing_is_lost_or_doubled_across_breaks_and_a_relay_restart() {
    let log = Arc::new(MemReliableLog::new());
    let mut relay = Relay::new(log.clone());
    let mut pos = ReliableState::new();
    let mut answers = Vec::new();
    relay.open(100);
    relay.handle_pos(pos.resume());
    exchange(&mut relay, &mut pos, &mut answers);
    // Sent while resumed: straight to the relay.
    for t in ["a", "b"] {
        let (_, now) = pos.send(text(t));
        relay.handle_pos(now.expect("live"));
    }
    // The session breaks before the client reads anything: answers and acks are lost.
    relay.claim.handle_session_closed(ConnId(100), relay.now);
    relay.session = None;
    relay.to_pos.clear();
    pos.disconnected();
    // Sent while broken: kept for after the resume.
    let (_, now) = pos.send(text("c"));
    assert!(now.is_none());
    relay.open(101);
    relay.handle_pos(pos.resume());
    exchange(&mut relay, &mut pos, &mut answers);
    assert_eq!(answers, ["re:a", "re:b", "re:c"]);
    // The relay restarts from its log; the client resumes and sends one more.
    drop(relay);
    let mut relay = Relay::new(log);
    relay.open(102);
    relay.handle_pos(pos.resume());
    let (_, now) = pos.send(text("d"));
    exchange(&mut relay, &mut pos, &mut answers);
    if let Some(now) = now {
        relay.handle_pos(now);
    }
    exchange(&mut relay, &mut pos, &mut answers);
    assert_eq!(answers, ["re:a", "re:b", "re:c", "re:d"]);
    assert_eq!(
        relay.device_got,
        ["d"],
        "the restarted relay forwarded only d"
    );
    assert_eq!(pos.unsettled(), 0);
    assert_eq!(relay.claim.held_bytes(), 0, "every answer acked");
    assert!(relay.closes.is_empty(), "{:?}", relay.closes);
}

fn envelope(json: &str) -> Bytes {
    Bytes::copy_from_slice(json.as_bytes())
}

#[test]
fn duplicates_are_dropped_and_a_gap_is_an_error() {
    let mut pos = ReliableState::new();
    pos.resume();
    pos.handle(MessageKind::Text, envelope(r#"{"type":"resumed","seq":0}"#))
        .unwrap();
    let d1 = envelope(r#"{"type":"data","seq":1,"text":"x"}"#);
    let first = pos.handle(MessageKind::Text, d1.clone()).unwrap();
    assert!(matches!(&first.events[..], [Event::Message { seq, .. }] if *seq == Seq::new(1)));
    // Sent again after a break: not handed over twice, even before it is processed.
    pos.resume();
    assert!(pos.handle(MessageKind::Text, d1).unwrap().events.is_empty());
    assert!(matches!(
        pos.handle(MessageKind::Text, envelope(r#"{"type":"data","seq":3,"text":"x"}"#)),
        Err(ReliableClientError::Protocol(reason)) if reason.contains("skips ahead")
    ));
    // processed() never acks beyond what was handed over.
    pos.live = true;
    assert_eq!(
        pos.processed(Seq::new(9)),
        Some(envelope(r#"{"type":"ack","seq":1}"#))
    );
    assert_eq!(pos.processed(Seq::new(1)), None, "already acked");
    assert_eq!(pos.last_processed(), Seq::new(1));
}

#[test]
fn reports_hand_back_the_messages_once() {
    let mut pos = ReliableState::new();
    pos.resume();
    pos.handle(MessageKind::Text, envelope(r#"{"type":"resumed","seq":0}"#))
        .unwrap();
    for t in ["a", "b", "c"] {
        pos.send(text(t));
    }
    let report = envelope(r#"{"type":"undelivered","from_seq":2,"to_seq":3}"#);
    let handled = pos.handle(MessageKind::Text, report.clone()).unwrap();
    assert_eq!(
        handled.events,
        vec![Event::Undelivered {
            range: SeqRange::new(Seq::new(2), Seq::new(3)).unwrap(),
            messages: vec![(Seq::new(2), text("b")), (Seq::new(3), text("c"))]
        }]
    );
    // Repeated after a resume: nothing new.
    assert!(pos
        .handle(MessageKind::Text, report)
        .unwrap()
        .events
        .is_empty());
    let handled = pos
        .handle(MessageKind::Text, envelope(r#"{"type":"ack","seq":3}"#))
        .unwrap();
    assert_eq!(handled.events, vec![Event::Acked(Seq::new(3))]);
    assert_eq!(pos.unsettled(), 0);
    assert!(matches!(
        pos.handle(MessageKind::Text, envelope(r#"{"type":"ack","seq":4}"#)),
        Err(ReliableClientError::Protocol(_))
    ));
}

#[test]
fn resumed_beyond_what_was_sent_is_adopted_only_by_a_fresh_client() {
    let resumed = || envelope(r#"{"type":"resumed","seq":7}"#);
    let mut fresh = ReliableState::new();
    fresh.resume();
    fresh.handle(MessageKind::Text, resumed()).unwrap();
    assert_eq!(fresh.send(text("x")).0, Seq::new(8));

    let mut used = ReliableState::new();
    used.send(text("x"));
    used.resume();
    assert!(matches!(
        used.handle(MessageKind::Text, resumed()),
        Err(ReliableClientError::ForeignState { .. })
    ));
    assert!(matches!(
        used.handle(
            MessageKind::Text,
            envelope(r#"{"type":"resume_failed","reason":"the claim ended"}"#)
        ),
        Err(ReliableClientError::ResumeFailed { reason }) if reason == "the claim ended"
    ));
    assert_eq!(used.reset().len(), 1);
    assert_eq!(used.last_sent(), Seq::ZERO);
}

/// A relay on loopback, in a thread, serving the session with the core state machine:
/// it selects `posrelay.reliable.v1`, cuts the first connection (no close frame) right
/// after the client's second message, and stops when the client closes normally.
/// Returns what the terminal received.
// The handshake callback's error type is tungstenite's, large or not.
#[allow(clippy::result_large_err)]
fn relay_in_a_thread() -> (String, std::thread::JoinHandle<Vec<String>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "ws://{}/cloud-connector/v1/session/x",
        listener.local_addr().unwrap()
    );
    let handle = std::thread::spawn(move || {
        let mut relay = Relay::new(Arc::new(MemReliableLog::new()));
        for conn in 100u64.. {
            let (tcp, _) = listener.accept().unwrap();
            tcp.set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            let select =
                |req: &tungstenite::handshake::server::Request,
                 mut resp: tungstenite::handshake::server::Response| {
                    let offered = req
                        .headers()
                        .get("sec-websocket-protocol")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    assert!(offered.starts_with(SUBPROTOCOL), "offered {offered:?}");
                    resp.headers_mut()
                        .insert("sec-websocket-protocol", SUBPROTOCOL.parse().unwrap());
                    Ok(resp)
                };
            let mut ws = tungstenite::accept_hdr(tcp, select).unwrap();
            relay.open(conn);
            let mut data_seen = 0;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                assert!(Instant::now() < deadline, "the test client stalled");
                match ws.read() {
                    Ok(tungstenite::Message::Text(t)) => {
                        data_seen += usize::from(t.contains(r#""type":"data""#));
                        relay.handle_pos(Bytes::from(t.to_string()));
                        if conn == 100 && data_seen == 2 {
                            // Cut: no close frame, the client finds out by itself.
                            let _ = ws.get_ref().shutdown(std::net::Shutdown::Both);
                            relay.claim.handle_session_closed(ConnId(conn), relay.now);
                            break;
                        }
                    }
                    Ok(tungstenite::Message::Close(_)) => return relay.device_got,
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e))
                        if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("relay read: {e}"),
                }
                while let Some(envelope) = relay.to_pos.pop_front() {
                    let text = String::from_utf8(envelope.to_vec()).unwrap();
                    ws.send(tungstenite::Message::Text(text)).unwrap();
                }
            }
        }
        unreachable!()
    });
    (url, handle)
}

#[test]
fn reconnects_and_resumes_over_real_sockets() {
    let (url, relay) = relay_in_a_thread();
    let url = WsUrl::parse(&url).unwrap();
    let opts = ConnectOptions {
        protocols: vec!["bearer.t".into()],
        timeout: Duration::from_secs(10),
        ..ConnectOptions::default()
    };
    let mut session = ReliableSession::open(&url, &opts).unwrap();
    session.set_reconnect(Duration::from_millis(10), Duration::from_millis(50), 20);
    let mut answers = Vec::new();
    let mut resumes = 0;
    for t in ["a", "b", "c", "d"] {
        session.send(MessageKind::Text, t.as_bytes()).unwrap();
    }
    while answers.len() < 4 {
        match session.recv(Duration::from_secs(10)).unwrap() {
            Some(Event::Message { seq, message }) => {
                answers.push(message.text().unwrap().to_owned());
                session.processed(seq).unwrap();
            }
            Some(Event::Resumed { .. }) => resumes += 1,
            Some(_) => {}
            None => panic!("no answer within 10 s; got {answers:?}"),
        }
    }
    assert_eq!(answers, ["re:a", "re:b", "re:c", "re:d"]);
    assert_eq!(resumes, 2, "the first resume and the one after the cut");
    // Wait until the relay settled all four, then close.
    while session.state().unsettled() > 0 {
        session
            .recv(Duration::from_secs(10))
            .unwrap()
            .expect("acks");
    }
    session.close();
    assert_eq!(
        relay.join().unwrap(),
        ["a", "b", "c", "d"],
        "each once, in order"
    );
}

#[test]
fn the_breaks_the_relay_asks_clients_to_survive_are_retried_and_no_others() {
    let closed = |code| WsError::Closed {
        code,
        reason: String::new(),
    };
    let refused = |status| WsError::Refused {
        status,
        body: String::new(),
    };
    for err in [
        closed(Some(1001)),
        closed(Some(1011)),
        closed(Some(1012)),
        closed(Some(4401)),
        closed(None),
        WsError::Eof,
        refused(503),
    ] {
        assert!(worth_reconnecting(&err), "{err}");
    }
    for err in [
        closed(Some(1000)),
        closed(Some(1008)),
        closed(Some(4001)),
        closed(Some(4409)),
        refused(401),
        refused(403),
        refused(404),
    ] {
        assert!(!worth_reconnecting(&err), "{err}");
    }
}
