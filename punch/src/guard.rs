//! The guard on a session's yamux byte stream: the pure half of punch's defence against an
//! authenticated peer that abuses yamux (hostile-peers findings 2 and 6).
//!
//! tokio-yamux 0.3.20 trusts its peer in three ways that cost memory:
//! - **Replies queue without bound.** Every ping (and every stream opening) is answered with a
//!   frame pushed onto `write_pending_frames`, and the session keeps reading while its writes
//!   are stuck. A peer that stops reading and sends pings grew a victim by 1.5 GB in 20 s.
//!   One blind ping ACK with id `0xFFFFFFFF` also cleared every outstanding keepalive ping,
//!   so the keepalive never noticed the peer was not reading.
//! - **The receive window is checked only when the application reads.** Frames sit in the
//!   stream's channel (eight frames of up to one window each) unchecked: a stalled stream held
//!   255 MB against a 16 MiB window.
//! - **Nothing bounds a session's unread data**: up to one window per stream, 256 streams.
//!
//! [`Guard`] watches the plaintext yamux bytes in both directions (it sits between yamux and
//! the encrypted stream, see [`crate::session`]) and keeps the ledger yamux does not:
//! - per stream, the receive window we have actually *written* to the peer (initial 256 KiB
//!   plus every window update that left us) minus the data that arrived: a frame beyond it is
//!   [`Violation::WindowExceeded`], before yamux buffers it;
//! - replies owed (pings and stream openings that arrived, minus answers written): over
//!   [`GuardLimits::max_pending_replies`] the driver stops reading the socket, so the flood
//!   waits in the kernel and the peer's own send buffer, not in our heap;
//! - unread bytes per session (each data frame in full until the application has read all
//!   of it, since yamux keeps the frame's buffer until then, plus [`FRAME_OVERHEAD`]): over
//!   [`GuardLimits::max_unread`] reading stops the same way, so the peer's writes block (TCP
//!   back-pressure, as QUIC's connection-level window does);
//! - the ping ids we wrote: an ACK for any other id is [`Violation::UnsolicitedPingAck`];
//! - since when writes are stuck, and since when reading is paused: past
//!   [`GuardLimits::write_stall`] / [`GuardLimits::read_stall`] the session is ended with a
//!   typed reason ([`Verdict`]), before yamux's 30 s ping timeout would end it untyped.
//!
//! Pure: fed bytes and `now`, no I/O, no clock.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// yamux frame header length (version, type, flags, stream id, length).
pub const HEADER_LEN: usize = 12;
/// The receive window every yamux stream starts with (spec and tokio-yamux).
pub const INITIAL_WINDOW: u64 = 256 * 1024;

/// Unread bytes one session may hold before we stop reading its socket: two 16 MiB stream
/// windows, so one bulk stream whose reader lags by a full window still runs at full speed,
/// while 256 stalled streams can no longer hold 256 windows (4 GiB).
pub const DEFAULT_MAX_UNREAD: u64 = 32 * 1024 * 1024;
/// Replies (ping answers, stream acknowledgements) owed while our writes are stuck before we
/// stop reading: an honest peer pings once per keepalive (15 s) and opens streams in the
/// hundreds at most, so this is only reached by a flood; 1,024 queued frames are ~100 KB.
pub const DEFAULT_MAX_PENDING_REPLIES: u32 = 1024;
/// Writes that make no progress for this long end the session ([`Verdict::PeerNotReading`]).
/// Under yamux's 30 s ping timeout, which would otherwise end it without a reason.
pub const DEFAULT_WRITE_STALL: Duration = Duration::from_secs(20);
/// Reading paused (unread budget full, nothing read by the application) for this long ends
/// the session ([`Verdict::ReaderStalled`]): its memory is only freed when the application
/// drops the streams, which it does when the session ends.
pub const DEFAULT_READ_STALL: Duration = Duration::from_secs(20);
/// Ping ids remembered as written: the keepalive writes one per 15 s, so even a peer that
/// answers late has its answers matched.
const PINGS_REMEMBERED: usize = 16;

/// Limits of [`Guard`], each with the attack it answers (see the constants).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardLimits {
    pub max_unread: u64,
    pub max_pending_replies: u32,
    pub write_stall: Duration,
    pub read_stall: Duration,
}

impl Default for GuardLimits {
    fn default() -> Self {
        Self {
            max_unread: DEFAULT_MAX_UNREAD,
            max_pending_replies: DEFAULT_MAX_PENDING_REPLIES,
            write_stall: DEFAULT_WRITE_STALL,
            read_stall: DEFAULT_READ_STALL,
        }
    }
}

/// The peer broke the yamux protocol in a way that would cost us memory: the session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    #[error("stream {stream}: a {len}-byte data frame with only {window} bytes of window left")]
    WindowExceeded { stream: u32, len: u32, window: u64 },
    #[error("ping acknowledgement {id} for a ping we never sent")]
    UnsolicitedPingAck { id: u32 },
    #[error("more than {max} streams tracked at once")]
    TooManyStreams { max: usize },
    #[error("not a yamux frame (version {version}, type {ty})")]
    Malformed { version: u8, ty: u8 },
}

/// Why the driver should end a session that broke no protocol rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Our writes made no progress for `stalled`: the peer does not read.
    PeerNotReading { stalled: Duration },
    /// We stopped reading because the application left `unread` bytes unread for `stalled`.
    ReaderStalled { stalled: Duration, unread: u64 },
}

/// Why reading is paused right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// Too many replies owed (the peer floods while not reading).
    Replies,
    /// The session's unread budget is full.
    Unread,
}

mod ty {
    pub const DATA: u8 = 0;
    pub const WINDOW_UPDATE: u8 = 1;
    pub const PING: u8 = 2;
    pub const GO_AWAY: u8 = 3;
}

mod flag {
    pub const SYN: u16 = 1;
    pub const ACK: u16 = 2;
    pub const RST: u16 = 8;
}

#[derive(Debug, Clone, Copy)]
struct Header {
    version: u8,
    ty: u8,
    flags: u16,
    stream: u32,
    length: u32,
}

impl Header {
    fn parse(b: &[u8; HEADER_LEN]) -> Self {
        Self {
            version: b[0],
            ty: b[1],
            flags: u16::from_be_bytes([b[2], b[3]]),
            stream: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            length: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        }
    }

    fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }
}

/// Splits one direction's byte stream into frame headers, skipping data bodies.
#[derive(Debug, Default)]
struct Parser {
    header: [u8; HEADER_LEN],
    have: usize,
    body_left: u64,
}

impl Parser {
    /// Feeds `bytes`; calls `on` for each complete header, in order. Stops at the first error.
    fn feed<E>(
        &mut self,
        mut bytes: &[u8],
        mut on: impl FnMut(Header) -> Result<(), E>,
    ) -> Result<(), E> {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let skip = (self.body_left.min(bytes.len() as u64)) as usize;
                self.body_left -= skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            let take = (HEADER_LEN - self.have).min(bytes.len());
            self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
            self.have += take;
            bytes = &bytes[take..];
            if self.have == HEADER_LEN {
                self.have = 0;
                let h = Header::parse(&self.header);
                if h.ty == ty::DATA {
                    self.body_left = u64::from(h.length);
                }
                on(h)?;
            }
        }
        Ok(())
    }
}

/// What one received data frame costs beside its bytes while yamux holds it (the frame, its
/// `BytesMut` and the channel slot): also bounds the frame table below, since a flood of tiny
/// frames fills the budget too.
pub const FRAME_OVERHEAD: u64 = 64;

#[derive(Debug, Clone, Default)]
struct Ledger {
    /// Bytes the peer may still send on this stream.
    window: u64,
    /// Data frames held for the application, oldest first: (length, bytes not yet read).
    /// yamux keeps a frame's whole buffer until its last byte is read, so a frame counts in
    /// full until then.
    frames: VecDeque<(u32, u32)>,
    /// What `frames` costs: their lengths plus [`FRAME_OVERHEAD`] each.
    unread: u64,
}

impl Ledger {
    fn new() -> Self {
        Self {
            window: INITIAL_WINDOW,
            ..Self::default()
        }
    }

    /// The application read `n` bytes; returns the cost released.
    fn deliver(&mut self, mut n: u64) -> u64 {
        let mut released = 0;
        while n > 0 {
            let Some((len, left)) = self.frames.front_mut() else {
                break;
            };
            let take = n.min(u64::from(*left));
            *left -= take as u32;
            n -= take;
            if *left == 0 {
                released += u64::from(*len) + FRAME_OVERHEAD;
                self.frames.pop_front();
            }
        }
        self.unread -= released;
        released
    }
}

/// See the module doc.
#[derive(Debug)]
pub struct Guard {
    limits: GuardLimits,
    max_streams: usize,
    inbound: Parser,
    outbound: Parser,
    streams: HashMap<u32, Ledger>,
    unread: u64,
    pending_replies: u32,
    /// Our pings not yet acknowledged: id and when it was written.
    written_pings: VecDeque<(u32, Instant)>,
    /// When the bytes being read arrived ([`Guard::on_read_at`]), to time ping answers.
    read_at: Option<Instant>,
    /// The last round trip of a keepalive ping: written to acknowledged.
    rtt: Option<Duration>,
    write_blocked_since: Option<Instant>,
    paused: Option<(Pause, Instant)>,
    last_write: Instant,
    violation: Option<Violation>,
}

impl Guard {
    /// `max_streams`: yamux's cap on open streams; streams awaiting an answer (a reset, say)
    /// are tracked beside them, up to `max_pending_replies` more.
    pub fn new(limits: GuardLimits, max_streams: usize, now: Instant) -> Self {
        Self {
            max_streams: max_streams + limits.max_pending_replies as usize,
            limits,
            inbound: Parser::default(),
            outbound: Parser::default(),
            streams: HashMap::new(),
            unread: 0,
            pending_replies: 0,
            written_pings: VecDeque::new(),
            read_at: None,
            rtt: None,
            write_blocked_since: None,
            paused: None,
            last_write: now,
            violation: None,
        }
    }

    /// Plaintext yamux bytes arrived from the peer. An error is final (the session must end);
    /// it is also remembered ([`Guard::violation`]).
    pub fn on_read(&mut self, bytes: &[u8]) -> Result<(), Violation> {
        if let Some(v) = self.violation {
            return Err(v);
        }
        let mut parser = std::mem::take(&mut self.inbound);
        let res = parser.feed(bytes, |h| self.inbound_frame(h));
        self.inbound = parser;
        if let Err(v) = res {
            self.violation = Some(v);
        }
        res
    }

    /// [`Guard::on_read`] for bytes that arrived at `now`: an acknowledgement of one of our
    /// pings among them gives the session's round-trip time ([`Guard::rtt`]).
    pub fn on_read_at(&mut self, bytes: &[u8], now: Instant) -> Result<(), Violation> {
        self.read_at = Some(now);
        let res = self.on_read(bytes);
        self.read_at = None;
        res
    }

    /// The round trip of the last keepalive ping we wrote and the peer acknowledged (yamux
    /// pings every 15 s); `None` before the first.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    fn inbound_frame(&mut self, h: Header) -> Result<(), Violation> {
        if h.version != 0 || h.ty > ty::GO_AWAY {
            return Err(Violation::Malformed {
                version: h.version,
                ty: h.ty,
            });
        }
        match h.ty {
            ty::DATA | ty::WINDOW_UPDATE => {
                if h.has(flag::SYN) {
                    self.pending_replies = self.pending_replies.saturating_add(1);
                    self.track(h.stream)?;
                }
                if h.ty == ty::DATA {
                    // Data for a stream we no longer track (closed, reset) is dropped by yamux.
                    if let Some(s) = self.streams.get_mut(&h.stream) {
                        let len = u64::from(h.length);
                        if len > s.window {
                            return Err(Violation::WindowExceeded {
                                stream: h.stream,
                                len: h.length,
                                window: s.window,
                            });
                        }
                        s.window -= len;
                        // yamux drops empty data frames at once.
                        if len > 0 {
                            s.frames.push_back((h.length, h.length));
                            s.unread += len + FRAME_OVERHEAD;
                            self.unread += len + FRAME_OVERHEAD;
                        }
                    }
                }
            }
            ty::PING => {
                if h.has(flag::SYN) {
                    self.pending_replies = self.pending_replies.saturating_add(1);
                } else if h.has(flag::ACK) {
                    match self
                        .written_pings
                        .iter()
                        .position(|&(id, _)| id == h.length)
                    {
                        Some(at) => {
                            if let (Some((_, sent)), Some(now)) =
                                (self.written_pings.remove(at), self.read_at)
                            {
                                self.rtt = Some(now.saturating_duration_since(sent));
                            }
                        }
                        None => return Err(Violation::UnsolicitedPingAck { id: h.length }),
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn track(&mut self, stream: u32) -> Result<(), Violation> {
        if !self.streams.contains_key(&stream) {
            if self.streams.len() >= self.max_streams {
                return Err(Violation::TooManyStreams {
                    max: self.max_streams,
                });
            }
            self.streams.insert(stream, Ledger::new());
        }
        Ok(())
    }

    /// Plaintext yamux bytes we handed to the encrypted stream (they will reach the peer).
    /// Writing is progress: it ends a write stall.
    pub fn on_written(&mut self, bytes: &[u8], now: Instant) {
        self.write_blocked_since = None;
        if bytes.is_empty() {
            return;
        }
        self.last_write = now;
        let mut parser = std::mem::take(&mut self.outbound);
        let _ = parser.feed(bytes, |h| {
            self.outbound_frame(h);
            Ok::<(), ()>(())
        });
        self.outbound = parser;
    }

    fn outbound_frame(&mut self, h: Header) {
        match h.ty {
            ty::DATA | ty::WINDOW_UPDATE => {
                if h.has(flag::ACK) {
                    self.pending_replies = self.pending_replies.saturating_sub(1);
                }
                if h.has(flag::RST) {
                    // yamux forgets the stream (a refused opening, a dropped handle): what it
                    // buffered is gone with it.
                    self.release(h.stream);
                    return;
                }
                if h.has(flag::SYN) && !self.streams.contains_key(&h.stream) {
                    // Our own opening: yamux's cap applies to it first, so the table has room
                    // (when it has none, the stream is simply not policed).
                    if self.streams.len() < self.max_streams {
                        self.streams.insert(h.stream, Ledger::new());
                    }
                }
                if h.ty == ty::WINDOW_UPDATE {
                    if let Some(s) = self.streams.get_mut(&h.stream) {
                        s.window += u64::from(h.length);
                    }
                }
            }
            ty::PING => {
                if h.has(flag::SYN) {
                    if self.written_pings.len() == PINGS_REMEMBERED {
                        self.written_pings.pop_front();
                    }
                    self.written_pings.push_back((h.length, self.last_write));
                } else if h.has(flag::ACK) {
                    self.pending_replies = self.pending_replies.saturating_sub(1);
                }
            }
            _ => {}
        }
    }

    /// A write would block (socket full): a stall starts now unless one is running.
    pub fn on_write_blocked(&mut self, now: Instant) {
        self.write_blocked_since.get_or_insert(now);
    }

    /// The application read `n` bytes of `stream`. Returns whether that lifted a pause.
    pub fn on_delivered(&mut self, stream: u32, n: usize) -> bool {
        if let Some(s) = self.streams.get_mut(&stream) {
            self.unread -= s.deliver(n as u64);
        }
        self.lifted()
    }

    /// The application dropped `stream` (its buffered data went with it). Returns whether that
    /// lifted a pause.
    pub fn on_released(&mut self, stream: u32) -> bool {
        self.release(stream);
        self.lifted()
    }

    fn release(&mut self, stream: u32) {
        if let Some(s) = self.streams.remove(&stream) {
            self.unread -= s.unread;
        }
    }

    fn lifted(&mut self) -> bool {
        if self.paused.is_some() && self.pause_reason().is_none() {
            self.paused = None;
            return true;
        }
        false
    }

    fn pause_reason(&self) -> Option<Pause> {
        if self.pending_replies >= self.limits.max_pending_replies {
            Some(Pause::Replies)
        } else if self.unread >= self.limits.max_unread {
            Some(Pause::Unread)
        } else {
            None
        }
    }

    /// Whether the socket may be read now; records when a pause starts and ends.
    pub fn may_read(&mut self, now: Instant) -> bool {
        match self.pause_reason() {
            None => {
                self.paused = None;
                true
            }
            Some(why) => {
                match self.paused {
                    Some((was, _)) if was == why => {}
                    _ => self.paused = Some((why, now)),
                }
                false
            }
        }
    }

    /// Whether the session must end now for a stall, and why.
    pub fn verdict(&self, now: Instant) -> Option<Verdict> {
        if let Some(since) = self.write_blocked_since {
            let stalled = now.saturating_duration_since(since);
            if stalled >= self.limits.write_stall {
                return Some(Verdict::PeerNotReading { stalled });
            }
        }
        if let Some((Pause::Unread, since)) = self.paused {
            let stalled = now.saturating_duration_since(since);
            if stalled >= self.limits.read_stall {
                return Some(Verdict::ReaderStalled {
                    stalled,
                    unread: self.unread,
                });
            }
        }
        None
    }

    /// The protocol violation that ended reading, if any.
    pub fn violation(&self) -> Option<Violation> {
        self.violation
    }

    /// When we last handed bytes to the encrypted stream.
    pub fn last_write(&self) -> Instant {
        self.last_write
    }

    /// Unread bytes held for the application, all streams.
    pub fn unread(&self) -> u64 {
        self.unread
    }

    /// Replies owed to the peer and not yet written.
    pub fn pending_replies(&self) -> u32 {
        self.pending_replies
    }

    /// Streams tracked (open, or awaiting an answer).
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// Checks the ledger's invariants (for tests and the fuzzer): the session total is the sum
    /// of the streams', and the table is within its bound.
    pub fn check_invariants(&self) {
        let sum: u64 = self.streams.values().map(|s| s.unread).sum();
        assert_eq!(
            sum, self.unread,
            "unread total out of step with the streams"
        );
        for s in self.streams.values() {
            let cost: u64 = s
                .frames
                .iter()
                .map(|&(len, _)| u64::from(len) + FRAME_OVERHEAD)
                .sum();
            assert_eq!(
                cost, s.unread,
                "a stream's cost out of step with its frames"
            );
            assert!(s.frames.iter().all(|&(len, left)| left <= len && left > 0));
        }
        assert!(self.streams.len() <= self.max_streams);
        assert!(self.written_pings.len() <= PINGS_REMEMBERED);
    }
}

/// One yamux frame header, for tests and the fuzzer: `(type, flags, stream, length)`.
pub fn encode_header(ty: u8, flags: u16, stream: u32, length: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[1] = ty;
    h[2..4].copy_from_slice(&flags.to_be_bytes());
    h[4..8].copy_from_slice(&stream.to_be_bytes());
    h[8..12].copy_from_slice(&length.to_be_bytes());
    h
}

#[cfg(test)]
#[path = "guard_tests.rs"]
mod tests;
