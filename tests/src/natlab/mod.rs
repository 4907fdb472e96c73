//! The NAT lab ([`punch_natlab`], re-exported) plus [`run_case`], which runs the real
//! `rendezvous` and `punch` binaries across one lab topology (the matrix and smoke tests), and
//! [`start_rendezvous`], the real rendezvous on a lab's public host.

mod case;

pub use case::{
    expected, results_dir, run_case, start_peers, start_rendezvous, variant, wait_connected,
    wait_moved, Expect, Outcome, Peers, FAILURE_BOUND, TUNNEL, UPGRADE_BOUND,
};
pub use punch_natlab::*;
