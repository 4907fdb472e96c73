//! Harness of punch's [`Guard`]: structured yamux frames and raw bytes in both directions,
//! write stalls, application reads and releases, and clock steps.
//!
//! After every event:
//! - the ledger's invariants hold (`Guard::check_invariants`: the session's unread total is
//!   the sum of its streams', each stream's cost matches its frames, the tables are bounded);
//! - a violation is final: every later read fails with the same violation;
//! - reading is paused exactly when replies owed or unread bytes reach their limits;
//! - a stall verdict comes only once a stall has lasted its limit.

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use punch::guard::{encode_header, Guard, GuardLimits, Verdict, HEADER_LEN};

const MAX_EVENTS: usize = 512;
/// Data bodies are clipped to this, to keep the harness fast.
const MAX_BODY: u32 = 64 * 1024;

#[derive(Debug, Arbitrary)]
pub struct Scenario {
    max_unread_kib: u16,
    max_pending_replies: u8,
    max_streams: u8,
    events: Vec<Event>,
}

#[derive(Debug, Arbitrary)]
pub enum Event {
    /// A whole frame from the peer: type (mod 5, so 4 is invalid), flags, stream (mod 8),
    /// length (data bodies clipped).
    In(u8, u8, u8, u32),
    /// A whole frame we write.
    Out(u8, u8, u8, u32),
    /// Raw bytes from the peer (partial frames, garbage).
    RawIn(Vec<u8>),
    RawOut(Vec<u8>),
    WriteBlocked,
    Deliver(u8, u32),
    Release(u8),
    AdvanceMillis(u16),
}

fn frame(ty: u8, flags: u8, stream: u8, length: u32) -> Vec<u8> {
    let ty = ty % 5;
    let length = if ty == 0 {
        length % (MAX_BODY + 1)
    } else {
        length
    };
    let mut f = encode_header(ty, u16::from(flags & 0x0f), u32::from(stream % 8), length).to_vec();
    if ty == 0 {
        f.resize(HEADER_LEN + length as usize, 0);
    }
    f
}

pub fn run(s: Scenario) {
    let t0 = Instant::now();
    let limits = GuardLimits {
        max_unread: u64::from(s.max_unread_kib) * 1024,
        max_pending_replies: u32::from(s.max_pending_replies),
        write_stall: Duration::from_secs(2),
        read_stall: Duration::from_secs(3),
    };
    let mut g = Guard::new(limits.clone(), usize::from(s.max_streams), t0);
    let mut now = t0;
    let mut blocked_since: Option<Instant> = None;
    let mut violated = None;

    for event in s.events.iter().take(MAX_EVENTS) {
        let read = match event {
            Event::In(ty, flags, stream, len) => {
                Some(g.on_read(&frame(*ty, *flags, *stream, *len)))
            }
            Event::RawIn(bytes) => Some(g.on_read(bytes)),
            Event::Out(ty, flags, stream, len) => {
                g.on_written(&frame(*ty, *flags, *stream, *len), now);
                blocked_since = None;
                None
            }
            Event::RawOut(bytes) => {
                g.on_written(bytes, now);
                blocked_since = None;
                None
            }
            Event::WriteBlocked => {
                g.on_write_blocked(now);
                blocked_since.get_or_insert(now);
                None
            }
            Event::Deliver(stream, n) => {
                g.on_delivered(u32::from(stream % 8), *n as usize);
                None
            }
            Event::Release(stream) => {
                g.on_released(u32::from(stream % 8));
                None
            }
            Event::AdvanceMillis(ms) => {
                now += Duration::from_millis(u64::from(*ms));
                None
            }
        };
        if let Some(res) = read {
            match (violated, res) {
                (Some(v), res) => assert_eq!(res, Err(v), "a violation is final"),
                (None, Err(v)) => violated = Some(v),
                (None, Ok(())) => {}
            }
            assert_eq!(g.violation(), violated);
        }
        g.check_invariants();
        let over =
            g.pending_replies() >= limits.max_pending_replies || g.unread() >= limits.max_unread;
        assert_eq!(g.may_read(now), !over, "pause exactly at the limits");
        match g.verdict(now) {
            Some(Verdict::PeerNotReading { stalled }) => {
                let since = blocked_since.expect("a write stall verdict without a stall");
                assert_eq!(stalled, now - since);
                assert!(stalled >= limits.write_stall);
            }
            Some(Verdict::ReaderStalled { stalled, unread }) => {
                assert!(stalled >= limits.read_stall);
                assert_eq!(unread, g.unread());
                assert!(unread >= limits.max_unread);
            }
            None => {
                if let Some(since) = blocked_since {
                    assert!(
                        now - since < limits.write_stall,
                        "a stall past its limit unjudged"
                    );
                }
            }
        }
    }
}
