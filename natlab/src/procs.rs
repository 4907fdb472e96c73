//! Processes a lab runs inside its namespaces (`ip netns exec <ns> <program>`), with stdout
//! and stderr captured to `<case dir>/<label>.stdout|stderr`, the caller's environment plus
//! the `Command`'s own, and SIGKILL for whatever still runs when the lab is dropped.
//!
//! `ip netns exec` execs the program in place, so the child's pid is the program's own.

use crate::error::{Error, Result};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often waits poll a child or its output: short against the lab's timings (tens of
/// ms), long enough not to burn a core.
const POLL: Duration = Duration::from_millis(10);

/// Handle of a process spawned in a lab (see `Lab::spawn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcId(usize);

#[derive(Debug)]
struct Proc {
    label: String,
    ns: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    status: Option<ExitStatus>,
}

/// The processes of one lab.
#[derive(Debug, Default)]
pub(crate) struct Procs {
    list: Mutex<Vec<Proc>>,
}

impl Procs {
    fn lock(&self) -> MutexGuard<'_, Vec<Proc>> {
        // A panic while holding the lock cannot leave the list inconsistent: keep going.
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spawns `cmd` (program, args, env, current dir) inside `ns`, output to files in `dir`.
    pub(crate) fn spawn(&self, dir: &Path, label: &str, ns: &str, cmd: &Command) -> Result<ProcId> {
        let mut list = self.lock();
        let label = if list.iter().any(|p| p.label == label) {
            format!("{label}.{}", list.len())
        } else {
            label.to_string()
        };
        let stdout = dir.join(format!("{label}.stdout"));
        let stderr = dir.join(format!("{label}.stderr"));
        let mut wrapped = Command::new("ip");
        wrapped
            .args(["netns", "exec", ns])
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .stdin(Stdio::null())
            .stdout(create(&stdout)?)
            .stderr(create(&stderr)?);
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            wrapped.current_dir(d);
        }
        let child = wrapped.spawn().map_err(|error| Error::Exec {
            command: format!("ip netns exec {ns} {}", cmd.get_program().to_string_lossy()),
            error,
        })?;
        list.push(Proc {
            label,
            ns: ns.to_string(),
            child,
            stdout,
            stderr,
            status: None,
        });
        Ok(ProcId(list.len() - 1))
    }

    fn with<T>(&self, id: ProcId, f: impl FnOnce(&mut Proc) -> T) -> Result<T> {
        let mut list = self.lock();
        let p = list.get_mut(id.0).ok_or(Error::UnknownProcess { id })?;
        Ok(f(p))
    }

    /// The exit status if the process has ended.
    pub(crate) fn try_wait(&self, id: ProcId) -> Result<Option<ExitStatus>> {
        self.with(id, |p| {
            if p.status.is_none() {
                p.status = p.child.try_wait().map_err(|error| Error::Exec {
                    command: format!("{} (in {})", p.label, p.ns),
                    error,
                })?;
            }
            Ok(p.status)
        })?
    }

    /// Waits up to `timeout` for the process to end.
    pub(crate) fn wait_timeout(&self, id: ProcId, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait(id)? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGKILLs the process (if still running) and reaps it.
    pub(crate) fn kill(&self, id: ProcId) -> Result<()> {
        self.with(id, |p| {
            if p.status.is_none() {
                let _ = p.child.kill();
                p.status = p.child.wait().ok();
            }
        })
    }

    /// Kills and reaps every process, in reverse start order.
    pub(crate) fn kill_all(&self) {
        let mut list = self.lock();
        for p in list.iter_mut().rev() {
            if p.status.is_none() {
                let _ = p.child.kill();
                p.status = p.child.wait().ok();
            }
        }
    }

    /// Paths of the captured stdout and stderr.
    pub(crate) fn log_paths(&self, id: ProcId) -> Result<(PathBuf, PathBuf)> {
        self.with(id, |p| (p.stdout.clone(), p.stderr.clone()))
    }

    /// Everything the process wrote to stdout so far.
    pub(crate) fn stdout(&self, id: ProcId) -> Result<String> {
        let (out, _) = self.log_paths(id)?;
        Ok(std::fs::read_to_string(out).unwrap_or_default())
    }

    /// Everything the process wrote to stderr so far.
    pub(crate) fn stderr(&self, id: ProcId) -> Result<String> {
        let (_, err) = self.log_paths(id)?;
        Ok(std::fs::read_to_string(err).unwrap_or_default())
    }

    /// Waits up to `timeout` for a stdout line satisfying `pred` and returns it. Fails early,
    /// with the process's stderr, if it exits without printing one.
    pub(crate) fn wait_line(
        &self,
        id: ProcId,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.stdout(id)?;
            // Only complete lines: the writer may be mid-line.
            let complete = out.rfind('\n').map_or("", |i| &out[..i]);
            if let Some(line) = complete.lines().find(|l| pred(l)) {
                return Ok(line.to_string());
            }
            let exited = self.try_wait(id)?;
            if exited.is_some() || Instant::now() >= deadline {
                let (label, namespace) = self.with(id, |p| (p.label.clone(), p.ns.clone()))?;
                return Err(Error::NoLine {
                    label,
                    namespace,
                    exited,
                    waited: timeout,
                    stdout: out,
                    stderr: self.stderr(id)?,
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// The label the process was spawned with (made unique within the lab).
    pub(crate) fn label(&self, id: ProcId) -> Result<String> {
        self.with(id, |p| p.label.clone())
    }

    /// All captured output, labelled, for failure reports.
    pub(crate) fn dump(&self) -> String {
        let list = self.lock();
        let mut s = String::new();
        for p in list.iter() {
            for (kind, path) in [("stdout", &p.stdout), ("stderr", &p.stderr)] {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                if !text.is_empty() {
                    s.push_str(&format!("----- {} ({}) {kind}\n{text}", p.label, p.ns));
                    if !text.ends_with('\n') {
                        s.push('\n');
                    }
                }
            }
        }
        s
    }
}

fn create(path: &Path) -> Result<File> {
    File::create(path).map_err(|error| Error::Io {
        path: path.to_path_buf(),
        error,
    })
}
