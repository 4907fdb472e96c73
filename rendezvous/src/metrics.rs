//! The rendezvous's Prometheus metrics (binary feature `cli`): every figure of
//! [`ServerStats`], read at each scrape, named and labelled for dashboards.

use prometheus_client::registry::Registry;
use punch_ops::metrics::{gauge_value, Emit, Gather};

use crate::server::ServerStats;

/// Registers the server's metrics (prefix `rendezvous`) read from `stats` at each scrape.
pub fn registry<F>(stats: F) -> Registry
where
    F: Fn() -> ServerStats + Send + Sync + 'static,
{
    let mut registry = Registry::with_prefix("rendezvous");
    punch_ops::metrics::register_build_info(&mut registry, "rendezvous", env!("CARGO_PKG_VERSION"));
    registry.register_collector(Box::new(Gather(move |e: &mut Emit<'_>| emit(&stats(), e))));
    registry
}

fn emit(s: &ServerStats, e: &mut Emit<'_>) -> Result<(), std::fmt::Error> {
    e.gauge(
        "registered_peers",
        "Peers registered now",
        gauge_value(s.registered),
    )?;
    e.gauge(
        "control_connections",
        "Control connections open now (registered, or in their handshake)",
        gauge_value(s.active_connections),
    )?;
    e.counter(
        "accepted_connections",
        "TCP connections accepted",
        s.accepted,
    )?;
    e.counters(
        "handshakes",
        "Control handshakes by result: ok, timeout, error (bad Noise, wrong key, broken), silent (no message 1 in time)",
        &[
            (&[("result", "ok")], s.handshakes_ok),
            (&[("result", "timeout")], s.handshake_timeouts),
            (&[("result", "error")], s.handshake_errors),
            (&[("result", "silent")], s.silent),
        ],
    )?;
    e.counters(
        "connections_refused",
        "Connections refused before their handshake, by the limit that refused them",
        &[
            (&[("limit", "connections_per_ip")], s.rejected_ip_limit),
            (&[("limit", "handshakes_per_source")], s.rejected_rate),
            (&[("limit", "handshake_slots")], s.evicted),
        ],
    )?;
    e.counters(
        "requests",
        "Messages of registered clients, by kind",
        &[
            (&[("kind", "connect")], s.requests_connect),
            (&[("kind", "upgrade")], s.requests_upgrade),
            (&[("kind", "discover")], s.requests_discover),
            (&[("kind", "ping")], s.pings),
        ],
    )?;
    let l = &s.limited;
    e.counters(
        "rate_limited",
        "Requests refused by a rate budget, by budget",
        &[
            (&[("limit", "requests_per_identity")], l.identity),
            (&[("limit", "requests_per_source")], l.source),
            (&[("limit", "requests_per_network")], l.network),
            (
                &[("limit", "offers_per_target_per_source")],
                l.target_source,
            ),
            (
                &[("limit", "offers_per_target_per_network")],
                l.target_network,
            ),
        ],
    )?;
    e.counters(
        "requests_refused",
        "Punch and discover requests answered with an error, by reason",
        &[
            (&[("reason", "rate_limited")], s.rate_limited),
            (&[("reason", "not_allowed")], s.not_allowed),
            (&[("reason", "wrong_network")], s.wrong_network),
            (
                &[("reason", "other")],
                s.refused
                    .saturating_sub(s.rate_limited + s.not_allowed + s.wrong_network),
            ),
        ],
    )?;
    e.counter(
        "registrations_refused",
        "Registrations refused for their source's or network's cap",
        s.network_full,
    )?;
    e.counter(
        "registrations_replaced",
        "Registrations replaced by a newer one of the same identity",
        s.replaced,
    )?;
    e.counter(
        "offers",
        "Punches scheduled (an offer to each of the two peers)",
        s.offers,
    )?;
    e.counter(
        "discovers",
        "Discover requests answered with a sample",
        s.discovers,
    )?;
    e.counter(
        "protocol_errors",
        "Registered clients dropped for breaking the protocol or not reading",
        s.protocol_errors,
    )?;
    e.gauge(
        "relay_sessions_active",
        "Relayed sessions being spliced now",
        gauge_value(s.relay_active),
    )?;
    e.gauge(
        "relay_held",
        "Relay connections waiting for the other side",
        gauge_value(s.relay_held),
    )?;
    e.counter(
        "relay_sessions_started",
        "Relayed sessions started (both sides arrived)",
        s.relay_started,
    )?;
    e.counter(
        "relay_tickets_issued",
        "Offers that carried relay tickets",
        s.relay_issued,
    )?;
    e.counter(
        "relay_bytes",
        "Bytes forwarded by the relay, both directions",
        s.relay_bytes,
    )?;
    e.counters(
        "relay_refused",
        "Relay connections or tickets refused, by reason",
        &[
            (
                &[("reason", "unknown_token")],
                s.relay_refused_unknown_token,
            ),
            (&[("reason", "full")], s.relay_refused_full),
            (&[("reason", "peer_limit")], s.relay_refused_peer_limit),
            (&[("reason", "source_limit")], s.relay_refused_source_limit),
            (&[("reason", "peer_absent")], s.relay_peer_absent),
            (&[("reason", "pending_full")], s.relay_pending_full),
        ],
    )
}
