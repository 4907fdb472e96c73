//! Automatic peering: a private node finds other private nodes of its own Kaspa network on
//! the rendezvous, keeps a target of punched outbound peers, accepts a capped number of
//! inbound ones, and mirrors the node's bans at the punch layer. What kaspad-punch runs.
//!
//! ```text
//! outbound (one manager task): every tick, for each pinned peer and, while fewer than
//!     `target` discovered peers are kept, for peers from Discover (same network, accepting):
//!     skip live / cooling-down / denied / not ours to dial -> Client::connect -> bridge as
//!     slot dialer -> offer to the SlotPool -> the node dials a slot -> spliced
//!     -> when the Kaspa connection ends: cool down, pick again
//! inbound: link::accept_loop with caps in total and per observed IP, the deny list, and
//!     the idle timeout
//! bans (one task): the node's banned IPs, polled; a banned alias's identity and observed
//!     IP are denied at the punch layer (no dial to or from them) while the node bans it
//! ```
//!
//! Which side dials: both ends of a pair may discover each other; if both dialed, kaspad's
//! duplicate check would refuse one connection and the loser would retry forever. The pair's
//! dialer is fixed by a hash of both identities ([`dials`]), so each node dials about half of
//! its pairs; a node that does not accept punches dials every pair it picks.
//!
//! The decisions (who to punch next, when to discover) are in [`Planner`], a pure machine fed
//! `now`; the tasks around it only do I/O.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use punch::throttle::LogThrottle;
use punch::{Client, Denylist, Incoming};
use punch_proto::PeerId;
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;
use tracing::{info, info_span, warn, Instrument};

use crate::bridge::Bridge;
use crate::link::{
    self, InboundLimits, InboundState, LinkError, LinkEvent, NodeView, Seen, EVENT_BUFFER,
};
use crate::slots::SlotPool;

/// Discovered outbound punched peers kept by default, on top of the node's own `--outpeers`.
pub const DEFAULT_TARGET: usize = 4;
/// Peers asked of the rendezvous per Discover (it answers with a random sample of at most
/// this many, fewer if its own cap is lower).
pub const DISCOVER_SAMPLE: usize = 16;
/// First pause between discoveries while short of the target; doubled after each that
/// brought nothing new, up to [`DISCOVER_MAX_PAUSE`]. Discoveries and punches share the
/// rendezvous's request budget (20 a minute per identity by default): quick at first, then
/// slow; a rate-limited answer's `retry_after` is respected.
pub const DISCOVER_MIN_PAUSE: Duration = Duration::from_secs(2);
/// When kaspad dials an empty slot and no candidate is known, a discovery is sent at once,
/// but not sooner than this after the previous one.
pub const DISCOVER_ASKED_PAUSE: Duration = Duration::from_secs(3);
/// Longest pause between discoveries.
pub const DISCOVER_MAX_PAUSE: Duration = Duration::from_secs(60);
/// A discovered peer whose punch failed is not tried again for this long, doubled for each
/// failure in a row up to [`FAILED_COOLDOWN_MAX`] (a peer that is restarting is back in
/// seconds; one that is gone costs a request every two minutes at most).
pub const FAILED_COOLDOWN: Duration = Duration::from_secs(5);
/// See [`FAILED_COOLDOWN`].
pub const FAILED_COOLDOWN_MAX: Duration = Duration::from_secs(120);
/// A punched session no node connection used ([`Outcome::NoSlot`]): not the peer's fault;
/// tried again after this.
pub const NO_SLOT_COOLDOWN: Duration = Duration::from_secs(2);
/// A discovered peer whose Kaspa connection lasted less than [`SHORT_LIVED`] (kaspad refused
/// it: another network, a duplicate, a misbehaving peer) is not tried again for this long.
pub const REFUSED_COOLDOWN: Duration = Duration::from_secs(300);
/// kaspad refuses a peer during its handshake (Version, Verack, Ready: a few round trips), so a
/// connection that ends this soon was refused, not dropped; a peer that restarts after a few
/// seconds must not be taken for one (measured in the lab: a refusal ends in milliseconds).
pub const SHORT_LIVED: Duration = Duration::from_secs(2);
/// A discovered peer whose Kaspa connection ended normally may be tried again after this.
pub const ENDED_COOLDOWN: Duration = Duration::from_secs(5);
/// A punched outbound session that no node connection used within this is closed (the peer
/// would close it after its own 30 s idle timeout anyway).
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(25);
/// How often the node's bans are read.
pub const BAN_POLL: Duration = Duration::from_secs(5);
/// A mirrored ban lasts this long unless the next polls see it again (so an unban in the
/// node is followed within a few polls).
pub const BAN_HOLD: Duration = Duration::from_secs(8);
/// After a Kaspa connection ended, how long to wait for the session's own end before
/// deciding the node (not the path) closed it.
const SESSION_END_GRACE: Duration = Duration::from_millis(500);
/// The one clock: tokio's (paused in tests that pause time), as the punch client's.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The manager's pace.
const TICK: Duration = Duration::from_millis(250);

/// Whether `me` dials the pair {me, peer}: the identity whose hash with the pair is lower.
/// Both ends compute the same answer; it splits a node's pairs about evenly.
pub fn dials(me: &PeerId, peer: &PeerId) -> bool {
    let (lo, hi) = if me.as_bytes() <= peer.as_bytes() {
        (me, peer)
    } else {
        (peer, me)
    };
    let digest = Sha256::new()
        .chain_update(b"punch-kaspa-dialer")
        .chain_update(lo.as_bytes())
        .chain_update(hi.as_bytes())
        .finalize();
    let lo_dials = digest[0] & 1 == 0;
    (me == lo) == lo_dials
}

/// Configuration of [`Peering`].
#[derive(Debug, Clone)]
pub struct PeeringConfig {
    /// Peers always kept connected (`--punch-peer`), on top of `target`.
    pub pinned: Vec<PeerId>,
    /// Discovered peers to keep (`--punch-outpeers`); 0 turns discovery off.
    pub target: usize,
    /// Whether this node accepts punches (then it dials only the pairs [`dials`] gives it).
    pub accept: bool,
    pub inbound: InboundLimits,
    /// See [`DEFAULT_READY_TIMEOUT`].
    pub ready_timeout: Duration,
    /// Pinned peers: first and longest pause before re-punching (see [`crate::link`]).
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl PeeringConfig {
    pub fn new(pinned: Vec<PeerId>, target: usize) -> Self {
        Self {
            pinned,
            target,
            accept: true,
            inbound: InboundLimits {
                max_inbound: link::DEFAULT_MAX_INBOUND,
                max_per_ip: link::DEFAULT_MAX_INBOUND_PER_IP,
                idle_timeout: link::DEFAULT_INBOUND_IDLE_TIMEOUT,
            },
            ready_timeout: DEFAULT_READY_TIMEOUT,
            retry_min: link::DEFAULT_RETRY_MIN,
            retry_max: link::DEFAULT_RETRY_MAX,
        }
    }
}

/// How an outbound round with a peer ended, as the planner needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The punch (or the bridge) failed.
    Failed,
    /// The session was up but the node dialed no slot for it in time.
    NoSlot,
    /// A Kaspa connection was made and the node closed it after this long, the punched
    /// session still up: the node dropped the peer (if soon: refused it in its handshake).
    Connected(Duration),
    /// A Kaspa connection was made, then the punched session ended under it: the peer or
    /// the path went away (a restart, a NAT mapping lost), whatever the node thought.
    Gone,
}

/// Why a peer waits before its next punch: how its last round ended (see [`Planner::ended`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cooling {
    /// [`Outcome::Failed`].
    Failed,
    /// [`Outcome::NoSlot`].
    NoSlot,
    /// The node closed the Kaspa connection within [`SHORT_LIVED`]: it refused the peer.
    Refused,
    /// The Kaspa connection lasted, then ended (either side).
    Ended,
}

impl Cooling {
    pub const ALL: [Cooling; 4] = [
        Cooling::Failed,
        Cooling::NoSlot,
        Cooling::Refused,
        Cooling::Ended,
    ];

    fn of(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Failed => Cooling::Failed,
            Outcome::NoSlot => Cooling::NoSlot,
            Outcome::Connected(lasted) if lasted < SHORT_LIVED => Cooling::Refused,
            Outcome::Connected(_) | Outcome::Gone => Cooling::Ended,
        }
    }

    /// The label in status and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Cooling::Failed => "failed",
            Cooling::NoSlot => "no_slot",
            Cooling::Refused => "refused",
            Cooling::Ended => "ended",
        }
    }
}

/// What the planner is doing and has done, for status and metrics ([`Peering::watch`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanState {
    /// Discovered peers to keep, and pinned peers.
    pub target: usize,
    pub pinned: usize,
    /// Rounds running now, with pinned and with discovered peers.
    pub running_pinned: usize,
    pub running_discovered: usize,
    /// Discovered peers waiting to be tried.
    pub candidates: usize,
    /// Peers waiting out a cooldown now, by [`Cooling`] (in [`Cooling::ALL`]'s order).
    pub cooling: [usize; 4],
    /// A discovery is in flight.
    pub discovering: bool,
    /// Until the next discovery, when one will run (`None`: discovery is off, in flight, or
    /// the target is reached).
    pub next_discover_in: Option<Duration>,
    /// Discoveries answered and failed, and the peers their answers listed, since start.
    pub discoveries: u64,
    pub discoveries_failed: u64,
    pub discovered_peers: u64,
    /// Rounds ended since start, by [`Cooling`] (in [`Cooling::ALL`]'s order).
    pub rounds_ended: [u64; 4],
}

/// The pure outbound decisions: which peers to punch now, and when to ask for more.
#[derive(Debug)]
pub struct Planner {
    me: PeerId,
    pinned: Vec<PeerId>,
    target: usize,
    accept: bool,
    retry_min: Duration,
    retry_max: Duration,
    /// Peers with a round running, and whether pinned.
    running: HashMap<PeerId, bool>,
    /// Peers not to try before the instant, and why.
    cooldown: HashMap<PeerId, (Instant, Cooling)>,
    /// Pinned peers' current backoff.
    backoff: HashMap<PeerId, Duration>,
    /// Discovered peers' failed punches in a row.
    fails: HashMap<PeerId, u32>,
    /// When each peer was last in a discovery answer: an answer counts as bringing something
    /// new (so discoveries stay quick) only with peers not seen for [`DISCOVER_MAX_PAUSE`].
    seen: HashMap<PeerId, Instant>,
    last_discover: Option<Instant>,
    /// Discovered candidates not yet tried, newest answer last.
    candidates: Vec<PeerId>,
    next_discover: Instant,
    discover_pause: Duration,
    discovering: bool,
    /// Counts since start, for [`PlanState`].
    discoveries: u64,
    discoveries_failed: u64,
    discovered_peers: u64,
    rounds_ended: [u64; 4],
}

impl Planner {
    pub fn new(me: PeerId, config: &PeeringConfig, now: Instant) -> Self {
        Self {
            me,
            pinned: config.pinned.clone(),
            target: config.target,
            accept: config.accept,
            retry_min: config.retry_min,
            retry_max: config.retry_max,
            running: HashMap::new(),
            cooldown: HashMap::new(),
            backoff: HashMap::new(),
            fails: HashMap::new(),
            seen: HashMap::new(),
            last_discover: None,
            candidates: Vec::new(),
            next_discover: now,
            discover_pause: DISCOVER_MIN_PAUSE,
            discovering: false,
            discoveries: 0,
            discoveries_failed: 0,
            discovered_peers: 0,
            rounds_ended: [0; 4],
        }
    }

    /// What the planner is doing now, and its counts since start.
    pub fn state(&self, now: Instant) -> PlanState {
        let mut cooling = [0; 4];
        for (until, why) in self.cooldown.values() {
            if *until > now {
                cooling[*why as usize] += 1;
            }
        }
        let discovered = self.discovered_running();
        let wants = self.target > 0 && !self.discovering && discovered < self.target;
        PlanState {
            target: self.target,
            pinned: self.pinned.len(),
            running_pinned: self.running.len() - discovered,
            running_discovered: discovered,
            candidates: self.candidates.len(),
            cooling,
            discovering: self.discovering,
            next_discover_in: wants.then(|| self.next_discover.saturating_duration_since(now)),
            discoveries: self.discoveries,
            discoveries_failed: self.discoveries_failed,
            discovered_peers: self.discovered_peers,
            rounds_ended: self.rounds_ended,
        }
    }

    fn discovered_running(&self) -> usize {
        self.running.values().filter(|pinned| !**pinned).count()
    }

    /// Whether to send a Discover now.
    pub fn discover_due(&self, now: Instant) -> bool {
        self.target > 0
            && !self.discovering
            && self.discovered_running() < self.target
            && now >= self.next_discover
    }

    pub fn discover_started(&mut self, now: Instant) {
        self.discovering = true;
        self.last_discover = Some(now);
    }

    /// The node dialed an empty slot with nothing in flight: a pinned peer waiting out its
    /// backoff is punched now (kaspad's own pace for a slot, at most one dial per 30 s round,
    /// bounds this; a slot failed now would wait 30 s x 2^n in kaspad, a far longer delay than
    /// the backoff saves), and discovery runs now if there is no candidate left (not sooner
    /// than [`DISCOVER_ASKED_PAUSE`] after the last discovery).
    pub fn slot_wanted(&mut self, now: Instant) {
        for p in &self.pinned {
            if !self.running.contains_key(p) {
                self.cooldown.remove(p);
            }
        }
        if self.candidates.is_empty() {
            let soonest = self
                .last_discover
                .map_or(now, |t| (t + DISCOVER_ASKED_PAUSE).max(now));
            self.next_discover = self.next_discover.min(soonest);
        }
    }

    /// A Discover answered with `peers` (`None`: it failed; `retry_after` if rate limited).
    pub fn discovered(
        &mut self,
        now: Instant,
        peers: Option<Vec<PeerId>>,
        retry_after: Option<Duration>,
    ) {
        self.discovering = false;
        match &peers {
            Some(p) => {
                self.discoveries += 1;
                self.discovered_peers += p.len() as u64;
            }
            None => self.discoveries_failed += 1,
        }
        let mut new = 0;
        if self.seen.len() > 16 * DISCOVER_SAMPLE {
            self.seen
                .retain(|_, at| now.duration_since(*at) < DISCOVER_MAX_PAUSE);
            if self.seen.len() > 16 * DISCOVER_SAMPLE {
                self.seen.clear(); // bounded; forgetting only makes the next answers "new"
            }
        }
        for p in peers.into_iter().flatten() {
            let fresh = match self.seen.insert(p, now) {
                None => true,
                Some(at) => now.duration_since(at) >= DISCOVER_MAX_PAUSE,
            };
            if p != self.me && !self.candidates.contains(&p) && !self.running.contains_key(&p) {
                self.candidates.push(p);
                new += usize::from(fresh);
            }
        }
        // Bounded: the rendezvous answers at most a sample; keep the newest few samples.
        let cap = 4 * DISCOVER_SAMPLE;
        if self.candidates.len() > cap {
            let excess = self.candidates.len() - cap;
            self.candidates.drain(..excess);
        }
        self.discover_pause = if new > 0 {
            DISCOVER_MIN_PAUSE
        } else {
            (self.discover_pause * 2).min(DISCOVER_MAX_PAUSE)
        };
        self.next_discover = now + retry_after.unwrap_or(self.discover_pause);
    }

    /// Peers to punch now. `busy(peer)`: a session with it exists already (either way);
    /// `denied(peer)`: refused at the punch layer.
    pub fn pick(
        &mut self,
        now: Instant,
        busy: impl Fn(&PeerId) -> bool,
        denied: impl Fn(&PeerId) -> bool,
    ) -> Vec<(PeerId, bool)> {
        self.cooldown.retain(|_, (until, _)| *until > now);
        let mut out = Vec::new();
        for p in self.pinned.clone() {
            if !self.running.contains_key(&p)
                && !self.cooldown.contains_key(&p)
                && !busy(&p)
                && !denied(&p)
            {
                self.running.insert(p, true);
                out.push((p, true));
            }
        }
        let mut room = self.target.saturating_sub(self.discovered_running());
        let mut keep = Vec::new();
        for p in std::mem::take(&mut self.candidates) {
            if room == 0 {
                keep.push(p);
                continue;
            }
            let skip = self.running.contains_key(&p)
                || self.pinned.contains(&p)
                || self.cooldown.contains_key(&p)
                || busy(&p)
                || denied(&p)
                || (self.accept && !dials(&self.me, &p));
            if skip {
                continue; // dropped: a later discovery brings it back if it still applies
            }
            self.running.insert(p, false);
            out.push((p, false));
            room -= 1;
        }
        self.candidates = keep;
        out
    }

    /// A round with `peer` ended.
    pub fn ended(&mut self, now: Instant, peer: PeerId, outcome: Outcome) -> Duration {
        let pinned = self.running.remove(&peer).unwrap_or(false);
        let pause = if pinned {
            let backoff = self.backoff.entry(peer).or_insert(self.retry_min);
            let pause = match outcome {
                Outcome::Gone => {
                    *backoff = self.retry_min;
                    self.retry_min
                }
                Outcome::Connected(lasted) if lasted >= SHORT_LIVED => {
                    *backoff = self.retry_min;
                    self.retry_min
                }
                _ => {
                    let pause = *backoff;
                    *backoff = (*backoff * 2).min(self.retry_max);
                    pause
                }
            };
            link::jitter(pause)
        } else {
            // A discovered peer gone: look for others soon.
            self.next_discover = self.next_discover.min(now + DISCOVER_MIN_PAUSE);
            self.discover_pause = DISCOVER_MIN_PAUSE;
            if self.fails.len() > 4 * DISCOVER_SAMPLE {
                self.fails.clear(); // bounded; forgetting only shortens a cooldown
            }
            match outcome {
                Outcome::Failed => {
                    let n = self.fails.entry(peer).or_insert(0);
                    let pause = FAILED_COOLDOWN
                        .saturating_mul(1 << (*n).min(8))
                        .min(FAILED_COOLDOWN_MAX);
                    *n += 1;
                    pause
                }
                Outcome::NoSlot => NO_SLOT_COOLDOWN,
                Outcome::Connected(lasted) if lasted < SHORT_LIVED => REFUSED_COOLDOWN,
                Outcome::Connected(_) | Outcome::Gone => {
                    self.fails.remove(&peer);
                    ENDED_COOLDOWN
                }
            }
        };
        let why = Cooling::of(outcome);
        self.rounds_ended[why as usize] += 1;
        self.cooldown.insert(peer, (now + pause, why));
        pause
    }
}

/// Running peering tasks. Dropping it stops them and closes every bridged session.
#[derive(Debug)]
pub struct Peering {
    events: broadcast::Sender<LinkEvent>,
    client: Client,
    state: PeeringWatch,
    _tasks: JoinSet<()>,
}

/// Reads what a [`Peering`] publishes of itself; cheap to clone, valid after the peering stops
/// (it then shows the last state).
#[derive(Debug, Clone)]
pub struct PeeringWatch {
    plan: watch::Receiver<PlanState>,
    inbound: watch::Receiver<InboundState>,
    outbound: watch::Receiver<usize>,
}

impl PeeringWatch {
    /// The outbound planner's state and the inbound side's, now.
    pub fn get(&self) -> (PlanState, InboundState) {
        (self.plan.borrow().clone(), self.inbound.borrow().clone())
    }

    /// Outbound punched sessions bridged now (a round holds each from its bridging to its
    /// end): what `target` and the pinned peers cap, as [`InboundState::held`] is inbound.
    pub fn outbound_held(&self) -> usize {
        *self.outbound.borrow()
    }
}

/// Counts one bridged outbound session in [`PeeringWatch::outbound_held`] while it lives.
struct Held(Arc<watch::Sender<usize>>);

impl Held {
    fn new(count: &Arc<watch::Sender<usize>>) -> Self {
        count.send_modify(|n| *n += 1);
        Held(count.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Peering {
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        client: Client,
        incoming: Incoming,
        bridge: Bridge,
        slots: SlotPool,
        node: Arc<dyn NodeView>,
        deny: Denylist,
        config: PeeringConfig,
    ) -> Peering {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let seen = Arc::new(Seen::default());
        let (inbound_state, inbound) = watch::channel(InboundState::default());
        let (plan_state, plan) = watch::channel(PlanState::default());
        let (outbound_held, outbound) = watch::channel(0);
        let mut tasks = JoinSet::new();
        tasks.spawn(link::accept_loop(
            incoming,
            bridge.clone(),
            config.inbound.clone(),
            node.clone(),
            deny.clone(),
            seen.clone(),
            events.clone(),
            inbound_state,
        ));
        tasks.spawn(
            mirror_bans(node, bridge.clone(), deny.clone(), seen.clone())
                .instrument(info_span!("bans")),
        );
        let manager = Manager {
            client: client.clone(),
            bridge,
            slots,
            deny,
            seen,
            events: events.clone(),
            config,
            state: plan_state,
            held: Arc::new(outbound_held),
        };
        tasks.spawn(manager.run().instrument(info_span!("peering")));
        Peering {
            events,
            client,
            state: PeeringWatch {
                plan,
                inbound,
                outbound,
            },
            _tasks: tasks,
        }
    }

    /// What the peering is doing, for status and metrics.
    pub fn watch(&self) -> PeeringWatch {
        self.state.clone()
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn subscribe(&self) -> broadcast::Receiver<LinkEvent> {
        self.events.subscribe()
    }
}

struct Manager {
    client: Client,
    bridge: Bridge,
    slots: SlotPool,
    deny: Denylist,
    seen: Arc<Seen>,
    events: broadcast::Sender<LinkEvent>,
    config: PeeringConfig,
    state: watch::Sender<PlanState>,
    /// Outbound sessions bridged now (see [`Held`]).
    held: Arc<watch::Sender<usize>>,
}

impl Manager {
    async fn run(self) {
        let mut planner = Planner::new(self.client.id(), &self.config, now());
        let mut rounds: JoinSet<(PeerId, Outcome)> = JoinSet::new();
        let mut discovery: JoinSet<Result<Vec<PeerId>, punch::Error>> = JoinSet::new();
        let mut fail_log = LogThrottle::default();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some(done) = rounds.join_next(), if !rounds.is_empty() => {
                    if let Ok((peer, outcome)) = done {
                        let pause = planner.ended(now(), peer, outcome);
                        if outcome == Outcome::Failed {
                            if let Some(held_back) = fail_log.hit(now()) {
                                warn!(peer = %peer.short(), retry_in_s = pause.as_secs_f32(), held_back, "punched peer not connected");
                            }
                        }
                    }
                }
                _ = self.slots.wanted() => planner.slot_wanted(now()),
                Some(done) = discovery.join_next(), if !discovery.is_empty() => {
                    let now = now();
                    match done {
                        Ok(Ok(peers)) => {
                            info!(found = peers.len(), "discovered peers of this network");
                            planner.discovered(now, Some(peers), None);
                        }
                        Ok(Err(error)) => {
                            let retry_after = match &error {
                                punch::Error::RateLimited { retry_after } => *retry_after,
                                _ => None,
                            };
                            warn!(%error, "discovery failed");
                            planner.discovered(now, None, retry_after);
                        }
                        Err(_) => planner.discovered(now, None, None),
                    }
                }
            }
            let now = now();
            if planner.discover_due(now) {
                planner.discover_started(now);
                let client = self.client.clone();
                let pending = self.slots.pending();
                discovery.spawn(async move {
                    let found = client.discover(DISCOVER_SAMPLE).await;
                    drop(pending);
                    found
                });
            }
            let bridge = &self.bridge;
            let deny = &self.deny;
            let seen = &self.seen;
            let picked = planner.pick(
                now,
                |p| bridge.is_live(p),
                |p| match seen.ip_of(p) {
                    Some(ip) => deny.is_denied(p, ip, now),
                    None => deny.is_peer_denied(p, now),
                },
            );
            self.state.send_replace(planner.state(now));
            for (peer, pinned) in picked {
                let round = Round {
                    peer,
                    client: self.client.clone(),
                    bridge: self.bridge.clone(),
                    slots: self.slots.clone(),
                    seen: self.seen.clone(),
                    events: self.events.clone(),
                    ready_timeout: self.config.ready_timeout,
                    held: self.held.clone(),
                };
                let span = info_span!("keep", peer = %peer.short(), pinned);
                rounds.spawn(
                    async move {
                        let started = tokio::time::Instant::now();
                        let result = round.run().await;
                        let outcome = match result {
                            Ok(outcome) => outcome,
                            Err(LinkError::NoSlot { .. }) => Outcome::NoSlot,
                            Err(error) => {
                                let _ = round.events.send(LinkEvent::PunchFailed {
                                    peer,
                                    error,
                                    retry_in: Duration::ZERO,
                                });
                                Outcome::Failed
                            }
                        };
                        tracing::debug!(
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            ?outcome,
                            "outbound round ended"
                        );
                        (peer, outcome)
                    }
                    .instrument(span),
                );
            }
        }
    }
}

/// One outbound punch, bridged through a slot, held while the node uses it.
struct Round {
    peer: PeerId,
    client: Client,
    bridge: Bridge,
    slots: SlotPool,
    seen: Arc<Seen>,
    events: broadcast::Sender<LinkEvent>,
    ready_timeout: Duration,
    held: Arc<watch::Sender<usize>>,
}

impl Round {
    /// Once the Kaspa connection ended, how ([`Outcome::Connected`] or [`Outcome::Gone`]);
    /// Err if none was made.
    async fn run(&self) -> Result<Outcome, LinkError> {
        let pending = self.slots.pending();
        let session = self
            .client
            .connect(self.peer)
            .await
            .map_err(|e| LinkError::Punch(Arc::new(e)))?;
        self.seen
            .record(self.peer, session.info().observed.ip().to_canonical());
        let (bridged, handoff) = self
            .bridge
            .attach_for_slot(session)
            .await
            .map_err(|e| LinkError::Bridge(Arc::new(e)))?;
        let held = Held::new(&self.held);
        let _ = self.events.send(link::punched(&bridged, true));
        let handoff = handoff.ok_or(LinkError::NotDialer)?;
        self.slots.offer(self.peer, handoff);
        drop(pending);
        let waited = self.ready_timeout;
        if tokio::time::timeout(waited, bridged.used()).await.is_err()
            || bridged.counts().total == 0
        {
            return Err(LinkError::NoSlot { waited });
        }
        let connected = now();
        bridged.idle().await;
        drop(held);
        let _ = self.events.send(LinkEvent::Ended {
            peer: self.peer,
            outbound: true,
        });
        // A session that dies closes its Kaspa connections too, maybe a moment before the
        // bridge notices the session's end: look again shortly before calling it the node's.
        let lasted = connected.elapsed();
        let ended = tokio::time::timeout(SESSION_END_GRACE, bridged.closed())
            .await
            .is_ok();
        Ok(if ended {
            Outcome::Gone
        } else {
            Outcome::Connected(lasted)
        })
    }
}

/// Mirrors the node's bans of aliases at the punch layer: the alias's identity and the IP
/// the rendezvous observed for it are denied while the node bans the alias.
async fn mirror_bans(node: Arc<dyn NodeView>, bridge: Bridge, deny: Denylist, seen: Arc<Seen>) {
    let mut log = LogThrottle::default();
    loop {
        tokio::time::sleep(BAN_POLL).await;
        let now = now();
        for ip in node.banned_ips().await {
            let IpAddr::V4(v4) = ip.to_canonical() else {
                continue;
            };
            let Some(peer) = bridge.aliases().holder(v4) else {
                continue;
            };
            deny.deny_peer(peer, now + BAN_HOLD);
            let observed = seen.ip_of(&peer);
            if let Some(observed) = observed {
                deny.deny_ip(observed, now + BAN_HOLD);
            }
            if let Some(held_back) = log.hit(now) {
                info!(peer = %peer.short(), alias = %v4, ?observed, held_back, "node bans a punched peer: denied at the punch layer too");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use punch_proto::Keypair;

    fn id() -> PeerId {
        Keypair::generate().unwrap().public()
    }

    #[test]
    fn exactly_one_side_of_a_pair_dials() {
        let mut mine = 0;
        for _ in 0..200 {
            let (a, b) = (id(), id());
            assert_ne!(dials(&a, &b), dials(&b, &a));
            mine += usize::from(dials(&a, &b));
        }
        // About half: the rule must not make one identity dial every pair.
        assert!((60..=140).contains(&mine), "{mine} of 200");
    }

    #[test]
    fn picks_up_to_the_target_and_never_self_busy_or_not_ours() {
        let now = Instant::now();
        let me = id();
        let mut config = PeeringConfig::new(vec![], 2);
        config.accept = true;
        let mut p = Planner::new(me, &config, now);
        assert!(p.discover_due(now));
        p.discover_started(now);
        assert!(!p.discover_due(now));
        let peers: Vec<PeerId> = (0..12).map(|_| id()).collect();
        let busy = peers[0];
        let mut answer = peers.clone();
        answer.push(me);
        p.discovered(now, Some(answer), None);
        let picked = p.pick(now, |x| *x == busy, |_| false);
        assert_eq!(picked.len(), 2, "{picked:?}");
        for (x, pinned) in &picked {
            assert!(!pinned);
            assert_ne!(*x, me);
            assert_ne!(*x, busy);
            assert!(dials(&me, x));
        }
        // Full: nothing more, no discovery.
        assert!(p.pick(now, |_| false, |_| false).is_empty());
        assert!(!p.discover_due(now + DISCOVER_MAX_PAUSE));
        // One ends after a short connection: cooled down for REFUSED_COOLDOWN, room again.
        let gone = picked[0].0;
        assert_eq!(
            p.ended(now, gone, Outcome::Connected(Duration::from_secs(1))),
            REFUSED_COOLDOWN
        );
        assert!(p.discover_due(now + DISCOVER_MIN_PAUSE));
        p.discovered(now, Some(vec![gone]), None);
        let again = p.pick(now, |_| false, |_| false);
        assert!(again.len() <= 1, "{again:?}");
        assert!(
            again.iter().all(|(x, _)| *x != gone),
            "a cooling-down peer picked"
        );
    }

    #[test]
    fn the_same_answer_again_slows_discovery_down() {
        let now = Instant::now();
        let me = id();
        let mut p = Planner::new(me, &PeeringConfig::new(vec![], 4), now);
        let peers: Vec<PeerId> = (0..3).map(|_| id()).collect();
        let mut at = now;
        let mut pauses = Vec::new();
        for _ in 0..5 {
            p.discover_started(at);
            p.discovered(at, Some(peers.clone()), None);
            // Every candidate is busy (already connected): none is picked.
            assert!(p.pick(at, |_| true, |_| false).is_empty());
            let next = (0..600)
                .map(|ms| at + Duration::from_millis(100 * ms))
                .find(|t| p.discover_due(*t))
                .unwrap();
            pauses.push(next - at);
            at = next;
        }
        assert_eq!(pauses[0], DISCOVER_MIN_PAUSE, "{pauses:?}");
        assert!(pauses[1] > pauses[0] && pauses[2] > pauses[1], "{pauses:?}");
    }

    #[test]
    fn the_state_counts_rounds_cooldowns_and_discoveries() {
        let now = Instant::now();
        let pinned = id();
        let mut config = PeeringConfig::new(vec![pinned], 3);
        config.accept = false;
        let mut p = Planner::new(id(), &config, now);
        let s = p.state(now);
        assert_eq!((s.target, s.pinned), (3, 1));
        assert_eq!(s.next_discover_in, Some(Duration::ZERO), "due at start");

        p.discover_started(now);
        assert!(p.state(now).discovering);
        assert_eq!(p.state(now).next_discover_in, None, "in flight");
        let peers: Vec<PeerId> = (0..5).map(|_| id()).collect();
        p.discovered(now, Some(peers.clone()), None);
        p.discover_started(now);
        p.discovered(now, None, None);
        let s = p.state(now);
        assert_eq!(
            (s.discoveries, s.discoveries_failed, s.discovered_peers),
            (1, 1, 5)
        );
        assert_eq!(s.candidates, 5);

        let picked = p.pick(now, |_| false, |_| false);
        let s = p.state(now);
        assert_eq!(
            (s.running_pinned, s.running_discovered, s.candidates),
            (1, 3, 2)
        );
        assert_eq!(s.next_discover_in, None, "the target is reached");

        let discovered: Vec<PeerId> = picked
            .iter()
            .filter(|(_, pin)| !pin)
            .map(|(x, _)| *x)
            .collect();
        p.ended(now, pinned, Outcome::Failed);
        p.ended(
            now,
            discovered[0],
            Outcome::Connected(Duration::from_secs(1)),
        );
        p.ended(now, discovered[1], Outcome::Gone);
        let s = p.state(now);
        assert_eq!(s.running_pinned + s.running_discovered, 1);
        assert_eq!(
            s.rounds_ended,
            [1, 0, 1, 1],
            "failed, no slot, refused, ended"
        );
        assert_eq!(s.cooling, [1, 0, 1, 1]);
        assert!(
            s.next_discover_in.is_some(),
            "room again: a discovery is planned"
        );
        // Cooldowns run out; the counts since start stay.
        let later = now + REFUSED_COOLDOWN + Duration::from_secs(1);
        let s = p.state(later);
        assert_eq!(s.cooling, [0; 4]);
        assert_eq!(s.rounds_ended, [1, 0, 1, 1]);
    }

    #[test]
    fn a_node_that_does_not_accept_dials_every_pair() {
        let now = Instant::now();
        let me = id();
        let mut config = PeeringConfig::new(vec![], 50);
        config.accept = false;
        let mut p = Planner::new(me, &config, now);
        let peers: Vec<PeerId> = (0..20).map(|_| id()).collect();
        p.discovered(now, Some(peers), None);
        assert_eq!(p.pick(now, |_| false, |_| false).len(), 20);
    }

    #[test]
    fn pinned_peers_back_off_and_denied_ones_wait() {
        let now = Instant::now();
        let pinned = id();
        let mut p = Planner::new(id(), &PeeringConfig::new(vec![pinned], 0), now);
        assert!(!p.discover_due(now), "target 0: no discovery");
        assert!(p.pick(now, |_| false, |x| *x == pinned).is_empty());
        assert_eq!(p.pick(now, |_| false, |_| false), vec![(pinned, true)]);
        let first = p.ended(now, pinned, Outcome::Failed);
        assert!(p.pick(now, |_| false, |_| false).is_empty(), "cooling down");
        // kaspad dialing an empty slot cuts the backoff short.
        p.slot_wanted(now);
        assert_eq!(p.pick(now, |_| false, |_| false), vec![(pinned, true)]);
        let second = p.ended(now, pinned, Outcome::Failed);
        // The backoff doubled (each pause is jittered between half and all of it).
        assert!(second > first / 2, "{first:?} then {second:?}");
        let later = now + second + Duration::from_millis(1);
        assert_eq!(p.pick(later, |_| false, |_| false), vec![(pinned, true)]);
    }

    #[test]
    fn a_failing_discovered_peer_backs_off_and_a_connection_resets_it() {
        let now = Instant::now();
        let me = id();
        let mut config = PeeringConfig::new(vec![], 4);
        config.accept = false;
        let mut p = Planner::new(me, &config, now);
        let peer = id();
        let mut pauses = Vec::new();
        for _ in 0..8 {
            p.discovered(now, Some(vec![peer]), None);
            assert_eq!(
                p.pick(now + Duration::from_secs(3600), |_| false, |_| false)
                    .len(),
                1
            );
            pauses.push(p.ended(now, peer, Outcome::Failed));
        }
        assert_eq!(pauses[0], FAILED_COOLDOWN);
        assert_eq!(pauses[1], 2 * FAILED_COOLDOWN);
        assert_eq!(*pauses.last().unwrap(), FAILED_COOLDOWN_MAX);
        p.discovered(now, Some(vec![peer]), None);
        p.pick(now + Duration::from_secs(3600), |_| false, |_| false);
        assert_eq!(
            p.ended(now, peer, Outcome::Connected(SHORT_LIVED)),
            ENDED_COOLDOWN
        );
        p.discovered(now, Some(vec![peer]), None);
        p.pick(now + Duration::from_secs(3600), |_| false, |_| false);
        assert_eq!(p.ended(now, peer, Outcome::Failed), FAILED_COOLDOWN);
        p.discovered(now, Some(vec![peer]), None);
        p.pick(now + Duration::from_secs(3600), |_| false, |_| false);
        assert_eq!(p.ended(now, peer, Outcome::NoSlot), NO_SLOT_COOLDOWN);
        // A peer that went away at once (restart) is not taken for a refusal.
        p.discovered(now, Some(vec![peer]), None);
        p.pick(now + Duration::from_secs(3600), |_| false, |_| false);
        assert_eq!(p.ended(now, peer, Outcome::Gone), ENDED_COOLDOWN);
    }

    #[test]
    fn empty_discoveries_slow_down_and_rate_limits_are_respected() {
        let now = Instant::now();
        let mut p = Planner::new(id(), &PeeringConfig::new(vec![], 4), now);
        p.discover_started(now);
        p.discovered(now, Some(vec![]), None);
        assert!(!p.discover_due(now + DISCOVER_MIN_PAUSE));
        assert!(p.discover_due(now + 2 * DISCOVER_MIN_PAUSE));
        // kaspad dialing an empty slot brings the next discovery forward, not before the
        // asked pause.
        p.slot_wanted(now);
        assert!(!p.discover_due(now + DISCOVER_ASKED_PAUSE - Duration::from_millis(1)));
        assert!(p.discover_due(now + DISCOVER_ASKED_PAUSE));
        p.discover_started(now);
        p.discovered(now, None, Some(Duration::from_secs(30)));
        assert!(!p.discover_due(now + Duration::from_secs(29)));
        assert!(p.discover_due(now + Duration::from_secs(30)));
    }
}
