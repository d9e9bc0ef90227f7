//! Proof that the data path allocates nothing: decoding frames from a warm
//! read buffer, and running them through `Connection`, with a counting global
//! allocator (its own test binary, so it disturbs no other test).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::BytesMut;
use posrelay_core::proto::{
    encode_client_frame, Connection, Event, FrameDecoder, Limits, OpCode, Role,
};

struct Counting;

thread_local! {
    /// Count only on the thread being measured: tests run in parallel threads.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    /// Allocations counted on this thread.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn note_allocation() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: forwards every call unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Counts the allocations `f` makes on this thread.
fn allocations_in(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get) - before
}

const FRAMES_PER_READ: usize = 100;
const READS: usize = 100;

/// What one socket read delivers: 100 masked 64-byte binary frames.
fn one_read() -> BytesMut {
    let mut wire = BytesMut::new();
    for i in 0..FRAMES_PER_READ {
        encode_client_frame(
            OpCode::Binary,
            true,
            &[i as u8; 64],
            [1, 2, 3, 4],
            &mut wire,
        );
    }
    wire
}

/// Simulates a read into the spare capacity of `buf`: once every payload of
/// the previous read is dropped the buffer is unique again and `reserve`
/// reclaims it in place.
fn refill(buf: &mut BytesMut, wire: &[u8]) {
    buf.reserve(wire.len());
    buf.extend_from_slice(wire);
}

#[test]
fn decoding_from_a_warm_buffer_allocates_nothing() {
    let wire = one_read();
    let mut decoder = FrameDecoder::new(Role::Server, 1 << 20);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut frames = 0usize;
    let mut checksum = 0u64;
    let mut round = |buf: &mut BytesMut, frames: &mut usize, checksum: &mut u64| {
        refill(buf, &wire);
        while let Ok(Some(frame)) = decoder.decode(buf) {
            *frames += 1;
            *checksum += u64::from(frame.payload[0]) + frame.payload.len() as u64;
        }
    };
    // Warm up: the first split promotes the buffer to shared (one allocation).
    for _ in 0..3 {
        round(&mut buf, &mut frames, &mut checksum);
    }
    frames = 0;
    checksum = 0;
    let allocations = allocations_in(|| {
        for _ in 0..READS {
            round(&mut buf, &mut frames, &mut checksum);
        }
    });
    assert_eq!(frames, FRAMES_PER_READ * READS);
    let per_read: u64 = (0..FRAMES_PER_READ as u64).map(|i| i + 64).sum();
    assert_eq!(checksum, per_read * READS as u64, "payloads were unmasked");
    assert!(buf.is_empty());
    assert_eq!(allocations, 0, "allocations while decoding {frames} frames");
}

#[test]
fn connection_data_path_allocates_nothing() {
    let wire = one_read();
    let mut conn = Connection::new(Role::Server, Limits::default());
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut messages = 0usize;
    let mut round = |buf: &mut BytesMut, messages: &mut usize| {
        refill(buf, &wire);
        while let Ok(Some(event)) = conn.handle_read(buf) {
            if let Event::Message(m) = event {
                *messages += usize::from(m.payload.len() == 64);
            }
        }
    };
    for _ in 0..3 {
        round(&mut buf, &mut messages);
    }
    messages = 0;
    let allocations = allocations_in(|| {
        for _ in 0..READS {
            round(&mut buf, &mut messages);
        }
    });
    assert_eq!(messages, FRAMES_PER_READ * READS);
    assert_eq!(
        allocations, 0,
        "allocations while relaying {messages} messages"
    );
}

#[test]
fn the_counter_counts() {
    // Guards against a counter that can never fail the tests above.
    let n = allocations_in(|| drop(std::hint::black_box(vec![1u8; 100])));
    assert_eq!(n, 1);
}
