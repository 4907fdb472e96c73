//! Helpers for the relay tests: a punch between two [`TestClient`]s whose offers carry relay
//! tickets, relay connections opened by hand (plain TCP, HELLO), and reading what the relay
//! answers (a REFUSAL, spliced bytes, a close).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use punch_proto::message::{Offer, RelayEnd, RelayTicket, ServerMsg};
use punch_proto::relay::{hello, parse_refusal, Refusal, REFUSAL_LEN};
use punch_proto::PeerId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::{RendezvousProcess, TestClient, RECV_TIMEOUT};

/// Two registered clients and the offers of one punch from `a` to `b`.
#[derive(Debug)]
pub struct Punch {
    pub a: TestClient,
    pub b: TestClient,
    pub offer_a: Offer,
    pub offer_b: Offer,
}

impl Punch {
    /// Registers two fresh clients at `rv` and has the first ask for the second.
    pub async fn new(rv: &RendezvousProcess) -> anyhow::Result<Self> {
        Self::new_at(rv.addr(), &rv.identity()).await
    }

    /// Registers two fresh clients at the server `addr` and has the first ask for the second.
    pub async fn new_at(addr: SocketAddr, server_id: &PeerId) -> anyhow::Result<Self> {
        let a = TestClient::connect(addr, server_id).await?;
        let b = TestClient::connect(addr, server_id).await?;
        Self::between(a, b).await
    }

    /// Has `a` ask for `b` (request 1) and reads both offers.
    pub async fn between(mut a: TestClient, mut b: TestClient) -> anyhow::Result<Self> {
        let offer_a = a.request_offer(b.id()).await?;
        let offer_b = match b.recv_skip_pings(RECV_TIMEOUT).await? {
            ServerMsg::Offer(o) => o,
            other => bail!("expected the target's offer, got {other:?}"),
        };
        if offer_a.session_id != offer_b.session_id {
            bail!("offers of two sessions: {offer_a:?} {offer_b:?}");
        }
        Ok(Self {
            a,
            b,
            offer_a,
            offer_b,
        })
    }

    /// Both tickets (the requester's first); an offer without one is an error.
    pub fn tickets(&self) -> anyhow::Result<[RelayTicket; 2]> {
        let t = |o: &Offer| o.relay.clone().ok_or_else(|| anyhow!("no ticket in {o:?}"));
        Ok([t(&self.offer_a)?, t(&self.offer_b)?])
    }

    /// Opens both relay connections from 127.0.0.1 (the requester's first) and returns them
    /// spliced.
    pub async fn relay(&self, rv: &RendezvousProcess) -> anyhow::Result<(TcpStream, TcpStream)> {
        self.relay_at(rv.addr()).await
    }

    /// [`Punch::relay`] to the server at `addr`.
    pub async fn relay_at(&self, addr: SocketAddr) -> anyhow::Result<(TcpStream, TcpStream)> {
        let [ta, tb] = self.tickets()?;
        let a = open_relay(addr, None, &ta.token, b"").await?;
        let b = open_relay(addr, None, &tb.token, b"").await?;
        Ok((a, b))
    }

    /// Waits (answering pings) for `RelayEnded` of this punch's session on both control
    /// connections; returns the two reasons.
    pub async fn relay_ended(&mut self, timeout: Duration) -> anyhow::Result<[RelayEnd; 2]> {
        let session = self.offer_a.session_id;
        let (ra, rb) = tokio::join!(
            self.a.recv_skip_pings(timeout),
            self.b.recv_skip_pings(timeout)
        );
        let reason = |msg: ServerMsg| match msg {
            ServerMsg::RelayEnded { session_id, reason } if session_id == session => Ok(reason),
            other => Err(anyhow!("expected RelayEnded for {session}, got {other:?}")),
        };
        Ok([reason(ra?)?, reason(rb?)?])
    }
}

/// Connects to the relay (from `bind`, a loopback address, when given: each 127.0.0.x is its
/// own source) and writes HELLO with `token`, then `then` in the same write.
pub async fn open_relay(
    server: SocketAddr,
    bind: Option<IpAddr>,
    token: &[u8; 16],
    then: &[u8],
) -> anyhow::Result<TcpStream> {
    let mut stream = connect_from(server, bind).await?;
    let mut first = hello(token).to_vec();
    first.extend_from_slice(then);
    stream
        .write_all(&first)
        .await
        .context("writing the hello")?;
    Ok(stream)
}

/// A plain TCP connection to `server`, from `bind` when given.
pub async fn connect_from(server: SocketAddr, bind: Option<IpAddr>) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = bind {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = tokio::time::timeout(RECV_TIMEOUT, socket.connect(server))
        .await
        .context("connect timed out")??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Reads the relay's refusal (12 bytes) within `timeout`; anything else is an error.
pub async fn read_refusal(stream: &mut TcpStream, timeout: Duration) -> anyhow::Result<Refusal> {
    let mut buf = [0u8; REFUSAL_LEN];
    tokio::time::timeout(timeout, stream.read_exact(&mut buf))
        .await
        .map_err(|_| anyhow!("no refusal within {timeout:?}"))?
        .context("reading the refusal")?;
    parse_refusal(&buf).ok_or_else(|| anyhow!("not a refusal: {buf:?}"))
}

/// Reads exactly `n` bytes within `timeout`.
pub async fn read_n(
    stream: &mut TcpStream,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(timeout, stream.read_exact(&mut buf))
        .await
        .map_err(|_| anyhow!("{n} bytes did not arrive within {timeout:?}"))?
        .context("reading")?;
    Ok(buf)
}

/// Reads until the peer closes (end of stream or reset) within `timeout`, discarding at most
/// `max` bytes; returns how many were read. Staying open, or more bytes, is an error.
pub async fn expect_closed(
    stream: &mut TcpStream,
    timeout: Duration,
    max: usize,
) -> anyhow::Result<usize> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => bail!("still open after {timeout:?} ({got} bytes read)"),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(got),
            Ok(Ok(n)) => {
                got += n;
                if got > max {
                    bail!("more than {max} bytes before the close");
                }
            }
        }
    }
}

/// Writes as fast as the relay takes for `duration`, then stops (without closing); returns the
/// bytes written.
pub async fn flood(stream: &mut tokio::net::tcp::OwnedWriteHalf, duration: Duration) -> u64 {
    let chunk = vec![0x5au8; 16 * 1024];
    let mut sent = 0u64;
    let deadline = tokio::time::Instant::now() + duration;
    while let Ok(Ok(())) = tokio::time::timeout_at(deadline, stream.write_all(&chunk)).await {
        sent += chunk.len() as u64;
    }
    sent
}

/// Reads and counts bytes until `duration` has passed since the first byte (or the stream
/// ends); returns (bytes, seconds from the first byte to the last read).
pub async fn count_for(
    stream: &mut tokio::net::tcp::OwnedReadHalf,
    duration: Duration,
) -> anyhow::Result<(u64, f64)> {
    let mut buf = vec![0u8; 64 * 1024];
    let n = tokio::time::timeout(RECV_TIMEOUT, stream.read(&mut buf))
        .await
        .context("no first byte")??;
    let start = tokio::time::Instant::now();
    let deadline = start + duration;
    let mut total = n as u64;
    while let Ok(res) = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
        match res? {
            0 => break,
            n => total += n as u64,
        }
    }
    Ok((total, start.elapsed().as_secs_f64()))
}
