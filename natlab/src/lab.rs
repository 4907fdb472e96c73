//! [`Lab`]: builds one case's namespaces, links, addresses, routes and router rules, starts
//! the delay helpers, runs processes inside, and tears everything down on drop.
//!
//! Namespaces (`<p>` = `nlab-<pid>-<case>-`): `<p>inet` holds the internet bridge `br0`;
//! `<p>rv` the rendezvous host; `<p>ea`/`<p>eb` the routers on the internet (the "edge":
//! home router, firewall, or carrier NAT); `<p>ha`/`<p>hb` the home router behind a carrier
//! NAT (DoubleNat only); `<p>pa`/`<p>pb` the peers. Peers 2.. of a `Many` lab follow with
//! the next letters (`ec`, `hc`, `pc`, ... up to `h`). Interface names are fixed per namespace
//! (`wan`, `lan`, `eth0`), so nothing clashes between parallel cases.

use super::procs::{ProcId, Procs};
use super::rules::{self, Filter, Nat, WanLink};
use super::sys::{self, PREFIX};
use super::{LinkParams, Peer, RouterKind, Side, Topology};
use crate::error::{Error, Result};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The rendezvous host's address on the internet bridge.
pub const RENDEZVOUS_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// How long the delay helper may take to bind its queue: it is a local process start.
const HELPER_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on a delay helper's life, so one orphaned by a crash still ends by itself.
const HELPER_MAX_SECS: u32 = 3600;

static NEXT_CASE: AtomicU32 = AtomicU32::new(0);

/// Addresses of one peer's site, fixed by the address plan in `natlab/README.md`.
#[derive(Debug, Clone, Copy)]
struct SitePlan {
    /// The edge router's WAN address on the internet bridge.
    wan: Ipv4Addr,
    /// The peer's own address.
    peer: Ipv4Addr,
    /// The peer's gateway.
    gateway: Ipv4Addr,
    /// Prefix length of the peer's LAN.
    lan_prefix: u8,
    /// The carrier-NAT link (CGN address, home-router WAN address), DoubleNat only.
    cgn: Option<(Ipv4Addr, Ipv4Addr)>,
}

/// The plan of peer `peer` (index below `topology.peer_count()`, at most
/// [`crate::MAX_PEERS`]): peer `i` has `n = i + 1`, WAN 203.0.113.`10n`, LAN 192.168.`n`.0/24
/// or public 198.51.100.`16i`/28, carrier link 100.64.`n`.0/24.
fn site_plan(topology: Topology, peer: Peer) -> SitePlan {
    let n = peer.index() as u8 + 1; // 1 for A, 2 for B, ...
    let kind = topology.router(peer);
    if topology == Topology::SameRouter {
        return SitePlan {
            wan: Ipv4Addr::new(203, 0, 113, 10),
            peer: Ipv4Addr::new(192, 168, 1, 1 + n),
            gateway: Ipv4Addr::new(192, 168, 1, 1),
            lan_prefix: 24,
            cgn: None,
        };
    }
    let wan = Ipv4Addr::new(203, 0, 113, 10 * n);
    if kind.peer_is_public() {
        // 198.51.100.0/28 for A, 198.51.100.16/28 for B, ...
        let base = 16 * (n - 1);
        SitePlan {
            wan,
            peer: Ipv4Addr::new(198, 51, 100, base + 2),
            gateway: Ipv4Addr::new(198, 51, 100, base + 1),
            lan_prefix: 28,
            cgn: None,
        }
    } else {
        SitePlan {
            wan,
            peer: Ipv4Addr::new(192, 168, n, 2),
            gateway: Ipv4Addr::new(192, 168, n, 1),
            lan_prefix: 24,
            cgn: (kind == RouterKind::DoubleNat)
                .then(|| (Ipv4Addr::new(100, 64, n, 1), Ipv4Addr::new(100, 64, n, 2))),
        }
    }
}

/// One test case's simulated internet. See the module docs of `natlab`.
#[derive(Debug)]
pub struct Lab {
    name: String,
    prefix: String,
    topology: Topology,
    link: LinkParams,
    dir: PathBuf,
    namespaces: Vec<String>,
    procs: Procs,
    torn_down: bool,
}

impl Lab {
    /// Builds the case `name` (used in the log directory name) with the given topology and
    /// WAN link impairments (on every peer's link). Sweeps leftovers of dead runs first (once
    /// per process). On error everything created so far is removed.
    pub fn build(name: &str, topology: Topology, link: LinkParams) -> Result<Lab> {
        if let Some(reason) = sys::skip_reason() {
            return Err(Error::Unavailable { reason });
        }
        sys::sweep_once();
        let pid = std::process::id();
        let case = NEXT_CASE.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{PREFIX}{pid}-{case}-");
        let safe: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(48)
            .collect();
        let dir = std::env::temp_dir().join(format!("natlab-{pid}-{case}-{safe}"));
        std::fs::create_dir_all(&dir).map_err(|error| Error::Io {
            path: dir.clone(),
            error,
        })?;
        let mut lab = Lab {
            name: name.to_string(),
            prefix,
            topology,
            link,
            dir,
            namespaces: Vec::new(),
            procs: Procs::default(),
            torn_down: false,
        };
        // On error `lab` is dropped here, which tears down what exists.
        lab.construct().map_err(|cause| Error::Build {
            name: name.to_string(),
            topology,
            cause: Box::new(cause),
        })?;
        Ok(lab)
    }

    /// Builds a [`Topology::Many`] case: peer `i` behind its own router of kind `kinds[i]`,
    /// 2 to [`crate::MAX_PEERS`] peers (else [`Error::PeerCount`]). Otherwise as [`Lab::build`].
    pub fn build_peers(name: &str, kinds: &[RouterKind], link: LinkParams) -> Result<Lab> {
        Lab::build(name, Topology::many(kinds)?, link)
    }

    fn ns(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }

    fn add_ns(&mut self, role: &str) -> Result<String> {
        let ns = self.ns(role);
        // Recorded before creation so a half-made namespace is still deleted.
        self.namespaces.push(ns.clone());
        sys::add_netns(&ns)?;
        sys::sysctls(
            &ns,
            &[],
            &[
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        )?;
        Ok(ns)
    }

    fn add_router_ns(&mut self, role: &str) -> Result<String> {
        let ns = self.add_ns(role)?;
        sys::sysctls(
            &ns,
            &["net.ipv4.ip_forward=1"],
            &["net.bridge.bridge-nf-call-iptables=0"],
        )?;
        Ok(ns)
    }

    fn construct(&mut self) -> Result<()> {
        let inet = self.add_ns("inet")?;
        sys::sysctls(&inet, &[], &["net.bridge.bridge-nf-call-iptables=0"])?;
        sys::ip(&inet, &["link", "add", "br0", "type", "bridge"])?;
        sys::ip(&inet, &["link", "set", "br0", "up"])?;

        let rv = self.add_ns("rv")?;
        attach(&inet, "br0", "rv", &rv, "eth0", RENDEZVOUS_IP, 24)?;
        sys::ip(&rv, &["route", "add", "blackhole", "default"])?;

        // The peers with a router of their own on the bridge (SameRouter: one for both).
        let sites: Vec<Peer> = match self.topology {
            Topology::SameRouter => vec![Peer::from(0)],
            t => (0..t.peer_count()).map(Peer::from).collect(),
        };
        let mut public_nets = Vec::new(); // (lan network, via wan, owning router)
        for &peer in &sites {
            let plan = site_plan(self.topology, peer);
            let l = peer.letter();
            let edge = self.add_router_ns(&format!("e{l}"))?;
            attach(&inet, "br0", &format!("e{l}"), &edge, "wan", plan.wan, 24)?;
            sys::ip(&edge, &["route", "add", "blackhole", "default"])?;
            match self.topology {
                Topology::SameRouter => self.build_same_router(&edge)?,
                Topology::Pair(..) | Topology::Many(_) => {
                    let kind = self.topology.router(peer);
                    self.build_site(peer, kind, &edge, plan)?;
                    if kind.peer_is_public() {
                        let net = network(plan.peer, plan.lan_prefix);
                        public_nets.push((
                            format!("{net}/{}", plan.lan_prefix),
                            plan.wan,
                            edge.clone(),
                        ));
                    }
                }
            }
        }
        self.start_impairments(&inet, &sites)?;
        // Internet routing to the public LANs behind FirewallOnly/Public routers: every host
        // on the bridge but the owning router gets a route via that router's WAN address.
        let mut hosts = vec![rv];
        hosts.extend(sites.iter().map(|p| self.ns(&format!("e{}", p.letter()))));
        for (net, via, owner) in &public_nets {
            for host in hosts.iter().filter(|h| *h != owner) {
                sys::ip(host, &["route", "add", net, "via", &via.to_string()])?;
            }
        }
        Ok(())
    }

    /// A peer behind its own router of `kind` whose internet side is `edge`.
    fn build_site(
        &mut self,
        peer: Peer,
        kind: RouterKind,
        edge: &str,
        plan: SitePlan,
    ) -> Result<()> {
        let l = peer.letter();
        let peer = self.add_ns(&format!("p{l}"))?;
        let (nat, filter) = match kind {
            RouterKind::HomeEim | RouterKind::DoubleNat => (Nat::Eim, Filter::Stateful),
            RouterKind::HomeEimRst => (Nat::Eim, Filter::StatefulRst),
            RouterKind::Symmetric => (Nat::RandomPort, Filter::Stateful),
            RouterKind::FirewallOnly => (Nat::None, Filter::Stateful),
            RouterKind::Public => (Nat::None, Filter::Open),
        };
        sys::iptables_restore(edge, &rules::router_rules(nat, filter))?;
        let lan_router = if let Some((cgn_ip, home_wan)) = plan.cgn {
            // Carrier NAT (edge) -> home router -> peer.
            let home = self.add_router_ns(&format!("h{l}"))?;
            link(edge, "lan", cgn_ip, &home, "wan", home_wan, 24)?;
            sys::ip(
                &home,
                &["route", "add", "default", "via", &cgn_ip.to_string()],
            )?;
            sys::iptables_restore(&home, &rules::router_rules(Nat::Eim, Filter::Stateful))?;
            home
        } else {
            edge.to_string()
        };
        link(
            &lan_router,
            "lan",
            plan.gateway,
            &peer,
            "eth0",
            plan.peer,
            plan.lan_prefix,
        )?;
        sys::ip(
            &peer,
            &["route", "add", "default", "via", &plan.gateway.to_string()],
        )?;
        Ok(())
    }

    /// Both peers on bridge `lan` of one home router.
    fn build_same_router(&mut self, edge: &str) -> Result<()> {
        sys::iptables_restore(edge, &rules::router_rules(Nat::Eim, Filter::Stateful))?;
        sys::ip(edge, &["link", "add", "lan", "type", "bridge"])?;
        let gw = site_plan(Topology::SameRouter, Peer::from(0)).gateway;
        sys::ip(edge, &["addr", "add", &format!("{gw}/24"), "dev", "lan"])?;
        sys::ip(edge, &["link", "set", "lan", "up"])?;
        for side in Side::BOTH {
            let l = Peer::from(side).letter();
            let peer = self.add_ns(&format!("p{l}"))?;
            let plan = site_plan(Topology::SameRouter, side.into());
            attach(edge, "lan", &format!("lp{l}"), &peer, "eth0", plan.peer, 24)?;
            sys::ip(&peer, &["route", "add", "default", "via", &gw.to_string()])?;
        }
        Ok(())
    }

    /// Starts one delay helper per router link (if any delay) in the internet namespace and
    /// loads the loss/delay rules on the bridge ports there (see `rules::wire_rules`).
    fn start_impairments(&mut self, inet: &str, sites: &[Peer]) -> Result<()> {
        let links: Vec<WanLink> = sites
            .iter()
            .map(|p| WanLink {
                port: format!("e{}", p.letter()),
                queue: (self.link.delay_of(p.index()) > 0).then_some(p.index() as u16 + 1),
            })
            .collect();
        let Some(rules) = rules::wire_rules(&links, self.link.loss_percent) else {
            return Ok(());
        };
        for (link, site) in links.iter().zip(sites) {
            let Some(q) = link.queue else { continue };
            let mut cmd = Command::new(helper_bin("natlab_delay")?);
            cmd.args([
                "--queue",
                &q.to_string(),
                "--delay-ms",
                &self.link.delay_of(site.index()).to_string(),
                "--max-secs",
                &HELPER_MAX_SECS.to_string(),
            ]);
            let id = self.spawn(&format!("delay-{}", link.port), inet, &cmd)?;
            self.procs
                .wait_line(id, HELPER_READY_TIMEOUT, |l| l.starts_with("ready"))?;
        }
        // Bridged IPv4 through iptables, for these rules only.
        sys::sysctls(inet, &["net.bridge.bridge-nf-call-iptables=1"], &[])?;
        sys::iptables_restore(inet, &rules)
    }

    /// Tears the lab down now: kills spawned processes, deletes the namespaces (and with them
    /// every veth and bridge) and, unless the thread is panicking or `NATLAB_KEEP` is set,
    /// the log directory. Idempotent; also run by `Drop`.
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        self.procs.kill_all();
        for ns in self.namespaces.iter().rev() {
            sys::del_netns(ns);
        }
        if std::thread::panicking() || std::env::var_os("NATLAB_KEEP").is_some() {
            eprintln!("natlab: logs of case {} kept in {:?}", self.name, self.dir);
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// The case name given to [`Lab::build`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topology of this case.
    pub fn topology(&self) -> Topology {
        self.topology
    }

    /// The link impairments of this case.
    pub fn link(&self) -> LinkParams {
        self.link
    }

    /// The namespace-name prefix of this case (`nlab-<pid>-<case>-`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespaces this case created.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// Directory holding the captured output of spawned processes.
    pub fn case_dir(&self) -> &Path {
        &self.dir
    }

    /// Namespace of the rendezvous host.
    pub fn rendezvous_ns(&self) -> String {
        self.ns("rv")
    }

    /// Address of the rendezvous host on the internet.
    pub fn rendezvous_ip(&self) -> IpAddr {
        IpAddr::V4(RENDEZVOUS_IP)
    }

    /// How many peers this case has (2 unless [`Topology::Many`]).
    pub fn peer_count(&self) -> usize {
        self.topology.peer_count()
    }

    /// Every peer of this case, peer 0 first.
    pub fn peers(&self) -> impl Iterator<Item = Peer> {
        (0..self.peer_count()).map(Peer::from)
    }

    /// `peer` checked against this case: panics (a bug of the test) if it has no such peer.
    fn peer(&self, peer: impl Into<Peer>) -> Peer {
        let peer = peer.into();
        assert!(
            peer.index() < self.peer_count(),
            "lab {} ({}) has no {peer}",
            self.name,
            self.topology
        );
        peer
    }

    /// Namespace of a peer (a [`Side`], or an index for [`Topology::Many`]).
    pub fn peer_ns(&self, peer: impl Into<Peer>) -> String {
        self.ns(&format!("p{}", self.peer(peer).letter()))
    }

    /// The peer's own address (private behind a NAT, public for FirewallOnly/Public).
    pub fn peer_lan_ip(&self, peer: impl Into<Peer>) -> IpAddr {
        IpAddr::V4(site_plan(self.topology, self.peer(peer)).peer)
    }

    /// The address the internet sees the peer's traffic come from: its router's WAN address
    /// behind a NAT (the carrier NAT's for DoubleNat), its own address otherwise.
    pub fn peer_public_ip(&self, peer: impl Into<Peer>) -> IpAddr {
        let peer = self.peer(peer);
        let plan = site_plan(self.topology, peer);
        match self.topology {
            Topology::SameRouter => IpAddr::V4(plan.wan),
            t if t.router(peer).peer_is_public() => IpAddr::V4(plan.peer),
            _ => IpAddr::V4(plan.wan),
        }
    }

    /// Namespace of the router on the internet bridge on the peer's side (the carrier NAT for
    /// DoubleNat; the shared router for SameRouter).
    pub fn edge_ns(&self, peer: impl Into<Peer>) -> String {
        let peer = self.peer(peer);
        match self.topology {
            Topology::SameRouter => self.ns("ea"),
            Topology::Pair(..) | Topology::Many(_) => self.ns(&format!("e{}", peer.letter())),
        }
    }

    /// Spawns `cmd` (its program, args, env and current dir; the environment of this process
    /// is inherited) inside namespace `ns`, stdin null, stdout/stderr captured to
    /// `case_dir()/<label>.stdout|stderr`. The process is SIGKILLed when the lab is dropped.
    pub fn spawn(&self, label: &str, ns: &str, cmd: &Command) -> Result<ProcId> {
        self.procs.spawn(&self.dir, label, ns, cmd)
    }

    /// The exit status if the process has ended.
    pub fn try_wait(&self, id: ProcId) -> Result<Option<ExitStatus>> {
        self.procs.try_wait(id)
    }

    /// Waits up to `timeout` for the process to end; `None` if it still runs.
    pub fn wait_timeout(&self, id: ProcId, timeout: Duration) -> Result<Option<ExitStatus>> {
        self.procs.wait_timeout(id, timeout)
    }

    /// SIGKILLs the process if it still runs.
    pub fn kill(&self, id: ProcId) -> Result<()> {
        self.procs.kill(id)
    }

    /// Captured stdout so far.
    pub fn stdout(&self, id: ProcId) -> Result<String> {
        self.procs.stdout(id)
    }

    /// Captured stderr so far.
    pub fn stderr(&self, id: ProcId) -> Result<String> {
        self.procs.stderr(id)
    }

    /// The label a process was spawned with (made unique within the lab).
    pub(crate) fn label(&self, id: ProcId) -> Result<String> {
        self.procs.label(id)
    }

    /// Paths of the captured stdout and stderr files.
    pub fn log_paths(&self, id: ProcId) -> Result<(PathBuf, PathBuf)> {
        self.procs.log_paths(id)
    }

    /// Waits up to `timeout` for a complete stdout line satisfying `pred` (e.g. a server
    /// printing its bound address). Fails with the process's output if it exits first.
    pub fn wait_stdout_line(
        &self,
        id: ProcId,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        self.procs.wait_line(id, timeout, pred)
    }

    /// Every spawned process's captured output, labelled: print it when a case fails.
    pub fn dump_logs(&self) -> String {
        self.procs.dump()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Creates veth `outer` in `hub` (enslaved to bridge `bridge` there) paired with `inner` in
/// `ns`, addressed `ip/prefix`, both ends up.
fn attach(
    hub: &str,
    bridge: &str,
    outer: &str,
    ns: &str,
    inner: &str,
    ip: Ipv4Addr,
    prefix: u8,
) -> Result<()> {
    sys::ip(
        hub,
        &[
            "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns,
        ],
    )?;
    sys::ip(hub, &["link", "set", outer, "master", bridge])?;
    sys::ip(hub, &["link", "set", outer, "up"])?;
    sys::ip(
        ns,
        &["addr", "add", &format!("{ip}/{prefix}"), "dev", inner],
    )?;
    sys::ip(ns, &["link", "set", inner, "up"])?;
    Ok(())
}

/// A point-to-point veth between two namespaces, both ends addressed in one subnet.
fn link(
    ns1: &str,
    if1: &str,
    ip1: Ipv4Addr,
    ns2: &str,
    if2: &str,
    ip2: Ipv4Addr,
    prefix: u8,
) -> Result<()> {
    sys::ip(
        ns1,
        &[
            "link", "add", if1, "type", "veth", "peer", "name", if2, "netns", ns2,
        ],
    )?;
    sys::ip(
        ns1,
        &["addr", "add", &format!("{ip1}/{prefix}"), "dev", if1],
    )?;
    sys::ip(
        ns2,
        &["addr", "add", &format!("{ip2}/{prefix}"), "dev", if2],
    )?;
    sys::ip(ns1, &["link", "set", if1, "up"])?;
    sys::ip(ns2, &["link", "set", if2, "up"])?;
    Ok(())
}

fn network(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    Ipv4Addr::from(u32::from(ip) & mask)
}

/// Path of a helper binary of this crate (`natlab_delay`, `natlab_tcp`): `$NATLAB_BIN_DIR`
/// if set, else next to the running executable or one level up (cargo puts integration tests
/// in `target/<profile>/deps/` and the workspace's binaries one level up).
pub fn helper_bin(name: &str) -> Result<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("NATLAB_BIN_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(d) = exe.parent() {
            dirs.push(d.to_path_buf());
            if let Some(up) = d.parent() {
                dirs.push(up.to_path_buf());
            }
        }
    }
    let found = dirs.iter().map(|d| d.join(name)).find(|p| p.is_file());
    found.ok_or_else(|| Error::HelperNotFound {
        name: name.to_string(),
        searched: dirs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_plan() {
        let t = Topology::Pair(RouterKind::Public, RouterKind::DoubleNat);
        let a = site_plan(t, Side::A.into());
        assert_eq!(a.peer, Ipv4Addr::new(198, 51, 100, 2));
        assert_eq!(
            network(a.peer, a.lan_prefix),
            Ipv4Addr::new(198, 51, 100, 0)
        );
        let b = site_plan(t, Side::B.into());
        assert_eq!(b.wan, Ipv4Addr::new(203, 0, 113, 20));
        assert_eq!(b.cgn.map(|c| c.1), Some(Ipv4Addr::new(100, 64, 2, 2)));
        let s = site_plan(Topology::SameRouter, Side::B.into());
        assert_eq!(
            (s.wan, s.peer),
            (
                Ipv4Addr::new(203, 0, 113, 10),
                Ipv4Addr::new(192, 168, 1, 3)
            )
        );
    }

    #[test]
    fn address_plan_of_many_peers() {
        use RouterKind::*;
        let kinds = [
            HomeEim, Public, DoubleNat, HomeEimRst, Symmetric, HomeEim, HomeEim,
        ];
        let t = Topology::many(&[kinds.as_slice(), &[FirewallOnly]].concat()).unwrap();
        assert_eq!(t.peer_count(), 8);
        assert_eq!(t.to_string().matches('/').count(), 7);
        // Peers 0 and 1 as A and B of the same pair.
        let pair = Topology::Pair(HomeEim, Public);
        for side in Side::BOTH {
            let (m, p) = (site_plan(t, side.into()), site_plan(pair, side.into()));
            assert_eq!((m.wan, m.peer, m.gateway), (p.wan, p.peer, p.gateway));
        }
        let c = site_plan(t, 2.into());
        assert_eq!(c.peer, Ipv4Addr::new(192, 168, 3, 2));
        assert_eq!(
            c.cgn,
            Some((Ipv4Addr::new(100, 64, 3, 1), Ipv4Addr::new(100, 64, 3, 2)))
        );
        let h = site_plan(t, 7.into());
        assert_eq!(h.wan, Ipv4Addr::new(203, 0, 113, 80));
        assert_eq!(
            (h.peer, h.gateway, h.lan_prefix),
            (
                Ipv4Addr::new(198, 51, 100, 114),
                Ipv4Addr::new(198, 51, 100, 113),
                28
            )
        );
        assert_eq!(Peer::from(7).letter(), 'h');
        assert!(matches!(
            Topology::many(&[HomeEim]),
            Err(Error::PeerCount { count: 1 })
        ));
        assert!(Topology::many(&[HomeEim; 9]).is_err());
    }
}
