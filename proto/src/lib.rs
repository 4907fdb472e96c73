//! Wire protocol of punch, shared by the rendezvous server and the client library.
//!
//! - [`identity`]: a peer is its Noise static key; one textual form, key files.
//! - [`frame`]: 2-byte length-prefixed frames with a hard maximum checked before allocation.
//! - [`noise`]: the typed Noise handshakes (XK to the rendezvous, KK between peers).
//! - [`message`]: control messages as domain types; protobuf stays inside this crate.
//! - [`channel`]: an encrypted, framed control channel over any async byte stream.
//! - [`relay`]: the first bytes of a relay connection (hello, refusal).

pub mod channel;
pub mod frame;
pub mod identity;
pub mod message;
pub mod noise;
pub mod relay;

/// Generated protobuf types. Private: other crates use the domain types in [`message`].
mod pb {
    #![allow(missing_debug_implementations, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/punch.control.v1.rs"));
}

pub use identity::{Keypair, PeerId};
pub use noise::Role;
