//! The binaries' log subscriber: human-readable lines on stderr, or one JSON object per line for
//! log collectors (`--log-format json`). `RUST_LOG` picks the levels in both formats.

use std::io::IsTerminal;

use tracing::Subscriber;
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

/// The subscriber [`init`] installs, for a program that installs it itself: kaspad-punch, whose
/// `log` crate logger is kaspad's own, so it must not route `log` into tracing as [`init`] does.
pub fn subscriber(format: LogFormat, default_filter: &str) -> Box<dyn Subscriber + Send + Sync> {
    build(format, filter(default_filter))
}

fn build(format: LogFormat, filter: EnvFilter) -> Box<dyn Subscriber + Send + Sync> {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => Box::new(
            builder
                .with_ansi(
                    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
                )
                .finish(),
        ),
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        ),
    }
}

/// Installs the global subscriber writing to stderr in `format`, with the levels of `RUST_LOG`,
/// or `default_filter` (e.g. `"info"`) when it is unset or invalid. Also routes the `log` crate
/// (tokio-yamux logs through it) into tracing. Does nothing if a subscriber is already set.
pub fn init(format: LogFormat, default_filter: &str) {
    // `log` records above the filter's most verbose level are dropped at the macro, as
    // tracing-subscriber's own `try_init` does (tokio-yamux traces every frame).
    let filter = filter(default_filter);
    let most = filter
        .max_level_hint()
        .unwrap_or(tracing_subscriber::filter::LevelFilter::TRACE);
    if tracing::subscriber::set_global_default(build(format, filter)).is_ok() {
        let _ = tracing_log::LogTracer::builder()
            .with_max_level(tracing_log::AsLog::as_log(&most))
            .init();
    }
}

fn filter(default_filter: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter))
}
