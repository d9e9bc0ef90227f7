//! The load phase: every pair's POS sends stamped messages, its device (or
//! the echo server) sends each one back, and the POS times the round trip.
//!
//! - Closed loop: each pair keeps `in_flight` messages outstanding; a reply
//!   lets the next one go. Latency is measured from the actual send.
//! - Open loop: each pair sends on a fixed schedule (the total rate spread
//!   evenly over pairs and phases), whether or not replies came back.
//!   Latency is measured from the *intended* send time, so a stall that
//!   delays later sends is charged to them too (coordinated-omission
//!   correction, as wrk2 does).
//!
//! Every message is checked on both ends ([`crate::payload::check`]): on the
//! device against the next sequence number it expects, on the POS against
//! the oldest message still in flight.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::IsTerminal as _;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future::or;
use glommio::sync::Semaphore;
use glommio::timer::{sleep, timeout};
use posrelay_core::proto::MessageKind;
use serde::Serialize;

use crate::flow::{open_pair, Env, PairConns};
use crate::payload::{self, Stamp};
use crate::procfs::{self, CpuTicks};
use crate::stats::{Counters, Latencies};
use crate::wsclient::{Incoming, WsReader, WsWriter};

/// How messages are paced.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum Mode {
    /// Each pair keeps `in_flight` messages outstanding.
    Closed {
        /// Messages outstanding per pair.
        in_flight: usize,
    },
    /// All pairs together send `rate` messages per second on a fixed schedule.
    Open {
        /// Messages per second, all pairs together.
        rate: f64,
    },
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Label for the progress line, e.g. `small/posrelay`.
    pub label: String,
    /// Pairs.
    pub pairs: usize,
    /// Payload bytes per message.
    pub size: usize,
    /// Pacing.
    pub mode: Mode,
    /// Time under load before measuring starts.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
    /// Pairs set up at the same time.
    pub setup_concurrency: usize,
    /// Print a progress line every second.
    pub progress: bool,
    /// The CPUs the target and the generator are pinned to (to tell how
    /// busy other processes kept them during the window).
    pub cores: Option<(usize, usize)>,
}

/// What a load run measured.
#[derive(Debug, Clone)]
pub struct LoadOutcome {
    /// Counters.
    pub counters: Counters,
    /// Round-trip latencies inside the window.
    pub latencies: Latencies,
    /// The measured window.
    pub window: Duration,
    /// CPU the target used inside the window.
    pub target_cpu: CpuTicks,
    /// CPU the generator used inside the window.
    pub generator_cpu: CpuTicks,
    /// Pairs that were set up.
    pub pairs_up: usize,
    /// Share of the target's CPU and of the generator's CPU that *other*
    /// processes used during the window (0 on a quiet machine).
    pub foreign_load: Option<(f64, f64)>,
    /// Share of the target's CPU and of the generator's CPU the hypervisor gave to
    /// someone else during the window (steal time; 0 on bare metal or an idle host).
    pub steal: Option<(f64, f64)>,
    /// Time the setup took.
    pub setup: Duration,
}

/// State shared by every task of a run (one executor: `Rc`, `Cell`).
struct Run {
    size: usize,
    /// §11 sessions: messages go in data envelopes, and the POS acks each one.
    reliable: bool,
    recording: Cell<bool>,
    stopping: Cell<bool>,
    /// Signalled (with plenty of units) when the POS side must stop.
    pos_stop: Semaphore,
    /// Signalled when the device side must stop (after the POS side drained).
    device_stop: Semaphore,
    latencies: RefCell<Latencies>,
    counters: RefCell<Counters>,
    /// Messages currently in flight, all pairs.
    in_flight: Cell<u64>,
}

const PLENTY: u64 = 1 << 40;

impl Run {
    fn error(&self) {
        self.counters.borrow_mut().errors += 1;
    }
    fn mismatch(&self, what: &dyn std::fmt::Display) {
        let mut c = self.counters.borrow_mut();
        if c.mismatches == 0 {
            eprintln!("first mismatch: {what}");
        }
        c.mismatches += 1;
    }
}

/// How long setting up one pair may take before it counts as failed.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A message sent and not yet answered: its sequence number and the instant
/// its latency counts from.
type Outstanding = Rc<RefCell<VecDeque<(u64, Instant)>>>;

/// Pairs being set up or kept alive until [`Setup::take`] hands them out.
pub struct Setup {
    tasks: Vec<glommio::task::JoinHandle<Option<(usize, PairConns)>>>,
    release: Rc<Semaphore>,
    failed: Rc<Cell<u64>>,
    alive: Rc<Cell<usize>>,
}

impl Setup {
    /// Pairs up and still alive right now.
    pub fn alive(&self) -> usize {
        self.alive.get()
    }

    /// Stops keeping the pairs alive and hands them out, with the count of
    /// pairs that failed (in setup, or while they waited).
    pub async fn take(self) -> (Vec<(usize, PairConns)>, u64) {
        self.release.signal(PLENTY);
        let mut out = Vec::with_capacity(self.tasks.len());
        for t in self.tasks {
            out.extend(t.await.flatten());
        }
        (out, self.failed.get())
    }
}

/// Reads both ends of a pair that waits for the load, so that the target's
/// pings are answered (a relay closes a connection that stays silent for its
/// idle timeout). Any data message or close while waiting is a failure.
async fn keep_alive(conns: &mut PairConns) -> anyhow::Result<()> {
    async fn watch(conn: &mut WsReader) -> anyhow::Result<()> {
        match conn.next().await? {
            Incoming::Message(_) => anyhow::bail!("unexpected message while idle"),
            Incoming::Closed(code) => anyhow::bail!("closed while idle ({code:?})"),
        }
    }
    let PairConns { pos, device } = conns;
    match device {
        Some(device) => or(watch(pos), watch(device)).await,
        None => watch(pos).await,
    }
}

/// Sets up the pairs of `range` (at most `concurrency` at a time) and returns
/// once every one is up or failed; failures are counted, not fatal. The pairs
/// are kept alive (pings answered) until [`Setup::take`].
pub async fn setup_pairs(
    env: &Rc<Env>,
    range: std::ops::Range<usize>,
    concurrency: usize,
    progress: Option<&str>,
) -> Setup {
    let pairs = range.len();
    let gate = Rc::new(Semaphore::new(concurrency.max(1) as u64));
    let ready = Rc::new(Semaphore::new(0));
    let release = Rc::new(Semaphore::new(0));
    let done = Rc::new(Cell::new(0usize));
    let failed = Rc::new(Cell::new(0u64));
    let alive = Rc::new(Cell::new(0usize));
    let mut tasks = Vec::with_capacity(pairs);
    for i in range {
        let (env, gate, done, failed) = (env.clone(), gate.clone(), done.clone(), failed.clone());
        let (ready, release, alive) = (ready.clone(), release.clone(), alive.clone());
        let task = glommio::spawn_local(async move {
            let permit = gate.acquire_permit(1).await;
            let r = timeout(SETUP_TIMEOUT, async { Ok(open_pair(&env, i).await) })
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("no answer: {e}")));
            drop(permit);
            done.set(done.get() + 1);
            ready.signal(1);
            let fail = |e: anyhow::Error| {
                if failed.get() == 0 {
                    eprintln!("pair {i}: {e:#}");
                }
                failed.set(failed.get() + 1);
                None
            };
            let mut conns = match r {
                Ok(p) => p,
                Err(e) => return fail(e.context("setup")),
            };
            alive.set(alive.get() + 1);
            let released = async {
                let _ = release.acquire(1).await;
                Ok(())
            };
            match or(released, keep_alive(&mut conns)).await {
                Ok(()) => Some((i, conns)),
                Err(e) => {
                    alive.set(alive.get() - 1);
                    fail(e)
                }
            }
        })
        .detach();
        tasks.push(task);
    }
    let ticker = progress.map(|label| {
        let (label, done, failed) = (label.to_owned(), done.clone(), failed.clone());
        glommio::spawn_local(async move {
            let started = Instant::now();
            loop {
                sleep(Duration::from_secs(1)).await;
                progress_line(&format!(
                    "{label}: setting up pairs {}/{pairs} ({} failed) {:.0}s",
                    done.get(),
                    failed.get(),
                    started.elapsed().as_secs_f64()
                ));
            }
        })
    });
    let _ = ready.acquire(pairs as u64).await;
    drop(ticker);
    Setup {
        tasks,
        release,
        failed,
        alive,
    }
}

/// Runs the load on pairs already set up, measuring `target_pid`'s CPU.
pub async fn run_load(env: Rc<Env>, spec: &LoadSpec, target_pid: u32) -> LoadOutcome {
    let setup_start = Instant::now();
    let label = spec.progress.then_some(spec.label.as_str());
    let (pairs, setup_failed) = setup_pairs(&env, 0..spec.pairs, spec.setup_concurrency, label)
        .await
        .take()
        .await;
    let setup = setup_start.elapsed();
    let run = Rc::new(Run {
        size: spec.size.max(payload::MIN_SIZE),
        reliable: env.reliable,
        recording: Cell::new(false),
        stopping: Cell::new(false),
        pos_stop: Semaphore::new(0),
        device_stop: Semaphore::new(0),
        latencies: RefCell::new(Latencies::new()),
        counters: RefCell::new(Counters {
            errors: setup_failed,
            ..Counters::default()
        }),
        in_flight: Cell::new(0),
    });
    let pairs_up = pairs.len();
    let start = Instant::now();
    let mut writers = Vec::new();
    let mut pos_readers = Vec::new();
    let mut devices = Vec::new();
    let mut gates = Vec::new();
    for (i, conns) in pairs {
        let outstanding: Outstanding = Rc::new(RefCell::new(VecDeque::new()));
        let writer = conns.pos.writer();
        let gate = Rc::new(Semaphore::new(match spec.mode {
            Mode::Closed { in_flight } => in_flight.max(1) as u64,
            Mode::Open { .. } => 0,
        }));
        if let Some(device) = conns.device {
            devices.push(glommio::spawn_local(device_echo(
                run.clone(),
                i as u32,
                device,
            )));
        }
        pos_readers.push(glommio::spawn_local(pos_reader(
            run.clone(),
            i as u32,
            conns.pos,
            outstanding.clone(),
            gate.clone(),
        )));
        let pacing = match spec.mode {
            Mode::Closed { .. } => Pacing::Gate(gate.clone()),
            Mode::Open { rate } => {
                let interval = Duration::from_secs_f64(pairs_up as f64 / rate.max(1e-9));
                let phase = interval.mul_f64(i as f64 / pairs_up.max(1) as f64);
                Pacing::Schedule {
                    first: start + phase,
                    interval,
                }
            }
        };
        gates.push(gate);
        writers.push(glommio::spawn_local(pos_writer(
            run.clone(),
            i as u32,
            writer,
            outstanding,
            pacing,
        )));
    }
    let ticker = spec.progress.then(|| {
        let (run, label) = (run.clone(), spec.label.clone());
        glommio::spawn_local(progress_ticker(run, label, spec.warmup))
    });

    sleep(spec.warmup).await;
    let me = std::process::id();
    let cores = |c: Option<(usize, usize)>| {
        c.and_then(|(t, g)| Some((procfs::core_ticks(t)?, procfs::core_ticks(g)?)))
    };
    let c0 = cores(spec.cores);
    let t0 = (
        Instant::now(),
        procfs::cpu_ticks(target_pid).unwrap_or_default(),
        procfs::cpu_ticks(me).unwrap_or_default(),
    );
    run.recording.set(true);
    sleep(spec.duration).await;
    run.recording.set(false);
    let t1 = (
        Instant::now(),
        procfs::cpu_ticks(target_pid).unwrap_or_default(),
        procfs::cpu_ticks(me).unwrap_or_default(),
    );
    let c1 = cores(spec.cores);
    let shares = c0.zip(c1).map(|((t0c, g0c), (t1c, g1c))| {
        (
            t1c.shares_since(t0c, t1.1.since(t0.1).total()),
            g1c.shares_since(g0c, t1.2.since(t0.2).total()),
        )
    });
    let foreign_load = shares.map(|(t, g)| (t.foreign, g.foreign));
    let steal = shares.map(|(t, g)| (t.steal, g.steal));
    drop(ticker);

    // Stop sending; let what is in flight come back; then close everything.
    run.stopping.set(true);
    for g in &gates {
        g.close();
    }
    for w in writers {
        w.await;
    }
    run.pos_stop.signal(PLENTY);
    for r in pos_readers {
        r.await;
    }
    run.device_stop.signal(PLENTY);
    for d in devices {
        d.await;
    }
    if spec.progress {
        progress_done();
    }
    let counters = *run.counters.borrow();
    let latencies = run.latencies.borrow().clone();
    LoadOutcome {
        counters,
        latencies,
        window: t1.0 - t0.0,
        target_cpu: t1.1.since(t0.1),
        generator_cpu: t1.2.since(t0.2),
        pairs_up,
        foreign_load,
        steal,
        setup,
    }
}

enum Pacing {
    Gate(Rc<Semaphore>),
    Schedule { first: Instant, interval: Duration },
}

async fn pos_writer(
    run: Rc<Run>,
    pair: u32,
    writer: Rc<WsWriter>,
    outstanding: Outstanding,
    pacing: Pacing,
) {
    let mut buf = vec![0u8; run.size];
    let mut seq = 0u64;
    let mut next = match &pacing {
        Pacing::Schedule { first, .. } => *first,
        Pacing::Gate(_) => Instant::now(),
    };
    loop {
        let counts_from = match &pacing {
            Pacing::Gate(gate) => {
                if gate.acquire(1).await.is_err() {
                    break;
                }
                Instant::now()
            }
            Pacing::Schedule { interval, .. } => {
                let now = Instant::now();
                if next > now {
                    sleep(next - now).await;
                }
                let intended = next;
                next += *interval;
                intended
            }
        };
        if run.stopping.get() {
            break;
        }
        payload::fill(Stamp { pair, seq }, &mut buf);
        outstanding.borrow_mut().push_back((seq, counts_from));
        run.in_flight.set(run.in_flight.get() + 1);
        let sent = if run.reliable {
            // §11: numbered from 1 for the life of the claim.
            let envelope = reliable::data(seq + 1, &buf);
            writer.send(MessageKind::Text, envelope.as_bytes()).await
        } else {
            writer.send(MessageKind::Binary, &buf).await
        };
        if sent.is_err() {
            run.error();
            break;
        }
        run.counters.borrow_mut().sent += 1;
        seq += 1;
    }
}

/// How long the POS side waits for the messages in flight once sending stopped.
const DRAIN: Duration = Duration::from_secs(5);

async fn pos_reader(
    run: Rc<Run>,
    pair: u32,
    mut conn: WsReader,
    outstanding: Outstanding,
    gate: Rc<Semaphore>,
) {
    let mut stopped = false;
    let mut drain_until = None;
    loop {
        let next = if stopped {
            if outstanding.borrow().is_empty() {
                break;
            }
            let left = drain_until
                .get_or_insert_with(|| Instant::now() + DRAIN)
                .saturating_duration_since(Instant::now());
            match timeout(left, async { Ok(conn.next().await) }).await {
                Ok(r) => Some(r),
                Err(_) => break,
            }
        } else {
            let stop = async {
                let _ = run.pos_stop.acquire(1).await;
                None
            };
            or(async { Some(conn.next().await) }, stop).await
        };
        let Some(next) = next else {
            stopped = true;
            continue;
        };
        let message = match next {
            Ok(Incoming::Message(m)) if run.reliable => {
                match reliable::incoming(&m, &conn.writer()).await {
                    Ok(Some(payload)) => posrelay_core::proto::Message {
                        kind: MessageKind::Binary,
                        payload: posrelay_core::proto::Payload::Single(payload),
                    },
                    // An ack of POS messages: nothing to time.
                    Ok(None) => continue,
                    Err(e) => {
                        run.mismatch(&format_args!("pair {pair}: {e}"));
                        continue;
                    }
                }
            }
            Ok(Incoming::Message(m)) => m,
            Ok(Incoming::Closed(code)) => {
                eprintln!("pair {pair}: POS side closed by the peer ({code:?})");
                run.error();
                break;
            }
            Err(e) => {
                eprintln!("pair {pair}: POS side failed: {e}");
                run.error();
                break;
            }
        };
        let now = Instant::now();
        let Some((seq, sent_at)) = outstanding.borrow_mut().pop_front() else {
            run.mismatch(&format_args!("pair {pair}: a message nobody sent"));
            continue;
        };
        run.in_flight.set(run.in_flight.get().saturating_sub(1));
        if let Err(m) = payload::check(
            Stamp { pair, seq },
            run.size,
            message.payload.iter().map(|b| &b[..]),
        ) {
            run.mismatch(&format_args!("pair {pair} at the POS: {m}"));
        }
        if run.recording.get() {
            run.latencies
                .borrow_mut()
                .record(now.saturating_duration_since(sent_at).as_nanos() as u64);
            run.counters.borrow_mut().round_trips += 1;
        }
        gate.signal(1);
    }
    // Whatever is still outstanding never came back.
    let lost = outstanding.borrow().len() as u64;
    if lost > 0 {
        eprintln!("pair {pair}: {lost} messages never came back");
        run.counters.borrow_mut().errors += lost;
    }
    let _ = timeout(Duration::from_secs(2), async { Ok(conn.close().await) }).await;
}

async fn device_echo(run: Rc<Run>, pair: u32, mut conn: WsReader) {
    let writer = conn.writer();
    let mut expect = 0u64;
    loop {
        let stop = async {
            let _ = run.device_stop.acquire(1).await;
            None
        };
        let Some(next) = or(async { Some(conn.next().await) }, stop).await else {
            break;
        };
        match next {
            Ok(Incoming::Message(m)) => {
                if let Err(e) = payload::check(
                    Stamp { pair, seq: expect },
                    run.size,
                    m.payload.iter().map(|b| &b[..]),
                ) {
                    run.mismatch(&format_args!("pair {pair} at the device: {e}"));
                }
                expect += 1;
                let bytes = m.payload.to_bytes();
                if writer.send(m.kind, &bytes).await.is_err() {
                    run.error();
                    return;
                }
            }
            Ok(Incoming::Closed(code)) => {
                // A relay may close the device's end when the POS leaves (the
                // baseline does): only a close while the load runs is an error.
                if !run.stopping.get() {
                    eprintln!("pair {pair}: device closed by the peer ({code:?})");
                    run.error();
                }
                return;
            }
            Err(e) => {
                eprintln!("pair {pair}: device failed: {e}");
                run.error();
                return;
            }
        }
    }
    let _ = timeout(Duration::from_secs(2), async { Ok(conn.close().await) }).await;
}

async fn progress_ticker(run: Rc<Run>, label: String, warmup: Duration) {
    let started = Instant::now();
    let mut last = 0u64;
    loop {
        sleep(Duration::from_secs(1)).await;
        let c = *run.counters.borrow();
        let (phase, rate) = if run.recording.get() {
            let r = c.round_trips - last;
            last = c.round_trips;
            ("measuring", r)
        } else {
            ("warming up", 0)
        };
        let l = run.latencies.borrow().summary();
        progress_line(&format!(
            "{label}: {phase} {:>5.1}s  {rate} rt/s  p50 {:.0}µs  p99 {:.0}µs  in flight {}  errors {}  mismatches {}",
            started.elapsed().as_secs_f64() - if run.recording.get() { warmup.as_secs_f64() } else { 0.0 },
            l.p50_us,
            l.p99_us,
            run.in_flight.get(),
            c.errors,
            c.mismatches,
        ));
    }
}

/// Prints a progress line to stderr: rewritten in place on a terminal, one line each otherwise.
pub fn progress_line(text: &str) {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K{text}");
    } else {
        eprintln!("{text}");
    }
}

/// Ends an in-place progress line.
pub fn progress_done() {
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
}

/// The POS side of §11 for the load: data envelopes out, and, in, the device's messages
/// unwrapped and acknowledged (the POS has checked them).
mod reliable {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use bytes::Bytes;
    use posrelay_core::proto::{Message, MessageKind};

    use crate::wsclient::{message_bytes, WsWriter};

    /// `{"type":"data","seq":N,"binary":"…"}`.
    pub fn data(seq: u64, payload: &[u8]) -> String {
        format!(
            r#"{{"type":"data","seq":{seq},"binary":"{}"}}"#,
            STANDARD.encode(payload)
        )
    }

    /// A device message's payload (acknowledged on `writer`), or `None` for an `ack`.
    pub async fn incoming(m: &Message, writer: &WsWriter) -> Result<Option<Bytes>, String> {
        if m.kind != MessageKind::Text {
            return Err("a binary message on a reliable session".into());
        }
        let bytes = message_bytes(m);
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("not an envelope: {e}"))?;
        match v.get("type").and_then(serde_json::Value::as_str) {
            Some("ack") => Ok(None),
            Some("data") => {
                let seq = v.get("seq").and_then(serde_json::Value::as_u64);
                let payload = v.get("binary").and_then(serde_json::Value::as_str);
                let (Some(seq), Some(payload)) = (seq, payload) else {
                    return Err(format!("a data envelope without seq or binary: {v}"));
                };
                let payload = STANDARD
                    .decode(payload)
                    .map_err(|e| format!("bad base64: {e}"))?;
                let ack = format!(r#"{{"type":"ack","seq":{seq}}}"#);
                writer
                    .send_text(&ack)
                    .await
                    .map_err(|e| format!("ack: {e}"))?;
                Ok(Some(Bytes::from(payload)))
            }
            _ => Err(format!("unexpected envelope {v}")),
        }
    }
}
