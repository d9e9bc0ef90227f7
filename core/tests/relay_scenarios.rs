//! DeviceShard and ClientHub driven through the product's scenarios (PROTOCOL.md §3-§6),
//! in memory, on a virtual clock: `start` is read once, every later time is start + d.

use std::time::{Duration, Instant};

use bytes::Bytes;
use posrelay_core::ids::{ClientId, ClientKey, DeviceKey, DomainName, Serial, SessionId};
use posrelay_core::relay::{
    Action, ClaimError, ClaimGranted, ClientEventKind, ClientHub, ConnId, DeviceShard, DropReason,
    HubAction, MessageKind, RelayLimits, RelayedMessage, Route, SessionError, SessionKeyring,
};

type Shard = DeviceShard<RelayedMessage>;

struct Clock(Instant);

impl Clock {
    fn at(&self, secs: u64) -> Instant {
        self.0 + Duration::from_secs(secs)
    }
}

fn clock() -> Clock {
    Clock(Instant::now())
}

fn device(domain: &str, serial: &str) -> DeviceKey {
    DeviceKey {
        domain: DomainName::new(domain).expect("domain"),
        serial: Serial::new(serial).expect("serial"),
    }
}

fn client(domain: &str, id: &str) -> ClientKey {
    ClientKey {
        domain: DomainName::new(domain).expect("domain"),
        client_id: ClientId::new(id).expect("client"),
    }
}

fn serial(s: &str) -> Serial {
    Serial::new(s).expect("serial")
}

fn text(s: &str) -> RelayedMessage {
    RelayedMessage {
        kind: MessageKind::Text,
        payload: Bytes::copy_from_slice(s.as_bytes()),
    }
}

fn binary(n: usize) -> RelayedMessage {
    RelayedMessage {
        kind: MessageKind::Binary,
        payload: Bytes::from(vec![0xab; n]),
    }
}

fn shard_with(limits: RelayLimits) -> Shard {
    DeviceShard::new(SessionKeyring::new([9; 32]), limits)
}

fn shard() -> Shard {
    shard_with(RelayLimits::default())
}

fn drain(shard: &mut Shard) -> Vec<Action<RelayedMessage>> {
    std::iter::from_fn(|| shard.poll_action()).collect()
}

fn drain_hub(hub: &mut ClientHub) -> Vec<HubAction> {
    std::iter::from_fn(|| hub.poll_action()).collect()
}

fn undelivered(client: &ClientKey, s: &str, frames: u64, bytes: u64) -> Action<RelayedMessage> {
    Action::ClientEvent {
        client: client.clone(),
        event: ClientEventKind::Undelivered {
            serial: serial(s),
            frames,
            bytes,
        },
    }
}

fn status(client: &ClientKey, s: &str, online: bool) -> Action<RelayedMessage> {
    Action::ClientEvent {
        client: client.clone(),
        event: ClientEventKind::DeviceStatus {
            serial: serial(s),
            online,
        },
    }
}

fn send(conn: u64, message: RelayedMessage) -> Action<RelayedMessage> {
    Action::SendToConn {
        conn: ConnId(conn),
        message,
    }
}

fn close(conn: u64, code: u16) -> impl Fn(&Action<RelayedMessage>) -> bool {
    move |a| matches!(a, Action::CloseConn { conn: c, code: k, .. } if *c == ConnId(conn) && *k == code)
}

/// A registered, connected (conn 1), claimed device with an open POS session (conn 10),
/// its client present. Returns (shard, session id, device, client).
fn claimed_with_session(c: &Clock) -> (Shard, SessionId, DeviceKey, ClientKey) {
    let mut s = shard();
    let dev = device("acme", "1001");
    let pos = client("acme", "pos1");
    let sid = s.handle_register(dev.clone(), c.at(0));
    s.handle_device_connected(&sid, ConnId(1), c.at(0))
        .expect("registered");
    s.handle_client_presence(&pos, true, c.at(0));
    let granted = s.handle_claim(&pos, &dev, c.at(0)).expect("claim");
    assert_eq!(
        granted,
        ClaimGranted {
            session_id: sid.clone(),
            online: true,
            pending_frames: 0
        }
    );
    s.handle_pos_session_opened(&sid, &pos, ConnId(10), c.at(0))
        .expect("holder");
    assert!(drain(&mut s).is_empty());
    (s, sid, dev, pos)
}

#[test]
fn register_connect_claim_session_and_messages_both_ways_in_order() {
    let c = clock();
    let (mut s, sid, dev, pos) = claimed_with_session(&c);
    assert!(s.device_online(&dev));
    assert_eq!(s.claimed_by(&dev), Some(&pos));
    assert_eq!(s.session_device(&sid), Some(&dev));
    for i in 0..5 {
        let m = text(&format!("pos {i}"));
        assert_eq!(
            s.handle_message_from_pos(&sid, ConnId(10), m.clone(), c.at(1)),
            Route::Forward {
                conn: ConnId(1),
                message: m
            }
        );
        let d = binary(i + 1);
        assert_eq!(
            s.handle_message_from_device(&sid, ConnId(1), d.clone(), c.at(1)),
            Route::Forward {
                conn: ConnId(10),
                message: d
            }
        );
    }
    assert!(drain(&mut s).is_empty(), "the hot path queues no action");
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn device_reconnect_replaces_old_conn_and_flushes_queue_first_in_order() {
    let c = clock();
    let (mut s, sid, dev, pos) = claimed_with_session(&c);
    s.handle_device_disconnected(&sid, ConnId(1), c.at(1));
    assert_eq!(drain(&mut s), vec![status(&pos, "1001", false)]);
    assert!(!s.device_online(&dev));
    for i in 0..3 {
        assert_eq!(
            s.handle_message_from_pos(&sid, ConnId(10), text(&format!("q{i}")), c.at(2)),
            Route::Queued
        );
    }
    s.handle_device_connected(&sid, ConnId(2), c.at(3))
        .expect("known session");
    assert_eq!(
        drain(&mut s),
        vec![
            send(2, text("q0")),
            send(2, text("q1")),
            send(2, text("q2")),
            status(&pos, "1001", true),
        ]
    );
    assert_eq!(s.poll_timeout(), None, "nothing queued, nothing to expire");
    // New frames go straight to the new connection.
    assert_eq!(
        s.handle_message_from_pos(&sid, ConnId(10), text("new"), c.at(4)),
        Route::Forward {
            conn: ConnId(2),
            message: text("new")
        }
    );
    // A second connection while the first is live: old closed 4000, no status change.
    s.handle_device_connected(&sid, ConnId(3), c.at(5))
        .expect("known session");
    let actions = drain(&mut s);
    assert_eq!(actions.len(), 1);
    assert!(close(2, 4000)(&actions[0]));
}

#[test]
fn replaced_conn_closing_late_does_not_mark_offline() {
    let c = clock();
    let (mut s, sid, dev, _pos) = claimed_with_session(&c);
    s.handle_device_connected(&sid, ConnId(2), c.at(1))
        .expect("known");
    assert!(drain(&mut s).iter().any(close(1, 4000)));
    s.handle_device_disconnected(&sid, ConnId(1), c.at(2));
    assert!(s.device_online(&dev));
    assert!(drain(&mut s).is_empty(), "no device_status offline");
    // Frames the old connection still delivers are not forwarded.
    assert_eq!(
        s.handle_message_from_device(&sid, ConnId(1), text("late"), c.at(2)),
        Route::Dropped(DropReason::StaleConnection)
    );
    assert_eq!(s.stats().device_frames_dropped, 1);
}

#[test]
fn claims_are_exclusive_idempotent_and_need_a_registration() {
    let c = clock();
    let mut s = shard();
    let dev = device("acme", "7");
    let a = client("acme", "a");
    let b = client("acme", "b");
    assert_eq!(
        s.handle_claim(&a, &dev, c.at(0)),
        Err(ClaimError::Offline {
            serial: serial("7")
        })
    );
    let sid = s.handle_register(dev.clone(), c.at(0));
    assert_eq!(s.handle_register(dev.clone(), c.at(1)), sid, "idempotent");
    let first = s.handle_claim(&a, &dev, c.at(1)).expect("claim");
    assert_eq!(
        first,
        ClaimGranted {
            session_id: sid.clone(),
            online: false,
            pending_frames: 0
        },
        "registered but not connected: claimable, online false"
    );
    assert_eq!(s.handle_claim(&a, &dev, c.at(2)), Ok(first));
    let busy = s.handle_claim(&b, &dev, c.at(2));
    assert_eq!(
        busy,
        Err(ClaimError::DeviceBusy {
            serial: serial("7")
        })
    );
    assert_eq!(busy.err().map(|e| e.code().as_str()), Some("device_busy"));
    assert_eq!(s.claimed_by(&dev), Some(&a));
}

#[test]
fn claimed_counts_the_device_messages_waiting_for_the_holders_session() {
    // §4 `pending_frames`: device messages waiting for this client's session (§5).
    let c = clock();
    let (mut s, sid, dev, pos) = claimed_with_session(&c);
    s.handle_pos_session_closed(&sid, ConnId(10), c.at(1));
    for i in 0..3 {
        assert_eq!(
            s.handle_message_from_device(&sid, ConnId(1), text(&format!("d{i}")), c.at(2)),
            Route::Queued
        );
    }
    let again = s.handle_claim(&pos, &dev, c.at(3)).expect("idempotent");
    assert_eq!(again.pending_frames, 3);
    assert!(again.online);
    // Once the session opens they are delivered: nothing is pending any more.
    s.handle_pos_session_opened(&sid, &pos, ConnId(11), c.at(4))
        .expect("holder");
    let delivered = drain(&mut s)
        .into_iter()
        .filter(|a| {
            matches!(
                a,
                Action::SendToConn {
                    conn: ConnId(11),
                    ..
                }
            )
        })
        .count();
    assert_eq!(delivered, 3);
    assert_eq!(
        s.handle_claim(&pos, &dev, c.at(5))
            .expect("idempotent")
            .pending_frames,
        0
    );
}

#[test]
fn release_rules_of_section_4() {
    let c = clock();
    let mut s = shard();
    let dev = device("acme", "8");
    let a = client("acme", "a");
    let b = client("acme", "b");
    assert_eq!(
        s.handle_release(&a, &dev, c.at(0)),
        Ok(()),
        "never registered"
    );
    s.handle_register(dev.clone(), c.at(0));
    assert_eq!(s.handle_release(&a, &dev, c.at(0)), Ok(()), "not claimed");
    s.handle_claim(&a, &dev, c.at(0)).expect("claim");
    assert_eq!(
        s.handle_release(&b, &dev, c.at(0)),
        Err(ClaimError::DeviceBusy {
            serial: serial("8")
        })
    );
    assert_eq!(s.claimed_by(&dev), Some(&a));
    assert_eq!(s.handle_release(&a, &dev, c.at(0)), Ok(()));
    assert_eq!(s.claimed_by(&dev), None);
    assert!(s.handle_claim(&b, &dev, c.at(1)).is_ok(), "free again");
}

#[test]
fn release_closes_the_session_4001_and_reports_what_was_queued() {
    let c = clock();
    let (mut s, sid, dev, pos) = claimed_with_session(&c);
    s.handle_device_disconnected(&sid, ConnId(1), c.at(1));
    drain(&mut s);
    assert_eq!(
        s.handle_message_from_pos(&sid, ConnId(10), binary(100), c.at(1)),
        Route::Queued
    );
    assert_eq!(
        s.handle_message_from_pos(&sid, ConnId(10), binary(23), c.at(1)),
        Route::Queued
    );
    s.handle_release(&pos, &dev, c.at(2)).expect("holder");
    let actions = drain(&mut s);
    assert!(close(10, 4001)(&actions[0]));
    assert_eq!(actions[1..], [undelivered(&pos, "1001", 2, 123)]);
    assert_eq!(s.poll_timeout(), None);
    // The POS keeps sending on the closed session before its close lands: reported.
    assert_eq!(
        s.handle_message_from_pos(&sid, ConnId(10), binary(5), c.at(3)),
        Route::Rejected
    );
    assert_eq!(drain(&mut s), vec![undelivered(&pos, "1001", 1, 5)]);
    assert_eq!(
        s.check_pos_session(&sid, &pos),
        Err(SessionError::NotClaimHolder {
            session_id: sid.clone(),
            client: pos.clone()
        })
    );
}

#[test]
fn queue_overflow_reports_exactly_the_frames_that_did_not_fit() {
    let c = clock();
    let mut s = shard_with(RelayLimits {
        offline_queue_bytes: 100,
        ..RelayLimits::default()
    });
    let dev = device("acme", "9");
    let pos = client("acme", "p");
    let sid = s.handle_register(dev.clone(), c.at(0));
    s.handle_client_presence(&pos, true, c.at(0));
    s.handle_claim(&pos, &dev, c.at(0)).expect("claim");
    s.handle_pos_session_opened(&sid, &pos, ConnId(10), c.at(0))
        .expect("holder");
    assert_eq!(
        s.handle_message_from_pos(&sid, ConnId(10), binary(60), c.at(1)),
        Route::Queued
    );
    assert_eq!(
        s.handle_message_from_pos(&sid, ConnId(10), binary(41), c.at(1)),
        Route::Rejected
    );
    assert_eq!(
        s.handle_message_from_pos(&sid, ConnId(10), binary(40), c.at(1)),
        Route::Queued,
        "a smaller frame still fits: 100 bytes exactly"
    );
    assert_eq!(
        s.handle_message_from_pos(&sid, ConnId(10), text("é"), c.at(1)),
        Route::Rejected
    );
    assert_eq!(
        drain(&mut s),
        vec![
            undelivered(&pos, "9", 1, 41),
            undelivered(&pos, "9", 1, 2), // UTF-8 bytes
        ]
    );
    s.handle_device_connected(&sid, ConnId(1), c.at(2))
        .expect("known");
    let actions = drain(&mut s);
    assert_eq!(actions[..2], [send(1, binary(60)), send(1, binary(40))]);
    assert_eq!(s.stats().pos_frames_undelivered, 2);
    assert_eq!(s.stats().pos_bytes_undelivered, 43);
}

#[test]
fn offline_grace_is_per_frame_and_reports_expired_frames() {
    let c = clock();
    let (mut s, sid, _dev, pos) = claimed_with_session(&c);
    s.handle_device_disconnected(&sid, ConnId(1), c.at(0));
    drain(&mut s);
    assert_eq!(
        s.handle_message_from_pos(&sid, ConnId(10), binary(10), c.at(1)),
        Route::Queued
    );
    assert_eq!(
        s.handle_message_from_pos(&sid, ConnId(10), binary(20), c.at(1)),
        Route::Queued
    );
    assert_eq!(
        s.handle_message_from_pos(&sid, ConnId(10), binary(30), c.at(20)),
        Route::Queued
    );
    assert_eq!(s.poll_timeout(), Some(c.at(31)));
    s.handle_timeout(c.at(30));
    assert!(drain(&mut s).is_empty(), "not due yet");
    s.handle_timeout(c.at(31));
    assert_eq!(drain(&mut s), vec![undelivered(&pos, "1001", 2, 30)]);
    assert_eq!(s.poll_timeout(), Some(c.at(50)));
    s.handle_device_connected(&sid, ConnId(2), c.at(45))
        .expect("known");
    assert_eq!(
        drain(&mut s),
        vec![send(2, binary(30)), status(&pos, "1001", true)],
        "the survivor is delivered"
    );
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn claim_grace_ends_an_unattended_claim() {
    let c = clock();
    let (mut s, sid, dev, pos) = claimed_with_session(&c);
    // Control channel gone, but the POS session is open: the claim is attended.
    s.handle_client_presence(&pos, false, c.at(1));
    assert_eq!(s.poll_timeout(), None);
    s.handle_device_disconnected(&sid, ConnId(1), c.at(2));
    assert_eq!(
        s.handle_message_from_pos(&sid, ConnId(10), binary(7), c.at(2)),
        Route::Queued
    );
    s.handle_pos_session_closed(&sid, ConnId(10), c.at(5));
    drain(&mut s);
    // The queue expires at 32, the claim at 65.
    assert_eq!(s.poll_timeout(), Some(c.at(32)));
    s.handle_timeout(c.at(32));
    assert_eq!(drain(&mut s), vec![undelivered(&pos, "1001", 1, 7)]);
    assert_eq!(s.poll_timeout(), Some(c.at(65)));
    // A control channel comes and goes: the grace restarts.
    s.handle_client_presence(&pos, true, c.at(60));
    assert_eq!(s.poll_timeout(), None);
    s.handle_client_presence(&pos, false, c.at(61));
    assert_eq!(s.poll_timeout(), Some(c.at(121)));
    s.handle_timeout(c.at(120));
    assert_eq!(s.claimed_by(&dev), Some(&pos));
    s.handle_timeout(c.at(121));
    assert_eq!(s.claimed_by(&dev), None);
    assert!(
        drain(&mut s).is_empty(),
        "nothing queued, no session to close"
    );
    assert_eq!(s.poll_timeout(), None);
    assert!(s
        .handle_claim(&client("acme", "other"), &dev, c.at(122))
        .is_ok());
}

#[test]
fn claim_grace_counts_from_the_claim_when_the_client_is_not_known_present() {
    let c = clock();
    let mut s = shard();
    let dev = device("acme", "5");
    let pos = client("acme", "p");
    let sid = s.handle_register(dev.clone(), c.at(0));
    s.handle_claim(&pos, &dev, c.at(10)).expect("claim");
    assert_eq!(s.poll_timeout(), Some(c.at(70)));
    // Opening a session attends the claim.
    s.handle_pos_session_opened(&sid, &pos, ConnId(10), c.at(20))
        .expect("holder");
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn claim_grace_closes_the_pos_session_of_a_lost_claim() {
    let c = clock();
    let (mut s, sid, dev, pos) = claimed_with_session(&c);
    s.handle_pos_session_closed(&sid, ConnId(10), c.at(1));
    s.handle_pos_session_opened(&sid, &pos, ConnId(11), c.at(2))
        .expect("holder");
    s.handle_client_presence(&pos, false, c.at(3));
    s.handle_pos_session_closed(&sid, ConnId(11), c.at(4));
    s.handle_timeout(c.at(64));
    assert_eq!(s.claimed_by(&dev), None);
    assert!(drain(&mut s).is_empty());
}

#[test]
fn shutdown_reports_everything_summed_per_client_and_device() {
    let c = clock();
    let mut s = shard();
    let a = client("acme", "a");
    let b = client("acme", "b");
    let mut sids = Vec::new();
    for (n, holder) in [("1", &a), ("2", &a), ("3", &b)] {
        let dev = device("acme", n);
        let sid = s.handle_register(dev.clone(), c.at(0));
        s.handle_client_presence(holder, true, c.at(0));
        s.handle_claim(holder, &dev, c.at(0)).expect("claim");
        let conn = 10 + sids.len() as u64;
        s.handle_pos_session_opened(&sid, holder, ConnId(conn), c.at(0))
            .expect("holder");
        sids.push((sid, conn));
    }
    for (i, (sid, conn)) in sids.iter().enumerate() {
        for k in 0..=i {
            let r = s.handle_message_from_pos(sid, ConnId(*conn), binary(k + 1), c.at(1));
            assert_eq!(r, Route::Queued);
        }
    }
    s.handle_shutdown(c.at(2));
    assert_eq!(
        drain(&mut s),
        vec![
            undelivered(&a, "1", 1, 1),
            undelivered(&a, "2", 2, 3),
            undelivered(&b, "3", 3, 6),
        ]
    );
    assert_eq!(s.poll_timeout(), None);
    // After shutdown nothing is queued: a frame for an offline device is reported at once.
    let (sid, conn) = &sids[0];
    assert_eq!(
        s.handle_message_from_pos(sid, ConnId(*conn), binary(4), c.at(3)),
        Route::Rejected
    );
    assert_eq!(drain(&mut s), vec![undelivered(&a, "1", 1, 4)]);
}

#[test]
fn unknown_sessions_and_other_clients_are_refused() {
    let c = clock();
    let (mut s, sid, _dev, pos) = claimed_with_session(&c);
    let bogus = SessionId::from_random([1; 16]);
    let err = s
        .handle_device_connected(&bogus, ConnId(5), c.at(1))
        .expect_err("unknown");
    assert_eq!((err.close_code(), err.status()), (4404, 404));
    let err = s.check_pos_session(&bogus, &pos).expect_err("unknown");
    assert_eq!(err.status(), 404);
    let intruder = client("acme", "intruder");
    let err = s
        .check_pos_session(&sid, &intruder)
        .expect_err("not holder");
    assert_eq!((err.status(), err.close_code()), (403, 1008));
    assert!(s
        .handle_pos_session_opened(&sid, &intruder, ConnId(6), c.at(1))
        .is_err());
    assert_eq!(
        s.handle_message_from_pos(&sid, ConnId(6), text("x"), c.at(1)),
        Route::Dropped(DropReason::UnknownConnection)
    );
    assert_eq!(
        s.handle_message_from_device(&bogus, ConnId(1), text("x"), c.at(1)),
        Route::Dropped(DropReason::UnknownSession)
    );
    assert!(drain(&mut s).is_empty());
}

#[test]
fn a_newer_pos_session_replaces_the_older_and_late_frames_on_it_are_reported() {
    let c = clock();
    let (mut s, sid, _dev, pos) = claimed_with_session(&c);
    s.handle_pos_session_opened(&sid, &pos, ConnId(11), c.at(1))
        .expect("holder");
    let actions = drain(&mut s);
    assert_eq!(actions.len(), 1);
    assert!(close(10, 4000)(&actions[0]));
    assert_eq!(
        s.handle_message_from_pos(&sid, ConnId(10), binary(3), c.at(2)),
        Route::Rejected
    );
    assert_eq!(drain(&mut s), vec![undelivered(&pos, "1001", 1, 3)]);
    // The old session closing does not detach the new one.
    s.handle_pos_session_closed(&sid, ConnId(10), c.at(3));
    assert_eq!(
        s.handle_message_from_device(&sid, ConnId(1), text("hi"), c.at(3)),
        Route::Forward {
            conn: ConnId(11),
            message: text("hi")
        }
    );
}

#[test]
fn device_frames_wait_for_the_pos_session_and_are_dropped_without_a_claim() {
    let c = clock();
    let mut s = shard();
    let dev = device("acme", "4");
    let pos = client("acme", "p");
    let sid = s.handle_register(dev.clone(), c.at(0));
    s.handle_device_connected(&sid, ConnId(1), c.at(0))
        .expect("known");
    assert_eq!(
        s.handle_message_from_device(&sid, ConnId(1), text("nobody"), c.at(0)),
        Route::Dropped(DropReason::NoClaim)
    );
    s.handle_client_presence(&pos, true, c.at(0));
    s.handle_claim(&pos, &dev, c.at(0)).expect("claim");
    for m in ["a", "b"] {
        assert_eq!(
            s.handle_message_from_device(&sid, ConnId(1), text(m), c.at(1)),
            Route::Queued
        );
    }
    s.handle_pos_session_opened(&sid, &pos, ConnId(10), c.at(2))
        .expect("holder");
    assert_eq!(
        drain(&mut s),
        vec![send(10, text("a")), send(10, text("b"))]
    );
    assert_eq!(s.stats().device_frames_dropped, 1);
}

#[test]
fn disabling_a_device_closes_it_ends_its_claim_and_its_session() {
    let c = clock();
    let (mut s, sid, dev, pos) = claimed_with_session(&c);
    s.handle_device_disabled(&dev);
    let actions = drain(&mut s);
    assert!(close(1, 1008)(&actions[0]));
    assert_eq!(actions[1], status(&pos, "1001", false));
    assert!(close(10, 4001)(&actions[2]));
    assert_eq!(actions.len(), 3);
    assert!(!s.device_online(&dev));
    assert_eq!(
        s.handle_claim(&pos, &dev, c.at(1)),
        Err(ClaimError::Offline {
            serial: serial("1001")
        })
    );
    assert!(matches!(
        s.handle_device_connected(&sid, ConnId(2), c.at(1)),
        Err(SessionError::UnknownSession { .. })
    ));
    // Frames still arriving on the POS session are reported.
    assert_eq!(
        s.handle_message_from_pos(&sid, ConnId(10), binary(8), c.at(1)),
        Route::Rejected
    );
    assert_eq!(drain(&mut s), vec![undelivered(&pos, "1001", 1, 8)]);
    // Registering again (once re-enabled) gives the same session id back.
    assert_eq!(s.handle_register(dev.clone(), c.at(2)), sid);
}

#[test]
fn deleting_a_client_ends_its_claims_with_1008_and_reports() {
    let c = clock();
    let (mut s, sid, dev, pos) = claimed_with_session(&c);
    s.handle_device_disconnected(&sid, ConnId(1), c.at(1));
    assert_eq!(
        s.handle_message_from_pos(&sid, ConnId(10), binary(9), c.at(1)),
        Route::Queued
    );
    drain(&mut s);
    s.handle_client_deleted(&pos);
    let actions = drain(&mut s);
    assert!(close(10, 1008)(&actions[0]));
    assert_eq!(actions[1..], [undelivered(&pos, "1001", 1, 9)]);
    assert_eq!(s.claimed_by(&dev), None);
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn session_ids_are_derived_per_device_and_key() {
    let c = clock();
    let mut a = shard();
    let mut b = shard();
    let other: Shard = DeviceShard::new(SessionKeyring::new([8; 32]), RelayLimits::default());
    let dev = device("acme", "1");
    let sid = a.handle_register(dev.clone(), c.at(0));
    assert_eq!(
        b.handle_register(dev.clone(), c.at(0)),
        sid,
        "any shard, same id"
    );
    assert_eq!(a.session_id(&dev), sid);
    assert_ne!(a.session_id(&device("acme", "2")), sid);
    assert_ne!(a.session_id(&device("other", "1")), sid);
    assert_ne!(other.session_id(&dev), sid);
}

// ---- ClientHub ----

#[test]
fn hub_announces_presence_on_first_and_last_channel() {
    let c = clock();
    let mut hub = ClientHub::new();
    let p = client("acme", "p");
    hub.handle_control_opened(&p, ConnId(1), c.at(0));
    hub.handle_control_opened(&p, ConnId(2), c.at(0));
    assert_eq!(
        drain_hub(&mut hub),
        vec![HubAction::Presence {
            client: p.clone(),
            online: true
        }]
    );
    assert_eq!(hub.channel_count(&p), 2);
    hub.handle_control_closed(&p, ConnId(1), c.at(1));
    assert!(drain_hub(&mut hub).is_empty());
    hub.handle_control_closed(&p, ConnId(1), c.at(1));
    assert!(drain_hub(&mut hub).is_empty(), "closing twice is harmless");
    hub.handle_control_closed(&p, ConnId(2), c.at(2));
    assert_eq!(
        drain_hub(&mut hub),
        vec![HubAction::Presence {
            client: p.clone(),
            online: false
        }]
    );
}

#[test]
fn hub_sends_events_to_every_channel_of_the_client_only() {
    let c = clock();
    let mut hub = ClientHub::new();
    let p = client("acme", "p");
    let q = client("acme", "q");
    hub.handle_control_opened(&p, ConnId(1), c.at(0));
    hub.handle_control_opened(&p, ConnId(2), c.at(0));
    hub.handle_control_opened(&q, ConnId(3), c.at(0));
    drain_hub(&mut hub);
    let ev = ClientEventKind::DeviceStatus {
        serial: serial("1"),
        online: false,
    };
    hub.handle_client_event(&p, ev.clone(), c.at(1));
    assert_eq!(
        drain_hub(&mut hub),
        vec![
            HubAction::SendEvent {
                conn: ConnId(1),
                event: ev.clone()
            },
            HubAction::SendEvent {
                conn: ConnId(2),
                event: ev
            },
        ]
    );
}

#[test]
fn hub_keeps_undelivered_summed_per_tsn_until_a_channel_opens() {
    let c = clock();
    let mut hub = ClientHub::new();
    let p = client("acme", "p");
    let u = |s: &str, frames, bytes| ClientEventKind::Undelivered {
        serial: serial(s),
        frames,
        bytes,
    };
    hub.handle_client_event(&p, u("2", 1, 10), c.at(0));
    hub.handle_client_event(&p, u("1", 2, 5), c.at(0));
    hub.handle_client_event(&p, u("2", 3, 7), c.at(1));
    hub.handle_client_event(
        &p,
        ClientEventKind::DeviceStatus {
            serial: serial("1"),
            online: true,
        },
        c.at(1),
    );
    assert!(drain_hub(&mut hub).is_empty());
    hub.handle_control_opened(&p, ConnId(4), c.at(2));
    assert_eq!(
        drain_hub(&mut hub),
        vec![
            HubAction::Presence {
                client: p.clone(),
                online: true
            },
            HubAction::SendEvent {
                conn: ConnId(4),
                event: u("1", 2, 5)
            },
            HubAction::SendEvent {
                conn: ConnId(4),
                event: u("2", 4, 17)
            },
        ]
    );
    // Delivered once: a second channel gets nothing old.
    hub.handle_control_opened(&p, ConnId(5), c.at(3));
    assert!(drain_hub(&mut hub).is_empty());
}

#[test]
fn hub_shutdown_and_client_deletion_close_channels() {
    let c = clock();
    let mut hub = ClientHub::new();
    let p = client("acme", "p");
    let q = client("acme", "q");
    hub.handle_control_opened(&p, ConnId(1), c.at(0));
    hub.handle_control_opened(&q, ConnId(2), c.at(0));
    hub.handle_client_event(
        &client("acme", "gone"),
        ClientEventKind::Undelivered {
            serial: serial("1"),
            frames: 1,
            bytes: 1,
        },
        c.at(0),
    );
    drain_hub(&mut hub);
    hub.handle_client_deleted(&q);
    assert_eq!(
        drain_hub(&mut hub),
        vec![HubAction::CloseConn {
            conn: ConnId(2),
            code: 1008,
            reason: "client deleted"
        }]
    );
    assert_eq!(
        hub.handle_shutdown(),
        1,
        "one kept report can never be sent"
    );
    assert_eq!(
        drain_hub(&mut hub),
        vec![HubAction::CloseConn {
            conn: ConnId(1),
            code: 1001,
            reason: "relay shutting down"
        }]
    );
}

#[test]
fn shard_events_reach_the_hub_in_order() {
    // The two state machines together: an offline device, a POS whose control channel is
    // closed, then reopened: it learns what was lost.
    let c = clock();
    let (mut s, sid, _dev, pos) = claimed_with_session(&c);
    let mut hub = ClientHub::new();
    s.handle_device_disconnected(&sid, ConnId(1), c.at(1));
    assert_eq!(
        s.handle_message_from_pos(&sid, ConnId(10), binary(4), c.at(1)),
        Route::Queued
    );
    assert_eq!(
        s.handle_message_from_pos(&sid, ConnId(10), binary(6), c.at(1)),
        Route::Queued
    );
    s.handle_timeout(c.at(31));
    for a in drain(&mut s) {
        if let Action::ClientEvent { client, event } = a {
            hub.handle_client_event(&client, event, c.at(31));
        }
    }
    hub.handle_control_opened(&pos, ConnId(100), c.at(40));
    let sent: Vec<Vec<u8>> = drain_hub(&mut hub)
        .into_iter()
        .filter_map(|a| match a {
            HubAction::SendEvent { event, .. } => Some(event.to_json()),
            _ => None,
        })
        .collect();
    assert_eq!(
        sent,
        vec![br#"{"type":"undelivered","tsn":"1001","frames":2,"bytes":10}"#.to_vec()],
        "device_status found no channel and is dropped; undelivered is kept"
    );
}

#[test]
fn last_seen_is_when_the_current_connection_opened_or_closed_and_survives_a_disable() {
    // §10 `last_seen`: null until the device connects; the time of its last connection
    // event after; a replaced connection closing late does not move it.
    let c = clock();
    let mut s = shard();
    let d = device("acme", "1");
    assert_eq!(s.device_last_seen(&d), None, "never connected since start");
    let sid = s.handle_register(d.clone(), c.at(0));
    assert_eq!(s.device_last_seen(&d), None, "registered is not connected");
    s.handle_device_connected(&sid, ConnId(1), c.at(1)).unwrap();
    assert_eq!(s.device_last_seen(&d), Some(c.at(1)));
    s.handle_device_connected(&sid, ConnId(2), c.at(2)).unwrap();
    s.handle_device_disconnected(&sid, ConnId(1), c.at(3));
    assert_eq!(s.device_last_seen(&d), Some(c.at(2)), "the replaced one");
    s.handle_device_disconnected(&sid, ConnId(2), c.at(4));
    assert_eq!(
        s.device_last_seen(&d),
        Some(c.at(4)),
        "when it went offline"
    );
    s.handle_device_disabled(&d);
    assert_eq!(
        s.device_last_seen(&d),
        Some(c.at(4)),
        "kept past the session's end"
    );
    assert_eq!(s.device_last_seen(&device("acme", "2")), None);
}

#[test]
fn undeliverable_frames_of_a_client_without_a_control_channel_close_its_session_4002() {
    // §5a: "when frames that this client sent are undeliverable (§6) while none of its
    // control channels is open, the session is closed with 4002"; the report is kept for
    // its next control channel too (§4).
    let c = clock();
    let mut s = shard_with(RelayLimits {
        offline_queue_bytes: 100,
        ..RelayLimits::default()
    });
    let dev = device("acme", "9");
    let pos = client("acme", "p");
    let sid = s.handle_register(dev.clone(), c.at(0));
    s.handle_claim(&pos, &dev, c.at(0)).expect("claim");
    s.handle_pos_session_opened(&sid, &pos, ConnId(10), c.at(0))
        .expect("holder");
    assert_eq!(
        s.handle_message_from_pos(&sid, ConnId(10), binary(101), c.at(1)),
        Route::Rejected
    );
    assert_eq!(
        drain(&mut s),
        vec![
            Action::CloseUndelivered {
                conn: ConnId(10),
                count: posrelay_core::relay::Count {
                    frames: 1,
                    bytes: 101
                }
            },
            undelivered(&pos, "9", 1, 101),
        ]
    );
    // With a control channel open, the report alone.
    s.handle_client_presence(&pos, true, c.at(2));
    assert_eq!(
        s.handle_message_from_pos(&sid, ConnId(10), binary(101), c.at(2)),
        Route::Rejected
    );
    assert_eq!(drain(&mut s), vec![undelivered(&pos, "9", 1, 101)]);
}

/// §12 "claims stay (they live in the cluster's store)": a cluster node's shard announces
/// each claim that starts and ends, so that the node records it where the device's next
/// node finds it; that node restores it without announcing it again, and it holds there
/// (another client is busy) until the claim grace ends it, announced.
#[test]
fn a_cluster_node_announces_claims_and_restores_one_brought_from_another_node() {
    let c = clock();
    let d = device("acme.com", "9001");
    let pos = client("acme.com", "pos-1");
    let other = client("acme.com", "pos-2");

    let mut old = shard();
    old.announce_claims();
    let _ = old.handle_register(d.clone(), c.at(0));
    old.handle_claim(&pos, &d, c.at(0)).unwrap();
    old.handle_claim(&pos, &d, c.at(1)).unwrap();
    assert_eq!(
        drain(&mut old),
        vec![Action::ClaimChanged {
            device: d.clone(),
            holder: Some(pos.clone())
        }],
        "announced once, when it starts"
    );
    old.handle_release(&pos, &d, c.at(2)).unwrap();
    assert!(drain(&mut old).contains(&Action::ClaimChanged {
        device: d.clone(),
        holder: None
    }));

    let mut new = shard();
    new.announce_claims();
    let _ = new.handle_register(d.clone(), c.at(10));
    assert!(new.restore_claim(&pos, &d, c.at(10)));
    assert_eq!(drain(&mut new), vec![], "a restored claim is not announced");
    assert!(matches!(
        new.handle_claim(&other, &d, c.at(11)),
        Err(ClaimError::DeviceBusy { .. })
    ));
    assert!(
        new.handle_claim(&pos, &d, c.at(11)).is_ok(),
        "idempotent for its holder"
    );
    assert!(
        !new.restore_claim(&other, &d, c.at(12)),
        "another claim holds"
    );
    // Nobody showed up: the claim grace ends it, and the end is announced.
    new.handle_timeout(c.at(10) + RelayLimits::default().claim_grace);
    assert!(drain(&mut new).contains(&Action::ClaimChanged {
        device: d,
        holder: None
    }));

    // A single node announces nothing.
    let mut alone = shard();
    let d2 = device("acme.com", "9002");
    let _ = alone.handle_register(d2.clone(), c.at(0));
    alone.handle_claim(&pos, &d2, c.at(0)).unwrap();
    assert_eq!(drain(&mut alone), vec![]);
}
