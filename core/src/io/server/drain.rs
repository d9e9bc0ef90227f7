//! The io side of a graceful shutdown (PROTOCOL.md §6): stop accepting, then carry out the
//! coordinator's drain ([`crate::coord::DrainPhase`]): it asks for each class of connections
//! to be closed in turn; this loop waits until the shard has none of that class left (or
//! the drain timeout has run out) and says so.

use super::shard::ShardCtx;
use crate::coord::DrainPhase;
use glommio::Task;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How often the drain looks at the connection table while it waits.
const POLL: Duration = Duration::from_millis(10);

pub(crate) async fn drain(ctx: &Rc<ShardCtx>, relay: Task<()>, admin: Option<Task<()>>) {
    ctx.start_draining();
    drop(relay);
    drop(admin);
    let started = Instant::now();
    let deadline = started + ctx.shared.config.drain_timeout;
    ctx.coord.borrow_mut().handle_shutdown(started);
    ctx.drive();
    let mut gave_up = false;
    loop {
        let phase = ctx.coord.borrow().drain_phase().clone();
        match phase {
            DrainPhase::Drained | DrainPhase::Serving => break,
            DrainPhase::Closing(class) => {
                if !ctx.has_class(class) || Instant::now() >= deadline {
                    ctx.coord
                        .borrow_mut()
                        .handle_class_closed(class, Instant::now());
                    ctx.drive();
                    if Instant::now() >= deadline && !gave_up {
                        gave_up = true;
                        ctx.coord.borrow_mut().handle_drain_deadline(Instant::now());
                        ctx.drive();
                    }
                    continue;
                }
            }
            DrainPhase::WaitingForPeers => {
                if Instant::now() >= deadline && !gave_up {
                    gave_up = true;
                    ctx.coord.borrow_mut().handle_drain_deadline(Instant::now());
                    ctx.drive();
                    continue;
                }
            }
        }
        // Connections close in their own tasks, peers' messages arrive in theirs: look again
        // shortly (the drain is rare and short; a wake-up per change is not worth its state).
        glommio::timer::sleep(POLL).await;
        ctx.drive();
    }
    // §11: what reliable claims hold survives the restart: every batch durable first.
    let _ = crate::io::http::with_timeout(
        deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(5),
        super::reliable_session::flushed(ctx),
    )
    .await;
    let left = ctx.conns.borrow().len();
    tracing::info!(
        shard = ctx.index,
        left,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "shard drained"
    );
}
