//! punch: TCP hole punching between peers behind NATs, coordinated by a rendezvous server.
//!
//! A [`Client`] keeps a Noise-encrypted control connection to the rendezvous from a fixed local
//! port. [`Client::connect`] asks the rendezvous for a peer; both peers receive an offer and,
//! at the same moment, dial each other from that same port (TCP simultaneous open). The first
//! stream on which the other side proves it holds the expected Noise key becomes a yamux
//! [`Session`]. Sessions other peers punched to us arrive on [`Incoming`]; [`Client::events`]
//! reports each step ([`Event`]).
//!
//! - [`socket`]: all socket2 work (shared port, SO_REUSEADDR/SO_REUSEPORT).
//! - [`attempt`]: the pure decisions of one punch (dials, which stream wins, which error);
//!   `driver` carries them out.
//! - [`auth`]: preamble, Noise KK and choosing the winning stream.
//! - [`secure`]: the encrypted byte stream; [`session`]: yamux over it.
//! - [`client`]: the control driver; [`forward`]: TCP forwarding helpers used by the CLI.

pub mod attempt;
pub mod auth;
pub mod client;
pub mod config;
mod driver;
pub mod error;
pub mod forward;
pub mod secure;
pub mod session;
pub mod socket;

pub use client::{Client, Event, Incoming, Status};
pub use config::Config;
pub use error::{Error, RendezvousError, SessionError};
pub use session::{PathKind, Session, SessionInfo, Stream};
