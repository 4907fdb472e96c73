//! punch-demo: a rendezvous and two Kaspa P2P nodes (kaspa-p2p-lib's adaptor with kaspad's
//! handshake rules) punch to each other and complete Kaspa's handshake over the punched
//! session. Prints a timeline; exits 0 only when both nodes reached Ready.

mod timeline_layer;

use clap::Parser;
use punch_node::demo::{self, DemoConfig, Timeline};
use punch_node::node::DEFAULT_NETWORK;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Network name of node A.
    #[arg(long, default_value = DEFAULT_NETWORK)]
    network_a: String,
    /// Network name of node B (give a different one to watch the handshake refuse it).
    #[arg(long, default_value = DEFAULT_NETWORK)]
    network_b: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let timeline = Timeline::new();
    // Logs (RUST_LOG, warnings by default) go to stderr; punch's milestones go to the timeline.
    let log_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let milestones = Targets::new().with_target("punch", tracing::Level::DEBUG);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(log_filter),
        )
        .with(timeline_layer::TimelineLayer::new(timeline.clone()).with_filter(milestones))
        .init();
    tracing_log::LogTracer::init().ok();

    println!("punch-demo: two Kaspa P2P nodes (kaspa-p2p-lib 2.1 adaptor, kaspad handshake rules, protocol {}) connected by punch", punch_node::handshake::PROTOCOL_VERSION);
    println!("mode: loopback (everything on 127.0.0.1, no NAT in between; the network-namespace NAT mode is not wired yet)");
    let report = demo::run(
        DemoConfig {
            network_a: args.network_a,
            network_b: args.network_b,
        },
        timeline.clone(),
    )
    .await;
    let report = match report {
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
