//! What kaspad-punch's tests share: reading `kaspa-peers` output.

use std::net::SocketAddr;

/// One connected peer as `kaspa-peers` prints it.
#[derive(Debug)]
#[allow(dead_code)] // each test binary reads the fields it needs
pub struct PeerLine {
    /// kaspad's node id of the peer.
    pub id: String,
    /// Where the node sees it: a slot (127.0.200.x) or an alias (127.a.b.c) for punched peers.
    pub addr: SocketAddr,
    /// How long it has been connected.
    pub secs: u64,
}

/// `kaspa-peers` stdout: the node's own id (the `self` line) and its connected peers.
pub fn parse_peers(out: &str) -> Result<(String, Vec<PeerLine>), String> {
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
            let mut words = l.split_whitespace();
            let id = words.next()?.to_string();
            let addr: SocketAddr = words.next()?.parse().ok()?;
            let secs = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("connected="))?
                .trim_end_matches('s')
                .parse()
                .ok()?;
            Some(PeerLine { id, addr, secs })
        })
        .collect();
    Ok((own, peers))
}
