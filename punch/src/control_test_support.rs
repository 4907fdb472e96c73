//! Fixtures the control machine's unit tests share: a configuration, a peer id, a local
//! address, and draining the machine's actions.

use super::*;

pub const MS: Duration = Duration::from_millis(1);

/// A client that accepts anyone, on no network, with the default timeouts and backoff.
pub fn config() -> ControlConfig {
    ControlConfig {
        rendezvous: "198.51.100.1:7717".parse().expect("an address"),
        accept_inbound: true,
        allow: Allow::Any,
        network: String::new(),
        deny: Denylist::new(),
        handshake_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        reconnect_min: 200 * MS,
        reconnect_max: Duration::from_secs(10),
    }
}

/// The punch port's local address.
pub fn local() -> SocketAddr {
    "192.168.1.2:4000".parse().expect("an address")
}

pub fn peer(b: u8) -> PeerId {
    PeerId::from_bytes([b; 32]).expect("a valid key")
}

/// Every action the machine has queued, in order.
pub fn drain(c: &mut Control<u32>) -> Vec<Action<u32>> {
    std::iter::from_fn(|| c.poll_action()).collect()
}
