//! The binaries' log subscriber: human-readable lines on stderr, or one JSON object per line for
//! log collectors (`--log-format json`). `RUST_LOG` picks the levels in both formats.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2025-01-01T00:00:00Z  INFO conn{addr=.. peer=..}: registered ...`, colored on a terminal.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, the event's fields flattened,
    /// and `span` (the innermost span's fields, such as `peer`).
    Json,
}

/// Installs the global subscriber writing to stderr in `format`, with the levels of `RUST_LOG`,
/// or `default_filter` (e.g. `"info"`) when it is unset or invalid. Also routes the `log` crate
/// (tokio-yamux logs through it) into tracing. Does nothing if a subscriber is already set.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
