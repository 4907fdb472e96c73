//! Plain-TCP probes for checking a lab without the punch binaries: a server that answers each
//! connection with the address it sees (`natlab_tcp serve`) and a client that reports how its
//! connect went (`natlab_tcp connect`), both run inside lab namespaces.
//!
//! Exchange: the server writes `<observed peer addr>\n`; the client writes
//! `hi <its local addr>\n` and reads one line. Two clients dialing each other (TCP
//! simultaneous open) therefore read each other's `hi` line.

use super::lab::helper_bin;
use super::procs::ProcId;
use super::Lab;
use crate::error::{Error, Result};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

/// How long a probe server lives at most: longer than any smoke test.
const SERVER_MAX_SECS: u32 = 120;
/// Slack for a client process beyond its own connect timeouts (process start, reply read).
const CLIENT_SLACK: Duration = Duration::from_secs(10);

/// How `natlab_tcp connect` dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectOpts {
    /// Local address to bind first (SO_REUSEADDR + SO_REUSEPORT), e.g. a fixed port.
    pub bind: Option<SocketAddr>,
    /// Per-attempt connect timeout.
    pub timeout: Duration,
    /// Attempts in all; refused or timed-out attempts are retried after `retry_gap`.
    pub attempts: u32,
    /// Pause between attempts.
    pub retry_gap: Duration,
}

impl Default for ConnectOpts {
    /// One attempt of 3 s: SYN retransmission starts at 1 s, so a working path connects well
    /// within it even with a lost SYN, while a blackhole is recognised quickly.
    fn default() -> Self {
        ConnectOpts {
            bind: None,
            timeout: Duration::from_secs(3),
            attempts: 1,
            retry_gap: Duration::from_millis(100),
        }
    }
}

/// What a probe connect ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectOutcome {
    /// Connected and got a line back.
    Connected {
        /// Attempt number (1-based) that succeeded.
        attempt: u32,
        /// Duration of the successful connect call alone.
        elapsed: Duration,
        /// The client's local address.
        local: SocketAddr,
        /// The line received: the server's view of the client's address, or `hi <addr>` from
        /// a simultaneous-open partner.
        reply: String,
    },
    /// Every attempt was answered by a RST (the last one took `elapsed`).
    Refused {
        /// Duration of the last attempt.
        elapsed: Duration,
    },
    /// Every attempt timed out or was refused, the last one timing out.
    TimedOut {
        /// Duration of the last attempt.
        elapsed: Duration,
    },
    /// Something else failed (unreachable, reply not received, bad output).
    Failed(String),
}

impl ConnectOutcome {
    /// The reply parsed as the observed address (server probes).
    pub fn observed(&self) -> Option<SocketAddr> {
        match self {
            ConnectOutcome::Connected { reply, .. } => reply.parse().ok(),
            _ => None,
        }
    }

    fn parse(out: &str) -> ConnectOutcome {
        let Some(line) = out.lines().rev().find(|l| !l.trim().is_empty()) else {
            return ConnectOutcome::Failed("no output".into());
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        let ms = |w: Option<&&str>| -> Option<Duration> {
            Some(Duration::from_secs_f64(w?.parse::<f64>().ok()? / 1000.0))
        };
        let parsed = match words.first().copied() {
            Some("connected") => (|| {
                Some(ConnectOutcome::Connected {
                    attempt: words.get(1)?.parse().ok()?,
                    elapsed: ms(words.get(2))?,
                    local: words.get(3)?.parse().ok()?,
                    reply: words.get(4..)?.join(" "),
                })
            })(),
            Some("refused") => ms(words.get(1)).map(|elapsed| ConnectOutcome::Refused { elapsed }),
            Some("timeout") => ms(words.get(1)).map(|elapsed| ConnectOutcome::TimedOut { elapsed }),
            _ => None,
        };
        parsed.unwrap_or_else(|| ConnectOutcome::Failed(line.to_string()))
    }
}

impl Lab {
    /// Starts a probe server in `ns` on `bind` (port 0 for any) and returns its bound address.
    pub fn tcp_server(&self, ns: &str, bind: SocketAddr) -> Result<SocketAddr> {
        let mut cmd = Command::new(helper_bin("natlab_tcp")?);
        cmd.args([
            "serve",
            &bind.to_string(),
            "--max-secs",
            &SERVER_MAX_SECS.to_string(),
        ]);
        let id = self.spawn("tcp-serve", ns, &cmd)?;
        let line =
            self.wait_stdout_line(id, Duration::from_secs(10), |l| l.starts_with("listening "))?;
        line.trim_start_matches("listening ")
            .trim()
            .parse()
            .map_err(|_| Error::BadOutput {
                label: self.label(id).unwrap_or_else(|_| "tcp-serve".into()),
                line: line.clone(),
            })
    }

    /// Starts a probe client in `ns` dialing `target`; collect it with
    /// [`Lab::connect_outcome`]. Two of these make a simultaneous open.
    pub fn tcp_connect_start(
        &self,
        ns: &str,
        target: SocketAddr,
        opts: ConnectOpts,
    ) -> Result<ProcId> {
        let mut cmd = Command::new(helper_bin("natlab_tcp")?);
        cmd.args([
            "connect",
            &target.to_string(),
            "--timeout-ms",
            &opts.timeout.as_millis().to_string(),
            "--attempts",
            &opts.attempts.to_string(),
            "--retry-gap-ms",
            &opts.retry_gap.as_millis().to_string(),
        ]);
        if let Some(b) = opts.bind {
            cmd.args(["--bind", &b.to_string()]);
        }
        self.spawn("tcp-connect", ns, &cmd)
    }

    /// Waits for a client started by [`Lab::tcp_connect_start`] with `opts` and parses its
    /// report.
    pub fn connect_outcome(&self, id: ProcId, opts: ConnectOpts) -> Result<ConnectOutcome> {
        let budget = (opts.timeout + opts.retry_gap) * opts.attempts.max(1) + CLIENT_SLACK;
        if self.wait_timeout(id, budget)?.is_none() {
            self.kill(id)?;
            return Err(Error::StillRunning {
                label: self.label(id)?,
                waited: budget,
                stderr: self.stderr(id)?,
            });
        }
        let outcome = ConnectOutcome::parse(&self.stdout(id)?);
        if let ConnectOutcome::Failed(why) = &outcome {
            return Ok(ConnectOutcome::Failed(format!(
                "{why}; stderr: {}",
                self.stderr(id)?.trim()
            )));
        }
        Ok(outcome)
    }

    /// Dials `target` from `ns` and reports the outcome (blocking).
    pub fn tcp_connect(
        &self,
        ns: &str,
        target: SocketAddr,
        opts: ConnectOpts,
    ) -> Result<ConnectOutcome> {
        let id = self.tcp_connect_start(ns, target, opts)?;
        self.connect_outcome(id, opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_client_reports() {
        let c = ConnectOutcome::parse("connected 2 101.5 192.168.1.2:40001 203.0.113.10:40001\n");
        assert_eq!(
            c,
            ConnectOutcome::Connected {
                attempt: 2,
                elapsed: Duration::from_secs_f64(0.1015),
                local: "192.168.1.2:40001".parse().unwrap(),
                reply: "203.0.113.10:40001".into(),
            }
        );
        assert_eq!(c.observed(), Some("203.0.113.10:40001".parse().unwrap()));
        let hi = ConnectOutcome::parse("connected 1 3.0 192.168.1.2:1 hi 192.168.2.2:2");
        assert!(
            matches!(hi, ConnectOutcome::Connected { ref reply, .. } if reply == "hi 192.168.2.2:2")
        );
        assert!(matches!(
            ConnectOutcome::parse("refused 0.4"),
            ConnectOutcome::Refused { .. }
        ));
        assert!(matches!(
            ConnectOutcome::parse("timeout 1000"),
            ConnectOutcome::TimedOut { .. }
        ));
        assert!(matches!(
            ConnectOutcome::parse("error 1 unreachable"),
            ConnectOutcome::Failed(_)
        ));
        assert!(matches!(
            ConnectOutcome::parse(""),
            ConnectOutcome::Failed(_)
        ));
    }
}
