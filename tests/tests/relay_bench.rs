//! Relayed against direct throughput through the real binaries in the NAT lab: the same tunnel
//! (`punch connect --local` -> session -> `punch listen --forward` -> echo) between two home
//! routers (direct) and two symmetric NATs (relayed by the rendezvous, default limits: 16 MiB/s
//! per session and direction), on a clean network and at 50 ms per link, loaded both ways by
//! `natlab_tcp blast`. Prints each and the ratio in the same run. Ignored by default (a
//! measurement, about a minute); `scripts/bench.sh` runs it:
//!
//! ```text
//! cargo nextest run --release -p punch-tests --test relay_bench --run-ignored only --no-capture
//! ```

use std::process::Command;
use std::time::Duration;

use punch_tests::natlab::{
    helper_bin, skip_without_net_admin, start_peers, wait_connected, Expect, Lab, LinkParams,
    RouterKind, Side, Topology, TUNNEL,
};

const BLAST_SECS: u64 = 8;

/// MB/s echoed through the tunnel of a fresh lab of `topology`; the path `punch connect` saw.
fn blast(name: &str, topology: Topology, link: LinkParams) -> Option<(String, f64)> {
    if skip_without_net_admin(name) {
        return None;
    }
    let lab = Lab::build(name, topology, link).expect("building the lab");
    let fail = |msg: String| -> ! { panic!("{msg}\n{}", lab.dump_logs()) };
    let peers = start_peers(&lab).unwrap_or_else(|e| fail(format!("{e:#}")));
    let (path, _, _) = wait_connected(&lab, peers.connect, Expect::DirectOrRelayed)
        .unwrap_or_else(|e| fail(format!("{e:#}")))
        .unwrap_or_else(|| fail("punch connect failed".into()));
    lab.wait_stdout_line(peers.connect, Duration::from_secs(10), |l| {
        l.starts_with("local ")
    })
    .unwrap_or_else(|e| fail(format!("{e:#}")));
    let mut cmd = Command::new(helper_bin("natlab_tcp").expect("natlab_tcp"));
    cmd.args(["blast", TUNNEL, "--max-secs", &BLAST_SECS.to_string()]);
    let id = lab
        .spawn("blast-a", &lab.peer_ns(Side::A), &cmd)
        .expect("starting the blast");
    lab.wait_timeout(id, Duration::from_secs(BLAST_SECS + 90))
        .expect("waiting for the blast")
        .unwrap_or_else(|| fail("the blast did not finish".into()));
    let out = lab.stdout(id).expect("blast output");
    let line = out.lines().last().unwrap_or_default().to_string();
    let f: Vec<&str> = line.split_whitespace().collect();
    let ["blasted", bytes, ms] = f[..] else {
        fail(format!("blast: {line:?}"));
    };
    let (bytes, ms): (f64, f64) = (bytes.parse().expect("bytes"), ms.parse().expect("ms"));
    Some((path, bytes / ms / 1000.0))
}

#[test]
#[ignore = "a measurement: four NAT-lab tunnels loaded for 8 s each"]
fn relayed_against_direct_throughput_in_the_lab() {
    for link in [LinkParams::default(), LinkParams::delay(50)] {
        let tag = link.delay_ms;
        let Some((dpath, direct)) = blast(
            &format!("bench-direct-{tag}"),
            Topology::Pair(RouterKind::HomeEim, RouterKind::HomeEim),
            link,
        ) else {
            return;
        };
        let (rpath, relayed) = blast(
            &format!("bench-relayed-{tag}"),
            Topology::Pair(RouterKind::Symmetric, RouterKind::Symmetric),
            link,
        )
        .expect("the lab ran once already");
        assert_eq!((dpath.as_str(), rpath.as_str()), ("direct", "relayed"));
        println!(
            "lab {tag} ms per link: tunnel echo direct {direct:.1} MB/s, relayed {relayed:.1} MB/s, \
             relayed/direct {:.3}",
            relayed / direct
        );
        println!(
            "BENCH\tNAT lab {tag} ms per link: tunnel echo relayed\t{relayed:.1} MB/s\tdirect {direct:.1} MB/s\t{:.3}",
            relayed / direct
        );
    }
}
