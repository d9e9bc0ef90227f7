//! The `idle` scenario: as many idle pairs as the descriptor limit allows,
//! and the target's resident memory per idle connection (/proc/PID/status).
//!
//! Resident memory is user-space memory: the kernel's socket buffers are not
//! in it. After the measurement every pair exchanges one checked message each
//! way, to prove the connections counted were alive.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::sync::Semaphore;
use glommio::timer::{sleep, timeout};
use posrelay_core::proto::MessageKind;
use serde::Serialize;

use crate::flow::{Env, PairConns};
use crate::load::setup_pairs;
use crate::payload::{self, Stamp};
use crate::procfs::{self, Memory};

/// Descriptors kept free for everything that is not a pair's connection
/// (listeners, the store, setup connections in flight, stdio).
pub const FD_RESERVE: u64 = 400;

/// The most pairs the descriptor limit allows when each pair holds
/// `per_pair` descriptors on the busiest side.
pub fn max_pairs(fd_limit: u64, per_pair: u64) -> usize {
    (fd_limit.saturating_sub(FD_RESERVE) / per_pair.max(1)) as usize
}

/// Pairs set up before the first memory reading: a tenth, at most one setup batch.
pub fn warm_pairs(pairs: usize, concurrency: usize) -> usize {
    (pairs / 10).min(concurrency.max(1))
}

/// What the idle scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct IdleOutcome {
    /// Pairs asked for.
    pub pairs: usize,
    /// Pairs set up.
    pub pairs_up: usize,
    /// Pairs set up before the memory was first read (not measured).
    pub warm_pairs: usize,
    /// WebSocket connections the measured pairs hold on the target.
    pub connections: u64,
    /// Target memory with the warm-up pairs connected.
    pub before: Memory,
    /// Target memory with every pair connected and idle.
    pub after: Memory,
    /// Bytes of resident memory per idle connection (VmRSS growth / connections).
    pub rss_per_connection: f64,
    /// Bytes of anonymous resident memory per idle connection.
    pub anon_per_connection: f64,
    /// Failed setups and pairs that did not answer afterwards.
    pub errors: u64,
    /// Wrong payloads in the final check.
    pub mismatches: u64,
    /// Time the setup took.
    pub setup_secs: f64,
}

/// Opens `pairs` pairs, lets them idle for `settle`, reads the target's memory.
pub async fn run_idle(
    env: Rc<Env>,
    pairs: usize,
    settle: Duration,
    concurrency: usize,
    label: Option<&str>,
    target_pid: u32,
) -> IdleOutcome {
    // Warm the target first (first-use allocations, the allocator's arenas,
    // the work of registration): only the pairs after these are measured.
    let warm = warm_pairs(pairs, concurrency);
    let started = Instant::now();
    let warmed = setup_pairs(&env, 0..warm, concurrency, None).await;
    let warm_setup = started.elapsed();
    // Both readings after the same idle time, so that memory the allocator gives back
    // late (freed setup state) counts the same way in each.
    sleep(settle).await;
    let before = procfs::memory(target_pid).unwrap_or_default();
    let measured_started = Instant::now();
    let measured = setup_pairs(&env, warm..pairs, concurrency, label).await;
    // Setup time only: the idle time between the two phases is not setup.
    let setup_secs = (warm_setup + measured_started.elapsed()).as_secs_f64();
    if label.is_some() {
        crate::load::progress_line(&format!(
            "idle: {} pairs up in {setup_secs:.1}s, idling {:.1}s",
            measured.alive() + warmed.alive(),
            settle.as_secs_f64()
        ));
    }
    sleep(settle).await;
    let after = procfs::memory(target_pid).unwrap_or_default();
    let connections = measured.alive() as u64 * env.kind.connections_per_pair();
    let (mut conns, mut failed) = warmed.take().await;
    let (measured, failed_measured) = measured.take().await;
    failed += failed_measured;
    conns.extend(measured);
    let pairs_up = conns.len();
    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / connections.max(1) as f64;

    // Prove every counted pair is alive, then close it.
    let errors = Rc::new(Cell::new(failed));
    let mismatches = Rc::new(Cell::new(0u64));
    let gate = Rc::new(Semaphore::new(concurrency.max(1) as u64));
    let mut tasks = Vec::new();
    for (i, pair) in conns {
        let (errors, mismatches, gate) = (errors.clone(), mismatches.clone(), gate.clone());
        tasks.push(glommio::spawn_local(async move {
            let _permit = gate.acquire_permit(1).await;
            let r = timeout(Duration::from_secs(10), async {
                Ok(one_round_trip(i as u32, pair).await)
            })
            .await;
            match r {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => mismatches.set(mismatches.get() + 1),
                Ok(Err(e)) => {
                    if errors.get() == 0 {
                        eprintln!("idle pair {i}: {e:#}");
                    }
                    errors.set(errors.get() + 1)
                }
                Err(_) => errors.set(errors.get() + 1),
            }
        }));
    }
    for t in tasks {
        t.await;
    }
    IdleOutcome {
        pairs,
        pairs_up,
        warm_pairs: warm,
        connections,
        before,
        after,
        rss_per_connection: per(after.rss, before.rss),
        anon_per_connection: per(after.rss_anon, before.rss_anon),
        errors: errors.get(),
        mismatches: mismatches.get(),
        setup_secs,
    }
}

/// One 64-byte message POS → device → POS, checked at both ends; then close.
async fn one_round_trip(pair: u32, mut conns: PairConns) -> anyhow::Result<bool> {
    let stamp = Stamp { pair, seq: 0 };
    let size = 64;
    conns
        .pos
        .writer()
        .send(MessageKind::Binary, &payload::make(stamp, size))
        .await?;
    let mut ok = true;
    if let Some(device) = conns.device.as_mut() {
        let m = device.next_message().await?;
        ok &= payload::check(stamp, size, m.payload.iter().map(|b| &b[..])).is_ok();
        device.writer().send(m.kind, &m.payload.to_bytes()).await?;
    }
    let m = conns.pos.next_message().await?;
    ok &= payload::check(stamp, size, m.payload.iter().map(|b| &b[..])).is_ok();
    close_pair(conns).await;
    Ok(ok)
}

/// Closes both ends at once (a relay may answer one end's Close only once
/// the other end is gone too), giving up after two seconds: teardown is not measured.
pub async fn close_pair(conns: PairConns) {
    let PairConns { mut pos, device } = conns;
    let both = async move {
        let device = async move {
            if let Some(mut d) = device {
                d.close().await;
            }
        };
        futures_lite::future::zip(pos.close(), device).await;
        Ok(())
    };
    let _ = timeout(Duration::from_secs(2), both).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_from_the_descriptor_limit() {
        assert_eq!(max_pairs(20_000, 2), 9_800);
        assert_eq!(max_pairs(20_000, 1), 19_600);
        assert_eq!(max_pairs(100, 2), 0);
    }

    #[test]
    fn warm_up_is_small() {
        assert_eq!(warm_pairs(20, 64), 2);
        assert_eq!(warm_pairs(9_800, 64), 64);
        assert_eq!(warm_pairs(5, 64), 0);
    }
}
