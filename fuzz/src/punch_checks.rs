//! Harnesses for the decoders of the punch client library that read bytes from a punched
//! stream: the clear-text preamble and the encrypted [`SecureStream`].
//!
//! Like `proto_checks.rs` (see there), each harness panics on a broken invariant and returns
//! whether the input was accepted; `punch/tests/fuzz_regressions.rs` includes this file by path
//! and replays `fuzz/seeds/` and `fuzz/regressions/` on stable Rust.

use std::io;

use bytes::BytesMut;
use punch::auth::{parse_preamble, preamble, AuthError, PREAMBLE_LEN, PREAMBLE_MAGIC};
use punch::secure::SecureStream;
use punch_proto::noise::{Transport, MAX_PLAINTEXT_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{block_on, frame, keys, peer_pair};
use crate::input::Input;

/// A harness: panics on a broken invariant, returns whether the input was accepted.
pub type Check = fn(&[u8]) -> bool;

/// Every byte-level target of punch, by fuzz target name.
pub const TARGETS: &[(&str, Check)] = &[("secure_stream", secure_stream)];

/// Operations per input.
const MAX_OPS: usize = 64;
/// Ciphertext per input at most: four times the 128 KiB `SecureStream` decrypts per read
/// batch, few enough full frames that one input stays fast.
const MAX_WIRE: usize = 512 * 1024;
/// Writes and reads per input at most: the fuzzed chunk and read sizes grow to stay within it
/// (a megabyte written a byte at a time is slow, not interesting).
const MAX_CALLS: usize = 2048;
/// The in-memory pipe is smaller than a frame, so reads and writes interleave mid-frame.
const PIPE: usize = 16 * 1024;

/// `parse_preamble`, then a `SecureStream` reading what an authenticated but hostile peer
/// sends: it holds the session keys, so it can send any plaintext, and can also tamper with,
/// drop, replay and interleave frames with junk.
///
/// Input: 12 preamble bytes; the session id (8 bytes); a flags byte (odd: both ends are
/// `SecureStream`s and only genuine data is written); how many bytes of the wire the reader
/// already holds from the handshake (2 bytes, modulo the wire length); the write chunk size and
/// the read buffer size (2 bytes each); then operations: a genuine frame of a short or a sized
/// plaintext, a tampered frame, junk, a frame sealed but never sent, a replay of the last frame.
///
/// Invariants: the preamble parses exactly when it has the magic, and round-trips; every
/// read ends in data, end of stream or an error, never a panic or a hang; the reader returns
/// exactly the plaintext of the genuine frames before the first bad byte, never anything
/// else; a clean stream ends with `Ok(0)` after all of it, a stream with anything bad ends with
/// an error (a stream cut inside a frame included).
pub fn secure_stream(data: &[u8]) -> bool {
    let mut input = Input::new(data);
    let p: [u8; PREAMBLE_LEN] = input.array();
    match parse_preamble(&p) {
        Ok(id) => {
            assert_eq!(p[..4], PREAMBLE_MAGIC);
            assert_eq!(preamble(id), p, "preamble round trip");
        }
        Err(AuthError::Preamble) => assert_ne!(p[..4], PREAMBLE_MAGIC),
        Err(e) => panic!("unexpected preamble error {e}"),
    }
    let (tx, rx) = peer_pair(keys(), input.u64());
    let both_secure = input.bool();
    let cut = usize::from(input.u16());
    let chunk = usize::from(input.u16()).max(1);
    let read_size = usize::from(input.u16()).max(1);
    if both_secure {
        secure_to_secure(input, tx, rx, chunk, read_size)
    } else {
        hostile_to_secure(input, tx, rx, cut, chunk, read_size)
    }
}

/// The wire a hostile peer writes, and the plaintext the reader must return.
struct Script {
    wire: Vec<u8>,
    valid: Vec<u8>,
    /// Something after `valid` can never decrypt.
    bad: bool,
    /// A genuine frame with an empty plaintext came (the path-end marker): the reader returns
    /// end of stream there, and whatever follows is not read.
    ended: bool,
}

fn hostile_script(mut input: Input, mut tx: Transport) -> Script {
    let mut s = Script {
        wire: Vec::new(),
        valid: Vec::new(),
        bad: false,
        ended: false,
    };
    // A frame was sealed but not sent: every later genuine frame has the wrong nonce.
    let mut gap = false;
    let mut last: Option<Vec<u8>> = None;
    let seal = |tx: &mut Transport, plaintext: &[u8]| {
        let mut ct = Vec::new();
        tx.encrypt(plaintext, &mut ct)
            .expect("plaintext within the limit");
        frame(&ct)
    };
    for _ in 0..MAX_OPS {
        if input.is_empty() || s.wire.len() > MAX_WIRE {
            break;
        }
        let op = input.u8();
        // After the marker the wire goes on, but what the reader returns is settled.
        let settled = s.ended.then_some((s.valid.len(), s.bad));
        match op % 6 {
            kind @ (0 | 1) => {
                let plaintext = if kind == 0 {
                    input.short_bytes().to_vec()
                } else {
                    vec![op; usize::from(input.u16()).min(MAX_PLAINTEXT_LEN)]
                };
                let f = seal(&mut tx, &plaintext);
                if s.bad || gap {
                    s.bad = true;
                } else if plaintext.is_empty() {
                    s.ended = true;
                } else {
                    s.valid.extend_from_slice(&plaintext);
                }
                s.wire.extend_from_slice(&f);
                last = Some(f);
            }
            2 => {
                let mut f = seal(&mut tx, input.short_bytes());
                let (at, mask) = (usize::from(input.u16()), input.u8() | 1);
                let i = at % f.len();
                f[i] ^= mask;
                s.wire.extend_from_slice(&f);
                s.bad = true;
            }
            3 => {
                let junk = input.short_bytes();
                s.wire.extend_from_slice(junk);
                s.bad |= !junk.is_empty();
            }
            4 => {
                seal(&mut tx, input.short_bytes());
                gap = true;
            }
            _ => {
                if let Some(f) = &last {
                    s.wire.extend_from_slice(f);
                    s.bad = true;
                }
            }
        }
        if let Some((len, bad)) = settled {
            s.valid.truncate(len);
            s.bad = bad;
        }
    }
    s
}

fn hostile_to_secure(
    input: Input,
    tx: Transport,
    rx: Transport,
    cut: usize,
    chunk: usize,
    read_size: usize,
) -> bool {
    let script = hostile_script(input, tx);
    let cut = cut % (script.wire.len() + 1);
    let chunk = chunk.max(script.wire.len() / MAX_CALLS);
    let read_size = read_size.max(script.valid.len() / MAX_CALLS);
    let (out, result) = block_on(async {
        let (mut near, far) = tokio::io::duplex(PIPE);
        let leftover = BytesMut::from(&script.wire[..cut]);
        let reader = async move {
            let mut stream = SecureStream::new(far, rx, leftover);
            read_all(&mut stream, read_size).await
        };
        let writer = async {
            for c in script.wire[cut..].chunks(chunk) {
                if near.write_all(c).await.is_err() {
                    break;
                }
            }
            let _ = near.shutdown().await;
        };
        let (res, ()) = tokio::join!(reader, writer);
        res
    });
    assert!(
        script.valid.starts_with(&out),
        "read {} bytes that are not the genuine plaintext",
        out.len()
    );
    match result {
        Ok(()) => {
            assert!(!script.bad, "a stream with bad bytes ended cleanly");
            assert_eq!(out.len(), script.valid.len(), "clean end before all data");
            true
        }
        Err(e) => {
            assert!(script.bad, "a clean stream failed: {e}");
            false
        }
    }
}

/// Reads until end of stream or an error, with reads of `read_size` bytes.
async fn read_all(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    read_size: usize,
) -> (Vec<u8>, io::Result<()>) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; read_size];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return (out, Ok(())),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return (out, Err(e)),
        }
    }
}

/// Both ends are `SecureStream`s: whatever is written, in whatever chunks, is read back intact
/// and the stream ends cleanly after a shutdown.
fn secure_to_secure(
    mut input: Input,
    tx: Transport,
    rx: Transport,
    chunk: usize,
    read_size: usize,
) -> bool {
    let mut plain = Vec::new();
    for _ in 0..MAX_OPS {
        if input.is_empty() || plain.len() > MAX_WIRE {
            break;
        }
        let op = input.u8();
        if op & 1 == 0 {
            plain.extend_from_slice(input.short_bytes());
        } else {
            plain.resize(plain.len() + usize::from(input.u16()), op);
        }
    }
    let chunk = chunk.max(plain.len() / MAX_CALLS);
    let read_size = read_size.max(plain.len() / MAX_CALLS);
    let (out, result) = block_on(async {
        let (near, far) = tokio::io::duplex(PIPE);
        let mut writer = SecureStream::new(near, tx, BytesMut::new());
        let mut reader = SecureStream::new(far, rx, BytesMut::new());
        let write = async {
            for c in plain.chunks(chunk) {
                writer.write_all(c).await.expect("write");
            }
            writer.shutdown().await.expect("shutdown");
        };
        let (res, ()) = tokio::join!(read_all(&mut reader, read_size), write);
        res
    });
    result.expect("a genuine stream reads to its end");
    assert!(
        out == plain,
        "read back {} of {} bytes, or different",
        out.len(),
        plain.len()
    );
    true
}

/// One accepted input per mode, stored under `fuzz/seeds/<target>/<name>`.
pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut head = preamble(7).to_vec();
    head.extend_from_slice(&7u64.to_be_bytes());
    let with = |flags: u8, cut: u16, chunk: u16, read: u16, ops: &[u8]| {
        let mut v = head.clone();
        v.push(flags);
        for n in [cut, chunk, read] {
            v.extend_from_slice(&n.to_be_bytes());
        }
        v.extend_from_slice(ops);
        v
    };
    let big = [1u8, 0xff, 0xef];
    let mut hostile_ops = vec![0, 5];
    hostile_ops.extend_from_slice(b"hello");
    hostile_ops.extend_from_slice(&big);
    hostile_ops.extend_from_slice(&[0, 0]);
    vec![
        (
            "secure_stream",
            "genuine_frames",
            with(0, 9, 1000, 333, &hostile_ops),
        ),
        (
            "secure_stream",
            "secure_to_secure",
            with(
                1,
                0,
                u16::MAX,
                4096,
                &[0, 3, b'a', b'b', b'c', 1, 0xff, 0xff],
            ),
        ),
    ]
}
