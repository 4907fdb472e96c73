//! NAT-lab link delay: holds every packet of an NFQUEUE for a constant time, then accepts it.
//!
//! Runs inside a lab router's namespace; the router's `mangle` rules send the packets of its
//! `wan` link (both directions) to queue `--queue`. Packets are released in arrival order
//! after `--delay-ms`, so a flow is never reordered. The queue is polled every [`POLL`], which
//! bounds the added jitter. Prints `ready ...` on stdout once bound; exits after
//! `--max-secs` or when its parent (the test process) goes away.
//!
//! Usage: `natlab_delay --queue N --delay-ms D [--max-secs S]`

use nfq::{Queue, Verdict};
use std::collections::VecDeque;
use std::io::{ErrorKind, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Poll period: the jitter added on top of the delay (well under a millisecond, against
/// delays of tens of ms) for a few thousand cheap wake-ups a second.
const POLL: Duration = Duration::from_micros(200);
/// Kernel queue length: room for ~100 ms of a fast flow; packets beyond it are dropped, as a
/// real router's full buffer would.
const QUEUE_MAX_LEN: u32 = 16_384;
/// Most packets taken from the socket per poll, so releasing is never starved.
const RECV_BATCH: usize = 4096;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("natlab_delay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut queue_num: Option<u16> = None;
    let mut delay_ms: Option<u64> = None;
    let mut max_secs: u64 = 3600;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--queue" => queue_num = Some(num(&value("--queue")?)?),
            "--delay-ms" => delay_ms = Some(num(&value("--delay-ms")?)?),
            "--max-secs" => max_secs = num(&value("--max-secs")?)?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let q = queue_num.ok_or("--queue is required")?;
    let delay = Duration::from_millis(delay_ms.ok_or("--delay-ms is required")?);
    let end = Instant::now() + Duration::from_secs(max_secs);
    let parent = std::os::unix::process::parent_id();

    let mut queue = Queue::open().map_err(err("opening nfqueue socket"))?;
    queue.bind(q).map_err(err("binding queue"))?;
    // Metadata only: the payload is never looked at.
    queue.set_copy_range(q, 0).map_err(err("copy range"))?;
    queue.set_recv_gso(q, true).map_err(err("gso"))?;
    queue
        .set_queue_max_len(q, QUEUE_MAX_LEN)
        .map_err(err("queue length"))?;
    queue.set_nonblocking(true);
    println!("ready queue={q} delay_ms={}", delay.as_millis());
    let _ = std::io::stdout().flush();

    let mut held = VecDeque::new();
    let (mut passed, mut errors) = (0u64, 0u64);
    while Instant::now() < end && std::os::unix::process::parent_id() == parent {
        for _ in 0..RECV_BATCH {
            match queue.recv() {
                Ok(mut msg) => {
                    msg.set_verdict(Verdict::Accept);
                    held.push_back((Instant::now() + delay, msg));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    errors += 1;
                    if errors <= 10 {
                        eprintln!("natlab_delay: recv: {e}");
                    }
                    break;
                }
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, msg)) = held.pop_front() {
                if let Err(e) = queue.verdict(msg) {
                    errors += 1;
                    if errors <= 10 {
                        eprintln!("natlab_delay: verdict: {e}");
                    }
                }
                passed += 1;
            }
        }
        std::thread::sleep(POLL);
    }
    eprintln!("natlab_delay: exiting; {passed} packets passed, {errors} errors");
    Ok(())
}

fn err(what: &'static str) -> impl Fn(std::io::Error) -> String {
    move |e| format!("{what}: {e}")
}

fn num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("bad number {s:?}"))
}
