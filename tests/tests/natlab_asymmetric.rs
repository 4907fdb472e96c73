//! Issue 16: the dial moment is measured, not a fixed margin; it must still punch every time
//! when the two peers are far apart in distance to the rendezvous. Peer A's router link has
//! 25 ms one-way delay, B's 100 ms (so A's offer arrives 75 ms before B's), and the pairs
//! include RST-answering routers, which punish a SYN that arrives before the other side's
//! own SYN has left. Each case must be direct at once: not relayed, and not relayed first
//! and moved to direct later.

use punch_tests::natlab::{run_case, Expect, LinkParams, Outcome, RouterKind::*, Topology};

fn direct_at_once(name: &str, topology: Topology) {
    let link = LinkParams::asymmetric(25, 100);
    let Some(outcome) = run_case(name, topology, link, Expect::Direct) else {
        return;
    };
    assert!(
        matches!(outcome, Outcome::Direct { .. }),
        "{name}: {outcome:?}"
    );
}

#[test]
fn rst_rst() {
    direct_at_once("asym-rst_rst", Topology::Pair(HomeEimRst, HomeEimRst));
}

#[test]
fn home_rst() {
    direct_at_once("asym-home_rst", Topology::Pair(HomeEim, HomeEimRst));
}

#[test]
fn rst_home() {
    direct_at_once("asym-rst_home", Topology::Pair(HomeEimRst, HomeEim));
}

#[test]
fn rst_double() {
    direct_at_once("asym-rst_double", Topology::Pair(HomeEimRst, DoubleNat));
}
