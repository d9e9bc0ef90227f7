//! `posrelay pos-sim --reliable`: the POS simulator over a reliable session (PROTOCOL.md
//! §11, [`crate::client::reliable`]). Each input message is numbered and sent; the
//! terminal's reply is shown with its number and marked processed; breaks are survived
//! (reconnect, `resume`), and what the relay resumed is shown: how many POS messages it
//! had made safe, how many this client sent again, and the terminal messages it sent
//! again that had not been processed.

use std::time::{Duration, Instant};

use posrelay_core::proto::MessageKind;

use super::pos::{plural, say, PosClient};
use crate::client::reliable::{Event, ReliableSession, Seq};
use crate::client::ws::WsMessage;

/// Sends every message of `input` (until it ends) on `session` and waits for each reply.
/// Returns (sent, answered).
pub fn exchange_all(
    pos: &mut PosClient,
    mut session: ReliableSession,
    kind: MessageKind,
    input: &std::sync::mpsc::Receiver<anyhow::Result<String>>,
    reply_timeout: Duration,
) -> anyhow::Result<(usize, usize)> {
    let mut sent = 0usize;
    let mut answered = 0usize;
    loop {
        super::pos::show_events(pos)?;
        match input.try_recv() {
            Ok(msg) => {
                let msg = msg?;
                sent += 1;
                say(&format!("> [{sent}] sent {} bytes", msg.len()));
                let started = Instant::now();
                let seq = session.send(kind, msg.as_bytes())?;
                if wait_reply(pos, &mut session, sent, seq, started, reply_timeout)? {
                    answered += 1;
                }
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                if let Some(event) = session.recv(Duration::from_millis(50))? {
                    show(&mut session, event, None)?;
                }
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
        }
    }
    // Wait until the relay has made everything safe (or reported it), then leave the
    // claim's session closed normally.
    let deadline = Instant::now() + reply_timeout;
    while session.state().unsettled() > 0 && Instant::now() < deadline {
        if let Some(event) = session.recv(deadline.saturating_duration_since(Instant::now()))? {
            show(&mut session, event, None)?;
        }
    }
    session.close();
    Ok((sent, answered))
}

/// Waits for the terminal's next message after message `n` (POS number `seq`); `false`
/// when none came in time.
fn wait_reply(
    pos: &mut PosClient,
    session: &mut ReliableSession,
    n: usize,
    seq: Seq,
    started: Instant,
    reply_timeout: Duration,
) -> anyhow::Result<bool> {
    let deadline = started + reply_timeout;
    loop {
        super::pos::show_events(pos)?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            say(&format!(
                "! [{n}] no reply within {reply_timeout:?} (POS #{seq})"
            ));
            return Ok(false);
        }
        let wait = left.min(Duration::from_millis(100));
        if let Some(event) = session.recv(wait)? {
            if show(session, event, Some((n, started)))? {
                return Ok(true);
            }
        }
    }
}

/// Prints one event (and marks a terminal message processed); `true` for a terminal
/// message, which is the reply to message `reply_to` when given.
fn show(
    session: &mut ReliableSession,
    event: Event,
    reply_to: Option<(usize, Instant)>,
) -> anyhow::Result<bool> {
    match event {
        Event::Message { seq, message } => {
            match reply_to {
                Some((n, started)) => say(&format!(
                    "< [{n}] reply #{seq} in {:.3} ms: {}",
                    started.elapsed().as_secs_f64() * 1e3,
                    shown(&message)
                )),
                None => say(&format!("< #{seq} (unasked) {}", shown(&message))),
            }
            // Shown: processed. The relay drops it only now.
            session.processed(seq)?;
            Ok(true)
        }
        Event::Acked(seq) => {
            tracing::debug!(%seq, "acked");
            Ok(false)
        }
        Event::Resumed { relay_safe, resent } => {
            say(&format!(
                "  resumed: the relay holds POS messages up to #{relay_safe}, {} sent again",
                plural(resent as u64, "message")
            ));
            Ok(false)
        }
        Event::Undelivered { range, messages } => {
            say(&format!(
                "  undelivered: POS messages #{}..#{} did not reach the terminal ({} of them still here)",
                range.from(),
                range.to(),
                messages.len()
            ));
            Ok(false)
        }
    }
}

fn shown(m: &WsMessage) -> String {
    match m.text() {
        Some(t) => t.to_owned(),
        None => format!("<{} bytes binary>", m.data.len()),
    }
}
