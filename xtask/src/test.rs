//! `cargo xtask test`: every test of the project, the way CI runs it.
//!
//! 1. installs missing Debian packages;
//! 2. `cargo fmt --check` and `cargo clippy -D warnings`;
//! 3. the workspace's unit tests on this machine (as root where they need it);
//! 4. every fuzz target for a fixed time (`cargo xtask fuzz`);
//! 5. builds the guest artifacts;
//! 6. runs each of `brig-tests`' integration-test binaries in its own
//!    `cargo xtask kvm-host`, starting a fresh test host when the emulated one fails.
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
    /// Skip the fuzz targets.
    pub no_fuzz: bool,
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

    let mut fuzzed = Vec::new();
    if !opts.no_fuzz {
        let start = Instant::now();
        let seconds = std::env::var("BRIG_FUZZ_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(crate::fuzz::DEFAULT_SECONDS);
        fuzzed = crate::fuzz::run(crate::fuzz::TARGETS, seconds)?;
        crate::fuzz::print(&fuzzed);
        phase("fuzz targets", start);
    }

    let start = Instant::now();
    let env = artifacts::build()?.env()?;
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
    let mut host = testhost::Options::new(crate::workspace_root());
    host.timeout = BINARY_TIMEOUT;
    host.env = env;
    let xtask = own_binary()?;
    let mut failed = Vec::new();
    let mut rows = Vec::new();
    for binary in &binaries {
        let name =
            binary.file_name().map_or_else(|| binary.display().to_string(), |n| n.to_string_lossy().into_owned());
        let mut argv = vec![xtask.clone(), "in-host-tests".to_owned()];
        if let Some(filter) = &opts.filter {
            argv.extend(["--filter".to_owned(), filter.clone()]);
        }
        argv.extend(["--".to_owned(), binary.to_string_lossy().into_owned()]);
        let started = Instant::now();
        let (outcome, attempts) = run_retrying_host_failures(&argv, &host, &name)?;
        let verdict = match outcome {
            testhost::Outcome::Exited(0) => "ok".to_owned(),
            testhost::Outcome::Exited(code) => format!("FAILED (exit {code})"),
            testhost::Outcome::TimedOut => format!("FAILED (still running after {}s)", BINARY_TIMEOUT.as_secs()),
            testhost::Outcome::HostFailed => format!("FAILED (the test host failed {attempts} times)"),
        };
        if outcome != testhost::Outcome::Exited(0) {
            failed.push(name.clone());
        }
        let retried = if attempts > 1 { format!(" (test host attempts: {attempts})") } else { String::new() };
        rows.push(format!("  {name:<40} {verdict} {:>7.1}s{retried}", started.elapsed().as_secs_f64()));
    }
    phase("integration tests in kvm-host", start);

    if !fuzzed.is_empty() {
        crate::fuzz::print(&fuzzed);
    }
    println!("\nintegration test binaries (each in its own kvm-host):\n{}", rows.join("\n"));
    println!("\ncargo xtask test phases:");
    for (name, took) in &phases {
        println!("  {name:<32} {:>7.1}s", took.as_secs_f64());
    }
    if !failed.is_empty() {
        bail!("integration tests failed in kvm-host: {}", failed.join(", "));
    }
    println!("all tests passed (kvm-host mode: {})", testhost::Mode::detect()?.name());
    Ok(())
}

/// How long one integration-test binary may run in kvm-host.
const BINARY_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// How many times one binary is started when the nested test host itself fails under it.
const HOST_ATTEMPTS: u32 = 4;

/// Runs one test binary in kvm-host, and again (up to `HOST_ATTEMPTS` in all) when the
/// nested test host wedged or crashed under it. Only the emulator's failure is retried:
/// a test that fails, or runs past its timeout, fails the run at once. Every retry is
/// printed, and ADR 006 records why the test host fails and how often.
fn run_retrying_host_failures(
    argv: &[String],
    host: &testhost::Options,
    name: &str,
) -> Result<(testhost::Outcome, u32)> {
    let mut attempt = 1;
    loop {
        let outcome = testhost::run_outcome(argv, host)?;
        if outcome != testhost::Outcome::HostFailed || attempt == HOST_ATTEMPTS {
            return Ok((outcome, attempt));
        }
        eprintln!(
            "xtask: the nested test host failed under {name} (attempt {attempt} of {HOST_ATTEMPTS}); \
             starting a fresh one (see docs/adr/006-nested-test-host-failures.md)"
        );
        attempt += 1;
    }
}

/// This binary's path. The unit-test phase rebuilds `target/debug/xtask` under us, and
/// the kernel then reports our (unlinked) executable as `… (deleted)`; the rebuilt file
/// at the original path is what kvm-host should run.
pub fn own_binary() -> Result<String> {
    let path = std::env::current_exe()?.to_string_lossy().into_owned();
    Ok(path.strip_suffix(" (deleted)").map_or(path.clone(), str::to_owned))
}
