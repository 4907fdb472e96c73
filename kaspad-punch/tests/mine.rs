//! `kaspa-mine` against one real `kaspad-punch` on simnet on loopback (no punch flags, a
//! temporary appdir, no DNS seeds, UPnP off, `--enable-unsynced-mining` since a node with no
//! peers never counts itself synced): a mined block is present, a random hash is absent,
//! and three blocks mined in a row are all present, each built on the one before.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kaspa_grpc_client::GrpcClient;
use kaspa_rpc_core::api::rpc::RpcApi;
use kaspa_rpc_core::RpcHash;
use punch_tests::{bin_path, unique_temp_dir};

/// From spawn to the RPC answering: a fresh simnet node opens its databases and starts its
/// services in a few seconds; a minute means it is stuck.
const RPC_UP_WITHIN: Duration = Duration::from_secs(60);
/// One `kaspa-mine` run: it has its own `--timeout-secs`; this bounds the process itself.
const RUN_WITHIN: Duration = Duration::from_secs(40);

/// One `kaspad-punch` on simnet. Killed, waited for and its directory removed on drop, so
/// every path out of the test (pass, failed assertion) cleans up.
struct Node {
    child: Child,
    dir: PathBuf,
    rpc: String,
}

impl Node {
    fn start() -> Node {
        let dir = unique_temp_dir("kaspa-mine-test");
        let [rpc, p2p] = free_ports().map(|port| format!("127.0.0.1:{port}"));
        let log = File::create(dir.join("kaspad.log")).unwrap();
        let child = Command::new(bin_path("kaspad-punch"))
            .arg("--simnet")
            .arg(format!("--appdir={}", dir.join("app").display()))
            .args([
                "--nodnsseed",
                "--disable-upnp",
                "--yes",
                "--enable-unsynced-mining",
                &format!("--rpclisten={rpc}"),
                &format!("--listen={p2p}"),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Node { child, dir, rpc }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("kaspad.log")).unwrap_or_default()
    }

    /// `kaspa-mine --rpc <node> <args>`, killed if it outlives [`RUN_WITHIN`].
    fn kaspa_mine(&self, args: &[&str]) -> Output {
        let child = Command::new(bin_path("kaspa-mine"))
            .args(["--rpc", &self.rpc, "--timeout-secs", "30"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_output(child, RUN_WITHIN)
    }

    /// Waits until the RPC answers (`--has-block` of a random hash says `absent`).
    fn wait_rpc(&mut self) {
        let start = Instant::now();
        loop {
            let out = self.kaspa_mine(&["--has-block", &random_hash()]);
            if out.status.code() == Some(1) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("kaspad-punch exited early ({status}):\n{}", self.log());
            }
            assert!(
                start.elapsed() < RPC_UP_WITHIN,
                "RPC at {} not up within {RPC_UP_WITHIN:?}; last kaspa-mine: {}\n{}",
                self.rpc,
                describe(&out),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Mines one block; its hash.
    fn mine(&self) -> String {
        let out = self.kaspa_mine(&[]);
        assert!(out.status.success(), "kaspa-mine: {}", describe(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let hash = stdout
            .lines()
            .find_map(|l| l.strip_prefix("block "))
            .unwrap_or_else(|| panic!("no `block <hash>` line: {}", describe(&out)))
            .to_string();
        assert_eq!(hash.len(), 64, "{hash:?}");
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit()), "{hash:?}");
        hash
    }

    /// `--has-block`: Some(true) present, Some(false) absent; panics on anything else.
    fn has_block(&self, hash: &str) -> bool {
        let out = self.kaspa_mine(&["--has-block", hash]);
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match out.status.code() {
            Some(0) => {
                assert_eq!(stdout, format!("present {hash}"));
                true
            }
            Some(1) => {
                assert_eq!(stdout, format!("absent {hash}"));
                false
            }
            _ => panic!("kaspa-mine --has-block {hash}: {}", describe(&out)),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Two distinct loopback ports that were free a moment ago (both held while choosing).
fn free_ports() -> [u16; 2] {
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    [
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    ]
}

fn random_hash() -> String {
    (0..4)
        .map(|_| format!("{:016x}", rand_u64()))
        .collect::<String>()
}

/// A random u64 from the std hasher's random keys (no extra dependency for a test).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// The child's output, or kills it and panics after `limit`.
fn wait_output(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    loop {
        match child.try_wait().unwrap() {
            Some(_) => return child.wait_with_output().unwrap(),
            None if start.elapsed() > limit => {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "kaspa-mine still running after {limit:?}: {}",
                    describe(&out)
                );
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn describe(out: &Output) -> String {
    format!(
        "{} stdout={:?} stderr={:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The direct parents (level 0) of block `hash`, over the node's RPC.
fn direct_parents(rpc: &str, hash: &str) -> Vec<String> {
    let hash: RpcHash = hash.parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(15), async {
            let client = GrpcClient::connect(format!("grpc://{rpc}")).await.unwrap();
            let block = client.get_block(hash, false).await.unwrap();
            let _ = client.disconnect().await;
            block
                .header
                .parents_by_level
                .first()
                .map(|level| level.iter().map(|h| h.to_string()).collect())
                .unwrap_or_default()
        })
        .await
        .unwrap()
    })
}

#[test]
fn mined_blocks_are_present_and_chained() {
    let started = Instant::now();
    let mut node = Node::start();
    node.wait_rpc();

    let first = node.mine();
    assert!(node.has_block(&first), "mined block {first} absent");
    let random = random_hash();
    assert!(!node.has_block(&random), "random hash {random} present");

    // Three in a row: each template builds on the block mined just before.
    let mut prev = first;
    for i in 0..3 {
        let hash = node.mine();
        assert_ne!(hash, prev);
        assert!(node.has_block(&hash), "block {i} ({hash}) absent");
        let parents = direct_parents(&node.rpc, &hash);
        assert_eq!(
            parents,
            vec![prev.clone()],
            "block {i} ({hash}) does not build on {prev}"
        );
        prev = hash;
    }
    eprintln!("mined and checked 4 blocks in {:?}", started.elapsed());
}

#[test]
fn has_block_exits_2_when_the_rpc_is_unreachable() {
    // Nothing listens on a port that was just free.
    let rpc = format!("127.0.0.1:{}", free_ports()[0]);
    let child = Command::new(bin_path("kaspa-mine"))
        .args(["--rpc", &rpc, "--timeout-secs", "5", "--has-block"])
        .arg(random_hash())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, RUN_WITHIN);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    let child = Command::new(bin_path("kaspa-mine"))
        .args(["--rpc", &rpc, "--timeout-secs", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, RUN_WITHIN);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
}
