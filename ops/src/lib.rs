//! Operating punch: what the rendezvous, `punch` and `kaspad-punch` binaries share to be run as
//! daemons. Libraries (`punch`, `punch-rendezvous`, `punch-node`) do not depend on it: they
//! expose counters, events and snapshots, and the binaries turn them into metrics and status
//! with it.
//!
//! - [`metrics`]: the `--metrics ADDR` HTTP endpoint and the collector that reads a program's
//!   counters at each scrape.
//! - [`status`]: the local status socket `punch status` asks.

pub mod metrics;
pub mod status;
