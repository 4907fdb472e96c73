//! Measuring a graceful restart of the real `rendezvous` with many registered peers.
//!
//! [`measure`] starts the binary, registers `clients` real `punch::Client`s spread over
//! loopback sources (the `restart_herd` helper processes), SIGTERMs the server (which tells
//! each peer `GoingAway` with its reconnect window), starts it again at once on the same port
//! with the same key, and reports when each client was registered again, the busiest second
//! of registrations the new server logged, and what it refused (from the counters it logs at
//! shutdown).
//!
//! Clients live in helper processes of at most [`PER_PROCESS`] each: a client holds two
//! descriptors (its punch port's listener and its control connection), and the hard
//! open-files limit here is 20,000 (no `CAP_SYS_RESOURCE` to raise it), so 10,000 clients
//! do not fit one process.

use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{bin_path, LineChild, RendezvousProcess};

/// Clients per helper process: 8,000 descriptors, well inside a 20,000 limit.
pub const PER_PROCESS: usize = 4_000;
/// How long the new server gets, beyond the reconnect window and the downtime, for the last
/// client to come back: a client whose moment fell into the downtime backs off (200 ms
/// doubling), so it may come back a few backoff steps late.
pub const LATE_SLACK: Duration = Duration::from_secs(30);

/// How the clients are spread over loopback sources: `per_source` clients per address, and
/// `sources_per_net` addresses per /24 (at most 254).
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub clients: usize,
    pub per_source: usize,
    pub sources_per_net: usize,
}

/// The loopback address of client `i`: `127.(10 + net / 256).(net % 256).(1 + host)`.
pub fn client_ip(i: usize, per_source: usize, sources_per_net: usize) -> IpAddr {
    assert!((1..=254).contains(&sources_per_net) && per_source >= 1);
    let source = i / per_source;
    let (net, host) = (source / sources_per_net, source % sources_per_net);
    let b = u8::try_from(10 + net / 256).expect("fewer than 62,000 networks");
    IpAddr::V4(Ipv4Addr::new(127, b, (net % 256) as u8, 1 + host as u8))
}

/// What one restart showed.
#[derive(Debug, Clone)]
pub struct Report {
    pub layout: Layout,
    /// Peers the old server told `GoingAway`, of those registered, and the window it gave.
    pub told: u64,
    pub registered: u64,
    pub window: Duration,
    /// Clients that heard `GoingAway`; lost without it; failed reconnect attempts.
    pub away: usize,
    pub lost: usize,
    pub retries: usize,
    /// SIGTERM until the old server exited, and until the new one listened.
    pub exit_after: Duration,
    pub up_after: Duration,
    /// Each returning client's time from SIGTERM to its new registration, sorted.
    pub back: Vec<Duration>,
    /// The most registrations the new server logged in any one second.
    pub peak_per_second: usize,
    /// The new server's counters (accepted, rejected_rate, evicted, ...).
    pub counters: HashMap<String, u64>,
}

impl Report {
    /// The `q`-quantile (0..=1) of the clients' return times.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.back.is_empty() {
            return Duration::MAX;
        }
        let i = ((self.back.len() - 1) as f64 * q).round() as usize;
        self.back[i]
    }

    /// A counter the new server logged at shutdown (0 when absent).
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.layout;
        writeln!(
            f,
            "{} clients ({} per source, {} sources per /24): told {} of {} registered, window {:?}",
            l.clients, l.per_source, l.sources_per_net, self.told, self.registered, self.window
        )?;
        writeln!(
            f,
            "  old server exited {:?} after SIGTERM, new one listening after {:?}",
            self.exit_after, self.up_after
        )?;
        writeln!(
            f,
            "  clients: {} told going away, {} lost without notice, {} failed reconnects, {} back",
            self.away,
            self.lost,
            self.retries,
            self.back.len()
        )?;
        writeln!(
            f,
            "  registered again after SIGTERM: p50 {:?}, p90 {:?}, max {:?}",
            self.quantile(0.5),
            self.quantile(0.9),
            self.quantile(1.0)
        )?;
        writeln!(
            f,
            "  new server: peak {} registrations in one second",
            self.peak_per_second
        )?;
        let mut counters: Vec<_> = self.counters.iter().collect();
        counters.sort();
        write!(f, "  new server counters:")?;
        for (k, v) in counters {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

/// A `restart_herd` process, killed on drop (closing its stdin also ends it).
fn spawn_herd(
    rv: &RendezvousProcess,
    first: usize,
    count: usize,
    layout: Layout,
    lines: mpsc::Sender<String>,
) -> LineChild {
    LineChild::spawn(
        Command::new(bin_path("restart_herd"))
            .arg(rv.addr().to_string())
            .arg(rv.identity().to_string())
            .args([first, count, layout.per_source, layout.sources_per_net].map(|n| n.to_string()))
            .env("RUST_LOG", "error")
            .stderr(Stdio::inherit()),
        lines,
        |line| line,
    )
}

fn unix_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_micros()
}

/// The `key=value` fields of the log line holding `marker`, or `None` without one.
fn log_fields(log: &str, marker: &str) -> Option<HashMap<String, u64>> {
    let line = log.lines().find(|l| l.contains(marker))?;
    Some(
        line.split_whitespace()
            .filter_map(|t| t.split_once('='))
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            .collect(),
    )
}

/// Seconds since midnight of a log line's leading timestamp (`2026-05-01T15:20:01.123456Z`).
fn log_time(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?;
    let time = stamp.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// The most `registered` lines of `log` within any one second.
fn peak_per_second(log: &str) -> usize {
    let mut times: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("punch_rendezvous::server: registered"))
        .filter_map(log_time)
        .collect();
    times.sort_by(f64::total_cmp);
    let mut peak = 0;
    let mut start = 0;
    for (end, &t) in times.iter().enumerate() {
        while t - times[start] >= 1.0 {
            start += 1;
        }
        peak = peak.max(end - start + 1);
    }
    peak
}

/// Runs one restart with `layout.clients` clients; `server_args` go to both server processes.
/// Panics when the clients cannot all register at the start.
pub fn measure(layout: Layout, server_args: &[&str]) -> Report {
    let mut rv = RendezvousProcess::spawn(server_args);
    let (tx, rx) = mpsc::channel();
    let herds: Vec<LineChild> = (0..layout.clients)
        .step_by(PER_PROCESS)
        .map(|first| {
            let count = PER_PROCESS.min(layout.clients - first);
            spawn_herd(&rv, first, count, layout, tx.clone())
        })
        .collect();
    // Batches of 100 register in well under 2 s each.
    let start_deadline = Instant::now()
        + Duration::from_secs(120)
        + Duration::from_millis(20 * layout.clients as u64);
    let mut ready = 0;
    while ready < herds.len() {
        let left = start_deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "the clients did not register in time; server log:\n{}",
                rv.log_text()
            )
        });
        if line.starts_with("ready ") {
            ready += 1;
        }
    }
    // Every client is registered once its herd said ready; let the pings settle.
    std::thread::sleep(Duration::from_secs(1));

    let term_at = unix_micros();
    let term = Instant::now();
    rv.terminate(Duration::from_secs(30));
    let exit_after = term.elapsed();
    let old = log_fields(&rv.log_text(), "shut down: told").unwrap_or_else(|| {
        panic!(
            "no shutdown line in the old server's log:\n{}",
            rv.log_text()
        )
    });
    rv.restart("rendezvous-2.log", server_args);
    let up_after = term.elapsed();
    let window = Duration::from_millis(old.get("reconnect_window_ms").copied().unwrap_or(0));

    let mut report = Report {
        layout,
        told: old.get("told").copied().unwrap_or(0),
        registered: old.get("registered").copied().unwrap_or(0),
        window,
        away: 0,
        lost: 0,
        retries: 0,
        exit_after,
        up_after,
        back: Vec::with_capacity(layout.clients),
        peak_per_second: 0,
        counters: HashMap::new(),
    };
    let deadline = term + up_after + window + LATE_SLACK;
    while report.back.len() < layout.clients {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        let mut words = line.split_whitespace();
        match (words.next(), words.nth(1)) {
            (Some("away"), _) => report.away += 1,
            (Some("lost"), _) => report.lost += 1,
            (Some("retry"), _) => report.retries += 1,
            (Some("back"), Some(at)) => {
                let at: u128 = at.parse().expect("microseconds");
                let micros = u64::try_from(at.saturating_sub(term_at)).unwrap_or(u64::MAX);
                report.back.push(Duration::from_micros(micros));
            }
            _ => {}
        }
    }
    report.back.sort();
    // Stop the new server too: its shutdown line carries its counters. The refusal summary
    // and counters cover everything since it started, that is, the whole return.
    rv.terminate(Duration::from_secs(30));
    let log = rv.log_text();
    report.peak_per_second = peak_per_second(&log);
    report.counters = log_fields(&log, "shut down: told").unwrap_or_default();
    for key in ["told", "registered", "reconnect_window_ms"] {
        report.counters.remove(key);
    }
    drop(herds);
    let _ = std::io::stdout().flush();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_spread_over_sources_and_networks() {
        assert_eq!(client_ip(0, 4, 25).to_string(), "127.10.0.1");
        assert_eq!(client_ip(3, 4, 25).to_string(), "127.10.0.1");
        assert_eq!(client_ip(4, 4, 25).to_string(), "127.10.0.2");
        assert_eq!(client_ip(99, 4, 25).to_string(), "127.10.0.25");
        assert_eq!(client_ip(100, 4, 25).to_string(), "127.10.1.1");
        assert_eq!(client_ip(9_999, 4, 25).to_string(), "127.10.99.25");
    }

    #[test]
    fn log_lines_are_parsed() {
        let log = "2026-05-01T15:20:01.250000Z  INFO conn{addr=127.0.0.1:5}: punch_rendezvous::server: registered local_addrs=1\n\
                   2026-05-01T15:20:01.750000Z  INFO conn{addr=127.0.0.1:6}: punch_rendezvous::server: registered local_addrs=1\n\
                   2026-05-01T15:20:02.250000Z  INFO conn{addr=127.0.0.1:7}: punch_rendezvous::server: registered local_addrs=1\n\
                   2026-05-01T15:20:09.000000Z  INFO punch_rendezvous::server: shut down: told 3 of 3 peers to reconnect within 1s told=3 registered=3 evicted=0\n";
        assert_eq!(peak_per_second(log), 2);
        let f = log_fields(log, "shut down: told").unwrap();
        assert_eq!((f["told"], f["registered"], f["evicted"]), (3, 3, 0));
    }
}
