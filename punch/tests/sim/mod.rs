//! A deterministic simulator: two clients' control machines ([`punch::control::Control`]) and
//! the rendezvous [`Registry`], joined by simulated links on a virtual clock.
//!
//! Modelled on quinn-proto's test `Pair`: the machines are pure, the simulator owns the clock
//! and the wires. [`Sim::step`] handles the earliest thing due (a fault, a delivery, a
//! machine's timeout, a server ping), then carries out every action the machines queued, in
//! order. Links are TCP connections: each direction keeps its order, a "lost" segment arrives
//! one retransmission timeout late (decided by a seeded RNG), a fault can cut a link, hang the
//! server or take it down. Messages cross the wires encoded with proto's real codecs
//! (`Register`, `ClientMsg`, `ServerMsg`); the Noise layer is skipped (the XK handshake is
//! modelled as its round trips: SYN + message 1, SYN-ACK + message 2, message 3 carrying the
//! registration). The server glue is small: it registers at message 3 with the handshake's RTT
//! sample, sends `Registered`, pings every interval (Pong gives an RTT sample), passes
//! `Connect` to the registry and carries out its actions; it has no idle timeout.
//!
//! Everything is seeded and ordered (`BTreeMap`s keyed by time and sequence number), so a run
//! is a function of its seed: [`Sim::trace`] is identical across runs.

#![allow(dead_code)]

mod server;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use punch::control::{Action, Control, ControlConfig};
use punch::{Error, Event, RendezvousError, Status};
use punch_proto::channel::ChannelError;
use punch_proto::message::Offer;
use punch_proto::PeerId;
use punch_rendezvous::registry::{ConnId, Limits, Registry};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const A: usize = 0;
pub const B: usize = 1;

/// One client's path to the rendezvous.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    /// One-way delay.
    pub delay: Duration,
    /// Probability that a segment is lost (and arrives `retransmit` later).
    pub loss: f64,
    pub retransmit: Duration,
}

impl Link {
    pub fn new(delay_ms: u64) -> Self {
        Self {
            delay: Duration::from_millis(delay_ms),
            loss: 0.0,
            retransmit: Duration::from_millis(200),
        }
    }
}

/// Things that go wrong, scheduled with [`Sim::at`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The rendezvous process dies: its connections are reset, new ones refused.
    ServerDown,
    /// It starts again, with an empty registry.
    ServerUp,
    /// The server hangs: it accepts TCP connections but reads and sends nothing.
    ServerHung(bool),
    /// The client's connection is cut (both ends see it closed).
    CutLink(usize),
    /// The client's path drops everything, without any RST (a peer that never answers).
    Blackhole(usize, bool),
    /// The client's path now has this one-way delay (a route change, a queue filling up).
    Delay(usize, Duration),
}

/// What a request ended with.
#[derive(Debug)]
pub enum Outcome {
    /// The machine started the punch of this session.
    Punch(u64),
    Failed(Error),
}

/// A punch a machine started.
#[derive(Debug, Clone)]
pub struct Punch {
    pub offer: Offer,
    pub reply: Option<u64>,
    pub received: Instant,
    /// When this side's first dials go out.
    pub dial_at: Instant,
}

#[derive(Debug)]
enum Packet {
    /// TCP SYN and Noise message 1.
    Syn,
    /// SYN-ACK and Noise message 2.
    SynAck,
    /// RST: nobody listens.
    Refused,
    /// Noise message 3 with the encoded registration.
    Hello(Vec<u8>),
    /// One encoded control message.
    Frame(Vec<u8>),
    /// The connection closed.
    Fin,
}

#[derive(Debug)]
struct Delivery {
    to_server: bool,
    client: usize,
    conn: ConnId,
    packet: Packet,
}

pub struct Node {
    pub name: &'static str,
    pub id: PeerId,
    pub public: SocketAddr,
    pub local: SocketAddr,
    pub link: Link,
    pub control: Control<u64>,
    pub status: Status,
    pub outcomes: Vec<(Instant, u64, Outcome)>,
    pub punches: Vec<Punch>,
    pub connects: Vec<Instant>,
    conn: Option<ConnId>,
    blackholed: bool,
    next_token: u64,
}

#[derive(Debug)]
struct ServerConn {
    client: usize,
    peer: Option<PeerId>,
    handshake_sent: Instant,
    next_ping: Instant,
    ping: Option<(u64, Instant)>,
}

struct Server {
    registry: Registry,
    /// The epoch of the server's clock (pongs, offers' dial moments): its (re)start.
    epoch: Instant,
    limits: Limits,
    ping_interval: Duration,
    conns: BTreeMap<ConnId, ServerConn>,
    up: bool,
    hung: bool,
    restarts: u64,
}

pub struct Sim {
    pub now: Instant,
    pub t0: Instant,
    pub nodes: Vec<Node>,
    server: Server,
    rng: StdRng,
    flight: BTreeMap<(Instant, u64), Delivery>,
    faults: BTreeMap<(Instant, u64), Fault>,
    /// Per connection and direction: when its last segment arrives (TCP keeps order).
    last_arrival: BTreeMap<(ConnId, bool), Instant>,
    seq: u64,
    next_conn: ConnId,
    trace: Vec<String>,
}

/// The client configuration of the simulated machines: the library's defaults.
pub fn control_config() -> ControlConfig {
    use punch::config::*;
    ControlConfig {
        rendezvous: "192.0.2.1:7717".parse().unwrap(),
        accept_inbound: true,
        allow: Allow::Any,
        network: String::new(),
        deny: punch::Denylist::new(),
        handshake_timeout: DEFAULT_AUTH_TIMEOUT,
        request_timeout: DEFAULT_REQUEST_TIMEOUT,
        reconnect_min: DEFAULT_RECONNECT_MIN,
        reconnect_max: DEFAULT_RECONNECT_MAX,
    }
}

/// The registry limits of the simulated rendezvous: the server's defaults.
pub fn limits() -> Limits {
    Limits::default()
}

impl Sim {
    pub fn new(seed: u64, links: [Link; 2], limits: Limits) -> Self {
        let t0 = Instant::now();
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let node = |i: usize, name, public, local, link| Node {
            name,
            id: PeerId::from_bytes([i as u8 + 1; 32]).expect("a valid key"),
            public: addr(public),
            local: addr(local),
            link,
            control: Control::new(
                control_config(),
                t0,
                seed.wrapping_mul(31).wrapping_add(i as u64),
            ),
            status: Status::Connecting,
            outcomes: Vec::new(),
            punches: Vec::new(),
            connects: Vec::new(),
            conn: None,
            blackholed: false,
            next_token: 1,
        };
        let mut sim = Self {
            now: t0,
            t0,
            nodes: vec![
                node(A, "A", "203.0.113.1:40000", "192.168.1.10:40000", links[A]),
                node(B, "B", "198.51.100.2:50000", "10.0.0.20:50000", links[B]),
            ],
            server: Server {
                registry: Registry::new(limits.clone(), seed).with_clock(t0),
                epoch: t0,
                limits,
                ping_interval: punch_rendezvous::config::DEFAULT_PING_INTERVAL,
                conns: BTreeMap::new(),
                up: true,
                hung: false,
                restarts: 0,
            },
            rng: StdRng::seed_from_u64(seed),
            flight: BTreeMap::new(),
            faults: BTreeMap::new(),
            last_arrival: BTreeMap::new(),
            seq: 0,
            next_conn: 1,
            trace: Vec::new(),
        };
        sim.carry_out_all();
        sim
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    pub fn trace(&self) -> &[String] {
        &self.trace
    }

    pub fn registered_peers(&self) -> usize {
        self.server.registry.len()
    }

    pub fn is_registered(&self, i: usize) -> bool {
        self.nodes[i].control.registered().is_some()
    }

    fn seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn log(&mut self, who: &str, what: impl std::fmt::Display) {
        let ms = self.elapsed().as_secs_f64() * 1000.0;
        let mut line = String::new();
        let _ = write!(line, "{ms:>10.3} {who} {what}");
        self.trace.push(line);
    }

    /// Schedules a fault `after` the start.
    pub fn at(&mut self, after: Duration, fault: Fault) {
        let seq = self.seq();
        self.faults.insert((self.t0 + after, seq), fault);
    }

    /// Client `i` asks for a punch to the other client; returns the request's token.
    pub fn connect(&mut self, i: usize) -> u64 {
        let target = self.nodes[1 - i].id;
        let node = &mut self.nodes[i];
        let token = node.next_token;
        node.next_token += 1;
        node.control.connect(self.now, target, token);
        self.log(
            self.nodes[i].name,
            format_args!("connect request (token {token})"),
        );
        self.carry_out_all();
        token
    }

    /// Runs until `after` the start.
    pub fn run_until(&mut self, after: Duration) {
        let end = self.t0 + after;
        while self.next_due().is_some_and(|t| t <= end) {
            self.step();
        }
        self.now = self.now.max(end);
    }

    fn next_due(&self) -> Option<Instant> {
        let flight = self.flight.keys().next().map(|k| k.0);
        let fault = self.faults.keys().next().map(|k| k.0);
        let machines = self
            .nodes
            .iter()
            .filter_map(|n| n.control.poll_timeout())
            .min();
        let pings = if self.server.hung {
            None
        } else {
            self.server
                .conns
                .values()
                .filter(|c| c.peer.is_some())
                .map(|c| c.next_ping)
                .min()
        };
        [flight, fault, machines, pings].into_iter().flatten().min()
    }

    /// Handles the earliest thing due, then every queued action.
    pub fn step(&mut self) {
        let Some(t) = self.next_due() else { return };
        self.now = self.now.max(t);
        let now = self.now;
        if let Some(entry) = self.faults.first_entry().filter(|e| e.key().0 <= now) {
            let fault = entry.remove();
            self.fault(fault);
        } else if let Some(entry) = self.flight.first_entry().filter(|e| e.key().0 <= now) {
            let d = entry.remove();
            self.deliver(d);
        } else if let Some(i) = (0..self.nodes.len()).find(|&i| {
            self.nodes[i]
                .control
                .poll_timeout()
                .is_some_and(|t| t <= now)
        }) {
            self.nodes[i].control.handle_timeout(now);
        } else {
            self.server_pings();
        }
        self.carry_out_all();
    }

    fn send(&mut self, to_server: bool, client: usize, conn: ConnId, packet: Packet) {
        let link = self.nodes[client].link;
        if self.nodes[client].blackholed {
            return;
        }
        let mut at = self.now + link.delay;
        if link.loss > 0.0 && self.rng.gen_bool(link.loss) {
            at += link.retransmit;
        }
        let last = self.last_arrival.entry((conn, to_server)).or_insert(at);
        at = at.max(*last);
        *last = at;
        let seq = self.seq();
        self.flight.insert(
            (at, seq),
            Delivery {
                to_server,
                client,
                conn,
                packet,
            },
        );
    }

    fn fault(&mut self, fault: Fault) {
        self.log("sim", format_args!("fault {fault:?}"));
        match fault {
            Fault::ServerDown => {
                self.server.up = false;
                for (conn, c) in std::mem::take(&mut self.server.conns) {
                    self.send(false, c.client, conn, Packet::Fin);
                }
            }
            Fault::ServerUp => {
                self.server.up = true;
                self.server.restarts += 1;
                self.server.registry =
                    Registry::new(self.server.limits.clone(), 1000 + self.server.restarts)
                        .with_clock(self.now);
                self.server.epoch = self.now;
            }
            Fault::ServerHung(hung) => self.server.hung = hung,
            Fault::CutLink(i) => {
                if let Some(conn) = self.nodes[i].conn {
                    if let Some(c) = self.server.conns.remove(&conn) {
                        if let Some(peer) = c.peer {
                            self.server.registry.unregister(&peer, conn);
                        }
                    }
                    // The client learns at once (its RST); in-flight segments die with it.
                    self.flight.retain(|_, d| d.conn != conn);
                    self.nodes[i].conn = None;
                    let now = self.now;
                    self.nodes[i].control.on_lost(now, reset());
                }
            }
            Fault::Blackhole(i, on) => self.nodes[i].blackholed = on,
            Fault::Delay(i, delay) => self.nodes[i].link.delay = delay,
        }
    }

    fn deliver(&mut self, d: Delivery) {
        if self.nodes[d.client].blackholed {
            return;
        }
        if d.to_server {
            self.server_receive(d.client, d.conn, d.packet);
        } else {
            self.client_receive(d.client, d.conn, d.packet);
        }
    }

    fn client_receive(&mut self, i: usize, conn: ConnId, packet: Packet) {
        let now = self.now;
        if self.nodes[i].conn != Some(conn) {
            return; // a connection the client closed
        }
        match packet {
            Packet::SynAck => {
                let register = self.nodes[i]
                    .control
                    .config()
                    .register_message(self.nodes[i].local);
                self.send(true, i, conn, Packet::Hello(register.encode()));
                let local = self.nodes[i].local;
                self.nodes[i].control.on_connected(now, local);
            }
            Packet::Refused => {
                self.nodes[i].conn = None;
                self.nodes[i].control.on_connect_failed(now, refused());
            }
            Packet::Frame(bytes) => self.nodes[i].control.handle_frame(now, &bytes),
            Packet::Fin => {
                self.nodes[i].conn = None;
                self.nodes[i]
                    .control
                    .on_lost(now, RendezvousError::Lost(Arc::new(ChannelError::Closed)));
            }
            Packet::Syn | Packet::Hello(_) => unreachable!("client-bound packets only"),
        }
    }

    fn carry_out_all(&mut self) {
        for i in 0..self.nodes.len() {
            while let Some(action) = self.nodes[i].control.poll_action() {
                self.carry_out(i, action);
            }
        }
    }

    fn carry_out(&mut self, i: usize, action: Action<u64>) {
        let now = self.now;
        let name = self.nodes[i].name;
        match action {
            Action::Connect => {
                let conn = self.next_conn;
                self.next_conn += 1;
                self.nodes[i].conn = Some(conn);
                self.nodes[i].connects.push(now);
                self.log(name, "connect");
                self.send(true, i, conn, Packet::Syn);
            }
            Action::Close { reason } => {
                self.log(name, format_args!("close: {reason}"));
                if let Some(conn) = self.nodes[i].conn.take() {
                    self.send(true, i, conn, Packet::Fin);
                }
            }
            Action::Send(msg) => {
                if let Some(conn) = self.nodes[i].conn {
                    self.send(true, i, conn, Packet::Frame(msg.encode()));
                }
            }
            // The simulated rendezvous names no NAT check port, so only the "not offered"
            // result is published.
            Action::NatCheck { server } => self.log(name, format_args!("NAT check to {server}")),
            Action::SetNat(nat) => self.log(name, format_args!("NAT check: {nat}")),
            Action::RelayEnded { session_id, reason } => {
                self.log(
                    name,
                    format_args!("relay ended session {session_id}: {reason}"),
                );
            }
            Action::Discovered { token, peers } => {
                self.log(
                    name,
                    format_args!("request {token}: {} peer(s)", peers.len()),
                );
            }
            Action::Reply { token, error } => {
                self.log(name, format_args!("request {token} failed: {error}"));
                self.nodes[i]
                    .outcomes
                    .push((now, token, Outcome::Failed(error)));
            }
            Action::StartPunch {
                offer,
                reply,
                started: _,
            } => {
                self.log(
                    name,
                    format_args!("punch session {} ({:?})", offer.session_id, offer.role),
                );
                if let Some(token) = reply {
                    self.nodes[i]
                        .outcomes
                        .push((now, token, Outcome::Punch(offer.session_id)));
                }
                let dial_at = now + offer.dial_delay;
                self.nodes[i].punches.push(Punch {
                    offer,
                    reply,
                    received: now,
                    dial_at,
                });
            }
            Action::Emit(event) => {
                if !matches!(event, Event::Requested { .. } | Event::Offer { .. }) {
                    self.log(name, format_args!("event {event:?}"));
                }
            }
            Action::SetStatus(status) => self.nodes[i].status = status,
        }
    }
}

/// What the client's driver reports for a refused TCP connect.
fn refused() -> RendezvousError {
    RendezvousError::Connect(Arc::new(io::Error::new(
        io::ErrorKind::ConnectionRefused,
        "connection refused",
    )))
}

/// What the client's driver reports for a reset control connection.
fn reset() -> RendezvousError {
    RendezvousError::Io(Arc::new(io::Error::new(
        io::ErrorKind::ConnectionReset,
        "connection reset",
    )))
}
