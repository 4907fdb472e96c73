//! Tests of the configuration layers. Each test uses its own environment prefix, so tests
//! running in parallel never see each other's variables.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use super::*;

#[derive(Debug, Parser)]
struct Server {
    /// Peers at most.
    #[arg(long, default_value_t = 10)]
    max_peers: usize,
    #[arg(long, default_value = "default")]
    name: String,
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_secs: u64,
    #[arg(long)]
    quiet: bool,
    #[arg(long)]
    allow: Vec<String>,
    #[arg(long)]
    print_config: bool,
}

#[derive(Debug, Parser)]
struct Tool {
    #[command(subcommand)]
    command: Sub,
    #[arg(long, global = true, default_value = "text")]
    log_format: String,
}

#[derive(Debug, Subcommand)]
enum Sub {
    #[command(group(clap::ArgGroup::new("who").required(true).args(["allow", "allow_any"])))]
    Listen {
        #[arg(long)]
        rendezvous: String,
        #[arg(long)]
        allow: Vec<String>,
        #[arg(long, conflicts_with = "allow")]
        allow_any: bool,
        #[arg(long, default_value_t = 4)]
        max_sessions: usize,
    },
    Connect {
        peer: String,
        #[arg(long)]
        rendezvous: String,
    },
    Keygen {
        #[arg(long)]
        key_file: PathBuf,
    },
}

/// Writes `text` to a fresh file named after the test.
fn file(test: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("punch-ops-{}-{test}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

fn server(prefix: &str, args: &[&str]) -> Result<(Server, Effective), clap::Error> {
    try_parse_from::<Server, _, _>(
        prefix,
        std::iter::once("server").chain(args.iter().copied()),
    )
}

fn tool(prefix: &str, args: &[&str]) -> Result<(Tool, Effective), clap::Error> {
    try_parse_from::<Tool, _, _>(prefix, std::iter::once("tool").chain(args.iter().copied()))
}

fn message(e: clap::Error) -> String {
    e.to_string()
}

#[test]
fn env_names_are_the_prefix_and_the_long_flag_in_capitals() {
    assert_eq!(env_name("RENDEZVOUS", "max-peers"), "RENDEZVOUS_MAX_PEERS");
    assert_eq!(env_name("PUNCH", "rendezvous-key"), "PUNCH_RENDEZVOUS_KEY");
    let cmd = command::<Server>("T0");
    let env = |long: &str| {
        cmd.get_arguments()
            .find(|a| a.get_long() == Some(long))
            .and_then(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
    };
    assert_eq!(env("max-peers").as_deref(), Some("T0_MAX_PEERS"));
    assert_eq!(env("config").as_deref(), Some("T0_CONFIG"));
    assert_eq!(env("print-config"), None);
    // Subcommands' flags too.
    let cmd = command::<Tool>("T0");
    let listen = cmd.find_subcommand("listen").unwrap();
    let allow_any = listen
        .get_arguments()
        .find(|a| a.get_long() == Some("allow-any"))
        .unwrap();
    assert_eq!(allow_any.get_env().unwrap(), "T0_ALLOW_ANY");
}

#[test]
fn command_line_beats_environment_beats_file_beats_default() {
    let path = file(
        "precedence",
        "max_peers = 1\nname = \"file\"\ntimeout-secs = 7\n",
    );
    std::env::set_var("T1_MAX_PEERS", "2");
    std::env::set_var("T1_NAME", "env");
    let (s, eff) = server(
        "T1",
        &["--config", path.to_str().unwrap(), "--max-peers", "3"],
    )
    .unwrap();
    assert_eq!(s.max_peers, 3);
    assert_eq!(s.name, "env");
    assert_eq!(s.timeout_secs, 7);
    assert!(!s.quiet);
    assert_eq!(eff.source("max-peers").unwrap(), "command line");
    assert_eq!(eff.source("name").unwrap(), "environment T1_NAME");
    assert_eq!(
        eff.source("timeout-secs").unwrap(),
        format!("file {}", path.display())
    );
    assert_eq!(eff.source("quiet").unwrap(), "default");
}

#[test]
fn the_file_can_be_named_by_the_environment() {
    let path = file("config-env", "max-peers = 42\n");
    std::env::set_var("T2_CONFIG", &path);
    let (s, _) = server("T2", &[]).unwrap();
    assert_eq!(s.max_peers, 42);
}

#[test]
fn switches_and_repeatable_flags_come_from_booleans_and_arrays() {
    let path = file("switches", "quiet = true\nallow = [\"a\", \"b\"]\n");
    let (s, _) = server("T3", &["--config", path.to_str().unwrap()]).unwrap();
    assert!(s.quiet);
    assert_eq!(s.allow, ["a", "b"]);
    // The command line replaces the file's list rather than adding to it.
    let (s, _) = server("T3", &["--config", path.to_str().unwrap(), "--allow", "c"]).unwrap();
    assert_eq!(s.allow, ["c"]);
    std::env::set_var("T3B_QUIET", "1");
    let (s, _) = server("T3B", &[]).unwrap();
    assert!(s.quiet);
}

#[test]
fn unknown_keys_are_refused_naming_the_key_and_the_file() {
    let path = file("unknown", "max-peers = 1\nmax-pears = 2\n");
    let msg = message(server("T4", &["--config", path.to_str().unwrap()]).unwrap_err());
    assert!(msg.contains("max-pears"), "{msg}");
    assert!(msg.contains(path.to_str().unwrap()), "{msg}");
    // `print-config` is not a setting: a printed file read back must not print again.
    let path = file("unknown-print", "print-config = true\n");
    assert!(server("T4", &["--config", path.to_str().unwrap()]).is_err());
}

#[test]
fn invalid_values_from_the_file_name_the_flag_key_and_file() {
    let path = file("invalid", "timeout_secs = 0\n");
    let e = server("T5", &["--config", path.to_str().unwrap()]).unwrap_err();
    let msg = message(e);
    assert!(msg.contains("--timeout-secs"), "{msg}");
    assert!(msg.contains("`timeout_secs`"), "{msg}");
    assert!(msg.contains(path.to_str().unwrap()), "{msg}");

    let path = file("not-a-number", "max-peers = \"many\"\n");
    let msg = message(server("T5", &["--config", path.to_str().unwrap()]).unwrap_err());
    assert!(msg.contains("--max-peers"), "{msg}");

    for (name, text) in [
        ("array-for-one", "name = [\"a\", \"b\"]\n"),
        ("string-for-switch", "quiet = \"yes\"\n"),
        ("twice", "max-peers = 1\nmax_peers = 2\n"),
        ("not-toml", "max-peers = \n"),
    ] {
        let path = file(name, text);
        let msg = message(server("T5", &["--config", path.to_str().unwrap()]).unwrap_err());
        assert!(msg.contains(path.to_str().unwrap()), "{name}: {msg}");
    }
    let missing = std::env::temp_dir().join("punch-ops-no-such-file.toml");
    assert!(server("T5", &["--config", missing.to_str().unwrap()]).is_err());
}

#[test]
fn invalid_values_from_the_environment_name_the_variable() {
    std::env::set_var("T6_TIMEOUT_SECS", "0");
    let msg = message(server("T6", &[]).unwrap_err());
    assert!(msg.contains("--timeout-secs"), "{msg}");
    assert!(msg.contains("T6_TIMEOUT_SECS"), "{msg}");
}

#[test]
fn top_level_keys_serve_every_subcommand_and_tables_one() {
    let path = file(
        "subcommands",
        "rendezvous = \"flat:1\"\nlog-format = \"json\"\nkey-file = \"k\"\n\
         [listen]\nrendezvous = \"listen:1\"\nallow = [\"x\"]\n\
         [connect]\n",
    );
    let p = path.to_str().unwrap();
    let (t, _) = tool("T7", &["--config", p, "listen"]).unwrap();
    assert_eq!(t.log_format, "json");
    match t.command {
        Sub::Listen {
            rendezvous,
            allow,
            allow_any,
            max_sessions,
        } => {
            assert_eq!(rendezvous, "listen:1");
            // The required group --allow | --allow-any is satisfied by the file.
            assert_eq!(allow, ["x"]);
            assert!(!allow_any);
            assert_eq!(max_sessions, 4);
        }
        other => panic!("{other:?}"),
    }
    // `--config` after the subcommand works too (a global flag).
    let (t, eff) = tool("T7", &["connect", "PEER", "--config", p]).unwrap();
    match t.command {
        Sub::Connect { peer, rendezvous } => {
            assert_eq!(peer, "PEER");
            assert_eq!(rendezvous, "flat:1");
        }
        other => panic!("{other:?}"),
    }
    assert!(eff.to_toml().contains("[connect]\nrendezvous = \"flat:1\""));
    let (t, _) = tool("T7", &["--config", p, "keygen"]).unwrap();
    assert!(matches!(t.command, Sub::Keygen { key_file } if key_file == Path::new("k")));
}

#[test]
fn subcommand_tables_refuse_flags_the_subcommand_lacks() {
    let path = file("sub-unknown", "[connect]\nallow = [\"x\"]\n");
    let p = path.to_str().unwrap();
    // Refused even when another subcommand runs: a typo is never silently ignored.
    let msg = message(tool("T8", &["--config", p, "keygen", "--key-file", "k"]).unwrap_err());
    assert!(msg.contains("[connect] allow"), "{msg}");
    let path = file("sub-flat-unknown", "allow-all = true\n");
    let p = path.to_str().unwrap();
    let msg = message(tool("T8", &["--config", p, "keygen", "--key-file", "k"]).unwrap_err());
    assert!(msg.contains("allow-all"), "{msg}");
}

#[test]
fn the_printed_configuration_reads_back_to_the_same_values() {
    let (_, eff) = server(
        "T9",
        &[
            "--max-peers",
            "77",
            "--name",
            "with \"quotes\"",
            "--quiet",
            "--allow",
            "a",
            "--allow",
            "b",
        ],
    )
    .unwrap();
    let printed = eff.to_toml();
    assert!(
        printed.contains("max-peers = 77  # command line"),
        "{printed}"
    );
    assert!(printed.contains("timeout-secs = 5  # default"), "{printed}");
    assert!(!printed.contains("print-config"), "{printed}");
    let path = file("round-trip", &printed);
    let (s, again) = server("T9", &["--config", path.to_str().unwrap()]).unwrap();
    assert_eq!(s.max_peers, 77);
    assert_eq!(s.name, "with \"quotes\"");
    assert!(s.quiet);
    assert_eq!(s.allow, ["a", "b"]);
    let strip = |t: &str| -> Vec<String> {
        t.lines()
            .map(|l| l.split("  #").next().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(strip(&again.to_toml()), strip(&printed));
}
