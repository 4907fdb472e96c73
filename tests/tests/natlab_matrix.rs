//! The punch matrix: every pair of router kinds (and two peers behind one router), with the
//! real binaries, on a clean network and with 50 ms one-way delay per link, plus the common
//! home-router pair with 5% loss. Each case is one test (`run_case`); the results directory
//! collects outcomes and `natlab_report` prints the matrix (scripts/test.sh runs it).

use punch_tests::natlab::{expected, run_case, LinkParams, RouterKind::*, Topology};

fn case(name: &str, topology: Topology, link: LinkParams) {
    run_case(name, topology, link, expected(topology, link));
}

macro_rules! pair {
    ($name:ident, $topology:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn no_delay() {
                case(
                    concat!(stringify!($name), "-0"),
                    $topology,
                    LinkParams::default(),
                );
            }

            #[test]
            fn delay_50ms() {
                case(
                    concat!(stringify!($name), "-50"),
                    $topology,
                    LinkParams::delay(50),
                );
            }
        }
    };
}

pair!(home_home, Topology::Pair(HomeEim, HomeEim));
pair!(home_rst, Topology::Pair(HomeEim, HomeEimRst));
pair!(home_sym, Topology::Pair(HomeEim, Symmetric));
pair!(home_fw, Topology::Pair(HomeEim, FirewallOnly));
pair!(home_public, Topology::Pair(HomeEim, Public));
pair!(home_double, Topology::Pair(HomeEim, DoubleNat));
pair!(rst_rst, Topology::Pair(HomeEimRst, HomeEimRst));
pair!(rst_sym, Topology::Pair(HomeEimRst, Symmetric));
pair!(rst_fw, Topology::Pair(HomeEimRst, FirewallOnly));
pair!(rst_public, Topology::Pair(HomeEimRst, Public));
pair!(rst_double, Topology::Pair(HomeEimRst, DoubleNat));
pair!(sym_sym, Topology::Pair(Symmetric, Symmetric));
pair!(sym_fw, Topology::Pair(Symmetric, FirewallOnly));
pair!(sym_public, Topology::Pair(Symmetric, Public));
pair!(sym_double, Topology::Pair(Symmetric, DoubleNat));
pair!(fw_fw, Topology::Pair(FirewallOnly, FirewallOnly));
pair!(fw_public, Topology::Pair(FirewallOnly, Public));
pair!(fw_double, Topology::Pair(FirewallOnly, DoubleNat));
pair!(public_public, Topology::Pair(Public, Public));
pair!(public_double, Topology::Pair(Public, DoubleNat));
pair!(double_double, Topology::Pair(DoubleNat, DoubleNat));
pair!(same_router, Topology::SameRouter);

#[test]
fn home_home_loss_5_percent() {
    case(
        "home_home-loss5",
        Topology::Pair(HomeEim, HomeEim),
        LinkParams {
            delay_ms: 0,
            loss_percent: 5.0,
            delay_ms_b: None,
        },
    );
}
