//! `cargo xtask fuzz [--seconds N] [TARGET]...`: the cargo-fuzz targets in `fuzz/`
//! (what a guest, an agent or a file controls), each run for a fixed time with
//! libFuzzer, printing its run count. `cargo xtask test` runs every target.
//!
//! Installs cargo-fuzz from crates.io when it is missing; builds with the nightly
//! toolchain into the cache (`~/.cache/brig/fuzz/target`). The corpus grows in the
//! cache too (`~/.cache/brig/fuzz/corpus/<target>`),
//! starting from `fuzz/seeds/<target>`. A crash fails the run and names the input
//! libFuzzer saved (`fuzz/artifacts/<target>/`): turn it into a unit test.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// Every target, in the order they run.
pub const TARGETS: &[&str] =
    &["virtio_mmio", "vsock_packets", "control_socket", "state_file", "agent_reply", "evidence"];
/// Seconds per target in `cargo xtask test` (BRIG_FUZZ_SECONDS overrides it).
pub const DEFAULT_SECONDS: u64 = 60;

/// One target's run.
#[derive(Debug)]
pub struct Report {
    pub target: String,
    pub runs: u64,
    pub seconds: f64,
    pub corpus: usize,
}

/// A command for the nightly cargo, without the variables the stable cargo that
/// runs xtask set (they would point the nightly build at stable's tools).
fn nightly_cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly").current_dir(crate::workspace_root());
    for var in ["CARGO", "RUSTC", "RUSTDOC", "RUSTUP_TOOLCHAIN", "RUSTC_WRAPPER", "CARGO_TARGET_DIR"] {
        cmd.env_remove(var);
    }
    cmd
}

fn ensure_cargo_fuzz() -> Result<()> {
    let found = nightly_cargo().args(["fuzz", "--version"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    if found.is_ok_and(|s| s.success()) {
        return Ok(());
    }
    eprintln!("fuzz: installing cargo-fuzz from crates.io");
    let status = Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .context("starting cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz failed ({status})");
    }
    Ok(())
}

/// Builds every target, then runs each of `targets` for `seconds`.
pub fn run(targets: &[&str], seconds: u64) -> Result<Vec<Report>> {
    for target in targets {
        if !TARGETS.contains(target) {
            bail!("unknown fuzz target `{target}`; the targets are {}", TARGETS.join(", "));
        }
    }
    ensure_cargo_fuzz()?;
    let cache = brig_rootfs_builder::cache::root()?.join("fuzz");
    // The build lives in the cache too, so CI's clean clone does not rebuild it.
    let target_dir = cache.join("target");
    let status = nightly_cargo()
        .args(["fuzz", "build", "--target-dir"])
        .arg(&target_dir)
        .status()
        .context("starting cargo fuzz build")?;
    if !status.success() {
        bail!("cargo fuzz build failed ({status})");
    }
    targets.iter().map(|target| run_one(target, seconds, &cache.join("corpus").join(target), &target_dir)).collect()
}

fn run_one(target: &str, seconds: u64, corpus: &Path, target_dir: &Path) -> Result<Report> {
    std::fs::create_dir_all(corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let seeds = crate::workspace_root().join("fuzz/seeds").join(target);
    let mut cmd = nightly_cargo();
    cmd.args(["fuzz", "run", "--target-dir"]).arg(target_dir).arg(target).arg(corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    cmd.arg("--").arg(format!("-max_total_time={seconds}")).args([
        "-timeout=10",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
    ]);
    let start = Instant::now();
    let out = cmd.stdin(Stdio::null()).output().context("starting cargo fuzz run")?;
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "fuzz target {target} failed ({}); libFuzzer's input is under fuzz/artifacts/{target}/:\n{}",
            out.status,
            tail.join("\n")
        );
    }
    let runs = stat(&log, "stat::number_of_executed_units:")
        .with_context(|| format!("fuzz target {target} printed no run count:\n{log}"))?;
    if runs == 0 {
        bail!("fuzz target {target} executed nothing");
    }
    let corpus = std::fs::read_dir(corpus).map(|d| d.count()).unwrap_or(0);
    Ok(Report { target: target.to_owned(), runs, seconds: start.elapsed().as_secs_f64(), corpus })
}

/// A `-print_final_stats` value.
fn stat(log: &str, name: &str) -> Option<u64> {
    log.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

/// The table `cargo xtask fuzz` and `cargo xtask test` print.
pub fn print(reports: &[Report]) {
    println!("\nfuzz targets (libFuzzer):");
    for r in reports {
        println!(
            "  {:<16} {:>10} runs in {:>5.1}s ({:>8.0}/s), corpus {} inputs",
            r.target,
            r.runs,
            r.seconds,
            r.runs as f64 / r.seconds.max(0.001),
            r.corpus
        );
    }
}

/// `cargo xtask fuzz` arguments: `[--seconds N] [TARGET]...`.
pub fn main(args: &[String]) -> Result<()> {
    let mut seconds = DEFAULT_SECONDS;
    let mut targets = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--seconds" => {
                let v = iter.next().context("--seconds needs a number")?;
                seconds = v.parse().with_context(|| format!("--seconds takes a number, not `{v}`"))?;
            }
            other => targets.push(other),
        }
    }
    let targets = if targets.is_empty() { TARGETS.to_vec() } else { targets };
    print(&run(&targets, seconds)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_count_is_read_from_libfuzzers_final_stats() {
        let log = "#4096\tpulse  cov: 10\nDone 123 runs in 2 second(s)\nstat::number_of_executed_units: 123\n\
                   stat::peak_rss_mb: 44\n";
        assert_eq!(stat(log, "stat::number_of_executed_units:"), Some(123));
        assert_eq!(stat("nothing", "stat::number_of_executed_units:"), None);
    }

    #[test]
    fn every_target_has_a_source_file_and_a_manifest_entry() {
        let root = crate::workspace_root().join("fuzz");
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("fuzz/Cargo.toml");
        for target in TARGETS {
            assert!(root.join("fuzz_targets").join(format!("{target}.rs")).is_file(), "{target}");
            assert!(manifest.contains(&format!("name = \"{target}\"")), "{target} in fuzz/Cargo.toml");
        }
    }
}
