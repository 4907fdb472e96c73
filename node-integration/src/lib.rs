//! punch-node: Kaspa nodes behind NATs, connected directly through punched sessions.
//!
//! kaspa-p2p-lib (the P2P layer of rusty-kaspa's kaspad) speaks gRPC over real TCP only, so an
//! unmodified Kaspa node is connected to punched peers through a loopback [`bridge`]: every
//! punched peer gets its own address `127.a.b.c` (assigned by a table, [`alias`]) on which the
//! node dials it and from which its connections reach the node, so Kaspa's per-IP rules act
//! per punched peer.
//!
//! - [`seam`]: tonic over punched streams directly (`serve_with_incoming`, a connector), for
//!   tonic nodes that accept a custom transport; HTTP/2 sizes matched to yamux.
//! - [`alias`]: the per-peer loopback address, handed out by a local table.
//! - [`bridge`]: punched sessions to and from a node's P2P port.
//! - [`handshake`]: kaspad's handshake rules as a kaspa-p2p-lib `ConnectionInitializer`.
//! - [`node`]: a minimal Kaspa P2P node (kaspa-p2p-lib's adaptor + that initializer).
//! - [`link`]: keeps configured punched peers connected (re-punching), takes inbound ones.
//! - [`slots`]: a fixed pool of addresses an unmodified kaspad dials as permanent peers,
//!   each handed to a punched session (no AddPeer, so no unsafe RPC).
//! - [`peering`]: automatic peering: discovers peers of the node's network, keeps a target
//!   of punched outbound peers through the slots, caps inbound ones, mirrors bans.
//!
//! The demo built on these (two punched Kaspa nodes, on loopback or behind NAT routers) is
//! the `punch-demo` crate in `demo/`; kaspad with punch is `kaspad-punch`.

pub mod alias;
pub mod bridge;
pub mod handshake;
pub mod link;
pub mod node;
pub mod peering;
pub mod seam;
pub mod slots;

pub use alias::{AliasError, AliasRange, AliasTable, Aliases};
pub use bridge::{Bridge, BridgeConfig, BridgeError, BridgedPeer};
pub use node::{KaspaNode, NodeConfig};

/// Locks a mutex, ignoring poisoning: a panic while one of these locks is held is a bug, and
/// the small tables behind them stay usable.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
