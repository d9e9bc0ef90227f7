//! The reliable log in `posrelay.redb` survives `kill -9` (PROTOCOL.md §11: held messages,
//! numbers and the claim "survive a relay restart"): a child process commits batches and
//! says so after each commit returned; it is SIGKILLed right after one of those lines, and
//! the reopened file holds every batch it announced, whole, and nothing half-applied.
//!
//! The child is this same test binary, started with `CHILD_DIR` set: the test function
//! then plays the child and never returns (it is killed, or stops after `MAX_BATCHES`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use posrelay_core::ids::{ClientId, ClientKey, DeviceKey, DomainName, Serial, SessionId};
use posrelay_core::relay::{MessageKind, RelayedMessage};
use posrelay_core::reliable::{ClaimRecord, LogBatch, LogRecord, LogTicket, ReliableLog, Seq};
use posrelay_core::store::RedbStore;

const CHILD_DIR: &str = "POSRELAY_RELIABLE_CRASH_CHILD_DIR";
const KILL_AFTER: u64 = 25;
const MAX_BATCHES: u64 = 2_000;

fn device() -> DeviceKey {
    DeviceKey {
        domain: DomainName::new("acme").unwrap(),
        serial: Serial::new("12345678").unwrap(),
    }
}

fn record() -> ClaimRecord {
    ClaimRecord {
        device: device(),
        client: ClientKey {
            domain: DomainName::new("acme").unwrap(),
            client_id: ClientId::new("pos").unwrap(),
        },
        session_id: SessionId::from_random([9; 16]),
    }
}

/// Batch `n`'s device message: its number in text, then 1 KiB that depends on it.
fn device_message(n: u64) -> RelayedMessage {
    let mut payload = format!("answer {n} ").into_bytes();
    payload.extend((0..1024u64).map(|i| (i * 31 + n) as u8));
    RelayedMessage {
        kind: MessageKind::Binary,
        payload: Bytes::from(payload),
    }
}

fn pos_message(n: u64) -> RelayedMessage {
    RelayedMessage {
        kind: MessageKind::Text,
        payload: Bytes::from(format!("<TRANSACTION n=\"{n}\"/>")),
    }
}

/// Batch `n`: hold device message `n`, queue POS message `n`, and every 4th batch ack the
/// device messages up to `n - 2` and settle the POS ones up to `n - 3`.
fn batch(n: u64) -> LogBatch {
    let mut records = vec![
        LogRecord::DeviceHeld {
            seq: Seq::new(n),
            message: device_message(n),
        },
        LogRecord::PosQueued {
            seq: Seq::new(n),
            message: pos_message(n),
        },
    ];
    if n.is_multiple_of(4) {
        records.push(LogRecord::DeviceAcked {
            upto: Seq::new(n - 2),
        });
        records.push(LogRecord::PosHanding {
            upto: Seq::new(n - 3),
        });
        records.push(LogRecord::PosDone {
            upto: Seq::new(n - 3),
        });
    }
    LogBatch {
        claim: device(),
        records,
        ticket: LogTicket::default(),
    }
}

fn child(dir: &str) -> ! {
    let store = RedbStore::open(std::path::Path::new(dir)).expect("open");
    store.put_claim(&record()).expect("claim");
    let mut out = std::io::stdout();
    for n in 1..=MAX_BATCHES {
        store.commit(&[batch(n)]).expect("commit");
        // The commit returned: from here on, batch n must survive anything.
        writeln!(out, "durable {n}").expect("stdout");
        out.flush().expect("flush");
    }
    std::process::exit(0);
}

#[test]
fn batches_survive_sigkill_right_after_their_commit_returned() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        child(&dir);
    }
    let dir = tempfile_dir();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "batches_survive_sigkill_right_after_their_commit_returned",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(n) = line.strip_prefix("durable ") {
                if tx.send(n.parse::<u64>().unwrap()).is_err() {
                    break;
                }
            }
        }
    });
    let mut announced = 0;
    while announced < KILL_AFTER {
        announced = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the child announces its commits");
    }
    // SIGKILL (std's Child::kill on Unix), while it is committing the next batch.
    child.kill().unwrap();
    child.wait().unwrap();
    // Lines already in the pipe were announced too.
    while let Ok(n) = rx.try_recv() {
        announced = n;
    }

    let store = RedbStore::open(std::path::Path::new(&dir)).expect("reopen after kill -9");
    let claims = store.load().unwrap();
    assert_eq!(claims.len(), 1);
    let c = &claims[0];
    assert_eq!(c.record, record());
    // The last batch applied: at least every one announced; one more may have committed.
    let last = c.held.last().map(|(s, _)| s.get()).unwrap();
    assert!(
        last == announced || last == announced + 1,
        "announced {announced}, found {last}"
    );
    // Exactly what batches 1..=last leave, nothing half-applied.
    let acked = last - last % 4;
    let acked = if acked >= 4 { acked - 2 } else { 0 };
    let done = if last >= 4 { last - last % 4 - 3 } else { 0 };
    assert_eq!(c.device_acked.get(), acked);
    let held: Vec<_> = (acked + 1..=last)
        .map(|n| (Seq::new(n), device_message(n)))
        .collect();
    assert_eq!(c.held, held);
    let queued: Vec<_> = (done + 1..=last)
        .map(|n| (Seq::new(n), pos_message(n)))
        .collect();
    assert_eq!(c.queued, queued);
    assert_eq!((c.pos_handed.get(), c.pos_done.get()), (done, done));
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> String {
    let dir = std::env::temp_dir().join(format!("posrelay-reliable-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir.to_string_lossy().into_owned()
}
