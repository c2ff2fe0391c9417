//! `cargo xtask bench [ring0] [boot] [ctr] [snapshot] [stress] [density] [start] [net]`: brig's benchmarks. They print numbers and
//! assert nothing about them (these machines are shared and noisy).
//!
//! - `ring0`: the harness's hand-made ring-0 guest, timed on this machine's own
//!   `/dev/kvm` and inside the nested test host (or directly, on hardware).
//! - `boot`: brig-vmm (4 KiB pages, 2 MiB pages, jailed) vs `qemu-system-x86_64 -M
//!   microvm` (memfd, anonymous) and, with `FIRECRACKER_BIN`, Firecracker: same kernel
//!   and initramfs, inside the test host: time to agent-ready, VMM RSS, huge pages.
//! - `density`: 50 idle 128 MiB guests at once per VMM (brig-vmm in 2 MiB and 4 KiB
//!   pages, and Firecracker or QEMU): VMM RSS and host memory per sandbox.
//! - `ctr`: `ctr run --rm … true` through Debian's containerd with brig and with
//!   runc, inside the test host; the memory one running brig task costs.
//! - `start`: where `ctr run --rm … true`'s time goes with brig, step by step (the
//!   shim's start timeline), beside runc's whole run.
//! - `net`: TCP throughput both ways and HTTP request time between the host and a
//!   container on one CNI bridge, brig beside runc, in the test host.
//! - `snapshot`: `brig snapshot` of a 256 MiB and a 1 GiB guest (memory touched
//!   first) next to `dd` of as many bytes into the same directory: seconds, MB/s,
//!   how long the vCPUs were paused.
//! - `stress`: five guests booting at once, in rounds, in `BRIG_STRESS_RUNS` (3)
//!   fresh test hosts, brig-vmm's rounds alternating with QEMU microvm's (the same
//!   kernel and initramfs): boots, guest failures by kind for each, and the test
//!   host's own failures (ADR 006, 009). `BRIG_KVM_HOST_QEMU` and `BRIG_KVM_HOST_KERNEL` pick
//!   the emulator and the test host's kernel package; `BRIG_STRESS_COMPARE=qemu`,
//!   `kernel` or `1` (both) runs Debian's and bookworm-backports' side by side.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{apt, artifacts, cargo, testhost};

const ALL: &[&str] = &["ring0", "boot", "ctr", "snapshot", "stress", "density", "start", "net"];

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
            "boot" | "ctr" | "snapshot" | "density" | "start" | "net" => {
                let (packages, bench): (&[&str], _) = match name {
                    "boot" => (&["qemu-system-x86"], "boot"),
                    "density" => (&["qemu-system-x86"], "density"),
                    "ctr" => (apt::CONTAINERD, "ctr_run"),
                    "start" => (apt::CONTAINERD, "start"),
                    "net" => (apt::CONTAINERD, "net"),
                    _ => (apt::CONTAINERD, "snapshot"),
                };
                apt::ensure(packages)?;
                let env = artifacts::build()?.env()?;
                let binary = bench_binary(bench)?;
                let mut host = host.clone();
                host.env = env;
                if name == "density" {
                    // 50 idle guests and their peer's: room beyond the default 4 GiB.
                    host.memory_mib = host.memory_mib.max(8192);
                }
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

/// One emulator and test-host kernel to stress, and what it did.
struct Setup {
    qemu: String,
    kernel: Option<String>,
    label: String,
    boots: u64,
    guest_failures: u64,
    /// QEMU's boots and guest failures in the same test hosts (the peer).
    peer_boots: u64,
    peer_failures: u64,
    host_failures: u32,
    rows: Vec<String>,
}

/// The setups to compare: the configured one, or with `BRIG_STRESS_COMPARE` Debian's
/// QEMU (`qemu`), test host kernel (`kernel`) or both (`1`) beside bookworm-backports'
/// (from Debian's packages), every combination, in one run.
fn setups(host: &testhost::Options) -> Result<Vec<Setup>> {
    let version = |qemu: &str| {
        let out = Command::new(qemu).arg("--version").output().with_context(|| format!("running {qemu}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text.lines().next().unwrap_or_default();
        Ok::<_, anyhow::Error>(line.trim_start_matches("QEMU emulator version ").to_owned())
    };
    let default_kernel = match &host.kernel {
        Some(kernel) => kernel.clone(),
        None => testhost::kernel_package()?,
    };
    let compare = std::env::var("BRIG_STRESS_COMPARE").unwrap_or_default();
    let (vary_qemu, vary_kernel) = match compare.as_str() {
        "" => (false, false),
        "1" | "all" => (true, true),
        "qemu" => (true, false),
        "kernel" => (false, true),
        other => bail!("BRIG_STRESS_COMPARE={other}: use 1 (or all), qemu or kernel"),
    };
    let mut qemus = vec![match &host.qemu {
        Some(qemu) => qemu.clone(),
        None => testhost::backports_qemu()?,
    }];
    let mut kernels = vec![default_kernel];
    if vary_qemu || vary_kernel {
        apt::ensure_backports()?;
    }
    if vary_qemu {
        qemus = vec!["qemu-system-x86_64".to_owned(), testhost::backports_qemu()?];
    }
    if vary_kernel {
        kernels.push(testhost::kernel_package_in("linux-image-amd64/bookworm-backports")?);
    }
    let pairs: Vec<(String, String)> =
        kernels.iter().flat_map(|k| qemus.iter().map(move |q| (q.clone(), k.clone()))).collect();
    pairs
        .into_iter()
        .map(|(qemu, kernel)| {
            let label = format!("QEMU {} / {kernel}", version(&qemu)?);
            Ok(Setup {
                qemu,
                kernel: Some(kernel),
                label,
                boots: 0,
                guest_failures: 0,
                peer_boots: 0,
                peer_failures: 0,
                host_failures: 0,
                rows: Vec::new(),
            })
        })
        .collect()
}

/// Runs the stress benchmark in fresh test hosts, for each setup, and prints the
/// tallies side by side.
fn stress(host: &testhost::Options) -> Result<()> {
    let runs: u32 = std::env::var("BRIG_STRESS_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let mut setups = setups(host)?;
    let env = artifacts::build()?.env()?;
    let binary = bench_binary("stress")?;
    let tally = crate::workspace_root().join("target").join("stress-tally");
    let mut host = host.clone();
    host.env = env;
    host.env.push(("BRIG_STRESS_TALLY".into(), tally.to_string_lossy().into_owned()));
    // Runs interleave the setups, so that a change in the machine's load hits them alike.
    for run in 1..=runs {
        for setup in &mut setups {
            host.qemu = Some(setup.qemu.clone());
            host.kernel = setup.kernel.clone();
            eprintln!("stress: run {run} of {runs}, {}", setup.label);
            let _ = std::fs::remove_file(&tally);
            let outcome = testhost::run_outcome(&[binary.to_string_lossy().into_owned()], &host)?;
            let seen = std::fs::read_to_string(&tally).unwrap_or_default();
            // "rounds brig-boots brig-failures [qemu-boots qemu-failures]"
            let numbers: Vec<u64> = seen.split_whitespace().filter_map(|n| n.parse().ok()).collect();
            let at = |i: usize| numbers.get(i).copied().unwrap_or(0);
            let (rounds, b, f, pb, pf) = (at(0), at(1), at(2), at(3), at(4));
            setup.boots += b;
            setup.guest_failures += f;
            setup.peer_boots += pb;
            setup.peer_failures += pf;
            let how = match outcome {
                testhost::Outcome::Exited(0) => "completed".to_owned(),
                testhost::Outcome::Exited(code) => format!("the benchmark failed ({code})"),
                testhost::Outcome::TimedOut => "timed out".to_owned(),
                testhost::Outcome::HostFailed => {
                    setup.host_failures += 1;
                    format!("TEST HOST FAILED after round {rounds}")
                }
            };
            setup.rows.push(format!(
                "  run {run}: {rounds} rounds; brig-vmm {b} boots, {f} guest failures; QEMU {pb} boots, {pf} guest failures: {how}"
            ));
        }
    }
    for setup in &setups {
        println!("\nstress, {}:", setup.label);
        println!("{}", setup.rows.join("\n"));
    }
    println!(
        "\n{:<62} {:>19} {:>19} {:>18}",
        "stress: test host (runs interleaved)", "brig-vmm failed", "QEMU microvm failed", "test host failed"
    );
    for s in &setups {
        println!(
            "{:<62} {:>8} of {:>4} boots {:>8} of {:>4} boots {:>10} of {runs} runs",
            s.label, s.guest_failures, s.boots, s.peer_failures, s.peer_boots, s.host_failures
        );
    }
    Ok(())
}
