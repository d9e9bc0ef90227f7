//! What every upgraded connection shares: its entry in the shard's table, and the loop
//! that turns socket bytes into protocol events and relay requests into frames.

use super::handover::Held;
use super::metrics::{ConnRole, ShardMetrics};
use super::shard::ShardCtx;
use crate::io::driver::{ConnDriver, ReadOutcome};
use crate::io::http::with_timeout;
use crate::io::outbox::{OutFrame, Outbox, OutboxRef};
use crate::io::transport::Transport;
use crate::proto::{CloseCode, Connection, Event, Message, Role};
use crate::relay::{ConnId, Count};
use bytes::BytesMut;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How long a closing connection waits for its peer's Close before dropping TCP.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// A live connection, as the shard sees it.
pub(crate) struct ConnEntry {
    pub outbox: OutboxRef,
    pub role: ConnRole,
    pub last_ping: Cell<Instant>,
    /// Unix time at which the connection's access token expires (POS connections, §5).
    pub token_expires_at: Option<u64>,
    /// Base of URLs handed out on this connection (control channels).
    pub url_base: Option<String>,
}

impl ConnEntry {
    pub fn new(outbox: OutboxRef, role: ConnRole) -> ConnEntry {
        ConnEntry {
            outbox,
            role,
            last_ping: Cell::new(Instant::now()),
            token_expires_at: None,
            url_base: None,
        }
    }
}

/// A connection past its upgrade, registered on the shard: what it keeps while it lives
/// (`H`: its role's message handler).
pub(crate) struct Open<H> {
    pub driver: ConnDriver,
    pub proto: Connection,
    pub handler: H,
    pub outbox: OutboxRef,
    pub _held: Held,
}

/// What [`answer_upgrade`] sets up for a connection.
pub(crate) struct Upgraded {
    pub id: ConnId,
    pub outbox: OutboxRef,
    pub driver: ConnDriver,
    pub proto: Connection,
}

impl Upgraded {
    /// The connection's state for its life, served by `handler`, holding its admission
    /// slots (`held`).
    pub fn open<H>(self, handler: H, held: Held) -> Open<H> {
        Open {
            driver: self.driver,
            proto: self.proto,
            handler,
            outbox: self.outbox,
            _held: held,
        }
    }
}

/// Writes the upgrade's 101 `answer`, then registers the connection in the shard's table
/// as `role` (`entry` completes its entry) with a fresh outbox, and sets up its driver and
/// protocol state; `None` when the peer is already gone. Relayed roles (device, session)
/// record their messages' time in the relay in `posrelay_relay_latency_seconds`.
pub(crate) async fn answer_upgrade(
    ctx: &Rc<ShardCtx>,
    mut transport: Transport,
    rbuf: BytesMut,
    answer: &[u8],
    role: ConnRole,
    entry: impl FnOnce(&mut ConnEntry),
) -> Option<Upgraded> {
    if transport.write_all_vectored(&[answer]).await.is_err() {
        return None;
    }
    let id = ctx.new_conn_id();
    let outbox = Outbox::new(ctx.shared.config.send_queue_bytes);
    if matches!(role, ConnRole::Device | ConnRole::PosSession) {
        outbox
            .borrow_mut()
            .set_latency(ctx.metrics.relay_latency.clone());
    }
    let mut table_entry = ConnEntry::new(outbox.clone(), role);
    entry(&mut table_entry);
    ctx.add_conn(id, table_entry);
    let driver = ConnDriver::new(transport, rbuf, outbox.clone());
    let proto = Connection::new(Role::Server, ctx.shared.config.ws_limits);
    Some(Upgraded {
        id,
        outbox,
        driver,
        proto,
    })
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The peer sent a Close (its code, if any).
    PeerClosed(Option<u16>),
    /// The TCP stream ended or failed without a Close.
    Vanished,
    /// The peer broke RFC 6455; we closed with this code.
    ProtocolError(u16),
    /// The relay closed it with this code.
    ClosedByRelay(u16),
}

impl Ended {
    /// The close code for logs (`None`: no close frame).
    pub fn code(self) -> Option<u16> {
        match self {
            Ended::PeerClosed(c) => c,
            Ended::Vanished => None,
            Ended::ProtocolError(c) | Ended::ClosedByRelay(c) => Some(c),
        }
    }
}

/// For logs: who ended it (the code is logged beside it, as a number).
impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ended::PeerClosed(_) => "peer_closed",
            Ended::Vanished => "vanished",
            Ended::ProtocolError(_) => "protocol_error",
            Ended::ClosedByRelay(_) => "closed_by_relay",
        })
    }
}

/// What a role does with the messages its peer sends.
pub(crate) trait Handler {
    /// One whole message arrived (`received`: when the read that completed it returned,
    /// the relay's clock for it from then on, so that no message costs another clock
    /// read): handle it now, and say what the connection must wait for before it reads
    /// on. Synchronous, so that a connection's future (kept for its whole life, most of
    /// it idle) holds no handler state.
    fn on_message(&mut self, ctx: &Rc<ShardCtx>, message: Message, received: Instant) -> Next;
}

/// What a connection waits for after a message, before it reads on.
pub(crate) enum Next {
    /// Nothing: read on.
    Read,
    /// Room at this receiver's outbox (backpressure).
    RoomAt(OutboxRef),
    /// Work that must finish first (a control request that asks other shards).
    Finish(Pin<Box<dyn Future<Output = ()>>>),
    /// A reliable claim's window to open again (§11 flow control), writing the
    /// connection's own outbox meanwhile; ends early when the relay asks the connection
    /// something (a close, a ping), so that a paused peer can still be closed.
    Until(Pin<Box<dyn Future<Output = ()>>>),
}

impl Next {
    /// Waits for it, writing the connection's own outbox meanwhile.
    async fn wait(self, driver: &mut ConnDriver) {
        match self {
            Next::Read => {}
            Next::RoomAt(receiver) => {
                // §6 backpressure: the relay stops reading from this peer until the
                // receiver has room. The peer is not idle meanwhile (its pongs wait
                // unread in the socket): the idle timeout counts again from the resume.
                driver.outbox.borrow_mut().reading_paused = true;
                let _ = driver.wait_for_room(&receiver).await;
                let mut outbox = driver.outbox.borrow_mut();
                outbox.reading_paused = false;
                outbox.last_rx = Instant::now();
            }
            Next::Finish(work) => work.await,
            Next::Until(mut open) => {
                driver.outbox.borrow_mut().reading_paused = true;
                std::future::poll_fn(|cx| {
                    let broken = matches!(driver.poll_flush(cx), std::task::Poll::Ready(Err(_)));
                    if broken || driver.outbox.borrow().has_requests() {
                        return std::task::Poll::Ready(());
                    }
                    open.as_mut().poll(cx)
                })
                .await;
                let mut outbox = driver.outbox.borrow_mut();
                outbox.reading_paused = false;
                outbox.last_rx = Instant::now();
            }
        }
    }
}

/// Queues the control frames the protocol state produced (pongs, closes).
pub(crate) fn push_transmit(proto: &mut Connection, outbox: &OutboxRef) {
    while let Some(frame) = proto.poll_transmit() {
        let _ = outbox.borrow_mut().push(OutFrame::control(frame));
    }
}

/// Serves a connection until it ends: decodes, hands messages to `handler`, answers
/// pings, sends the pings and closes the relay asks for.
pub(crate) async fn serve_ws<H: Handler>(
    ctx: &Rc<ShardCtx>,
    driver: &mut ConnDriver,
    proto: &mut Connection,
    handler: &mut H,
) -> Ended {
    // Only 4 bytes of state cross an await besides the borrowed arguments: the decoded
    // event is consumed (or turned into `ended`) before any wait, so that the future
    // every connection keeps for its whole life stays small.
    let ended = 'serve: loop {
        loop {
            // The event lives only in this block: gone before the wait below.
            let next = {
                let event = proto.handle_read(&mut driver.rbuf);
                push_transmit(proto, &driver.outbox);
                match event {
                    Ok(Some(Event::Message(message))) => {
                        let received = driver.outbox.borrow().last_rx;
                        handler.on_message(ctx, message, received)
                    }
                    Ok(Some(Event::Close(frame))) => {
                        break 'serve Ended::PeerClosed(frame.map(|f| f.code.0));
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(err) => {
                        ShardMetrics::add(&ctx.metrics.protocol_errors, 1);
                        tracing::info!(error = %err, "closing a connection for a protocol error");
                        break 'serve Ended::ProtocolError(err.close_code().0);
                    }
                }
            };
            if !matches!(next, Next::Read) {
                // Boxed: only a connection that waits pays for the wait's state.
                Box::pin(next.wait(driver)).await;
            }
        }
        driver.prepare_read(proto.needed(&driver.rbuf));
        match driver.read().await {
            Ok(ReadOutcome::Data) => driver.outbox.borrow_mut().last_rx = Instant::now(),
            Ok(ReadOutcome::Eof) | Err(_) => return Ended::Vanished,
            Ok(ReadOutcome::Requests) => {
                // The requests (and a close's reason) live only in this block: gone before
                // the wait below, so that no connection's future keeps room for them.
                let closing = {
                    let requests = driver.outbox.borrow_mut().take_requests();
                    if requests.ping {
                        proto.send_ping(b"posrelay");
                        push_transmit(proto, &driver.outbox);
                    }
                    requests.close.map(|(code, reason)| {
                        proto.send_close(CloseCode(code), &reason);
                        code
                    })
                };
                if let Some(code) = closing {
                    push_transmit(proto, &driver.outbox);
                    // Boxed: only a closing connection pays for its state.
                    Box::pin(finish_close(ctx, driver, proto, handler)).await;
                    return Ended::ClosedByRelay(code);
                }
            }
        }
    };
    // The peer closed or broke the protocol: the relay's close frame (queued by the
    // protocol state) goes out before the socket is closed. Boxed like the other ends.
    let _ = Box::pin(with_timeout(CLOSE_LINGER, driver.flush())).await;
    ended
}

/// After our Close: flush it, then keep reading until the peer's Close (messages that
/// crossed ours still go to the handler, which reports what it cannot deliver).
async fn finish_close<H: Handler>(
    ctx: &Rc<ShardCtx>,
    driver: &mut ConnDriver,
    proto: &mut Connection,
    handler: &mut H,
) {
    let _ = with_timeout(CLOSE_LINGER, async {
        loop {
            loop {
                let event = proto.handle_read(&mut driver.rbuf);
                push_transmit(proto, &driver.outbox);
                match event {
                    Ok(Some(Event::Message(m))) => {
                        let received = driver.outbox.borrow().last_rx;
                        handler.on_message(ctx, m, received).wait(driver).await
                    }
                    Ok(Some(Event::Close(_))) | Err(_) => {
                        let _ = driver.flush().await;
                        return;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                }
            }
            driver.prepare_read(proto.needed(&driver.rbuf));
            match driver.read().await {
                Ok(ReadOutcome::Data) => {}
                Ok(ReadOutcome::Requests) => {
                    let _ = driver.outbox.borrow_mut().take_requests();
                }
                _ => return,
            }
        }
    })
    .await;
}

/// Ends a connection: forgets it, and counts the relayed messages it never wrote.
pub(crate) fn retire(ctx: &Rc<ShardCtx>, id: crate::relay::ConnId, outbox: &OutboxRef) -> Count {
    ctx.remove_conn(id);
    let unsent = outbox.borrow_mut().close();
    let mut count = Count::default();
    for frame in unsent {
        if let Some(end) = frame.message_end {
            count.bytes += frame.payload.len() as u64;
            if end {
                count.frames += 1;
            }
        }
    }
    count
}
