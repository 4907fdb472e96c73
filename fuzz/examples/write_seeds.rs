//! Writes the seed inputs of the byte-level targets to `fuzz/seeds/<target>/<name>`:
//! `cargo run --example write_seeds` in `fuzz/` (stable is fine). The seeds are committed; the
//! workspace tests check that every one is still accepted.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let seeds = punch_fuzz::proto_checks::seeds()
        .into_iter()
        .chain(punch_fuzz::punch_checks::seeds());
    for (target, name, bytes) in seeds {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), &bytes)?;
        println!("{target}/{name}: {} bytes", bytes.len());
    }
    Ok(())
}
