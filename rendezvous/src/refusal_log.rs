//! Refusal summaries: one log line per interval instead of one per refused connection.
//!
//! A flood is refused by the thousand per second; one line each made a log of megabytes per
//! minute from one client. The driver records each refusal here with its reason and source
//! and, on its timer, asks [`RefusalLog::summary`] for at most one summary per interval.
//! Failed handshakes (admitted, then broken) keep their own line, which names the failure, but
//! only up to a budget per interval ([`RefusalLog::may_log_failure`]); the rest are counted
//! in the summary, so many sources each within their handshake rate cannot flood the log.
//! The registry's refusals of registered peers (punch requests over a budget or refused by the
//! target's allow-list, registrations over a network's cap or `max_peers`) are counted here
//! too: a Sybil flood makes them by the thousand as well.
//! Pure: fed `now`, no clock, no I/O.

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, Instant};

use punch_proto::relay::Refusal;

use crate::gate::Prefix;

/// Why a connection was refused or dropped before its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The source's handshake rate was spent.
    Rate,
    /// The source already had its maximum of open connections.
    PerIp,
    /// Its pending handshake was evicted for a newer one.
    Evicted,
    /// It sent no complete message 1 within the first-message timeout.
    Silent,
    /// A punch request over a request or offer budget, or a `Discover` over a request budget
    /// (`RateLimited`).
    RequestRate,
    /// A punch request from a peer the target's allow-list does not name (`NotAllowed`).
    NotAllowed,
    /// A registration over its source's or network's cap (`NetworkFull`).
    NetworkFull,
    /// A registration of a new identity with `max_peers` reached (`ServerFull`).
    ServerFull,
    /// A relay connection refused with this code (unknown or used token, a session limit,
    /// its partner absent).
    Relay(punch_proto::relay::Refusal),
    /// A connection that began like a relay HELLO ("PR") and was not one.
    RelayMalformed,
}

/// Refusals counted over one interval.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub rate: u64,
    pub per_ip: u64,
    pub evicted: u64,
    pub silent: u64,
    pub request_rate: u64,
    pub not_allowed: u64,
    pub network_full: u64,
    pub server_full: u64,
    /// Relay connections refused: unknown or used token, a session limit (total, per peer,
    /// per source), partner absent, not a HELLO.
    pub relay_unknown_token: u64,
    pub relay_limit: u64,
    pub relay_peer_absent: u64,
    pub relay_malformed: u64,
    /// Failed handshakes beyond the interval's budget of lines (not logged one by one).
    pub failed_unlogged: u64,
    /// Distinct source prefixes among the refusals.
    pub sources: usize,
    pub interval: Duration,
}

impl Summary {
    /// Connections refused before their handshake.
    pub fn total(&self) -> u64 {
        self.rate + self.per_ip + self.evicted + self.silent
    }

    /// Refusals of registered or registering peers by the registry.
    pub fn registry_total(&self) -> u64 {
        self.request_rate + self.not_allowed + self.network_full + self.server_full
    }

    /// Relay connections refused.
    pub fn relay_total(&self) -> u64 {
        self.relay_unknown_token + self.relay_limit + self.relay_peer_absent + self.relay_malformed
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refused {} connections from {} sources in the last {} s: {} (rate), {} (per-ip), \
             {} (evicted), {} (silent); {} failed handshakes not logged one by one",
            self.total(),
            self.sources,
            self.interval.as_secs(),
            self.rate,
            self.per_ip,
            self.evicted,
            self.silent,
            self.failed_unlogged
        )?;
        if self.registry_total() > 0 {
            write!(
                f,
                "; punch requests refused: {} (rate), {} (not on the target's allow-list); \
                 registrations refused: {} (network full), {} (server full)",
                self.request_rate, self.not_allowed, self.network_full, self.server_full
            )?;
        }
        if self.relay_total() > 0 {
            write!(
                f,
                "; relay connections refused: {} (unknown or used token), {} (session limits), \
                 {} (partner absent), {} (not a relay hello)",
                self.relay_unknown_token,
                self.relay_limit,
                self.relay_peer_absent,
                self.relay_malformed
            )?;
        }
        Ok(())
    }
}

/// Counts refusals and hands out a summary at most once per interval.
#[derive(Debug)]
pub struct RefusalLog {
    interval: Duration,
    failure_lines: u64,
    failure_lines_left: u64,
    since: Instant,
    counts: Summary,
    sources: HashSet<Prefix>,
}

/// Distinct sources remembered per interval; beyond this the count is a lower bound
/// (memory stays bounded under an IPv6 flood).
const MAX_TRACKED_SOURCES: usize = 4096;

impl RefusalLog {
    /// Summaries every `interval`; at most `failure_lines` failed handshakes logged one by one
    /// per interval.
    pub fn new(interval: Duration, failure_lines: u64, now: Instant) -> Self {
        Self {
            interval,
            failure_lines,
            failure_lines_left: failure_lines,
            since: now,
            counts: Summary::default(),
            sources: HashSet::new(),
        }
    }

    pub fn record(&mut self, reason: Reason, source: Prefix) {
        match reason {
            Reason::Rate => self.counts.rate += 1,
            Reason::PerIp => self.counts.per_ip += 1,
            Reason::Evicted => self.counts.evicted += 1,
            Reason::Silent => self.counts.silent += 1,
            Reason::RequestRate => self.counts.request_rate += 1,
            Reason::NotAllowed => self.counts.not_allowed += 1,
            Reason::NetworkFull => self.counts.network_full += 1,
            Reason::ServerFull => self.counts.server_full += 1,
            Reason::Relay(Refusal::UnknownToken) => self.counts.relay_unknown_token += 1,
            Reason::Relay(Refusal::PeerAbsent) => self.counts.relay_peer_absent += 1,
            Reason::Relay(_) => self.counts.relay_limit += 1,
            Reason::RelayMalformed => self.counts.relay_malformed += 1,
        }
        if self.sources.len() < MAX_TRACKED_SOURCES {
            self.sources.insert(source);
        }
    }

    /// A handshake failed: whether its own line may be written (else it is counted).
    pub fn may_log_failure(&mut self) -> bool {
        if self.failure_lines_left > 0 {
            self.failure_lines_left -= 1;
            true
        } else {
            self.counts.failed_unlogged += 1;
            false
        }
    }

    /// The summary of the interval that has ended by `now`, if it has and anything was refused;
    /// counting starts again from `now`.
    pub fn summary(&mut self, now: Instant) -> Option<Summary> {
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed < self.interval {
            return None;
        }
        let mut out = std::mem::take(&mut self.counts);
        out.sources = self.sources.len();
        out.interval = elapsed;
        self.sources.clear();
        self.since = now;
        self.failure_lines_left = self.failure_lines;
        (out.total() + out.registry_total() + out.relay_total() + out.failed_unlogged > 0)
            .then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_of_refusals_make_one_line_per_interval() {
        let t0 = Instant::now();
        let mut log = RefusalLog::new(Duration::from_secs(10), 2, t0);
        for i in 0..1234u32 {
            let ip = std::net::IpAddr::from([127, 0, 0, (i % 17) as u8]);
            log.record(Reason::Rate, Prefix::of(ip));
        }
        for _ in 0..3 {
            log.record(Reason::Evicted, Prefix::of([10, 0, 0, 1].into()));
        }
        // Two failures get their own line, the third is only counted.
        assert!(log.may_log_failure());
        assert!(log.may_log_failure());
        assert!(!log.may_log_failure());
        assert_eq!(log.summary(t0 + Duration::from_secs(9)), None, "not yet");
        let s = log.summary(t0 + Duration::from_secs(10)).unwrap();
        assert_eq!((s.rate, s.evicted, s.per_ip, s.silent), (1234, 3, 0, 0));
        assert_eq!(s.failed_unlogged, 1);
        assert_eq!(s.sources, 18);
        assert_eq!(
            s.to_string(),
            "refused 1237 connections from 18 sources in the last 10 s: 1234 (rate), 0 (per-ip), \
             3 (evicted), 0 (silent); 1 failed handshakes not logged one by one"
        );
        // A new interval, a new budget of lines.
        assert!(log.may_log_failure());
        // Counting restarted; a quiet interval says nothing.
        assert_eq!(log.summary(t0 + Duration::from_secs(25)), None);
        log.record(Reason::Silent, Prefix::of([10, 0, 0, 1].into()));
        assert_eq!(log.summary(t0 + Duration::from_secs(30)), None, "too soon");
        let s = log.summary(t0 + Duration::from_secs(35)).unwrap();
        assert_eq!((s.silent, s.sources, s.total()), (1, 1, 1));
    }

    #[test]
    fn registry_refusals_are_summarised_too() {
        let t0 = Instant::now();
        let mut log = RefusalLog::new(Duration::from_secs(10), 2, t0);
        let src = Prefix::of([127, 0, 0, 2].into());
        for _ in 0..500 {
            log.record(Reason::NotAllowed, src);
        }
        log.record(Reason::RequestRate, src);
        log.record(Reason::NetworkFull, src);
        log.record(Reason::ServerFull, src);
        let s = log.summary(t0 + Duration::from_secs(10)).unwrap();
        assert_eq!((s.total(), s.registry_total(), s.sources), (0, 503, 1));
        assert_eq!(
            s.to_string(),
            "refused 0 connections from 1 sources in the last 10 s: 0 (rate), 0 (per-ip), \
             0 (evicted), 0 (silent); 0 failed handshakes not logged one by one; \
             punch requests refused: 1 (rate), 500 (not on the target's allow-list); \
             registrations refused: 1 (network full), 1 (server full)"
        );
    }

    #[test]
    fn relay_refusals_are_summarised_too() {
        let t0 = Instant::now();
        let mut log = RefusalLog::new(Duration::from_secs(10), 2, t0);
        let src = Prefix::of([127, 0, 0, 2].into());
        for r in [
            Reason::Relay(Refusal::UnknownToken),
            Reason::Relay(Refusal::UnknownToken),
            Reason::Relay(Refusal::Full),
            Reason::Relay(Refusal::SourceLimit),
            Reason::Relay(Refusal::PeerAbsent),
            Reason::RelayMalformed,
        ] {
            log.record(r, src);
        }
        let s = log.summary(t0 + Duration::from_secs(10)).unwrap();
        assert_eq!((s.total(), s.registry_total(), s.relay_total()), (0, 0, 6));
        assert!(
            s.to_string().ends_with(
                "; relay connections refused: 2 (unknown or used token), 2 (session limits), \
                 1 (partner absent), 1 (not a relay hello)"
            ),
            "{s}"
        );
    }
}
