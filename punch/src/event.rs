//! What the client reports about itself: its standing with the rendezvous ([`Status`]) and the
//! milestones of its punches ([`Event`]).
//!
//! Kept apart from the drivers so that the control machine ([`crate::control`]), the client
//! driver and the punch driver all depend on this module instead of on each other.

use std::net::SocketAddr;
use std::time::Duration;

use punch_proto::{PeerId, Role};

use crate::error::RendezvousError;
use crate::nat::{NatBehaviour, NatMapping};
use crate::session::{PathKind, SessionInfo};

/// Events kept for slow receivers of [`crate::Client::events`].
pub const EVENT_BUFFER: usize = 256;

/// Where the client stands with the rendezvous.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Status {
    Connecting,
    Registered {
        /// Our address as the rendezvous sees it (the NAT's mapping of the punch port).
        observed: SocketAddr,
        /// Our local address of the control connection.
        local: SocketAddr,
        /// Round trip to the rendezvous (our ping to its pong), once measured.
        rtt: Option<Duration>,
    },
    /// Not registered; the client reconnects by itself. [`RendezvousError::GoingAway`]: the
    /// rendezvous said it is restarting, and the client comes back within its window.
    Disconnected {
        reason: RendezvousError,
    },
}

/// Milestones of the client and its punches, as they happen ([`crate::Client::events`]): for
/// progress displays, timelines and status pages. A receiver that falls more than
/// [`EVENT_BUFFER`] events behind misses the oldest (`RecvError::Lagged`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// Registered with the rendezvous, which sees us at `observed`.
    Registered {
        observed: SocketAddr,
        local: SocketAddr,
    },
    /// The NAT check after a registration finished (see [`crate::nat`]; also
    /// [`crate::Client::nat`]). A failed check reports [`NatMapping::Unknown`].
    NatChecked(NatBehaviour),
    /// The control connection was lost or could not be made; the client keeps retrying.
    /// [`RendezvousError::GoingAway`]: the rendezvous is restarting, and the client comes
    /// back at a random moment within the window it gave.
    Disconnected { reason: RendezvousError },
    /// We asked the rendezvous to punch to `peer`.
    Requested { peer: PeerId },
    /// An offer arrived: for our request, or for another peer's punch to us
    /// (`inbound`). This side dials `dial_delay` after it: until the offer's dial moment on
    /// the rendezvous's clock once that clock is placed ([`crate::clock`]), else the delay the
    /// offer names.
    Offer {
        peer: PeerId,
        session_id: u64,
        role: Role,
        inbound: bool,
        observed: SocketAddr,
        locals: usize,
        dial_delay: Duration,
        /// The peer's NAT mapping as the rendezvous classified it.
        peer_nat: NatMapping,
    },
    /// An inbound offer from a peer the allow-list ([`crate::config::Allow`]) does not
    /// name: nothing was dialed.
    InboundRefused { peer: PeerId, session_id: u64 },
    /// An inbound offer from a peer on our deny list ([`crate::Config::deny`]: its identity,
    /// or the IP the rendezvous observed it at, `observed`): nothing was dialed.
    InboundDenied {
        peer: PeerId,
        session_id: u64,
        observed: SocketAddr,
    },
    /// The first dial of a punch to one candidate address (redials are not reported).
    Dial {
        peer: PeerId,
        session_id: u64,
        addr: SocketAddr,
    },
    /// A punch produced an authenticated session (direct, or relayed: see
    /// [`SessionInfo::path`]).
    Established(SessionInfo),
    /// The relay connection of a punch was opened (no direct stream had authenticated by
    /// the ticket's time).
    RelayDial { peer: PeerId, session_id: u64 },
    /// A session that started relayed moved to a direct connection to `remote`.
    PathChanged {
        peer: PeerId,
        session_id: u64,
        path: PathKind,
        remote: SocketAddr,
    },
    /// A punch ended without a session.
    Failed {
        peer: PeerId,
        session_id: u64,
        /// [`crate::Error::kind`] of the failure.
        kind: &'static str,
        error: String,
    },
}
