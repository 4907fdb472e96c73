//! Domain types of the control protocol and their conversion to and from protobuf.
//!
//! This is the only module that touches `pb` types: everything past it works with the types
//! below, whose invariants (32-byte identities, valid addresses, bounded lists, a known role)
//! hold by construction. Message sequence on a control connection:
//!
//! ```text
//! client                                   server
//!   Noise XK 1, 2, 3 (+ Register)   ->
//!                                   <-     Registered { observed, nat_check_port }
//!   Ping / Pong                     <->    Ping / Pong        (both directions, RTT samples)
//!   Connect { peer }                ->
//!                                   <-     Offer (to both peers) | Error
//!   Discover { max }                ->
//!                                   <-     Discovered { peers } | Error
//!                                   <-     RelayEnded (to both peers of a relayed session)
//!                                   <-     GoingAway { reconnect_within }, then close
//! ```
//!
//! An offer may carry a [`RelayTicket`]: the relay connection's own bytes are in
//! [`crate::relay`].
//!
//! NAT check, on a second connection from the same local port to `nat_check_port`:
//!
//! ```text
//!   Noise XK 1, 2, 3 (+ Register { probe: true })  ->
//!                                                  <-  Registered { observed }, then close
//! ```
//!
//! The server compares the two observed addresses ([`NatMapping::from_observed`]) and passes
//! the result on in offers to the peer's partners ([`Offer::peer_nat`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use prost::Message;

use crate::identity::PeerId;
use crate::noise::Role;
use crate::pb;

/// Version of the control protocol carried in [`Register`].
pub const PROTOCOL_VERSION: u32 = 1;
/// At most this many local addresses per peer: a host with more interfaces than this is rare,
/// and every address is a dial the other side makes.
pub const MAX_LOCAL_ADDRS: usize = 16;
/// At most this many identities in a registration's allow-list. A node names the few peers
/// it serves (a Kaspa node keeps 8 outbound and some dozens of inbound peers); 64 covers that
/// and bounds what the server stores per registered peer (64 x 32 bytes = 2 KiB). A peer that
/// must serve more uses an empty list (anyone) and filters itself.
pub const MAX_ALLOW: usize = 64;
/// A network name (`Register::network`) is at most this many bytes. Kaspa's longest,
/// `kaspa-testnet-10`, has 16; 64 leaves room for others while bounding what the server stores
/// per peer and per network index.
pub const MAX_NETWORK_LEN: usize = 64;
/// At most this many identities in one `Discovered` answer: four times the server's default
/// sample (16), enough for a node filling its outbound slots in one round, and 2 KiB on the
/// wire. A server asked for more answers with at most this many.
pub const MAX_DISCOVERED: usize = 64;
/// The longest reconnect window a `GoingAway` may give (decoding refuses more, encoding
/// sends at most this). A server derives its window from the peers it held and its admission
/// rate: 10,000 peers at 100 registrations a second is 100 s. Ten minutes is far beyond that;
/// a peer told to stay away longer would be unreachable for punches that long, so a larger
/// value is a broken (or hostile) server, not a plan.
pub const MAX_RECONNECT_WITHIN: Duration = Duration::from_secs(600);
/// Error details are for humans and logs; longer text is truncated when encoding and refused
/// when decoding.
pub const MAX_DETAIL_LEN: usize = 256;

/// Why a control message could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("not a valid protobuf message: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("message has no content")]
    Empty,
    #[error("missing field {0}")]
    Missing(&'static str),
    #[error("invalid socket address (ip of {ip_len} bytes, port {port})")]
    Address { ip_len: usize, port: u32 },
    #[error("invalid peer identity: {0}")]
    Peer(#[from] crate::identity::KeyError),
    #[error("invalid role {0}")]
    Role(i32),
    #[error("{field} has {len} entries, more than {max}")]
    TooMany {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} is {len} bytes, not {expected}")]
    Length {
        field: &'static str,
        len: usize,
        expected: usize,
    },
    #[error("{field} is {len} bytes, more than {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} names the same identity twice")]
    Duplicate { field: &'static str },
    #[error("invalid network name: {0}")]
    Network(#[from] NetworkNameError),
    #[error("{field} is {value_ms} ms, more than {max_ms} ms")]
    TooLate {
        field: &'static str,
        value_ms: u64,
        max_ms: u64,
    },
    #[error("{field} {value} is not a port number")]
    Port { field: &'static str, value: u32 },
}

/// Why a network name is not valid (see [`check_network`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkNameError {
    /// Where a name is required (a client's configuration); on the wire empty means none.
    #[error("empty")]
    Empty,
    #[error("{len} bytes, more than {max}", max = MAX_NETWORK_LEN)]
    TooLong { len: usize },
    #[error("character {ch:?} is not one of a-z, 0-9 and -")]
    BadChar { ch: char },
}

/// Checks a network name: at most [`MAX_NETWORK_LEN`] bytes of `[a-z0-9-]`. The empty name
/// is valid and means "no network". The rendezvous compares names byte for byte, so a
/// restricted alphabet keeps `Kaspa-Mainnet` and look-alike Unicode from splitting a network.
pub fn check_network(name: &str) -> Result<(), NetworkNameError> {
    if name.len() > MAX_NETWORK_LEN {
        return Err(NetworkNameError::TooLong { len: name.len() });
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        Some(ch) => Err(NetworkNameError::BadChar { ch }),
        None => Ok(()),
    }
}

/// Registration, sent in the third handshake message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register {
    pub version: u32,
    pub local_addrs: Vec<SocketAddr>,
    pub accept_inbound: bool,
    /// Who may punch to this peer; empty: anyone. At most [`MAX_ALLOW`] (encoding keeps the
    /// first [`MAX_ALLOW`], decoding refuses more).
    pub allow: Vec<PeerId>,
    /// The peer's network (e.g. `kaspa-mainnet`); empty: none. Valid by [`check_network`]
    /// (decoding refuses anything else; encode only what [`check_network`] accepts).
    pub network: String,
    /// A NAT check, not a registration: answered with the observed address and closed.
    pub probe: bool,
}

/// Messages from a client after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientMsg {
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
    Connect {
        request_id: u64,
        peer: PeerId,
    },
    /// Punch again to `peer` to move the relayed session `session_id` to a direct path.
    Upgrade {
        request_id: u64,
        peer: PeerId,
        session_id: u64,
    },
    /// Ask for a random sample of at most `max` accepting peers of our own network.
    Discover {
        request_id: u64,
        max: u32,
    },
}

/// The server's first message after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub observed: SocketAddr,
    pub ping_interval: Duration,
    /// The server's NAT check port (same IP as the control connection's); `None`: no check.
    pub nat_check_port: Option<u16>,
}

/// A NAT's mapping behaviour for one local port (RFC 4787 terms), as a NAT check shows it:
/// the server sees a control connection and a probe from the same local port, to two of its
/// ports. Two ports of one IP tell apart endpoint-independent mapping and the
/// address-and-port-dependent ("symmetric") kind; an address-dependent NAT (rare) looks
/// endpoint-independent here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NatMapping {
    /// Not checked (yet), or the check failed.
    #[default]
    Unknown,
    /// Both seen at the same address (this includes no NAT at all): a peer dialing the
    /// observed address reaches the mapping our punch dials come from.
    EndpointIndependent,
    /// A different port or address per destination: our punch dials leave from a mapping
    /// nobody has seen, so a peer behind a NAT of its own cannot answer them.
    EndpointDependent,
}

impl NatMapping {
    /// Classifies from the address seen for the control connection and the one seen for a
    /// probe from the same local port to another destination.
    pub fn from_observed(control: SocketAddr, probe: SocketAddr) -> Self {
        if control == probe {
            NatMapping::EndpointIndependent
        } else {
            NatMapping::EndpointDependent
        }
    }
}

impl std::fmt::Display for NatMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NatMapping::Unknown => "unknown",
            NatMapping::EndpointIndependent => "endpoint-independent",
            NatMapping::EndpointDependent => "endpoint-dependent",
        })
    }
}

fn nat_to_pb(nat: NatMapping) -> i32 {
    (match nat {
        NatMapping::Unknown => pb::NatMapping::Unspecified,
        NatMapping::EndpointIndependent => pb::NatMapping::EndpointIndependent,
        NatMapping::EndpointDependent => pb::NatMapping::EndpointDependent,
    }) as i32
}

/// A value this version does not know (a newer server) is `Unknown`: the mapping is a hint.
fn nat_from_pb(raw: i32) -> NatMapping {
    match pb::NatMapping::try_from(raw) {
        Ok(pb::NatMapping::EndpointIndependent) => NatMapping::EndpointIndependent,
        Ok(pb::NatMapping::EndpointDependent) => NatMapping::EndpointDependent,
        Ok(pb::NatMapping::Unspecified) | Err(_) => NatMapping::Unknown,
    }
}

/// Instructions for one side of a punch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub session_id: u64,
    /// The request this answers on the requesting side; 0 on the target side.
    pub request_id: u64,
    pub peer: PeerId,
    pub peer_observed: SocketAddr,
    pub peer_local: Vec<SocketAddr>,
    pub role: Role,
    /// Wait this long after receiving the offer, then dial (what a client without the
    /// server's clock does; see `dial_at`).
    pub dial_delay: Duration,
    /// The dial moment on the server's clock (microseconds, see [`ServerMsg::Pong`]), the
    /// same in both offers: a client that has placed that clock on its own dials then,
    /// however late the offer reached it. `None` from a server that does not say.
    pub dial_at_us: Option<u64>,
    /// The relay fallback for this punch, when the server relays.
    pub relay: Option<RelayTicket>,
    /// This punch moves the relayed session with this id (between the same peers) to a
    /// direct connection ([`ClientMsg::Upgrade`]); such offers carry no relay ticket.
    pub upgrade: Option<u64>,
    /// The peer's NAT mapping, from its NAT check.
    pub peer_nat: NatMapping,
}

/// Length of a relay token.
pub const RELAY_TOKEN_LEN: usize = 16;

/// What one side of a punch presents to the rendezvous's relay (see [`crate::relay`]).
#[derive(Clone, PartialEq, Eq)]
pub struct RelayTicket {
    /// Random, one per side of one punch: it names the side and the punch to the relay, and
    /// only the two control channels carried it.
    pub token: [u8; RELAY_TOKEN_LEN],
    /// Open the relay connection when no direct stream has authenticated this long after
    /// the dial moment.
    pub after: Duration,
}

impl std::fmt::Debug for RelayTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a capability: logs show that there is one, not its bytes.
        f.debug_struct("RelayTicket")
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}

/// Why the relay ended a relayed session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum RelayEnd {
    #[error("the relay's byte limit per session was reached")]
    Bytes,
    #[error("the relay's time limit per session was reached")]
    Duration,
    #[error("nothing moved through the relay for its idle limit")]
    Idle,
    #[error("the relay is shutting down")]
    Shutdown,
    /// A reason this version does not know (a newer server).
    #[error("the relay ended the session (reason {0})")]
    Unknown(i32),
}

/// Typed reasons the server refuses something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    PeerOffline,
    PeerRefuses,
    RateLimited,
    SelfConnect,
    BadRequest,
    ServerFull,
    UnsupportedVersion,
    TooManyConnections,
    /// The target's allow-list does not name the requester.
    NotAllowed,
    /// Registration refused: too many registrations from the client's address or network.
    NetworkFull,
    /// The requester and the target registered different networks.
    WrongNetwork,
    /// A code this version does not know (a newer server).
    Unknown(i32),
}

/// An error reply from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    pub request_id: u64,
    pub code: ErrorCode,
    pub detail: String,
    pub retry_after: Option<Duration>,
}

/// Messages from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerMsg {
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
        /// The server's clock when it sent this pong: microseconds from an epoch of its own
        /// (its start), never 0. With the round trip of the ping it answers, the client
        /// places the server's clock on its own, and so [`Offer::dial_at_us`].
        server_time_us: Option<u64>,
    },
    Registered(Registered),
    Offer(Offer),
    Error(ErrorReply),
    /// The relay ended a relayed session (a limit, shutdown); sent to both peers.
    RelayEnded {
        session_id: u64,
        reason: RelayEnd,
    },
    /// The answer to [`ClientMsg::Discover`]: at most [`MAX_DISCOVERED`] distinct identities.
    Discovered {
        request_id: u64,
        peers: Vec<PeerId>,
    },
    /// The server is going away (shutting down, most often to restart) and closes the
    /// connection next: reconnect at a uniformly random moment within `reconnect_within`
    /// (at most [`MAX_RECONNECT_WITHIN`]), so that its peers do not all come back at once.
    GoingAway {
        reconnect_within: Duration,
    },
}

fn relay_end_to_pb(reason: RelayEnd) -> i32 {
    use pb::RelayEnd as P;
    (match reason {
        RelayEnd::Bytes => P::Bytes,
        RelayEnd::Duration => P::Duration,
        RelayEnd::Idle => P::Idle,
        RelayEnd::Shutdown => P::Shutdown,
        RelayEnd::Unknown(raw) => return raw,
    }) as i32
}

fn relay_end_from_pb(raw: i32) -> RelayEnd {
    use pb::RelayEnd as P;
    match P::try_from(raw) {
        Ok(P::Bytes) => RelayEnd::Bytes,
        Ok(P::Duration) => RelayEnd::Duration,
        Ok(P::Idle) => RelayEnd::Idle,
        Ok(P::Shutdown) => RelayEnd::Shutdown,
        Ok(P::Unspecified) | Err(_) => RelayEnd::Unknown(raw),
    }
}

fn addr_to_pb(addr: &SocketAddr) -> pb::SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    pb::SocketAddr {
        ip,
        port: u32::from(addr.port()),
    }
}

fn addr_from_pb(addr: &pb::SocketAddr) -> Result<SocketAddr, DecodeError> {
    let bad = || DecodeError::Address {
        ip_len: addr.ip.len(),
        port: addr.port,
    };
    let port = u16::try_from(addr.port).map_err(|_| bad())?;
    let ip = match addr.ip.len() {
        4 => IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(&addr.ip[..]).map_err(|_| bad())?,
        )),
        16 => IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(&addr.ip[..]).map_err(|_| bad())?,
        )),
        _ => return Err(bad()),
    };
    if port == 0 {
        return Err(bad());
    }
    Ok(SocketAddr::new(ip, port))
}

fn addrs_from_pb(
    field: &'static str,
    addrs: &[pb::SocketAddr],
) -> Result<Vec<SocketAddr>, DecodeError> {
    if addrs.len() > MAX_LOCAL_ADDRS {
        return Err(DecodeError::TooMany {
            field,
            len: addrs.len(),
            max: MAX_LOCAL_ADDRS,
        });
    }
    addrs.iter().map(addr_from_pb).collect()
}

/// A list of at most `max` distinct identities (32 bytes each, valid keys).
fn peers_from_pb(
    field: &'static str,
    peers: &[Vec<u8>],
    max: usize,
) -> Result<Vec<PeerId>, DecodeError> {
    if peers.len() > max {
        return Err(DecodeError::TooMany {
            field,
            len: peers.len(),
            max,
        });
    }
    let mut out: Vec<PeerId> = Vec::with_capacity(peers.len());
    for p in peers {
        let id = PeerId::try_from(&p[..])?;
        // At most `max` (64) entries: a linear scan is cheaper than hashing.
        if out.contains(&id) {
            return Err(DecodeError::Duplicate { field });
        }
        out.push(id);
    }
    Ok(out)
}

fn role_to_pb(role: Role) -> pb::Role {
    match role {
        Role::Initiator => pb::Role::Initiator,
        Role::Responder => pb::Role::Responder,
    }
}

fn code_to_pb(code: ErrorCode) -> i32 {
    use pb::ErrorCode as P;
    (match code {
        ErrorCode::PeerOffline => P::PeerOffline,
        ErrorCode::PeerRefuses => P::PeerRefuses,
        ErrorCode::RateLimited => P::RateLimited,
        ErrorCode::SelfConnect => P::SelfConnect,
        ErrorCode::BadRequest => P::BadRequest,
        ErrorCode::ServerFull => P::ServerFull,
        ErrorCode::UnsupportedVersion => P::UnsupportedVersion,
        ErrorCode::TooManyConnections => P::TooManyConnections,
        ErrorCode::NotAllowed => P::NotAllowed,
        ErrorCode::WrongNetwork => P::WrongNetwork,
        ErrorCode::NetworkFull => P::NetworkFull,
        ErrorCode::Unknown(raw) => return raw,
    }) as i32
}

fn code_from_pb(raw: i32) -> ErrorCode {
    use pb::ErrorCode as P;
    match P::try_from(raw) {
        Ok(P::PeerOffline) => ErrorCode::PeerOffline,
        Ok(P::PeerRefuses) => ErrorCode::PeerRefuses,
        Ok(P::RateLimited) => ErrorCode::RateLimited,
        Ok(P::SelfConnect) => ErrorCode::SelfConnect,
        Ok(P::BadRequest) => ErrorCode::BadRequest,
        Ok(P::ServerFull) => ErrorCode::ServerFull,
        Ok(P::UnsupportedVersion) => ErrorCode::UnsupportedVersion,
        Ok(P::TooManyConnections) => ErrorCode::TooManyConnections,
        Ok(P::NotAllowed) => ErrorCode::NotAllowed,
        Ok(P::NetworkFull) => ErrorCode::NetworkFull,
        Ok(P::WrongNetwork) => ErrorCode::WrongNetwork,
        Ok(P::Unspecified) | Err(_) => ErrorCode::Unknown(raw),
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl Register {
    pub fn encode(&self) -> Vec<u8> {
        pb::Register {
            version: self.version,
            local_addrs: self
                .local_addrs
                .iter()
                .take(MAX_LOCAL_ADDRS)
                .map(addr_to_pb)
                .collect(),
            accept_inbound: self.accept_inbound,
            allow: self
                .allow
                .iter()
                .take(MAX_ALLOW)
                .map(|p| p.as_bytes().to_vec())
                .collect(),
            network: self.network.clone(),
            probe: self.probe,
        }
        .encode_to_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let m = pb::Register::decode(bytes)?;
        if m.allow.len() > MAX_ALLOW {
            return Err(DecodeError::TooMany {
                field: "allow",
                len: m.allow.len(),
                max: MAX_ALLOW,
            });
        }
        Ok(Self {
            version: m.version,
            local_addrs: addrs_from_pb("local_addrs", &m.local_addrs)?,
            accept_inbound: m.accept_inbound,
            allow: m
                .allow
                .iter()
                .map(|p| PeerId::try_from(&p[..]))
                .collect::<Result<_, _>>()?,
            network: {
                check_network(&m.network)?;
                m.network
            },
            probe: m.probe,
        })
    }
}

impl ClientMsg {
    pub fn encode(&self) -> Vec<u8> {
        use pb::client_message::Kind;
        let kind = match self {
            ClientMsg::Ping { nonce } => Kind::Ping(pb::Ping { nonce: *nonce }),
            ClientMsg::Pong { nonce } => Kind::Pong(pb::Pong {
                nonce: *nonce,
                server_time_us: 0,
            }),
            ClientMsg::Connect { request_id, peer } => Kind::Connect(pb::ConnectRequest {
                request_id: *request_id,
                peer: peer.as_bytes().to_vec(),
            }),
            ClientMsg::Upgrade {
                request_id,
                peer,
                session_id,
            } => Kind::Upgrade(pb::UpgradeRequest {
                request_id: *request_id,
                peer: peer.as_bytes().to_vec(),
                session_id: *session_id,
            }),
            ClientMsg::Discover { request_id, max } => Kind::Discover(pb::Discover {
                request_id: *request_id,
                max: *max,
            }),
        };
        pb::ClientMessage { kind: Some(kind) }.encode_to_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        use pb::client_message::Kind;
        let m = pb::ClientMessage::decode(bytes)?;
        Ok(match m.kind.ok_or(DecodeError::Empty)? {
            Kind::Ping(p) => ClientMsg::Ping { nonce: p.nonce },
            Kind::Pong(p) => ClientMsg::Pong { nonce: p.nonce },
            Kind::Connect(c) => ClientMsg::Connect {
                request_id: c.request_id,
                peer: PeerId::try_from(&c.peer[..])?,
            },
            Kind::Upgrade(u) => ClientMsg::Upgrade {
                request_id: u.request_id,
                peer: PeerId::try_from(&u.peer[..])?,
                session_id: u.session_id,
            },
            Kind::Discover(d) => ClientMsg::Discover {
                request_id: d.request_id,
                max: d.max,
            },
        })
    }
}

impl ServerMsg {
    pub fn encode(&self) -> Vec<u8> {
        use pb::server_message::Kind;
        let kind = match self {
            ServerMsg::Ping { nonce } => Kind::Ping(pb::Ping { nonce: *nonce }),
            ServerMsg::Pong {
                nonce,
                server_time_us,
            } => Kind::Pong(pb::Pong {
                nonce: *nonce,
                server_time_us: server_time_us.unwrap_or(0),
            }),
            ServerMsg::Registered(r) => Kind::Registered(pb::Registered {
                observed: Some(addr_to_pb(&r.observed)),
                ping_interval_ms: millis(r.ping_interval),
                nat_check_port: r.nat_check_port.map_or(0, u32::from),
            }),
            ServerMsg::Offer(o) => Kind::Offer(pb::Offer {
                session_id: o.session_id,
                request_id: o.request_id,
                peer: o.peer.as_bytes().to_vec(),
                peer_observed: Some(addr_to_pb(&o.peer_observed)),
                peer_local: o
                    .peer_local
                    .iter()
                    .take(MAX_LOCAL_ADDRS)
                    .map(addr_to_pb)
                    .collect(),
                role: role_to_pb(o.role) as i32,
                dial_delay_ms: millis(o.dial_delay),
                dial_at_us: o.dial_at_us.unwrap_or(0),
                relay_token: o
                    .relay
                    .as_ref()
                    .map(|t| t.token.to_vec())
                    .unwrap_or_default(),
                relay_after_ms: o.relay.as_ref().map(|t| millis(t.after)).unwrap_or(0),
                upgrade_session: o.upgrade.unwrap_or(0),
                peer_nat: nat_to_pb(o.peer_nat),
            }),
            ServerMsg::RelayEnded { session_id, reason } => Kind::RelayEnded(pb::RelayEnded {
                session_id: *session_id,
                reason: relay_end_to_pb(*reason),
            }),
            ServerMsg::Discovered { request_id, peers } => Kind::Discovered(pb::Discovered {
                request_id: *request_id,
                peers: peers
                    .iter()
                    .take(MAX_DISCOVERED)
                    .map(|p| p.as_bytes().to_vec())
                    .collect(),
            }),
            ServerMsg::GoingAway { reconnect_within } => Kind::GoingAway(pb::GoingAway {
                reconnect_within_ms: millis((*reconnect_within).min(MAX_RECONNECT_WITHIN)),
            }),
            ServerMsg::Error(e) => {
                let mut detail = e.detail.clone();
                if detail.len() > MAX_DETAIL_LEN {
                    let mut cut = MAX_DETAIL_LEN;
                    while !detail.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    detail.truncate(cut);
                }
                Kind::Error(pb::Error {
                    request_id: e.request_id,
                    code: code_to_pb(e.code),
                    detail,
                    retry_after_ms: e.retry_after.map(millis).unwrap_or(0),
                })
            }
        };
        pb::ServerMessage { kind: Some(kind) }.encode_to_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        use pb::server_message::Kind;
        let m = pb::ServerMessage::decode(bytes)?;
        Ok(match m.kind.ok_or(DecodeError::Empty)? {
            Kind::Ping(p) => ServerMsg::Ping { nonce: p.nonce },
            Kind::Pong(p) => ServerMsg::Pong {
                nonce: p.nonce,
                server_time_us: (p.server_time_us != 0).then_some(p.server_time_us),
            },
            Kind::Registered(r) => ServerMsg::Registered(Registered {
                observed: addr_from_pb(
                    r.observed
                        .as_ref()
                        .ok_or(DecodeError::Missing("observed"))?,
                )?,
                ping_interval: Duration::from_millis(u64::from(r.ping_interval_ms)),
                nat_check_port: match r.nat_check_port {
                    0 => None,
                    port => Some(u16::try_from(port).map_err(|_| DecodeError::Port {
                        field: "nat_check_port",
                        value: port,
                    })?),
                },
            }),
            Kind::Offer(o) => ServerMsg::Offer(Offer {
                session_id: o.session_id,
                request_id: o.request_id,
                peer: PeerId::try_from(&o.peer[..])?,
                peer_observed: addr_from_pb(
                    o.peer_observed
                        .as_ref()
                        .ok_or(DecodeError::Missing("peer_observed"))?,
                )?,
                peer_local: addrs_from_pb("peer_local", &o.peer_local)?,
                role: match pb::Role::try_from(o.role) {
                    Ok(pb::Role::Initiator) => Role::Initiator,
                    Ok(pb::Role::Responder) => Role::Responder,
                    _ => return Err(DecodeError::Role(o.role)),
                },
                dial_delay: Duration::from_millis(u64::from(o.dial_delay_ms)),
                dial_at_us: (o.dial_at_us != 0).then_some(o.dial_at_us),
                relay: match o.relay_token.len() {
                    0 => None,
                    RELAY_TOKEN_LEN => {
                        let mut token = [0u8; RELAY_TOKEN_LEN];
                        token.copy_from_slice(&o.relay_token);
                        Some(RelayTicket {
                            token,
                            after: Duration::from_millis(u64::from(o.relay_after_ms)),
                        })
                    }
                    len => {
                        return Err(DecodeError::Length {
                            field: "relay_token",
                            len,
                            expected: RELAY_TOKEN_LEN,
                        })
                    }
                },
                upgrade: (o.upgrade_session != 0).then_some(o.upgrade_session),
                peer_nat: nat_from_pb(o.peer_nat),
            }),
            Kind::RelayEnded(r) => ServerMsg::RelayEnded {
                session_id: r.session_id,
                reason: relay_end_from_pb(r.reason),
            },
            Kind::Discovered(d) => ServerMsg::Discovered {
                request_id: d.request_id,
                peers: peers_from_pb("peers", &d.peers, MAX_DISCOVERED)?,
            },
            Kind::GoingAway(g) => {
                let within = Duration::from_millis(u64::from(g.reconnect_within_ms));
                if within > MAX_RECONNECT_WITHIN {
                    return Err(DecodeError::TooLate {
                        field: "reconnect_within_ms",
                        value_ms: u64::from(g.reconnect_within_ms),
                        max_ms: millis(MAX_RECONNECT_WITHIN).into(),
                    });
                }
                ServerMsg::GoingAway {
                    reconnect_within: within,
                }
            }
            Kind::Error(e) => {
                if e.detail.len() > MAX_DETAIL_LEN {
                    return Err(DecodeError::TooLong {
                        field: "detail",
                        len: e.detail.len(),
                        max: MAX_DETAIL_LEN,
                    });
                }
                ServerMsg::Error(ErrorReply {
                    request_id: e.request_id,
                    code: code_from_pb(e.code),
                    detail: e.detail,
                    retry_after: (e.retry_after_ms > 0)
                        .then(|| Duration::from_millis(u64::from(e.retry_after_ms))),
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::KeyError;

    fn peer(b: u8) -> PeerId {
        PeerId::from_bytes([b; 32]).unwrap()
    }

    fn offer() -> Offer {
        Offer {
            session_id: 0x0102,
            request_id: 9,
            peer: peer(0x2a),
            peer_observed: "203.0.113.7:4000".parse().unwrap(),
            peer_local: vec![
                "192.168.1.5:4000".parse().unwrap(),
                "[2001:db8::1]:4000".parse().unwrap(),
            ],
            role: Role::Responder,
            dial_delay: Duration::from_millis(250),
            dial_at_us: Some(1_000_250),
            relay: Some(RelayTicket {
                token: [7; RELAY_TOKEN_LEN],
                after: Duration::from_millis(120),
            }),
            upgrade: None,
            peer_nat: NatMapping::EndpointDependent,
        }
    }

    #[test]
    fn server_messages_round_trip() {
        let msgs = vec![
            ServerMsg::Ping { nonce: u64::MAX },
            ServerMsg::Pong {
                nonce: 0,
                server_time_us: None,
            },
            ServerMsg::Pong {
                nonce: 7,
                server_time_us: Some(u64::MAX),
            },
            ServerMsg::Registered(Registered {
                observed: "198.51.100.1:65535".parse().unwrap(),
                ping_interval: Duration::from_secs(5),
                nat_check_port: None,
            }),
            ServerMsg::Offer(offer()),
            ServerMsg::Offer(Offer {
                relay: None,
                upgrade: Some(0x0101),
                ..offer()
            }),
            ServerMsg::RelayEnded {
                session_id: 9,
                reason: RelayEnd::Bytes,
            },
            ServerMsg::RelayEnded {
                session_id: 10,
                reason: RelayEnd::Unknown(77),
            },
            ServerMsg::Error(ErrorReply {
                request_id: 3,
                code: ErrorCode::RateLimited,
                detail: "slow down".into(),
                retry_after: Some(Duration::from_millis(1500)),
            }),
            ServerMsg::Error(ErrorReply {
                request_id: 4,
                code: ErrorCode::NotAllowed,
                detail: "not on the allow-list".into(),
                retry_after: None,
            }),
            ServerMsg::Error(ErrorReply {
                request_id: 0,
                code: ErrorCode::NetworkFull,
                detail: String::new(),
                retry_after: None,
            }),
            ServerMsg::Error(ErrorReply {
                request_id: 5,
                code: ErrorCode::WrongNetwork,
                detail: "peer is on another network".into(),
                retry_after: None,
            }),
            ServerMsg::Discovered {
                request_id: 6,
                peers: vec![peer(7), peer(8)],
            },
            ServerMsg::Discovered {
                request_id: 7,
                peers: vec![],
            },
            ServerMsg::GoingAway {
                reconnect_within: Duration::ZERO,
            },
            ServerMsg::GoingAway {
                reconnect_within: MAX_RECONNECT_WITHIN,
            },
            ServerMsg::Error(ErrorReply {
                request_id: 0,
                code: ErrorCode::Unknown(99),
                detail: String::new(),
                retry_after: None,
            }),
        ];
        for m in msgs {
            assert_eq!(ServerMsg::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn client_messages_round_trip() {
        for m in [
            ClientMsg::Ping { nonce: 1 },
            ClientMsg::Pong { nonce: 2 },
            ClientMsg::Connect {
                request_id: 77,
                peer: peer(3),
            },
            ClientMsg::Upgrade {
                request_id: 78,
                peer: peer(4),
                session_id: u64::MAX,
            },
            ClientMsg::Discover {
                request_id: 79,
                max: u32::MAX,
            },
        ] {
            assert_eq!(ClientMsg::decode(&m.encode()).unwrap(), m);
        }
        let reg = Register {
            version: PROTOCOL_VERSION,
            local_addrs: vec!["10.0.0.2:1234".parse().unwrap()],
            accept_inbound: true,
            allow: vec![peer(5)],
            network: String::new(),
            probe: false,
        };
        assert_eq!(Register::decode(&reg.encode()).unwrap(), reg);
        let reg = Register {
            network: "kaspa-testnet-10".into(),
            ..reg
        };
        assert_eq!(Register::decode(&reg.encode()).unwrap(), reg);
    }

    #[test]
    fn the_largest_registration_fits_message_three() {
        let v6: SocketAddr = "[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
            .parse()
            .unwrap();
        let reg = Register {
            version: u32::MAX,
            local_addrs: vec![v6; MAX_LOCAL_ADDRS],
            accept_inbound: true,
            allow: (0..MAX_ALLOW as u8).map(|i| peer(0x10 + i)).collect(),
            network: "n".repeat(MAX_NETWORK_LEN),
            probe: true,
        };
        // Noise XK message 3: the encrypted static key (32 + 16) and the payload's tag (16).
        let len = reg.encode().len() + 32 + 2 * crate::noise::TAG_LEN;
        assert!(len <= crate::frame::MAX_CONTROL_FRAME, "{len}");
    }

    #[test]
    fn exact_bytes_snapshots() {
        assert_eq!(
            ClientMsg::Ping { nonce: 300 }.encode(),
            [0x0a, 0x03, 0x08, 0xac, 0x02]
        );
        let connect = ClientMsg::Connect {
            request_id: 1,
            peer: peer(0x11),
        }
        .encode();
        let mut expected = vec![0x1a, 36, 0x08, 0x01, 0x12, 32];
        expected.extend_from_slice(&[0x11; 32]);
        assert_eq!(connect, expected);
        let reg = Register {
            version: 1,
            local_addrs: vec!["10.0.0.2:80".parse().unwrap()],
            accept_inbound: true,
            allow: vec![],
            network: String::new(),
            probe: false,
        }
        .encode();
        assert_eq!(
            reg,
            [0x08, 0x01, 0x12, 0x08, 0x0a, 0x04, 10, 0, 0, 2, 0x10, 80, 0x18, 0x01]
        );
        // The allow-list is field 4, each identity its 32 raw bytes.
        let reg = Register {
            version: 1,
            local_addrs: vec![],
            accept_inbound: true,
            allow: vec![peer(0x11)],
            network: String::new(),
            probe: false,
        }
        .encode();
        let mut expected = vec![0x08, 0x01, 0x18, 0x01, 0x22, 32];
        expected.extend_from_slice(&[0x11; 32]);
        assert_eq!(reg, expected);
        // The network is field 5, a string.
        let reg = Register {
            version: 1,
            local_addrs: vec![],
            accept_inbound: false,
            allow: vec![],
            network: "kaspa-simnet".into(),
            probe: false,
        }
        .encode();
        let mut expected = vec![0x08, 0x01, 0x2a, 12];
        expected.extend_from_slice(b"kaspa-simnet");
        assert_eq!(reg, expected);
        // Discover is ClientMessage field 5; Discovered is ServerMessage field 7.
        assert_eq!(
            ClientMsg::Discover {
                request_id: 2,
                max: 16
            }
            .encode(),
            [0x2a, 0x04, 0x08, 0x02, 0x10, 16]
        );
        let discovered = ServerMsg::Discovered {
            request_id: 3,
            peers: vec![peer(0x11)],
        }
        .encode();
        let mut expected = vec![0x3a, 36, 0x08, 0x03, 0x12, 32];
        expected.extend_from_slice(&[0x11; 32]);
        assert_eq!(discovered, expected);
        // GoingAway is ServerMessage field 8, its window in milliseconds.
        assert_eq!(
            ServerMsg::GoingAway {
                reconnect_within: Duration::from_millis(300)
            }
            .encode(),
            [0x42, 0x03, 0x08, 0xac, 0x02]
        );
    }

    #[test]
    fn going_away_windows_are_bounded() {
        let encode = |ms: u32| {
            pb::ServerMessage {
                kind: Some(pb::server_message::Kind::GoingAway(pb::GoingAway {
                    reconnect_within_ms: ms,
                })),
            }
            .encode_to_vec()
        };
        let max_ms = millis(MAX_RECONNECT_WITHIN);
        assert_eq!(
            ServerMsg::decode(&encode(max_ms)).unwrap(),
            ServerMsg::GoingAway {
                reconnect_within: MAX_RECONNECT_WITHIN
            }
        );
        assert!(matches!(
            ServerMsg::decode(&encode(max_ms + 1)),
            Err(DecodeError::TooLate {
                field: "reconnect_within_ms",
                ..
            })
        ));
        assert!(ServerMsg::decode(&encode(u32::MAX)).is_err());
        // Encoding sends at most the maximum, so what we send always decodes.
        let long = ServerMsg::GoingAway {
            reconnect_within: Duration::from_secs(86_400),
        };
        assert_eq!(
            ServerMsg::decode(&long.encode()).unwrap(),
            ServerMsg::GoingAway {
                reconnect_within: MAX_RECONNECT_WITHIN
            }
        );
    }

    #[test]
    fn nat_check_fields_round_trip_and_snapshot() {
        // Register.probe is field 6, a bool.
        let probe = Register {
            version: 1,
            local_addrs: vec![],
            accept_inbound: false,
            allow: vec![],
            network: String::new(),
            probe: true,
        };
        assert_eq!(probe.encode(), [0x08, 0x01, 0x30, 0x01]);
        assert_eq!(Register::decode(&probe.encode()).unwrap(), probe);
        // Registered.nat_check_port is field 3; absent (0) when there is no check port.
        let registered = |port| {
            ServerMsg::Registered(Registered {
                observed: "10.0.0.1:80".parse().unwrap(),
                ping_interval: Duration::from_millis(1),
                nat_check_port: port,
            })
        };
        assert_eq!(
            registered(Some(7718)).encode(),
            [
                0x1a, 0x0f, 0x0a, 0x08, 0x0a, 0x04, 10, 0, 0, 1, 0x10, 80, 0x10, 0x01, 0x18, 0xa6,
                0x3c
            ]
        );
        assert_eq!(registered(None).encode().len(), 14, "no field 3 when None");
        for port in [None, Some(1), Some(u16::MAX)] {
            let m = registered(port);
            assert_eq!(ServerMsg::decode(&m.encode()).unwrap(), m);
        }
        let too_big = pb::ServerMessage {
            kind: Some(pb::server_message::Kind::Registered(pb::Registered {
                observed: Some(addr_to_pb(&"10.0.0.1:80".parse().unwrap())),
                ping_interval_ms: 1,
                nat_check_port: 65_536,
            })),
        };
        assert!(matches!(
            ServerMsg::decode(&too_big.encode_to_vec()),
            Err(DecodeError::Port {
                field: "nat_check_port",
                value: 65_536
            })
        ));
        // Offer.peer_nat is field 11, an enum; unknown values (a newer server) read as Unknown.
        for nat in [
            NatMapping::Unknown,
            NatMapping::EndpointIndependent,
            NatMapping::EndpointDependent,
        ] {
            let m = ServerMsg::Offer(Offer {
                peer_nat: nat,
                ..offer()
            });
            assert_eq!(ServerMsg::decode(&m.encode()).unwrap(), m);
        }
        let mut o = pb::ServerMessage::decode(&ServerMsg::Offer(offer()).encode()[..]).unwrap();
        let Some(pb::server_message::Kind::Offer(ref mut inner)) = o.kind else {
            panic!("not an offer");
        };
        assert_eq!(inner.peer_nat, 2);
        inner.peer_nat = 9;
        let ServerMsg::Offer(back) = ServerMsg::decode(&o.encode_to_vec()).unwrap() else {
            panic!("not an offer");
        };
        assert_eq!(back.peer_nat, NatMapping::Unknown);
    }

    #[test]
    fn nat_mapping_from_two_observed_addresses() {
        let a: SocketAddr = "203.0.113.5:40001".parse().unwrap();
        assert_eq!(
            NatMapping::from_observed(a, a),
            NatMapping::EndpointIndependent
        );
        let other_port: SocketAddr = "203.0.113.5:51234".parse().unwrap();
        let other_ip: SocketAddr = "203.0.113.6:40001".parse().unwrap();
        for b in [other_port, other_ip] {
            assert_eq!(
                NatMapping::from_observed(a, b),
                NatMapping::EndpointDependent
            );
        }
    }

    #[test]
    fn network_names_are_checked() {
        for ok in ["", "kaspa-mainnet", "kaspa-testnet-10", "kaspa-simnet", "-"] {
            assert_eq!(check_network(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_network(&"a".repeat(MAX_NETWORK_LEN)), Ok(()));
        assert_eq!(
            check_network(&"a".repeat(MAX_NETWORK_LEN + 1)),
            Err(NetworkNameError::TooLong {
                len: MAX_NETWORK_LEN + 1
            })
        );
        for (bad, ch) in [
            ("Kaspa-mainnet", 'K'),
            ("kaspa mainnet", ' '),
            ("kaspa_mainnet", '_'),
            ("kaspa-m\u{e4}innet", '\u{e4}'),
        ] {
            assert_eq!(check_network(bad), Err(NetworkNameError::BadChar { ch }));
        }
        // Decoding refuses what the check refuses, with the typed reason.
        for bad in ["kaspa.mainnet".to_owned(), "x".repeat(MAX_NETWORK_LEN + 1)] {
            let pbm = pb::Register {
                version: 1,
                network: bad.clone(),
                ..Default::default()
            };
            assert!(
                matches!(
                    Register::decode(&pbm.encode_to_vec()),
                    Err(DecodeError::Network(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn discovered_lists_are_bounded_distinct_identities() {
        let encode = |peers: Vec<Vec<u8>>| {
            pb::ServerMessage {
                kind: Some(pb::server_message::Kind::Discovered(pb::Discovered {
                    request_id: 1,
                    peers,
                })),
            }
            .encode_to_vec()
        };
        let ids = |n: u8| (0..n).map(|i| vec![0x10 + i; 32]).collect::<Vec<_>>();
        assert!(ServerMsg::decode(&encode(ids(MAX_DISCOVERED as u8))).is_ok());
        assert!(matches!(
            ServerMsg::decode(&encode(ids(MAX_DISCOVERED as u8 + 1))),
            Err(DecodeError::TooMany {
                field: "peers",
                len: 65,
                max: MAX_DISCOVERED
            })
        ));
        assert!(matches!(
            ServerMsg::decode(&encode(vec![vec![0x11; 31]])),
            Err(DecodeError::Peer(KeyError::Length { found: 31, .. }))
        ));
        assert!(matches!(
            ServerMsg::decode(&encode(vec![
                vec![0x11; 32],
                vec![0x12; 32],
                vec![0x11; 32]
            ])),
            Err(DecodeError::Duplicate { field: "peers" })
        ));
        // Encoding keeps the first MAX_DISCOVERED, so what we send always decodes.
        let long = ServerMsg::Discovered {
            request_id: 2,
            peers: (0..100u8).map(|i| peer(0x10 + i)).collect(),
        };
        let ServerMsg::Discovered { peers, .. } = ServerMsg::decode(&long.encode()).unwrap() else {
            panic!("not Discovered");
        };
        assert_eq!(peers.len(), MAX_DISCOVERED);
    }

    #[test]
    fn rejects_invalid_content() {
        assert!(matches!(ClientMsg::decode(&[]), Err(DecodeError::Empty)));
        assert!(ClientMsg::decode(&[0xff, 0xff, 0xff]).is_err());
        // Connect with a 3-byte peer id.
        let bad_peer = [0x1a, 0x05, 0x12, 0x03, 1, 2, 3];
        assert!(matches!(
            ClientMsg::decode(&bad_peer),
            Err(DecodeError::Peer(_))
        ));
        // Connect and Offer naming a low-order or non-canonical identity.
        let mut top_bit = [0x11; 32];
        top_bit[31] |= 0x80;
        for (bytes, want_low_order) in [([0u8; 32], true), (top_bit, false)] {
            let connect = pb::ClientMessage {
                kind: Some(pb::client_message::Kind::Connect(pb::ConnectRequest {
                    request_id: 1,
                    peer: bytes.to_vec(),
                })),
            };
            let err = ClientMsg::decode(&connect.encode_to_vec()).unwrap_err();
            let mut o = pb::ServerMessage::decode(&ServerMsg::Offer(offer()).encode()[..]).unwrap();
            if let Some(pb::server_message::Kind::Offer(ref mut inner)) = o.kind {
                inner.peer = bytes.to_vec();
            }
            let err2 = ServerMsg::decode(&o.encode_to_vec()).unwrap_err();
            for e in [err, err2] {
                if want_low_order {
                    assert!(matches!(e, DecodeError::Peer(KeyError::LowOrder)), "{e}");
                } else {
                    assert!(
                        matches!(e, DecodeError::Peer(KeyError::NonCanonical)),
                        "{e}"
                    );
                }
            }
        }
        // Register with a 5-byte ip.
        let bad_ip = [0x12, 0x09, 0x0a, 0x05, 1, 2, 3, 4, 5, 0x10, 80];
        assert!(matches!(
            Register::decode(&bad_ip),
            Err(DecodeError::Address { ip_len: 5, .. })
        ));
        // Too many local addresses.
        let many = Register {
            version: 1,
            local_addrs: vec![],
            accept_inbound: false,
            allow: vec![],
            network: String::new(),
            probe: false,
        };
        let mut pbm = pb::Register::decode(&many.encode()[..]).unwrap();
        pbm.local_addrs = vec![addr_to_pb(&"10.0.0.1:1".parse().unwrap()); MAX_LOCAL_ADDRS + 1];
        assert!(matches!(
            Register::decode(&pbm.encode_to_vec()),
            Err(DecodeError::TooMany { .. })
        ));
        // An allow-list longer than MAX_ALLOW, and one naming a low-order key.
        let mut pbm = pb::Register::decode(&many.encode()[..]).unwrap();
        pbm.allow = vec![vec![0x11; 32]; MAX_ALLOW + 1];
        assert!(matches!(
            Register::decode(&pbm.encode_to_vec()),
            Err(DecodeError::TooMany {
                field: "allow",
                len: 65,
                max: MAX_ALLOW
            })
        ));
        pbm.allow = vec![vec![0x11; 32], vec![0; 32]];
        assert!(matches!(
            Register::decode(&pbm.encode_to_vec()),
            Err(DecodeError::Peer(KeyError::LowOrder))
        ));
        // Encoding keeps the first MAX_ALLOW entries, so what we send always decodes.
        let long = Register {
            allow: (0..100u8).map(|i| peer(0x10 + i)).collect(),
            ..many.clone()
        };
        let back = Register::decode(&long.encode()).unwrap();
        assert_eq!(back.allow, long.allow[..MAX_ALLOW]);
        // An offer with an unspecified role.
        let mut o = pb::ServerMessage::decode(&ServerMsg::Offer(offer()).encode()[..]).unwrap();
        if let Some(pb::server_message::Kind::Offer(ref mut inner)) = o.kind {
            inner.role = 0;
        }
        assert!(matches!(
            ServerMsg::decode(&o.encode_to_vec()),
            Err(DecodeError::Role(0))
        ));
        // A relay token of the wrong length.
        let mut o = pb::ServerMessage::decode(&ServerMsg::Offer(offer()).encode()[..]).unwrap();
        if let Some(pb::server_message::Kind::Offer(ref mut inner)) = o.kind {
            inner.relay_token = vec![1; 15];
        }
        assert!(matches!(
            ServerMsg::decode(&o.encode_to_vec()),
            Err(DecodeError::Length {
                field: "relay_token",
                len: 15,
                expected: RELAY_TOKEN_LEN
            })
        ));
    }
}
