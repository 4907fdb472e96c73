//! kaspa-peers: asks a running kaspad (or kaspad-punch) over its gRPC RPC who it is and which
//! peers it is connected to. For operators checking that punched peers are connected, and for
//! the NAT-lab test of kaspad-punch.
//!
//! ```text
//! $ kaspa-peers --rpc 127.0.0.1:16610
//! self 3a6bde9d-70c0-45cb-af02-0fed6bf83571 server 2.1.0 synced false
//! peer 3636f7dd-cf79-4db0-9240-83b63a9601ee 127.7.144.11:34267 outbound ua=/kaspad:2.1.0/kaspad:2.1.0/ connected=56s
//! ```
//!
//! Peers choose their user agents: every string a peer (or the node) supplies is printed
//! through [`sanitize`], so a user agent carrying terminal escapes cannot rewrite the
//! operator's screen (see the function for what is escaped).
//!
//! `--ban IP` / `--unban IP` first ban or unban an address (kaspad's own Ban and Unban RPCs),
//! `--add-peer ADDR` asks it to connect (AddPeer); all three need the node's unsafe RPC mode.
//! Exits 0 after printing, 1 when the RPC cannot be reached or answers with an error.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kaspa_grpc_client::GrpcClient;
use kaspa_rpc_core::api::rpc::RpcApi;

#[derive(Debug, Parser)]
#[command(version, about = "Lists a kaspad's connected peers over its gRPC RPC")]
struct Args {
    /// The node's gRPC RPC address (kaspad's --rpclisten).
    #[arg(long, default_value = "127.0.0.1:16110")]
    rpc: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,
    /// First ban this IP (kaspad's Ban RPC; needs the node's unsafe RPC mode, --unsaferpc):
    /// kaspad disconnects it and refuses it until unbanned.
    #[arg(long, value_name = "IP")]
    ban: Option<IpAddr>,
    /// First unban this IP.
    #[arg(long, value_name = "IP")]
    unban: Option<IpAddr>,
    /// First ask the node to connect to this peer (kaspad's AddPeer; refused unless the node
    /// runs in unsafe RPC mode, which kaspad-punch leaves to the operator).
    #[arg(long, value_name = "HOST:PORT")]
    add_peer: Option<std::net::SocketAddr>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let limit = Duration::from_secs(args.timeout_secs);
    tokio::time::timeout(limit, run(&args))
        .await
        .with_context(|| format!("no answer from {} within {limit:?}", args.rpc))?
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let rpc = &args.rpc;
    let client = GrpcClient::connect(format!("grpc://{rpc}"))
        .await
        .with_context(|| format!("connecting to the RPC at {rpc}"))?;
    if let Some(ip) = args.ban {
        client.ban(ip.into()).await.context("Ban")?;
        println!("banned {ip}");
    }
    if let Some(ip) = args.unban {
        client.unban(ip.into()).await.context("Unban")?;
        println!("unbanned {ip}");
    }
    if let Some(addr) = args.add_peer {
        let peer = kaspa_utils::networking::ContextualNetAddress::from(
            kaspa_utils::networking::NetAddress::from(addr),
        );
        client.add_peer(peer, false).await.context("AddPeer")?;
        println!("add-peer {addr} requested");
    }
    let info = client.get_info().await.context("GetInfo")?;
    println!(
        "self {} server {} synced {}",
        info.p2p_id,
        sanitize(&info.server_version),
        info.is_synced
    );
    let peers = client
        .get_connected_peer_info()
        .await
        .context("GetConnectedPeerInfo")?;
    for p in peers.peer_info {
        println!(
            "peer {} {} {} ua={} connected={}s",
            p.id,
            p.address,
            if p.is_outbound { "outbound" } else { "inbound" },
            sanitize(&p.user_agent),
            p.time_connected / 1000
        );
    }
    let _ = client.disconnect().await;
    Ok(())
}

/// Longest peer-supplied string printed, in characters of output: kaspad's user agents are
/// a few dozen characters; a peer sending kilobytes gets its first 256 shown and a count of
/// the rest, so one line stays one screen line's worth.
const MAX_PRINTED: usize = 256;

/// A peer-supplied string made safe to print on a terminal: control characters (C0, DEL,
/// C1, so ESC and every ANSI/OSC sequence), bidirectional overrides, isolates and marks, line
/// and paragraph separators and the byte-order mark are written as `\u{..}` escapes (and `\`
/// as `\\`, so an escape in the output always means one in the input); at most
/// [`MAX_PRINTED`] characters are kept, then `...(N more chars)`.
fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_PRINTED));
    let mut shown = 0;
    for (i, c) in s.chars().enumerate() {
        let piece: String = if c == '\\' {
            "\\\\".into()
        } else if is_unsafe(c) {
            format!("\\u{{{:x}}}", c as u32)
        } else {
            c.into()
        };
        let width = piece.chars().count();
        if shown + width > MAX_PRINTED {
            let rest = s.chars().count() - i;
            out.push_str(&format!("...({rest} more chars)"));
            break;
        }
        shown += width;
        out.push_str(&piece);
    }
    out
}

/// Characters a terminal acts on or that reorder or hide what follows.
fn is_unsafe(c: char) -> bool {
    c.is_control() // C0, DEL and C1 (U+0080..U+009F, which includes the 8-bit CSI U+009B)
        || matches!(c,
            '\u{061C}' // Arabic letter mark
            | '\u{200B}'..='\u{200F}' // zero-width space/joiners, LRM, RLM
            | '\u{2028}' | '\u{2029}' // line and paragraph separators
            | '\u{202A}'..='\u{202E}' // embeddings and overrides (LRE RLE PDF LRO RLO)
            | '\u{2060}'..='\u{2069}' // word joiner, invisible operators, isolates (LRI RLI FSI PDI)
            | '\u{FEFF}' // byte-order mark
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_user_agents_are_unchanged() {
        assert_eq!(
            sanitize("/kaspad:2.1.0/kaspad:2.1.0/"),
            "/kaspad:2.1.0/kaspad:2.1.0/"
        );
        assert_eq!(sanitize("nœud-ü/1.0 ✓"), "nœud-ü/1.0 ✓");
    }

    #[test]
    fn ansi_escape_sequences_are_neutralised() {
        // Clear screen, home, red text, then an OSC 8 hyperlink ended by BEL.
        let ua = "/kaspad:2.1.0/\x1b[2J\x1b[H\x1b[31mok\x1b]8;;http://x\x07link";
        let out = sanitize(ua);
        assert_eq!(
            out,
            "/kaspad:2.1.0/\\u{1b}[2J\\u{1b}[H\\u{1b}[31mok\\u{1b}]8;;http://x\\u{7}link"
        );
        assert!(!out.chars().any(is_unsafe), "{out:?}");
    }

    #[test]
    fn c1_controls_newlines_and_bidi_overrides_are_escaped() {
        assert_eq!(sanitize("a\u{9b}31mb"), "a\\u{9b}31mb");
        assert_eq!(sanitize("x\r\npeer fake"), "x\\u{d}\\u{a}peer fake");
        assert_eq!(sanitize("abc\u{202E}fed"), "abc\\u{202e}fed");
        assert_eq!(sanitize("\u{2066}i\u{2069}"), "\\u{2066}i\\u{2069}");
        assert_eq!(sanitize("back\\slash"), "back\\\\slash");
        assert_eq!(sanitize("\u{7f}\u{0}"), "\\u{7f}\\u{0}");
    }

    #[test]
    fn long_strings_are_cut_and_counted() {
        let out = sanitize(&"a".repeat(10_000));
        assert!(out.starts_with(&"a".repeat(MAX_PRINTED)));
        assert!(out.ends_with(&format!("...({} more chars)", 10_000 - MAX_PRINTED)));
        // Escapes count toward the bound: a flood of ESC stays bounded too.
        let out = sanitize(&"\x1b".repeat(10_000));
        assert!(out.len() < MAX_PRINTED + 32, "{}", out.len());
        assert!(!out.chars().any(is_unsafe));
        // A cut never splits an escape.
        let cut = out.split("...(").next().unwrap_or_default();
        assert_eq!(cut.len() % "\\u{1b}".len(), 0);
    }
}
