//! The command line: every kaspad flag (kaspad's own clap definition, `kaspad_lib::args::cli`)
//! plus the punch flags. The punch flags are read here and removed from the argument list
//! before the rest goes to kaspad's own parser, so kaspad sees exactly what it knows.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Arg, ArgAction, ArgMatches, Command};
use std::time::Duration;

use punch_node::link::{
    DEFAULT_INBOUND_IDLE_TIMEOUT, DEFAULT_MAX_INBOUND, DEFAULT_MAX_INBOUND_PER_IP,
};
use punch_node::peering::DEFAULT_TARGET;
use punch_proto::PeerId;

/// Punch flags: (long name, takes a value).
const PUNCH_FLAGS: &[(&str, bool)] = &[
    ("punch-rendezvous", true),
    ("punch-rendezvous-key", true),
    ("punch-key-file", true),
    ("punch-peer", true),
    ("punch-accept", false),
    ("punch-no-accept", false),
    ("punch-outpeers", true),
    ("punch-max-inbound", true),
    ("punch-max-inbound-per-ip", true),
    ("punch-inbound-idle-secs", true),
    ("punch-metrics", true),
    ("punch-status-socket", true),
];

/// What the punch flags ask for.
#[derive(Debug, Clone)]
pub struct PunchArgs {
    pub rendezvous: SocketAddr,
    pub rendezvous_key: PeerId,
    pub key_file: PathBuf,
    pub peers: Vec<PeerId>,
    pub accept: bool,
    pub outpeers: usize,
    pub max_inbound: usize,
    pub max_inbound_per_ip: usize,
    pub inbound_idle_timeout: Duration,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// The status socket (`punch status --key-file <punch key>` asks it).
    pub status_socket: PathBuf,
}

impl PunchArgs {
    /// Slots kaspad dials punched peers through: one per discovered peer kept and one per
    /// pinned peer (see punch_node::slots).
    pub fn slots(&self) -> usize {
        self.outpeers + self.peers.len()
    }
}

/// kaspad's command with the punch flags added (so `--help` lists both). Each punch flag can
/// also come from the environment, `KASPAD_` and the flag in capitals (`KASPAD_PUNCH_RENDEZVOUS`);
/// the command line wins. kaspad's own flags keep kaspad's ways (the command line,
/// `--configfile`).
pub fn command() -> Command {
    kaspad_lib::args::cli()
        .name("kaspad-punch")
        .about("kaspad with punch: private peers behind NATs connected directly by TCP hole punching")
        .arg(
            Arg::new("punch-rendezvous")
                .long("punch-rendezvous")
                .env("KASPAD_PUNCH_RENDEZVOUS")
                .value_name("HOST:PORT")
                .help("Punch: rendezvous server address. Enables punch."),
        )
        .arg(
            Arg::new("punch-rendezvous-key")
                .long("punch-rendezvous-key")
                .env("KASPAD_PUNCH_RENDEZVOUS_KEY")
                .value_name("KEY")
                .help("Punch: the rendezvous server's public key (52 base32 characters)."),
        )
        .arg(
            Arg::new("punch-key-file")
                .long("punch-key-file")
                .env("KASPAD_PUNCH_KEY_FILE")
                .value_name("PATH")
                .help("Punch: this node's identity key file (created on first start)."),
        )
        .arg(
            Arg::new("punch-peer")
                .long("punch-peer")
                .env("KASPAD_PUNCH_PEER")
                .value_name("ID")
                .action(ArgAction::Append)
                .help("Punch: a private peer to keep connected, re-punched when its session drops (repeatable)."),
        )
        .arg(
            Arg::new("punch-accept")
                .long("punch-accept")
                .env("KASPAD_PUNCH_ACCEPT")
                .action(ArgAction::SetTrue)
                .help("Punch: take inbound punches from other peers (the default with punch on; kept for older command lines)."),
        )
        .arg(
            Arg::new("punch-no-accept")
                .long("punch-no-accept")
                .env("KASPAD_PUNCH_NO_ACCEPT")
                .action(ArgAction::SetTrue)
                .conflicts_with("punch-accept")
                .help("Punch: take no inbound punches (this node is then not listed for discovery; it still dials its own punched peers)."),
        )
        .arg(
            Arg::new("punch-outpeers")
                .long("punch-outpeers")
                .env("KASPAD_PUNCH_OUTPEERS")
                .value_name("N")
                .value_parser(clap::value_parser!(u8).range(0..=64))
                .help(format!("Punch: punched outbound peers to keep, found on the rendezvous among private nodes of this node's network, in addition to --outpeers; 0 turns discovery off [default: {DEFAULT_TARGET}]")),
        )
        .arg(
            Arg::new("punch-max-inbound")
                .long("punch-max-inbound")
                .env("KASPAD_PUNCH_MAX_INBOUND")
                .value_name("N")
                .value_parser(clap::value_parser!(usize))
                .help(format!("Punch: inbound punched peers at most [default: {DEFAULT_MAX_INBOUND}]")),
        )
        .arg(
            Arg::new("punch-max-inbound-per-ip")
                .long("punch-max-inbound-per-ip")
                .env("KASPAD_PUNCH_MAX_INBOUND_PER_IP")
                .value_name("N")
                .value_parser(clap::value_parser!(u32).range(1..))
                .help(format!("Punch: inbound punched peers at most from one IP address, as the rendezvous observed it [default: {DEFAULT_MAX_INBOUND_PER_IP}]")),
        )
        .arg(
            Arg::new("punch-inbound-idle-secs")
                .long("punch-inbound-idle-secs")
                .env("KASPAD_PUNCH_INBOUND_IDLE_SECS")
                .value_name("SECS")
                .value_parser(clap::value_parser!(u64).range(1..))
                .help(format!(
                    "Punch: close an inbound punched session that carries no Kaspa connection for this long, freeing its slot [default: {}]",
                    DEFAULT_INBOUND_IDLE_TIMEOUT.as_secs()
                )),
        )
        .arg(
            Arg::new("punch-metrics")
                .long("punch-metrics")
                .env("KASPAD_PUNCH_METRICS")
                .value_name("ADDR")
                .value_parser(clap::value_parser!(SocketAddr))
                .help("Punch: serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9719 [default: off]"),
        )
        .arg(
            Arg::new("punch-status-socket")
                .long("punch-status-socket")
                .env("KASPAD_PUNCH_STATUS_SOCKET")
                .value_name("PATH")
                .help("Punch: the unix socket (mode 0600) `punch status` asks [default: beside --punch-key-file, <key-file>.status]"),
        )
}

/// The punch flags, if punch is enabled (`--punch-rendezvous` given).
pub fn punch_args(m: &ArgMatches) -> anyhow::Result<Option<PunchArgs>> {
    let Some(rendezvous) = m.get_one::<String>("punch-rendezvous") else {
        return Ok(None);
    };
    let rendezvous = std::net::ToSocketAddrs::to_socket_addrs(rendezvous.as_str())
        .with_context(|| format!("--punch-rendezvous {rendezvous}"))?
        .next()
        .with_context(|| format!("--punch-rendezvous {rendezvous}: no address"))?;
    let rendezvous_key = m
        .get_one::<String>("punch-rendezvous-key")
        .context("--punch-rendezvous-key is required with --punch-rendezvous")?
        .parse()
        .context("--punch-rendezvous-key")?;
    let key_file: PathBuf = m
        .get_one::<String>("punch-key-file")
        .context("--punch-key-file is required with --punch-rendezvous")?
        .into();
    let status_socket = m
        .get_one::<String>("punch-status-socket")
        .map(PathBuf::from)
        .unwrap_or_else(|| punch_ops::status::socket_beside(&key_file));
    let peers = m
        .get_many::<String>("punch-peer")
        .into_iter()
        .flatten()
        .map(|p| p.parse().with_context(|| format!("--punch-peer {p}")))
        .collect::<anyhow::Result<Vec<PeerId>>>()?;
    Ok(Some(PunchArgs {
        rendezvous,
        rendezvous_key,
        key_file,
        peers,
        accept: !m.get_flag("punch-no-accept"),
        outpeers: m
            .get_one::<u8>("punch-outpeers")
            .map(|n| usize::from(*n))
            .unwrap_or(DEFAULT_TARGET),
        max_inbound: m
            .get_one::<usize>("punch-max-inbound")
            .copied()
            .unwrap_or(DEFAULT_MAX_INBOUND),
        max_inbound_per_ip: m
            .get_one::<u32>("punch-max-inbound-per-ip")
            .map(|n| *n as usize)
            .unwrap_or(DEFAULT_MAX_INBOUND_PER_IP),
        inbound_idle_timeout: m
            .get_one::<u64>("punch-inbound-idle-secs")
            .map(|s| Duration::from_secs(*s))
            .unwrap_or(DEFAULT_INBOUND_IDLE_TIMEOUT),
        metrics: m.get_one::<SocketAddr>("punch-metrics").copied(),
        status_socket,
    }))
}

/// The arguments without the punch flags, for kaspad's own parser.
pub fn kaspad_argv(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for arg in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        let text = arg.to_string_lossy();
        let flag = PUNCH_FLAGS.iter().find(|(name, _)| {
            text.strip_prefix("--")
                .is_some_and(|t| t == *name || t.starts_with(&format!("{name}=")))
        });
        match flag {
            Some((name, takes_value)) => {
                skip_value = *takes_value && text.as_ref() == format!("--{name}");
            }
            None => out.push(arg),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punch_flags_are_removed_and_the_rest_kept() {
        let argv = [
            "kaspad-punch",
            "--testnet",
            "--punch-rendezvous",
            "1.2.3.4:7717",
            "--punch-peer=abc",
            "--punch-accept",
            "--appdir",
            "/tmp/x",
            "--punch-max-inbound",
            "3",
            "--punch-inbound-idle-secs=10",
            "--punch-outpeers",
            "2",
            "--punch-no-accept",
            "--punch-max-inbound-per-ip=1",
            "--punch-metrics",
            "127.0.0.1:9719",
            "--punch-status-socket=/tmp/s",
        ]
        .map(OsString::from);
        let kept: Vec<String> = kaspad_argv(argv)
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert_eq!(kept, ["kaspad-punch", "--testnet", "--appdir", "/tmp/x"]);
    }

    #[test]
    fn help_lists_kaspad_and_punch_flags() {
        let help = command().render_long_help().to_string();
        for flag in [
            "--punch-rendezvous",
            "--punch-peer",
            "--punch-accept",
            "--punch-inbound-idle-secs",
            "--punch-outpeers",
            "--punch-no-accept",
            "--punch-max-inbound-per-ip",
            "--punch-metrics",
            "--punch-status-socket",
            "--appdir",
            "--connect",
            "--listen",
        ] {
            assert!(help.contains(flag), "{flag} missing from --help");
        }
    }
}
