//! Configuration of the real binaries: `--help` states every flag's unit and default, a
//! `--config` file and `RENDEZVOUS_*` variables reach the rendezvous (seen through
//! `--print-config`, whose output reads back), an invalid file value is refused at start naming
//! the flag, and `--log-format json` writes JSON lines.

use std::path::Path;
use std::process::{Command, Output};

use punch_tests::{bin_path, unique_temp_dir};

/// Runs binary `name` with `args` and `env`, in an environment without RENDEZVOUS_* or PUNCH_*
/// variables of the caller's.
fn run(name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin_path(name));
    for (key, _) in std::env::vars() {
        if key.starts_with("RENDEZVOUS_") || key.starts_with("PUNCH_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The options of a `--help` output: (flag, its whole block of text).
fn options(help: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        // Option lines are indented 2 (`  -h, --help`) or 6 (`      --max-peers`) spaces;
        // their help text 10.
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.starts_with('-') && indent <= 6 {
            let flag = trimmed
                .split([' ', ','])
                .find(|w| w.starts_with("--"))
                .unwrap_or(trimmed)
                .to_owned();
            out.push((flag, line.to_owned()));
        } else if let Some((_, block)) = out.last_mut() {
            if !line.trim().is_empty() && indent > 6 {
                block.push('\n');
                block.push_str(line);
            } else if indent <= 6 && !line.trim().is_empty() {
                // A new section ("Arguments:", ...).
                out.push((String::new(), String::new()));
            }
        }
    }
    out.retain(|(flag, _)| !flag.is_empty());
    out
}

/// Checks every option of one `--help` output; returns the problems found.
fn check_help(what: &str, help: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let opts = options(help);
    assert!(opts.len() > 2, "{what}: no options found in\n{help}");
    for (flag, block) in opts {
        if flag == "--help" || flag == "--version" {
            continue;
        }
        let text = block.to_lowercase();
        let takes_value = block.lines().next().is_some_and(|l| l.contains('<'));
        let stated = ["[default:", "default:", "required"]
            .iter()
            .any(|s| text.contains(s));
        if takes_value && !stated {
            problems.push(format!("{what} {flag}: no default stated"));
        }
        let unit = if flag.ends_with("-secs") {
            Some("seconds")
        } else if flag.ends_with("-ms") {
            Some("milliseconds")
        } else if flag.ends_with("-bytes") || flag.contains("-rate-") {
            Some("bytes")
        } else if flag.contains("per-minute") {
            Some("per minute")
        } else {
            None
        };
        if let Some(unit) = unit {
            if !text.contains(unit) {
                problems.push(format!("{what} {flag}: unit ({unit}) not stated"));
            }
        }
        // --print-config is an action, never a setting.
        if !block.contains("[env: ") && flag != "--print-config" {
            problems.push(format!("{what} {flag}: no environment variable shown"));
        }
    }
    problems
}

#[test]
fn help_states_every_flags_unit_default_and_variable() {
    let mut problems = Vec::new();
    let out = run("rendezvous", &["--help"], &[]);
    assert!(out.status.success());
    let help = stdout(&out);
    assert!(help.contains("RENDEZVOUS_MAX_PEERS"), "{help}");
    problems.extend(check_help("rendezvous", &help));
    for sub in ["listen", "connect", "discover", "keygen", "id", "status"] {
        let out = run("punch", &[sub, "--help"], &[]);
        assert!(out.status.success());
        problems.extend(check_help(&format!("punch {sub}"), &stdout(&out)));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn print_config(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = vec!["--print-config"];
    all.extend_from_slice(args);
    let out = run("rendezvous", &all, env);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

/// The value lines of a printed configuration, without their source comments.
fn values(printed: &str) -> Vec<String> {
    printed
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split("  #").next().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn rendezvous_reads_file_and_environment_and_prints_them_back() {
    let dir = unique_temp_dir("punch-config");
    let file = dir.join("rendezvous.toml");
    std::fs::write(
        &file,
        "max-peers = 1234\nrelay_idle_secs = 77\nrelay = \"off\"\nignore-fd-limit = true\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let printed = print_config(
        &["--config", f, "--handshake-timeout-secs", "9"],
        &[("RENDEZVOUS_RELAY_IDLE_SECS", "88")],
    );
    let file_source = format!("# file {f}");
    for (line, source) in [
        ("max-peers = 1234", file_source.as_str()),
        ("relay = \"off\"", file_source.as_str()),
        ("ignore-fd-limit = true", file_source.as_str()),
        (
            "relay-idle-secs = 88",
            "# environment RENDEZVOUS_RELAY_IDLE_SECS",
        ),
        ("handshake-timeout-secs = 9", "# command line"),
        ("max-handshakes = ", "# default"),
    ] {
        let found = printed.lines().find(|l| l.starts_with(line));
        assert!(
            found.is_some_and(|l| l.ends_with(source)),
            "{line} ... {source}:\n{printed}"
        );
    }
    // The open files the configuration needs: relay off, so no relay sessions.
    assert!(printed.contains("# open files needed: "), "{printed}");

    // What it prints reads back to the same configuration.
    let again_file = dir.join("printed.toml");
    std::fs::write(&again_file, &printed).unwrap();
    let again = print_config(&["--config", again_file.to_str().unwrap()], &[]);
    assert_eq!(values(&again), values(&printed));
    assert!(again.contains("open files needed"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_invalid_file_value_is_refused_at_start_naming_the_flag() {
    let dir = unique_temp_dir("punch-config");
    for (name, text, flag) in [
        ("zero", "max-handshakes = 0\n", "--max-handshakes"),
        ("word", "max_peers = \"lots\"\n", "--max-peers"),
        ("enum", "relay = \"maybe\"\n", "--relay"),
        ("unknown", "max-peer = 10\n", "max-peer"),
    ] {
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(&file, text).unwrap();
        let key = dir.join("never-created.key");
        let out = run(
            "rendezvous",
            &[
                "--config",
                file.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--key-file",
                key.to_str().unwrap(),
            ],
            &[],
        );
        let err = stderr(&out);
        assert!(!out.status.success(), "{name}: started");
        assert!(err.contains(flag), "{name}: {err}");
        assert!(err.contains(file.to_str().unwrap()), "{name}: {err}");
        assert!(!Path::new(&key).exists(), "{name}: the key was created");
    }
    // From the environment: the variable is named.
    let out = run(
        "rendezvous",
        &["--listen", "127.0.0.1:0"],
        &[("RENDEZVOUS_IDLE_TIMEOUT_SECS", "1")],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("--idle-timeout-secs"), "{err}");
    assert!(err.contains("RENDEZVOUS_IDLE_TIMEOUT_SECS"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    let dir = unique_temp_dir("punch-config");
    let key = dir.join("rendezvous.key");
    // A --max-peers no open-files limit covers: the server logs the new key (info), then
    // refuses to start, so nothing needs killing.
    let out = run(
        "rendezvous",
        &[
            "--listen",
            "127.0.0.1:0",
            "--key-file",
            key.to_str().unwrap(),
            "--max-peers",
            "1000000000000",
        ],
        &[("RENDEZVOUS_LOG_FORMAT", "json"), ("RUST_LOG", "info")],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.contains("created a new server key"))
        .unwrap_or_else(|| panic!("no key line in\n{err}"));
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    assert!(line.contains("\"level\":\"INFO\""), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}
