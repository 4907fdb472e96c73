//! `rendezvous`: the punch rendezvous server binary. Parses flags (also from `RENDEZVOUS_*`
//! environment variables and a `--config` TOML file, see [`punch_ops::config`]), sets up
//! logging, loads or creates the server key, and runs [`punch_rendezvous::Server`] until SIGINT
//! or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::builder::RangedU64ValueParser;
use clap::Parser;
use punch_ops::log::LogFormat;
use punch_rendezvous::{config, Config, Server};

/// Rendezvous server for punch: registers peers and schedules TCP hole punches between them.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (all interfaces by default).
    #[arg(long, default_value = config::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Serve Prometheus metrics at http://ADDR/metrics; use a loopback or firewalled
    /// address, e.g. 127.0.0.1:9717. Default: off.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Where the NAT check listens: clients connect to it from their punch port, at the IP
    /// they reach --listen at (on the port the server names when they register), to learn
    /// whether their NAT maps that port the same for every destination. `off`: no check.
    /// Default: --listen's IP, port + 1 (7718).
    #[arg(long, value_name = "ADDR|off", value_parser = nat_check_listen)]
    nat_check_listen: Option<NatCheckListen>,
    /// The server's secret key: created on first start (mode 0600) and reused after, so the
    /// identity clients pin survives restarts.
    #[arg(long, default_value = "rendezvous.key")]
    key_file: PathBuf,
    /// Maximum registered peers.
    #[arg(long, default_value_t = config::DEFAULT_MAX_PEERS)]
    max_peers: usize,
    /// Maximum simultaneous connections from one IP address.
    #[arg(long, default_value_t = config::DEFAULT_MAX_CONNECTIONS_PER_IP)]
    max_connections_per_ip: usize,
    /// Handshakes in progress at most; when full the oldest of the busiest source is evicted.
    #[arg(long, default_value_t = config::DEFAULT_MAX_HANDSHAKES, value_parser = positive())]
    max_handshakes: usize,
    /// Connections waiting for message 1 at most; when full the oldest of the busiest source
    /// is dropped.
    #[arg(long, default_value_t = config::DEFAULT_MAX_WAITING_CONNECTIONS, value_parser = positive())]
    max_waiting_connections: usize,
    /// Handshakes in progress per source (IPv4 address or IPv6 /64).
    #[arg(long, default_value_t = config::DEFAULT_MAX_PENDING_HANDSHAKES_PER_PREFIX, value_parser = positive())]
    max_pending_handshakes_per_prefix: usize,
    /// Handshakes each source (IPv4 address or IPv6 /64) may start per minute (also the burst).
    #[arg(long, default_value_t = config::DEFAULT_HANDSHAKES_PER_SOURCE_PER_MINUTE, value_parser = clap::value_parser!(u32).range(1..))]
    handshakes_per_source_per_minute: u32,
    /// Seconds a new connection has to deliver Noise message 1 (it holds no slot meanwhile).
    #[arg(long, default_value_t = config::DEFAULT_FIRST_MESSAGE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    first_message_timeout_secs: u64,
    /// Seconds between summaries of refused connections (instead of a line per refusal).
    #[arg(long, default_value_t = config::DEFAULT_REFUSAL_LOG_INTERVAL.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    refusal_log_interval_secs: u64,
    /// Failed handshakes logged one line each per summary interval (the rest are counted).
    #[arg(long, default_value_t = config::DEFAULT_FAILURE_LOG_LINES_PER_INTERVAL)]
    failure_log_lines_per_interval: u64,
    /// Punch requests each identity may make per minute.
    #[arg(long, default_value_t = config::DEFAULT_PUNCH_REQUESTS_PER_MINUTE)]
    punch_requests_per_minute: u32,
    /// Punch requests per minute from one source (IPv4 address or IPv6 /64), all identities.
    #[arg(long, default_value_t = config::DEFAULT_PUNCH_REQUESTS_PER_SOURCE_PER_MINUTE)]
    punch_requests_per_source_per_minute: u32,
    /// Punch requests per minute from one network (IPv4 /24 or IPv6 /48), all identities.
    #[arg(long, default_value_t = config::DEFAULT_PUNCH_REQUESTS_PER_NETWORK_PER_MINUTE)]
    punch_requests_per_network_per_minute: u32,
    /// Offers one target may receive per minute from requesters of one source.
    #[arg(long, default_value_t = config::DEFAULT_OFFERS_PER_TARGET_PER_SOURCE_PER_MINUTE)]
    offers_per_target_per_source_per_minute: u32,
    /// Offers one target may receive per minute from requesters of one network.
    #[arg(long, default_value_t = config::DEFAULT_OFFERS_PER_TARGET_PER_NETWORK_PER_MINUTE)]
    offers_per_target_per_network_per_minute: u32,
    /// Registered peers at most from one source (IPv4 address or IPv6 /64).
    #[arg(long, default_value_t = config::DEFAULT_MAX_REGISTRATIONS_PER_SOURCE)]
    max_registrations_per_source: usize,
    /// Registered peers at most from one network (IPv4 /24 or IPv6 /48): Sybils from a block
    /// of addresses cannot fill --max-peers.
    #[arg(long, default_value_t = config::DEFAULT_MAX_REGISTRATIONS_PER_NETWORK)]
    max_registrations_per_network: usize,
    /// Peers one Discover answer names at most (a random sample of the asker's network; at
    /// most 64, the protocol's bound).
    #[arg(long, default_value_t = config::DEFAULT_DISCOVER_MAX)]
    discover_max: usize,
    /// Registrations per second to spread the peers' return over after a restart: on
    /// SIGTERM each registered peer is told to reconnect at a random moment within
    /// registered / this many seconds (at least 1 s, at most 600 s).
    #[arg(long, default_value_t = config::DEFAULT_RECONNECT_RATE, value_parser = clap::value_parser!(u32).range(1..))]
    reconnect_rate: u32,
    /// Start even if the open-files limit (after raising the soft limit to the hard one) is
    /// below what --max-peers, --max-waiting-connections, --max-handshakes and (two per
    /// session) --relay-max-sessions need; by default the server refuses to start then.
    #[arg(long)]
    ignore_fd_limit: bool,
    /// Seconds a client has to finish the Noise handshake.
    #[arg(long, default_value_t = config::DEFAULT_HANDSHAKE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    handshake_timeout_secs: u64,
    /// Seconds between pings to each client (keeps NAT mappings and RTT estimates fresh).
    #[arg(long, default_value_t = config::DEFAULT_PING_INTERVAL.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    ping_interval_secs: u64,
    /// Seconds of silence after which a client is dropped.
    #[arg(long, default_value_t = config::DEFAULT_IDLE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(2..))]
    idle_timeout_secs: u64,
    /// Relay fallback: offers carry relay tickets and relay connections (on this same port)
    /// are spliced. `off`: no tickets, and every relay hello is refused.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    relay: OnOff,
    /// Relayed sessions at most (a side waiting for its partner counts); each holds two
    /// sockets and two 32 KiB buffers.
    #[arg(long, default_value_t = config::DEFAULT_RELAY_MAX_SESSIONS)]
    relay_max_sessions: usize,
    /// Relayed sessions one identity may be part of.
    #[arg(long, default_value_t = config::DEFAULT_RELAY_MAX_SESSIONS_PER_PEER)]
    relay_max_sessions_per_peer: usize,
    /// Relayed sessions with a side from one source (IPv4 address or IPv6 /64).
    #[arg(long, default_value_t = config::DEFAULT_RELAY_MAX_SESSIONS_PER_SOURCE)]
    relay_max_sessions_per_source: usize,
    /// Issued, unused relay ticket pairs at most (beyond it offers go without tickets).
    #[arg(long, default_value_t = config::DEFAULT_RELAY_MAX_PENDING)]
    relay_max_pending: usize,
    /// Seconds a ticket pair stays valid, and a side that came first waits for its partner.
    #[arg(long, default_value_t = config::DEFAULT_RELAY_PAIR_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    relay_pair_timeout_secs: u64,
    /// Milliseconds: the earliest a ticket tells a client to try the relay after the dial
    /// moment (it says srtt_a + srtt_b within [this, 2000]).
    #[arg(long, default_value_t = config::DEFAULT_RELAY_AFTER_MIN.as_millis() as u64)]
    relay_after_min_ms: u64,
    /// Bytes per second each relayed session may move in each direction (16 MiB/s, about
    /// 134 Mbit/s).
    #[arg(long, default_value_t = config::DEFAULT_RELAY_RATE_PER_SESSION, value_parser = clap::value_parser!(u64).range(1..))]
    relay_rate_per_session: u64,
    /// Bytes per second all relayed sessions together may move (128 MiB/s, about 1 Gbit/s).
    #[arg(long, default_value_t = config::DEFAULT_RELAY_RATE_TOTAL, value_parser = clap::value_parser!(u64).range(1..))]
    relay_rate_total: u64,
    /// Bytes one relayed session may move, both directions together (64 GiB).
    #[arg(long, default_value_t = config::DEFAULT_RELAY_MAX_BYTES)]
    relay_max_bytes: u64,
    /// Seconds one relayed session may last (a day).
    #[arg(long, default_value_t = config::DEFAULT_RELAY_MAX_DURATION.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    relay_max_duration_secs: u64,
    /// Seconds without a byte either way (or with a write stuck) after which a relayed
    /// session is ended.
    #[arg(long, default_value_t = config::DEFAULT_RELAY_IDLE.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    relay_idle_secs: u64,
    /// Log lines as human-readable text or as one JSON object per line (levels: RUST_LOG,
    /// default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Print the effective configuration (every flag, from the command line, environment,
    /// --config file or default) as a TOML file --config accepts, with the open files it
    /// needs, and exit.
    #[arg(long)]
    print_config: bool,
}

/// At least 1: a zero would disable what the flag bounds.
fn positive() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(1..)
}

/// `--nat-check-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy)]
enum NatCheckListen {
    Off,
    At(SocketAddr),
}

fn nat_check_listen(s: &str) -> Result<NatCheckListen, String> {
    if s == "off" {
        return Ok(NatCheckListen::Off);
    }
    s.parse()
        .map(NatCheckListen::At)
        .map_err(|e| format!("{e}: expected HOST:PORT or off"))
}

/// A switch given as `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (args, effective) = punch_ops::config::parse::<Args>("RENDEZVOUS");
    if args.print_config {
        // A throwaway key: printing must not create the key file.
        let config = server_config(&args, punch_proto::Keypair::generate()?);
        print!("{}{}", effective.to_toml(), derived(&config));
        return Ok(());
    }
    punch_ops::log::init(args.log_format, "info");

    let (keypair, created) = punch_proto::Keypair::load_or_generate(&args.key_file)
        .with_context(|| format!("loading key file {}", args.key_file.display()))?;
    if created {
        tracing::info!(path = %args.key_file.display(), "created a new server key");
    }
    let mut config = server_config(&args, keypair);
    match args.nat_check_listen {
        Some(NatCheckListen::Off) => config.nat_check = None,
        Some(NatCheckListen::At(addr)) => config.nat_check = Some(addr),
        None if config.nat_check.is_none() => anyhow::bail!(
            "--listen port {} has no next port for the NAT check: pass --nat-check-listen",
            args.listen.port()
        ),
        None => {}
    }
    check_fd_limit(&config, args.ignore_fd_limit)?;

    let nat_check = config.nat_check;
    let server = Server::spawn(config)
        .await
        .with_context(|| match nat_check {
            Some(check) => format!("listening on {} and {check} (NAT check)", args.listen),
            None => format!("listening on {}", args.listen),
        })?;
    let addr = server.local_addr();
    let _metrics = match args.metrics {
        Some(at) => {
            let registry = punch_rendezvous::metrics::registry(server.stats_reader());
            let m = punch_ops::metrics::serve(at, std::sync::Arc::new(registry))
                .await
                .with_context(|| format!("--metrics {at}"))?;
            println!("metrics http://{}/metrics", m.local_addr());
            Some(m)
        }
        None => None,
    };
    println!("rendezvous listening on {addr}");
    match server.nat_check_addr() {
        Some(check) => println!("NAT check listening on {check}"),
        None => println!("NAT check off"),
    }
    println!("identity {}", server.identity());
    if addr.ip().is_unspecified() {
        println!(
            "clients: --rendezvous <this host's public address>:{} --rendezvous-key {}",
            addr.port(),
            server.identity()
        );
    } else {
        println!(
            "clients: --rendezvous {addr} --rendezvous-key {}",
            server.identity()
        );
    }

    shutdown_signal().await?;
    tracing::info!("signal received, shutting down");
    server.shutdown().await;
    Ok(())
}

/// The server configuration the flags ask for.
fn server_config(args: &Args, keypair: punch_proto::Keypair) -> Config {
    let mut config = Config::new(args.listen, keypair);
    config.max_peers = args.max_peers;
    config.max_connections_per_ip = args.max_connections_per_ip;
    config.punch_requests_per_minute = args.punch_requests_per_minute;
    config.punch_requests_per_source_per_minute = args.punch_requests_per_source_per_minute;
    config.punch_requests_per_network_per_minute = args.punch_requests_per_network_per_minute;
    config.offers_per_target_per_source_per_minute = args.offers_per_target_per_source_per_minute;
    config.offers_per_target_per_network_per_minute = args.offers_per_target_per_network_per_minute;
    config.max_registrations_per_source = args.max_registrations_per_source;
    config.max_registrations_per_network = args.max_registrations_per_network;
    config.discover_max = args.discover_max;
    config.reconnect_rate = args.reconnect_rate;
    config.max_handshakes = args.max_handshakes;
    config.max_waiting_connections = args.max_waiting_connections;
    config.max_pending_handshakes_per_prefix = args.max_pending_handshakes_per_prefix;
    config.handshakes_per_source_per_minute = args.handshakes_per_source_per_minute;
    config.first_message_timeout = Duration::from_secs(args.first_message_timeout_secs);
    config.refusal_log_interval = Duration::from_secs(args.refusal_log_interval_secs);
    config.failure_log_lines_per_interval = args.failure_log_lines_per_interval;
    config.handshake_timeout = Duration::from_secs(args.handshake_timeout_secs);
    config.ping_interval = Duration::from_secs(args.ping_interval_secs);
    config.idle_timeout = Duration::from_secs(args.idle_timeout_secs);
    config.relay = args.relay == OnOff::On;
    config.relay_max_sessions = args.relay_max_sessions;
    config.relay_max_sessions_per_peer = args.relay_max_sessions_per_peer;
    config.relay_max_sessions_per_source = args.relay_max_sessions_per_source;
    config.relay_max_pending = args.relay_max_pending;
    config.relay_pair_timeout = Duration::from_secs(args.relay_pair_timeout_secs);
    config.relay_after_min = Duration::from_millis(args.relay_after_min_ms);
    config.relay_rate_per_session = args.relay_rate_per_session;
    config.relay_rate_total = args.relay_rate_total;
    config.relay_max_bytes = args.relay_max_bytes;
    config.relay_max_duration = Duration::from_secs(args.relay_max_duration_secs);
    config.relay_idle = Duration::from_secs(args.relay_idle_secs);
    config
}

/// What the configuration implies and no flag sets, as TOML comments for `--print-config`.
fn derived(config: &Config) -> String {
    format!(
        "\n# Derived, not settable:\n\
         # open files needed: {} (max-peers + max-waiting-connections + max-handshakes\n\
         #   + 2 x relay-max-sessions when relay is on + {} spare); below it the server refuses\n\
         #   to start, unless ignore-fd-limit\n\
         # fixed: {} keys per rate table, {} queued messages per client, dial margin {} ms\n",
        config.fds_needed(),
        config::FD_RESERVE,
        config.max_rate_keys,
        config.outbound_queue,
        config.dial_margin.as_millis(),
    )
}

/// Raises the soft limit on open files to the hard limit (every registered peer holds a
/// descriptor, and 1,024, a common default, is few), or both past the hard limit when the
/// process may (CAP_SYS_RESOURCE) and the configuration needs it, then checks that it covers what the
/// configuration can hold ([`Config::fds_needed`]). Past the limit accepts fail: an identity
/// flood would lock honest peers out while `--max-peers` still has room (with a 1,024 limit,
/// 33 addresses were enough). Refuses to start then, unless `--ignore-fd-limit`.
fn check_fd_limit(config: &Config, ignore: bool) -> anyhow::Result<()> {
    let (soft, hard) = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the open files limit; not checked");
            return Ok(());
        }
    };
    let need = config.fds_needed();
    // Past the hard limit only a privileged process may go (CAP_SYS_RESOURCE, up to
    // fs.nr_open): a server that may lifts it to what it needs; anyone else is told below.
    if need > hard {
        match rlimit::setrlimit(rlimit::Resource::NOFILE, need, need) {
            Ok(()) => {
                tracing::info!(
                    before = soft,
                    hard_before = hard,
                    after = need,
                    "open files limit raised"
                );
                return Ok(());
            }
            Err(e) => {
                tracing::debug!(error = %e, need, hard, "could not raise the hard open files limit")
            }
        }
    }
    let limit = match rlimit::increase_nofile_limit(hard) {
        Ok(now) => {
            if now > soft {
                tracing::info!(before = soft, after = now, "open files limit raised");
            }
            now
        }
        Err(e) => {
            tracing::warn!(soft, hard, error = %e, "could not raise the open files limit");
            soft
        }
    };
    if need <= limit {
        return Ok(());
    }
    let msg = format!(
        "--max-peers {} (+ --max-waiting-connections {}, --max-handshakes {}, 2 x \
         --relay-max-sessions {}, {} spare) needs {need} open files, but the limit is {limit} \
         (hard limit {hard}): raise it (ulimit -n, systemd LimitNOFILE=) or lower --max-peers",
        config.max_peers,
        config.max_waiting_connections,
        config.max_handshakes,
        if config.relay {
            config.relay_max_sessions
        } else {
            0
        },
        config::FD_RESERVE
    );
    if ignore {
        tracing::warn!("{msg}; starting anyway (--ignore-fd-limit)");
        Ok(())
    } else {
        anyhow::bail!("{msg}; or pass --ignore-fd-limit to start anyway")
    }
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
