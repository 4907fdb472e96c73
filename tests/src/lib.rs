//! Shared helpers for the cross-crate tests: finding and running the real binaries, a raw
//! protocol client, and process measurements.
//!
//! - [`bin_path`]: a workspace binary next to the test executable (`cargo build --workspace
//!   --bins` puts it there; `cargo test` alone does not build other packages' binaries).
//! - [`RendezvousProcess`]: the real `rendezvous` binary on `127.0.0.1:0` with a fresh key in a
//!   temporary directory, its bound address and identity parsed from stdout, its log (stderr)
//!   kept in a file. Killed and cleaned up on drop.
//! - [`TestClient`]: a control-protocol client built straight on `punch_proto`'s channel, with
//!   no client-library logic, so tests see exactly what the server sends.
//! - [`ListenProcess`]: the real `punch listen`, killed on drop, its log kept in a file.
//! - [`restart`]: a crowd of `punch::Client`s in helper processes, for restart measurements.
//! - [`rss_kib`]: a process's resident memory, for "memory stays flat" checks.
//! - [`natlab`]: network-namespace NAT lab for the real-network tests.
//! - [`relay`]: punches with relay tickets and hand-made relay connections.

pub mod natlab;
pub mod relay;
pub mod restart;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use punch_proto::channel::{client_handshake, Channel};
use punch_proto::message::PROTOCOL_VERSION;
use punch_proto::message::{ClientMsg, ErrorReply, Offer, Register, Registered, ServerMsg};
use punch_proto::{Keypair, PeerId};
use tokio::net::TcpStream;

/// How long the rendezvous binary gets to print its address and identity: it only binds a port
/// and maybe writes a key file, so 10 s means it hung or crashed, even on a loaded CI machine.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on one [`TestClient`] receive or handshake: loopback answers take
/// milliseconds, so 5 s only expires when a message will never come.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// The path of workspace binary `name`, next to the running test executable
/// (`target/<profile>/deps/<test>` -> `target/<profile>/<name>`).
///
/// Panics if it does not exist: `cargo test` does not build other packages' binaries.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the running test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps");
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "binary {} not found: run `cargo build --workspace --bins` before `cargo test`",
        path.display()
    );
    path
}

/// A fresh, empty directory under the system temp dir, unique to this process and call.
pub fn unique_temp_dir(prefix: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("creating temp dir {}: {e}", dir.display()));
    dir
}

/// The real `rendezvous` binary, listening on `127.0.0.1:0`. Killed, waited for and its
/// temporary directory removed on drop.
#[derive(Debug)]
pub struct RendezvousProcess {
    child: Child,
    addr: SocketAddr,
    nat_check: Option<SocketAddr>,
    identity: PeerId,
    dir: PathBuf,
    log_path: PathBuf,
    metrics: Option<SocketAddr>,
}

impl RendezvousProcess {
    /// Starts the binary with `extra_args` after `--listen 127.0.0.1:0 --key-file <tmp>`, and
    /// waits (at most [`STARTUP_TIMEOUT`]) for it to print its address and identity.
    pub fn spawn(extra_args: &[&str]) -> Self {
        let dir = unique_temp_dir("punch-rendezvous");
        Self::start(dir, "127.0.0.1:0", "rendezvous.log", extra_args)
    }

    /// Stops the server with SIGTERM (a graceful shutdown: its peers are told `GoingAway`)
    /// and waits at most `timeout` for it to exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "rendezvous did not exit within {timeout:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Starts the server again on the same address with the same key file (after
    /// [`Self::terminate`]), as a restart does; its log goes to `log_name` in the same
    /// directory.
    ///
    /// The NAT check listener moves to a port free now (clients learn it when they register
    /// again): its old port, the main port + 1, was never reserved, and another socket may hold
    /// it by now (seen in CI: the restart failed with "Address already in use").
    pub fn restart(&mut self, log_name: &str, extra_args: &[&str]) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let listen = self.addr.to_string();
        let nat_check = format!("{}:0", self.addr.ip());
        let mut args = extra_args.to_vec();
        if !args.iter().any(|a| a.starts_with("--nat-check-listen")) {
            args.extend(["--nat-check-listen", nat_check.as_str()]);
        }
        let mut old = Self::start(self.dir.clone(), &listen, log_name, &args);
        std::mem::swap(self, &mut old);
        // `old` holds the exited process; the directory belongs to the new one.
        old.dir = PathBuf::new();
    }

    fn start(dir: PathBuf, listen: &str, log_name: &str, extra_args: &[&str]) -> Self {
        let log_path = dir.join(log_name);
        let log = File::create(&log_path).expect("creating the rendezvous log file");
        let mut child = Command::new(bin_path("rendezvous"))
            .arg("--listen")
            .arg(listen)
            .arg("--key-file")
            .arg(dir.join("rendezvous.key"))
            .args(extra_args)
            // Plain text at info level whatever the caller's environment says, so tests can
            // search the log.
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting the rendezvous binary");
        let stdout = child.stdout.take().expect("stdout is piped");

        // A thread reads stdout so the wait below can be bounded; it keeps draining until the
        // child exits, so the child never blocks on a full pipe.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // After startup nobody listens any more; keep draining anyway.
                let _ = tx.send(line);
            }
        });

        // Built before the address is known so that a startup failure (a panic below) still
        // kills the child and removes the directory, in `Drop`.
        let mut proc = Self {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            nat_check: None,
            identity: punch_proto::identity::public_key(&[0; 32]),
            dir,
            log_path,
            metrics: None,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let (mut addr, mut identity) = (None, None);
        while addr.is_none() || identity.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => panic!(
                    "rendezvous did not print its address and identity within {:?} \
                     (exit status: {:?}); log:\n{}",
                    STARTUP_TIMEOUT,
                    proc.exited(),
                    proc.log_text()
                ),
            };
            if let Some(rest) = line.strip_prefix("rendezvous listening on ") {
                addr = Some(
                    rest.trim()
                        .parse()
                        .expect("a socket address after 'listening on'"),
                );
            } else if let Some(rest) = line.strip_prefix("metrics http://") {
                let at = rest.trim().trim_end_matches("/metrics");
                proc.metrics = Some(
                    at.parse()
                        .expect("a socket address after 'metrics http://'"),
                );
            } else if let Some(rest) = line.strip_prefix("NAT check listening on ") {
                // Printed before the identity, so known once the loop ends.
                proc.nat_check = Some(rest.trim().parse().expect("a socket address"));
            } else if let Some(rest) = line.strip_prefix("identity ") {
                identity = Some(rest.trim().parse().expect("a peer id after 'identity'"));
            }
        }
        proc.addr = addr.expect("loop ends once the address is known");
        proc.identity = identity.expect("loop ends once the identity is known");
        proc
    }

    /// The address the server is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where its `--metrics` endpoint listens, when it was started with one.
    pub fn metrics(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// The NAT check listener's address (`None` with `--nat-check-listen off`).
    pub fn nat_check_addr(&self) -> Option<SocketAddr> {
        self.nat_check
    }

    /// The server's identity (its static public key).
    pub fn identity(&self) -> PeerId {
        self.identity
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the server has exited (it never should during a test).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .try_wait()
            .expect("polling the rendezvous process")
    }

    /// Everything the server has logged so far (its stderr).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log_path).expect("reading the rendezvous log")
    }
}

impl Drop for RendezvousProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The server refused the registration with a typed error instead of `Registered`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationRefused(pub ErrorReply);

impl std::fmt::Display for RegistrationRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "registration refused: {:?} ({})",
            self.0.code, self.0.detail
        )
    }
}

impl std::error::Error for RegistrationRefused {}

/// A registration accepting inbound punches, with no local addresses.
pub fn default_register() -> Register {
    Register {
        version: PROTOCOL_VERSION,
        local_addrs: Vec::new(),
        accept_inbound: true,
        allow: vec![],
        network: String::new(),
        probe: false,
    }
}

/// A raw control-protocol client: a registered Noise channel to the rendezvous.
#[derive(Debug)]
pub struct TestClient {
    channel: Channel<TcpStream>,
    keypair: Keypair,
    registered: Registered,
    local_addr: SocketAddr,
}

impl TestClient {
    /// Connects with a fresh identity and [`default_register`].
    pub async fn connect(server: SocketAddr, server_id: &PeerId) -> anyhow::Result<Self> {
        let keypair = Keypair::generate().context("generating a client key")?;
        Self::connect_with(server, server_id, keypair, &default_register()).await
    }

    /// Connects with the given identity and registration.
    pub async fn connect_with(
        server: SocketAddr,
        server_id: &PeerId,
        keypair: Keypair,
        register: &Register,
    ) -> anyhow::Result<Self> {
        let stream = tokio::time::timeout(RECV_TIMEOUT, TcpStream::connect(server))
            .await
            .context("TCP connect timed out")?
            .with_context(|| format!("TCP connect to {server}"))?;
        Self::handshake(stream, server_id, keypair, register).await
    }

    /// Runs the handshake on a connected stream and reads the server's first message, which
    /// must be `Registered` (a typed refusal becomes a [`RegistrationRefused`] error).
    pub async fn handshake(
        stream: TcpStream,
        server_id: &PeerId,
        keypair: Keypair,
        register: &Register,
    ) -> anyhow::Result<Self> {
        let local_addr = stream.local_addr().context("local address of the stream")?;
        let mut channel = tokio::time::timeout(
            RECV_TIMEOUT,
            client_handshake(stream, &keypair, server_id, register),
        )
        .await
        .context("handshake timed out")??;
        let first = tokio::time::timeout(RECV_TIMEOUT, channel.recv())
            .await
            .context("no message after the handshake")??;
        let registered = match ServerMsg::decode(&first).context("decoding the first message")? {
            ServerMsg::Registered(r) => r,
            ServerMsg::Error(e) => return Err(RegistrationRefused(e).into()),
            other => bail!("expected Registered first, got {other:?}"),
        };
        Ok(Self {
            channel,
            keypair,
            registered,
            local_addr,
        })
    }

    /// This client's identity.
    pub fn id(&self) -> PeerId {
        self.keypair.public()
    }

    pub fn keypair(&self) -> &Keypair {
        &self.keypair
    }

    /// What the server said on registration (observed address, ping interval).
    pub fn registered(&self) -> &Registered {
        &self.registered
    }

    /// The local address of the control connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Sends one control message.
    pub async fn send(&mut self, msg: &ClientMsg) -> anyhow::Result<()> {
        self.send_raw(&msg.encode()).await
    }

    /// Sends arbitrary plaintext through the encrypted channel (for protocol violations).
    pub async fn send_raw(&mut self, plaintext: &[u8]) -> anyhow::Result<()> {
        tokio::time::timeout(RECV_TIMEOUT, self.channel.send(plaintext))
            .await
            .context("send timed out")??;
        Ok(())
    }

    /// Receives the next message, Pings included, within [`RECV_TIMEOUT`].
    pub async fn recv(&mut self) -> anyhow::Result<ServerMsg> {
        self.recv_timeout(RECV_TIMEOUT).await
    }

    /// Receives the next message, Pings included, within `timeout`.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> anyhow::Result<ServerMsg> {
        let bytes = tokio::time::timeout(timeout, self.channel.recv())
            .await
            .map_err(|_| anyhow!("no message within {timeout:?}"))??;
        Ok(ServerMsg::decode(&bytes)?)
    }

    /// Receives the next message other than a Ping, answering Pings with Pongs as a live
    /// client does; `None` if nothing else arrives within `timeout` in total.
    pub async fn try_recv_skip_pings(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<Option<ServerMsg>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let Ok(bytes) = tokio::time::timeout_at(deadline, self.channel.recv()).await else {
                return Ok(None);
            };
            match ServerMsg::decode(&bytes?)? {
                ServerMsg::Ping { nonce } => self.send(&ClientMsg::Pong { nonce }).await?,
                other => return Ok(Some(other)),
            }
        }
    }

    /// Asks the server to punch to `peer` (request 1) and returns our offer; anything else
    /// (a refusal, nothing) is an error.
    pub async fn request_offer(&mut self, peer: PeerId) -> anyhow::Result<Offer> {
        self.send(&ClientMsg::Connect {
            request_id: 1,
            peer,
        })
        .await?;
        match self.recv_skip_pings(RECV_TIMEOUT).await? {
            ServerMsg::Offer(offer) => Ok(offer),
            other => Err(anyhow!("expected an offer, got {other:?}")),
        }
    }

    /// Asks the server to punch to `peer` (request 1) and checks that both sides got an offer
    /// for the same session: the server served the pair. Pings meanwhile are answered.
    pub async fn punch_offers_with(&mut self, peer: &mut TestClient) -> anyhow::Result<()> {
        self.send(&ClientMsg::Connect {
            request_id: 1,
            peer: peer.id(),
        })
        .await?;
        let (ra, rb) = tokio::join!(
            self.recv_skip_pings(RECV_TIMEOUT),
            peer.recv_skip_pings(RECV_TIMEOUT)
        );
        match (ra?, rb?) {
            (ServerMsg::Offer(oa), ServerMsg::Offer(ob)) if oa.session_id == ob.session_id => {
                Ok(())
            }
            other => Err(anyhow!(
                "expected two offers for one session, got {other:?}"
            )),
        }
    }

    /// Like [`TestClient::try_recv_skip_pings`], but nothing arriving is an error.
    pub async fn recv_skip_pings(&mut self, timeout: Duration) -> anyhow::Result<ServerMsg> {
        self.try_recv_skip_pings(timeout)
            .await?
            .ok_or_else(|| anyhow!("no message other than Ping within {timeout:?}"))
    }

    /// Answers Pings for `duration`; fails if anything else arrives or the connection ends.
    pub async fn stay_alive(&mut self, duration: Duration) -> anyhow::Result<()> {
        match self.try_recv_skip_pings(duration).await? {
            None => Ok(()),
            Some(msg) => bail!("unexpected message while idling: {msg:?}"),
        }
    }

    /// Sends a Ping and waits for the matching Pong: the server is alive and serving us.
    pub async fn ping(&mut self) -> anyhow::Result<()> {
        let nonce = rand::random();
        self.send(&ClientMsg::Ping { nonce }).await?;
        match self.recv_skip_pings(RECV_TIMEOUT).await? {
            ServerMsg::Pong { nonce: n, .. } if n == nonce => Ok(()),
            other => bail!("expected Pong {nonce}, got {other:?}"),
        }
    }

    /// Waits until the server closes the connection, skipping Pings (not answering them);
    /// fails on any other message or if it stays open for `timeout`.
    pub async fn expect_closed(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let bytes = match tokio::time::timeout_at(deadline, self.channel.recv()).await {
                Err(_) => bail!("connection still open after {timeout:?}"),
                Ok(Err(_closed_or_reset)) => return Ok(()),
                Ok(Ok(bytes)) => bytes,
            };
            match ServerMsg::decode(&bytes)? {
                ServerMsg::Ping { .. } => {}
                other => bail!("expected the connection to close, got {other:?}"),
            }
        }
    }
}

/// The real `punch listen`, killed on drop; its log (stderr) kept in a file.
#[derive(Debug)]
pub struct ListenProcess {
    child: Child,
    /// Its identity.
    pub id: PeerId,
    dir: PathBuf,
    log: PathBuf,
}

impl ListenProcess {
    /// Starts `punch listen --forward FORWARD` registered at `rv`, allowing `allow`, with
    /// `extra` arguments; returns once it printed that it listens.
    pub fn spawn(
        rv: &RendezvousProcess,
        forward: SocketAddr,
        allow: &[PeerId],
        extra: &[&str],
    ) -> Self {
        let dir = unique_temp_dir("punch-listen");
        let key = Keypair::generate().expect("a fresh identity");
        key.save(&dir.join("listen.key"))
            .expect("writing the key file");
        let log = dir.join("listen.log");
        let mut cmd = Command::new(bin_path("punch"));
        cmd.arg("listen")
            .arg("--forward")
            .arg(forward.to_string())
            .arg("--rendezvous")
            .arg(rv.addr().to_string())
            .arg("--rendezvous-key")
            .arg(rv.identity().to_string())
            .arg("--key-file")
            .arg(dir.join("listen.key"))
            .arg("--bind")
            .arg("127.0.0.1:0");
        for id in allow {
            cmd.arg("--allow").arg(id.to_string());
        }
        cmd.args(extra);
        let mut child = cmd
            .env("RUST_LOG", "punch=debug,warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                File::create(&log).expect("creating the log file"),
            ))
            .spawn()
            .expect("starting punch listen");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let listener = Self {
            child,
            id: key.public(),
            dir,
            log,
        };
        let line = rx.recv_timeout(STARTUP_TIMEOUT).unwrap_or_else(|_| {
            panic!("punch listen did not start; log:\n{}", listener.log_text())
        });
        assert!(line.starts_with("listening as "), "{line}");
        listener
    }

    /// Its log (stderr) so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its open file descriptors now.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .expect("reading /proc/PID/fd")
            .count()
    }
}

impl ListenProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its key file (its status socket is beside it).
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("listen.key")
    }
}

/// `GET /metrics` from a `--metrics` endpoint: the body.
pub async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connecting to the metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: punch\r\nConnection: close\r\n\r\n")
        .await
        .expect("sending the request");
    let mut out = String::new();
    s.read_to_string(&mut out)
        .await
        .expect("reading the answer");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// The value of one series (`name{labels}` exactly as exposed, or a bare name) in a scrape;
/// `None` when absent.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

impl Drop for ListenProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How long [`punch_client`] and [`echo_once`] wait for what must come: loopback punches and
/// echoes take milliseconds.
pub const PUNCH_HANG: Duration = Duration::from_secs(20);

/// A registered `punch::Client` on 127.0.0.1 that does not accept punches, as the peer that
/// punches to a [`ListenProcess`]. Its punch window is 3 s, so a refused punch fails quickly.
pub async fn punch_client(rv: &RendezvousProcess, keypair: Keypair) -> punch::Client {
    punch_client_at(rv, "127.0.0.1", keypair, None).await
}

/// A registered `punch::Client` bound to `ip` (each 127.0.0.x is its own source to the
/// rendezvous); it accepts punches when `allow` is given and echoes every stream of them back
/// (in a background task that ends with the client). Its punch window is 3 s, so a punch
/// toward a peer that never dials fails quickly.
pub async fn punch_client_at(
    rv: &RendezvousProcess,
    ip: &str,
    keypair: Keypair,
    allow: Option<punch::Allow>,
) -> punch::Client {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = punch::Config::new(rv.addr(), rv.identity(), keypair);
    config.bind = SocketAddr::new(ip.parse().expect("an IP address"), 0);
    config.accept_inbound = allow.is_some();
    config.allow = allow.unwrap_or(punch::Allow::Any);
    config.punch_window = Duration::from_secs(3);
    let (client, mut incoming) = punch::Client::start(config)
        .await
        .expect("starting the client");
    client
        .wait_registered(PUNCH_HANG)
        .await
        .expect("registered in time");
    tokio::spawn(async move {
        while let Some(mut session) = incoming.next().await {
            tokio::spawn(async move {
                while let Some(mut stream) = session.accept_stream().await {
                    tokio::spawn(async move {
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = stream.read(&mut buf).await {
                            if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            });
        }
    });
    client
}

/// Sends `line` through a fresh stream of `session` and checks that an echo service behind
/// the peer sends it back.
pub async fn echo_once(session: &punch::Session, line: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = session.open_stream().await.expect("opening a stream");
    stream.write_all(line).await.expect("writing the line");
    let mut back = vec![0; line.len()];
    tokio::time::timeout(PUNCH_HANG, stream.read_exact(&mut back))
        .await
        .expect("the echo came back in time")
        .expect("reading the echo");
    assert_eq!(back, line);
}

/// A helper process whose stdout lines go to a channel (each through `wrap`), killed on drop.
/// Its stdin stays open until then: the herds run until their stdin closes.
#[derive(Debug)]
pub struct LineChild {
    child: Child,
    _stdin: ChildStdin,
}

impl LineChild {
    /// Starts `cmd` with stdin and stdout piped; a thread forwards each stdout line.
    pub fn spawn<T: Send + 'static>(
        cmd: &mut Command,
        lines: mpsc::Sender<T>,
        wrap: impl Fn(String) -> T + Send + 'static,
    ) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {:?}: {e}", cmd.get_program()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stdin = child.stdin.take().expect("stdin is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(wrap(line)).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            _stdin: stdin,
        }
    }
}

impl Drop for LineChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of process `pid` in KiB (`VmRSS` in `/proc/PID/status`; Linux only).
pub fn rss_kib(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS line in {path}"))
}

/// Installs a test log subscriber (`RUST_LOG`, default `warn`) once; later calls do nothing.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}
