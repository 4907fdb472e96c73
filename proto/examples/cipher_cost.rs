//! The punched stream's cipher (ChaCha20-Poly1305 in Noise transport messages of the data
//! frame size) with snow's pure-Rust resolver against its ring resolver, in the same run.
//!
//! `cargo run --release -p punch-proto --example cipher_cost -- [MIB] [ROUNDS]` (defaults 512,
//! 5): seals and opens MIB MiB in 65,519-byte messages with each resolver, alternating, ROUNDS
//! times; prints the median GB/s of each and the ratio. `Builder::new` picks ring when the
//! workspace enables snow's `ring-accelerated` feature, as it does.
#![allow(clippy::unwrap_used)] // a measuring tool: any failure is fatal and says where

use std::time::Instant;

use snow::resolvers::{CryptoResolver, DefaultResolver, FallbackResolver, RingResolver};
use snow::{Builder, TransportState};

const PARAMS: &str = "Noise_KK_25519_ChaChaPoly_BLAKE2s";
const MSG: usize = 65_535 - 16;

fn resolver(ring: bool) -> Box<dyn CryptoResolver + Send> {
    if ring {
        Box::new(FallbackResolver::new(
            Box::new(RingResolver),
            Box::new(DefaultResolver),
        ))
    } else {
        Box::new(DefaultResolver)
    }
}

/// An initiator and responder transport after a KK handshake, both on `ring` or not.
fn pair(ring: bool) -> (TransportState, TransportState) {
    let params = PARAMS.parse().unwrap();
    let ka = Builder::with_resolver(PARAMS.parse().unwrap(), resolver(ring))
        .generate_keypair()
        .unwrap();
    let kb = Builder::with_resolver(PARAMS.parse().unwrap(), resolver(ring))
        .generate_keypair()
        .unwrap();
    let mut a = Builder::with_resolver(params, resolver(ring))
        .local_private_key(&ka.private)
        .remote_public_key(&kb.public)
        .build_initiator()
        .unwrap();
    let mut b = Builder::with_resolver(PARAMS.parse().unwrap(), resolver(ring))
        .local_private_key(&kb.private)
        .remote_public_key(&ka.public)
        .build_responder()
        .unwrap();
    let (mut m, mut p) = (vec![0u8; 1024], vec![0u8; 1024]);
    let n = a.write_message(&[], &mut m).unwrap();
    b.read_message(&m[..n], &mut p).unwrap();
    let n = b.write_message(&[], &mut m).unwrap();
    a.read_message(&m[..n], &mut p).unwrap();
    (
        a.into_transport_mode().unwrap(),
        b.into_transport_mode().unwrap(),
    )
}

/// GB/s of seal + open for `total` bytes.
fn run(ring: bool, total: usize) -> f64 {
    let (mut a, mut b) = pair(ring);
    let plain = vec![0x5Au8; MSG];
    let mut sealed = vec![0u8; MSG + 16];
    let mut opened = vec![0u8; MSG];
    let start = Instant::now();
    let mut done = 0;
    while done < total {
        let n = a.write_message(&plain, &mut sealed).unwrap();
        b.read_message(&sealed[..n], &mut opened).unwrap();
        done += MSG;
    }
    done as f64 / start.elapsed().as_secs_f64() / 1e9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().unwrap());
    let mib = args.next().unwrap_or(512);
    let rounds = args.next().unwrap_or(5);
    let (mut rust, mut ring) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        rust.push(run(false, mib << 20));
        ring.push(run(true, mib << 20));
    }
    let (r, g) = (median(rust), median(ring));
    println!(
        "seal+open, {MSG}-byte messages, median of {rounds} x {mib} MiB: snow default {r:.3} GB/s, ring {g:.3} GB/s, ring/default {:.2}",
        g / r
    );
}
