//! NAT lab: a small simulated internet per test case, built from Linux network namespaces,
//! veth pairs, bridges and real iptables/conntrack rules, so the real `rendezvous` and `punch`
//! binaries can be run behind realistic routers.
//!
//! One [`Lab`] is one test case: a public rendezvous host and two peers, each behind a router
//! of a given [`RouterKind`] (or both behind one router, [`Topology::SameRouter`]), joined by a
//! bridge that plays the internet. One-way delay and packet loss ([`LinkParams`]) are applied
//! on each router's WAN link in both directions (delay by the `natlab_delay` NFQUEUE helper,
//! loss by `iptables -m statistic`), so A -> rendezvous costs one delay and A -> B two.
//! The address plan, the exact rules and where each part of the lab lives (this crate, the
//! punch matrix in punch-tests, the demo's NAT mode) are in `natlab/README.md`.
//!
//! Used by the NAT-lab tests (punch-tests: the `run_case` matrix, smoke tests) and by
//! `punch-demo`, which puts its two Kaspa nodes behind two home routers when it has the rights.
//!
//! Everything a lab creates carries the name prefix [`PREFIX`] plus the creating process id
//! and a per-process case number, so cases can run in parallel; [`Lab`]'s `Drop` kills what it
//! spawned and deletes its namespaces (which removes their veths and bridges), and
//! [`sweep_leftovers`] removes what interrupted runs left behind. Tests call
//! [`skip_without_net_admin`] first and return when it says so (it prints a SKIPPED line).
//! Failures are typed ([`Error`]): the command run and its stderr, the namespace, the process
//! and its output, or the file.

mod error;
mod lab;
mod probe;
mod procs;
mod rules;
mod sys;

pub use error::{Error, Result};
pub use lab::{helper_bin, Lab, RENDEZVOUS_IP};
pub use probe::{ConnectOpts, ConnectOutcome};
pub use procs::ProcId;
pub use sys::{have_net_admin, skip_reason, skip_without_net_admin, sweep_leftovers, PREFIX};

use std::fmt;

/// What sits between a peer and the simulated internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouterKind {
    /// Home router: endpoint-independent mapping that keeps the source port (Linux
    /// `MASQUERADE`), stateful filter dropping unsolicited inbound packets silently.
    HomeEim,
    /// Like [`RouterKind::HomeEim`] but answering unsolicited inbound TCP SYNs with a RST.
    HomeEimRst,
    /// Endpoint-dependent mapping: a random external port per connection
    /// (`MASQUERADE --random-fully`), same filter as [`RouterKind::HomeEim`].
    Symmetric,
    /// No NAT (the peer has a public address), stateful firewall dropping unsolicited inbound.
    FirewallOnly,
    /// No NAT and no firewall: the peer is reachable from anywhere.
    Public,
    /// A carrier-grade NAT (EIM `MASQUERADE`, 100.64.0.0/10 inside) in front of a
    /// [`RouterKind::HomeEim`] router.
    DoubleNat,
}

impl RouterKind {
    /// Every kind, for tests that iterate over all of them.
    pub const ALL: [RouterKind; 6] = [
        RouterKind::HomeEim,
        RouterKind::HomeEimRst,
        RouterKind::Symmetric,
        RouterKind::FirewallOnly,
        RouterKind::Public,
        RouterKind::DoubleNat,
    ];

    /// True when the peer behind this router has a public address of its own.
    pub fn peer_is_public(self) -> bool {
        matches!(self, RouterKind::FirewallOnly | RouterKind::Public)
    }
}

impl fmt::Display for RouterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            RouterKind::HomeEim => "home-eim",
            RouterKind::HomeEimRst => "home-eim-rst",
            RouterKind::Symmetric => "symmetric",
            RouterKind::FirewallOnly => "firewall-only",
            RouterKind::Public => "public",
            RouterKind::DoubleNat => "double-nat",
        };
        f.write_str(s)
    }
}

/// How the two peers are attached to the internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topology {
    /// Each peer behind its own router: `Pair(kind_a, kind_b)`.
    Pair(RouterKind, RouterKind),
    /// Both peers on one LAN behind a single [`RouterKind::HomeEim`] router; they reach each
    /// other by their LAN addresses, and the rendezvous sees both with the same WAN address.
    SameRouter,
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topology::Pair(a, b) => write!(f, "{a}/{b}"),
            Topology::SameRouter => f.write_str("same-router"),
        }
    }
}

/// One of the two peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The first peer (its router's WAN is 203.0.113.10).
    A,
    /// The second peer (its router's WAN is 203.0.113.20, or the shared router's).
    B,
}

impl Side {
    /// Both sides, A first.
    pub const BOTH: [Side; 2] = [Side::A, Side::B];

    /// 0 for A, 1 for B.
    pub fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }

    /// 'a' or 'b', as in namespace names.
    pub fn letter(self) -> char {
        match self {
            Side::A => 'a',
            Side::B => 'b',
        }
    }
}

/// Impairments of each router's WAN link (the link between a router and the internet bridge;
/// the rendezvous host's own link is left clean). Both apply in both directions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkParams {
    /// One-way delay in milliseconds added on each router's WAN link, each direction
    /// (peer -> rendezvous one-way costs 1x, peer -> peer 2x). 0 disables the delay helper.
    pub delay_ms: u32,
    /// Percentage (0..=100) of packets dropped on each router's WAN link, each direction,
    /// independently per packet.
    pub loss_percent: f32,
}

impl Default for LinkParams {
    /// A clean network: no delay and no loss, for tests about mapping and filtering.
    fn default() -> Self {
        LinkParams {
            delay_ms: 0,
            loss_percent: 0.0,
        }
    }
}

impl LinkParams {
    /// Delay only.
    pub fn delay(delay_ms: u32) -> Self {
        LinkParams {
            delay_ms,
            loss_percent: 0.0,
        }
    }
}
