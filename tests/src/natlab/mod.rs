//! The NAT lab ([`punch_natlab`], re-exported) plus [`run_case`], which runs the real
//! `rendezvous` and `punch` binaries across one lab topology (the matrix and smoke tests), and
//! [`start_rendezvous`], the real rendezvous on a lab's public host.

mod case;

pub use case::{
    expected, punch_cmd, results_dir, run_case, start_peers, start_rendezvous, variant,
    wait_connected, wait_moved, Expect, Outcome, Peers, FAILURE_BOUND, TUNNEL, UPGRADE_BOUND,
};
pub use punch_natlab::*;

/// Inserts (`block(lab, true)`) or deletes the drop rules in A's router against B's public
/// address, both ways: the direct path between the two peers is cut while both still reach
/// the rendezvous (so a session between them is relayed).
pub fn block_direct(lab: &Lab, on: bool) {
    let b = lab.peer_public_ip(Side::B).to_string();
    for dir in ["-d", "-s"] {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &lab.edge_ns(Side::A), "iptables"]);
        if on {
            cmd.args(["-I", "FORWARD", "1"]);
        } else {
            cmd.args(["-D", "FORWARD"]);
        }
        let out = cmd
            .args([dir, &b, "-j", "DROP"])
            .output()
            .expect("running iptables");
        assert!(
            out.status.success(),
            "iptables ({on}) {dir} {b}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
