//! Fuzz harnesses of punch (STYLE.md 14: a fuzz target for every decoder that takes bytes from
//! the network, plus the pure state machines driven by arbitrary event sequences).
//!
//! The targets in `fuzz_targets/` only call into these modules:
//! - [`proto_checks`]: framing, control messages, the Noise handshakes and transport, the
//!   control channel handshake over a stream;
//! - [`punch_checks`]: the punched-stream preamble and `SecureStream`;
//! - [`registry`], [`attempt`], [`token_bucket`], [`rate_table`], [`gate`], [`refusal_log`],
//!   [`throttle`], [`yamux_guard`], [`alias_table`]: the state machines, with `arbitrary`
//!   events.
//!
//! The byte-level modules ([`input`], [`common`], [`proto_checks`], [`punch_checks`]) use only
//! what the workspace crates depend on, so `proto/tests/fuzz_regressions.rs` and
//! `punch/tests/fuzz_regressions.rs` include them by path and replay `fuzz/seeds/` and
//! `fuzz/regressions/` on stable Rust.

pub mod alias_table;
pub mod attempt;
pub mod common;
pub mod gate;
pub mod input;
pub mod proto_checks;
pub mod punch_checks;
pub mod rate_table;
pub mod refusal_log;
pub mod relay_table;
pub mod registry;
pub mod throttle;
pub mod token_bucket;
pub mod yamux_guard;

/// What node-integration's `lock` is, for its alias table compiled here by path
/// ([`alias_table`]): a poisoned lock is taken anyway.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
