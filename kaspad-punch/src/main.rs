//! kaspad-punch: the real kaspad (rusty-kaspa's `kaspad_lib`, all of its flags) running
//! in-process, plus punch: private peers behind NATs, punched through a rendezvous and
//! connected to kaspad's P2P port through punch-node's loopback bridge.
//!
//! main only parses the command line, sets up logging and starts both halves: kaspad's
//! `Core` on this thread (as kaspad's own main does) and punch on a thread with its own tokio
//! runtime ([`punched`]).

mod cli;
mod punched;

use std::sync::Arc;

use anyhow::{bail, Context};
use kaspa_core::signals::Signals;
use kaspa_utils::fd_budget;
use kaspad_lib::args::Args;
use kaspad_lib::daemon::{create_core, DESIRED_DAEMON_SOFT_FD_LIMIT};

fn main() -> anyhow::Result<()> {
    kaspa_alloc::init_allocator_with_default_settings();
    // The whole command line first, as kaspad's `--help` and errors expect; then the punch
    // flags again with their `--punch-config` file (which that first parse does not read).
    let matches = cli::command().get_matches();
    let punch = cli::parse_punch(std::env::args_os()).unwrap_or_else(|e| e.exit());
    if matches.get_flag(cli::PRINT_CONFIG_FLAG) {
        print!("{}", punch.effective.to_toml());
        return Ok(());
    }
    let log_format = punch.log_format;
    let punch = punch.args;
    let mut args =
        Args::parse(cli::kaspad_argv(std::env::args_os())).context("kaspad arguments")?;

    // Slots are bound before kaspad starts: its --addpeer list is fixed at start.
    let slots = match &punch {
        Some(punch) => Some(punched::prepare(punch, &mut args)?),
        None => None,
    };
    // Logs of punch (tracing) go to stderr; kaspad keeps its own logger (the `log` crate's
    // global logger, which kaspad installs itself), so no `log` bridge is installed here.
    tracing::subscriber::set_global_default(punch_ops::log::subscriber(log_format, "info"))
        .context("installing the punch logger")?;

    if let Err(e) = fd_budget::try_set_fd_limit(DESIRED_DAEMON_SOFT_FD_LIMIT) {
        eprintln!(
            "could not raise the file descriptor limit to {DESIRED_DAEMON_SOFT_FD_LIMIT}: {e}"
        );
    }
    let fd_total_budget = fd_budget::limit()
        .saturating_sub(i32::try_from(args.rpc_max_clients).unwrap_or(i32::MAX))
        .saturating_sub(i32::try_from(args.inbound_limit).unwrap_or(i32::MAX))
        .saturating_sub(i32::try_from(args.outbound_target).unwrap_or(i32::MAX));
    if fd_total_budget <= 0 {
        bail!("file descriptor limit too low for kaspad");
    }
    let node_p2p = punched::p2p_address(&args);
    let network = punched::network_name(&args);
    let (core, rpc) = create_core(args, fd_total_budget);
    Arc::new(Signals::new(&core)).init();

    let punch_thread = match (punch, slots) {
        (Some(p), Some(slots)) => Some(punched::start(p, slots, rpc.clone(), node_p2p, network)?),
        _ => None,
    };
    drop(rpc);
    core.run();
    if let Some(t) = punch_thread {
        t.stop();
    }
    Ok(())
}
