//! [`Error`]: why building a lab, running a command in it or talking to one of its processes
//! failed. Every variant names what was run or touched (the command line, which carries the
//! namespace; the namespace of a ruleset; the process label and namespace; the file) and what
//! the system said (stderr, the I/O error), because a lab failure is read by a person looking
//! at a failed test.
//!
//! Each message already contains its cause, so no variant also returns it from `source()`:
//! printing a chain (`{:#}` through anyhow) would repeat it.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::{ProcId, Topology};

/// A NAT-lab failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The lab cannot run on this machine (see [`crate::skip_reason`]).
    #[error("natlab unavailable: {reason}")]
    Unavailable { reason: &'static str },
    /// A command (`ip`, `iptables-restore`, `sysctl`, a process in a namespace) could not be
    /// started, fed or waited for.
    #[error("running `{command}`: {error}")]
    Exec { command: String, error: io::Error },
    /// A command exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    /// An iptables ruleset was refused by `iptables-restore` in `namespace`.
    #[error("loading rules into {namespace}: {cause}\n{rules}")]
    Rules {
        namespace: String,
        rules: String,
        cause: Box<Error>,
    },
    /// A step of building a case failed; what was made so far has been removed.
    #[error("building lab {name} ({topology}): {cause}")]
    Build {
        name: String,
        topology: Topology,
        cause: Box<Error>,
    },
    /// [`Topology::many`] was given fewer than 2 or more than [`crate::MAX_PEERS`] routers.
    #[error("a lab holds 2 to {} peers, not {count}", crate::MAX_PEERS)]
    PeerCount { count: usize },
    /// A file or directory of the lab (the case directory, a log file) could not be made.
    #[error("creating {path:?}: {error}")]
    Io { path: PathBuf, error: io::Error },
    /// A helper binary of this crate (`natlab_delay`, `natlab_tcp`) is not built.
    #[error("helper binary {name} not found in {searched:?}: build punch-tests' binaries or set NATLAB_BIN_DIR")]
    HelperNotFound {
        name: String,
        searched: Vec<PathBuf>,
    },
    /// The id does not belong to this lab.
    #[error("no process {id:?} in this lab")]
    UnknownProcess { id: ProcId },
    /// A spawned process exited, or `waited` passed, before it printed the expected line.
    #[error(
        "{label} (in {namespace}) {} without the expected line; stdout:\n{stdout}\nstderr:\n{stderr}",
        ended(*exited, *waited)
    )]
    NoLine {
        label: String,
        namespace: String,
        /// Its exit status when it exited, `None` when it still runs.
        exited: Option<ExitStatus>,
        waited: Duration,
        stdout: String,
        stderr: String,
    },
    /// A process was still running when it should have finished (it has been killed).
    #[error("{label} still running after {waited:?}; stderr: {stderr}")]
    StillRunning {
        label: String,
        waited: Duration,
        stderr: String,
    },
    /// A process printed a line the lab cannot read.
    #[error("{label} printed an unexpected line {line:?}")]
    BadOutput { label: String, line: String },
}

fn ended(exited: Option<ExitStatus>, waited: Duration) -> String {
    match exited {
        Some(status) => format!("exited ({status})"),
        None => format!("timed out after {waited:?}"),
    }
}

/// The lab's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
