//! Issue "relay node", §6 "Backpressure, not buffering": a POS sends 200 MiB as fast as it
//! can to a device that reads slowly for ~10 s and then drains at full speed.
//!
//! Asserted:
//! - nothing is lost: every message arrives, in order, byte-exact (sequence number in the
//!   first 8 bytes, a fixed pseudo-random body);
//! - the POS was paced: when the device starts draining, the POS has not finished, and what
//!   it had sent beyond what the device had read is bounded (PACING_BOUND) — kernel socket
//!   buffers of both hops included;
//! - the relay's memory stays bounded: VmRSS sampled every 100 ms never grows more than
//!   RSS_GROWTH_BOUND above its level once the pair is connected (the relay would need
//!   ~200 MiB to buffer the stream).

mod common;

use common::*;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::Message;

const MESSAGE_BYTES: usize = 64 * 1024;
const MESSAGES: u64 = 3200; // 200 MiB
const SLOW_PHASE: Duration = Duration::from_secs(10);
const SLOW_READ_EVERY: Duration = Duration::from_millis(100);
/// Bytes the POS may have sent beyond what the device read when draining starts.
const PACING_BOUND: u64 = 64 << 20;
/// Growth of the relay's VmRSS allowed while the 200 MiB pass through.
const RSS_GROWTH_BOUND_KIB: u64 = 48 << 10;

/// Sets SO_SNDBUF / SO_RCVBUF of a client socket (fixes it, so the kernel's autotuning does
/// not hide the relay's own buffering).
fn set_sock_buf(stream: &TcpStream, opt: libc::c_int, bytes: libc::c_int) {
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live local variable.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            &bytes as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt");
}

#[test]
fn a_slow_device_paces_the_pos_and_nothing_is_lost_or_buffered_without_bound() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &["12345678"]);
    let pair = Pair::connect(&relay, "acme", "12345678", &creds);
    let Pair {
        mut device,
        mut session,
        pos: _pos,
        ..
    } = pair;
    set_sock_buf(tcp_of(&mut session), libc::SO_SNDBUF, 256 << 10);
    set_sock_buf(tcp_of(&mut device.ws), libc::SO_RCVBUF, 256 << 10);
    // The POS's writes are expected to block for the whole slow phase.
    set_write_timeout(&mut session, Some(Duration::from_secs(60)));

    let body = Arc::new(binary_payload(MESSAGE_BYTES, 2024));
    let sent = Arc::new(AtomicU64::new(0));
    let draining = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));

    // Sampler: the relay's VmRSS every 100 ms.
    let pid = relay.pid();
    let baseline = relay.rss_kib();
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0u64;
            let mut samples = 0u32;
            while !done.load(Ordering::Relaxed) {
                if let Some(rss) = rss_kib(pid) {
                    peak = peak.max(rss);
                    samples += 1;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (peak, samples)
        })
    };

    // Device: slow for SLOW_PHASE, then drains; checks every message.
    let reader = {
        let (body, sent, draining) = (body.clone(), sent.clone(), draining.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut at_drain = None;
            for seq in 0..MESSAGES {
                if at_drain.is_none() {
                    if start.elapsed() < SLOW_PHASE {
                        std::thread::sleep(SLOW_READ_EVERY);
                    } else {
                        at_drain = Some((seq, sent.load(Ordering::SeqCst)));
                        draining.store(true, Ordering::SeqCst);
                    }
                }
                match device.recv() {
                    Message::Binary(b) => {
                        assert_eq!(b.len(), MESSAGE_BYTES, "message {seq}: length");
                        let got = u64::from_be_bytes(b[..8].try_into().unwrap());
                        assert_eq!(got, seq, "in order, none lost");
                        assert!(b[8..] == body[8..], "message {seq}: byte-exact");
                    }
                    other => panic!("message {seq}: expected binary, got {}", show(&other)),
                }
            }
            at_drain.expect("the slow phase ended before the last message")
        })
    };

    // POS: as fast as it can.
    for seq in 0..MESSAGES {
        let mut m = body.as_ref().clone();
        m[..8].copy_from_slice(&seq.to_be_bytes());
        session
            .send(Message::Binary(m))
            .unwrap_or_else(|e| panic!("POS send {seq}: {e}"));
        sent.store(seq + 1, Ordering::SeqCst);
    }
    let finished_after_drain_began = draining.load(Ordering::SeqCst);
    let (read_at_drain, sent_at_drain) = reader.join().expect("device side");
    done.store(true, Ordering::Relaxed);
    let (peak, samples) = sampler.join().unwrap();
    eprintln!(
        "slow reader: at drain start device read {read_at_drain}, POS sent {sent_at_drain} of {MESSAGES}; \
         VmRSS baseline {baseline} KiB, peak {peak} KiB over {samples} samples"
    );

    assert!(
        finished_after_drain_began,
        "the POS finished 200 MiB before the device drained: not paced"
    );
    assert!(
        sent_at_drain < MESSAGES,
        "the POS had sent everything during the slow phase"
    );
    let ahead = (sent_at_drain - read_at_drain) * MESSAGE_BYTES as u64;
    assert!(
        ahead <= PACING_BOUND,
        "the POS was {ahead} bytes ahead of the device (bound {PACING_BOUND})"
    );
    assert!(
        samples >= 50,
        "RSS sampled every 100 ms ({samples} samples)"
    );
    assert!(
        peak <= baseline + RSS_GROWTH_BOUND_KIB,
        "relay VmRSS grew from {baseline} KiB to {peak} KiB (bound +{RSS_GROWTH_BOUND_KIB} KiB)"
    );
}
