//! NAT lab: a small simulated internet per test case, built from Linux network namespaces,
//! veth pairs, bridges and real iptables/conntrack rules, so the real `rendezvous` and `punch`
//! binaries can be run behind realistic routers.
//!
//! One [`Lab`] is one test case: a public rendezvous host and two peers, each behind a router
//! of a given [`RouterKind`] (or both behind one router, [`Topology::SameRouter`]), joined by a
//! bridge that plays the internet. [`Topology::Many`] (built with [`Topology::many`] or
//! [`Lab::build_peers`]) puts 2 to [`MAX_PEERS`] peers on it, each behind its own router;
//! accessors take a [`Peer`] index, or a [`Side`] for the first two. One-way delay and packet loss ([`LinkParams`]) are applied
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

/// Most peers one lab holds ([`Topology::Many`]): the address plan gives each peer its own
/// WAN address (203.0.113.10..=80), public /28 and private /24.
pub const MAX_PEERS: usize = 8;

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

/// How the peers are attached to the internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topology {
    /// Each peer behind its own router: `Pair(kind_a, kind_b)`.
    Pair(RouterKind, RouterKind),
    /// Both peers on one LAN behind a single [`RouterKind::HomeEim`] router; they reach each
    /// other by their LAN addresses, and the rendezvous sees both with the same WAN address.
    SameRouter,
    /// 2 to [`MAX_PEERS`] peers, each behind its own router of the given kind (peer `i`
    /// behind `kinds()[i]`); made by [`Topology::many`]. Peers 0 and 1 are laid out exactly as
    /// A and B of a `Pair` with the same kinds.
    Many(PeerRouters),
}

impl Topology {
    /// `Many` with one peer per entry of `kinds`, each behind its own router of that kind;
    /// fails with [`Error::PeerCount`] unless there are 2 to [`MAX_PEERS`].
    pub fn many(kinds: &[RouterKind]) -> Result<Topology> {
        if !(2..=MAX_PEERS).contains(&kinds.len()) {
            return Err(Error::PeerCount { count: kinds.len() });
        }
        let mut routers = PeerRouters {
            kinds: [RouterKind::HomeEim; MAX_PEERS],
            len: kinds.len() as u8,
        };
        routers.kinds[..kinds.len()].copy_from_slice(kinds);
        Ok(Topology::Many(routers))
    }

    /// How many peers the lab has: 2, or `kinds().len()` for `Many`.
    pub fn peer_count(&self) -> usize {
        match self {
            Topology::Pair(..) | Topology::SameRouter => 2,
            Topology::Many(routers) => routers.kinds().len(),
        }
    }

    /// The kind of the router in front of `peer` (the shared [`RouterKind::HomeEim`] one for
    /// `SameRouter`). Panics if the topology has no such peer.
    pub fn router(&self, peer: impl Into<Peer>) -> RouterKind {
        let i = peer.into().index();
        match self {
            Topology::Pair(a, b) => [*a, *b][i],
            Topology::SameRouter => [RouterKind::HomeEim; 2][i],
            Topology::Many(routers) => routers.kinds()[i],
        }
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topology::Pair(a, b) => write!(f, "{a}/{b}"),
            Topology::SameRouter => f.write_str("same-router"),
            Topology::Many(routers) => {
                for (i, kind) in routers.kinds().iter().enumerate() {
                    if i > 0 {
                        f.write_str("/")?;
                    }
                    write!(f, "{kind}")?;
                }
                Ok(())
            }
        }
    }
}

/// The routers of a [`Topology::Many`], one per peer, in peer order. A fixed-size value so
/// that [`Topology`] stays `Copy`; made by [`Topology::many`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerRouters {
    /// `kinds[..len]` are used; the rest stay `HomeEim`, so equal lists compare equal.
    kinds: [RouterKind; MAX_PEERS],
    len: u8,
}

impl PeerRouters {
    /// The router kind of each peer, peer 0 first.
    pub fn kinds(&self) -> &[RouterKind] {
        &self.kinds[..usize::from(self.len)]
    }
}

/// One peer of a lab by index: 0 and 1 are [`Side::A`] and [`Side::B`], a [`Topology::Many`]
/// lab has more. Accessors take `impl Into<Peer>`, so a `Side`, a `usize` or a `Peer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Peer(usize);

impl Peer {
    /// The peer's index (0 for A, 1 for B).
    pub fn index(self) -> usize {
        self.0
    }

    /// 'a' for peer 0, 'b' for peer 1, ... 'h' for peer 7, as in namespace names.
    pub fn letter(self) -> char {
        char::from(b'a' + (self.0 % 26) as u8)
    }
}

impl From<usize> for Peer {
    fn from(index: usize) -> Peer {
        Peer(index)
    }
}

impl From<Side> for Peer {
    fn from(side: Side) -> Peer {
        Peer(side.index())
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer {}", self.0)
    }
}

/// One of the two peers of a `Pair` or `SameRouter` lab (peers 0 and 1 of a `Many` lab).
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
/// the rendezvous host's own link is left clean). Both apply in both directions, on every
/// peer's link alike (also in a [`Topology::Many`] lab).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkParams {
    /// One-way delay in milliseconds added on each router's WAN link, each direction
    /// (peer -> rendezvous one-way costs 1x, peer -> peer 2x). 0 disables the delay helper.
    pub delay_ms: u32,
    /// Percentage (0..=100) of packets dropped on each router's WAN link, each direction,
    /// independently per packet.
    pub loss_percent: f32,
    /// The one-way delay of peer B's router link instead of `delay_ms`: an asymmetric pair
    /// (peer A near the rendezvous, B far from it). `None`: `delay_ms` everywhere.
    pub delay_ms_b: Option<u32>,
}

impl Default for LinkParams {
    /// A clean network: no delay and no loss, for tests about mapping and filtering.
    fn default() -> Self {
        LinkParams {
            delay_ms: 0,
            loss_percent: 0.0,
            delay_ms_b: None,
        }
    }
}

impl LinkParams {
    /// Delay only.
    pub fn delay(delay_ms: u32) -> Self {
        LinkParams {
            delay_ms,
            ..LinkParams::default()
        }
    }

    /// Delay only, `a_ms` on peer A's router link (and any other but B's), `b_ms` on B's.
    pub fn asymmetric(a_ms: u32, b_ms: u32) -> Self {
        LinkParams {
            delay_ms: a_ms,
            delay_ms_b: Some(b_ms),
            ..LinkParams::default()
        }
    }

    /// The one-way delay on the router link of peer `index` (0 is A, 1 is B).
    pub fn delay_of(&self, index: usize) -> u32 {
        match (index, self.delay_ms_b) {
            (1, Some(b)) => b,
            _ => self.delay_ms,
        }
    }
}
