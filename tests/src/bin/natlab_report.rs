//! Prints the NAT-lab punch matrix from the case results and writes the same text to a file.
//!
//! `natlab_report [RESULTS_DIR] [OUT_FILE]` (defaults: `$NATLAB_RESULTS` or
//! `target/natlab-results`, and `tests/natlab/RESULTS.md`). One table per link variant: rows
//! are peer A's router (the side that asks), columns peer B's; a cell is the outcome and the
//! time from the connect request to the open session. Exits non-zero when there are no results.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

const KINDS: [&str; 6] = [
    "home-eim",
    "home-eim-rst",
    "symmetric",
    "firewall-only",
    "public",
    "double-nat",
];

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(punch_tests::natlab::results_dir);
    let out = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("tests/natlab/RESULTS.md"));
    // variant -> (a, b) -> cell
    let mut tables: BTreeMap<String, BTreeMap<(String, String), String>> = BTreeMap::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("natlab_report: no results in {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    };
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            let [variant, a, b, kind, value] = f[..] else {
                continue;
            };
            let cell = match kind {
                "direct" => format!("direct {value} ms"),
                "relayed" => format!("relayed {value} ms"),
                "upgraded" => {
                    let (relayed, direct) = value.split_once('>').unwrap_or((value, "?"));
                    format!("relayed {relayed} ms, direct {direct} ms")
                }
                _ => format!(
                    "FAIL {:.1} s",
                    value.parse::<f64>().unwrap_or(f64::NAN) / 1000.0
                ),
            };
            tables
                .entry(variant.to_string())
                .or_default()
                .insert((a.to_string(), b.to_string()), cell);
        }
    }
    if tables.is_empty() {
        eprintln!("natlab_report: no results in {}", dir.display());
        return ExitCode::FAILURE;
    }
    let mut text = String::from(
        "# NAT lab punch matrix\n\nWritten by `natlab_report` (scripts/test.sh regenerates it) from the last run of \
         `tests/tests/natlab_matrix.rs` (see natlab/README.md). Rows: the router of peer A \
         (it runs `punch connect`); columns: the router of peer B (`punch listen`). A cell is the \
         outcome and the time from the connect request to the open, authenticated session: \
         direct, relayed through the rendezvous, or relayed first and then moved to a direct \
         connection (both times); FAIL is a typed failure and how long it took (none is \
         expected). Expected relayed: symmetric against anything but a public host.\n",
    );
    for (variant, cells) in &tables {
        let _ = write!(text, "\n## {variant}\n\n| A \\ B |");
        for k in KINDS {
            let _ = write!(text, " {k} |");
        }
        text.push_str("\n|---|");
        text.push_str(&"---|".repeat(KINDS.len()));
        text.push('\n');
        for a in KINDS {
            let _ = write!(text, "| **{a}** |");
            for b in KINDS {
                let cell = cells
                    .get(&(a.to_string(), b.to_string()))
                    .map(String::as_str)
                    .unwrap_or("");
                let _ = write!(text, " {cell} |");
            }
            text.push('\n');
        }
        if let Some(cell) = cells.get(&("same-router".to_string(), "same-router".to_string())) {
            let _ = writeln!(text, "\nBoth peers behind one home router: {cell}.");
        }
    }
    print!("{text}");
    if let Err(e) = std::fs::write(&out, &text) {
        eprintln!("natlab_report: writing {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    eprintln!("natlab_report: matrix written to {}", out.display());
    ExitCode::SUCCESS
}
