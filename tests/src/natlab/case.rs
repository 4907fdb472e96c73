//! `run_case`: the real `rendezvous` and `punch` binaries across one lab topology.
//!
//! The rendezvous runs on the public host; peer B runs `punch listen` forwarding to an echo
//! service in its own namespace; peer A runs `punch connect B --local 127.0.0.1:9000`, and a
//! probe client in A's namespace sends a line through that tunnel and must get it back
//! (data crossing both ways over the authenticated session). Where the routers allow a direct
//! session ([`expected`]), the case must produce one (possibly relayed first, moving to direct
//! within the punch window); elsewhere the session must be relayed through the rendezvous.
//! Each case records its outcome and the time from the connect request to the open session
//! (as `punch connect` reports it) in the results directory, which `natlab_report` turns
//! into the matrix. A failure to connect is an error of the case.

use std::fmt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use punch_proto::Keypair;

use super::{Lab, LinkParams, ProcId, RouterKind, Side, Topology};
use crate::bin_path;

/// Where the rendezvous listens on the public host.
const RENDEZVOUS_PORT: u16 = 7717;
/// The echo service behind B.
const SERVICE: &str = "127.0.0.1:7000";
/// A's local end of the tunnel.
pub const TUNNEL: &str = "127.0.0.1:9000";
/// Registration takes one handshake with the rendezvous: a few RTTs even at 50 ms per link.
const STARTUP: Duration = Duration::from_secs(15);
/// A failing punch gives up after the client's 10 s window; this bounds the whole failure
/// (registration + request + window + exit).
pub const FAILURE_BOUND: Duration = Duration::from_secs(25);

/// What a case must produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// An authenticated direct session carrying data both ways (it may start on the relay
    /// and move to the direct connection within the punch window).
    Direct,
    /// A relayed session carrying data both ways: no direct path exists.
    Relayed,
    /// Either, for a case this lab cannot decide (see [`expected`]).
    DirectOrRelayed,
}

/// The expectation of the issue: direct wherever at most one side is endpoint-dependent and
/// the other is a public host, or neither is endpoint-dependent; relayed everywhere else.
///
/// One exception, a property of this lab rather than of routers: two RST-answering routers
/// with *zero* delay and no hop between them. Each SYN then reaches the other router before
/// that side's own SYN has left, the RST moves the sender's conntrack entry to CLOSE, and the
/// other SYN arriving on a CLOSE entry is INVALID and reset as well; the SYNs would have to
/// leave within ~50 us of each other. On real paths (milliseconds, many hops) and here with
/// 50 ms per link the SYNs cross in flight and the pair connects (and must). The real fix,
/// TTL-limited priming SYNs that open our own mapping without reaching the other router,
/// needs hops between the routers to mean anything, so this case accepts either path.
pub fn expected(topology: Topology, link: LinkParams) -> Expect {
    let Topology::Pair(a, b) = topology else {
        return Expect::Direct;
    };
    if a == RouterKind::HomeEimRst && b == RouterKind::HomeEimRst && link.delay_ms == 0 {
        return Expect::DirectOrRelayed;
    }
    let sym = |k| k == RouterKind::Symmetric;
    match (sym(a), sym(b)) {
        (false, false) => Expect::Direct,
        (true, false) if b == RouterKind::Public => Expect::Direct,
        (false, true) if a == RouterKind::Public => Expect::Direct,
        _ => Expect::Relayed,
    }
}

/// What a case produced. Times are from the connect request, as `punch connect` reports them.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Direct {
        ms: u64,
        remote: String,
    },
    /// Relayed, and still relayed when the case ended.
    Relayed {
        ms: u64,
    },
    /// Relayed first, then moved to a direct connection.
    Upgraded {
        relayed_ms: u64,
        direct_ms: u64,
    },
    Failed {
        after: Duration,
        error: String,
    },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Direct { ms, .. } => write!(f, "direct {ms} ms"),
            Outcome::Relayed { ms } => write!(f, "relayed {ms} ms"),
            Outcome::Upgraded {
                relayed_ms,
                direct_ms,
            } => write!(f, "relayed {relayed_ms} ms, direct {direct_ms} ms"),
            Outcome::Failed { after, .. } => write!(f, "failed {:.1} s", after.as_secs_f64()),
        }
    }
}

/// A short label of the link parameters, used as the matrix's name.
pub fn variant(link: LinkParams) -> String {
    if let Some(b) = link.delay_ms_b {
        format!("{}ms-{}ms", link.delay_ms, b)
    } else if link.loss_percent > 0.0 {
        format!("{}ms-loss{}", link.delay_ms, link.loss_percent)
    } else {
        format!("{}ms", link.delay_ms)
    }
}

/// The directory case results go to: `$NATLAB_RESULTS`, else `target/natlab-results`.
pub fn results_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NATLAB_RESULTS") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test> or target/<profile>/<binary>
    let exe = std::env::current_exe().expect("executable path");
    let mut profile = exe.parent();
    if profile.is_some_and(|p| p.ends_with("deps")) {
        profile = profile.and_then(std::path::Path::parent);
    }
    profile
        .and_then(std::path::Path::parent)
        .map(|target| target.join("natlab-results"))
        .unwrap_or_else(|| std::env::temp_dir().join("natlab-results"))
}

fn record(topology: Topology, link: LinkParams, outcome: &Outcome) -> Result<()> {
    let dir = results_dir();
    std::fs::create_dir_all(&dir)?;
    let (a, b) = match topology {
        Topology::Pair(a, b) => (a.to_string(), b.to_string()),
        Topology::SameRouter | Topology::Many(_) => {
            let t = topology.to_string().replace('/', "+");
            (t.clone(), t)
        }
    };
    let (kind, value) = match outcome {
        Outcome::Direct { ms, .. } => ("direct", ms.to_string()),
        Outcome::Relayed { ms } => ("relayed", ms.to_string()),
        Outcome::Upgraded {
            relayed_ms,
            direct_ms,
        } => ("upgraded", format!("{relayed_ms}>{direct_ms}")),
        Outcome::Failed { after, .. } => ("failed", after.as_millis().to_string()),
    };
    let file = dir.join(format!("{}__{a}__{b}.tsv", variant(link)));
    std::fs::write(
        file,
        format!("{}\t{a}\t{b}\t{kind}\t{value}\n", variant(link)),
    )?;
    Ok(())
}

/// `punch SUBCOMMAND...` with the lab's rendezvous flags and a key file in the case directory.
pub fn punch_cmd(lab: &Lab, subcommand: &[&str], key: &str, rendezvous_key: &str) -> Command {
    let mut cmd = Command::new(bin_path("punch"));
    cmd.env("RUST_LOG", "punch=debug,warn");
    cmd.args(subcommand);
    cmd.args([
        "--rendezvous",
        &format!("{}:{RENDEZVOUS_PORT}", lab.rendezvous_ip()),
        "--rendezvous-key",
        rendezvous_key,
        "--key-file",
        &lab.case_dir().join(key).display().to_string(),
    ]);
    cmd
}

/// Runs one case and returns its outcome; panics (with every process's log) when the outcome
/// contradicts the expectation. Returns `None` when the lab cannot run here (it said why).
pub fn run_case(
    name: &str,
    topology: Topology,
    link: LinkParams,
    expect: Expect,
) -> Option<Outcome> {
    if super::skip_without_net_admin(name) {
        return None;
    }
    let mut lab = Lab::build(name, topology, link).expect("building the lab");
    let res = drive(&lab, expect);
    let outcome = match res {
        Ok(outcome) => outcome,
        Err(e) => {
            let logs = lab.dump_logs();
            lab.teardown();
            panic!("case {name} ({topology}, {}): {e:#}\n{logs}", variant(link));
        }
    };
    let ok = matches!(
        (&outcome, expect),
        (
            Outcome::Direct { .. } | Outcome::Upgraded { .. },
            Expect::Direct | Expect::DirectOrRelayed
        ) | (
            Outcome::Relayed { .. },
            Expect::Relayed | Expect::DirectOrRelayed
        )
    );
    record(topology, link, &outcome).expect("writing the case result");
    eprintln!("natlab {name}: {topology} {}: {outcome}", variant(link));
    if !ok {
        let logs = lab.dump_logs();
        lab.teardown();
        panic!(
            "case {name} ({topology}, {}): expected {expect:?}, got {outcome:?}\n{logs}",
            variant(link)
        );
    }
    Some(outcome)
}

/// Starts the real `rendezvous` on the lab's public host (port 7717, key in the case
/// directory) and returns its address and identity, as clients pass them on the command line.
pub fn start_rendezvous(lab: &Lab) -> Result<(String, String)> {
    let addr = format!("{}:{RENDEZVOUS_PORT}", lab.rendezvous_ip());
    let mut rv = Command::new(bin_path("rendezvous"));
    rv.args([
        "--listen",
        &addr,
        "--key-file",
        &lab.case_dir().join("rendezvous.key").display().to_string(),
    ]);
    let rv = lab.spawn("rendezvous", &lab.rendezvous_ns(), &rv)?;
    let line = lab.wait_stdout_line(rv, STARTUP, |l| l.starts_with("identity "))?;
    let key = line.trim_start_matches("identity ").trim().to_string();
    Ok((addr, key))
}

/// The case's processes: B's `punch listen` with the echo behind it, and A's `punch connect`
/// (started at `started`) with its tunnel end at [`TUNNEL`].
#[derive(Debug)]
pub struct Peers {
    pub listen: ProcId,
    pub connect: ProcId,
    pub started: Instant,
}

/// Starts the rendezvous, B's echo service and `punch listen`, then A's `punch connect`.
pub fn start_peers(lab: &Lab) -> Result<Peers> {
    let (_, rendezvous_key) = start_rendezvous(lab)?;

    let b_ns = lab.peer_ns(Side::B);
    let mut echo = Command::new(super::helper_bin("natlab_tcp")?);
    echo.args(["echo", SERVICE, "--max-secs", "120"]);
    let echo = lab.spawn("echo-b", &b_ns, &echo)?;
    lab.wait_stdout_line(echo, STARTUP, |l| l.starts_with("listening "))?;
    // A's identity is made here so that B can allow exactly it (`punch connect` loads it).
    let a_key = Keypair::generate()?;
    a_key.save(&lab.case_dir().join("a.key"))?;
    let a_id = a_key.public().to_string();
    let listen = punch_cmd(
        lab,
        &["listen", "--forward", SERVICE, "--allow", &a_id],
        "b.key",
        &rendezvous_key,
    );
    let listen = lab.spawn("punch-listen-b", &b_ns, &listen)?;
    let line = lab.wait_stdout_line(listen, STARTUP, |l| l.starts_with("listening as "))?;
    let b_id = line
        .split_whitespace()
        .nth(2)
        .context("no id in the listen line")?
        .to_string();

    let a_ns = lab.peer_ns(Side::A);
    let connect = punch_cmd(
        lab,
        &["connect", &b_id, "--local", TUNNEL],
        "a.key",
        &rendezvous_key,
    );
    let started = Instant::now();
    let connect = lab.spawn("punch-connect-a", &a_ns, &connect)?;
    Ok(Peers {
        listen,
        connect,
        started,
    })
}

fn drive(lab: &Lab, expect: Expect) -> Result<Outcome> {
    let Peers {
        connect, started, ..
    } = start_peers(lab)?;
    let a_ns = lab.peer_ns(Side::A);
    let Some((path, ms, remote)) = wait_connected(lab, connect, expect)? else {
        let after = started.elapsed();
        let err = lab.stderr(connect)?;
        let error = err
            .lines()
            .find(|l| l.starts_with("punch: error:"))
            .context("punch connect failed without its error line")?
            .to_string();
        return Ok(Outcome::Failed { after, error });
    };
    lab.wait_stdout_line(connect, STARTUP, |l| l.starts_with("local "))?;
    check_tunnel(lab, &a_ns)?;
    if path == "direct" {
        return Ok(Outcome::Direct { ms, remote });
    }
    if path != "relayed" {
        bail!("unknown path {path:?}");
    }
    // A relayed session whose pair can punch moves to the direct connection within the punch
    // window; one that cannot stays relayed. Watch the window out where direct is possible.
    let moved = if expect == Expect::Relayed {
        None
    } else {
        wait_moved(lab, connect, UPGRADE_BOUND)?
    };
    // Data crosses again, on whichever path the session has now.
    check_tunnel(lab, &a_ns)?;
    Ok(match moved {
        Some(direct_ms) => Outcome::Upgraded {
            relayed_ms: ms,
            direct_ms,
        },
        None => Outcome::Relayed { ms },
    })
}

/// A relayed session moves within the punch window (10 s after the dial moment) or not at all.
pub const UPGRADE_BOUND: Duration = Duration::from_secs(12);

/// Waits for `punch connect` to report `session ... now direct (..., N ms)`; returns N.
pub fn wait_moved(lab: &Lab, id: ProcId, bound: Duration) -> Result<Option<u64>> {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        let err = lab.stderr(id)?;
        if let Some(line) = err
            .lines()
            .find(|l| l.starts_with("punch: session with ") && l.contains(" now direct "))
        {
            let ms = line
                .rsplit(", ")
                .next()
                .and_then(|m| m.trim_end_matches(" ms)").parse().ok())
                .with_context(|| format!("no time in {line:?}"))?;
            return Ok(Some(ms));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(None)
}

/// Waits for `punch connect` to report the session (`Some(path, ms, remote)`) or to exit
/// (`None`).
pub fn wait_connected(
    lab: &Lab,
    id: ProcId,
    expect: Expect,
) -> Result<Option<(String, u64, String)>> {
    let deadline = Instant::now() + FAILURE_BOUND;
    while Instant::now() < deadline {
        let err = lab.stderr(id)?;
        if let Some(line) = err.lines().find(|l| l.starts_with("punch: connected to ")) {
            // "punch: connected to ID (PATH, remote ADDR, N ms)"
            let inner = line.split_once('(').map(|x| x.1).unwrap_or_default();
            let parts: Vec<&str> = inner.trim_end_matches(')').split(", ").collect();
            let path = parts.first().copied().unwrap_or_default().to_string();
            let remote = parts
                .get(1)
                .map(|r| r.trim_start_matches("remote "))
                .unwrap_or("")
                .to_string();
            let ms = parts
                .get(2)
                .and_then(|m| m.trim_end_matches(" ms").parse().ok())
                .with_context(|| format!("no time in {line:?}"))?;
            return Ok(Some((path, ms, remote)));
        }
        if let Some(status) = lab.try_wait(id)? {
            if status.success() {
                bail!("punch connect exited 0 without a session");
            }
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "punch connect neither connected nor failed within {FAILURE_BOUND:?} (expected {expect:?})"
    )
}

/// Sends a line through A's tunnel end; the echo behind B must return it unchanged.
fn check_tunnel(lab: &Lab, a_ns: &str) -> Result<()> {
    let opts = super::ConnectOpts {
        timeout: Duration::from_secs(5),
        ..Default::default()
    };
    match lab.tcp_connect(a_ns, TUNNEL.parse()?, opts)? {
        super::ConnectOutcome::Connected { local, reply, .. } => {
            let sent = format!("hi {local}");
            if reply != sent {
                bail!("tunnel returned {reply:?}, sent {sent:?}");
            }
            Ok(())
        }
        other => bail!("tunnel probe failed: {other:?}"),
    }
}
