//! The command line: every kaspad flag (kaspad's own clap definition, `kaspad_lib::args::cli`)
//! plus the punch flags. The punch flags are read here and removed from the argument list
//! before the rest goes to kaspad's own parser, so kaspad sees exactly what it knows.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::Context;
use clap::builder::BoolishValueParser;
use clap::{Arg, ArgAction, ArgMatches, Command};
use punch_ops::log::LogFormat;
use std::time::Duration;

use punch_node::link::{
    DEFAULT_INBOUND_IDLE_TIMEOUT, DEFAULT_MAX_INBOUND, DEFAULT_MAX_INBOUND_PER_IP,
};
use punch_node::peering::DEFAULT_TARGET;
use punch_proto::PeerId;

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

/// kaspad's command with the punch flags added (so `--help` lists both). kaspad's own flags
/// keep kaspad's ways (the command line, `--configfile`, which refuses keys kaspad does not
/// know); the punch flags have their own layers, see [`parse_punch`].
pub fn command() -> Command {
    kaspad_lib::args::cli()
        .name("kaspad-punch")
        .about(
            "kaspad with punch: private peers behind NATs connected directly by TCP hole punching",
        )
        .args(punch_flags())
        .arg(
            Arg::new(PRINT_CONFIG_FLAG)
                .long(PRINT_CONFIG_FLAG)
                .action(ArgAction::SetTrue)
                .help("Punch: print the punch flags' effective values (command line, KASPAD_PUNCH_* environment, --punch-config file or default, each with its source) as a file --punch-config accepts, and exit without starting kaspad"),
        )
}

/// Prints the punch configuration and exits; not itself a punch flag (never read from the
/// environment or the file, nor printed, so a printed file read back does not print again).
pub const PRINT_CONFIG_FLAG: &str = "punch-print-config";

/// The id of the punch flags' configuration file flag.
pub const CONFIG_FLAG: &str = "punch-config";

/// The punch flags alone. Each can also come from the environment, `KASPAD_` and the flag in
/// capitals (`KASPAD_PUNCH_RENDEZVOUS`), and from the TOML file of `--punch-config`.
fn punch_flags() -> &'static [Arg] {
    static FLAGS: OnceLock<Vec<Arg>> = OnceLock::new();
    FLAGS.get_or_init(build_punch_flags)
}

/// A default value clap can hold (without its `string` feature an `Arg` takes only
/// `&'static str`); built once, as [`punch_flags`] caches the flags.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn build_punch_flags() -> Vec<Arg> {
    let flags = Command::new("punch-flags")
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
                .default_value(leak(DEFAULT_TARGET.to_string()))
                .help("Punch: punched outbound peers to keep, found on the rendezvous among private nodes of this node's network, in addition to --outpeers; 0 turns discovery off"),
        )
        .arg(
            Arg::new("punch-max-inbound")
                .long("punch-max-inbound")
                .env("KASPAD_PUNCH_MAX_INBOUND")
                .value_name("N")
                .value_parser(clap::value_parser!(usize))
                .default_value(leak(DEFAULT_MAX_INBOUND.to_string()))
                .help("Punch: inbound punched peers at most"),
        )
        .arg(
            Arg::new("punch-max-inbound-per-ip")
                .long("punch-max-inbound-per-ip")
                .env("KASPAD_PUNCH_MAX_INBOUND_PER_IP")
                .value_name("N")
                .value_parser(clap::value_parser!(u32).range(1..))
                .default_value(leak(DEFAULT_MAX_INBOUND_PER_IP.to_string()))
                .help("Punch: inbound punched peers at most from one IP address, as the rendezvous observed it"),
        )
        .arg(
            Arg::new("punch-inbound-idle-secs")
                .long("punch-inbound-idle-secs")
                .env("KASPAD_PUNCH_INBOUND_IDLE_SECS")
                .value_name("SECS")
                .value_parser(clap::value_parser!(u64).range(1..))
                .default_value(leak(DEFAULT_INBOUND_IDLE_TIMEOUT.as_secs().to_string()))
                .help("Punch: close an inbound punched session that carries no Kaspa connection for this long, in seconds, freeing its slot"),
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
        .arg(
            Arg::new("punch-log-format")
                .long("punch-log-format")
                .env("KASPAD_PUNCH_LOG_FORMAT")
                .value_name("FORMAT")
                .value_parser(clap::value_parser!(LogFormat))
                .default_value("text")
                .help("Punch: how punch's log lines on stderr are written: text, or json (one object per line) for log collectors; kaspad's own lines keep kaspad's format"),
        )
        .arg(
            Arg::new(CONFIG_FLAG)
                .long(CONFIG_FLAG)
                .env("KASPAD_PUNCH_CONFIG")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help("Punch: TOML file of punch flag values, keys named as the flags (punch-rendezvous = \"203.0.113.7:7717\", punch-peer = [\"...\"]); kaspad's flags go in --configfile. Precedence: command line, then environment, then this file, then the default [default: none]"),
        );
    flags
        .get_arguments()
        .cloned()
        .map(|arg| {
            if matches!(arg.get_action(), ArgAction::SetTrue) {
                // KASPAD_PUNCH_NO_ACCEPT=1 as well as =true.
                arg.value_parser(BoolishValueParser::new())
            } else {
                arg
            }
        })
        .collect()
}

/// Whether `--name` is a punch flag, and if so whether it takes a value.
fn punch_flag(name: &str) -> Option<bool> {
    punch_flags()
        .iter()
        .find(|a| a.get_long() == Some(name))
        .map(|a| matches!(a.get_action(), ArgAction::Set | ArgAction::Append))
}

/// The punch flags from the command line, the environment and the `--punch-config` file (the
/// file's keys must be punch flags), and how punch logs.
#[derive(Debug)]
pub struct Punch {
    /// `None` without `--punch-rendezvous`: punch is off.
    pub args: Option<PunchArgs>,
    pub log_format: LogFormat,
    /// Where each value came from, for `--punch-print-config`.
    pub effective: punch_ops::config::Effective,
}

/// Parses the punch flags of `argv` (the whole command line, kaspad's flags included) with
/// their environment variables and `--punch-config` file. An invalid value, a key in the file
/// that is no punch flag or a missing companion flag is an error naming the flag (and the
/// file key).
pub fn parse_punch(argv: impl IntoIterator<Item = OsString>) -> Result<Punch, clap::Error> {
    let (_, punch) = split_argv(argv);
    let cmd = Command::new("kaspad-punch")
        .disable_help_flag(true)
        .args(punch_flags());
    let (m, effective) = punch_ops::config::try_layered_from(cmd, CONFIG_FLAG, punch)?;
    let args = punch_args(&m).map_err(|e| {
        clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e:#}\n"))
    })?;
    Ok(Punch {
        effective,
        args,
        log_format: m
            .get_one::<LogFormat>("punch-log-format")
            .copied()
            .unwrap_or_default(),
    })
}

/// The punch flags, if punch is enabled (`--punch-rendezvous` given).
fn punch_args(m: &ArgMatches) -> anyhow::Result<Option<PunchArgs>> {
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
    split_argv(args).0
}

/// The arguments split into kaspad's and punch's, each list starting with the binary name.
fn split_argv(args: impl IntoIterator<Item = OsString>) -> (Vec<OsString>, Vec<OsString>) {
    let mut kaspad = Vec::new();
    let mut punch = Vec::new();
    let mut value_of_punch_flag = false;
    for (i, arg) in args.into_iter().enumerate() {
        if i == 0 {
            kaspad.push(arg.clone());
            punch.push(arg);
            continue;
        }
        if value_of_punch_flag {
            value_of_punch_flag = false;
            punch.push(arg);
            continue;
        }
        let text = arg.to_string_lossy();
        if text == format!("--{PRINT_CONFIG_FLAG}") {
            continue; // neither kaspad's nor a layered punch flag: main reads it
        }
        let flag = text.strip_prefix("--").and_then(|t| {
            let name = t.split('=').next().unwrap_or(t);
            punch_flag(name).map(|takes_value| (takes_value, name.len() == t.len()))
        });
        match flag {
            Some((takes_value, bare)) => {
                value_of_punch_flag = takes_value && bare;
                punch.push(arg);
            }
            None => kaspad.push(arg),
        }
    }
    (kaspad, punch)
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
            "--punch-config",
            "/tmp/punch.toml",
            "--punch-log-format=json",
            "--configfile",
            "/tmp/kaspad.toml",
        ]
        .map(OsString::from);
        let strings = |v: Vec<OsString>| -> Vec<String> {
            v.into_iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect()
        };
        let (kaspad, punch) = split_argv(argv.clone());
        assert_eq!(
            strings(kaspad),
            [
                "kaspad-punch",
                "--testnet",
                "--appdir",
                "/tmp/x",
                "--configfile",
                "/tmp/kaspad.toml"
            ]
        );
        assert_eq!(punch.len(), argv.len() - 5);
        assert_eq!(punch[0], "kaspad-punch");
        assert!(strings(punch)
            .iter()
            .all(|a| a == "kaspad-punch" || !a.starts_with("--") || a.starts_with("--punch-")));
    }

    const KEY: &str = "finorsu4gcmotpfda2gbspxaskpnde2nrnzgwk64ek6ki2dq6qqa";

    /// A `--punch-config` file written for one test.
    fn config(test: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("kaspad-punch-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{test}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn parse(args: &[&str]) -> Result<Punch, clap::Error> {
        parse_punch(
            std::iter::once("kaspad-punch")
                .chain(args.iter().copied())
                .map(OsString::from),
        )
    }

    #[test]
    fn punch_flags_come_from_the_config_file_under_the_command_line() {
        let file = config(
            "layers",
            &format!(
                "punch-rendezvous = \"127.0.0.1:7717\"\npunch_rendezvous_key = \"{KEY}\"\n\
                 punch-key-file = \"/tmp/k.key\"\npunch-peer = [\"{KEY}\"]\n\
                 punch-outpeers = 2\npunch-max-inbound = 5\npunch-no-accept = true\n\
                 punch-log-format = \"json\"\n"
            ),
        );
        let path = file.to_str().unwrap();
        let p = parse(&["--testnet", "--punch-config", path, "--punch-max-inbound=9"]).unwrap();
        assert_eq!(p.log_format, LogFormat::Json);
        let a = p.args.expect("punch on: the file names the rendezvous");
        assert_eq!(a.rendezvous, "127.0.0.1:7717".parse().unwrap());
        assert_eq!(a.key_file, std::path::PathBuf::from("/tmp/k.key"));
        assert_eq!(a.peers.len(), 1);
        assert_eq!(a.outpeers, 2);
        assert!(!a.accept);
        assert_eq!(a.max_inbound, 9, "the command line wins over the file");
        assert_eq!(
            a.max_inbound_per_ip, DEFAULT_MAX_INBOUND_PER_IP,
            "neither: the default"
        );
        assert_eq!(
            a.status_socket,
            std::path::PathBuf::from("/tmp/k.key.status")
        );
    }

    #[test]
    fn a_config_file_key_that_is_no_punch_flag_is_refused_naming_it() {
        // kaspad's own flags belong in --configfile: kaspad-punch does not pass them on.
        let file = config("kaspad-key", "appdir = \"/tmp/x\"\n");
        let e = parse(&["--punch-config", file.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("key `appdir`") && e.contains("--punch-config"),
            "{e}"
        );

        let file = config("bad-value", "punch-max-inbound-per-ip = 0\n");
        let e = parse(&["--punch-config", file.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("punch-max-inbound-per-ip") && e.contains("bad-value.toml"),
            "{e}"
        );

        let e = parse(&["--punch-log-format", "xml"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("punch-log-format"), "{e}");
    }

    #[test]
    fn punch_is_off_without_a_rendezvous_and_a_missing_key_is_named() {
        let p = parse(&["--testnet", "--appdir", "/tmp/x"]).unwrap();
        assert!(p.args.is_none());
        assert_eq!(p.log_format, LogFormat::Text);
        let e = parse(&["--punch-rendezvous", "127.0.0.1:7717"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--punch-rendezvous-key is required"), "{e}");
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
            "--punch-config",
            "--punch-log-format",
            "--appdir",
            "--connect",
            "--listen",
        ] {
            assert!(help.contains(flag), "{flag} missing from --help");
        }
    }
}
