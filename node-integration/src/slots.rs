//! Slots: how an unmodified kaspad dials punched peers without AddPeer (so without kaspad's
//! unsafe RPC mode).
//!
//! kaspad is started with a fixed pool of slot addresses (`127.0.200.1:p1`, `127.0.200.2:p2`,
//! ...) as permanent `--addpeer`s. Its connection manager dials each slot by itself, like any
//! permanent peer; the pool hands every connection to a slot to one punched session:
//!
//! ```text
//! kaspad --TCP--> slot i ---- bound to a live session? ---> that session (a new yamux stream)
//!                        \--- else a ready session (punched, waiting)? -> bind it, hand over
//!                        \--- else a punch in flight? -> hold the connection up to `hold`
//!                        \--- else close it (kaspad counts a failed attempt)
//! ```
//!
//! Slots are interchangeable: a punched session is bound to whichever slot kaspad dials
//! first, and keeps it until the session ends (later connections to that slot go to the same
//! peer, so kaspad's reconnects reach the same peer).
//!
//! kaspad's own pace applies (kaspa-connectionmanager 2.1): it looks at permanent peers every
//! 30 s (and at start), one after the other; a slot whose attempt failed is retried after
//! 30 s x 2^n (n failures in a row, at most 4: 8 minutes); a success resets that. Hence the
//! rules here: a connection is held only while a punch is in flight or during the start-up
//! grace (so a slot does not fail just before its session arrives), and at most `hold` (below
//! kaspad's 10 s request timeout), because kaspad waits for each slot in turn.

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use punch_proto::PeerId;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::bridge::Handoff;
use crate::lock;

/// The first slot address; slot `i` listens on `127.0.200.(1 + i)`. Outside the alias space
/// (127.1.0.1-127.254.255.254, see [`crate::alias`]), so a slot is never a peer's alias.
pub const SLOT_BASE: Ipv4Addr = Ipv4Addr::new(127, 0, 200, 1);
/// Slots at most: the last octet runs 1..=254.
pub const MAX_SLOTS: usize = 254;
/// How long a connection to an empty slot is held while a punch is in flight: below
/// kaspad's 10 s gRPC request timeout (kaspa-p2p-lib's `communication_timeout`), after which
/// kaspad gives up by itself. kaspad waits for each slot in turn, so this is also the most a
/// held slot delays kaspad's other connection work in that round.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(8);
/// After start, connections to empty slots are held (up to [`DEFAULT_HOLD`]) even with no
/// punch in flight yet: kaspad dials its permanent peers as soon as its P2P service starts,
/// usually before the rendezvous answered the first discovery. A slot failed then would wait
/// 30-60 s for kaspad's next try.
pub const DEFAULT_START_GRACE: Duration = Duration::from_secs(20);
/// How long a connection to an empty slot with nothing in flight waits for a punch to start
/// after asking for one ([`SlotPool::wanted`]): the manager answers within one of its ticks.
pub const ASK_GRACE: Duration = Duration::from_millis(400);

/// Binds `count` slot listeners (`127.0.200.1..`), each on a free port. Done before kaspad
/// starts, because kaspad's `--addpeer` list is fixed at its start.
pub fn bind(count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    if count > MAX_SLOTS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{count} slots asked for, at most {MAX_SLOTS}"),
        ));
    }
    let base = u32::from(SLOT_BASE);
    (0..count)
        .map(|i| {
            let ip = Ipv4Addr::from(base + i as u32);
            let listener = std::net::TcpListener::bind((ip, 0))?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .collect()
}

/// What the pool did, for logs, status and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotStats {
    /// Node connections handed to a session.
    pub handed: u64,
    /// Node connections held before a session came for them.
    pub held: u64,
    /// Node connections closed because no session was there (kaspad counts a failure).
    pub refused: u64,
}

/// A punched session offered to the pool, waiting for the node to dial a slot.
struct Ready {
    peer: PeerId,
    tx: mpsc::Sender<Handoff>,
}

struct State {
    /// Per slot, the session it is bound to.
    bound: Vec<Option<Ready>>,
    /// Sessions waiting for a slot, oldest first.
    ready: VecDeque<Ready>,
    /// Punches (or discoveries that may lead to one) in flight.
    pending: usize,
    stats: SlotStats,
}

struct Inner {
    state: Mutex<State>,
    /// A session was offered or a punch started or ended: held connections look again.
    arrived: Notify,
    /// A node connection came to an empty slot with nothing in flight: the peering manager
    /// is asked for a punch (see [`SlotPool::wanted`]).
    want: Notify,
    hold: Duration,
    grace_until: Instant,
    addrs: Vec<SocketAddr>,
}

/// The slot pool. Cheap to clone; dropping the last [`SlotTasks`] stops the listeners.
#[derive(Clone)]
pub struct SlotPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SlotPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotPool")
            .field("addrs", &self.inner.addrs)
            .field("stats", &self.stats())
            .finish()
    }
}

/// The pool's listener tasks; dropping this closes the slots.
#[derive(Debug)]
pub struct SlotTasks(#[allow(dead_code)] JoinSet<()>);

/// Counts a punch in flight while alive (see [`SlotPool::pending`]).
#[derive(Debug)]
pub struct Pending(SlotPool);

impl Drop for Pending {
    fn drop(&mut self) {
        lock(&self.0.inner.state).pending -= 1;
        // A held connection may now give up at once.
        self.0.inner.arrived.notify_waiters();
    }
}

impl SlotPool {
    /// Starts serving the slot listeners (from [`bind`]) on the current tokio runtime.
    pub fn start(
        listeners: Vec<std::net::TcpListener>,
        hold: Duration,
        start_grace: Duration,
    ) -> io::Result<(SlotPool, SlotTasks)> {
        let listeners = listeners
            .into_iter()
            .map(TcpListener::from_std)
            .collect::<io::Result<Vec<_>>>()?;
        let addrs = listeners
            .iter()
            .map(|l| l.local_addr())
            .collect::<io::Result<Vec<_>>>()?;
        let pool = SlotPool {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    bound: (0..listeners.len()).map(|_| None).collect(),
                    ready: VecDeque::new(),
                    pending: 0,
                    stats: SlotStats::default(),
                }),
                arrived: Notify::new(),
                want: Notify::new(),
                hold,
                grace_until: Instant::now() + start_grace,
                addrs,
            }),
        };
        let mut tasks = JoinSet::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            tasks.spawn(pool.clone().serve(i, listener));
        }
        Ok((pool, SlotTasks(tasks)))
    }

    /// The slot addresses, for kaspad's `--addpeer`.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.inner.addrs
    }

    pub fn stats(&self) -> SlotStats {
        lock(&self.inner.state).stats
    }

    /// Slots bound to a live session plus sessions waiting for one.
    pub fn in_use(&self) -> usize {
        let mut state = lock(&self.inner.state);
        state.ready.retain(|r| !r.tx.is_closed());
        let bound = state
            .bound
            .iter()
            .filter(|b| b.as_ref().is_some_and(|b| !b.tx.is_closed()))
            .count();
        bound + state.ready.len()
    }

    /// The peer bound to the slot at `addr`, if any (a slot's peer changes over time).
    pub fn peer_at(&self, addr: SocketAddr) -> Option<PeerId> {
        let i = self.inner.addrs.iter().position(|a| *a == addr)?;
        let state = lock(&self.inner.state);
        state.bound[i]
            .as_ref()
            .filter(|b| !b.tx.is_closed())
            .map(|b| b.peer)
    }

    /// Marks a punch in flight until the returned guard is dropped: connections to empty
    /// slots are held meanwhile.
    pub fn pending(&self) -> Pending {
        lock(&self.inner.state).pending += 1;
        self.inner.arrived.notify_waiters();
        Pending(self.clone())
    }

    /// Resolves when the node dialed an empty slot with no punch in flight: whoever keeps
    /// the peers should start one now (it is held for [`ASK_GRACE`] waiting for that, then up
    /// to the hold while the punch runs), so a slot is filled when kaspad comes for it, not
    /// only when a session happened to be ready.
    pub async fn wanted(&self) {
        self.inner.want.notified().await
    }

    /// Offers a punched session (the sender from the bridge) to the next node connection to
    /// a slot. It is withdrawn by itself when the session ends.
    pub(crate) fn offer(&self, peer: PeerId, tx: mpsc::Sender<Handoff>) {
        lock(&self.inner.state).ready.push_back(Ready { peer, tx });
        self.inner.arrived.notify_waiters();
    }

    async fn serve(self, slot: usize, listener: TcpListener) {
        let addr = self.inner.addrs[slot];
        loop {
            let (tcp, from) = match listener.accept().await {
                Ok(conn) => conn,
                Err(error) => {
                    warn!(%addr, %error, "slot accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            self.hand(slot, addr, tcp, from).await;
        }
    }

    /// Hands one node connection to slot `slot` to a session, holding it if one is coming.
    async fn hand(&self, slot: usize, addr: SocketAddr, tcp: TcpStream, from: SocketAddr) {
        let deadline = Instant::now() + self.inner.hold;
        let asked_until = Instant::now() + ASK_GRACE;
        let mut asked = false;
        let mut held = false;
        let mut conn = (tcp, from);
        loop {
            let notified = self.inner.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let until = {
                let mut state = lock(&self.inner.state);
                if let Some(bound) = state.bound[slot].as_ref().filter(|b| !b.tx.is_closed()) {
                    let peer = bound.peer;
                    match bound.tx.try_send(conn) {
                        Ok(()) => {
                            state.stats.handed += 1;
                            debug!(%addr, peer = %peer.short(), "node connection to the slot's peer");
                        }
                        Err(_) => {
                            state.stats.refused += 1;
                            warn!(%addr, peer = %peer.short(), "too many node connections to the slot's peer; closed");
                        }
                    }
                    return;
                }
                state.bound[slot] = None;
                while let Some(ready) = state.ready.pop_front() {
                    if ready.tx.is_closed() {
                        continue;
                    }
                    let peer = ready.peer;
                    match ready.tx.try_send(conn) {
                        Ok(()) => {
                            state.stats.handed += 1;
                            if held {
                                state.stats.held += 1;
                            }
                            state.bound[slot] = Some(ready);
                            info!(%addr, peer = %peer.short(), held, "slot bound to a punched peer");
                            return;
                        }
                        Err(mpsc::error::TrySendError::Closed(c))
                        | Err(mpsc::error::TrySendError::Full(c)) => conn = c,
                    }
                }
                if state.pending == 0 && !asked {
                    asked = true;
                    self.inner.want.notify_one();
                }
                let now = Instant::now();
                let until = if state.pending > 0 || now < self.inner.grace_until {
                    deadline
                } else if now < asked_until {
                    asked_until
                } else {
                    now
                };
                if until <= now || now >= deadline {
                    state.stats.refused += 1;
                    debug!(%addr, held, "no punched peer for the slot; node connection closed");
                    return;
                }
                until
            };
            held = true;
            // Woken by an offered session or a punch starting or ending; else look again at
            // `until` (then the checks above close the connection).
            let _ = tokio::time::timeout_at(until, notified).await;
        }
    }
}
