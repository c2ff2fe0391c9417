//! `cargo xtask test`: every test of the project, the way CI runs it.
//!
//! 1. installs missing Debian packages;
//! 2. `cargo fmt --check` and `cargo clippy -D warnings`;
//! 3. the workspace's unit tests on this machine (as root where they need it);
//! 4. builds the guest artifacts;
//! 5. runs `brig-tests`' integration tests inside `cargo xtask kvm-host`.
//!
//! Every step must pass, and no test may be ignored or skipped.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::{apt, artifacts, cargo, libtest, testhost};

#[derive(Debug, Default)]
pub struct Options {
    /// Skip fmt and clippy (developers iterating on one test).
    pub no_lint: bool,
    /// Skip the host unit tests.
    pub no_unit: bool,
    /// Only integration tests whose name contains this.
    pub filter: Option<String>,
    /// Only these integration-test files (e.g. `boot`, `vsock`).
    pub files: Vec<String>,
}

pub fn run(opts: &Options) -> Result<()> {
    let mut phases: Vec<(&str, Duration)> = Vec::new();
    let mut phase = |name: &'static str, start: Instant| phases.push((name, start.elapsed()));

    let start = Instant::now();
    apt::ensure(apt::BASE)?;
    apt::ensure(apt::CONTAINERD)?;
    phase("packages", start);

    if !opts.no_lint {
        let start = Instant::now();
        cargo::run("cargo fmt --check", &["fmt", "--all", "--check"])?;
        cargo::run("cargo clippy", &["clippy", "--workspace", "--all-targets", "--quiet", "--", "-D", "warnings"])?;
        phase("fmt + clippy", start);
    }

    if !opts.no_unit {
        let start = Instant::now();
        let mut cmd = cargo::cargo();
        cmd.args(["test", "--workspace", "--exclude", "brig-tests", "--", "--color", "never"]);
        let (ok, summary) = libtest::run_and_summarize(cmd)?;
        if !ok || summary.failed > 0 {
            bail!("unit tests failed");
        }
        if summary.ignored > 0 {
            bail!("{} unit test(s) ignored: a skipped test is a failed test here", summary.ignored);
        }
        println!("unit tests: {} passed", summary.passed);
        phase("unit tests", start);
    }

    let start = Instant::now();
    let env = artifacts::build()?.env();
    phase("guest artifacts", start);

    let start = Instant::now();
    let mut args = vec!["test", "-p", "brig-tests", "--no-run"];
    for file in &opts.files {
        args.extend(["--test", file.as_str()]);
    }
    let binaries = cargo::build_executables(&args, |kind, test| test && kind == "test")?;
    if binaries.is_empty() {
        bail!("brig-tests has no integration tests to run");
    }
    phase("build integration tests", start);

    let start = Instant::now();
    let mut argv = vec![own_binary()?, "in-host-tests".to_owned()];
    if let Some(filter) = &opts.filter {
        argv.extend(["--filter".to_owned(), filter.clone()]);
    }
    argv.push("--".to_owned());
    argv.extend(binaries.iter().map(|b| b.to_string_lossy().into_owned()));
    let mut host = testhost::Options::new(crate::workspace_root());
    host.timeout = Duration::from_secs(50 * 60);
    host.env = env;
    host.env.push(("BRIG_XTASK_BIN".into(), own_binary()?));
    let code = testhost::run(&argv, &host)?;
    phase("integration tests in kvm-host", start);

    println!("\ncargo xtask test phases:");
    for (name, took) in &phases {
        println!("  {name:<32} {:>7.1}s", took.as_secs_f64());
    }
    if code != 0 {
        bail!("integration tests failed in kvm-host (exit {code})");
    }
    println!("all tests passed (kvm-host mode: {})", testhost::Mode::detect()?.name());
    Ok(())
}

/// This binary's path. The unit-test phase rebuilds `target/debug/xtask` under us, and
/// the kernel then reports our (unlinked) executable as `… (deleted)`; the rebuilt file
/// at the original path is what kvm-host should run.
fn own_binary() -> Result<String> {
    let path = std::env::current_exe()?.to_string_lossy().into_owned();
    Ok(path.strip_suffix(" (deleted)").map_or(path.clone(), str::to_owned))
}
