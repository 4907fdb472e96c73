//! The rendezvous's clock, placed on ours: a pure estimator fed ping round trips.
//!
//! Each offer names its dial moment on the server's clock (`Offer::dial_at_us`), the same for
//! both peers. A client that knows where that clock stands against its own dials at that
//! moment, however late the offer reached it, instead of `dial_delay` after receipt: queueing
//! or a retransmission on the way to one peer then no longer moves that peer's dial, and the
//! two SYNs leave together as long as the offers arrive before the moment (the server leaves
//! room for the lateness it measures, see the registry's dial schedule).
//!
//! A pong carries the server's clock when it was sent. Taken at the midpoint of the round
//! trip, the reading is off by at most half the round trip (all of it spent on one way), so
//! the sample with the smallest round trip wins (as NTP's clock filter does), for at most
//! [`MAX_AGE`]: then the next sample replaces it whatever its round trip. Both clocks are
//! monotonic; their drift (parts per million) is nothing over that time.

use std::time::{Duration, Instant};

/// How long the quickest round trip decides: the server pings every few seconds and the
/// client answers each with one of its own, so about a dozen samples compete; a minute of
/// drift at 100 parts per million is 6 ms.
pub const MAX_AGE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    rtt: Duration,
    /// Our clock at the middle of the round trip.
    mid: Instant,
    /// The server's clock in its pong (microseconds).
    server_us: u64,
}

/// Where the server's clock stands against ours; empty until a pong with the server's time.
/// The control machine starts a new one with each registration: a new connection may be to a
/// restarted server, whose clock has a new epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerClock {
    best: Option<Sample>,
}

impl ServerClock {
    /// A ping we sent at `sent` was answered at `received` by a pong carrying `server_us`.
    pub fn on_pong(&mut self, sent: Instant, received: Instant, server_us: u64) {
        let rtt = received.saturating_duration_since(sent);
        let sample = Sample {
            rtt,
            mid: sent + rtt / 2,
            server_us,
        };
        let keep = self
            .best
            .is_some_and(|b| b.rtt < rtt && sample.mid.saturating_duration_since(b.mid) < MAX_AGE);
        if !keep {
            self.best = Some(sample);
        }
    }

    /// Our instant for server time `at_us`, and how far off it may be (half the best round
    /// trip); `None` before any sample.
    pub fn local(&self, at_us: u64) -> Option<(Instant, Duration)> {
        let s = self.best.as_ref()?;
        let at = if at_us >= s.server_us {
            s.mid + Duration::from_micros(at_us - s.server_us)
        } else {
            s.mid
                .checked_sub(Duration::from_micros(s.server_us - at_us))
                .unwrap_or(s.mid)
        };
        Some((at, s.rtt / 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn empty_until_a_sample() {
        assert!(ServerClock::default().local(5).is_none());
    }

    #[test]
    fn places_server_time_at_the_midpoint_of_the_round_trip() {
        let t0 = Instant::now();
        let mut c = ServerClock::default();
        // Server epoch at t0 - 1 s: its clock reads 1_000_000 + 10_000 us at our t0 + 10 ms.
        c.on_pong(t0, t0 + 20 * MS, 1_010_000);
        let (at, err) = c.local(1_500_000).unwrap();
        assert_eq!(at, t0 + 500 * MS);
        assert_eq!(err, 10 * MS);
        // A moment before the sample.
        assert_eq!(c.local(1_000_000).unwrap().0, t0);
    }

    #[test]
    fn the_smallest_round_trip_wins_until_it_is_old() {
        let t0 = Instant::now();
        let mut c = ServerClock::default();
        // A slow sample whose one-way legs were uneven (its reading is 30 ms off)...
        c.on_pong(t0, t0 + 100 * MS, 1_080_000);
        // ...then a quick, even one: it decides.
        c.on_pong(t0 + 200 * MS, t0 + 202 * MS, 1_201_000);
        let (at, err) = c.local(1_301_000).unwrap();
        assert_eq!(at, t0 + 301 * MS);
        assert_eq!(err, MS);
        // Slower samples after it do not replace it...
        c.on_pong(t0 + 5000 * MS, t0 + 5010 * MS, 6_000_000);
        assert_eq!(c.local(1_301_000).unwrap(), (t0 + 301 * MS, MS));
        // ...until it is older than MAX_AGE.
        let late = t0 + MAX_AGE + 300 * MS;
        c.on_pong(late, late + 10 * MS, 61_306_000);
        assert_eq!(c.local(61_306_000).unwrap(), (late + 5 * MS, 5 * MS));
    }
}
