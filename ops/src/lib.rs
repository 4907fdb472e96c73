//! Operating punch: what the rendezvous, `punch` and `kaspad-punch` binaries share to be run as
//! daemons. Libraries (`punch`, `punch-rendezvous`, `punch-node`) do not depend on it: they
//! expose counters, events and snapshots, and the binaries turn them into metrics and status
//! with it.
//!
//! - [`config`]: every flag also from the environment and a TOML file (`--config`), and the
//!   effective configuration printed back.
//! - [`log`]: the log subscriber, as text or JSON lines (`--log-format`).
//! - [`metrics`]: the `--metrics ADDR` HTTP endpoint and the collector that reads a program's
//!   counters at each scrape.
//! - [`status`]: the local status socket `punch status` asks.

pub mod config;
pub mod log;
pub mod metrics;
pub mod status;
