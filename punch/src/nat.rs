//! What the NAT check says about our NAT, and what that means for a punch: pure functions,
//! no I/O.
//!
//! After each registration the client opens a second connection *from the punch port* to the
//! rendezvous's NAT check port (named in `Registered`), runs the control handshake with
//! `Register { probe: true }`, reads the address the server saw, and waits for the server to
//! close:
//!
//! ```text
//! client (punch port)                      rendezvous (NAT check port)
//!   Noise XK 1, 2, 3 (+ Register { probe })  ->
//!                                            <-  Registered { observed }, then close
//! ```
//!
//! [`classify`] compares that address with the one the control connection was seen at. The
//! same address for both destinations means an endpoint-independent mapping: a peer dialing
//! the observed address reaches the mapping our punch dials leave from. A different one
//! ("symmetric" NAT) means our dials to a peer leave from a port nobody has seen, so against
//! a peer behind such a NAT too ([`direct_outlook`]) a direct punch cannot work and only the
//! relay can connect the two. The rendezvous classifies every peer the same way and names the
//! peer's mapping in each offer ([`punch_proto::message::Offer::peer_nat`]).
//!
//! The check's two destinations are two ports of one IP: it tells endpoint-independent
//! mapping from the address-and-port-dependent kind (Linux `--random-fully`, most carrier
//! NATs that break punching), not from an address-dependent one, which looks independent
//! here. A failed check is never fatal: the mapping is then [`NatMapping::Unknown`].

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use punch_proto::message::NatMapping;
use punch_proto::message::{ErrorCode, Register, PROTOCOL_VERSION};

/// Why a NAT check gave no answer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum NatCheckError {
    /// The rendezvous named no NAT check port (it has none, or is older).
    #[error("the rendezvous offers no NAT check")]
    NotOffered,
    /// The TCP connection from the punch port could not be made (a firewall, or the port is
    /// not reachable at the rendezvous's IP).
    #[error("connecting to the NAT check at {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        source: Arc<std::io::Error>,
    },
    /// The rendezvous broke the protocol or the connection (handshake, framing, decoding).
    #[error("NAT check at {addr}: {source}")]
    Channel {
        addr: SocketAddr,
        source: Arc<punch_proto::channel::ChannelError>,
    },
    /// The rendezvous refused the probe.
    #[error("the NAT check at {addr} refused the probe ({code:?}): {detail}")]
    Refused {
        addr: SocketAddr,
        code: ErrorCode,
        detail: String,
    },
    /// The rendezvous answered with something other than the observed address.
    #[error("the NAT check at {addr} answered with an unexpected message")]
    Unexpected { addr: SocketAddr },
    #[error("no answer from the NAT check within {0:?}")]
    Timeout(Duration),
}

/// What the NAT check says about our NAT, for the punch port (see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct NatBehaviour {
    /// How the NAT maps the punch port; [`NatMapping::Unknown`] when the check failed
    /// ([`NatBehaviour::check_error`] says why).
    pub mapping: NatMapping,
    /// The rendezvous saw the punch port's own number: the NAT (if any) keeps source ports.
    pub port_preserved: bool,
    /// The rendezvous saw our own local address: no NAT between us (a public address, or a
    /// rendezvous on our own network).
    pub public: bool,
    /// The control connection's local address (the punch port).
    pub local: SocketAddr,
    /// Where the rendezvous saw the control connection.
    pub observed: SocketAddr,
    /// Where the rendezvous saw the NAT check's connection, when it answered.
    pub probe_observed: Option<SocketAddr>,
    /// Why there is no mapping, when the check failed.
    pub check_error: Option<NatCheckError>,
}

impl PartialEq for NatCheckError {
    /// Errors compare by their text (the I/O and channel errors inside are not comparable).
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

/// The NAT behaviour from the control connection (`local`, seen at `observed`) and the NAT
/// check's answer (the address the probe from the same port was seen at).
pub fn classify(
    local: SocketAddr,
    observed: SocketAddr,
    probe: Result<SocketAddr, NatCheckError>,
) -> NatBehaviour {
    let (mapping, probe_observed, check_error) = match probe {
        Ok(probe) => (
            NatMapping::from_observed(observed, probe),
            Some(probe),
            None,
        ),
        Err(e) => (NatMapping::Unknown, None, Some(e)),
    };
    NatBehaviour {
        mapping,
        port_preserved: observed.port() == local.port(),
        public: observed == local,
        local,
        observed,
        probe_observed,
        check_error,
    }
}

impl NatBehaviour {
    /// Whether two results say the same about the NAT (addresses and mapping; the error text
    /// and the probe's address aside), to log a check at info only when it says something new.
    pub fn same_as(&self, other: &NatBehaviour) -> bool {
        (
            self.mapping,
            self.port_preserved,
            self.public,
            self.observed,
        ) == (
            other.mapping,
            other.port_preserved,
            other.public,
            other.observed,
        )
    }
}

impl fmt::Display for NatBehaviour {
    /// One line: `endpoint-independent mapping, port preserved (observed 203.0.113.5:40001)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.public && self.mapping != NatMapping::EndpointDependent {
            write!(f, "no NAT (observed {})", self.observed)?;
        } else {
            let port = if self.port_preserved {
                "port preserved"
            } else {
                "port not preserved"
            };
            match (self.mapping, self.probe_observed) {
                (NatMapping::EndpointDependent, Some(probe)) => write!(
                    f,
                    "endpoint-dependent mapping, {port} (observed {}, and {probe} for a \
                     second destination)",
                    self.observed
                )?,
                (mapping, _) => {
                    write!(f, "{mapping} mapping, {port} (observed {})", self.observed)?
                }
            }
        }
        if let Some(e) = &self.check_error {
            write!(f, "; check failed: {e}")?;
        }
        Ok(())
    }
}

/// What the two NAT mappings say about a direct punch between us and a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectOutlook {
    /// Nothing speaks against it (or one side is unknown).
    Possible,
    /// One side's mapping is endpoint-dependent: a direct punch works only if the other side
    /// takes unsolicited connections (a public host without a firewall); otherwise the relay.
    OneSideDependent {
        /// The endpoint-dependent side is ours (else the peer's).
        ours: bool,
    },
    /// Both mappings are endpoint-dependent: neither side's dials come from an address the
    /// other knows, so a direct punch cannot work; only the relay connects the two.
    Impossible,
}

/// The outlook of a direct punch between our NAT (`ours`, `None` before a check finished)
/// and the peer's mapping as the rendezvous classified it.
pub fn direct_outlook(ours: Option<&NatBehaviour>, peer: NatMapping) -> DirectOutlook {
    let ours = ours.map_or(NatMapping::Unknown, |b| b.mapping);
    match (ours, peer) {
        (NatMapping::EndpointDependent, NatMapping::EndpointDependent) => DirectOutlook::Impossible,
        (NatMapping::EndpointDependent, _) => DirectOutlook::OneSideDependent { ours: true },
        (_, NatMapping::EndpointDependent) => DirectOutlook::OneSideDependent { ours: false },
        _ => DirectOutlook::Possible,
    }
}

/// The registration payload of a NAT check: a probe, nothing else (the rendezvous registers
/// nothing for it and needs no addresses, allow-list or network).
pub fn probe_message() -> Register {
    Register {
        version: PROTOCOL_VERSION,
        local_addrs: Vec::new(),
        accept_inbound: false,
        allow: Vec::new(),
        network: String::new(),
        probe: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_home_router_keeping_the_port() {
        let local = sa("192.168.1.2:40001");
        let observed = sa("203.0.113.5:40001");
        let b = classify(local, observed, Ok(observed));
        assert_eq!(b.mapping, NatMapping::EndpointIndependent);
        assert!(b.port_preserved && !b.public);
        assert_eq!(
            b.to_string(),
            "endpoint-independent mapping, port preserved (observed 203.0.113.5:40001)"
        );
    }

    #[test]
    fn a_symmetric_nat() {
        let local = sa("192.168.1.2:40001");
        let observed = sa("203.0.113.5:51000");
        let b = classify(local, observed, Ok(sa("203.0.113.5:62000")));
        assert_eq!(b.mapping, NatMapping::EndpointDependent);
        assert!(!b.port_preserved && !b.public);
        assert_eq!(b.probe_observed, Some(sa("203.0.113.5:62000")));
        assert_eq!(
            b.to_string(),
            "endpoint-dependent mapping, port not preserved (observed 203.0.113.5:51000, and \
             203.0.113.5:62000 for a second destination)"
        );
    }

    #[test]
    fn no_nat_and_a_failed_check() {
        let local = sa("198.51.100.50:7000");
        let b = classify(local, local, Ok(local));
        assert_eq!(b.mapping, NatMapping::EndpointIndependent);
        assert!(b.public && b.port_preserved);
        assert_eq!(b.to_string(), "no NAT (observed 198.51.100.50:7000)");

        let failed = classify(
            sa("192.168.1.2:40001"),
            sa("203.0.113.5:40001"),
            Err(NatCheckError::Timeout(Duration::from_secs(5))),
        );
        assert_eq!(failed.mapping, NatMapping::Unknown);
        assert!(
            failed.port_preserved,
            "known from the control connection alone"
        );
        assert_eq!(
            failed.to_string(),
            "unknown mapping, port preserved (observed 203.0.113.5:40001); check failed: no \
             answer from the NAT check within 5s"
        );
        assert!(!failed.same_as(&classify(
            sa("192.168.1.2:40001"),
            sa("203.0.113.5:40001"),
            Ok(sa("203.0.113.5:40001"))
        )));
    }

    #[test]
    fn outlooks() {
        use DirectOutlook::*;
        use NatMapping::*;
        let ours = |m: NatMapping| NatBehaviour {
            mapping: m,
            ..classify(
                sa("10.0.0.2:1"),
                sa("203.0.113.5:1"),
                Ok(sa("203.0.113.5:1")),
            )
        };
        let cases = [
            (EndpointDependent, EndpointDependent, Impossible),
            (
                EndpointDependent,
                EndpointIndependent,
                OneSideDependent { ours: true },
            ),
            (EndpointDependent, Unknown, OneSideDependent { ours: true }),
            (
                EndpointIndependent,
                EndpointDependent,
                OneSideDependent { ours: false },
            ),
            (Unknown, EndpointDependent, OneSideDependent { ours: false }),
            (EndpointIndependent, EndpointIndependent, Possible),
            (Unknown, Unknown, Possible),
        ];
        for (a, b, want) in cases {
            assert_eq!(direct_outlook(Some(&ours(a)), b), want, "{a:?} {b:?}");
        }
        assert_eq!(
            direct_outlook(None, EndpointDependent),
            OneSideDependent { ours: false }
        );
    }
}
