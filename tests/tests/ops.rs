//! Operating it, against the real binaries on loopback: a rendezvous with `--metrics`, a
//! `punch listen` and a `punch connect --local`, both with `--metrics`. After one punch and
//! some bytes through the tunnel:
//!
//! - the rendezvous's counters moved (handshakes ok, connect requests, offers, registered
//!   peers, our own pings);
//! - each peer's counters and its time-to-session histogram moved (from zero before the punch)
//!   and its open-session gauge shows the direct session;
//! - `punch status --json` on each peer (over its status socket, mode 0600) shows the
//!   rendezvous connection and the one session, its path, its remote address and its bytes;
//!   `punch status` without `--json` prints a summary; a status socket nobody serves gives a
//!   clear error and a failing exit code.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use punch_proto::Keypair;
use punch_tests::{
    bin_path, init_tracing, metric, scrape, unique_temp_dir, ListenProcess, RendezvousProcess,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bounds every wait that must end: loopback punches take milliseconds.
const HANG: Duration = Duration::from_secs(20);

/// A TCP echo service.
async fn echo_service() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = tcp.split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
            });
        }
    });
    addr
}

/// The real `punch connect PEER --local 127.0.0.1:0 --metrics 127.0.0.1:0`, killed on drop.
struct ConnectProcess {
    child: Child,
    dir: PathBuf,
    local: SocketAddr,
    log: PathBuf,
}

impl ConnectProcess {
    fn spawn(rv: &RendezvousProcess, key: &Keypair, peer: &punch_proto::PeerId) -> Self {
        let dir = unique_temp_dir("punch-connect");
        key.save(&dir.join("connect.key")).unwrap();
        let log = dir.join("connect.log");
        let mut child = Command::new(bin_path("punch"))
            .arg("connect")
            .arg(peer.to_string())
            .args(["--local", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
            .args(["--bind", "127.0.0.1:0"])
            .arg("--rendezvous")
            .arg(rv.addr().to_string())
            .arg("--rendezvous-key")
            .arg(rv.identity().to_string())
            .arg("--key-file")
            .arg(dir.join("connect.key"))
            .env("RUST_LOG", "punch=info,warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx.recv_timeout(HANG).unwrap_or_else(|_| {
            panic!(
                "punch connect printed no local address; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        let local = line
            .strip_prefix("local ")
            .unwrap_or_else(|| panic!("{line}"))
            .parse()
            .unwrap();
        Self {
            child,
            dir,
            local,
            log,
        }
    }

    fn key_file(&self) -> PathBuf {
        self.dir.join("connect.key")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ConnectProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `--metrics` address a `punch` process logged (`punch: metrics at http://ADDR/metrics`).
fn logged_metrics_addr(log: &str) -> SocketAddr {
    let rest = log
        .lines()
        .find_map(|l| l.split_once("punch: metrics at http://").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no metrics line in the log:\n{log}"));
    rest.trim().trim_end_matches("/metrics").parse().unwrap()
}

/// `punch status --key-file KEY [--json]`: (exit success, stdout, stderr).
fn punch_status(key_file: &Path, json: bool) -> (bool, String, String) {
    let mut cmd = Command::new(bin_path("punch"));
    cmd.arg("status").arg("--key-file").arg(key_file);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn status_json(key_file: &Path) -> serde_json::Value {
    let (ok, out, err) = punch_status(key_file, true);
    assert!(ok, "punch status failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Polls `f` until it returns `Some`, within [`HANG`].
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + HANG;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {HANG:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_status_show_a_punched_session_on_both_peers_and_the_rendezvous() {
    init_tracing();
    let rv = RendezvousProcess::spawn(&["--metrics", "127.0.0.1:0"]);
    let rv_metrics = rv
        .metrics()
        .expect("the rendezvous printed its metrics address");
    let echo = echo_service().await;
    let connector = Keypair::generate().unwrap();
    let listen = ListenProcess::spawn(
        &rv,
        echo,
        &[connector.public()],
        &["--metrics", "127.0.0.1:0"],
    );
    let listen_metrics = logged_metrics_addr(&listen.log_text());
    let before = scrape(listen_metrics).await;
    assert_eq!(
        metric(
            &before,
            "punch_time_to_session_seconds_count{path=\"direct\"}"
        ),
        None,
        "no session yet:\n{before}"
    );
    assert_eq!(
        metric(&before, "punch_sessions_open{path=\"direct\"}"),
        Some(0.0)
    );
    let rv_before = scrape(rv_metrics).await;
    let offers_before = metric(&rv_before, "rendezvous_offers_total").unwrap();

    // The status socket is owner-only, beside the key.
    let socket = punch_ops::status::socket_beside(&listen.key_file());
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", socket.display());

    let connect = ConnectProcess::spawn(&rv, &connector, &listen.id);
    let mut tcp = TcpStream::connect(connect.local).await.unwrap();
    let payload = vec![7u8; 256 * 1024];
    tcp.write_all(&payload).await.unwrap();
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(HANG, tcp.read_exact(&mut back))
        .await
        .unwrap_or_else(|_| panic!("no echo; connect log:\n{}", connect.log_text()))
        .unwrap();
    assert_eq!(back, payload);

    // Both peers' status shows the session, its path and its bytes.
    for (who, key, peer) in [
        ("listen", listen.key_file(), connector.public()),
        ("connect", connect.key_file(), listen.id),
    ] {
        let doc = eventually(&format!("{who}: a session with bytes"), || {
            let doc = status_json(&key);
            let s = doc["sessions"].as_array()?.first()?.clone();
            (s["bytes_received"].as_u64()? >= payload.len() as u64).then_some(doc)
        })
        .await;
        assert_eq!(doc["rendezvous"]["state"], "registered", "{who}: {doc}");
        assert!(doc["rendezvous"]["rtt_ms"].is_number(), "{who}: {doc}");
        let sessions = doc["sessions"].as_array().unwrap();
        assert_eq!(sessions.len(), 1, "{who}: {doc}");
        let s = &sessions[0];
        assert_eq!(s["peer"], peer.to_string(), "{who}: {doc}");
        assert_eq!(s["path"], "direct", "{who}: {doc}");
        let remote: SocketAddr = s["remote"].as_str().unwrap().parse().unwrap();
        assert!(remote.ip().is_loopback(), "{who}: {doc}");
        assert!(s["bytes_sent"].as_u64().unwrap() >= payload.len() as u64);
        println!(
            "{who}: status shows {} via {} ({} B sent, {} B received), rendezvous rtt {} ms",
            s["peer_short"],
            s["path"],
            s["bytes_sent"],
            s["bytes_received"],
            doc["rendezvous"]["rtt_ms"]
        );
    }
    let doc = status_json(&listen.key_file());
    assert_eq!(doc["command"], "listen");
    assert_eq!(doc["caps"]["sessions"]["used"], 1, "{doc}");
    let (ok, text, _) = punch_status(&listen.key_file(), false);
    assert!(ok);
    assert!(
        text.contains("direct") && text.contains("registered"),
        "{text}"
    );
    println!("punch status (listen):\n{text}");

    // The counters and the histogram moved.
    let connect_metrics = logged_metrics_addr(&connect.log_text());
    for (who, at) in [("listen", listen_metrics), ("connect", connect_metrics)] {
        let m = scrape(at).await;
        let seen = |s: &str| metric(&m, s).unwrap_or_else(|| panic!("{who}: no {s}:\n{m}"));
        assert_eq!(
            seen("punch_time_to_session_seconds_count{path=\"direct\"}"),
            1.0
        );
        assert!(seen("punch_time_to_session_seconds_sum{path=\"direct\"}") > 0.0);
        assert_eq!(
            seen("punch_punch_outcomes_total{result=\"direct\",reason=\"\"}"),
            1.0
        );
        assert_eq!(seen("punch_sessions_open{path=\"direct\"}"), 1.0);
        assert!(seen("punch_session_bytes_total{direction=\"received\"}") >= payload.len() as f64);
        assert_eq!(seen("punch_rendezvous_registered"), 1.0);
        assert!(m.contains("punch_build_info{"), "{m}");
    }
    let m = scrape(connect_metrics).await;
    assert_eq!(metric(&m, "punch_requests_total"), Some(1.0), "{m}");
    assert_eq!(
        metric(&m, "punch_offers_total{direction=\"outbound\"}"),
        Some(1.0),
        "{m}"
    );
    let m = scrape(listen_metrics).await;
    assert_eq!(
        metric(&m, "punch_offers_total{direction=\"inbound\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(metric(&m, "punch_listen_sessions"), Some(1.0), "{m}");

    let m = scrape(rv_metrics).await;
    let seen = |s: &str| metric(&m, s).unwrap_or_else(|| panic!("rendezvous: no {s}:\n{m}"));
    assert_eq!(seen("rendezvous_registered_peers"), 2.0);
    assert!(seen("rendezvous_handshakes_total{result=\"ok\"}") >= 2.0);
    assert_eq!(seen("rendezvous_requests_total{kind=\"connect\"}"), 1.0);
    assert!(
        seen("rendezvous_requests_total{kind=\"ping\"}") >= 2.0,
        "each client pings once registered"
    );
    assert_eq!(seen("rendezvous_offers_total") - offers_before, 1.0);
    assert!(m.contains("rendezvous_build_info{"), "{m}");

    // Nobody serves this socket: a clear error, a failing exit.
    let (ok, _, err) = punch_status(&std::env::temp_dir().join("punch-no-such-node.key"), true);
    assert!(!ok);
    assert!(err.contains("is it running"), "{err}");
}
