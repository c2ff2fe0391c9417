//! `cargo xtask bench [ring0] [boot]`: brig's benchmarks. They print numbers and
//! assert nothing about them (these machines are shared and noisy).
//!
//! - `ring0`: the harness's hand-made ring-0 guest, timed on this machine's own
//!   `/dev/kvm` and inside the nested test host (or directly, on hardware).
//! - `boot`: brig-vmm vs `qemu-system-x86_64 -M microvm`, same kernel and
//!   initramfs, inside the test host: time to agent-ready and VMM RSS.
//! - `ctr`: `ctr run --rm … true` through Debian's containerd with brig and with
//!   runc, inside the test host; the memory one running brig task costs.
//! - `stress`: five guests booting at once, in rounds, in `BRIG_STRESS_RUNS` (3)
//!   fresh test hosts: boots, guest failures by kind, and the test host's own
//!   failures (ADR 006, 008). `BRIG_KVM_HOST_QEMU` and `BRIG_KVM_HOST_KERNEL` pick
//!   the emulator and the test host's kernel package, to compare them.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{apt, artifacts, cargo, testhost};

const ALL: &[&str] = &["ring0", "boot", "ctr", "stress"];

fn bench_binary(name: &str) -> Result<PathBuf> {
    let found = cargo::build_executables(&["bench", "--no-run", "-p", "brig-tests", "--bench", name], |kind, _| {
        kind == "bench"
    })?;
    found.into_iter().next().with_context(|| format!("cargo built no `{name}` benchmark"))
}

pub fn run(names: &[String]) -> Result<()> {
    let names: Vec<&str> = if names.is_empty() { ALL.to_vec() } else { names.iter().map(String::as_str).collect() };
    if let Some(unknown) = names.iter().find(|n| !ALL.contains(n)) {
        bail!("unknown benchmark `{unknown}`; choose from {}", ALL.join(", "));
    }
    apt::ensure(apt::BASE)?;
    let mut host = testhost::Options::new(crate::workspace_root());
    host.timeout = Duration::from_secs(30 * 60);
    for name in names {
        match name {
            "ring0" => {
                let binary = bench_binary("ring0_loop")?;
                println!("ring0: this machine's own /dev/kvm (1 run; ring-0 code may be emulated here)");
                let status = Command::new(&binary).env("BRIG_BENCH_RUNS", "1").status()?;
                if !status.success() {
                    println!("ring0: the run on this machine's /dev/kvm failed ({status})");
                }
                println!("ring0: kvm-host");
                let code = testhost::run(&[binary.to_string_lossy().into_owned()], &host)?;
                if code != 0 {
                    bail!("ring0 benchmark failed in kvm-host ({code})");
                }
            }
            "boot" | "ctr" => {
                let (packages, bench): (&[&str], _) =
                    if name == "boot" { (&["qemu-system-x86"], "boot") } else { (apt::CONTAINERD, "ctr_run") };
                apt::ensure(packages)?;
                let env = artifacts::build()?.env()?;
                let binary = bench_binary(bench)?;
                let mut host = host.clone();
                host.env = env;
                let code = testhost::run(&[binary.to_string_lossy().into_owned()], &host)?;
                if code != 0 {
                    bail!("{name} benchmark failed in kvm-host ({code})");
                }
            }
            "stress" => stress(&host)?,
            _ => unreachable!("checked above"),
        }
    }
    Ok(())
}

/// Runs the stress benchmark in fresh test hosts and prints the tally.
fn stress(host: &testhost::Options) -> Result<()> {
    let runs: u32 = std::env::var("BRIG_STRESS_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let env = artifacts::build()?.env()?;
    let binary = bench_binary("stress")?;
    let tally = crate::workspace_root().join("target").join("stress-tally");
    let mut host = host.clone();
    host.env = env;
    host.env.push(("BRIG_STRESS_TALLY".into(), tally.to_string_lossy().into_owned()));
    let (mut boots, mut guest_failures, mut host_failures, mut rows) = (0, 0, 0, Vec::new());
    for run in 1..=runs {
        let _ = std::fs::remove_file(&tally);
        let outcome = testhost::run_outcome(&[binary.to_string_lossy().into_owned()], &host)?;
        let seen = std::fs::read_to_string(&tally).unwrap_or_default();
        let numbers: Vec<u64> = seen.split_whitespace().filter_map(|n| n.parse().ok()).collect();
        let (rounds, b, f) = match numbers[..] {
            [rounds, b, f] => (rounds, b, f),
            _ => (0, 0, 0),
        };
        boots += b;
        guest_failures += f;
        let how = match outcome {
            testhost::Outcome::Exited(0) => "completed".to_owned(),
            testhost::Outcome::Exited(code) => format!("the benchmark failed ({code})"),
            testhost::Outcome::TimedOut => "timed out".to_owned(),
            testhost::Outcome::HostFailed => {
                host_failures += 1;
                format!("TEST HOST FAILED after round {rounds}")
            }
        };
        rows.push(format!("  run {run}: {rounds} rounds, {b} boots, {f} guest failures: {how}"));
    }
    let qemu = std::env::var("BRIG_KVM_HOST_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into());
    let version = Command::new(&qemu)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or_default().to_owned());
    println!("\nstress ({}; test host kernel {}):", version.unwrap_or_default(), testhost::kernel_package()?);
    println!("{}", rows.join("\n"));
    println!(
        "stress: {boots} boots, {guest_failures} guest failures, {host_failures} test host failures in {runs} runs"
    );
    Ok(())
}
