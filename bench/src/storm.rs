//! The `storm` scenario: many devices online, the target restarts, and every
//! device reconnects at once (for posrelay: registers again, §6 "after a
//! restart devices register again", then connects). Measured: the time from
//! the restarted target's readiness until the last device is online again,
//! and how many devices failed.
//!
//! A device whose connection ends retries every 50 to 150 ms (random, so the
//! retries do not stay in lockstep) until it is online again. An attempt that
//! fails while the target is up is a *failed attempt*; a device that is still
//! not online at the deadline is a *failed device*.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future::or;
use glommio::sync::Semaphore;
use glommio::timer::{sleep, timeout};
use rand::Rng as _;
use serde::Serialize;

use crate::flow::{device_online, Env};
use crate::load::{progress_done, progress_line};
use crate::target::Target;
use crate::wsclient::Incoming;

/// What the storm measured.
#[derive(Debug, Clone, Serialize)]
pub struct StormOutcome {
    /// Devices.
    pub devices: usize,
    /// Devices online before the restart.
    pub online_before: usize,
    /// Seconds all devices took to come online the first time.
    pub first_online_secs: f64,
    /// Seconds the restart took (stop, start, readiness).
    pub restart_secs: f64,
    /// Devices online again at the end.
    pub online_after: usize,
    /// Seconds from the restarted target's readiness until the last device
    /// was online again (`None` if not all came back before the deadline).
    pub all_online_secs: Option<f64>,
    /// Devices not online again at the deadline.
    pub failed_devices: u64,
    /// Connection or registration attempts that failed after the restart
    /// while the target was up.
    pub failed_attempts: u64,
    /// Attempts that failed before the restart (the first connections).
    pub failed_attempts_before: u64,
}

struct Shared {
    online: Cell<usize>,
    /// Set once the restarted target is ready: failures from then on count.
    ready_at: Cell<Option<Instant>>,
    /// Set when the restart begins: devices coming online after it count as back.
    restarting: Cell<bool>,
    back: Cell<usize>,
    last_back: Cell<Option<Instant>>,
    failed_attempts: Cell<u64>,
    failed_before: Cell<u64>,
    stopping: Cell<bool>,
    /// How long one attempt to come online may take before the device gives up and retries.
    attempt_timeout: Duration,
    stop: Semaphore,
}

const PLENTY: u64 = 1 << 40;

/// How a storm runs.
#[derive(Debug, Clone, Copy)]
pub struct StormSettings {
    /// Devices.
    pub devices: usize,
    /// How long devices may take to come online (first, and again after the restart).
    pub deadline: Duration,
    /// How long one attempt may take before the device gives up and retries.
    pub attempt_timeout: Duration,
    /// First connections made at the same time (reconnects are not limited).
    pub concurrency: usize,
    /// Progress lines.
    pub progress: bool,
}

/// Runs the storm on `target`; gives the target back.
pub async fn run_storm(
    env: Rc<Env>,
    target: Target,
    settings: StormSettings,
) -> (StormOutcome, anyhow::Result<Target>) {
    let StormSettings {
        devices,
        deadline,
        concurrency,
        progress,
        ..
    } = settings;
    let shared = Rc::new(Shared {
        online: Cell::new(0),
        ready_at: Cell::new(None),
        restarting: Cell::new(false),
        back: Cell::new(0),
        last_back: Cell::new(None),
        failed_attempts: Cell::new(0),
        failed_before: Cell::new(0),
        stopping: Cell::new(false),
        attempt_timeout: settings.attempt_timeout,
        stop: Semaphore::new(0),
    });
    // The first connection is paced like any setup; reconnects are not.
    let gate = Rc::new(Semaphore::new(concurrency.max(1) as u64));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(devices);
    for i in 0..devices {
        tasks.push(glommio::spawn_local(device(
            env.clone(),
            shared.clone(),
            gate.clone(),
            i,
        )));
    }
    let s = shared.clone();
    let online = move || s.online.get();
    wait_for(
        "online",
        devices,
        online,
        Instant::now() + deadline,
        progress,
    )
    .await;
    let first_online_secs = started.elapsed().as_secs_f64();
    let online_before = shared.online.get();

    shared.restarting.set(true);
    let restart_started = Instant::now();
    let restarted = glommio::executor()
        .spawn_blocking(move || target.restart())
        .await;
    let ready = Instant::now();
    shared.ready_at.set(Some(ready));
    let restart_secs = (ready - restart_started).as_secs_f64();
    if restarted.is_ok() {
        let s = shared.clone();
        let back = move || s.back.get();
        wait_for("back online", devices, back, ready + deadline, progress).await;
    }
    let online_after = shared.online.get();
    let all_back = shared.back.get() >= devices;
    shared.stopping.set(true);
    shared.stop.signal(PLENTY);
    for t in tasks {
        t.await;
    }
    if progress {
        progress_done();
    }
    let outcome = StormOutcome {
        devices,
        online_before,
        first_online_secs,
        restart_secs,
        online_after,
        all_online_secs: all_back
            .then(|| {
                shared
                    .last_back
                    .get()
                    .map(|t| t.saturating_duration_since(ready).as_secs_f64())
            })
            .flatten(),
        failed_devices: devices.saturating_sub(shared.back.get()) as u64,
        failed_attempts: shared.failed_attempts.get(),
        failed_attempts_before: shared.failed_before.get(),
    };
    (outcome, restarted)
}

async fn device(env: Rc<Env>, shared: Rc<Shared>, gate: Rc<Semaphore>, i: usize) {
    let mut first = true;
    let mut counted_back = false;
    loop {
        let try_once = async {
            let r = timeout(shared.attempt_timeout, async {
                Ok(device_online(&env, i).await)
            })
            .await;
            r.unwrap_or_else(|e| Err(anyhow::anyhow!("no answer: {e}")))
        };
        let attempt = if first {
            let _permit = gate.acquire_permit(1).await;
            try_once.await
        } else {
            try_once.await
        };
        match attempt {
            Ok(mut conn) => {
                first = false;
                shared.online.set(shared.online.get() + 1);
                if shared.restarting.get() && !counted_back {
                    counted_back = true;
                    shared.back.set(shared.back.get() + 1);
                    shared.last_back.set(Some(Instant::now()));
                }
                // Online until the relay closes us (1001 at shutdown) or we stop.
                let stopped = loop {
                    let stop = async {
                        let _ = shared.stop.acquire(1).await;
                        None
                    };
                    match or(async { Some(conn.next().await) }, stop).await {
                        None => break true,
                        Some(Ok(Incoming::Message(_))) => continue,
                        Some(Ok(Incoming::Closed(_)) | Err(_)) => break false,
                    }
                };
                shared.online.set(shared.online.get() - 1);
                if stopped {
                    let _ = timeout(Duration::from_secs(2), async {
                        conn.close().await;
                        Ok(())
                    })
                    .await;
                    return;
                }
            }
            Err(e) => {
                let counter = if shared.ready_at.get().is_some() {
                    &shared.failed_attempts
                } else if !shared.restarting.get() {
                    &shared.failed_before
                } else {
                    // The target is down: refusals are expected.
                    continue_after_pause(&shared).await;
                    if shared.stopping.get() {
                        return;
                    }
                    continue;
                };
                if counter.get() == 0 {
                    eprintln!("storm device {i}: {e:#}");
                }
                counter.set(counter.get() + 1);
            }
        }
        continue_after_pause(&shared).await;
        if shared.stopping.get() {
            return;
        }
    }
}

/// Waits 50 to 150 ms, or less if the run stops.
async fn continue_after_pause(shared: &Shared) {
    let pause = Duration::from_millis(rand::thread_rng().gen_range(50..150));
    let stop = async {
        let _ = shared.stop.acquire(1).await;
    };
    or(sleep(pause), stop).await;
}

async fn wait_for(
    label: &str,
    devices: usize,
    count: impl Fn() -> usize,
    until: Instant,
    progress: bool,
) -> bool {
    let mut printed = Instant::now();
    while count() < devices && Instant::now() < until {
        sleep(Duration::from_millis(20)).await;
        if progress && printed.elapsed() >= Duration::from_secs(1) {
            printed = Instant::now();
            progress_line(&format!("storm: {label} {}/{devices}", count()));
        }
    }
    count() >= devices
}
