//! The `storm` scenario: many devices online, the target restarts, and every
//! device reconnects at once (for posrelay: registers again, §6 "after a
//! restart devices register again", then connects). Measured: the time from
//! the restarted target's readiness until the last device is online again,
//! and how many devices failed.
//!
//! How a device retries ([`StormMode`]): by default as terminals do, with
//! exponential backoff from 0.5 s to 30 s and full jitter (each wait is uniform
//! between 0 and the current cap), never sooner than a refusal's `Retry-After`;
//! with `--storm-mode hammer`, every 50 to 150 ms regardless. An attempt that
//! fails while the target is up is a *failed attempt*; a refusal the device
//! could read (an HTTP status with `Retry-After`) is counted apart from failures
//! it could not read (a reset, a corrupt TLS record, a timeout); a device that is
//! still not online at the deadline is a *failed device*.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future::or;
use glommio::sync::Semaphore;
use glommio::timer::{sleep, timeout};
use serde::Serialize;

use crate::flow::{device_online_with, Env};
use crate::load::{progress_done, progress_line};
use crate::target::Target;
use crate::wsclient::{Incoming, WsError};

/// How storm devices retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StormMode {
    /// As terminals do: exponential backoff (0.5 s doubling to 30 s) with full jitter,
    /// never before a refusal's `Retry-After`.
    Backoff,
    /// Every 50-150 ms, whatever the answer.
    Hammer,
}

/// First backoff cap (the first retry waits up to this long).
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Largest backoff cap.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl StormMode {
    /// How long to wait before retry number `failures` (0: right after the connection
    /// ended), given the `Retry-After` of the last refusal, if any.
    pub fn pause(
        self,
        failures: u32,
        retry_after: Option<Duration>,
        rng: &mut impl rand::Rng,
    ) -> Duration {
        match self {
            StormMode::Hammer => Duration::from_millis(rng.gen_range(50..150)),
            StormMode::Backoff => {
                let cap = BACKOFF_BASE
                    .saturating_mul(1u32 << failures.min(16))
                    .min(BACKOFF_MAX);
                let jittered = cap.mul_f64(rng.gen::<f64>());
                jittered.max(retry_after.unwrap_or_default())
            }
        }
    }
}

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
    /// How the devices retried.
    pub mode: StormMode,
    /// Failed attempts after the restart that were a refusal the device could read:
    /// an HTTP status with a `Retry-After` (503 past the relay's limits).
    pub refusals_readable: u64,
    /// Failed attempts after the restart that were anything else (a reset, a corrupt
    /// TLS record, a timeout, a refusal without `Retry-After`).
    pub failures_unreadable: u64,
    /// The unreadable failures by kind: the step that failed (`device-listener`,
    /// `registration`, `device-connection`, or `attempt` when the attempt timed out)
    /// and what the device saw there (see [`failure_kind`]).
    pub unreadable_kinds: BTreeMap<String, u64>,
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
    refusals_readable: Cell<u64>,
    failures_unreadable: Cell<u64>,
    unreadable_kinds: RefCell<BTreeMap<String, u64>>,
    mode: StormMode,
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
    /// How devices retry.
    pub mode: StormMode,
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
        refusals_readable: Cell::new(0),
        failures_unreadable: Cell::new(0),
        unreadable_kinds: RefCell::new(BTreeMap::new()),
        mode: settings.mode,
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
    // Counted at the deadline: devices that come back while the run stops do not count.
    let back_at_deadline = shared.back.get();
    let all_back = back_at_deadline >= devices;
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
        failed_devices: devices.saturating_sub(back_at_deadline) as u64,
        failed_attempts: shared.failed_attempts.get(),
        failed_attempts_before: shared.failed_before.get(),
        mode: settings.mode,
        refusals_readable: shared.refusals_readable.get(),
        failures_unreadable: shared.failures_unreadable.get(),
        unreadable_kinds: shared.unreadable_kinds.take(),
    };
    (outcome, restarted)
}

async fn device(env: Rc<Env>, shared: Rc<Shared>, gate: Rc<Semaphore>, i: usize) {
    let tls = env.tls.as_deref().map(own_tls_config);
    let mut first = true;
    let mut counted_back = false;
    // Failed attempts since the device was last online (the backoff's exponent).
    let mut failures = 0u32;
    loop {
        let try_once = async {
            let r = timeout(shared.attempt_timeout, async {
                Ok(device_online_with(&env, i, tls.as_ref()).await)
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
        let mut retry_after = None;
        match attempt {
            Ok(mut conn) => {
                first = false;
                failures = 0;
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
                if let Some(WsError::Refused {
                    retry_after: after, ..
                }) = e.downcast_ref::<WsError>()
                {
                    retry_after = *after;
                }
                let counter = if shared.ready_at.get().is_some() {
                    if retry_after.is_some() {
                        shared
                            .refusals_readable
                            .set(shared.refusals_readable.get() + 1);
                    } else {
                        shared
                            .failures_unreadable
                            .set(shared.failures_unreadable.get() + 1);
                        *shared
                            .unreadable_kinds
                            .borrow_mut()
                            .entry(failure_kind(&e))
                            .or_default() += 1;
                    }
                    &shared.failed_attempts
                } else if !shared.restarting.get() {
                    &shared.failed_before
                } else {
                    // The target is down: refusals are expected.
                    continue_after_pause(&shared, failures, None).await;
                    failures = failures.saturating_add(1);
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
        continue_after_pause(&shared, failures, retry_after).await;
        failures = failures.saturating_add(1);
        if shared.stopping.get() {
            return;
        }
    }
}

/// A device's own TLS client configuration: the run's, with a session ticket store of
/// its own, as a terminal has. With one configuration for all, the devices would share
/// rustls' ticket cache, which keeps 8 TLS 1.3 tickets per server name: 8,000 devices
/// would almost never find their own ticket, and a device would not resume its device
/// connection with the ticket its registration just got, as a terminal does.
fn own_tls_config(run: &rustls::ClientConfig) -> std::sync::Arc<rustls::ClientConfig> {
    let mut own = run.clone();
    own.resumption = rustls::client::Resumption::in_memory_sessions(4);
    std::sync::Arc::new(own)
}

/// What kind of failure `e` was, as `step: what`: the step is the outermost context
/// of [`device_online`]'s error (`attempt` if the attempt timed out); what the device
/// saw is the WebSocket client's error kind (an i/o error by its `ErrorKind`, with the
/// TLS alert or decoding error spelled out).
pub fn failure_kind(e: &anyhow::Error) -> String {
    let step = match e.chain().next().map(|c| c.to_string()) {
        Some(s) if s.starts_with("no answer") => return "attempt: timed out".into(),
        Some(s) => s,
        None => String::new(),
    };
    let what = e
        .chain()
        .find_map(|c| c.downcast_ref::<WsError>())
        .map(|w| match w {
            WsError::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
                format!("tls error ({io})")
            }
            WsError::Io(io) => format!("i/o {:?}", io.kind()),
            WsError::Refused { status, .. } => format!("{status} without Retry-After"),
            WsError::Eof => "closed before an answer".into(),
            WsError::Handshake(h) => format!("bad handshake answer ({h})"),
            WsError::Protocol(_) => "protocol error".into(),
            WsError::Closed => "closed".into(),
        })
        .unwrap_or_else(|| {
            let root = e.root_cause().to_string();
            // An answer the flow did not expect: keep its shape, not its data.
            root.split([':', '{'])
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        });
    format!("{step}: {what}")
}

/// Waits as the storm's mode says (see [`StormMode::pause`]), or less if the run stops.
async fn continue_after_pause(shared: &Shared, failures: u32, retry_after: Option<Duration>) {
    let pause = shared
        .mode
        .pause(failures, retry_after, &mut rand::thread_rng());
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn unreadable_failures_are_named_by_step_and_what_the_device_saw() {
        let at = |e: WsError, step: &'static str| anyhow::Error::from(e).context(step);
        assert_eq!(
            failure_kind(&at(WsError::Eof, "device-listener")),
            "device-listener: closed before an answer"
        );
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(
            failure_kind(&at(WsError::Io(reset), "device-connection")),
            "device-connection: i/o ConnectionReset"
        );
        let refused = WsError::Refused {
            status: 503,
            retry_after: None,
        };
        assert_eq!(
            failure_kind(&at(refused, "device-listener")),
            "device-listener: 503 without Retry-After"
        );
        assert_eq!(
            failure_kind(&anyhow::anyhow!("no answer: timeout")),
            "attempt: timed out"
        );
        let odd =
            anyhow::anyhow!("registration answered {{\"type\":\"error\"}}").context("registration");
        assert_eq!(failure_kind(&odd), "registration: registration answered");
    }

    #[test]
    fn backoff_doubles_from_half_a_second_to_thirty_with_full_jitter_and_honours_retry_after() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let b = StormMode::Backoff;
        for (failures, cap) in [
            (0, 500),
            (1, 1000),
            (2, 2000),
            (5, 16_000),
            (6, 30_000),
            (40, 30_000),
        ] {
            let waits: Vec<Duration> = (0..2000)
                .map(|_| b.pause(failures, None, &mut rng))
                .collect();
            let cap = Duration::from_millis(cap);
            assert!(
                waits.iter().all(|w| *w <= cap),
                "{failures}: within the cap"
            );
            // Full jitter: spread over the whole range, not bunched near the cap.
            assert!(
                waits.iter().any(|w| *w < cap / 10),
                "{failures}: some short waits"
            );
            assert!(
                waits.iter().any(|w| *w > cap * 9 / 10),
                "{failures}: some long waits"
            );
        }
        let after = Duration::from_secs(3);
        for _ in 0..1000 {
            assert!(
                b.pause(0, Some(after), &mut rng) >= after,
                "never before Retry-After"
            );
        }
        for _ in 0..1000 {
            let w = StormMode::Hammer.pause(7, Some(after), &mut rng);
            assert!((Duration::from_millis(50)..Duration::from_millis(150)).contains(&w));
        }
    }
}
