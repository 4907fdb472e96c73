//! The iptables rulesets of the lab's routers, as `iptables-restore` text (pure functions, so
//! the exact rules are unit-tested and quoted in `natlab/README.md`).
//!
//! Every router has an interface `wan` (towards the internet or the carrier NAT) and `lan`
//! (towards its peer, or the LAN bridge). NAT is done with `MASQUERADE` on `wan`; filtering is
//! conntrack state: replies and packets of connections opened from the LAN pass, everything
//! else from `wan` is dropped (or, for SYNs, answered with a RST). Link impairments live in
//! the internet namespace, on the bridge ports, outside every router: a router's conntrack
//! sees a packet when it really crosses the router, and the wire delays it afterwards.

/// Address translation on `wan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nat {
    /// Routing only.
    None,
    /// `MASQUERADE`: keeps the source port when free, same mapping for every destination.
    Eim,
    /// `MASQUERADE --random-fully`: a random external port for every new connection.
    RandomPort,
}

/// Filtering of what arrives on `wan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filter {
    /// Everything passes.
    Open,
    /// Only established/related traffic passes; unsolicited packets are dropped silently.
    Stateful,
    /// Like `Stateful`, but an unsolicited TCP SYN to the router is answered with a RST.
    StatefulRst,
}

/// The `filter` and `nat` tables of one router.
pub(crate) fn router_rules(nat: Nat, filter: Filter) -> String {
    let mut s = String::new();
    s.push_str("*filter\n");
    match filter {
        Filter::Open => {
            s.push_str(":INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
        }
        Filter::Stateful | Filter::StatefulRst => {
            s.push_str(":INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n");
            s.push_str("-A INPUT -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n");
            if filter == Filter::StatefulRst {
                s.push_str("-A INPUT -i wan -p tcp --syn -j REJECT --reject-with tcp-reset\n");
            }
            s.push_str("-A INPUT -i wan -j DROP\n");
            s.push_str("-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n");
            s.push_str("-A FORWARD -i lan -o wan -j ACCEPT\n");
        }
    }
    s.push_str("COMMIT\n");
    match nat {
        Nat::None => {}
        Nat::Eim => s.push_str("*nat\n-A POSTROUTING -o wan -j MASQUERADE\nCOMMIT\n"),
        Nat::RandomPort => {
            s.push_str("*nat\n-A POSTROUTING -o wan -j MASQUERADE --random-fully\nCOMMIT\n");
        }
    }
    s
}

/// One router's link to the internet bridge, as seen from the bridge's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WanLink {
    /// The bridge port (veth end in the internet namespace) of the router's `wan`.
    pub port: String,
    /// NFQUEUE number of this link's delay helper, if delayed.
    pub queue: Option<u16>,
}

/// The internet namespace's rules impairing the given links, in both directions: loss
/// (`statistic`) then delay (`NFQUEUE`), or `None` when nothing is impaired.
///
/// Bridged IPv4 traffic goes through iptables there (`bridge-nf-call-iptables=1`), untracked
/// (the bridge is a wire, not a middlebox). A packet leaving a router is matched in `mangle
/// FORWARD` by its input port, a packet going to a router in `filter FORWARD` by its output
/// port: a queue's ACCEPT verdict resumes at the next table, so a packet from A to B is delayed
/// once on A's link, then once on B's. The rendezvous port is never impaired.
pub(crate) fn wire_rules(links: &[WanLink], loss_percent: f32) -> Option<String> {
    let loss = loss_percent.clamp(0.0, 100.0) / 100.0;
    if links.iter().all(|l| l.queue.is_none()) && loss <= 0.0 {
        return None;
    }
    let mut s = String::from("*raw\n-A PREROUTING -j CT --notrack\nCOMMIT\n");
    for (table, dir) in [("mangle", "--physdev-in"), ("filter", "--physdev-out")] {
        s.push_str(&format!("*{table}\n"));
        for link in links {
            let m = format!("-A FORWARD -m physdev {dir} {}", link.port);
            if loss > 0.0 {
                s.push_str(&format!(
                    "{m} -m statistic --mode random --probability {loss:.4} -j DROP\n"
                ));
            }
            if let Some(q) = link.queue {
                s.push_str(&format!("{m} -j NFQUEUE --queue-num {q}\n"));
            }
        }
        s.push_str("COMMIT\n");
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_router_masquerades_and_drops_unsolicited() {
        let r = router_rules(Nat::Eim, Filter::Stateful);
        assert!(r.contains(":FORWARD DROP"));
        assert!(r.contains("-A INPUT -i wan -j DROP"));
        assert!(r.contains("-A POSTROUTING -o wan -j MASQUERADE\n"));
        assert!(!r.contains("REJECT"));
        assert!(!r.contains("random"));
    }

    #[test]
    fn rst_router_rejects_syn_before_dropping() {
        let r = router_rules(Nat::Eim, Filter::StatefulRst);
        let reject = r.find("REJECT --reject-with tcp-reset").unwrap();
        let drop = r.find("-A INPUT -i wan -j DROP").unwrap();
        assert!(reject < drop);
    }

    #[test]
    fn symmetric_and_public() {
        assert!(router_rules(Nat::RandomPort, Filter::Stateful).contains("--random-fully"));
        let public = router_rules(Nat::None, Filter::Open);
        assert!(!public.contains("*nat"));
        assert!(!public.contains("DROP"));
    }

    #[test]
    fn impairments() {
        let link = |port: &str, queue| WanLink {
            port: port.into(),
            queue,
        };
        assert_eq!(wire_rules(&[link("ea", None), link("eb", None)], 0.0), None);
        let both = wire_rules(&[link("ea", Some(1)), link("eb", Some(2))], 2.5).unwrap();
        assert!(both.starts_with("*raw\n-A PREROUTING -j CT --notrack\nCOMMIT\n*mangle\n"));
        assert!(both.contains(
            "-A FORWARD -m physdev --physdev-in ea -m statistic --mode random --probability 0.0250 -j DROP\n\
             -A FORWARD -m physdev --physdev-in ea -j NFQUEUE --queue-num 1\n"
        ));
        assert!(both.contains("*filter\n"));
        assert!(both.contains("-A FORWARD -m physdev --physdev-out eb -j NFQUEUE --queue-num 2\n"));
        let loss_only = wire_rules(&[link("ea", None)], 100.0).unwrap();
        assert!(loss_only.contains("--probability 1.0000"));
        assert!(!loss_only.contains("NFQUEUE"));
    }
}
