//! Frame decoding throughput from a warm read buffer.
//!
//! Each iteration simulates one socket read (a copy of the wire bytes into the
//! buffer's spare capacity, reclaimed in place) and decodes every frame in it:
//! header parse, limit check, in-place unmask, zero-copy split. The
//! `refill_only` baseline is the copy alone, to tell the two costs apart.
//!
//! Run: `cargo bench -p posrelay-core --bench decode`.

use std::hint::black_box;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use posrelay_core::proto::{apply_mask, encode_client_frame, FrameDecoder, OpCode, Role};

/// Masked binary frames of `payload` bytes, `count` of them back to back.
fn wire(payload: usize, count: usize) -> Vec<u8> {
    let body: Vec<u8> = (0..payload).map(|i| i as u8).collect();
    let mut out = BytesMut::new();
    for _ in 0..count {
        encode_client_frame(
            OpCode::Binary,
            true,
            &body,
            [0x37, 0xfa, 0x21, 0x3d],
            &mut out,
        );
    }
    out.to_vec()
}

fn decode_all(decoder: &mut FrameDecoder, buf: &mut BytesMut, wire: &[u8]) -> usize {
    buf.reserve(wire.len());
    buf.extend_from_slice(wire);
    let mut frames = 0;
    while let Ok(Some(frame)) = decoder.decode(buf) {
        black_box(&frame.payload);
        frames += 1;
    }
    frames
}

fn bench_decode(c: &mut Criterion) {
    // (name, payload size, frames per simulated read)
    let cases = [("16KiB", 16 * 1024, 4), ("64B", 64, 1000)];
    for (name, payload, count) in cases {
        let stream = wire(payload, count);
        let mut decoder = FrameDecoder::new(Role::Server, 1 << 20);
        let mut buf = BytesMut::with_capacity(256 * 1024);

        let mut group = c.benchmark_group("decode_bytes");
        group.throughput(Throughput::Bytes((payload * count) as u64));
        group.bench_function(name, |b| {
            b.iter(|| assert_eq!(decode_all(&mut decoder, &mut buf, &stream), count))
        });
        group.finish();

        let mut group = c.benchmark_group("decode_frames");
        group.throughput(Throughput::Elements(count as u64));
        group.bench_function(name, |b| {
            b.iter(|| assert_eq!(decode_all(&mut decoder, &mut buf, &stream), count))
        });
        group.finish();
    }

    let stream = wire(16 * 1024, 4);
    let mut group = c.benchmark_group("baseline");
    group.throughput(Throughput::Bytes((16 * 1024 * 4) as u64));
    let mut buf = BytesMut::with_capacity(256 * 1024);
    group.bench_function("refill_only_16KiB", |b| {
        b.iter(|| {
            buf.clear();
            buf.extend_from_slice(&stream);
            black_box(&buf);
        })
    });
    let mut payload = vec![0u8; 16 * 1024 * 4];
    group.bench_function("apply_mask_64KiB", |b| {
        b.iter(|| apply_mask(black_box(&mut payload), [0x37, 0xfa, 0x21, 0x3d]))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    targets = bench_decode
}
criterion_main!(benches);
