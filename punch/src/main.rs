//! `punch`: the operator's tool. Key management, staying registered and forwarding punched
//! streams to a local service (`listen`), punching to a peer (`connect`), and finding peers of
//! a network (`discover`). Every flag can also come from a `PUNCH_*` environment variable or a
//! `--config` TOML file (see [`punch_ops::config`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use punch::forward::ListenLimits;
use punch::{Allow, Client, Config, Session};
use punch_ops::log::LogFormat;
use punch_proto::message::{check_network, MAX_ALLOW};
use punch_proto::{Keypair, PeerId};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

/// TCP hole punching between peers behind NATs.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as human-readable text or as one JSON object per line (levels: RUST_LOG,
    /// default warn,punch=info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new identity (secret key file, mode 0600) and print its public id.
    Keygen {
        /// Secret key file to create. Required.
        #[arg(long, value_name = "PATH")]
        key_file: PathBuf,
    },
    /// Print the public id of a key file.
    Id {
        /// Secret key file to read. Required.
        #[arg(long, value_name = "PATH")]
        key_file: PathBuf,
    },
    /// Stay registered, accept punched sessions, forward each stream to a local TCP service.
    /// Needs --allow ID (repeatable) or --allow-any: who may punch to us is never implied.
    #[command(group(
        clap::ArgGroup::new("who").required(true).args(["allow", "allow_any"])
    ))]
    Listen {
        #[command(flatten)]
        common: Common,
        /// Service that punched streams are forwarded to, e.g. 127.0.0.1:16111. Required.
        #[arg(long, value_name = "HOST:PORT")]
        forward: String,
        /// A peer id (as printed by `punch id`) that may punch to us; repeat for more (at most
        /// 64). The list is sent to the rendezvous, which refuses other requesters before they
        /// cost us anything; offers from other peers are refused here too, before any dial.
        /// Default: none (then --allow-any is needed).
        #[arg(long, value_name = "ID")]
        allow: Vec<PeerId>,
        /// Serve any peer the rendezvous introduces (a public service).
        #[arg(long, conflicts_with = "allow")]
        allow_any: bool,
        #[command(flatten)]
        limits: ListenCaps,
    },
    /// Punch to a peer. With --local, expose a local TCP listener whose connections become
    /// streams to the peer's forwarded service; without it, pipe stdin/stdout over one stream.
    Connect {
        /// The peer's id (as printed by `punch id`).
        peer: PeerId,
        #[command(flatten)]
        common: Common,
        /// Local listener address, e.g. 127.0.0.1:9000. Default: none (stdin/stdout).
        #[arg(long, value_name = "HOST:PORT")]
        local: Option<SocketAddr>,
    },
    /// Ask a running `punch listen` / `punch connect` (or kaspad-punch) for its status over
    /// its local status socket: identity, rendezvous connection, caps, open sessions.
    #[command(group(
        clap::ArgGroup::new("which").required(true).args(["key_file", "socket"])
    ))]
    Status {
        /// The running node's key file: its status socket is beside it (`<key-file>.status`).
        /// Required unless --socket is given.
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// The status socket's path, when the node was started with --status-socket (or
        /// kaspad-punch with --punch-status-socket). Required unless --key-file is given.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Print the status document as JSON (for scripts) instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Print the ids of peers of --network that accept punches, one per line: a random sample
    /// from the rendezvous (never us; we register without accepting punches). Needs --network.
    #[command(group(
        clap::ArgGroup::new("net").required(true).args(["network"])
    ))]
    Discover {
        #[command(flatten)]
        common: Common,
        /// At most this many ids (the rendezvous caps it too, at 16 by default).
        #[arg(long, default_value_t = 16, value_parser = at_least_one)]
        max: usize,
    },
}

/// The caps of `punch listen`; over a cap the newest session or stream is closed at once.
#[derive(Debug, Args)]
struct ListenCaps {
    /// Sessions one peer may hold at once (a reconnecting node needs two).
    #[arg(long, default_value_t = punch::forward::DEFAULT_SESSIONS_PER_PEER, value_parser = at_least_one)]
    max_sessions_per_peer: usize,
    /// Sessions at once, all peers.
    #[arg(long, default_value_t = punch::forward::DEFAULT_SESSIONS_TOTAL, value_parser = at_least_one)]
    max_sessions: usize,
    /// Streams of one session forwarded to the service at once.
    #[arg(long, default_value_t = punch::forward::DEFAULT_FORWARDS_PER_SESSION, value_parser = at_least_one)]
    max_forwards_per_session: usize,
    /// Streams forwarded to the service at once, all sessions (each is a connection to it).
    #[arg(long, default_value_t = punch::forward::DEFAULT_FORWARDS_TOTAL, value_parser = at_least_one)]
    max_forwards: usize,
}

/// A network name as the registration carries it: 1 to 64 bytes of `[a-z0-9-]`.
fn network_name(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    check_network(s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug, Args)]
struct Common {
    /// Rendezvous server address. Required.
    #[arg(long, value_name = "HOST:PORT")]
    rendezvous: String,
    /// Rendezvous server identity, as it prints on start. Required.
    #[arg(long, value_name = "KEY")]
    rendezvous_key: PeerId,
    /// Our identity's secret key file (created on first use). Required.
    #[arg(long, value_name = "PATH")]
    key_file: PathBuf,
    /// Our network, e.g. kaspa-mainnet (1 to 64 characters of a-z, 0-9 and -). The
    /// rendezvous lists a listener to `punch discover` of its network, and refuses punches
    /// between peers that name different networks. Default: none.
    #[arg(long, value_name = "NAME", value_parser = network_name)]
    network: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9718. Default: off.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Where `punch status` asks us: a unix socket, mode 0600. Default: beside the key file,
    /// `<key-file>.status`.
    #[arg(long, value_name = "PATH")]
    status_socket: Option<PathBuf>,
    /// Local address of the punch port (default: any interface, port chosen by the OS).
    #[arg(long, value_name = "HOST:PORT")]
    bind: Option<SocketAddr>,
    /// Seconds to wait for the first registration with the rendezvous.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    register_timeout_secs: u64,
    /// Seconds a session may stay stuck before it is ended: our writes making no progress
    /// (the peer stopped reading) or our reading paused with its unread budget full (the local
    /// service stopped reading). Under yamux's 30 s ping timeout, so the log says which.
    #[arg(long, default_value_t = punch::guard::DEFAULT_WRITE_STALL.as_secs(), value_name = "SECS")]
    session_stall_secs: u64,
    /// Bytes one session may hold unread (all its streams) before we stop reading from the
    /// peer, which then waits (TCP back-pressure).
    #[arg(long, default_value_t = punch::guard::DEFAULT_MAX_UNREAD, value_name = "BYTES")]
    session_unread_bytes: u64,
    /// Fall back to the rendezvous's relay when no direct connection authenticates soon
    /// after the dial moment (the rendezvous says when, from both peers' round-trip times);
    /// a relayed session moves to a direct connection if one appears within the punch window.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    relay: Switch,
    /// Dial the peer directly. `off`: relay only (diagnostics; both peers need it for the
    /// session to be relayed).
    #[arg(long, value_enum, default_value_t = Switch::On)]
    direct: Switch,
}

/// How long `start` waits for the NAT check after registering before it goes on: the check
/// is one more handshake with the rendezvous (milliseconds), so a punch requested after it is
/// told whether both NATs rule a direct path out; a check port that does not answer costs
/// this much at most.
const NAT_CHECK_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    On,
    Off,
}

#[tokio::main]
async fn main() {
    let (cli, _) = punch_ops::config::parse::<Cli>("PUNCH");
    punch_ops::log::init(cli.log_format, "warn,punch=info");
    raise_fd_limit();
    let code = match run(cli).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("punch: error: {e:#}");
            1
        }
    };
    // Exit now: returning would drop the runtime, which waits for its blocking threads, and
    // `connect`'s pipe reads stdin on one: a session the peer closed would leave the process
    // hanging until stdin ends.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    std::process::exit(code)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen { key_file } => {
            let kp = Keypair::generate()?;
            kp.save(&key_file)
                .with_context(|| format!("writing {}", key_file.display()))?;
            println!("{}", kp.public());
            Ok(())
        }
        Command::Id { key_file } => {
            let kp = Keypair::load(&key_file)?;
            println!("{}", kp.public());
            Ok(())
        }
        Command::Listen {
            common,
            forward,
            allow,
            allow_any,
            limits,
        } => {
            let allow = if allow_any {
                Allow::Any
            } else {
                let ids: std::collections::HashSet<PeerId> = allow.into_iter().collect();
                if ids.len() > MAX_ALLOW {
                    bail!(
                        "{} --allow ids, more than the {MAX_ALLOW} a registration carries; \
                         use --allow-any and filter in the service, or split the peers",
                        ids.len()
                    );
                }
                Allow::Only(ids)
            };
            let limits = ListenLimits {
                sessions_per_peer: limits.max_sessions_per_peer,
                sessions_total: limits.max_sessions,
                forwards_per_session: limits.max_forwards_per_session,
                forwards_total: limits.max_forwards,
            };
            listen(common, forward, allow, limits).await
        }
        Command::Connect {
            peer,
            common,
            local,
        } => connect(peer, common, local).await,
        Command::Discover { common, max } => discover(common, max).await,
        Command::Status {
            key_file,
            socket,
            json,
        } => status(key_file, socket, json).await,
    }
}

/// Starts what operators see of `client` (`--metrics`, the status socket); `extra` adds the
/// command's own fields to the status document and `gather` its own metrics.
async fn start_ops<X>(
    common: &Common,
    client: &Client,
    extra: X,
    gather: Option<Box<dyn prometheus_client::collector::Collector>>,
) -> anyhow::Result<punch::ops::Operated>
where
    X: Fn() -> serde_json::Value + Send + Sync + 'static,
{
    let path = common
        .status_socket
        .clone()
        .unwrap_or_else(|| punch_ops::status::socket_beside(&common.key_file));
    let ops = punch::ops::operate(client, "punch", common.metrics, &path, extra, gather)
        .await
        .context("--metrics / --status-socket")?;
    if let Some(at) = ops.metrics_addr() {
        eprintln!("punch: metrics at http://{at}/metrics");
    }
    Ok(ops)
}

async fn status(
    key_file: Option<PathBuf>,
    socket: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    let path = match (socket, key_file) {
        (Some(s), _) => s,
        (None, Some(k)) => punch_ops::status::socket_beside(&k),
        (None, None) => bail!("--key-file or --socket is required"),
    };
    let doc = punch_ops::status::query(&path).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", punch::ops::status_text(&doc));
    }
    Ok(())
}

/// Starts the client (it registers in the background: see [`registered`]).
async fn start(
    common: &Common,
    accept_inbound: bool,
    allow: Allow,
) -> anyhow::Result<(Client, punch::Incoming)> {
    let (keypair, created) = Keypair::load_or_generate(&common.key_file)
        .with_context(|| format!("key file {}", common.key_file.display()))?;
    if created {
        eprintln!(
            "punch: created identity {} in {}",
            keypair.public(),
            common.key_file.display()
        );
    }
    let rendezvous = tokio::net::lookup_host(&common.rendezvous)
        .await
        .with_context(|| format!("resolving {}", common.rendezvous))?
        .next()
        .with_context(|| format!("{} has no address", common.rendezvous))?;
    let mut config = Config::new(rendezvous, common.rendezvous_key, keypair);
    config.accept_inbound = accept_inbound;
    config.allow = allow;
    config.network = common.network.clone();
    anyhow::ensure!(
        common.session_stall_secs > 0,
        "--session-stall-secs must be at least 1"
    );
    anyhow::ensure!(
        common.session_unread_bytes >= u64::from(config.stream_window),
        "--session-unread-bytes must be at least one stream window ({} bytes)",
        config.stream_window
    );
    config.guard.write_stall = Duration::from_secs(common.session_stall_secs);
    config.guard.read_stall = Duration::from_secs(common.session_stall_secs);
    config.guard.max_unread = common.session_unread_bytes;
    config.relay = common.relay == Switch::On;
    config.direct = common.direct == Switch::On;
    anyhow::ensure!(
        config.relay || config.direct,
        "--relay off with --direct off leaves no way to reach a peer"
    );
    if let Some(bind) = common.bind {
        config.bind = bind;
    }
    Ok(Client::start(config).await?)
}

/// Waits for the first registration and says so.
async fn registered(common: &Common, client: &Client) -> anyhow::Result<()> {
    let observed = client
        .wait_registered(Duration::from_secs(common.register_timeout_secs))
        .await?;
    eprintln!(
        "punch: registered as {} (observed {observed}, local port {})",
        client.id(),
        client.local_addr().port()
    );
    match client.wait_nat(NAT_CHECK_WAIT).await {
        Some(nat) => eprintln!("punch: NAT check: {nat}"),
        None => eprintln!(
            "punch: NAT check: no result within {} s; going on",
            NAT_CHECK_WAIT.as_secs()
        ),
    }
    Ok(())
}

fn describe(session: &Session) -> String {
    let i = session.info();
    format!(
        "{} ({}, remote {}, {} ms)",
        i.peer,
        i.path,
        i.remote,
        i.elapsed.as_millis()
    )
}

async fn listen(
    common: Common,
    forward: String,
    allow: Allow,
    limits: ListenLimits,
) -> anyhow::Result<()> {
    let target = tokio::net::lookup_host(&forward)
        .await
        .with_context(|| format!("resolving --forward {forward}"))?
        .next()
        .with_context(|| format!("--forward {forward} has no address"))?;
    match &allow {
        Allow::Any => eprintln!("punch: serving any peer (--allow-any)"),
        Allow::Only(ids) => eprintln!("punch: serving {} allowed peer(s)", ids.len()),
    }
    let allowed = match &allow {
        Allow::Any => serde_json::Value::from("any"),
        Allow::Only(ids) => ids.iter().map(|id| id.short()).collect(),
    };
    let (client, incoming) = start(&common, true, allow).await?;
    let usage = std::sync::Arc::new(punch::forward::ListenUsage::default());
    let (u, caps) = (usage.clone(), limits.clone());
    let extra = move || {
        serde_json::json!({
            "command": "listen",
            "forward": target.to_string(),
            "allow": allowed,
            "caps": {
                "sessions": { "used": u.sessions(), "max": caps.sessions_total },
                "sessions_per_peer": { "max": caps.sessions_per_peer },
                "forwards": { "used": u.forwards(), "max": caps.forwards_total },
                "forwards_per_session": { "max": caps.forwards_per_session },
                "sessions_refused": u.sessions_refused(),
                "streams_refused": u.streams_refused(),
            },
        })
    };
    let u = usage.clone();
    let gather = punch_ops::metrics::Gather(move |e: &mut punch_ops::metrics::Emit<'_>| {
        use punch_ops::metrics::gauge_value;
        e.gauge(
            "listen_sessions",
            "Sessions served now",
            gauge_value(u.sessions()),
        )?;
        e.gauge(
            "listen_forwards",
            "Streams forwarded to the service now",
            gauge_value(u.forwards()),
        )?;
        e.counters(
            "listen_refused",
            "Closed at once for a cap, by what (session, stream)",
            &[
                (&[("what", "session")], u.sessions_refused()),
                (&[("what", "stream")], u.streams_refused()),
            ],
        )
    });
    let _ops = start_ops(&common, &client, extra, Some(Box::new(gather))).await?;
    registered(&common, &client).await?;
    println!("listening as {} forwarding to {target}", client.id());
    // Returning drops the serving future, which ends every session and forward it runs.
    tokio::select! {
        _ = shutdown_signal() => {
            eprintln!("punch: shutting down");
            Ok(())
        }
        _ = punch::forward::serve_counted(incoming, target, limits, usage) => bail!("client stopped"),
    }
}

/// Raises the soft limit on open files to the hard limit, as kaspad does: every session and
/// every forwarded stream holds a descriptor, and 1,024 (a common default) is few.
fn raise_fd_limit() {
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, hard)) => match rlimit::increase_nofile_limit(hard) {
            Ok(now) if now > soft => info!(before = soft, after = now, "open files limit raised"),
            Ok(now) => debug!(before = soft, after = now, hard, "open files limit"),
            Err(e) => warn!(soft, hard, error = %e, "could not raise the open files limit"),
        },
        Err(e) => warn!(error = %e, "could not read the open files limit"),
    }
}

async fn connect(peer: PeerId, common: Common, local: Option<SocketAddr>) -> anyhow::Result<()> {
    let (client, _incoming) = start(&common, false, Allow::Any).await?;
    let extra = move || {
        serde_json::json!({
            "command": "connect",
            "target": peer.to_string(),
            "local": local.map(|a| a.to_string()),
        })
    };
    let _ops = start_ops(&common, &client, extra, None).await?;
    registered(&common, &client).await?;
    let asked = std::time::Instant::now();
    let session = client
        .connect(peer)
        .await
        .with_context(|| format!("punching to {}", peer.short()))?;
    eprintln!("punch: connected to {}", describe(&session));
    report_path_changes(&session, asked);
    match local {
        Some(addr) => expose(session, addr).await,
        None => pipe(session).await,
    }
}

async fn discover(common: Common, max: usize) -> anyhow::Result<()> {
    let (client, _incoming) = start(&common, false, Allow::Any).await?;
    registered(&common, &client).await?;
    let peers = client.discover(max).await.context("discovering peers")?;
    eprintln!(
        "punch: {} peer(s) of {}",
        peers.len(),
        common.network.as_deref().unwrap_or_default()
    );
    for peer in peers {
        println!("{peer}");
    }
    client.shutdown().await;
    Ok(())
}

/// Prints when the session moves (from the relay to a direct connection), with the time since
/// the connect request.
fn report_path_changes(session: &Session, asked: std::time::Instant) {
    let mut path = session.path_updates();
    let peer = session.info().peer.short();
    tokio::spawn(async move {
        while path.changed().await.is_ok() {
            let now = *path.borrow_and_update();
            eprintln!(
                "punch: session with {peer} now {} (remote {}, {} ms)",
                now.kind,
                now.remote,
                asked.elapsed().as_millis()
            );
        }
    });
}

/// Why the session ended, for the exit message.
fn ended(session: &Session) -> String {
    match session.end_reason() {
        Some(reason) => format!("session to {} ended: {reason}", session.info().peer.short()),
        None => format!("session to {} ended", session.info().peer.short()),
    }
}

async fn expose(session: Session, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding --local {addr}"))?;
    println!("local {}", listener.local_addr()?);
    let opener = session.opener();
    let closed = session.closed();
    tokio::pin!(closed);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown_signal() => return Ok(()),
            _ = &mut closed => bail!("{}", ended(&session)),
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            res = listener.accept() => {
                let (tcp, from) = res?;
                let _ = tcp.set_nodelay(true);
                let opener = opener.clone();
                connections.spawn(async move {
                    match opener.open_stream().await {
                        Ok(stream) => {
                            if let Err(e) = punch::forward::splice(tcp, stream).await {
                                info!(%from, error = %e, "local connection ended with an error");
                            }
                        }
                        Err(e) => warn!(%from, error = %e, "could not open a stream"),
                    }
                });
            }
        }
    }
}

async fn pipe(session: Session) -> anyhow::Result<()> {
    let stream = session.open_stream().await?;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let upload = async {
        tokio::io::copy(&mut tokio::io::stdin(), &mut wr).await?;
        wr.shutdown().await
    };
    let download = async {
        let mut out = tokio::io::stdout();
        tokio::io::copy(&mut rd, &mut out).await?;
        out.flush().await
    };
    tokio::pin!(upload, download);
    // The remote closing ends the pipe; our stdin ending only half-closes it.
    let mut upload_done = false;
    loop {
        tokio::select! {
            res = &mut download => return res.context("receiving"),
            res = &mut upload, if !upload_done => {
                res.context("sending")?;
                upload_done = true;
            }
        }
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
