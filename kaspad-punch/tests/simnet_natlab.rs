//! Two real `kaspad-punch` nodes on simnet, each behind its own home router in the NAT lab
//! (temporary appdirs, no DNS seeds, UPnP off, RPC on loopback), with the real `rendezvous`
//! on the lab's public host. A keeps B connected (`--punch-peer`), B takes inbound punches
//! (`--punch-accept`). Each node must list the other (by its Kaspa node id, from GetInfo)
//! among its connected peers over gRPC RPC (`kaspa-peers`), and both must stay connected,
//! checked every few seconds, for a full minute. When B is restarted, A re-punches it; when
//! B bans A, B refuses A at the punch layer too, and after the unban they reconnect.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use punch_natlab::{skip_without_net_admin, Lab, LinkParams, ProcId, RouterKind, Side, Topology};
use punch_proto::Keypair;
use punch_tests::bin_path;
use punch_tests::natlab::start_rendezvous;

use common::PeerLine;

const RPC: &str = "127.0.0.1:16610";
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
    /// `kaspa-peers` in the node's namespace: (own node id, connected peers).
    fn peers(&self, lab: &Lab) -> Result<(String, Vec<PeerLine>), String> {
        self.rpc(lab, &[])
    }

    /// `kaspa-peers` with extra arguments (`--ban IP`, `--unban IP`).
    fn rpc(&self, lab: &Lab, extra: &[&str]) -> Result<(String, Vec<PeerLine>), String> {
        let mut cmd = Command::new(bin_path("kaspa-peers"));
        cmd.args(["--rpc", RPC, "--timeout-secs", "5"]).args(extra);
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
        common::parse_peers(&out)
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn kaspad_punch(
    dir: &Path,
    app: &str,
    key: &str,
    rendezvous: &str,
    rendezvous_key: &str,
) -> Command {
    let mut cmd = Command::new(bin_path("kaspad-punch"));
    cmd.arg("--simnet")
        .arg(format!("--appdir={}", dir.join(app).display()))
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
        .arg(dir.join(key));
    cmd
}

/// Runs `body` on a lab with two home routers; on failure, panics with every log.
fn with_lab(name: &str, body: impl FnOnce(&Lab) -> Result<(), String>) {
    with_lab_on(
        name,
        Topology::Pair(RouterKind::HomeEim, RouterKind::HomeEim),
        body,
    )
}

/// Runs `body` on a lab of the given topology; on failure, panics with every log.
fn with_lab_on(name: &str, topology: Topology, body: impl FnOnce(&Lab) -> Result<(), String>) {
    with_lab_link(name, topology, LinkParams::default(), body)
}

fn with_lab_link(
    name: &str,
    topology: Topology,
    link: LinkParams,
    body: impl FnOnce(&Lab) -> Result<(), String>,
) {
    if skip_without_net_admin(name) {
        return;
    }
    let lab = Lab::build(name, topology, link).unwrap();
    if let Err(e) = body(&lab) {
        panic!("{e}\n{}", lab.dump_logs());
    }
}

/// The rendezvous on the public host, and two kaspad-punch nodes: A keeps B connected
/// (`--punch-peer`), B takes punches (`--punch-accept`).
struct Pair<'a> {
    lab: &'a Lab,
    nodes: [Node; 2],
    daemons: Vec<ProcId>,
    rendezvous: String,
    rendezvous_key: String,
    b_extra: Vec<String>,
}

impl<'a> Pair<'a> {
    fn start(lab: &'a Lab) -> Result<Self, String> {
        Self::start_with(lab, &[])
    }

    /// Like [`Pair::start`], with extra flags for B.
    fn start_with(lab: &'a Lab, b_extra: &[&str]) -> Result<Self, String> {
        let dir = lab.case_dir();
        let (rendezvous, rendezvous_key) = start_rendezvous(lab).map_err(|e| format!("{e:#}"))?;
        let mut pair = Pair {
            lab,
            nodes: [
                Node {
                    side: Side::A,
                    ns: lab.peer_ns(Side::A),
                },
                Node {
                    side: Side::B,
                    ns: lab.peer_ns(Side::B),
                },
            ],
            daemons: Vec::new(),
            rendezvous,
            rendezvous_key,
            b_extra: b_extra.iter().map(|s| s.to_string()).collect(),
        };
        pair.start_b("b-app", "kaspad-punch-b")?;
        let b_id = Keypair::load_or_generate(&dir.join("b.key"))
            .unwrap()
            .0
            .public();
        let mut a = kaspad_punch(
            dir,
            "a-app",
            "a.key",
            &pair.rendezvous,
            &pair.rendezvous_key,
        );
        a.args(["--punch-peer", &b_id.to_string()]);
        let a = lab
            .spawn("kaspad-punch-a", &pair.nodes[0].ns, &a)
            .map_err(|e| e.to_string())?;
        pair.daemons.push(a);
        Ok(pair)
    }

    /// Starts B (again): same punch identity, the given appdir.
    fn start_b(&mut self, app: &str, label: &str) -> Result<ProcId, String> {
        let mut b = kaspad_punch(
            self.lab.case_dir(),
            app,
            "b.key",
            &self.rendezvous,
            &self.rendezvous_key,
        );
        // B only accepts (it dials nobody itself), so the pair has exactly one Kaspa dialer.
        b.args(["--punch-accept", "--punch-outpeers", "0"])
            .args(&self.b_extra);
        let b = self
            .lab
            .spawn(label, &self.nodes[1].ns, &b)
            .map_err(|e| e.to_string())?;
        self.daemons.push(b);
        Ok(b)
    }

    /// Fails if a daemon this test did not stop has exited.
    fn running(&self) -> Result<(), String> {
        for &d in &self.daemons {
            if let Some(status) = self.lab.try_wait(d).map_err(|e| e.to_string())? {
                return Err(format!("a kaspad-punch exited ({status})"));
            }
        }
        Ok(())
    }

    /// Waits until both nodes list each other; returns their node ids (A, B).
    fn wait_listed(&self, within: Duration) -> Result<(String, String), String> {
        let start = Instant::now();
        let mut last = String::new();
        loop {
            if start.elapsed() > within {
                return Err(format!(
                    "the nodes did not list each other within {within:?}; last: {last}"
                ));
            }
            std::thread::sleep(Duration::from_secs(1));
            self.running()?;
            let (a, b) = (self.nodes[0].peers(self.lab), self.nodes[1].peers(self.lab));
            match (a, b) {
                (Ok((a_id, a_peers)), Ok((b_id, b_peers)))
                    if lists(&a_peers, &b_id).is_some() && lists(&b_peers, &a_id).is_some() =>
                {
                    return Ok((a_id, b_id));
                }
                (a, b) => last = format!("A: {a:?}; B: {b:?}"),
            }
        }
    }
}

#[test]
fn two_kaspad_punch_nodes_behind_nats_list_each_other_for_a_minute() {
    with_lab("kaspad-punch-simnet", |lab| {
        let pair = Pair::start(lab)?;
        stay_connected_a_minute(&pair)
    });
}

/// Both behind symmetric NATs: no direct path exists, so the session is relayed by the
/// rendezvous, and kaspad's connection over it must hold for the minute like a direct one.
#[test]
fn two_kaspad_punch_nodes_behind_symmetric_nats_connect_relayed_for_a_minute() {
    with_lab_on(
        "kaspad-punch-relayed",
        Topology::Pair(RouterKind::Symmetric, RouterKind::Symmetric),
        |lab| {
            let pair = Pair::start(lab)?;
            stay_connected_a_minute(&pair)?;
            let a_log = lab.stderr(pair.daemons[1]).map_err(|e| e.to_string())?;
            let line = a_log
                .lines()
                .find(|l| l.contains("punched peer connected"))
                .ok_or("A logged no punched peer")?;
            if !line.contains("path=relayed") {
                return Err(format!("A's punched peer is not relayed: {line}"));
            }
            eprintln!("A: {line}");
            Ok(())
        },
    );
}

/// The direct path between two home routers is blocked while the nodes connect, so their
/// Kaspa connection runs relayed; then it opens. The session moves to the direct connection
/// under yamux (within the punch window, or by the first retry after it; 50 ms per link, where
/// a retry's SYNs cross in flight) and kaspad's connection survives the move: the same connection, its age
/// still growing, no reconnect.
#[test]
fn a_relayed_kaspa_connection_survives_the_move_to_direct() {
    with_lab_link(
        "kaspad-punch-moves",
        Topology::Pair(RouterKind::HomeEim, RouterKind::HomeEim),
        LinkParams::delay(50),
        |lab| {
            punch_tests::natlab::block_direct(lab, true);
            let pair = Pair::start(lab)?;
            let ids = pair.wait_listed(CONNECT_WITHIN)?;
            let a_log = || lab.stderr(pair.daemons[1]).map_err(|e| e.to_string());
            let line = a_log()?
                .lines()
                .find(|l| l.contains("punched peer connected"))
                .map(str::to_string)
                .ok_or("A logged no punched peer")?;
            if !line.contains("path=relayed") {
                return Err(format!("blocked, yet not relayed: {line}"));
            }
            let (_, before) = pair.nodes[0].peers(lab)?;
            let age_before = lists(&before, &ids.1).ok_or("B not listed")?;
            punch_tests::natlab::block_direct(lab, false);
            let opened = Instant::now();
            // Within the punch window (10 s from the dial moment) if it is still open, else by
            // the first retry after it (2.5-5 s after the window).
            while !a_log()?.contains("session moved from the relay to a direct connection") {
                if opened.elapsed() > Duration::from_secs(40) {
                    return Err("still relayed 40 s after the path opened".into());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            eprintln!(
                "moved to direct {:?} after the path opened",
                opened.elapsed()
            );
            // Still the same Kaspa connection, well after the move.
            std::thread::sleep(Duration::from_secs(10));
            pair.running()?;
            let (_, a_peers) = pair.nodes[0].peers(lab)?;
            let (_, b_peers) = pair.nodes[1].peers(lab)?;
            let (Some(a_age), Some(_)) = (lists(&a_peers, &ids.1), lists(&b_peers, &ids.0)) else {
                return Err(format!(
                    "disconnected after the move: A {a_peers:?}, B {b_peers:?}"
                ));
            };
            let waited = opened.elapsed().as_secs();
            if a_age < age_before + waited.saturating_sub(CHECK_EVERY.as_secs()) {
                return Err(format!(
                    "reconnected: the connection was {age_before}s old, {a_age}s after {waited}s"
                ));
            }
            eprintln!(
                "one Kaspa connection across the move: {age_before}s old before, {a_age}s after"
            );
            Ok(())
        },
    );
}

/// Waits for both nodes to list each other, then checks for a minute that they still do, over
/// one connection.
fn stay_connected_a_minute(pair: &Pair) -> Result<(), String> {
    {
        let lab = pair.lab;
        let start = Instant::now();
        let ids = pair.wait_listed(CONNECT_WITHIN)?;
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
            pair.running()?;
            let (_, a_peers) = pair.nodes[0].peers(lab)?;
            let (_, b_peers) = pair.nodes[1].peers(lab)?;
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
        if ages.0 < min_age || ages.1 < min_age {
            return Err(format!(
                "connection ages {ages:?}: reconnected during the minute"
            ));
        }
        Ok(())
    }
}

/// `--punch-peer` keeps the peer connected: B is killed and started again (same punch
/// identity, new kaspad node id, new control connection); A's link sees the session end,
/// re-punches and has kaspad connect again, without any help.
#[test]
fn a_restarted_punch_peer_is_repunched_and_reconnected() {
    with_lab("kaspad-punch-restart", |lab| {
        let mut pair = Pair::start(lab)?;
        let first = pair.wait_listed(CONNECT_WITHIN)?;
        let old_b = pair.daemons[0];
        pair.daemons.remove(0);
        lab.kill(old_b).map_err(|e| e.to_string())?;
        let killed = Instant::now();
        pair.start_b("b2-app", "kaspad-punch-b2")?;
        let second = pair.wait_listed(CONNECT_WITHIN)?;
        assert_eq!(second.0, first.0, "A is the same node");
        assert_ne!(second.1, first.1, "B is a new kaspad (new node id)");
        eprintln!(
            "B killed and restarted: A and the new B list each other {:?} after the kill",
            killed.elapsed()
        );
        Ok(())
    });
}

/// B's kaspad bans A's alias (B's operator runs kaspad's unsafe RPC mode for that:
/// `--unsaferpc`; kaspad-punch itself never needs it), so the Kaspa connection ends while both
/// punch clients keep their control connections. B mirrors the ban at the punch layer: A's
/// identity and the address the rendezvous observed for it are refused before any dial while
/// kaspad bans the alias (B logs the refusals). After the unban the mirrored ban lapses and
/// the nodes connect again.
#[test]
fn after_a_ban_and_unban_the_peers_reconnect() {
    with_lab("kaspad-punch-ban", |lab| {
        let pair = Pair::start_with(lab, &["--unsaferpc"])?;
        let (a_id, b_id) = pair.wait_listed(CONNECT_WITHIN)?;
        let (_, b_peers) = pair.nodes[1].peers(lab)?;
        let alias = b_peers
            .iter()
            .find(|p| p.id == a_id)
            .map(|p| p.addr.ip().to_string())
            .ok_or("B does not list A")?;
        pair.nodes[1].rpc(lab, &["--ban", &alias])?;
        let banned = Instant::now();
        loop {
            let (_, a_peers) = pair.nodes[0].peers(lab)?;
            if lists(&a_peers, &b_id).is_none() {
                break;
            }
            if banned.elapsed() > Duration::from_secs(30) {
                return Err(format!("A still lists B 30 s after B banned {alias}"));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!(
            "B banned A's alias {alias}; A lost B after {:?}",
            banned.elapsed()
        );
        // A keeps B pinned and re-punches; B refuses it at the punch layer (no dial).
        let b_log = || lab.stderr(pair.daemons[0]).map_err(|e| e.to_string());
        let denied = Instant::now();
        while !b_log()?.contains("inbound punch from a denied peer or address; refused (no dial)") {
            if denied.elapsed() > Duration::from_secs(40) {
                return Err(format!(
                    "B never refused A at the punch layer during the ban:\n{}",
                    b_log()?
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        if !b_log()?.contains("node bans a punched peer: denied at the punch layer too") {
            return Err("B did not log the mirrored ban".into());
        }
        eprintln!(
            "B refused A's punch at the punch layer {:?} after the ban",
            banned.elapsed()
        );
        pair.running()?;
        pair.nodes[1].rpc(lab, &["--unban", &alias])?;
        let unbanned = Instant::now();
        let again = pair.wait_listed(CONNECT_WITHIN)?;
        assert_eq!(again, (a_id, b_id), "the same two nodes");
        eprintln!(
            "after the unban both list each other again within {:?}",
            unbanned.elapsed()
        );
        Ok(())
    });
}

/// How long `peers` has listed node `id` as connected, if it does.
fn lists(peers: &[PeerLine], id: &str) -> Option<u64> {
    peers.iter().find(|p| p.id == id).map(|p| p.secs)
}
