//! `cargo xtask gen | check`.

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let root = xtask::repo_root();
    match std::env::args().nth(1).as_deref() {
        Some("gen") => {
            for (path, text) in xtask::generated()? {
                let full = root.join(&path);
                if let Some(dir) = full.parent() {
                    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
                }
                std::fs::write(&full, text).with_context(|| full.display().to_string())?;
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Some("check") => {
            let stale = xtask::drift(&root)?;
            if stale.is_empty() {
                println!("generated files are up to date");
                return Ok(());
            }
            for p in &stale {
                eprintln!("stale: {} (run `cargo xtask gen`)", p.display());
            }
            bail!(
                "{} generated file(s) differ from the Rust types",
                stale.len()
            )
        }
        _ => bail!(
            "usage: cargo xtask gen | check\n  gen    write config/crds/*.yaml from serving-api\n  check  fail if they differ"
        ),
    }
}
