//! punch-demo: a rendezvous and two Kaspa P2P nodes (kaspa-p2p-lib's adaptor with kaspad's
//! handshake rules) punch to each other and complete Kaspa's handshake over the punched
//! session. Prints a timeline; exits 0 only when both nodes reached Ready.
//!
//! With the rights to make network namespaces (root), each node runs behind its own NAT
//! router in a NAT lab (`punch_demo::nat`); otherwise everything runs on loopback. The
//! first lines of the output say which. The hidden subcommands `rendezvous` and `peer` are the
//! NAT mode's processes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use punch_demo::nat::{self, LISTENING_PREFIX, REGISTERED_PREFIX, RESULT_PREFIX, SETUP_PREFIX};
use punch_demo::{DemoConfig, DemoPeer, PeerConfig, Report, Timeline};
use punch_node::node::DEFAULT_NETWORK;
use punch_proto::{Keypair, PeerId};
use tracing_subscriber::filter::EnvFilter;

#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Where the nodes run: `nat` puts each behind its own NAT router in network namespaces
    /// (needs root), `loopback` runs everything on 127.0.0.1, `auto` picks `nat` when it can.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    mode: Mode,
    /// Network name of node A.
    #[arg(long, default_value = DEFAULT_NETWORK)]
    network_a: String,
    /// Network name of node B (give a different one to watch the handshake refuse it).
    #[arg(long, default_value = DEFAULT_NETWORK)]
    network_b: String,
    #[command(subcommand)]
    role: Option<Process>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Auto,
    Nat,
    Loopback,
}

/// The NAT mode's processes (started by the demo itself inside the lab's namespaces).
#[derive(Debug, Subcommand)]
enum Process {
    /// The rendezvous on the lab's public host.
    #[command(hide = true)]
    Rendezvous {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long)]
        key_file: PathBuf,
    },
    /// One demo peer behind its router.
    #[command(hide = true)]
    Peer {
        #[arg(long)]
        who: String,
        #[arg(long)]
        network: String,
        #[arg(long)]
        rendezvous: SocketAddr,
        #[arg(long)]
        rendezvous_key: PeerId,
        #[arg(long)]
        key_file: PathBuf,
        /// Takes inbound punches.
        #[arg(long)]
        accept: bool,
        /// Punches to this peer (and dials it at the Kaspa level).
        #[arg(long)]
        connect: Option<PeerId>,
        /// The demo's name of the `--connect` peer, for the timeline.
        #[arg(long, default_value = "B")]
        connect_name: String,
    },
}

/// The longest a NAT-mode rendezvous lives, so one orphaned by a killed demo ends by itself.
const RENDEZVOUS_MAX_LIFE: Duration = Duration::from_secs(300);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let timeline = Timeline::new();
    // Logs (RUST_LOG, warnings by default) go to stderr; the timeline goes to stdout.
    let log_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(log_filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    match args.role {
        Some(Process::Rendezvous { bind, key_file }) => rendezvous(bind, key_file, &timeline).await,
        Some(Process::Peer {
            who,
            network,
            rendezvous,
            rendezvous_key,
            key_file,
            accept,
            connect,
            connect_name,
        }) => {
            let keypair = Keypair::load_or_generate(&key_file)
                .with_context(|| format!("--key-file {}", key_file.display()))?
                .0;
            let config = PeerConfig {
                who,
                network,
                rendezvous,
                rendezvous_key,
                keypair,
                bind: SocketAddr::from(([0, 0, 0, 0], 0)),
                accept,
            };
            peer(config, connect.map(|id| (id, connect_name)), &timeline).await
        }
        None => {
            let config = DemoConfig {
                network_a: args.network_a,
                network_b: args.network_b,
            };
            demo_main(args.mode, config, timeline).await
        }
    }
}

async fn demo_main(mode: Mode, config: DemoConfig, timeline: Arc<Timeline>) -> anyhow::Result<()> {
    println!(
        "punch-demo: two Kaspa P2P nodes (kaspa-p2p-lib 2.1 adaptor, kaspad handshake rules, protocol {}) connected by punch",
        punch_node::handshake::PROTOCOL_VERSION
    );
    let nat = match (mode, nat::unavailable()) {
        (Mode::Loopback, _) => {
            println!("mode: loopback (everything on 127.0.0.1, no NAT in between; asked for with --mode loopback)");
            false
        }
        (Mode::Auto, Some(why)) => {
            println!("mode: loopback (everything on 127.0.0.1, no NAT in between): the NAT mode needs network namespaces, and {why}");
            false
        }
        (Mode::Nat, Some(why)) => anyhow::bail!("--mode nat: {why}"),
        (_, None) => true,
    };
    let report = if nat {
        let exe = std::env::current_exe().context("finding this binary for the NAT lab")?;
        let t = timeline.clone();
        tokio::task::spawn_blocking(move || {
            let lab = nat::build_lab()?;
            println!("mode: nat ({})", nat::describe(&lab));
            nat::run(&lab, &exe, &config, t)
        })
        .await
        .context("NAT-mode task")?
    } else {
        punch_demo::run(config, timeline.clone()).await
    };
    let report: Report = match report {
        Ok(r) => r,
        Err(e) => {
            print!("{}", timeline.render());
            anyhow::bail!("demo failed: {e}");
        }
    };
    println!("{}", report.setup);
    print!("{}", timeline.render());
    if report.success() {
        println!(
            "result: both nodes reached Ready over the punched session ({} mode)",
            report.mode
        );
        Ok(())
    } else {
        println!(
            "result: FAILED (A ready: {}, B ready: {}){}",
            report.a_ready,
            report.b_ready,
            if report.rejections.is_empty() {
                String::new()
            } else {
                format!("; rejected: {}", report.rejections.join("; "))
            }
        );
        std::process::exit(1);
    }
}

/// The NAT mode's rendezvous: listens, prints `@listening ADDR KEY`, serves until killed.
async fn rendezvous(
    bind: SocketAddr,
    key_file: PathBuf,
    timeline: &Timeline,
) -> anyhow::Result<()> {
    timeline.export();
    let keypair = Keypair::load_or_generate(&key_file)
        .with_context(|| format!("--key-file {}", key_file.display()))?
        .0;
    let server = punch_rendezvous::Server::spawn(punch_rendezvous::Config::new(bind, keypair))
        .await
        .context("rendezvous")?;
    timeline.record(
        "R",
        format!(
            "rendezvous listening on {} (public host)",
            server.local_addr()
        ),
    );
    println!(
        "{LISTENING_PREFIX}{} {}",
        server.local_addr(),
        server.identity()
    );
    tokio::time::sleep(RENDEZVOUS_MAX_LIFE).await;
    Ok(())
}

/// One NAT-mode peer: registers, punches (or waits for the punch), runs the handshake and
/// prints `@result ...`.
async fn peer(
    config: PeerConfig,
    connect: Option<(PeerId, String)>,
    timeline: &Arc<Timeline>,
) -> anyhow::Result<()> {
    timeline.export();
    let result = async {
        let peer = DemoPeer::start(config, timeline).await?;
        println!("{REGISTERED_PREFIX}{}", peer.id());
        peer.run(connect.as_ref().map(|(id, n)| (*id, n.as_str())))
            .await
    }
    .await;
    match result {
        Ok(finished) => {
            let outcome = &finished.outcome;
            println!("{SETUP_PREFIX}{}", outcome.setup);
            match (outcome.ready, &outcome.rejection) {
                (true, _) => println!("{RESULT_PREFIX}ready"),
                (false, Some(reason)) => {
                    println!("{RESULT_PREFIX}rejected {}", reason.replace('\n', " "))
                }
                (false, None) => println!("{RESULT_PREFIX}failed no Ready in time"),
            }
            // The demo ends both peers once both reported; until then the session stays.
            finished.hold(punch_demo::CLOSE_WAIT).await;
        }
        Err(e) => println!("{RESULT_PREFIX}failed {}", e.to_string().replace('\n', " ")),
    }
    Ok(())
}
