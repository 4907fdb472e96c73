//! What `punch::guard` costs per byte, against one memory copy of the same bytes in the same
//! run (every byte of a session is copied several times anyway, and encrypted once).
//!
//! `cargo run --release -p punch --example guard_cost -- [GIB]` (default 1): feeds GIB GiB of
//! yamux data frames (256 KiB each, as tokio-yamux sends a bulk stream) through the guard in
//! 128 KiB reads, as the session does, with the application reading each frame, and copies the
//! same reads into a buffer; prints ns/byte of each and the ratio.
#![allow(clippy::unwrap_used)] // a measuring tool: any failure is fatal and says where

use std::hint::black_box;
use std::time::Instant;

use punch::guard::{encode_header, Guard, GuardLimits, HEADER_LEN};

const FRAME: usize = 256 * 1024;
const READ: usize = 128 * 1024;

fn main() {
    let gib: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("GIB"))
        .unwrap_or(1);
    // 64 frames of data on stream 1 (the peer opened it), repeated.
    let mut pattern = Vec::with_capacity(64 * (FRAME + HEADER_LEN));
    for _ in 0..64 {
        pattern.extend_from_slice(&encode_header(0, 0, 1, FRAME as u32));
        pattern.resize(pattern.len() + FRAME, 0x5A);
    }
    let rounds = gib * 1024 * 1024 * 1024 / pattern.len();
    let total = (rounds * pattern.len()) as f64;

    let now = Instant::now();
    let mut guard = Guard::new(GuardLimits::default(), 256, now);
    guard.on_read(&encode_header(1, 1, 1, 0)).unwrap();
    let start = Instant::now();
    for _ in 0..rounds {
        // The window we grant as the application reads: one update per frame.
        for chunk in pattern.chunks(READ) {
            guard.on_read(black_box(chunk)).unwrap();
            guard.on_written(&encode_header(1, 0, 1, FRAME as u32), now);
            guard.on_delivered(1, chunk.len());
            black_box(guard.may_read(now));
        }
    }
    let guard_ns = start.elapsed().as_nanos() as f64 / total;

    let mut sink = vec![0u8; READ];
    let start = Instant::now();
    for _ in 0..rounds {
        for chunk in pattern.chunks(READ) {
            sink[..chunk.len()].copy_from_slice(black_box(chunk));
            black_box(&sink);
        }
    }
    let copy_ns = start.elapsed().as_nanos() as f64 / total;
    println!(
        "guard {guard_ns:.4} ns/byte, one copy {copy_ns:.4} ns/byte, guard/copy {:.3} ({gib} GiB)",
        guard_ns / copy_ns
    );
}
