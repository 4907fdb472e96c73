//! A client as operators see it (feature `ops`): Prometheus metrics fed by its events and read
//! from its session table at each scrape ([`ClientMetrics`]), and its status as JSON for the
//! status socket ([`status_json`]). The `punch` binary and kaspad-punch use both; the library
//! without the feature has neither dependency.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use punch_ops::metrics::{gauge_value, Emit, Gather, MetricsServer};
use punch_ops::status::{StatusError, StatusServer};
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use crate::session::PathKind;
use crate::{Client, Event, Status};

type Labels = Vec<(&'static str, &'static str)>;

/// What a program runs for the operators of its client ([`operate`]): the metrics endpoint
/// (when asked for), the status socket and the task counting the client's events. Dropping it
/// stops all three (and removes the socket file).
#[derive(Debug)]
pub struct Operated {
    metrics: Option<MetricsServer>,
    _status: StatusServer,
    follow: JoinHandle<()>,
}

impl Operated {
    /// Where the metrics endpoint listens, if there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::local_addr)
    }
}

impl Drop for Operated {
    fn drop(&mut self) {
        self.follow.abort();
    }
}

/// Why [`operate`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum OperateError {
    /// The metrics address could not be bound.
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Status(#[from] StatusError),
}

/// Starts what `binary`'s operators see of `client`: its metrics (prefix `punch`, with
/// `punch_build_info{binary}`, plus `gather`, the program's own) at `http://metrics/metrics`
/// when `metrics` is set, and its status at `status_socket`: [`status_json`] with `extra()`'s
/// fields added (what the program serves, its caps and their use).
pub async fn operate<X>(
    client: &Client,
    binary: &'static str,
    metrics: Option<SocketAddr>,
    status_socket: &Path,
    extra: X,
    gather: Option<Box<dyn Collector>>,
) -> Result<Operated, OperateError>
where
    X: Fn() -> Value + Send + Sync + 'static,
{
    let mut registry = Registry::with_prefix("punch");
    punch_ops::metrics::register_build_info(&mut registry, binary, env!("CARGO_PKG_VERSION"));
    let counters = ClientMetrics::register(&mut registry, client);
    if let Some(g) = gather {
        registry.register_collector(g);
    }
    let metrics = match metrics {
        Some(addr) => Some(
            punch_ops::metrics::serve(addr, Arc::new(registry))
                .await
                .map_err(|source| OperateError::Metrics { addr, source })?,
        ),
        None => None,
    };
    let c = client.clone();
    let status = punch_ops::status::serve(status_socket, move || {
        let mut doc = status_json(&c);
        if let (Some(doc), Value::Object(more)) = (doc.as_object_mut(), extra()) {
            doc.extend(more);
        }
        doc
    })
    .await?;
    Ok(Operated {
        metrics,
        _status: status,
        follow: counters.follow(client),
    })
}

/// The client's counters and histogram; cheap to clone (they are shared).
#[derive(Debug, Clone)]
pub struct ClientMetrics {
    requests: Counter,
    offers: Family<Labels, Counter>,
    inbound_refused: Family<Labels, Counter>,
    outcomes: Family<Labels, Counter>,
    time_to_session: Family<Labels, Histogram>,
    path_changes: Counter,
    relay_dials: Counter,
    registrations: Counter,
    disconnects: Counter,
    events_missed: Counter,
}

fn path_label(path: PathKind) -> &'static str {
    match path {
        PathKind::Direct => "direct",
        PathKind::Relayed => "relayed",
    }
}

impl ClientMetrics {
    /// Registers the client's metrics in `registry` (give it a prefix, e.g. `punch`): the
    /// counters here, plus what is read from `client` at each scrape (open sessions by path,
    /// bytes, the rendezvous's state and round trip).
    pub fn register(registry: &mut Registry, client: &Client) -> Self {
        let m = ClientMetrics {
            requests: Counter::default(),
            offers: Family::default(),
            inbound_refused: Family::default(),
            outcomes: Family::default(),
            time_to_session: Family::new_with_constructor(|| {
                // 1 ms to about 33 s: a loopback punch to a slow relayed one.
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            path_changes: Counter::default(),
            relay_dials: Counter::default(),
            registrations: Counter::default(),
            disconnects: Counter::default(),
            events_missed: Counter::default(),
        };
        registry.register(
            "requests",
            "Punch requests we sent to the rendezvous",
            m.requests.clone(),
        );
        registry.register(
            "offers",
            "Offers received, by direction (outbound: for our request; inbound: a peer punches to us)",
            m.offers.clone(),
        );
        registry.register(
            "inbound_refused",
            "Inbound offers refused before any dial, by reason (not_allowed, denied)",
            m.inbound_refused.clone(),
        );
        registry.register(
            "punch_outcomes",
            "Punches that ended, by result (direct, relayed, failed) and reason of failure",
            m.outcomes.clone(),
        );
        registry.register_with_unit(
            "time_to_session",
            "From the request (or the inbound offer) to the authenticated session, by path",
            Unit::Seconds,
            m.time_to_session.clone(),
        );
        registry.register(
            "path_changes",
            "Relayed sessions that moved to a direct connection",
            m.path_changes.clone(),
        );
        registry.register(
            "relay_dials",
            "Punches that opened their relay connection",
            m.relay_dials.clone(),
        );
        registry.register(
            "rendezvous_registrations",
            "Registrations with the rendezvous (the first, and one per reconnection)",
            m.registrations.clone(),
        );
        registry.register(
            "rendezvous_disconnects",
            "Control connections to the rendezvous lost or not made",
            m.disconnects.clone(),
        );
        registry.register(
            "events_missed",
            "Client events the metrics fell too far behind to count",
            m.events_missed.clone(),
        );
        let c = client.clone();
        registry.register_collector(Box::new(Gather(move |e: &mut Emit<'_>| gather(&c, e))));
        m
    }

    /// Counts one event.
    pub fn observe(&self, event: &Event) {
        match event {
            Event::Registered { .. } => {
                self.registrations.inc();
            }
            Event::Disconnected { .. } => {
                self.disconnects.inc();
            }
            Event::Requested { .. } => {
                self.requests.inc();
            }
            Event::Offer { inbound, .. } => {
                let dir = if *inbound { "inbound" } else { "outbound" };
                self.offers.get_or_create(&vec![("direction", dir)]).inc();
            }
            Event::InboundRefused { .. } => {
                self.inbound_refused
                    .get_or_create(&vec![("reason", "not_allowed")])
                    .inc();
            }
            Event::InboundDenied { .. } => {
                self.inbound_refused
                    .get_or_create(&vec![("reason", "denied")])
                    .inc();
            }
            Event::Established(info) => {
                let path = path_label(info.path);
                self.outcomes
                    .get_or_create(&vec![("result", path), ("reason", "")])
                    .inc();
                self.time_to_session
                    .get_or_create(&vec![("path", path)])
                    .observe(info.elapsed.as_secs_f64());
            }
            Event::RelayDial { .. } => {
                self.relay_dials.inc();
            }
            Event::PathChanged { .. } => {
                self.path_changes.inc();
            }
            Event::Failed { kind, .. } => {
                self.outcomes
                    .get_or_create(&vec![("result", "failed"), ("reason", kind)])
                    .inc();
            }
            _ => {}
        }
    }

    /// Follows `client`'s events in a task until the client stops (or the handle is aborted).
    pub fn follow(&self, client: &Client) -> JoinHandle<()> {
        let mut events = client.events();
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => me.observe(&event),
                    Err(RecvError::Lagged(n)) => {
                        me.events_missed.inc_by(n);
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        })
    }
}

/// What is read from the client at each scrape.
fn gather(client: &Client, e: &mut Emit<'_>) -> Result<(), std::fmt::Error> {
    let sessions = client.sessions();
    let count = |kind| sessions.iter().filter(|s| s.path.kind == kind).count();
    e.gauges(
        "sessions_open",
        "Sessions open now, by the path they use",
        &[
            (&[("path", "direct")], gauge_value(count(PathKind::Direct))),
            (
                &[("path", "relayed")],
                gauge_value(count(PathKind::Relayed)),
            ),
        ],
    )?;
    let (sent, received) = client.bytes_total();
    e.counters(
        "session_bytes",
        "Bytes of all sessions (yamux frames, before encryption), by direction",
        &[
            (&[("direction", "sent")], sent),
            (&[("direction", "received")], received),
        ],
    )?;
    if let Some(nat) = client.nat() {
        let mapping = nat.mapping.to_string();
        e.gauges(
            "nat_mapping",
            "1 for what the last NAT check found (endpoint-independent, endpoint-dependent, unknown)",
            &[(&[("mapping", mapping.as_str())], 1)],
        )?;
    }
    let (registered, rtt) = match client.status() {
        Status::Registered { rtt, .. } => (1, rtt),
        _ => (0, None),
    };
    e.gauge(
        "rendezvous_registered",
        "1 while registered with the rendezvous",
        registered,
    )?;
    if let Some(rtt) = rtt {
        e.gauge(
            "rendezvous_rtt_microseconds",
            "Round trip to the rendezvous (our last ping)",
            gauge_value(rtt.as_micros()),
        )?;
    }
    Ok(())
}

/// The client's status as JSON (the status socket's document): identity, the rendezvous
/// connection (state, observed address, round trip), and every open session (peer, path,
/// remote address, age, bytes, round trip).
pub fn status_json(client: &Client) -> Value {
    let rendezvous = match client.status() {
        Status::Registered {
            observed,
            local,
            rtt,
        } => json!({
            "addr": client.rendezvous().to_string(),
            "state": "registered",
            "observed": observed.to_string(),
            "local": local.to_string(),
            "rtt_ms": rtt.map(|d| d.as_secs_f64() * 1e3),
        }),
        Status::Connecting => json!({
            "addr": client.rendezvous().to_string(),
            "state": "connecting",
        }),
        Status::Disconnected { reason } => json!({
            "addr": client.rendezvous().to_string(),
            "state": "disconnected",
            "reason": reason.to_string(),
        }),
    };
    let sessions: Vec<Value> = client
        .sessions()
        .into_iter()
        .map(|s| {
            json!({
                "peer": s.info.peer.to_string(),
                "peer_short": s.info.peer.short(),
                "session_id": s.info.session_id,
                "path": path_label(s.path.kind),
                "remote": s.path.remote.to_string(),
                "peer_observed": s.info.observed.to_string(),
                "role": format!("{:?}", s.info.role).to_lowercase(),
                "age_secs": s.age.as_secs(),
                "time_to_session_ms": s.info.elapsed.as_secs_f64() * 1e3,
                "bytes_sent": s.traffic.bytes_sent,
                "bytes_received": s.traffic.bytes_received,
                "rtt_ms": s.traffic.rtt.map(|d| d.as_secs_f64() * 1e3),
            })
        })
        .collect();
    let nat = client.nat().map(|n| {
        json!({
            "summary": n.to_string(),
            "mapping": n.mapping.to_string(),
            "port_preserved": n.port_preserved,
            "public": n.public,
            "observed": n.observed.to_string(),
            "probe_observed": n.probe_observed.map(|a| a.to_string()),
            "check_error": n.check_error.as_ref().map(|e| e.to_string()),
        })
    });
    json!({
        "identity": client.id().to_string(),
        "identity_short": client.id().short(),
        "local_port": client.local_addr().port(),
        "rendezvous": rendezvous,
        "nat": nat,
        "sessions": sessions,
    })
}

/// A status document ([`status_json`], plus what the running command added) as a summary
/// for people: the known sections first, any other section as compact JSON after.
pub fn status_text(doc: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let s = scalar;
    let ms = |v: &Value| v.as_f64().map_or("-".into(), |m| format!("{m:.1} ms"));
    let _ = writeln!(out, "identity    {}", s(&doc["identity"]));
    if let Some(cmd) = doc.get("command") {
        let _ = writeln!(out, "running     {}", s(cmd));
    }
    let r = &doc["rendezvous"];
    let _ = writeln!(
        out,
        "rendezvous  {} {} (observed {}, rtt {})",
        s(&r["addr"]),
        s(&r["state"]),
        s(&r["observed"]),
        ms(&r["rtt_ms"])
    );
    if let Some(reason) = r.get("reason") {
        let _ = writeln!(out, "            last error: {}", s(reason));
    }
    if let Some(nat) = doc.get("nat").filter(|n| !n.is_null()) {
        let _ = writeln!(out, "nat         {}", s(&nat["summary"]));
    }
    if let Some(Value::Object(caps)) = doc.get("caps") {
        for (name, cap) in caps {
            match (cap.get("used"), cap.get("max")) {
                (Some(used), Some(max)) => {
                    let _ = writeln!(out, "cap         {name}: {} of {}", s(used), s(max));
                }
                (None, Some(max)) => {
                    let _ = writeln!(out, "cap         {name}: at most {}", s(max));
                }
                _ => {
                    let _ = writeln!(out, "cap         {name}: {}", s(cap));
                }
            }
        }
    }
    let sessions = doc["sessions"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "sessions    {}", sessions.len());
    for x in &sessions {
        let _ = writeln!(
            out,
            "  {} {:<8} remote {} age {}s sent {} B received {} B rtt {}",
            s(&x["peer_short"]),
            s(&x["path"]),
            s(&x["remote"]),
            s(&x["age_secs"]),
            s(&x["bytes_sent"]),
            s(&x["bytes_received"]),
            ms(&x["rtt_ms"])
        );
    }
    if let Value::Object(map) = doc {
        let known = [
            "identity",
            "identity_short",
            "local_port",
            "command",
            "rendezvous",
            "nat",
            "caps",
            "sessions",
        ];
        for (k, v) in map.iter().filter(|(k, _)| !known.contains(&k.as_str())) {
            let mut pairs = Vec::new();
            flatten("", v, &mut pairs);
            let line = match pairs.as_slice() {
                [(name, value)] if name.is_empty() => value.clone(),
                _ => pairs
                    .iter()
                    .map(|(name, value)| format!("{name}={value}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            };
            let _ = writeln!(out, "{k:<11} {line}");
        }
    }
    out
}

/// A section of the status document as `name=value` pairs for one line of text, nested names
/// joined with dots (`running.discovered=2`); an empty object gives no pair.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            for (k, inner) in map {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&name, inner, out);
            }
        }
        leaf => out.push((prefix.to_owned(), scalar(leaf))),
    }
}

/// One value of the status document as text: a string bare, null as `-`, others as JSON.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_shows_known_sections_and_flattens_the_others() {
        let doc = json!({
            "identity": "abc",
            "command": "kaspad-punch",
            "rendezvous": { "addr": "127.0.0.1:7717", "state": "registered",
                            "observed": "203.0.113.1:4000", "rtt_ms": 1.5 },
            "caps": { "inbound": { "used": 1, "max": 8 }, "inbound_per_ip": { "max": 2 } },
            "sessions": [{ "peer_short": "xyz", "path": "direct", "remote": "203.0.113.2:5000",
                           "age_secs": 3, "bytes_sent": 10, "bytes_received": 20,
                           "rtt_ms": null }],
            "accept": true,
            // Keys in sorted order: the map keeps either order, sorted or as inserted.
            "peering": { "next_discovery_in_secs": null,
                         "running": { "discovered": 2, "pinned": 0 }, "target": 4 },
        });
        let text = status_text(&doc);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&"identity    abc"), "{text}");
        assert!(lines.contains(&"running     kaspad-punch"), "{text}");
        assert!(
            lines.contains(
                &"rendezvous  127.0.0.1:7717 registered (observed 203.0.113.1:4000, rtt 1.5 ms)"
            ),
            "{text}"
        );
        assert!(lines.contains(&"cap         inbound: 1 of 8"), "{text}");
        assert!(
            lines.contains(&"cap         inbound_per_ip: at most 2"),
            "{text}"
        );
        assert!(lines.contains(&"sessions    1"), "{text}");
        assert!(
            lines.contains(
                &"  xyz direct   remote 203.0.113.2:5000 age 3s sent 10 B received 20 B rtt -"
            ),
            "{text}"
        );
        assert!(lines.contains(&"accept      true"), "{text}");
        assert!(
            lines.contains(&"peering     next_discovery_in_secs=- running.discovered=2 running.pinned=0 target=4"),
            "{text}"
        );
    }
}
