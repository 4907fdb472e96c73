//! The punch rendezvous server.
//!
//! Peers keep a Noise-encrypted control connection to this server. It records the address it
//! *observes* for each (the NAT's public mapping of the peer's punch port), measures each
//! peer's RTT with pings, and when peer A asks for peer B sends both a matching [offer]
//! with a dial moment chosen so that both SYNs leave at once (TCP simultaneous open).
//!
//! - [`config`]: limits and timeouts with safe defaults.
//! - [`registry`]: the pure registry and coordinator (no I/O, no clock).
//! - [`directory`]: per network, the peers accepting punches, sampled for `Discover`.
//! - [`limiter`]: token buckets fed timestamps.
//! - [`first_message`]: waiting for message 1 with nothing but a socket.
//! - [`gate`]: the pure admission of handshakes (per-prefix shares, eviction, per-source rate).
//! - [`relay`]: the pure relay table (tickets, pairing, session limits).
//! - [`refusal_log`]: refusals summarised once per interval instead of logged one by one.
//! - [`server`]: the tokio accept loop and per-connection drivers.
//!
//! [offer]: punch_proto::message::Offer

pub mod config;
pub mod directory;
pub mod first_message;
pub mod gate;
pub mod limiter;
#[cfg(feature = "cli")]
pub mod metrics;
pub mod refusal_log;
pub mod registry;
pub mod relay;
pub mod server;
#[doc(hidden)]
pub mod test_support;

pub use config::Config;
pub use server::{Server, ServerStats};
