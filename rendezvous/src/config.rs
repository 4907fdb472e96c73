//! Server configuration: every limit and timeout, with safe defaults and the attack each answers.

use std::net::SocketAddr;
use std::time::Duration;

use punch_proto::message::MAX_RECONNECT_WITHIN;
use punch_proto::Keypair;

/// Where the server listens by default: all interfaces, a fixed port operators can open.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7717";
/// The NAT check listens on the main port plus this (7718 beside 7717): one more port for
/// operators to open, next to the first, and clients learn it from `Registered`, so any other
/// port works too (`--nat-check-listen`).
pub const DEFAULT_NAT_CHECK_PORT_OFFSET: u16 = 1;

/// The NAT check's default address for a server listening on `listen`: the same IP, port + 1
/// ([`DEFAULT_NAT_CHECK_PORT_OFFSET`]); port 0 stays 0 (any free port, for tests). `None` for
/// port 65535, which has no next port.
pub fn default_nat_check(listen: SocketAddr) -> Option<SocketAddr> {
    let port = match listen.port() {
        0 => 0,
        port => port.checked_add(DEFAULT_NAT_CHECK_PORT_OFFSET)?,
    };
    Some(SocketAddr::new(listen.ip(), port))
}

/// Registered peers at most. Each costs about 18 KB of server memory (measured: socket
/// buffers, its task, Noise state) and one file descriptor; 10,000 bounds memory to about
/// 180 MB against an identity flood (identities are free to make). The server checks at start
/// that its file-descriptor limit covers this (see `FD_RESERVE`).
pub const DEFAULT_MAX_PEERS: usize = 10_000;
/// Handshakes in progress (message 1 received) at most: bounds the Noise state and tasks that
/// half-open handshakes can pin before the handshake timeout frees them. When full, the oldest
/// handshake of the prefix holding the most is evicted, so a flood cannot lock honest peers out.
pub const DEFAULT_MAX_HANDSHAKES: usize = 512;
/// Connections waiting for their message 1 at most (each holds only a socket and a small
/// task): bounds file descriptors against silent floods from many addresses (an IPv6 /48 is
/// 65,536 /64s); when full the oldest waiting connection of the prefix holding the most is
/// dropped. 512 keeps the descriptor footprint the old handshake cap had.
pub const DEFAULT_MAX_WAITING_CONNECTIONS: usize = 512;
/// Pending handshakes per source prefix (IPv4 address or IPv6 /64): a handshake lasts 1.5
/// round trips, so even a large CGNAT rarely has more than a few at once; 16 leaves room for
/// bursts while 32 prefixes are needed to fill the default 512 slots.
pub const DEFAULT_MAX_PENDING_HANDSHAKES_PER_PREFIX: usize = 16;
/// Handshakes (message 1 answered) each source prefix may start per minute, also the burst:
/// an honest node reconnects a few times an hour; 120 covers a CGNAT full of them, while a
/// replay flood is cut to 2 Diffie-Hellmans (and log lines) a second.
pub const DEFAULT_HANDSHAKES_PER_SOURCE_PER_MINUTE: u32 = 120;
/// A connection must deliver its complete message 1 within this of being accepted, or it is
/// dropped having cost only a socket. Message 1 leaves with the client's last SYN-handshake
/// ACK; 3 s covers one lost-and-retransmitted segment on a 1 s RTT path (initial RTO 1 s).
pub const DEFAULT_FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(3);
/// Refusals (rate, per-IP limit, evicted, silent) are logged as one summary per this interval
/// instead of one line each: a flood wrote 100,000 lines; 10 s keeps a flood visible in the log
/// at six lines a minute.
pub const DEFAULT_REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Failed handshakes logged one line each per refusal-log interval; the rest are counted in
/// the summary. 50 per 10 s shows every failure of normal operation while many sources, each
/// within its handshake rate, write at most ~1 KiB/s of log.
pub const DEFAULT_FAILURE_LOG_LINES_PER_INTERVAL: u64 = 50;
/// Open connections per source IP. Generous because a carrier-grade NAT puts many honest
/// peers behind one address; low enough that one host cannot take all handshake slots.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 32;
/// A client must finish the Noise handshake within this. The handshake is 1.5 round trips,
/// under a second on any real path; 5 s tolerates a slow mobile link and stops slowloris.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the server pings each client: keeps NAT mappings of the control connection (and
/// so of the punch port) alive, and keeps the RTT estimate that schedules dials fresh.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(5);
/// A client silent for this long (no pong, no message) is dropped: three missed pings.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// Punch requests each identity may make per minute: a node keeping a few peers connected
/// re-punches rarely; more than this is a scan or a bug, and each request makes the target dial.
pub const DEFAULT_PUNCH_REQUESTS_PER_MINUTE: u32 = 20;
/// Punch requests per minute from one source (IPv4 address or IPv6 /64), all its identities
/// together: identities are free, so the per-identity limit alone does not bound a host. 120 is
/// six identities at their full rate; a CGNAT address full of honest nodes, each re-punching a
/// few times an hour, stays far below.
pub const DEFAULT_PUNCH_REQUESTS_PER_SOURCE_PER_MINUTE: u32 = 120;
/// Punch requests per minute from one network (IPv4 /24 or IPv6 /48): five sources at their
/// full rate. A block of addresses then gets five times one address's share, not 256 times.
pub const DEFAULT_PUNCH_REQUESTS_PER_NETWORK_PER_MINUTE: u32 = 600;
/// Offers one target may receive per minute from the requesters of one source (IPv4 address
/// or IPv6 /64): the per-identity request rate, so extra identities on one address buy no
/// extra dials of the victim.
pub const DEFAULT_OFFERS_PER_TARGET_PER_SOURCE_PER_MINUTE: u32 = 20;
/// Offers one target may receive per minute from the requesters of one network (IPv4 /24 or
/// IPv6 /48). Budgets used to be per target, shared by all requesters, and 60 Sybil identities
/// from 2 addresses kept them empty (0 of 5 honest punches got through); now a network spends
/// only its own budget. 60 is the old whole-target budget: one network alone can still do
/// what all requesters together could. A target that should not be dialed by strangers at all
/// registers an allow-list (`punch listen --allow`), checked before any budget.
pub const DEFAULT_OFFERS_PER_TARGET_PER_NETWORK_PER_MINUTE: u32 = 60;
/// Registered peers per source (IPv4 address or IPv6 /64): the per-IP connection limit, since
/// every registration holds a connection; stated again so the registry bounds itself.
pub const DEFAULT_MAX_REGISTRATIONS_PER_SOURCE: usize = DEFAULT_MAX_CONNECTIONS_PER_IP;
/// Registered peers per network (IPv4 /24 or IPv6 /48). 10,000 Sybil identities from 313
/// addresses filled `max_peers` in 8.7 s; with 256 per network, filling the default 10,000
/// takes 40 distinct /24s. 256 is one peer per address of a /24, or eight CGNAT addresses each
/// holding its full 32.
pub const DEFAULT_MAX_REGISTRATIONS_PER_NETWORK: usize = 256;
/// Keys each of the registry's five rate tables (requests per identity, source, network;
/// offers per target and source, target and network) holds at most. A key costs about 100
/// bytes, so the five stay under 35 MiB; keys idle for a minute are dropped, so filling a
/// table takes 65,536 distinct keys a minute, more than 100 networks at their full request rate.
/// A new key arriving at a full table is refused (`RateLimited`), never an old one forgotten.
pub const DEFAULT_MAX_RATE_KEYS: usize = 65_536;
/// Peers one `Discover` answer names at most (a client asking for more gets this many). A
/// Kaspa node wants 8 outbound peers; 16 fills them twice over in one request, so honest nodes
/// rarely ask again, while a scraper learns at most 16 identities per request, and its
/// requests share the punch request budgets (20 per identity per minute, 120 per source).
/// Never the whole list: an accepting peer is then found only at the pace of those budgets.
pub const DEFAULT_DISCOVER_MAX: usize = 16;
/// File descriptors the server keeps beyond one per registered peer, waiting connection and
/// handshake: the listeners (main and NAT check), stdio, log files, the runtime's own.
pub const FD_RESERVE: u64 = 64;
/// Time added to the dial moment for a client to act on its offer (decode it, arm a timer,
/// open a socket on its punch port): under a millisecond on an idle host, a few scheduler
/// slices on a loaded one. Path delay and its variation are measured per peer and added on
/// top (see the registry's dial schedule), so this is no jitter allowance.
pub const DEFAULT_DIAL_MARGIN: Duration = Duration::from_millis(5);
/// Registrations per second the server asks its peers to come back at after a restart: on
/// shutdown each registered peer is told (`GoingAway`) to reconnect at a uniformly random
/// moment within `registered / rate` seconds ([`Config::reconnect_window`]). Derived from the
/// handshake gate: by Little's law, handshakes in progress = rate x slot time, and a handshake
/// holds its slot from message 1 to message 3, one round trip plus two Diffie-Hellmans; at
/// 1,000/s and a 250 ms RTT 250 of the 512 slots (`DEFAULT_MAX_HANDSHAKES`) are busy, so the
/// gate never evicts a returning peer. Any one source's share stays far below its 120
/// handshakes a minute (32 registrations at most). The CPU is no tighter: a restart of 10,000
/// peers at this rate, server and clients on one 2-core machine, refused and evicted nobody
/// and had them all back 11.1 s after SIGTERM (README, "Graceful restart").
pub const DEFAULT_RECONNECT_RATE: u32 = 1_000;
/// The reconnect window is at least this, however few peers were registered: a restart
/// itself takes some hundreds of milliseconds (exit, start, key file), and a peer that comes
/// back before the server only falls into its backoff; one second spreads even a small crowd.
pub const MIN_RECONNECT_WINDOW: Duration = Duration::from_secs(1);
/// Outbound messages queued per connection. Control traffic is tiny; a client that lets this
/// many pile up is not reading and is dropped rather than buffered without bound.
pub const DEFAULT_OUTBOUND_QUEUE: usize = 64;

/// Relayed sessions at most (a side held waiting for its partner counts). Each costs two
/// sockets, two 32 KiB copy buffers and a task; 512 is a rendezvous of the
/// default 10,000 peers where one in twenty is stuck behind NATs that cannot punch, and
/// `--relay-rate-total` shares the bandwidth among them.
pub const DEFAULT_RELAY_MAX_SESSIONS: usize = 512;
/// Relayed sessions one identity is part of at most: a node keeps a handful of peers
/// connected; identities are free, so the per-source limit stands beside this one.
pub const DEFAULT_RELAY_MAX_SESSIONS_PER_PEER: usize = 8;
/// Relayed sessions with a side from one source (IPv4 address or IPv6 /64) at most: two
/// identities' worth, so one host cannot take the relay with free identities while a CGNAT
/// address still fits a few relayed nodes.
pub const DEFAULT_RELAY_MAX_SESSIONS_PER_SOURCE: usize = 16;
/// Issued ticket pairs not yet used at most (about 200 bytes each, so 3 MiB): at the pair
/// timeout of 15 s, 1,000 offers a second, far above what the punch request limits let honest
/// peers make. When full, offers go out without a ticket.
pub const DEFAULT_RELAY_MAX_PENDING: usize = 16_384;
/// How long a ticket pair is valid after the offers went out, and so how long a side that
/// came first is held: the client's 10 s punch window plus margin for a slow path.
pub const DEFAULT_RELAY_PAIR_TIMEOUT: Duration = Duration::from_secs(15);
/// The earliest a ticket tells a client to open its relay connection after the dial moment
/// (see [`crate::relay::relay_after`]): a few scheduler slices, so a LAN or loopback punch is
/// not raced by the relay before it had a chance.
pub const DEFAULT_RELAY_AFTER_MIN: Duration = Duration::from_millis(20);
/// Bytes per second each relayed session may move in each direction: 16 MiB/s (about 134
/// Mbit/s), near RustDesk's 128 Mbit/s per connection; a Kaspa node's initial sync still takes
/// minutes, not hours, and its steady state is tens of kbit/s.
pub const DEFAULT_RELAY_RATE_PER_SESSION: u64 = 16 << 20;
/// Bytes per second all relayed sessions together may move: 128 MiB/s (about 1 Gbit/s, one
/// server NIC; RustDesk's default total), so the relay cannot starve the control protocol.
pub const DEFAULT_RELAY_RATE_TOTAL: u64 = 128 << 20;
/// Bytes one relayed session may move, both directions together: 64 GiB, many full Kaspa
/// initial syncs of several GB; the cap only bounds what one pair can take from the operator.
pub const DEFAULT_RELAY_MAX_BYTES: u64 = 64 << 30;
/// How long one relayed session may last: a day. The peers punch again at their next
/// reconnection, which may then go direct (a relayed pair is never stuck on the relay for good).
pub const DEFAULT_RELAY_MAX_DURATION: Duration = Duration::from_secs(86_400);
/// A relayed session with no byte either way (or a write stuck) for this long is ended: the
/// peers' yamux pings every 15 s, so an honest session is never idle for 60 s.
pub const DEFAULT_RELAY_IDLE: Duration = Duration::from_secs(60);

/// Configuration of a rendezvous [`crate::Server`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// Where the NAT check listens; `None`: no check. Why: a client connecting to it from its
    /// punch port learns whether its NAT maps that port endpoint-independently (a direct punch
    /// can work) or per destination (it cannot, against another such NAT). Clients reach it
    /// at the IP they reach `listen` at, on the port `Registered` names. Default:
    /// [`default_nat_check`].
    pub nat_check: Option<SocketAddr>,
    /// The server's static key: its identity, pinned by clients.
    pub keypair: Keypair,
    /// Why: bounds registry memory against identity floods.
    pub max_peers: usize,
    /// Why: bounds half-open handshakes (slowloris, connection floods); evicts when full.
    pub max_handshakes: usize,
    /// Why: silent connections from many addresses cannot exhaust file descriptors.
    pub max_waiting_connections: usize,
    /// Why: one source prefix cannot take the handshake slots of everyone else.
    pub max_pending_handshakes_per_prefix: usize,
    /// Why: each message 1 costs a Diffie-Hellman and a log line; replay floods are cut.
    pub handshakes_per_source_per_minute: u32,
    /// Why: silent connections cost a socket only briefly, and never a handshake slot.
    pub first_message_timeout: Duration,
    /// Why: refusal floods become a summary per interval, not a line per connection.
    pub refusal_log_interval: Duration,
    /// Why: failure lines stay bounded however many sources fail their handshakes.
    pub failure_log_lines_per_interval: u64,
    /// Why: one address cannot take every slot; CGNAT users still fit.
    pub max_connections_per_ip: usize,
    /// Why: a connection that does not authenticate in time is closed (slowloris).
    pub handshake_timeout: Duration,
    /// Why: keeps NAT mappings and RTT estimates fresh.
    pub ping_interval: Duration,
    /// Why: frees the slot of a vanished client.
    pub idle_timeout: Duration,
    /// Why: a punch request makes another peer dial; limits scans and request floods.
    pub punch_requests_per_minute: u32,
    /// Why: identities are free; one host cannot multiply its rate by making more of them.
    pub punch_requests_per_source_per_minute: u32,
    /// Why: a block of addresses cannot multiply its rate by the addresses it holds.
    pub punch_requests_per_network_per_minute: u32,
    /// Why: limits how often one source can make one victim dial, however many identities.
    pub offers_per_target_per_source_per_minute: u32,
    /// Why: requesters of one network spend their own budget for a target, not everyone's.
    pub offers_per_target_per_network_per_minute: u32,
    /// Why: one address cannot hold registrations beyond its share.
    pub max_registrations_per_source: usize,
    /// Why: a block of addresses cannot fill `max_peers` with Sybil identities.
    pub max_registrations_per_network: usize,
    /// Why: bounds the memory of the registry's rate tables.
    pub max_rate_keys: usize,
    /// Why: a client needs a moment to act on its offer before the dial moment (path delay
    /// and its variation are measured, not part of this).
    pub dial_margin: Duration,
    /// Why: a `Discover` answer is a sample, never the directory: scraping it takes many
    /// requests, each charged to the punch request budgets.
    pub discover_max: usize,
    /// Why: a client that does not read its messages is dropped, not buffered for.
    pub outbound_queue: usize,
    /// Why: after a restart the peers come back spread at this rate (registrations/s),
    /// within what the handshake gate admits, not all at once ([`Config::reconnect_window`]).
    pub reconnect_rate: u32,
    /// Whether offers carry relay tickets and relay connections are served (`--relay off`:
    /// neither; a relay HELLO is then refused as an unknown token).
    pub relay: bool,
    /// Why: bounds the sockets, buffers and bandwidth the relay gives out.
    pub relay_max_sessions: usize,
    /// Why: one identity cannot take the relay's sessions.
    pub relay_max_sessions_per_peer: usize,
    /// Why: identities are free; one host cannot take the relay by making more of them.
    pub relay_max_sessions_per_source: usize,
    /// Why: bounds the memory of issued, unused tickets.
    pub relay_max_pending: usize,
    /// Why: a ticket is a capability for a while only, and a held side is not held forever.
    pub relay_pair_timeout: Duration,
    /// Why: a near-zero RTT must not start the relay before the punch had its chance.
    pub relay_after_min: Duration,
    /// Why: one session cannot take the relay's bandwidth (bytes/s, each direction).
    pub relay_rate_per_session: u64,
    /// Why: the relay as a whole stays within the server's link (bytes/s).
    pub relay_rate_total: u64,
    /// Why: bounds what one session can take from the operator (both directions).
    pub relay_max_bytes: u64,
    /// Why: a session ends at last, and its peers punch again.
    pub relay_max_duration: Duration,
    /// Why: frees the slots of a vanished or stuck pair.
    pub relay_idle: Duration,
}

impl Config {
    /// File descriptors this configuration can hold at once: one per registered peer, per
    /// connection waiting for message 1 and per handshake, two per relayed session (a side
    /// held waiting for its partner holds one of its session's two; relay connections still
    /// sending their HELLO are among the waiting connections), plus [`FD_RESERVE`]. The binary
    /// checks it against its open-files limit at start: past the limit, accepts fail and
    /// honest peers are locked out while the registry still has room.
    pub fn fds_needed(&self) -> u64 {
        let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        n(self.max_peers)
            .saturating_add(n(self.max_waiting_connections))
            .saturating_add(n(self.max_handshakes))
            .saturating_add(if self.relay {
                n(self.relay_max_sessions).saturating_mul(2)
            } else {
                0
            })
            .saturating_add(FD_RESERVE)
    }

    /// The window a shutdown gives its `registered` peers to reconnect in (`GoingAway`): they
    /// pick uniformly random moments in it, so they arrive at about `reconnect_rate` a second.
    /// At least [`MIN_RECONNECT_WINDOW`], at most the protocol's [`MAX_RECONNECT_WITHIN`].
    pub fn reconnect_window(&self, registered: usize) -> Duration {
        let rate = f64::from(self.reconnect_rate.max(1));
        // `registered` is at most `max_peers`: far inside f64's exact integers.
        let window = Duration::from_secs_f64(registered as f64 / rate);
        window.clamp(MIN_RECONNECT_WINDOW, MAX_RECONNECT_WITHIN)
    }

    /// Defaults for everything but the key and listen address.
    pub fn new(listen: SocketAddr, keypair: Keypair) -> Self {
        Self {
            listen,
            nat_check: default_nat_check(listen),
            keypair,
            max_peers: DEFAULT_MAX_PEERS,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            max_pending_handshakes_per_prefix: DEFAULT_MAX_PENDING_HANDSHAKES_PER_PREFIX,
            max_waiting_connections: DEFAULT_MAX_WAITING_CONNECTIONS,
            handshakes_per_source_per_minute: DEFAULT_HANDSHAKES_PER_SOURCE_PER_MINUTE,
            first_message_timeout: DEFAULT_FIRST_MESSAGE_TIMEOUT,
            refusal_log_interval: DEFAULT_REFUSAL_LOG_INTERVAL,
            failure_log_lines_per_interval: DEFAULT_FAILURE_LOG_LINES_PER_INTERVAL,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            ping_interval: DEFAULT_PING_INTERVAL,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            punch_requests_per_minute: DEFAULT_PUNCH_REQUESTS_PER_MINUTE,
            punch_requests_per_source_per_minute: DEFAULT_PUNCH_REQUESTS_PER_SOURCE_PER_MINUTE,
            punch_requests_per_network_per_minute: DEFAULT_PUNCH_REQUESTS_PER_NETWORK_PER_MINUTE,
            offers_per_target_per_source_per_minute:
                DEFAULT_OFFERS_PER_TARGET_PER_SOURCE_PER_MINUTE,
            offers_per_target_per_network_per_minute:
                DEFAULT_OFFERS_PER_TARGET_PER_NETWORK_PER_MINUTE,
            max_registrations_per_source: DEFAULT_MAX_REGISTRATIONS_PER_SOURCE,
            max_registrations_per_network: DEFAULT_MAX_REGISTRATIONS_PER_NETWORK,
            max_rate_keys: DEFAULT_MAX_RATE_KEYS,
            dial_margin: DEFAULT_DIAL_MARGIN,
            discover_max: DEFAULT_DISCOVER_MAX,
            outbound_queue: DEFAULT_OUTBOUND_QUEUE,
            reconnect_rate: DEFAULT_RECONNECT_RATE,
            relay: true,
            relay_max_sessions: DEFAULT_RELAY_MAX_SESSIONS,
            relay_max_sessions_per_peer: DEFAULT_RELAY_MAX_SESSIONS_PER_PEER,
            relay_max_sessions_per_source: DEFAULT_RELAY_MAX_SESSIONS_PER_SOURCE,
            relay_max_pending: DEFAULT_RELAY_MAX_PENDING,
            relay_pair_timeout: DEFAULT_RELAY_PAIR_TIMEOUT,
            relay_after_min: DEFAULT_RELAY_AFTER_MIN,
            relay_rate_per_session: DEFAULT_RELAY_RATE_PER_SESSION,
            relay_rate_total: DEFAULT_RELAY_RATE_TOTAL,
            relay_max_bytes: DEFAULT_RELAY_MAX_BYTES,
            relay_max_duration: DEFAULT_RELAY_MAX_DURATION,
            relay_idle: DEFAULT_RELAY_IDLE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nat_check_listens_next_to_the_main_port() {
        let at = |s: &str| default_nat_check(s.parse().unwrap());
        assert_eq!(at("0.0.0.0:7717"), Some("0.0.0.0:7718".parse().unwrap()));
        assert_eq!(at("[::1]:7717"), Some("[::1]:7718".parse().unwrap()));
        assert_eq!(at("127.0.0.1:0"), Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(at("127.0.0.1:65535"), None);
    }

    #[test]
    fn the_fd_check_counts_two_descriptors_per_relayed_session() {
        let listen = "127.0.0.1:0".parse().unwrap();
        let mut c = Config::new(listen, Keypair::from_secret(&[1; 32]).unwrap());
        let base = (DEFAULT_MAX_PEERS + DEFAULT_MAX_WAITING_CONNECTIONS + DEFAULT_MAX_HANDSHAKES)
            as u64
            + FD_RESERVE;
        assert_eq!(c.fds_needed(), base + 2 * DEFAULT_RELAY_MAX_SESSIONS as u64);
        c.relay = false;
        assert_eq!(c.fds_needed(), base);
    }

    #[test]
    fn the_reconnect_window_spreads_peers_at_the_reconnect_rate() {
        let listen = "127.0.0.1:0".parse().unwrap();
        let mut c = Config::new(listen, Keypair::from_secret(&[1; 32]).unwrap());
        assert_eq!(c.reconnect_window(10_000), Duration::from_secs(10));
        assert_eq!(c.reconnect_window(2_500), Duration::from_millis(2_500));
        // A few peers still get the minimum; a rate of 0 is taken as 1.
        assert_eq!(c.reconnect_window(0), MIN_RECONNECT_WINDOW);
        assert_eq!(c.reconnect_window(3), MIN_RECONNECT_WINDOW);
        c.reconnect_rate = 100;
        assert_eq!(c.reconnect_window(10_000), Duration::from_secs(100));
        c.reconnect_rate = 0;
        assert_eq!(c.reconnect_window(10_000), MAX_RECONNECT_WITHIN);
    }
}
