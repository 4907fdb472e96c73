//! Host plumbing for the NAT lab: running `ip`, `iptables-restore` and `sysctl` (inside a
//! namespace through `ip netns exec`), namespace names, the privilege probe and the sweep of
//! namespaces left by interrupted runs.
//!
//! Names are `nlab-<pid>-<case>-<role>`: the pid says who created a namespace, so a sweep
//! removes only those whose creator is dead and never touches a running case.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Prefix of every namespace the lab creates.
pub const PREFIX: &str = "nlab-";

/// Runs `program args...` and fails with its stderr when it exits non-zero.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String> {
    run_with_input(program, args, None)
}

/// Like [`run`], feeding `input` to the command's stdin.
pub(crate) fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let command = || format!("{program} {}", args.join(" "));
    let exec = |error| Error::Exec {
        command: command(),
        error,
    };
    let mut child = cmd.spawn().map_err(exec)?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(exec)?;
    }
    let out = child.wait_with_output().map_err(exec)?;
    if !out.status.success() {
        return Err(Error::Command {
            command: command(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip -n <ns> <args...>`.
pub(crate) fn ip(ns: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Runs `program args...` inside namespace `ns`.
pub(crate) fn ns_exec(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Loads an `iptables-restore` ruleset into namespace `ns` (only the tables it names).
pub(crate) fn iptables_restore(ns: &str, rules: &str) -> Result<()> {
    run_with_input(
        "ip",
        &["netns", "exec", ns, "iptables-restore", "--noflush"],
        Some(rules),
    )
    .map_err(|cause| Error::Rules {
        namespace: ns.to_string(),
        rules: rules.to_string(),
        cause: Box::new(cause),
    })?;
    Ok(())
}

/// Sets sysctls inside `ns`; `required` ones must succeed, the others are best effort
/// (e.g. IPv6 or bridge-netfilter knobs a kernel may lack).
pub(crate) fn sysctls(ns: &str, required: &[&str], optional: &[&str]) -> Result<()> {
    if !required.is_empty() {
        let mut args = vec!["-qw"];
        args.extend_from_slice(required);
        ns_exec(ns, "sysctl", &args)?;
    }
    for kv in optional {
        let _ = ns_exec(ns, "sysctl", &["-qw", kv]);
    }
    Ok(())
}

/// Creates namespace `name` with its loopback up.
pub(crate) fn add_netns(name: &str) -> Result<()> {
    run("ip", &["netns", "add", name])?;
    ip(name, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Kills every process left in namespace `name`, then deletes it (which destroys its veths
/// and bridges). Missing namespaces are fine: deleting is idempotent.
pub(crate) fn del_netns(name: &str) {
    if !Path::new("/run/netns").join(name).exists() {
        return;
    }
    if let Ok(pids) = run("ip", &["netns", "pids", name]) {
        let me = std::process::id().to_string();
        for pid in pids.split_whitespace().filter(|p| *p != me) {
            // Only processes inside a namespace this lab made: all of them ours.
            let _ = run("kill", &["-KILL", pid]);
        }
    }
    if let Err(e) = run("ip", &["netns", "del", name]) {
        eprintln!("natlab: deleting namespace {name}: {e}");
    }
}

/// Names of existing namespaces starting with [`PREFIX`].
pub(crate) fn lab_namespaces() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(PREFIX))
        .collect();
    names.sort();
    names
}

/// The creator pid encoded in a lab namespace name, if it is one.
pub(crate) fn creator_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Removes lab namespaces whose creating process is dead (left by interrupted runs), killing
/// any process still inside them. Namespaces of live processes, this one included, are kept.
/// Returns the names removed.
pub fn sweep_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    for name in lab_namespaces() {
        let Some(pid) = creator_pid(&name) else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        del_netns(&name);
        removed.push(name);
    }
    if !removed.is_empty() {
        eprintln!("natlab: swept leftover namespaces: {}", removed.join(" "));
    }
    sweep_log_dirs();
    removed
}

/// Removes `natlab-<pid>-...` log directories (see `Lab::case_dir`) of dead processes.
fn sweep_log_dirs() {
    let tmp = std::env::temp_dir();
    let Ok(dir) = std::fs::read_dir(&tmp) else {
        return;
    };
    for entry in dir.filter_map(|e| e.ok()) {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("natlab-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Runs [`sweep_leftovers`] once per process.
pub(crate) fn sweep_once() {
    static SWEPT: OnceLock<()> = OnceLock::new();
    SWEPT.get_or_init(|| {
        sweep_leftovers();
    });
}

/// Why the lab cannot run here, or `None` when it can: needs CAP_NET_ADMIN, a working
/// `ip netns` (a probe namespace is created and deleted) and `iptables-restore`.
/// Computed once per process.
pub fn skip_reason() -> Option<&'static str> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    REASON.get_or_init(probe).as_deref()
}

/// True when this process can build labs (see [`skip_reason`]).
pub fn have_net_admin() -> bool {
    skip_reason().is_none()
}

/// For tests: when the lab cannot run here, writes `SKIPPED <test>: <reason>` straight to
/// the process's stderr (past libtest's output capture, so it shows even for a passing test)
/// and returns true; the test should then return.
pub fn skip_without_net_admin(test: &str) -> bool {
    let Some(reason) = skip_reason() else {
        return false;
    };
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED natlab test {test}: {reason} (needs root; see natlab/README.md)"
    );
    true
}

fn probe() -> Option<String> {
    const CAP_NET_ADMIN: u32 = 12;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    if cap_eff & (1 << CAP_NET_ADMIN) == 0 {
        return Some("no CAP_NET_ADMIN (run as root)".into());
    }
    if run("iptables-restore", &["--version"]).is_err() {
        return Some("iptables-restore not found (run scripts/setup.sh)".into());
    }
    let name = format!("{PREFIX}{}-probe", std::process::id());
    if let Err(e) = add_netns(&name) {
        del_netns(&name);
        return Some(format!("`ip netns add` does not work here: {e}"));
    }
    del_netns(&name);
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creator_pid_parses_lab_names_only() {
        assert_eq!(creator_pid("nlab-1234-7-ea"), Some(1234));
        assert_eq!(creator_pid("nlab-1234-probe"), Some(1234));
        assert_eq!(creator_pid("other-1234-7"), None);
        assert_eq!(creator_pid("nlab-x-7"), None);
    }
}
