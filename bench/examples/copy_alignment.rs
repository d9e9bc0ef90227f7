//! How long this host's `memcpy` takes to copy one TLS record (16,406 bytes) into a
//! buffer, by where the destination lies relative to the source modulo 4 KiB (BENCHMARKS.md,
//! "A slow copy on AMD hosts"). rustls copies every record it encrypts from its own
//! buffer into the caller's: on some hosts (AMD EPYC with glibc's `rep movsb` copy) a
//! destination 1-31 bytes after the source runs many times slower, which is why posrelay
//! places large records on 64-byte boundaries (`core/src/io/transport.rs`, `ALIGN_FROM`).
//!
//! `cargo run -p posrelay-bench --release --example copy_alignment`

use std::hint::black_box;
use std::time::Instant;

/// A TLS 1.3 record of 16 KiB of plaintext: 5 header + 16,384 + 1 content type + 16 tag.
const LEN: usize = 16_406;
const COPIES: u32 = 20_000;

/// `bytes` past its first page boundary, `len` bytes long.
fn from_page(bytes: &mut [u8], len: usize) -> &mut [u8] {
    let start = (4096 - bytes.as_ptr() as usize % 4096) % 4096;
    &mut bytes[start..start + len]
}

fn main() {
    let mut src_bytes = vec![1u8; LEN + 2 * 4096];
    let mut dst_bytes = vec![2u8; LEN + 2 * 4096];
    let src = from_page(&mut src_bytes, LEN + 4096);
    let dst = from_page(&mut dst_bytes, LEN + 4096);
    println!("copying {LEN} bytes, {COPIES} times each; offsets from a page boundary");
    println!("{:>12} {:>12} {:>10}", "source", "destination", "ns/copy");
    for (s, d) in [
        (0, 0),
        (0, 64),
        (0, 26),
        (0, 1),
        (0, 16),
        (0, 32),
        (16, 0),
        (16, 48),
        (64, 0),
    ] {
        let started = Instant::now();
        for _ in 0..COPIES {
            dst[d..d + LEN].copy_from_slice(black_box(&src[s..s + LEN]));
            black_box(&mut *dst);
        }
        let ns = started.elapsed().as_nanos() / u128::from(COPIES);
        println!("{s:>12} {d:>12} {ns:>10}");
    }
}
