//! Admission of connections, carried out for the server: the per-IP connection slot at
//! accept, a place among the connections waiting for message 1, then a handshake slot from the
//! [`HandshakeGate`](crate::gate::HandshakeGate). The gates decide; this module holds the
//! guards that release their slots on drop and cancels the connections they evict.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{Shared, State};
use crate::gate::{Prefix, Refusal};
use crate::refusal_log::Reason;

/// Releases a per-IP connection slot on drop.
#[derive(Debug)]
pub(super) struct IpSlot {
    shared: Arc<Shared>,
    prefix: Prefix,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if let Some(n) = state.per_ip.get_mut(&self.prefix) {
            *n -= 1;
            if *n == 0 {
                state.per_ip.remove(&self.prefix);
            }
        }
        self.shared.counters.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Releases a slot in the gate (or, `waiting`, in the gate of connections waiting for
/// message 1) on drop.
#[derive(Debug)]
pub(super) struct HandshakeSlot {
    shared: Arc<Shared>,
    id: u64,
    waiting: bool,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if self.waiting {
            state.waiting.finish(self.id);
        } else {
            state.gate.finish(self.id);
        }
        state.pending.remove(&self.id);
    }
}

/// Takes a place among the connections waiting for message 1, evicting the oldest waiting
/// connection of the busiest prefix when all are taken.
pub(super) fn admit_waiting(
    shared: &Arc<Shared>,
    addr: SocketAddr,
) -> (HandshakeSlot, CancellationToken) {
    let prefix = Prefix::of(addr.ip());
    let mut state = shared.lock();
    let id = state.next_handshake;
    state.next_handshake += 1;
    // No rate is configured for this gate, so it never refuses.
    let evicted = state
        .waiting
        .admit(Instant::now(), id, addr.ip())
        .ok()
        .and_then(|admitted| admitted.evicted);
    take_slot(shared, state, id, prefix, evicted, true)
}

/// Takes a per-IP connection slot (IPv6 keyed on the /64), or refuses the connection (it is
/// dropped, which closes it: nothing is sent before the client proves it knows the server key).
pub(super) fn admit(shared: &Arc<Shared>, addr: SocketAddr) -> Option<IpSlot> {
    shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
    let prefix = Prefix::of(addr.ip());
    {
        let mut state = shared.lock();
        let n = state.per_ip.entry(prefix).or_insert(0);
        if *n >= shared.config.max_connections_per_ip {
            state.refusals.record(Reason::PerIp, prefix);
            drop(state);
            shared
                .counters
                .rejected_ip_limit
                .fetch_add(1, Ordering::Relaxed);
            debug!(%addr, "refused: too many connections from this address");
            return None;
        }
        *n += 1;
    }
    shared.counters.active.fetch_add(1, Ordering::Relaxed);
    Some(IpSlot {
        shared: shared.clone(),
        prefix,
    })
}

/// Asks the gate for a handshake slot once message 1 is in; carries out an eviction.
/// `None`: refused (counted for the summary; the caller closes the connection).
pub(super) fn admit_handshake(
    shared: &Arc<Shared>,
    addr: SocketAddr,
) -> Option<(HandshakeSlot, CancellationToken)> {
    let prefix = Prefix::of(addr.ip());
    let mut state = shared.lock();
    let id = state.next_handshake;
    state.next_handshake += 1;
    match state.gate.admit(Instant::now(), id, addr.ip()) {
        Err(Refusal::Rate) => {
            state.refusals.record(Reason::Rate, prefix);
            drop(state);
            shared
                .counters
                .rejected_rate
                .fetch_add(1, Ordering::Relaxed);
            debug!("refused: handshake rate of this source spent");
            None
        }
        Ok(admitted) => Some(take_slot(
            shared,
            state,
            id,
            prefix,
            admitted.evicted,
            false,
        )),
    }
}

/// Carries out an admission (of a waiting connection or of a handshake): drops the
/// connection the gate evicted for it, and registers `id` with a cancel token the eviction of
/// a later one can fire.
fn take_slot(
    shared: &Arc<Shared>,
    mut state: MutexGuard<'_, State>,
    id: u64,
    prefix: Prefix,
    evicted: Option<u64>,
    waiting: bool,
) -> (HandshakeSlot, CancellationToken) {
    if let Some(old) = evicted {
        evict(shared, &mut state, old);
    }
    let token = CancellationToken::new();
    state.pending.insert(id, (token.clone(), prefix));
    drop(state);
    let slot = HandshakeSlot {
        shared: shared.clone(),
        id,
        waiting,
    };
    (slot, token)
}

/// Cancels the connection the gate evicted and counts it.
fn evict(shared: &Shared, state: &mut State, id: u64) {
    if let Some((token, prefix)) = state.pending.remove(&id) {
        token.cancel();
        state.refusals.record(Reason::Evicted, prefix);
    }
    shared.counters.evicted.fetch_add(1, Ordering::Relaxed);
}
