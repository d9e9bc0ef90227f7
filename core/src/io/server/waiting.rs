//! Connections past `--max-unauthenticated` wait for an anonymous place before they are
//! refused.
//!
//! A connection accepted while every anonymous place is taken is not refused at once:
//! it waits, in arrival order, for a place to free, for at most
//! `--max-unauthenticated-wait` (10 s by default, `0s`: refused at once). While it waits
//! it costs a descriptor and a queue entry; no TLS state, no buffer, no handshake (the
//! client's first bytes stay in the kernel). Only a connection still without a place
//! after the wait is refused (`503` with `Retry-After`, over TLS on a TLS listener:
//! `tls::refuse_connection`).
//!
//! Why: after a restart every terminal reconnects at once. Anonymous places are held
//! for the length of a TLS handshake and a registration; refusing the overflow at once
//! turned each refusal into a full TLS handshake of its own (the readable `503` needs
//! one) and into a longer backoff on the terminal, so that an estate came back slower
//! over wss than the relay could serve it. Waiting turns those refusals into
//! admissions a little later, at no cost (8,000 wss devices on a lightly loaded 2-core
//! machine: 19 s and 13,000-14,000 unreadable failures before, 4.4-5.5 s and no failed
//! attempt after; BENCHMARKS.md's storm). The
//! wait is bounded, so that a relay whose anonymous places are held by connections
//! that never authenticate (a slow-loris, itself cut off by `--handshake-timeout`)
//! still answers `503`, and the waiting connections count against `--max-connections`
//! like any other.

use super::admission::{Admission, ConnSlot};
use super::shard::ShardCtx;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the oldest waiting connection looks again for a place (places freed on
/// this shard or another one: the count is shared).
const RETRY_EVERY: Duration = Duration::from_millis(2);

/// One accepted connection without an anonymous place yet.
struct Waiting {
    stream: TcpStream,
    conn: ConnSlot,
    until: Instant,
}

/// A shard's queue of connections waiting for an anonymous place (one per relay
/// listener, served by [`serve_queue`]).
pub(crate) struct WaitQueue {
    tx: LocalSender<Waiting>,
    waiting: Cell<usize>,
    admission: Arc<Admission>,
}

impl WaitQueue {
    /// A queue and the task that admits or refuses what waits in it.
    pub(crate) fn start(ctx: Rc<ShardCtx>) -> Rc<WaitQueue> {
        let (tx, rx) = local_channel::new_unbounded();
        let queue = Rc::new(WaitQueue {
            tx,
            waiting: Cell::new(0),
            admission: ctx.shared.admission.clone(),
        });
        glommio::spawn_local(serve_queue(ctx, queue.clone(), rx)).detach();
        queue
    }

    /// Whether connections are waiting (a new one then queues behind them: first come,
    /// first admitted).
    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.get() == 0
    }

    /// Queues `stream` until an anonymous place frees, or until `wait` passes.
    pub(crate) fn push(&self, stream: TcpStream, conn: ConnSlot, wait: Duration) {
        let until = Instant::now() + wait;
        if self
            .tx
            .try_send(Waiting {
                stream,
                conn,
                until,
            })
            .is_ok()
        {
            self.waiting.set(self.waiting.get() + 1);
            self.admission.set_waiting(true);
        }
        // Otherwise the queue's task is gone (the shard is stopping): the connection closes.
    }
}

/// Admits the waiting connections in arrival order as places free; refuses those whose
/// wait is over.
async fn serve_queue(ctx: Rc<ShardCtx>, queue: Rc<WaitQueue>, rx: LocalReceiver<Waiting>) {
    while let Some(w) = rx.recv().await {
        let admission = &ctx.shared.admission;
        let unauth = loop {
            if ctx.draining() {
                break None;
            }
            if let Some(unauth) = admission.try_unauthenticated() {
                break Some(unauth);
            }
            if Instant::now() >= w.until {
                break None;
            }
            glommio::timer::sleep(RETRY_EVERY).await;
        };
        queue.waiting.set(queue.waiting.get() - 1);
        admission.set_waiting(false);
        let Waiting { stream, conn, .. } = w;
        if ctx.draining() {
            continue;
        }
        let ctx = ctx.clone();
        match unauth {
            Some(unauth) => {
                glommio::spawn_local(super::accept::serve_relay_connection(
                    ctx, stream, conn, unauth,
                ))
                .detach();
            }
            None => {
                let why = admission.refuse_unauthenticated();
                drop(conn);
                glommio::spawn_local(async move {
                    super::accept::refuse(&ctx, stream, why).await;
                })
                .detach();
            }
        }
    }
}
