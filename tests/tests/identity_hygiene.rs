//! Identity hygiene against the real binaries: the `rendezvous` refuses a registration whose
//! Noise static key is of low order or non-canonically encoded, and keeps serving honest
//! clients; `punch` refuses such ids on its command line with a message naming the problem,
//! and warns when it loads a key file that group or others can read.
//!
//! snow derives a static public key from a clamped secret, so an honest snow handshake can
//! never present a bad key. The attacker here plugs a Diffie-Hellman into snow (through its
//! public resolver API) whose *static* public key is forged: either the all-zero point (every
//! DH with it gives zeros, so the attacker needs no secret at all) or an honest key with bit
//! 255 set (X25519 ignores the bit, so the same secret would pose as a second identity). The
//! XK message 3 it sends is therefore exactly what a hand-made attack would send.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use punch_proto::frame::FrameCodec;
use punch_proto::identity::KeyError;
use punch_proto::noise::{Handshake, NoiseError, CONTROL_PARAMS, CONTROL_PROLOGUE};
use punch_proto::{Keypair, PeerId};
use punch_tests::{bin_path, default_register, RendezvousProcess, TestClient, RECV_TIMEOUT};
use snow::params::DHChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// The static key the attacker presents.
#[derive(Debug, Clone, Copy)]
enum Forged {
    /// The all-zero point (order 2): every DH with it is zero.
    Zero,
    /// The honest public key of the secret, with bit 255 set.
    TopBit,
}

/// A DH whose static public key (the one snow `set`s from the local private key) is forged;
/// ephemerals (`generate`d) are honest.
struct ForgedDh {
    inner: Box<dyn Dh>,
    forged: Forged,
    is_static: bool,
    public: [u8; 32],
}

impl Dh for ForgedDh {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn pub_len(&self) -> usize {
        self.inner.pub_len()
    }
    fn priv_len(&self) -> usize {
        self.inner.priv_len()
    }
    fn set(&mut self, privkey: &[u8]) {
        self.inner.set(privkey);
        self.is_static = true;
        self.public.copy_from_slice(self.inner.pubkey());
        match self.forged {
            Forged::Zero => self.public = [0; 32],
            Forged::TopBit => self.public[31] |= 0x80,
        }
    }
    fn generate(&mut self, rng: &mut dyn Random) {
        self.inner.generate(rng);
        self.is_static = false;
    }
    fn pubkey(&self) -> &[u8] {
        if self.is_static {
            &self.public
        } else {
            self.inner.pubkey()
        }
    }
    fn privkey(&self) -> &[u8] {
        self.inner.privkey()
    }
    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        match (self.is_static, self.forged) {
            // What the server computes with the zero point: zeros, known to anybody.
            (true, Forged::Zero) => {
                out[..32].fill(0);
                Ok(())
            }
            _ => self.inner.dh(pubkey, out),
        }
    }
}

struct ForgingResolver(Forged);

impl CryptoResolver for ForgingResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        DefaultResolver.resolve_rng()
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        Some(Box::new(ForgedDh {
            inner: DefaultResolver.resolve_dh(choice)?,
            forged: self.0,
            is_static: false,
            public: [0; 32],
        }))
    }
    fn resolve_hash(&self, choice: &snow::params::HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &snow::params::CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

/// A control-channel initiator presenting a forged static key.
fn forged_initiator(forged: Forged, server: &PeerId) -> snow::HandshakeState {
    let secret = Keypair::generate().unwrap();
    snow::Builder::with_resolver(
        CONTROL_PARAMS.parse().unwrap(),
        Box::new(ForgingResolver(forged)),
    )
    .prologue(CONTROL_PROLOGUE)
    .local_private_key(secret.secret())
    .remote_public_key(server.as_bytes())
    .build_initiator()
    .unwrap()
}

fn write(hs: &mut snow::HandshakeState, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 1024];
    let n = hs.write_message(payload, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

/// The library's responder refuses the forged message 3 with a typed error saying why, and
/// returns no registration payload.
#[test]
fn responder_refuses_forged_static_keys() {
    for (forged, want) in [(Forged::Zero, "LowOrder"), (Forged::TopBit, "NonCanonical")] {
        let server = Keypair::generate().unwrap();
        let mut c = forged_initiator(forged, &server.public());
        let mut s = Handshake::control_server(&server).unwrap();
        s.read(&write(&mut c, &[])).unwrap();
        let mut buf = vec![0u8; 1024];
        c.read_message(&s.write(&[]).unwrap(), &mut buf).unwrap();
        let m3 = write(&mut c, &default_register().encode());
        let err = s.read(&m3).unwrap_err();
        match (&err, want) {
            (NoiseError::BadRemoteKey(KeyError::LowOrder), "LowOrder")
            | (NoiseError::BadRemoteKey(KeyError::NonCanonical), "NonCanonical") => {}
            _ => panic!("{forged:?}: expected {want}, got {err:?}"),
        }
        assert!(s.into_transport().is_err());
    }
}

/// Runs the forged handshake against `server`; returns what follows message 3 (the server
/// must close the connection instead of sending `Registered`).
async fn forged_registration(forged: Forged, addr: SocketAddr, server: &PeerId) -> Option<usize> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut framed = Framed::new(stream, FrameCodec::control());
    let mut hs = forged_initiator(forged, server);
    framed.send(write(&mut hs, &[])).await.unwrap();
    let m2 = tokio::time::timeout(RECV_TIMEOUT, framed.next())
        .await
        .expect("message 2 in time")
        .expect("message 2")
        .unwrap();
    let mut buf = vec![0u8; 1024];
    hs.read_message(&m2, &mut buf).unwrap();
    framed
        .send(write(&mut hs, &default_register().encode()))
        .await
        .unwrap();
    match tokio::time::timeout(RECV_TIMEOUT, framed.next())
        .await
        .expect("the server answers or closes in time")
    {
        Some(Ok(frame)) => Some(frame.len()),
        Some(Err(_)) | None => None,
    }
}

#[tokio::test]
async fn real_rendezvous_refuses_low_order_and_non_canonical_registrations() {
    let server = RendezvousProcess::spawn(&[]);
    let honest = TestClient::connect(server.addr(), &server.identity())
        .await
        .expect("an honest client registers");
    for forged in [Forged::Zero, Forged::TopBit] {
        assert_eq!(
            forged_registration(forged, server.addr(), &server.identity()).await,
            None,
            "{forged:?}: the server must close, not register"
        );
    }
    let mut log = String::new();
    for _ in 0..50 {
        log = server.log_text();
        if log.contains("low-order") && log.contains("not a canonical") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        log.contains("remote static key refused: a low-order X25519 point"),
        "{log}"
    );
    assert!(
        log.contains("remote static key refused: not a canonical X25519 public key"),
        "{log}"
    );
    // Still serving: the honest client is alive, and a new one registers.
    let mut honest = honest;
    honest
        .ping()
        .await
        .expect("the honest client is still served");
    let mut fresh = TestClient::connect(server.addr(), &server.identity())
        .await
        .expect("a new honest client registers");
    fresh.ping().await.unwrap();
}

/// `punch connect` refuses a bad peer id, and a bad rendezvous key, naming the problem.
#[test]
fn punch_cli_refuses_bad_ids() {
    let good = Keypair::generate().unwrap().public().to_string();
    let zero = "a".repeat(52);
    let mut top_bit = *Keypair::generate().unwrap().public().as_bytes();
    top_bit[31] |= 0x80;
    let top_bit_text = base32(&top_bit);
    let dir = punch_tests::unique_temp_dir("punch-bad-id");
    let key_file = dir.join("id.key");
    for (peer, server_key, want) in [
        (zero.as_str(), good.as_str(), "low-order"),
        (top_bit_text.as_str(), good.as_str(), "not a canonical"),
        (good.as_str(), zero.as_str(), "low-order"),
    ] {
        let out = std::process::Command::new(bin_path("punch"))
            .args(["connect", peer, "--rendezvous", "127.0.0.1:9"])
            .args(["--rendezvous-key", server_key, "--key-file"])
            .arg(&key_file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(want), "expected {want:?} in: {stderr}");
    }
    assert!(!key_file.exists(), "refused before touching the key file");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `punch id` on a key file readable by group or others still loads it, but warns once,
/// naming the file and `chmod 600`; an owner-only file loads silently.
#[cfg(unix)]
#[test]
fn world_readable_key_file_warns() {
    use std::os::unix::fs::PermissionsExt;
    let dir = punch_tests::unique_temp_dir("punch-key-mode");
    let key_file = dir.join("id.key");
    let punch = |cmd: &str| {
        let out = std::process::Command::new(bin_path("punch"))
            .args([cmd, "--key-file"])
            .arg(&key_file)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        (
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (id, _) = punch("keygen");
    let (same, stderr) = punch("id");
    assert_eq!(same, id);
    assert!(
        !stderr.contains("chmod"),
        "owner-only: no warning: {stderr}"
    );
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (same, stderr) = punch("id");
    assert_eq!(same, id, "the key still loads");
    assert_eq!(stderr.matches("chmod 600").count(), 1, "{stderr}");
    assert!(stderr.contains(&key_file.display().to_string()), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The textual form of arbitrary bytes (PeerId refuses to hold these, so it cannot print them).
fn base32(bytes: &[u8; 32]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let (mut out, mut acc, mut bits) = (String::new(), 0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    out
}
