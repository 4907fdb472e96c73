//! Two real `kaspad-punch` nodes on simnet, each behind its own home router in the NAT lab
//! (temporary appdirs, no DNS seeds, UPnP off, RPC on loopback), with the real `rendezvous`
//! on the lab's public host. A keeps B connected (`--punch-peer`), B takes inbound punches
//! (`--punch-accept`). Each node must list the other (by its Kaspa node id, from GetInfo)
//! among its connected peers over gRPC RPC (`kaspa-peers`), and both must stay connected,
//! checked every few seconds, for a full minute.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use punch_natlab::{skip_without_net_admin, Lab, LinkParams, RouterKind, Side, Topology};
use punch_proto::Keypair;
use punch_tests::bin_path;

const RPC: &str = "127.0.0.1:16610";
/// Process start: kaspad opens its databases and starts its services in a few seconds.
const STARTUP: Duration = Duration::from_secs(60);
/// From start to both nodes listing each other: kaspad's start, registration, the punch
/// and kaspad's connection manager picking up the AddPeer request.
const CONNECT_WITHIN: Duration = Duration::from_secs(90);
/// How long both must stay connected.
const STAY: Duration = Duration::from_secs(60);
const CHECK_EVERY: Duration = Duration::from_secs(5);

struct Node {
    side: Side,
    ns: String,
}

impl Node {
    /// `kaspa-peers` in the node's namespace: (own node id, connected peers as (node id,
    /// seconds connected)).
    fn peers(&self, lab: &Lab) -> Result<(String, Vec<(String, u64)>), String> {
        let mut cmd = Command::new(bin_path("kaspa-peers"));
        cmd.args(["--rpc", RPC, "--timeout-secs", "5"]);
        let label = format!("kaspa-peers-{:?}-{}", self.side, rand_suffix());
        let id = lab
            .spawn(&label, &self.ns, &cmd)
            .map_err(|e| e.to_string())?;
        let status = lab
            .wait_timeout(id, Duration::from_secs(15))
            .map_err(|e| e.to_string())?;
        let out = lab.stdout(id).unwrap_or_default();
        if !matches!(status, Some(s) if s.success()) {
            let _ = lab.kill(id);
            return Err(format!(
                "kaspa-peers failed ({status:?}): {out}{}",
                lab.stderr(id).unwrap_or_default()
            ));
        }
        let own = out
            .lines()
            .find_map(|l| l.strip_prefix("self "))
            .and_then(|l| l.split_whitespace().next())
            .ok_or_else(|| format!("no self line in {out:?}"))?
            .to_string();
        let peers = out
            .lines()
            .filter_map(|l| l.strip_prefix("peer "))
            .filter_map(|l| {
                let id = l.split_whitespace().next()?.to_string();
                let secs = l
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("connected="))?
                    .trim_end_matches('s')
                    .parse()
                    .ok()?;
                Some((id, secs))
            })
            .collect();
        Ok((own, peers))
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn kaspad_punch(dir: &Path, name: &str, rendezvous: &str, rendezvous_key: &str) -> Command {
    let mut cmd = Command::new(bin_path("kaspad-punch"));
    cmd.arg("--simnet")
        .arg(format!(
            "--appdir={}",
            dir.join(format!("{name}-app")).display()
        ))
        .args([
            "--nodnsseed",
            "--disable-upnp",
            "--yes",
            &format!("--rpclisten={RPC}"),
            "--listen=127.0.0.1:16611",
            "--punch-rendezvous",
            rendezvous,
            "--punch-rendezvous-key",
            rendezvous_key,
            "--punch-key-file",
        ])
        .arg(dir.join(format!("{name}.key")));
    cmd
}

#[test]
fn two_kaspad_punch_nodes_behind_nats_list_each_other_for_a_minute() {
    if skip_without_net_admin("two_kaspad_punch_nodes_behind_nats_list_each_other_for_a_minute") {
        return;
    }
    let lab = Lab::build(
        "kaspad-punch-simnet",
        Topology::Pair(RouterKind::HomeEim, RouterKind::HomeEim),
        LinkParams::default(),
    )
    .unwrap();
    let result = drive(&lab);
    if let Err(e) = result {
        panic!("{e}\n{}", lab.dump_logs());
    }
}

fn drive(lab: &Lab) -> Result<(), String> {
    let dir = lab.case_dir();
    let rendezvous = format!("{}:7717", lab.rendezvous_ip());
    let mut rv = Command::new(bin_path("rendezvous"));
    rv.args(["--listen", &rendezvous, "--key-file"])
        .arg(dir.join("rendezvous.key"));
    let rv = lab
        .spawn("rendezvous", &lab.rendezvous_ns(), &rv)
        .map_err(|e| e.to_string())?;
    let line = lab
        .wait_stdout_line(rv, STARTUP, |l| l.starts_with("identity "))
        .map_err(|e| e.to_string())?;
    let rendezvous_key = line.trim_start_matches("identity ").trim().to_string();

    let b_id = Keypair::load_or_generate(&dir.join("b.key"))
        .unwrap()
        .0
        .public();
    let mut b = kaspad_punch(dir, "b", &rendezvous, &rendezvous_key);
    b.arg("--punch-accept");
    let mut a = kaspad_punch(dir, "a", &rendezvous, &rendezvous_key);
    a.args(["--punch-peer", &b_id.to_string()]);
    let nodes = [
        Node {
            side: Side::A,
            ns: lab.peer_ns(Side::A),
        },
        Node {
            side: Side::B,
            ns: lab.peer_ns(Side::B),
        },
    ];
    let daemons = [
        lab.spawn("kaspad-punch-b", &nodes[1].ns, &b)
            .map_err(|e| e.to_string())?,
        lab.spawn("kaspad-punch-a", &nodes[0].ns, &a)
            .map_err(|e| e.to_string())?,
    ];
    let running = || -> Result<(), String> {
        for d in daemons {
            if let Some(status) = lab.try_wait(d).map_err(|e| e.to_string())? {
                return Err(format!("a kaspad-punch exited ({status})"));
            }
        }
        Ok(())
    };

    // Both list each other.
    let start = Instant::now();
    let mut last = String::new();
    let ids = loop {
        if start.elapsed() > CONNECT_WITHIN {
            return Err(format!(
                "the nodes did not list each other within {CONNECT_WITHIN:?}; last: {last}"
            ));
        }
        std::thread::sleep(Duration::from_secs(2));
        running()?;
        let (a, b) = (nodes[0].peers(lab), nodes[1].peers(lab));
        match (a, b) {
            (Ok((a_id, a_peers)), Ok((b_id, b_peers)))
                if lists(&a_peers, &b_id).is_some() && lists(&b_peers, &a_id).is_some() =>
            {
                break (a_id, b_id);
            }
            (a, b) => last = format!("A: {a:?}; B: {b:?}"),
        }
    };
    eprintln!(
        "connected after {:?}: A {} and B {} list each other",
        start.elapsed(),
        ids.0,
        ids.1
    );

    // And stay connected.
    let connected = Instant::now();
    let mut checks = 0;
    let mut ages = (0, 0);
    while connected.elapsed() < STAY {
        std::thread::sleep(CHECK_EVERY);
        running()?;
        let (_, a_peers) = nodes[0].peers(lab)?;
        let (_, b_peers) = nodes[1].peers(lab)?;
        match (lists(&a_peers, &ids.1), lists(&b_peers, &ids.0)) {
            (Some(a), Some(b)) => ages = (a, b),
            _ => {
                return Err(format!(
                    "disconnected after {:?}: A lists {a_peers:?}, B lists {b_peers:?}",
                    connected.elapsed()
                ))
            }
        }
        checks += 1;
    }
    eprintln!(
        "still connected after {:?} ({checks} checks); kaspad reports the connection {}s old on A, {}s on B",
        connected.elapsed(),
        ages.0,
        ages.1
    );
    // One connection the whole minute, not a string of reconnections.
    let min_age = STAY.as_secs() - 2 * CHECK_EVERY.as_secs();
    assert!(
        ages.0 >= min_age && ages.1 >= min_age,
        "connection ages {ages:?}: reconnected during the minute"
    );
    Ok(())
}

/// How long `peers` has listed node `id` as connected, if it does.
fn lists(peers: &[(String, u64)], id: &str) -> Option<u64> {
    peers.iter().find(|(p, _)| p == id).map(|(_, secs)| *secs)
}
