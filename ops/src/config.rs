//! Configuration layers for the binaries: every long flag of a clap-derived command can also be
//! set from an environment variable and from a TOML file given with `--config FILE`.
//!
//! Precedence, highest first: command line, environment, file, the flag's default.
//!
//! - **Environment**: flag `--max-peers` of a binary with prefix `RENDEZVOUS` is
//!   `RENDEZVOUS_MAX_PEERS` ([`env_name`]); `--help` shows each variable. Switches (flags without
//!   a value) take `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`); a repeatable flag takes
//!   one value from the environment. `--config` itself is `PREFIX_CONFIG`.
//! - **File**: keys are the long flag names, with dashes or underscores (`max-peers` or
//!   `max_peers`); values are strings, numbers, booleans (switches) or arrays (repeatable flags).
//!   For a command with subcommands (`punch`), top-level keys apply to whichever subcommand runs
//!   if it has that flag (so `rendezvous = "..."` serves `listen`, `connect` and `discover`),
//!   and a table named after a subcommand (`[listen]`) applies to it only, over the top-level
//!   keys. A key no command knows, a wrong type or an invalid value is refused at start, naming
//!   the key, the flag and the file.
//!
//! How: a first, lenient parse finds `--config` and which flags the command line and the
//! environment already set; the file's values for the other flags are then added to the
//! arguments and the real parse runs, so clap's own checks (value parsers, conflicts, required
//! flags) see file values as if typed. [`Effective::to_toml`] prints the result as a file
//! `--config` accepts back.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};

/// The id and long name of the configuration file flag.
pub const CONFIG_FLAG: &str = "config";

/// Flags that are never read from the environment or a file, nor printed: clap's own, the file
/// flag itself, and `--print-config` (a printed file read back must not print again).
const NOT_LAYERED: &[&str] = &["help", "version", CONFIG_FLAG, "print-config"];

/// The environment variable of flag `--long` for a binary with `prefix`:
/// `env_name("RENDEZVOUS", "max-peers")` is `RENDEZVOUS_MAX_PEERS`.
pub fn env_name(prefix: &str, long: &str) -> String {
    format!("{prefix}_{}", long.replace('-', "_").to_ascii_uppercase())
}

/// `T`'s command with an environment variable on every long flag (subcommands included) and a
/// global `--config FILE`.
pub fn command<T: CommandFactory>(env_prefix: &str) -> Command {
    with_env(T::command(), env_prefix).arg(
        Arg::new(CONFIG_FLAG)
            .long(CONFIG_FLAG)
            .value_name("FILE")
            .global(true)
            .env(leak(env_name(env_prefix, CONFIG_FLAG)))
            .value_parser(clap::value_parser!(PathBuf))
            .help(
                "TOML file of flag values, keys named as the long flags (max-peers or \
                 max_peers). Precedence: command line, then environment, then this file, then \
                 the default. Default: none",
            ),
    )
}

/// A name clap can hold: without clap's `string` feature (which every clap user in the
/// workspace would get) an `Arg` takes only `&'static str`. A few bytes per flag, once per parse.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn with_env(cmd: Command, prefix: &str) -> Command {
    cmd.mut_args(|arg| {
        let Some(long) = arg.get_long().map(str::to_owned) else {
            return arg;
        };
        if NOT_LAYERED.contains(&long.as_str()) {
            return arg;
        }
        let arg = arg.env(leak(env_name(prefix, &long)));
        if is_switch(&arg) {
            // `RENDEZVOUS_IGNORE_FD_LIMIT=1` as well as `=true`; still a bool.
            arg.value_parser(BoolishValueParser::new())
        } else {
            arg
        }
    })
    .mut_subcommands(|sub| with_env(sub, prefix))
}

/// Parses `T` from the process's arguments, environment and `--config` file; on an error (or
/// `--help`, `--version`) prints it and exits as clap does (code 2 for an error).
pub fn parse<T: CommandFactory + FromArgMatches>(env_prefix: &str) -> (T, Effective) {
    match try_parse_from(env_prefix, std::env::args_os()) {
        Ok(parsed) => parsed,
        Err(e) => e.exit(),
    }
}

/// [`parse`] from the given arguments (the first is the binary name); the environment is the
/// process's.
pub fn try_parse_from<T, I, S>(env_prefix: &str, args: I) -> Result<(T, Effective), clap::Error>
where
    T: CommandFactory + FromArgMatches,
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let (matches, effective) = try_layered_from(command::<T>(env_prefix), CONFIG_FLAG, args)?;
    let parsed =
        T::from_arg_matches(&matches).map_err(|e| e.format(&mut effective.command.clone()))?;
    Ok((parsed, effective))
}

/// The layers for a command built by hand: `cmd` already has its environment variables and a
/// flag `--config_flag FILE` (a program whose flags live beside another's, as kaspad-punch's
/// beside kaspad's, names it apart: `punch-config`). The file's keys are `cmd`'s long flags;
/// precedence and errors as for [`parse`].
pub fn try_layered_from<I, S>(
    mut cmd: Command,
    config_flag: &'static str,
    args: I,
) -> Result<(ArgMatches, Effective), clap::Error>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let argv: Vec<OsString> = args.into_iter().map(Into::into).collect();
    // A command line clap refuses even leniently (`--help`) gets no file: the real parse
    // below reports it.
    let (argv, file) = match lenient(&cmd).try_get_matches_from(argv.clone()) {
        Ok(first) => add_file_values(&cmd, config_flag, &first, argv)?,
        Err(_) => (argv, FileValues::default()),
    };
    let matches = cmd
        .try_get_matches_from_mut(&argv)
        .map_err(|e| explain(e, &cmd, &argv, &file))?;
    Ok((
        matches.clone(),
        Effective {
            command: cmd,
            config_flag,
            matches,
            file,
        },
    ))
}

/// `cmd` with nothing required and errors ignored: the first parse only learns `--config`, the
/// subcommand and which flags the command line or environment set.
fn lenient(cmd: &Command) -> Command {
    fn relax(cmd: Command) -> Command {
        let groups: Vec<String> = cmd.get_groups().map(|g| g.get_id().to_string()).collect();
        let mut cmd = cmd
            .mut_args(|a| a.required(false))
            .subcommand_required(false)
            .arg_required_else_help(false)
            .mut_subcommands(relax);
        for group in groups {
            cmd = cmd.mut_group(group, |g| g.required(false));
        }
        cmd
    }
    relax(cmd.clone()).ignore_errors(true)
}

/// Values taken from the configuration file, by long flag name.
#[derive(Debug, Default, Clone)]
struct FileValues {
    path: PathBuf,
    /// Long flag name -> the key as the file spells it (`[listen] allow`, `max_peers`).
    keys: BTreeMap<String, String>,
}

/// One file entry for a flag of a command.
struct Entry<'a> {
    key: String,
    arg: &'a Arg,
    value: &'a toml::Value,
}

fn add_file_values(
    cmd: &Command,
    config_flag: &'static str,
    first: &ArgMatches,
    mut argv: Vec<OsString>,
) -> Result<(Vec<OsString>, FileValues), clap::Error> {
    let sub = first.subcommand();
    let path = first
        .try_get_one::<PathBuf>(config_flag)
        .ok()
        .flatten()
        .or_else(|| sub.and_then(|(_, m)| m.try_get_one::<PathBuf>(config_flag).ok().flatten()));
    let Some(path) = path.cloned() else {
        return Ok((argv, FileValues::default()));
    };
    let origin = format!("--{config_flag} {}", path.display());
    let origin = origin.as_str();
    let text = std::fs::read_to_string(&path)
        .map_err(|e| error(ErrorKind::Io, format!("{origin}: {e}")))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| error(ErrorKind::InvalidValue, format!("{origin}: not TOML: {e}")))?;
    let leaf = sub.and_then(|(name, _)| cmd.find_subcommand(name));
    let mut root: BTreeMap<String, Entry> = BTreeMap::new();
    let mut flat: BTreeMap<String, Entry> = BTreeMap::new();
    let mut table_of_leaf: BTreeMap<String, Entry> = BTreeMap::new();
    for (key, value) in &table {
        let name = key.replace('_', "-");
        if let Some(sc) = cmd.get_subcommands().find(|s| s.get_name() == name) {
            let toml::Value::Table(inner) = value else {
                return Err(file_error(
                    origin,
                    key,
                    &format!("`{name}` is a subcommand: expected a table [{name}]"),
                ));
            };
            let mut entries = BTreeMap::new();
            for (k, v) in inner {
                let long = k.replace('_', "-");
                let spelled = format!("[{name}] {k}");
                let arg = find_long(sc, &long, config_flag).ok_or_else(|| {
                    file_error(origin, &spelled, &format!("`{name}` has no flag --{long}"))
                })?;
                insert(&mut entries, origin, long, spelled, arg, v)?;
            }
            if leaf.is_some_and(|l| l.get_name() == sc.get_name()) {
                table_of_leaf = entries;
            }
        } else if let Some(arg) = find_long(cmd, &name, config_flag) {
            insert(&mut root, origin, name, key.clone(), arg, value)?;
        } else if let Some(arg) = leaf.and_then(|l| find_long(l, &name, config_flag)) {
            insert(&mut flat, origin, name, key.clone(), arg, value)?;
        } else if !cmd
            .get_subcommands()
            .any(|s| find_long(s, &name, config_flag).is_some())
        {
            return Err(file_error(origin, key, &format!("no flag --{name}")));
        }
        // Otherwise a flag of another subcommand: not for this run.
    }
    flat.extend(table_of_leaf);

    let mut file = FileValues {
        path: path.clone(),
        keys: BTreeMap::new(),
    };
    // Root flags go right after the binary name, the subcommand's at the end (before a `--`).
    let mut front = Vec::new();
    for (long, entry) in &root {
        // A global flag typed after the subcommand is in the subcommand's matches.
        let in_sub =
            entry.arg.is_global_set() && sub.is_some_and(|(_, m)| set_elsewhere(m, entry.arg));
        if !set_elsewhere(first, entry.arg) && !in_sub {
            front.extend(tokens(origin, entry)?);
            file.keys.insert(long.clone(), entry.key.clone());
        }
    }
    let mut back = Vec::new();
    if let Some((_, m)) = sub {
        for (long, entry) in &flat {
            if !set_elsewhere(m, entry.arg) {
                back.extend(tokens(origin, entry)?);
                file.keys.insert(long.clone(), entry.key.clone());
            }
        }
    }
    let end = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
    argv.splice(end..end, back);
    let start = argv.len().min(1);
    argv.splice(start..start, front);
    Ok((argv, file))
}

fn insert<'a>(
    map: &mut BTreeMap<String, Entry<'a>>,
    origin: &str,
    long: String,
    key: String,
    arg: &'a Arg,
    value: &'a toml::Value,
) -> Result<(), clap::Error> {
    if let Some(other) = map.get(&long) {
        return Err(file_error(
            origin,
            &key,
            &format!("--{long} is also set by key `{}`", other.key),
        ));
    }
    map.insert(long, Entry { key, arg, value });
    Ok(())
}

/// Whether the command line or the environment set this flag (the file does not override).
fn set_elsewhere(m: &ArgMatches, arg: &Arg) -> bool {
    matches!(
        m.value_source(arg.get_id().as_str()),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

fn find_long<'a>(cmd: &'a Command, long: &str, config_flag: &str) -> Option<&'a Arg> {
    if NOT_LAYERED.contains(&long) || long == config_flag {
        return None;
    }
    cmd.get_arguments().find(|a| a.get_long() == Some(long))
}

fn is_switch(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

fn is_repeatable(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
}

/// A file value as command-line arguments: `--flag=value`, once per array item for a
/// repeatable flag, `--flag` for a switch set to its non-default.
fn tokens(origin: &str, entry: &Entry) -> Result<Vec<OsString>, clap::Error> {
    let long = entry.arg.get_long().unwrap_or_default();
    let wrong = |what: &str| file_error(origin, &entry.key, &format!("--{long} {what}"));
    if is_switch(entry.arg) {
        let toml::Value::Boolean(on) = entry.value else {
            return Err(wrong("is a switch: expected true or false"));
        };
        let flips = *on == matches!(entry.arg.get_action(), ArgAction::SetTrue);
        return Ok(if flips {
            vec![format!("--{long}").into()]
        } else {
            Vec::new()
        });
    }
    let one = |v: &toml::Value| -> Result<OsString, clap::Error> {
        let text = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Datetime(d) => d.to_string(),
            toml::Value::Array(_) | toml::Value::Table(_) => {
                return Err(wrong("takes a string or a number"))
            }
        };
        Ok(format!("--{long}={text}").into())
    };
    match entry.value {
        toml::Value::Array(items) if is_repeatable(entry.arg) => items.iter().map(one).collect(),
        toml::Value::Array(_) => Err(wrong("takes one value, not an array")),
        v => Ok(vec![one(v)?]),
    }
}

/// Says where a value clap refused came from when it was the file or the environment.
fn explain(e: clap::Error, cmd: &Command, argv: &[OsString], file: &FileValues) -> clap::Error {
    let Some(ContextValue::String(invalid)) = e.get(ContextKind::InvalidArg) else {
        return e;
    };
    let long = invalid
        .trim_start_matches('-')
        .split([' ', '='])
        .next()
        .unwrap_or_default()
        .to_owned();
    let origin = if let Some(key) = file.keys.get(&long) {
        format!("key `{key}` in {}", file.path.display())
    } else {
        let typed = argv.iter().any(|a| {
            a.to_str()
                .is_some_and(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")))
        });
        let env = all_args(cmd)
            .find(|a| a.get_long() == Some(long.as_str()))
            .and_then(|a| a.get_env().map(|e| e.to_os_string()));
        match env {
            Some(env) if !typed && std::env::var_os(&env).is_some() => {
                format!("environment variable {}", env.to_string_lossy())
            }
            _ => return e,
        }
    };
    let first = e.to_string();
    let first = first.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    error(e.kind(), format!("{first} (from {origin})"))
}

fn all_args(cmd: &Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments()
        .chain(cmd.get_subcommands().flat_map(|s| s.get_arguments()))
}

/// `origin`: the flag and the file, `--config rendezvous.toml`.
fn file_error(origin: &str, key: &str, what: &str) -> clap::Error {
    error(
        ErrorKind::ValueValidation,
        format!("{origin}: key `{key}`: {what}"),
    )
}

fn error(kind: ErrorKind, message: String) -> clap::Error {
    clap::Error::raw(kind, format!("{message}\n"))
}

/// The configuration a parse arrived at, for `--print-config`.
#[derive(Debug)]
pub struct Effective {
    command: Command,
    config_flag: &'static str,
    matches: ArgMatches,
    file: FileValues,
}

impl Effective {
    /// Every layered flag and its value as TOML that `--config` accepts back, each line with a
    /// comment saying where the value came from; flags without a value are commented out.
    /// A subcommand's flags (not the global ones) go in a table named after it.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, &self.command, &self.matches, false);
        if let Some((name, m)) = self.matches.subcommand() {
            if let Some(sub) = self.command.find_subcommand(name) {
                let _ = writeln!(out, "\n[{name}]");
                self.write(&mut out, sub, m, true);
            }
        }
        out
    }

    /// Where the value of flag `--long` came from: `command line`, `environment NAME`,
    /// `file PATH`, `default`, or `None` if it has none.
    pub fn source(&self, long: &str) -> Option<String> {
        let (arg, m) = self.find(long)?;
        self.source_of(arg, m)
    }

    fn find(&self, long: &str) -> Option<(&Arg, &ArgMatches)> {
        if let Some(arg) = find_long(&self.command, long, self.config_flag) {
            return Some((arg, &self.matches));
        }
        let (name, m) = self.matches.subcommand()?;
        let arg = find_long(self.command.find_subcommand(name)?, long, self.config_flag)?;
        Some((arg, m))
    }

    fn source_of(&self, arg: &Arg, m: &ArgMatches) -> Option<String> {
        let long = arg.get_long()?;
        if self.file.keys.contains_key(long) {
            return Some(format!("file {}", self.file.path.display()));
        }
        Some(match m.value_source(arg.get_id().as_str())? {
            ValueSource::CommandLine => "command line".to_owned(),
            ValueSource::EnvVariable => format!(
                "environment {}",
                arg.get_env().unwrap_or_default().to_string_lossy()
            ),
            _ => "default".to_owned(),
        })
    }

    fn write(&self, out: &mut String, cmd: &Command, m: &ArgMatches, nested: bool) {
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if NOT_LAYERED.contains(&long)
                || long == self.config_flag
                || (nested && arg.is_global_set())
            {
                continue;
            }
            let id = arg.get_id().as_str();
            let value = if is_switch(arg) {
                m.get_one::<bool>(id).map(|b| b.to_string())
            } else {
                let raw: Vec<String> = m
                    .get_raw(id)
                    .map(|r| r.map(|v| toml_scalar(&v.to_string_lossy())).collect())
                    .unwrap_or_default();
                match raw.as_slice() {
                    [] => None,
                    [one] if !is_repeatable(arg) => Some(one.clone()),
                    many => Some(format!("[{}]", many.join(", "))),
                }
            };
            let _ = match (value, self.source_of(arg, m)) {
                (Some(v), Some(source)) => writeln!(out, "{long} = {v}  # {source}"),
                (Some(v), None) => writeln!(out, "{long} = {v}"),
                (None, _) => writeln!(out, "# {long} = (not set)"),
            };
        }
    }
}

/// A value as a TOML integer if it reads as one, else a quoted string.
fn toml_scalar(s: &str) -> String {
    if s.parse::<i64>().is_ok() {
        s.to_owned()
    } else {
        toml::Value::String(s.to_owned()).to_string()
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
