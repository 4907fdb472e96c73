//! The relay connection's driver: a connection on the control port whose first bytes are
//! "PR" is a relay connection (the Noise message 1 of a control connection starts with its
//! length, 0x0030).
//!
//! ```text
//! peer -> server   HELLO "PRLY" | token            (bounded by the first-message timeout;
//!                                                   bytes after it are kept and forwarded)
//! server           arrive(token): refused -> REFUSAL, close
//!                                 first   -> hold (read nothing) until the second side or
//!                                            the pair timeout (REFUSAL PeerAbsent)
//!                                 second  -> splice the two, both ways
//! server -> peers  RelayEnded over both control connections when a limit or shutdown ends
//!                  the session, then both relay connections are closed
//! ```
//!
//! A relay connection keeps its per-IP connection slot; it holds a place among the
//! connections waiting for their first message only until its HELLO is in, and never a
//! handshake slot: a held or spliced relay connection takes nothing from control connections
//! but its socket (the relay table's session limits bound those).
//!
//! Splicing: per direction one buffer and one token bucket (the session's rate), plus the
//! server-wide bucket; after forwarding a read the pump sleeps what the buckets say before
//! reading again, so a fast sender is slowed by TCP back-pressure and nothing is dropped.
//! End of stream from one side shuts down the write half toward the other; the session ends
//! when both directions are done, on an error, or at a limit (bytes, duration, idle).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use punch_proto::message::{RelayEnd, ServerMsg};
use punch_proto::relay::{parse_hello, refusal, Refusal, HELLO_LEN, HELLO_MAGIC};
use punch_proto::PeerId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, Instrument};

use super::admission::{HandshakeSlot, IpSlot};
use super::Shared;
use crate::first_message::Rewound;
use crate::gate::Prefix;
use crate::limiter::ByteBucket;
use crate::refusal_log::Reason;
use crate::registry::Action;
use crate::relay::{Arrival, PairId, Refused};

/// Bytes each direction of a relayed session reads and writes at once. Measured on loopback
/// (`tests/tests/relay_cost.rs`, one pair moving 1 GiB with the rates lifted, 3 runs each):
/// 16 KiB 0.58-0.61 CPU s per GiB, 32 KiB 0.39-0.41, 64 KiB 0.53-0.60, 128 KiB 0.41-0.43.
/// 32 KiB is as cheap as the largest while a session holds at most two of them.
pub const RELAY_BUFFER: usize = 32 * 1024;
/// How long writing a refusal (12 bytes) may take; a peer that does not read even that is
/// dropped.
const REFUSAL_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// After a refusal, how long the server reads (and discards) what the peer already sent, so
/// the close is a FIN and not a reset that could destroy the refusal before it is read.
const REFUSAL_LINGER: std::time::Duration = std::time::Duration::from_millis(500);

/// Whether a connection's first bytes make it a relay connection.
pub(super) fn is_relay(head: &[u8]) -> bool {
    head.len() >= 2 && head[..2] == HELLO_MAGIC[..2]
}

/// A relay connection with its HELLO read: the socket, what the peer sent after the HELLO,
/// its per-IP slot (held for as long as the connection lives).
#[derive(Debug)]
pub(super) struct Side {
    stream: TcpStream,
    extra: Vec<u8>,
    addr: SocketAddr,
    _slot: IpSlot,
}

/// What the held first side of a pair is told.
#[derive(Debug)]
pub(super) enum Joined {
    /// The second side came: splice.
    Partner {
        side: Box<Side>,
        session_id: u64,
        peers: [PeerId; 2],
    },
    /// The pair was dropped (its second side was refused): refuse with this.
    Refused(Refusal),
}

/// Serves a connection whose first bytes (`head`) are a relay HELLO's.
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve(
    mut stream: TcpStream,
    mut head: Vec<u8>,
    addr: SocketAddr,
    shared: Arc<Shared>,
    slot: IpSlot,
    (wait_slot, dropped): (HandshakeSlot, CancellationToken),
    first_deadline: tokio::time::Instant,
    shutdown: CancellationToken,
) {
    let source = Prefix::of(addr.ip());
    let read_rest = async {
        loop {
            // Not a hello as soon as the magic is wrong: no waiting for the rest.
            let k = head.len().min(HELLO_MAGIC.len());
            if head[..k] != HELLO_MAGIC[..k] {
                return Err(io::ErrorKind::InvalidData.into());
            }
            if head.len() >= HELLO_LEN {
                break;
            }
            let mut buf = [0u8; HELLO_LEN];
            let n = stream.read(&mut buf[..HELLO_LEN - head.len()]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, io::Error>(())
    };
    let read = tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = dropped.cancelled() => {
            debug!("relay: closed before its hello, dropped for a newer connection");
            return;
        }
        res = tokio::time::timeout_at(first_deadline, read_rest) => res,
    };
    drop(wait_slot);
    let token = match read {
        Ok(Ok(())) => {
            let hello: &[u8; HELLO_LEN] = head[..HELLO_LEN]
                .try_into()
                .expect("the loop read a whole hello");
            parse_hello(hello)
        }
        Err(_) | Ok(Err(_)) => None,
    };
    let Some(token) = token else {
        shared
            .lock()
            .refusals
            .record(Reason::RelayMalformed, source);
        debug!("relay: closed, not a relay hello (or not in time)");
        return;
    };
    let extra = head.split_off(HELLO_LEN);
    let side = Side {
        stream,
        extra,
        addr,
        _slot: slot,
    };

    let (tx, rx) = oneshot::channel();
    let next = {
        let mut guard = shared.lock();
        let state = &mut *guard;
        match state.relay.arrive(Instant::now(), &token, source) {
            Ok(Arrival::First { pair, deadline, .. }) => {
                state.relay_waiters.insert(pair, tx);
                Next::Hold { pair, deadline }
            }
            Ok(Arrival::Second {
                pair,
                session_id,
                peers,
            }) => Next::Handoff {
                waiter: state.relay_waiters.remove(&pair),
                pair,
                session_id,
                peers,
            },
            Err(Refused { reason, abandoned }) => {
                state.refusals.record(Reason::Relay(reason), source);
                if let Some(w) = abandoned.and_then(|p| state.relay_waiters.remove(&p)) {
                    let _ = w.send(Joined::Refused(reason));
                }
                Next::Refuse(reason)
            }
        }
    };
    match next {
        Next::Refuse(reason) => {
            debug!(%reason, "relay: refused");
            refuse(side.stream, reason).await;
        }
        Next::Handoff {
            waiter,
            pair,
            session_id,
            peers,
        } => {
            let joined = Joined::Partner {
                side: Box::new(side),
                session_id,
                peers,
            };
            let unsent = match waiter {
                Some(w) => w.send(joined).err(),
                None => Some(joined),
            };
            // The held side is gone (shutdown): this side is refused as if it never came.
            if let Some(Joined::Partner { side, .. }) = unsent {
                shared.lock().relay.release(pair);
                refuse(side.stream, Refusal::PeerAbsent).await;
            }
        }
        Next::Hold { pair, deadline } => hold(side, pair, deadline, rx, &shared, &shutdown).await,
    }
}

/// What a relay connection does once its HELLO was answered by the table.
enum Next {
    Refuse(Refusal),
    Handoff {
        waiter: Option<oneshot::Sender<Joined>>,
        pair: PairId,
        session_id: u64,
        peers: [PeerId; 2],
    },
    Hold {
        pair: PairId,
        deadline: Instant,
    },
}

/// Writes a refusal and closes: the write half first, then a short, bounded read of what the
/// peer already sent, so the close is not a reset.
async fn refuse(mut stream: TcpStream, reason: Refusal) {
    let bytes = refusal(reason);
    if tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, stream.write_all(&bytes))
        .await
        .is_err()
    {
        return;
    }
    let _ = stream.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut left = 64 * 1024usize;
        while left > 0 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, drain).await;
}

/// The first side of a pair: held, nothing read, until its partner comes or the deadline.
async fn hold(
    side: Side,
    pair: PairId,
    deadline: Instant,
    mut rx: oneshot::Receiver<Joined>,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) {
    let wake = tokio::time::Instant::from_std(deadline);
    let joined = tokio::select! {
        _ = shutdown.cancelled() => {
            let mut state = shared.lock();
            state.relay_waiters.remove(&pair);
            state.relay.release(pair);
            return;
        }
        joined = &mut rx => joined,
        _ = tokio::time::sleep_until(wake) => {
            let given_up = {
                let mut state = shared.lock();
                let waiting = state.relay_waiters.remove(&pair).is_some();
                if waiting {
                    state.relay.give_up(pair);
                    state.refusals.record(Reason::Relay(Refusal::PeerAbsent), Prefix::of(side.addr.ip()));
                }
                waiting
            };
            if given_up {
                debug!("relay: refused, the other side did not come");
                refuse(side.stream, Refusal::PeerAbsent).await;
                return;
            }
            // The partner was handed over just before the deadline: it is in the channel.
            rx.await
        }
    };
    match joined {
        Ok(Joined::Partner {
            side: second,
            session_id,
            peers,
        }) => {
            let span = info_span!("relay", session = session_id, a = %peers[0].short(),
                                  b = %peers[1].short());
            splice(side, *second, pair, session_id, peers, shared, shutdown)
                .instrument(span)
                .await
        }
        Ok(Joined::Refused(reason)) => {
            debug!(%reason, "relay: refused, the other side was refused");
            refuse(side.stream, reason).await;
        }
        Err(_) => {
            // The sender is dropped only with the server's state: nothing to release.
            refuse(side.stream, Refusal::PeerAbsent).await;
        }
    }
}

/// A relayed session's progress, shared by its two pumps.
#[derive(Debug)]
struct Progress {
    start: tokio::time::Instant,
    /// Bytes moved, both directions (may run past the limit by what the last reads asked).
    bytes: AtomicU64,
    /// Bytes actually forwarded.
    forwarded: AtomicU64,
    /// When a byte last moved, in ms since `start`.
    last_active_ms: AtomicU64,
}

impl Progress {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_active_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last_active(&self) -> tokio::time::Instant {
        self.start + std::time::Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed))
    }
}

/// Why one direction of a session stopped early.
#[derive(Debug)]
enum PumpEnd {
    Limit(RelayEnd),
    Io(io::Error),
}

/// Why a session ended.
#[derive(Debug)]
enum SessionEnd {
    /// Both sides closed their sending halves.
    Closed,
    /// Reading or writing failed (a side reset or vanished).
    Broken(io::Error),
    /// A limit or shutdown: both peers are told.
    Ended(RelayEnd),
}

impl std::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionEnd::Closed => write!(f, "both sides closed"),
            SessionEnd::Broken(e) => write!(f, "connection broken: {e}"),
            SessionEnd::Ended(reason) => write!(f, "{reason}"),
        }
    }
}

/// Copies `from` to `to` under the session's and the server's rates and the byte limit;
/// `Ok` at end of stream (after shutting down `to`'s write half).
async fn pump(
    mut from: Rewound<OwnedReadHalf>,
    mut to: OwnedWriteHalf,
    shared: &Shared,
    progress: &Progress,
) -> Result<(), PumpEnd> {
    let config = &shared.config;
    let burst = (config.relay_rate_per_session / 8).max(RELAY_BUFFER as u64);
    let mut bucket = ByteBucket::new(config.relay_rate_per_session, burst, Instant::now());
    let mut buf = vec![0u8; RELAY_BUFFER];
    loop {
        let n = from.read(&mut buf).await.map_err(PumpEnd::Io)?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        progress.touch();
        let before = progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
        let allowed = config.relay_max_bytes.saturating_sub(before);
        let m = n.min(usize::try_from(allowed).unwrap_or(usize::MAX));
        match tokio::time::timeout(config.relay_idle, to.write_all(&buf[..m])).await {
            Err(_) => return Err(PumpEnd::Limit(RelayEnd::Idle)),
            Ok(Err(e)) => return Err(PumpEnd::Io(e)),
            Ok(Ok(())) => {}
        }
        progress.touch();
        progress.forwarded.fetch_add(m as u64, Ordering::Relaxed);
        shared
            .counters
            .relay_bytes
            .fetch_add(m as u64, Ordering::Relaxed);
        if before + n as u64 >= config.relay_max_bytes {
            return Err(PumpEnd::Limit(RelayEnd::Bytes));
        }
        let now = Instant::now();
        let wait = bucket
            .charge(now, m)
            .max(lock_bucket(&shared.relay_total).charge(now, m));
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
            progress.touch();
        }
    }
}

/// Sends `RelayEnded` to both peers over their control connections (those still registered).
fn notify_ended(shared: &Shared, peers: &[PeerId; 2], session_id: u64, reason: RelayEnd) {
    let mut guard = shared.lock();
    let state = &mut *guard;
    let actions = peers
        .iter()
        .filter_map(|p| state.registry.conn_of(p))
        .map(|conn| Action::Send {
            conn,
            msg: ServerMsg::RelayEnded { session_id, reason },
        })
        .collect();
    Shared::dispatch(state, actions);
}

fn lock_bucket(m: &Mutex<ByteBucket>) -> std::sync::MutexGuard<'_, ByteBucket> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Splices two relay connections until both are done, one breaks, or a limit ends it.
async fn splice(
    first: Side,
    second: Side,
    pair: PairId,
    session_id: u64,
    peers: [PeerId; 2],
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) {
    let config = &shared.config;
    info!(first = %first.addr, second = %second.addr, "relay session started");
    shared.counters.relay_active.fetch_add(1, Ordering::Relaxed);
    let progress = Progress {
        start: tokio::time::Instant::now(),
        bytes: AtomicU64::new(0),
        forwarded: AtomicU64::new(0),
        last_active_ms: AtomicU64::new(0),
    };
    let (r1, w1) = first.stream.into_split();
    let (r2, w2) = second.stream.into_split();
    let end = {
        // Both connections live in the pumps: they close when this block drops them.
        let one_to_two = pump(Rewound::new(first.extra, r1), w2, shared, &progress);
        let two_to_one = pump(Rewound::new(second.extra, r2), w1, shared, &progress);
        tokio::pin!(one_to_two, two_to_one);
        let (mut done12, mut done21) = (false, false);
        let hard_end = progress.start + config.relay_max_duration;
        let end = loop {
            if done12 && done21 {
                break SessionEnd::Closed;
            }
            let idle_at = progress.last_active() + config.relay_idle;
            tokio::select! {
                _ = shutdown.cancelled() => break SessionEnd::Ended(RelayEnd::Shutdown),
                _ = tokio::time::sleep_until(hard_end) => {
                    break SessionEnd::Ended(RelayEnd::Duration)
                }
                _ = tokio::time::sleep_until(idle_at) => {
                    if progress.last_active() + config.relay_idle <= tokio::time::Instant::now() {
                        break SessionEnd::Ended(RelayEnd::Idle);
                    }
                }
                r = &mut one_to_two, if !done12 => match r {
                    Ok(()) => done12 = true,
                    Err(PumpEnd::Limit(reason)) => break SessionEnd::Ended(reason),
                    Err(PumpEnd::Io(e)) => break SessionEnd::Broken(e),
                },
                r = &mut two_to_one, if !done21 => match r {
                    Ok(()) => done21 = true,
                    Err(PumpEnd::Limit(reason)) => break SessionEnd::Ended(reason),
                    Err(PumpEnd::Io(e)) => break SessionEnd::Broken(e),
                },
            }
        };
        if let SessionEnd::Ended(reason) = end {
            // Told before the close, so the reason tends to arrive first.
            notify_ended(shared, &peers, session_id, reason);
        }
        end
    };
    shared.lock().relay.release(pair);
    shared.counters.relay_active.fetch_sub(1, Ordering::Relaxed);
    let secs = progress.start.elapsed().as_secs_f64();
    info!(bytes = progress.forwarded.load(Ordering::Relaxed),
          secs = format_args!("{secs:.1}"), reason = %end, "relay session ended");
}
