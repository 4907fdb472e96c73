//! The demo's NAT mode: the rendezvous and the two demo peers each run in their own process
//! inside a NAT lab ([`punch_natlab`]): the rendezvous on the public host 203.0.113.1, node A
//! behind a home router at 203.0.113.10 (LAN 192.168.1.0/24), node B behind another at
//! 203.0.113.20 (LAN 192.168.2.0/24). Both routers are Linux `MASQUERADE` with a stateful
//! filter that drops unsolicited inbound packets, so neither node is reachable from outside:
//! the only way between them is the punched session.
//!
//! The processes are this binary again (`punch-demo rendezvous` and `punch-demo peer`, hidden
//! subcommands). Each peer runs a [`DemoPeer`](crate::DemoPeer) and prints its timeline
//! entries on stdout ([`Timeline::export`]); this side merges them by wall-clock time (one
//! machine, one clock) and reads each peer's result line. Needs CAP_NET_ADMIN, `ip` and
//! `iptables` ([`unavailable`] says why not); everything made is removed when the lab is
//! dropped.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use punch_natlab::{Lab, LinkParams, ProcId, RouterKind, Side, Topology};
use punch_proto::Keypair;

use crate::{setup_err, DemoConfig, DemoError, Report, Timeline, EVENT_PREFIX};

/// The rendezvous port on the lab's public host.
pub const RENDEZVOUS_PORT: u16 = 7717;
/// Process start plus registration (a few local round trips).
const STARTUP: Duration = Duration::from_secs(20);
/// A peer's run up to its result line: punch, bridge and handshake ([`crate`]'s
/// timeouts, summed, plus margin).
const PEER_RUN: Duration = Duration::from_secs(50);
/// A line a peer prints last: `@result ready`, `@result rejected <reason>` or
/// `@result failed <reason>`.
pub const RESULT_PREFIX: &str = "@result ";
/// A line a peer prints after registering: `@registered <punch id>`.
pub const REGISTERED_PREFIX: &str = "@registered ";
/// A line a peer prints with its setup description: `@setup <text>`.
pub const SETUP_PREFIX: &str = "@setup ";
/// A line the rendezvous prints when it listens: `@listening <addr> <key>`.
pub const LISTENING_PREFIX: &str = "@listening ";

/// Why the NAT mode cannot run here, or `None` when it can.
pub fn unavailable() -> Option<&'static str> {
    punch_natlab::skip_reason()
}

/// Builds the demo's lab: two home routers, no delay or loss.
pub fn build_lab() -> Result<Lab, DemoError> {
    Lab::build(
        "punch-demo",
        Topology::Pair(RouterKind::HomeEim, RouterKind::HomeEim),
        LinkParams::default(),
    )
    .map_err(|e| setup_err("NAT lab")(e.to_string()))
}

/// What the lab looks like, for the output.
pub fn describe(lab: &Lab) -> String {
    format!(
        "node A in its own network namespace at {} behind home router {} (NAT, drops unsolicited inbound), \
         node B at {} behind home router {} (same), rendezvous on the public host {}",
        lab.peer_lan_ip(Side::A),
        lab.peer_public_ip(Side::A),
        lab.peer_lan_ip(Side::B),
        lab.peer_public_ip(Side::B),
        lab.rendezvous_ip()
    )
}

/// Runs the demo in `lab` ([`build_lab`]), starting `exe` (this binary) for the rendezvous and
/// each peer. Blocking: call it off the async runtime.
pub fn run(
    lab: &Lab,
    exe: &Path,
    config: &DemoConfig,
    timeline: Arc<Timeline>,
) -> Result<Report, DemoError> {
    let result = drive(lab, exe, config, &timeline);
    if result.is_err() {
        // The children's own words are the best explanation of a failure.
        eprintln!("{}", lab.dump_logs());
    }
    result
}

fn drive(
    lab: &Lab,
    exe: &Path,
    config: &DemoConfig,
    timeline: &Timeline,
) -> Result<Report, DemoError> {
    let lab_err = |stage| move |e: punch_natlab::Error| setup_err(stage)(e.to_string());
    let dir = lab.case_dir();
    let rendezvous_key = dir.join("rendezvous.key");
    let rendezvous = format!("{}:{RENDEZVOUS_PORT}", lab.rendezvous_ip());
    let mut cmd = Command::new(exe);
    cmd.args(["rendezvous", "--bind", &rendezvous, "--key-file"])
        .arg(&rendezvous_key);
    let rv = lab
        .spawn("rendezvous", &lab.rendezvous_ns(), &cmd)
        .map_err(lab_err("rendezvous"))?;
    let line = lab
        .wait_stdout_line(rv, STARTUP, |l| l.starts_with(LISTENING_PREFIX))
        .map_err(lab_err("rendezvous"))?;
    let server_key = line
        .split_whitespace()
        .nth(2)
        .ok_or_else(|| setup_err("rendezvous")(format!("bad line {line:?}")))?
        .to_string();
    import(timeline, &lab.stdout(rv).unwrap_or_default());

    // B first: it must be registered before A asks for it. A needs B's identity; A's own key
    // file is created by A's process.
    let b_key = dir.join("b.key");
    let a_key = dir.join("a.key");
    let b_id = Keypair::load_or_generate(&b_key)
        .map_err(|e| setup_err("key B")(e.to_string()))?
        .0
        .public();
    let peer = |who: &str, network: &str, key: &Path| {
        let mut cmd = Command::new(exe);
        cmd.args([
            "peer",
            "--who",
            who,
            "--network",
            network,
            "--rendezvous",
            &rendezvous,
            "--rendezvous-key",
            &server_key,
            "--key-file",
        ])
        .arg(key);
        cmd
    };
    let mut b = peer("B", &config.network_b, &b_key);
    b.arg("--accept");
    let b = lab
        .spawn("node-b", &lab.peer_ns(Side::B), &b)
        .map_err(lab_err("node B"))?;
    lab.wait_stdout_line(b, STARTUP, |l| l.starts_with(REGISTERED_PREFIX))
        .map_err(lab_err("node B"))?;
    let mut a = peer("A", &config.network_a, &a_key);
    a.args(["--connect", &b_id.to_string(), "--connect-name", "B"]);
    let a = lab
        .spawn("node-a", &lab.peer_ns(Side::A), &a)
        .map_err(lab_err("node A"))?;

    // Each peer keeps its session after its result line (so its last handshake messages
    // reach the other side); both are ended once both have reported.
    let a_result = finish(lab, a, timeline, "A");
    let b_result = finish(lab, b, timeline, "B");
    let _ = lab.kill(a);
    let _ = lab.kill(b);
    let (a_ready, a_rejection, a_setup) = a_result?;
    let (b_ready, b_rejection, b_setup) = b_result?;
    Ok(Report {
        a_ready,
        b_ready,
        rejections: a_rejection.into_iter().chain(b_rejection).collect(),
        mode: "nat",
        setup: format!("{a_setup}\n{b_setup}"),
    })
}

/// Waits for a peer process and reads its timeline, setup and result.
fn finish(
    lab: &Lab,
    id: ProcId,
    timeline: &Timeline,
    who: &'static str,
) -> Result<(bool, Option<String>, String), DemoError> {
    let stage = if who == "A" { "node A" } else { "node B" };
    let waited = lab.wait_stdout_line(id, PEER_RUN, |l| l.starts_with(RESULT_PREFIX));
    let out = lab.stdout(id).unwrap_or_default();
    import(timeline, &out);
    let setup = out
        .lines()
        .find_map(|l| l.strip_prefix(SETUP_PREFIX))
        .unwrap_or("")
        .to_string();
    let result = out.lines().find_map(|l| l.strip_prefix(RESULT_PREFIX));
    match result {
        Some("ready") => Ok((true, None, setup)),
        Some(r) => match r.strip_prefix("rejected ") {
            Some(reason) => Ok((false, Some(reason.to_string()), setup)),
            None => Err(setup_err(stage)(r.to_string())),
        },
        None => Err(setup_err(stage)(match waited {
            Err(e) => format!("no result: {e}"),
            Ok(_) => "no result".to_string(),
        })),
    }
}

fn import(timeline: &Timeline, out: &str) {
    for line in out.lines().filter(|l| l.starts_with(EVENT_PREFIX)) {
        timeline.import(line);
    }
}
