//! Operating punch: what the rendezvous, `punch` and `kaspad-punch` binaries share to be run as
//! daemons. Libraries (`punch`, `punch-rendezvous`, `punch-node`) do not depend on it: they
//! expose counters, events and snapshots, and the binaries turn them into metrics and status
//! here.
