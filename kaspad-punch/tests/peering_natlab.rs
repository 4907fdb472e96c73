//! Automatic peering in the NAT lab: four real `kaspad-punch` simnet nodes, each behind its
//! own NAT (home, home answering with RST, carrier-grade, firewall), started with only
//! `--punch-rendezvous` (no `--punch-peer`, no ids exchanged), must find each other on the
//! rendezvous and each list the three others as connected; a block mined on one (template,
//! nonce found with kaspa-pow, SubmitBlock: `kaspa-mine`) must reach every other node's DAG
//! through the punched connections; a node of another network (devnet) registered on the same
//! rendezvous is never punched. One node runs with its RPC on 0.0.0.0 and wRPC (Borsh) on:
//! punch needs no unsafe RPC, and AddPeer over RPC is refused as in stock kaspad. Each node
//! runs `--punch-metrics`: once connected, `punch status --json` and its metrics show its three
//! sessions (direct, or relayed while a punch that missed its moment under load is retried)
//! and punched Kaspa peers.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use punch_natlab::{skip_without_net_admin, Lab, LinkParams, ProcId, RouterKind, Topology};
use punch_proto::Keypair;
use punch_tests::bin_path;
use punch_tests::natlab::start_rendezvous;

const RPC_PORT: u16 = 16610;
const METRICS_PORT: u16 = 9719;
const P2P_PORT: u16 = 16611;
/// The bound: from the start of the four nodes to every node listing the others.
const ALL_CONNECTED_WITHIN: Duration = Duration::from_secs(30);
/// A mined block reaches the other nodes by kaspad's relay (a few hops at most).
const BLOCK_WITHIN: Duration = Duration::from_secs(30);
const KINDS: [RouterKind; 4] = [
    RouterKind::HomeEim,
    RouterKind::HomeEimRst,
    RouterKind::DoubleNat,
    RouterKind::FirewallOnly,
];

fn kaspad_punch(dir: &Path, name: &str, rendezvous: &str, rendezvous_key: &str) -> Command {
    let mut cmd = Command::new(bin_path("kaspad-punch"));
    cmd.arg(format!(
        "--appdir={}",
        dir.join(format!("{name}-app")).display()
    ))
    .args([
        "--nodnsseed",
        "--disable-upnp",
        "--yes",
        "--punch-rendezvous",
        rendezvous,
        "--punch-rendezvous-key",
        rendezvous_key,
        "--punch-key-file",
    ])
    .arg(dir.join(format!("{name}.key")));
    cmd
}

/// Runs a short tool in `ns`; (exit code, stdout, stderr).
fn tool(lab: &Lab, ns: &str, label: &str, cmd: &Command) -> Result<(i32, String, String), String> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = lab
        .spawn(&format!("{label}-{n}"), ns, cmd)
        .map_err(|e| e.to_string())?;
    let status = lab
        .wait_timeout(id, Duration::from_secs(40))
        .map_err(|e| e.to_string())?;
    let out = lab.stdout(id).unwrap_or_default();
    let err = lab.stderr(id).unwrap_or_default();
    match status {
        Some(s) => Ok((s.code().unwrap_or(-1), out, err)),
        None => {
            let _ = lab.kill(id);
            Err(format!("{label} did not finish: {out}{err}"))
        }
    }
}

/// `kaspa-peers` on the node in `ns`: (own node id, connected peers' (node id, address)).
fn peers(lab: &Lab, ns: &str, extra: &[&str]) -> Result<(String, Vec<(String, String)>), String> {
    let mut cmd = Command::new(bin_path("kaspa-peers"));
    cmd.args([
        "--rpc",
        &format!("127.0.0.1:{RPC_PORT}"),
        "--timeout-secs",
        "5",
    ])
    .args(extra);
    let (code, out, err) = tool(lab, ns, "kaspa-peers", &cmd)?;
    if code != 0 {
        return Err(format!("kaspa-peers exited {code}: {out}{err}"));
    }
    let (own, list) = common::parse_peers(&out)?;
    Ok((
        own,
        list.into_iter()
            .map(|p| (p.id, p.addr.to_string()))
            .collect(),
    ))
}

/// Seconds since midnight of a tracing line's RFC 3339 timestamp (`2026-12-07T13:27:30.26Z`).
fn secs_of_day(line: &str) -> Option<f64> {
    let t = line.get(11..26)?;
    let h: f64 = t.get(0..2)?.parse().ok()?;
    let m: f64 = t.get(3..5)?.parse().ok()?;
    let s: f64 = t.get(6..)?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

struct Net<'a> {
    lab: &'a Lab,
    daemons: Vec<ProcId>,
}

impl Net<'_> {
    fn running(&self) -> Result<(), String> {
        for &d in &self.daemons {
            if let Some(status) = self.lab.try_wait(d).map_err(|e| e.to_string())? {
                return Err(format!("a kaspad-punch exited ({status})"));
            }
        }
        Ok(())
    }
}

/// What an operator sees of node `i` once it lists its `others`: `punch status --json` (over
/// the status socket beside its punch key) shows one session per other node and the
/// punched Kaspa peers in its caps; its `--punch-metrics` counters and time-to-session
/// histogram moved, and its gauges show the sessions and the bridged peers.
fn operator_view(lab: &Lab, dir: &Path, i: usize, others: usize) -> Result<(u64, u64), String> {
    let key = dir.join(format!("n{i}.key"));
    let out = Command::new(bin_path("punch"))
        .args(["status", "--json", "--key-file"])
        .arg(&key)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "punch status on node {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("node {i} status: {e}"))?;
    let sessions = doc["sessions"].as_array().cloned().unwrap_or_default();
    // Direct, or relayed: every kind here punches, but a punch that misses its moment on a
    // loaded machine opens relayed and moves to direct on a later try (the NAT-lab matrix
    // checks the direct punch per NAT pair).
    let direct = sessions.iter().filter(|s| s["path"] == "direct").count();
    let relayed = sessions.iter().filter(|s| s["path"] == "relayed").count();
    let caps = &doc["caps"];
    let bridged = caps["inbound"]["used"].as_u64().unwrap_or(0)
        + caps["outbound"]["used"].as_u64().unwrap_or(0);
    // The peering asked the rendezvous, and the peers it dials came from its answers (a node
    // the others all dial may have had only empty answers yet: it registered first, and its
    // discovery backs off), with a round per outbound peer; the sessions it counts against its
    // caps are the client's open sessions, within the caps.
    let peering = &doc["peering"];
    let inbound = &doc["inbound"];
    let outbound_used = caps["outbound"]["used"].as_u64().unwrap_or(0);
    let rounds = peering["running"]["discovered"].as_u64().unwrap_or(0)
        + peering["running"]["pinned"].as_u64().unwrap_or(0);
    if doc["command"] != "kaspad-punch"
        || doc["rendezvous"]["state"] != "registered"
        || direct + relayed < others
        || bridged != others as u64
        || peering["target"] != 4
        || peering["discoveries"]["ok"].as_u64().unwrap_or(0) < 1
        || (outbound_used > 0 && peering["discovered_peers"].as_u64().unwrap_or(0) < 1)
        || rounds < outbound_used
        || bridged != sessions.len() as u64
        || inbound["held"].as_u64() > caps["inbound"]["max"].as_u64()
        || caps["inbound_per_ip"]["used"].as_u64() > caps["inbound_per_ip"]["max"].as_u64()
    {
        return Err(format!("node {i} status: {doc:#}"));
    }
    let mut curl = Command::new("curl");
    curl.args(["-s", &format!("http://127.0.0.1:{METRICS_PORT}/metrics")]);
    let (code, m, err) = tool(lab, &lab.peer_ns(i), "curl", &curl)?;
    if code != 0 {
        return Err(format!("curl on node {i}: {code} {err}"));
    }
    let get = |series: &str| punch_tests::metric(&m, series).unwrap_or(0.0);
    let sessions_open =
        get("punch_sessions_open{path=\"direct\"}") + get("punch_sessions_open{path=\"relayed\"}");
    // Timed by the path a session opened on (it may have moved since).
    let timed = get("punch_time_to_session_seconds_count{path=\"direct\"}")
        + get("punch_time_to_session_seconds_count{path=\"relayed\"}");
    let peers = get("punch_kaspa_peers{direction=\"outbound\"}")
        + get("punch_kaspa_peers{direction=\"inbound\"}");
    let discoveries = get("punch_peering_discoveries_total{result=\"ok\"}");
    let rounds_running = get("punch_peering_rounds{peer=\"discovered\"}")
        + get("punch_peering_rounds{peer=\"pinned\"}");
    if sessions_open < others as f64
        || timed < 1.0
        || peers != others as f64
        || discoveries < 1.0
        || rounds_running < outbound_used as f64
        || punch_tests::metric(&m, "punch_peering_cooling{reason=\"refused\"}").is_none()
    {
        return Err(format!("node {i} metrics:\n{m}"));
    }
    eprintln!(
        "node {i}: status lists {direct} direct and {relayed} relayed sessions, {bridged} punched Kaspa peers; \
         metrics: {sessions_open} sessions open, {timed} timed, nat {}; peering {}; inbound {}",
        doc["nat"]["summary"], doc["peering"], doc["inbound"]
    );
    Ok((outbound_used, bridged - outbound_used))
}

#[test]
fn four_private_nodes_find_each_other_and_carry_a_block() {
    let name = "kaspad-punch-peering";
    if skip_without_net_admin(name) {
        return;
    }
    let topology = Topology::many(&KINDS).unwrap();
    let lab = Lab::build(name, topology, LinkParams::default()).unwrap();
    if let Err(e) = run(&lab) {
        panic!("{e}\n{}", lab.dump_logs());
    }
}

fn run(lab: &Lab) -> Result<(), String> {
    let dir = lab.case_dir();
    let (rendezvous, rendezvous_key) = start_rendezvous(lab).map_err(|e| format!("{e:#}"))?;
    let mut net = Net {
        lab,
        daemons: Vec::new(),
    };

    // A devnet node on the same rendezvous, in node 0's namespace (its own ports): another
    // network, so it must never be punched by (or punch) the simnet nodes.
    let mut devnet = kaspad_punch(dir, "devnet", &rendezvous, &rendezvous_key);
    devnet.args([
        "--devnet",
        "--rpclisten=127.0.0.1:16710",
        "--listen=0.0.0.0:16711",
    ]);
    let devnet_id = Keypair::load_or_generate(&dir.join("devnet.key"))
        .unwrap()
        .0
        .public();
    let started = Instant::now();
    net.daemons.push(
        lab.spawn("kaspad-punch-devnet", &lab.peer_ns(0), &devnet)
            .map_err(|e| e.to_string())?,
    );
    for i in 0..KINDS.len() {
        let mut cmd = kaspad_punch(dir, &format!("n{i}"), &rendezvous, &rendezvous_key);
        cmd.arg("--simnet")
            .arg(format!("--listen=0.0.0.0:{P2P_PORT}"))
            .arg("--enable-unsynced-mining")
            .arg(format!("--punch-metrics=127.0.0.1:{METRICS_PORT}"));
        if i == 0 {
            // Reachable RPC and wRPC: kaspad-punch does not need (nor turn on) unsafe RPC.
            cmd.arg(format!("--rpclisten=0.0.0.0:{RPC_PORT}"))
                .arg("--rpclisten-borsh=0.0.0.0:17610");
        } else {
            cmd.arg(format!("--rpclisten=127.0.0.1:{RPC_PORT}"));
        }
        net.daemons.push(
            lab.spawn(&format!("kaspad-punch-n{i}"), &lab.peer_ns(i), &cmd)
                .map_err(|e| e.to_string())?,
        );
    }

    // Every node lists the three others.
    let mut last = String::new();
    let (ids, took) = loop {
        if started.elapsed() > Duration::from_secs(120) {
            return Err(format!("not all connected after 120 s; last: {last}"));
        }
        std::thread::sleep(Duration::from_millis(500));
        net.running()?;
        let mut all = Vec::new();
        let mut failed = None;
        for i in 0..KINDS.len() {
            match peers(lab, &lab.peer_ns(i), &[]) {
                Ok(p) => all.push(p),
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            last = e;
            continue;
        }
        let ids: Vec<String> = all.iter().map(|(id, _)| id.clone()).collect();
        let complete = all.iter().all(|(own, list)| {
            let listed: HashSet<&String> = list.iter().map(|(id, _)| id).collect();
            ids.iter()
                .filter(|id| *id != own)
                .all(|id| listed.contains(id))
        });
        if complete {
            // Only through punch: every peer address is a slot (127.0.200.x, we dialed) or an
            // alias (127.a.b.c, it dialed); the nodes cannot reach each other otherwise.
            for (own, list) in &all {
                for (id, addr) in list {
                    if !addr.starts_with("127.") {
                        return Err(format!("{own} lists {id} at {addr}: not through punch"));
                    }
                }
            }
            break (ids, started.elapsed());
        }
        last = format!("{all:?}");
    };
    eprintln!("all four simnet nodes list the three others {took:?} after start");
    // Per node, from its first log line to its first punched peer (log timestamps).
    for (i, &d) in net.daemons[1..].iter().enumerate() {
        let log = lab.stderr(d).map_err(|e| e.to_string())?;
        let first = log.lines().next().and_then(secs_of_day);
        let punched = log
            .lines()
            .find(|l| l.contains("punched peer connected"))
            .and_then(secs_of_day);
        if let (Some(a), Some(b)) = (first, punched) {
            eprintln!(
                "node {i}: first punched peer {:.2} s after its first log line",
                b - a
            );
        }
    }
    // The status document reads several tasks' state, each updated by its own events: allow
    // it a few seconds to agree with itself after the nodes list each other.
    let (mut outbound, mut inbound) = (0, 0);
    for i in 0..KINDS.len() {
        let deadline = Instant::now() + Duration::from_secs(10);
        let (o, n) = loop {
            match operator_view(lab, dir, i, KINDS.len() - 1) {
                Ok(used) => break used,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(e) => eprintln!("node {i}, not yet:\n{e}"),
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        outbound += o;
        inbound += n;
    }
    // One session per pair, dialed by the side `dials` names: each is one node's outbound and
    // the other's inbound.
    let pairs = (KINDS.len() * (KINDS.len() - 1) / 2) as u64;
    if outbound != pairs || inbound != pairs {
        return Err(format!(
            "{pairs} pairs, but the nodes count {outbound} outbound and {inbound} inbound sessions"
        ));
    }
    if took > ALL_CONNECTED_WITHIN {
        return Err(format!(
            "all connected only {took:?} after start (bound {ALL_CONNECTED_WITHIN:?})"
        ));
    }

    // A block mined on node 0 reaches every other node.
    let mut mine = Command::new(bin_path("kaspa-mine"));
    mine.args(["--rpc", &format!("127.0.0.1:{RPC_PORT}")]);
    let (code, out, err) = tool(lab, &lab.peer_ns(0), "kaspa-mine", &mine)?;
    if code != 0 {
        return Err(format!("kaspa-mine exited {code}: {out}{err}"));
    }
    let hash = out
        .lines()
        .find_map(|l| l.strip_prefix("block "))
        .ok_or_else(|| format!("no block line: {out}"))?
        .trim()
        .to_string();
    let mined = Instant::now();
    for i in 1..KINDS.len() {
        loop {
            let mut has = Command::new(bin_path("kaspa-mine"));
            has.args([
                "--rpc",
                &format!("127.0.0.1:{RPC_PORT}"),
                "--has-block",
                &hash,
            ]);
            let (code, out, err) = tool(lab, &lab.peer_ns(i), "kaspa-has", &has)?;
            match code {
                0 => break,
                1 if mined.elapsed() < BLOCK_WITHIN => {
                    std::thread::sleep(Duration::from_millis(300))
                }
                _ => {
                    return Err(format!(
                        "node {i} lacks block {hash} {:?} after it was mined: {out}{err}",
                        mined.elapsed()
                    ))
                }
            }
        }
    }
    eprintln!(
        "block {hash} mined on node 0 is in the DAG of nodes 1-3 {:?} later",
        mined.elapsed()
    );

    // AddPeer over RPC is refused: unsafe mode stays off.
    let mut add = Command::new(bin_path("kaspa-peers"));
    add.args([
        "--rpc",
        &format!("127.0.0.1:{RPC_PORT}"),
        "--add-peer",
        "192.0.2.7:16111",
    ]);
    let (code, out, err) = tool(lab, &lab.peer_ns(0), "kaspa-addpeer", &add)?;
    if code == 0 || !err.to_lowercase().contains("safe") {
        return Err(format!(
            "AddPeer was not refused in safe mode: {code} {out}{err}"
        ));
    }

    // The devnet node: never punched.
    net.running()?;
    let devnet_short = devnet_id.short().to_string();
    for (i, &d) in net.daemons.iter().enumerate() {
        let log = lab.stderr(d).map_err(|e| e.to_string())?;
        let punched: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("punched peer connected"))
            .collect();
        if i == 0 {
            if !punched.is_empty() {
                return Err(format!("the devnet node was punched: {punched:?}"));
            }
        } else if punched.iter().any(|l| l.contains(&devnet_short)) {
            return Err(format!("simnet node {} punched the devnet node", i - 1));
        } else if punched.is_empty() {
            return Err(format!("simnet node {} logged no punched peer", i - 1));
        }
    }
    eprintln!("node ids {ids:?}; the devnet node was never punched");

    // A drop: node 3 stops; started again (same punch identity, new appdir, so a new kaspad
    // node id), the others re-punch it (or it them) with no help.
    let last = KINDS.len() - 1;
    let old = net.daemons.remove(last + 1);
    lab.kill(old).map_err(|e| e.to_string())?;
    let dropped = Instant::now();
    // The same key under a new name: a new appdir for the same punch identity.
    std::fs::copy(dir.join(format!("n{last}.key")), dir.join("again.key"))
        .map_err(|e| e.to_string())?;
    let mut cmd = kaspad_punch(dir, "again", &rendezvous, &rendezvous_key);
    cmd.arg("--simnet")
        .arg(format!("--listen=0.0.0.0:{P2P_PORT}"))
        .arg(format!("--rpclisten=127.0.0.1:{RPC_PORT}"));
    net.daemons.push(
        lab.spawn("kaspad-punch-n3-again", &lab.peer_ns(last), &cmd)
            .map_err(|e| e.to_string())?,
    );
    let mut state = String::new();
    loop {
        if dropped.elapsed() > Duration::from_secs(150) {
            return Err(format!(
                "node 3 not reconnected to all 150 s after its restart: {state}"
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
        net.running()?;
        let Ok((new_id, list)) = peers(lab, &lab.peer_ns(last), &[]) else {
            continue;
        };
        let mut others = Vec::new();
        for i in 0..last {
            if let Ok((_, l)) = peers(lab, &lab.peer_ns(i), &[]) {
                others.push(l.iter().any(|(id, _)| *id == new_id));
            }
        }
        let listed: HashSet<&String> = list.iter().map(|(id, _)| id).collect();
        let sees_all = ids[..last].iter().all(|id| listed.contains(id));
        state = format!("node 3 lists {list:?}; others list it: {others:?}");
        if sees_all && others.len() == last && others.iter().all(|x| *x) {
            break;
        }
    }
    eprintln!(
        "node 3 killed and restarted: connected to all three again {:?} after the kill",
        dropped.elapsed()
    );
    Ok(())
}
