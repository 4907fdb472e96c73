//! punch: TCP hole punching between peers behind NATs, coordinated by a rendezvous server.
//!
//! A [`Client`] keeps a Noise-encrypted control connection to the rendezvous from a fixed local
//! port. [`Client::connect`] asks the rendezvous for a peer; both peers receive an offer and,
//! at the same moment, dial each other from that same port (TCP simultaneous open). The first
//! stream on which the other side proves it holds the expected Noise key becomes a yamux
//! [`Session`]. When no direct stream authenticates soon after the dial moment, both open a
//! connection to the rendezvous's relay and run the same handshake through it: the session
//! starts relayed ([`PathKind::Relayed`]) and moves to a direct connection, under yamux and
//! without losing a byte, as soon as one authenticates ([`Session::path`],
//! [`Event::PathChanged`]). Sessions other peers punched to us arrive on [`Incoming`];
//! [`Client::events`] reports each step ([`Event`]).
//!
//! - [`socket`]: all socket2 work (shared port, SO_REUSEADDR/SO_REUSEPORT).
//! - [`attempt`]: the pure decisions of one punch (dials, which stream wins, which error);
//!   `driver` carries them out.
//! - [`auth`]: preamble, Noise KK and choosing the winning stream.
//! - [`secure`]: the encrypted byte stream (and its path-end marker); [`session`]: yamux over
//!   it, on one path or moving to the next; [`guard`]: the pure ledger between them that
//!   bounds what a hostile peer can make yamux hold.
//! - [`control`]: the pure state machine of the control connection to the rendezvous.
//! - [`client`]: its driver and the public handle; [`event`]: what the client reports.
//! - [`forward`]: forwarding punched streams to a local service with limits (`punch listen`)
//!   and local connections to streams.
//! - [`throttle`]: rate-limited reporting of refusals.
//! - [`deny`]: the deny list of identities and IPs, checked before anything is dialed.
//! - [`nat`]: what the NAT check says about our NAT ([`NatBehaviour`], [`Client::nat`]) and
//!   what two peers' mappings mean for a direct punch.
//! - `ops` (feature `ops`): the client's Prometheus metrics and status document.
//!
//! Time: pure state machines ([`attempt`], [`control`], [`guard`]) take `std::time::Instant` values and
//! never read a clock; drivers read tokio's clock (`tokio::time::Instant::now()`, converted with
//! `into_std()` for the machines), so `tokio::time::pause` controls every timer.

pub mod attempt;
pub mod auth;
pub mod client;
pub mod clock;
pub mod config;
pub mod control;
pub mod deny;
mod driver;
pub mod error;
pub mod event;
pub mod forward;
pub mod guard;
pub mod nat;
#[cfg(feature = "ops")]
pub mod ops;
mod routes;
pub mod secure;
pub mod session;
pub mod socket;
pub mod throttle;

pub use client::{Client, Incoming};
pub use config::{Allow, Config};
pub use deny::Denylist;
pub use error::{Error, RendezvousError, SessionError};
pub use event::{Event, Status};
pub use nat::{NatBehaviour, NatMapping};
pub use session::{PathKind, Session, SessionInfo, SessionStatus, Stream, Traffic};

/// Locks a mutex, ignoring poisoning: a panic while holding one of the client's locks is a
/// bug, and the tables behind them stay consistent enough to keep serving.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
