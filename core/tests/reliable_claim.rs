//! `ReliableClaim`, rule by rule (PROTOCOL.md §11), through its public API: every output
//! asserted in order.

mod reliable_harness;

use std::time::Duration;

use posrelay_core::relay::{ConnId, Count, MessageKind, RelayLimits};
use posrelay_core::reliable::{
    EnvelopeError, Flow, LogRecord, ReliableError, ReliableEvent, ReliableLimits, ReliableLog,
    ResumeFailure,
};
use reliable_harness::*;

const POS: u64 = 100;
const DEV: u64 = 1;

fn limits() -> ReliableLimits {
    ReliableLimits::new(&RelayLimits::default(), 1024)
}

/// A claim with its device online and a POS session resumed at 0.
fn live() -> Relay {
    let mut r = Relay::new(limits());
    r.device_connect(DEV);
    r.open(POS);
    r.pos(POS, r#"{"type":"resume","seq":0}"#).unwrap();
    assert_eq!(r.take(), vec![resumed(POS, 0)]);
    r
}

#[test]
fn a_device_message_reaches_the_pos_only_once_durable() {
    let mut r = live();
    r.auto_commit = false;
    assert_eq!(r.device_says(DEV, "<RESPONSE/>"), Some(s(1)));
    assert_eq!(r.take(), vec![], "nothing before the log commits");
    assert!(matches!(
        r.uncommitted[0].records[..],
        [LogRecord::DeviceHeld { .. }]
    ));
    r.commit();
    assert_eq!(r.take(), vec![data(POS, 1, "<RESPONSE/>")]);
    assert_eq!(r.claim.held_bytes(), 11);
    r.pos(POS, r#"{"type":"ack","seq":1}"#).unwrap();
    assert_eq!(r.claim.held_bytes(), 0);
    r.commit();
    assert_eq!(r.log.load().unwrap()[0].held, vec![]);
    assert_eq!(r.log.load().unwrap()[0].device_acked, s(1));
}

#[test]
fn a_pos_message_to_an_online_device_is_logged_before_and_after_the_write() {
    let mut r = live();
    r.auto_commit = false;
    r.pos_data(POS, 1, "<TRANSACTION/>").unwrap();
    assert_eq!(r.take(), vec![], "not written before PosHanding is durable");
    assert_eq!(
        r.uncommitted[0].records,
        vec![LogRecord::PosHanding { upto: s(1) }]
    );
    r.commit();
    assert_eq!(r.take(), vec![to_device(DEV, 1, "<TRANSACTION/>")]);
    r.written(DEV, 1);
    assert_eq!(r.take(), vec![], "no ack before PosDone is durable");
    r.commit();
    assert_eq!(r.take(), vec![ack(POS, 1)]);
    let snap = &r.log.load().unwrap()[0];
    assert_eq!((snap.pos_handed, snap.pos_done), (s(1), s(1)));
}

#[test]
fn a_pos_message_for_an_offline_device_is_safe_once_queued() {
    let mut r = Relay::new(limits());
    r.open(POS);
    r.pos(POS, r#"{"type":"resume","seq":0}"#).unwrap();
    r.pos_data(POS, 1, "a").unwrap();
    r.pos_data(POS, 2, "b").unwrap();
    assert_eq!(r.take(), vec![resumed(POS, 0), ack(POS, 1), ack(POS, 2)]);
    assert_eq!(r.log.load().unwrap()[0].queued.len(), 2);
    // The device comes back: the queue goes first, in order, then new messages.
    r.device_connect(DEV);
    r.pos_data(POS, 3, "c").unwrap();
    assert_eq!(
        r.take(),
        vec![
            to_device(DEV, 1, "a"),
            to_device(DEV, 2, "b"),
            to_device(DEV, 3, "c")
        ]
    );
    r.written(DEV, 3);
    assert_eq!(r.take(), vec![ack(POS, 3)]);
    assert_eq!(r.log.load().unwrap()[0].queued, vec![]);
}

#[test]
fn duplicates_are_acknowledged_again_and_never_forwarded_twice() {
    let mut r = live();
    r.pos_data(POS, 1, "x").unwrap();
    assert_eq!(r.take(), vec![to_device(DEV, 1, "x")]);
    // On its way: no second write, and no ack yet.
    r.pos_data(POS, 1, "x").unwrap();
    assert_eq!(r.take(), vec![]);
    r.written(DEV, 1);
    assert_eq!(r.take(), vec![ack(POS, 1)]);
    // Safe: acknowledged again.
    r.pos_data(POS, 1, "x").unwrap();
    assert_eq!(r.take(), vec![ack(POS, 1)]);
    // The same number on a new session, after a resume.
    r.open(POS + 1);
    assert_eq!(r.take(), vec![closed(POS, 4000)]);
    r.pos(POS + 1, r#"{"type":"resume","seq":0}"#).unwrap();
    r.pos_data(POS + 1, 1, "x").unwrap();
    assert_eq!(r.take(), vec![resumed(POS + 1, 1), ack(POS + 1, 1)]);
}

#[test]
fn the_window_pauses_the_device_until_the_pos_acks() {
    let mut r = live();
    let chunk = "x".repeat(400);
    for n in 1..=2 {
        assert_eq!(r.device_says(DEV, &chunk), Some(s(n)));
        assert_eq!(r.claim.device_flow(), Flow::Open);
    }
    // A message read before the io saw the pause is still taken, and numbered.
    assert_eq!(r.device_says(DEV, &chunk), Some(s(3)));
    assert_eq!(r.claim.device_flow(), Flow::Paused);
    assert_eq!(r.device_says(DEV, &chunk), Some(s(4)));
    assert_eq!(r.take().len(), 4);
    r.pos(POS, r#"{"type":"ack","seq":1}"#).unwrap();
    assert_eq!(
        r.claim.device_flow(),
        Flow::Paused,
        "1200 bytes held of 1024"
    );
    r.pos(POS, r#"{"type":"ack","seq":2}"#).unwrap();
    assert_eq!(r.claim.device_flow(), Flow::Open, "800 bytes held");
}

#[test]
fn resume_replays_what_the_pos_has_not_processed() {
    let mut r = live();
    for t in ["r1", "r2", "r3"] {
        r.device_says(DEV, t);
    }
    r.pos_data(POS, 1, "q1").unwrap();
    r.written(DEV, 1);
    r.take();
    r.claim.handle_session_closed(ConnId(POS), r.now);
    r.device_says(DEV, "r4");
    assert_eq!(r.take(), vec![], "no session: held");
    r.open(POS + 1);
    r.pos(POS + 1, r#"{"type":"resume","seq":2}"#).unwrap();
    assert_eq!(
        r.take(),
        vec![
            resumed(POS + 1, 1),
            data(POS + 1, 3, "r3"),
            data(POS + 1, 4, "r4")
        ]
    );
    // The resume acknowledged 1 and 2.
    assert_eq!(r.claim.held_bytes(), 4);
}

#[test]
fn resumes_that_cannot_be_honoured_answer_4409() {
    // A resume above 0 on a claim never resumed names an older claim's numbers.
    let mut r = Relay::new(limits());
    r.open(POS);
    let err = r.pos(POS, r#"{"type":"resume","seq":3}"#).unwrap_err();
    assert_eq!(err, ReliableError::ResumeFailed(ResumeFailure::ClaimEnded));
    let out = r.take();
    assert!(
        matches!(&out[..], [Out::Pos(_, posrelay_core::reliable::Envelope::ResumeFailed { reason }), Out::Close(_, 4409)] if reason.contains("new claim"))
    );

    let mut r = live();
    r.device_says(DEV, "a");
    r.device_says(DEV, "b");
    r.pos(POS, r#"{"type":"ack","seq":2}"#).unwrap();
    r.take();
    r.open(POS + 1);
    assert_eq!(r.take(), vec![closed(POS, 4000)]);
    let err = r.pos(POS + 1, r#"{"type":"resume","seq":1}"#).unwrap_err();
    assert_eq!(
        err,
        ReliableError::ResumeFailed(ResumeFailure::NoLongerHeld {
            resume: s(1),
            acked: s(2)
        })
    );
    assert_eq!(r.take()[1..], [closed(POS + 1, 4409)]);
    r.open(POS + 2);
    let err = r.pos(POS + 2, r#"{"type":"resume","seq":3}"#).unwrap_err();
    assert_eq!(
        err,
        ReliableError::ResumeFailed(ResumeFailure::Future {
            resume: s(3),
            last: s(2)
        })
    );
    assert_eq!(err.close_code(), 4409);
    // A message numbered but not yet durable cannot have been processed either.
    r.auto_commit = false;
    r.device_says(DEV, "c");
    r.open(POS + 3);
    assert!(matches!(
        r.pos(POS + 3, r#"{"type":"resume","seq":3}"#),
        Err(ReliableError::ResumeFailed(ResumeFailure::Future { .. }))
    ));
}

#[test]
fn broken_rules_close_with_1002_and_name_the_rule() {
    let cases: &[(&[&str], ReliableError)] = &[
        (
            &[r#"{"type":"ack","seq":0}"#],
            ReliableError::FirstNotResume { found: "ack" },
        ),
        (
            &[
                r#"{"type":"resume","seq":0}"#,
                r#"{"type":"resume","seq":0}"#,
            ],
            ReliableError::ResumeAgain,
        ),
        (
            &[r#"{"type":"resume","seq":0}"#, r#"{"type":"ack","seq":1}"#],
            ReliableError::AckBeyondSent {
                ack: s(1),
                sent: s(0),
            },
        ),
        (
            &[
                r#"{"type":"resume","seq":0}"#,
                r#"{"type":"data","seq":2,"text":"x"}"#,
            ],
            ReliableError::SeqGap {
                seq: s(2),
                expected: s(1),
            },
        ),
        (
            &[
                r#"{"type":"resume","seq":0}"#,
                r#"{"type":"resumed","seq":0}"#,
            ],
            ReliableError::NotFromPos { found: "resumed" },
        ),
        (
            &[r#"{"type":"resume","seq":0}"#, r#"{"type":"data","seq":1}"#],
            ReliableError::Envelope(EnvelopeError::DataPayload),
        ),
        (
            &["not json"],
            ReliableError::Envelope(EnvelopeError::NotJson),
        ),
    ];
    for (messages, want) in cases {
        let mut r = live();
        r.open(POS + 1);
        r.take();
        let (last, first) = messages.split_last().unwrap();
        for m in first {
            r.pos(POS + 1, m).unwrap();
        }
        assert_eq!(r.pos(POS + 1, last).as_ref(), Err(want));
        let out = r.take();
        assert_eq!(out.last(), Some(&closed(POS + 1, 1002)), "{want}");
        // The session is gone: what it sends now is ignored.
        assert_eq!(r.pos(POS + 1, r#"{"type":"resume","seq":0}"#), Ok(()));
        assert_eq!(r.take(), vec![]);
    }
    // A binary WebSocket message is not an envelope.
    let mut r = live();
    let err = r
        .claim
        .handle_pos_message(ConnId(POS), MessageKind::Binary, "{}".into(), r.now)
        .unwrap_err();
    assert_eq!(err.close_code(), 1002);
    r.step();
    assert_eq!(r.take(), vec![closed(POS, 1002)]);
}

#[test]
fn a_full_queue_reports_by_number_before_the_ack_that_covers_it() {
    let mut l = limits();
    l.queue_frames = 1;
    let mut r = Relay::new(l);
    r.open(POS);
    r.pos(POS, r#"{"type":"resume","seq":0}"#).unwrap();
    r.pos_data(POS, 1, "fits").unwrap();
    r.pos_data(POS, 2, "does not").unwrap();
    r.pos_data(POS, 3, "neither").unwrap();
    assert_eq!(
        r.take(),
        vec![
            resumed(POS, 0),
            ack(POS, 1),
            undelivered(POS, 2, 2),
            ack(POS, 2),
            undelivered(POS, 3, 3),
            ack(POS, 3)
        ]
    );
}

#[test]
fn queued_messages_expire_after_the_grace_and_are_reported() {
    let mut r = Relay::new(limits());
    r.open(POS);
    r.pos(POS, r#"{"type":"resume","seq":0}"#).unwrap();
    r.pos_data(POS, 1, "a").unwrap();
    r.advance(SECOND * 10);
    r.pos_data(POS, 2, "b").unwrap();
    r.take();
    assert_eq!(r.claim.poll_timeout(), Some(r.now + SECOND * 20));
    r.advance(SECOND * 20);
    assert_eq!(r.take(), vec![undelivered(POS, 1, 1)]);
    r.advance(SECOND * 10);
    assert_eq!(r.take(), vec![undelivered(POS, 2, 2)]);
    assert_eq!(r.claim.poll_timeout(), None);
    assert_eq!(r.log.load().unwrap()[0].queued, vec![]);
}

#[test]
fn a_device_that_goes_away_mid_write_gets_its_messages_reported_not_resent() {
    let mut r = live();
    r.pos_data(POS, 1, "a").unwrap();
    r.pos_data(POS, 2, "b").unwrap();
    r.pos_data(POS, 3, "c").unwrap();
    assert_eq!(r.take().len(), 3);
    r.written(DEV, 1);
    r.device_disconnect(DEV);
    assert_eq!(
        r.take(),
        vec![ack(POS, 1), undelivered(POS, 2, 3), ack(POS, 3)]
    );
    r.device_connect(DEV + 1);
    assert_eq!(r.take(), vec![], "nothing is written twice");
    // A write reported late by the old connection changes nothing.
    r.written(DEV, 3);
    assert_eq!(r.take(), vec![]);
}

#[test]
fn reports_are_repeated_after_resume_until_the_pos_has_surely_read_them() {
    let mut r = live();
    r.pos_data(POS, 1, "a").unwrap();
    r.device_disconnect(DEV);
    r.pos_data(POS, 2, "queued").unwrap();
    assert_eq!(
        r.take(),
        vec![
            to_device(DEV, 1, "a"),
            undelivered(POS, 1, 1),
            ack(POS, 1),
            ack(POS, 2)
        ]
    );
    // The POS may not have read the report before its session broke: `resumed` stops
    // before it, the report comes again, then the ack.
    r.open(POS + 1);
    r.pos(POS + 1, r#"{"type":"resume","seq":0}"#).unwrap();
    assert_eq!(
        r.take(),
        vec![
            closed(POS, 4000),
            resumed(POS + 1, 0),
            undelivered(POS + 1, 1, 1),
            ack(POS + 1, 2)
        ]
    );
    // It sends 1 again: already reported on this session, so nothing more.
    r.pos_data(POS + 1, 1, "a").unwrap();
    assert_eq!(r.take(), vec![]);
    // The POS acks a device message sent after the report: it has read it.
    r.device_connect(DEV + 1);
    r.device_says(DEV + 1, "answer");
    r.pos(POS + 1, r#"{"type":"ack","seq":1}"#).unwrap();
    r.take();
    assert_eq!(r.log.load().unwrap()[0].reports, vec![]);
    r.open(POS + 2);
    r.pos(POS + 2, r#"{"type":"resume","seq":1}"#).unwrap();
    assert_eq!(
        r.take(),
        vec![closed(POS + 1, 4000), resumed(POS + 2, 2)],
        "read: no longer repeated, and resumed covers it"
    );
}

#[test]
fn a_restart_keeps_numbers_held_messages_and_the_queue() {
    let mut r = live();
    r.device_says(DEV, "r1");
    r.device_says(DEV, "r2");
    r.pos(POS, r#"{"type":"ack","seq":1}"#).unwrap();
    r.device_disconnect(DEV);
    r.pos_data(POS, 1, "q1").unwrap();
    r.take();
    // Not committed when the relay dies: a device message and a POS message.
    r.auto_commit = false;
    r.device_connect(DEV);
    r.device_says(DEV, "lost");
    r.restart();
    r.auto_commit = true;
    r.take();
    r.device_connect(DEV + 1);
    assert_eq!(r.take(), vec![to_device(DEV + 1, 1, "q1")]);
    // Numbering goes on after the last durable number; the lost one was never sent.
    assert_eq!(r.device_says(DEV + 1, "r3"), Some(s(3)));
    r.open(POS + 1);
    r.pos(POS + 1, r#"{"type":"resume","seq":1}"#).unwrap();
    assert_eq!(
        r.take(),
        vec![
            resumed(POS + 1, 1),
            data(POS + 1, 2, "r2"),
            data(POS + 1, 3, "r3")
        ]
    );
}

#[test]
fn a_restart_between_write_and_done_reports_instead_of_writing_twice() {
    let mut r = live();
    r.pos_data(POS, 1, "a").unwrap();
    assert_eq!(r.take(), vec![to_device(DEV, 1, "a")]);
    r.auto_commit = false;
    r.written(DEV, 1);
    r.restart();
    // Handed, never recorded done: reported (its bytes were never stored), and settled.
    assert_eq!(
        r.uncommitted[0].records,
        vec![
            LogRecord::PosReported {
                range: range(1, 1),
                bytes: 0
            },
            LogRecord::PosDone { upto: s(1) }
        ]
    );
    r.commit();
    r.device_connect(DEV + 1);
    r.open(POS + 1);
    r.pos(POS + 1, r#"{"type":"resume","seq":0}"#).unwrap();
    assert_eq!(
        r.take(),
        vec![
            resumed(POS + 1, 0),
            undelivered(POS + 1, 1, 1),
            ack(POS + 1, 1)
        ]
    );
    // The POS sends it again: it hears the report, the device never sees it twice.
    r.pos_data(POS + 1, 1, "a").unwrap();
    assert_eq!(r.take(), vec![]);
}

#[test]
fn an_ended_claim_reports_what_never_left_and_forgets_everything() {
    let mut r = Relay::new(limits());
    r.open(POS);
    r.pos(POS, r#"{"type":"resume","seq":0}"#).unwrap();
    r.pos_data(POS, 1, "abc").unwrap();
    r.pos_data(POS, 2, "de").unwrap();
    r.take();
    r.claim.handle_claim_ended(4001, "claim released", r.now);
    r.step();
    assert_eq!(r.take(), vec![closed(POS, 4001)]);
    assert_eq!(
        r.events,
        vec![ReliableEvent::Undelivered(Count {
            frames: 2,
            bytes: 5
        })]
    );
    assert_eq!(r.log.load().unwrap(), vec![]);
    assert!(r.claim.is_ended());
}

#[test]
fn the_pos_is_paused_while_its_unsafe_messages_fill_the_window() {
    let mut r = live();
    r.auto_commit = false;
    let chunk = "y".repeat(600);
    r.pos_data(POS, 1, &chunk).unwrap();
    assert_eq!(r.claim.pos_flow(), Flow::Open);
    r.pos_data(POS, 2, &chunk).unwrap();
    assert_eq!(r.claim.pos_flow(), Flow::Paused);
    r.commit();
    r.written(DEV, 2);
    r.commit();
    assert_eq!(r.claim.pos_flow(), Flow::Open);
    assert_eq!(r.take().last(), Some(&ack(POS, 2)));
}

#[test]
fn queue_grace_counts_from_the_restart() {
    let mut r = Relay::new(limits());
    r.open(POS);
    r.pos(POS, r#"{"type":"resume","seq":0}"#).unwrap();
    r.pos_data(POS, 1, "a").unwrap();
    r.advance(SECOND * 29);
    r.restart();
    r.advance(SECOND * 29);
    assert_eq!(r.claim.poll_timeout(), Some(r.now + SECOND));
    r.advance(Duration::from_millis(999));
    assert_eq!(r.log.load().unwrap()[0].queued.len(), 1);
    r.advance(Duration::from_millis(1));
    assert_eq!(r.log.load().unwrap()[0].queued.len(), 0);
    assert_eq!(r.log.load().unwrap()[0].reports.len(), 1);
}
