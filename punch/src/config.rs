//! Client configuration, with documented defaults.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use punch_proto::message::{check_network, NetworkNameError};
use punch_proto::{Keypair, PeerId};

use crate::deny::Denylist;
use crate::error::Error;

/// How long after the agreed moment a punch keeps trying: covers the kernel's SYN retransmits
/// at 1 s and 3 s and a few paced redials against RST-answering routers (DCUtR uses 10 s too).
pub const DEFAULT_PUNCH_WINDOW: Duration = Duration::from_secs(10);
/// Pause between redials of one candidate: a router that answered our early SYN with a RST
/// gets a fresh SYN soon, but not back to back (which would just collect more RSTs).
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_millis(250);
/// One dial waits this long: long enough for the kernel to retransmit the SYN once or twice
/// (at 1 s and 3 s) through a hole the peer's SYN opened meanwhile.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(4);
/// Preamble + KK handshake (+ confirmation) must finish in this time: 2 RTTs on any real path.
pub const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connect request waits for the rendezvous's offer or refusal.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds of the reconnect backoff to the rendezvous (doubling, with jitter): quick after a
/// restart of the server, gentle when it is down for long.
pub const DEFAULT_RECONNECT_MIN: Duration = Duration::from_millis(200);
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(10);
/// Accepted streams whose preamble is still being read, at most: strangers cannot pin more.
pub const DEFAULT_MAX_PENDING_INBOUND: usize = 64;

/// Streams open at once on one session, both directions (yamux `max_stream_count`; more are
/// reset by yamux at once): a Kaspa peer needs one stream, a browser-like client a few dozen,
/// and tokio-yamux's own 65,535 let one peer turn a session into thousands of connections.
pub const DEFAULT_MAX_STREAMS_PER_SESSION: usize = 256;

/// Which peers may punch to us. Sent to the rendezvous in the registration (at most
/// [`punch_proto::message::MAX_ALLOW`] ids), which refuses other requesters before they cost
/// us anything or spend any budget; checked again here when an offer arrives, before anything
/// is dialed (a rendezvous that does not filter, or a longer list): a refused peer costs us
/// one log line at most, never a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allow {
    /// Any peer the rendezvous introduces (a public service).
    Any,
    /// Only these identities.
    Only(HashSet<PeerId>),
}

impl Allow {
    pub fn permits(&self, peer: &PeerId) -> bool {
        match self {
            Allow::Any => true,
            Allow::Only(ids) => ids.contains(peer),
        }
    }
}

/// Configuration of a punch [`crate::Client`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Rendezvous address.
    pub rendezvous: SocketAddr,
    /// Rendezvous identity (pinned: a server without this key fails the handshake).
    pub rendezvous_key: PeerId,
    /// Our identity.
    pub keypair: Keypair,
    /// Local address of the shared punch port (port 0: chosen by the OS, then kept across
    /// reconnects so the NAT mapping stays the same).
    pub bind: SocketAddr,
    /// Whether other peers may punch to us.
    pub accept_inbound: bool,
    /// Which of them (when `accept_inbound`). The library default is [`Allow::Any`], as
    /// before the allow-list existed; `punch listen` makes its operator choose.
    pub allow: Allow,
    /// See [`DEFAULT_PUNCH_WINDOW`].
    pub punch_window: Duration,
    /// See [`DEFAULT_RETRY_INTERVAL`].
    pub retry_interval: Duration,
    /// See [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// See [`DEFAULT_AUTH_TIMEOUT`].
    pub auth_timeout: Duration,
    /// See [`DEFAULT_REQUEST_TIMEOUT`].
    pub request_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// See [`DEFAULT_MAX_PENDING_INBOUND`].
    pub max_pending_inbound: usize,
    /// yamux per-stream window; see [`crate::session`].
    pub stream_window: u32,
    /// See [`DEFAULT_MAX_STREAMS_PER_SESSION`].
    pub max_streams_per_session: usize,
    /// What one session may make us hold for a hostile or stalled peer; see [`crate::guard`].
    pub guard: crate::guard::GuardLimits,
    /// Use the rendezvous's relay when an offer carries a ticket and no direct stream
    /// authenticated by the ticket's time (on by default: without it a pair behind a
    /// symmetric NAT cannot connect at all).
    pub relay: bool,
    /// Dial the peer directly and take its direct streams (on by default). Off: relay only,
    /// to test or diagnose the relay.
    pub direct: bool,
    /// Our network (`kaspa-mainnet`, `kaspa-testnet-10`, ...: at most
    /// [`punch_proto::message::MAX_NETWORK_LEN`] bytes of `[a-z0-9-]`), sent in the
    /// registration. With one, the rendezvous lists us to [`crate::Client::discover`] of the
    /// same network (when we accept inbound) and refuses punches with peers that registered
    /// another network ([`Error::WrongNetwork`]). `None` (the default): no network, as before;
    /// [`crate::Client::discover`] then fails with [`Error::NoNetwork`].
    pub network: Option<String>,
    /// Identities and IPs we refuse to punch with (empty by default); see [`crate::deny`].
    /// Clone the handle before starting the client to add entries while it runs.
    pub deny: Denylist,
}

impl Config {
    pub fn new(rendezvous: SocketAddr, rendezvous_key: PeerId, keypair: Keypair) -> Self {
        let bind = if rendezvous.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        };
        Self {
            rendezvous,
            rendezvous_key,
            keypair,
            bind: bind.parse().expect("valid literal"),
            accept_inbound: true,
            allow: Allow::Any,
            punch_window: DEFAULT_PUNCH_WINDOW,
            retry_interval: DEFAULT_RETRY_INTERVAL,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            auth_timeout: DEFAULT_AUTH_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            reconnect_min: DEFAULT_RECONNECT_MIN,
            reconnect_max: DEFAULT_RECONNECT_MAX,
            max_pending_inbound: DEFAULT_MAX_PENDING_INBOUND,
            stream_window: crate::session::DEFAULT_STREAM_WINDOW,
            max_streams_per_session: DEFAULT_MAX_STREAMS_PER_SESSION,
            guard: crate::guard::GuardLimits::default(),
            relay: true,
            direct: true,
            network: None,
            deny: Denylist::new(),
        }
    }

    /// Checks what [`crate::Client::start`] cannot start with: a network name that is empty or
    /// not valid on the wire ([`Error::InvalidNetwork`], the local configuration's fault).
    // The client's one error type, as `Client::start` returns it; called once, at start.
    #[allow(clippy::result_large_err)]
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(network) = &self.network {
            let checked = if network.is_empty() {
                Err(NetworkNameError::Empty)
            } else {
                check_network(network)
            };
            checked.map_err(|source| Error::InvalidNetwork {
                network: network.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_names_are_validated() {
        let key = Keypair::from_secret(&[7; 32]).unwrap();
        let mut c = Config::new("127.0.0.1:7717".parse().unwrap(), key.public(), key);
        assert!(c.validate().is_ok(), "no network");
        c.network = Some("kaspa-testnet-10".into());
        assert!(c.validate().is_ok());
        let long = "n".repeat(65);
        for (bad, want) in [
            ("", NetworkNameError::Empty),
            ("Kaspa-mainnet", NetworkNameError::BadChar { ch: 'K' }),
            (long.as_str(), NetworkNameError::TooLong { len: 65 }),
        ] {
            c.network = Some(bad.to_owned());
            match c.validate() {
                Err(Error::InvalidNetwork { network, source }) => {
                    assert_eq!((network.as_str(), source), (bad, want));
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
