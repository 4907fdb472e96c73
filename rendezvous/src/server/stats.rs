//! The server's counters: the atomics its tasks bump, and [`ServerStats`], the snapshot of
//! them and of the registry's and relay table's own counters that the binary exports.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Shared;

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) accepted: AtomicU64,
    pub(super) rejected_ip_limit: AtomicU64,
    pub(super) rejected_rate: AtomicU64,
    pub(super) evicted: AtomicU64,
    pub(super) silent: AtomicU64,
    pub(super) handshake_failed: AtomicU64,
    pub(super) protocol_errors: AtomicU64,
    pub(super) nat_checks_answered: AtomicU64,
    pub(super) active: AtomicU64,
    pub(super) relay_active: AtomicU64,
    pub(super) relay_bytes: AtomicU64,
    pub(super) handshakes_ok: AtomicU64,
    pub(super) handshake_timeouts: AtomicU64,
    pub(super) handshake_errors: AtomicU64,
    pub(super) requests_connect: AtomicU64,
    pub(super) requests_upgrade: AtomicU64,
    pub(super) requests_discover: AtomicU64,
    pub(super) pings: AtomicU64,
    pub(super) going_away: AtomicU64,
}

/// A snapshot of the server's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStats {
    pub registered: usize,
    pub active_connections: u64,
    pub accepted: u64,
    pub rejected_ip_limit: u64,
    /// Handshakes refused because their source's rate was spent.
    pub rejected_rate: u64,
    /// Pending handshakes evicted for newer ones when their prefix or the server was full.
    pub evicted: u64,
    /// Connections closed for not sending message 1 in time (also counted as failed).
    pub silent: u64,
    pub handshake_failed: u64,
    /// Handshakes completed (registered or refused after it).
    pub handshakes_ok: u64,
    /// Handshakes that did not finish within the handshake timeout.
    pub handshake_timeouts: u64,
    /// Handshakes that failed (bad Noise message, wrong key, broken connection).
    pub handshake_errors: u64,
    /// Requests of registered clients, by kind.
    pub requests_connect: u64,
    pub requests_upgrade: u64,
    pub requests_discover: u64,
    /// Pings clients sent (each answered with a pong).
    pub pings: u64,
    /// Punch requests refused by each rate budget.
    pub limited: crate::registry::RateLimitHits,
    pub protocol_errors: u64,
    pub offers: u64,
    pub refused: u64,
    /// Punch requests refused by the target's allow-list.
    pub not_allowed: u64,
    /// Punch requests refused by a request or offer budget.
    pub rate_limited: u64,
    /// Registrations refused for their source's or network's cap.
    pub network_full: u64,
    /// Punch requests refused because the two peers registered different networks.
    pub wrong_network: u64,
    /// `Discover` requests answered with a sample.
    pub discovers: u64,
    /// NAT checks answered (probes on the NAT check port).
    pub nat_checks_answered: u64,
    /// NAT checks compared with a registration, and those showing an endpoint-dependent
    /// ("symmetric") mapping.
    pub nat_checks: u64,
    pub nat_endpoint_dependent: u64,
    pub replaced: u64,
    /// Relayed sessions being spliced now.
    pub relay_active: u64,
    /// Relay connections held, waiting for the other side of their punch.
    pub relay_held: u64,
    /// Offers that carried relay tickets.
    pub relay_issued: u64,
    /// Offers that went without tickets because the table of unused tickets was full.
    pub relay_pending_full: u64,
    /// Relayed sessions started (both sides arrived).
    pub relay_started: u64,
    /// Relay connections refused, by reason.
    pub relay_refused_unknown_token: u64,
    pub relay_refused_full: u64,
    pub relay_refused_peer_limit: u64,
    pub relay_refused_source_limit: u64,
    pub relay_peer_absent: u64,
    /// Bytes forwarded by the relay, both directions of every session.
    pub relay_bytes: u64,
    /// Registered peers told `GoingAway` (at shutdown).
    pub going_away: u64,
}

/// The counters now.
pub(super) fn snapshot(shared: &Shared) -> ServerStats {
    let state = shared.lock();
    let c = &shared.counters;
    let r = state.registry.stats();
    let rs = state.relay.stats();
    ServerStats {
        registered: state.registry.len(),
        active_connections: c.active.load(Ordering::Relaxed),
        accepted: c.accepted.load(Ordering::Relaxed),
        rejected_ip_limit: c.rejected_ip_limit.load(Ordering::Relaxed),
        rejected_rate: c.rejected_rate.load(Ordering::Relaxed),
        evicted: c.evicted.load(Ordering::Relaxed),
        silent: c.silent.load(Ordering::Relaxed),
        handshake_failed: c.handshake_failed.load(Ordering::Relaxed),
        handshakes_ok: c.handshakes_ok.load(Ordering::Relaxed),
        handshake_timeouts: c.handshake_timeouts.load(Ordering::Relaxed),
        handshake_errors: c.handshake_errors.load(Ordering::Relaxed),
        requests_connect: c.requests_connect.load(Ordering::Relaxed),
        requests_upgrade: c.requests_upgrade.load(Ordering::Relaxed),
        requests_discover: c.requests_discover.load(Ordering::Relaxed),
        pings: c.pings.load(Ordering::Relaxed),
        limited: r.limited,
        protocol_errors: c.protocol_errors.load(Ordering::Relaxed),
        offers: r.offers,
        refused: r.refused,
        not_allowed: r.not_allowed,
        rate_limited: r.rate_limited,
        network_full: r.network_full,
        wrong_network: r.wrong_network,
        discovers: r.discovers,
        nat_checks_answered: c.nat_checks_answered.load(Ordering::Relaxed),
        nat_checks: r.nat_checks,
        nat_endpoint_dependent: r.nat_endpoint_dependent,
        replaced: r.replaced,
        relay_active: c.relay_active.load(Ordering::Relaxed),
        relay_held: state.relay.held() as u64,
        relay_issued: rs.issued,
        relay_pending_full: rs.pending_full,
        relay_started: rs.started,
        relay_refused_unknown_token: rs.refused_unknown_token,
        relay_refused_full: rs.refused_full,
        relay_refused_peer_limit: rs.refused_peer_limit,
        relay_refused_source_limit: rs.refused_source_limit,
        relay_peer_absent: rs.peer_absent,
        relay_bytes: c.relay_bytes.load(Ordering::Relaxed),
        going_away: c.going_away.load(Ordering::Relaxed),
    }
}
