//! `cargo xtask bench [ring0] [boot]`: brig's benchmarks. They print numbers and
//! assert nothing about them (these machines are shared and noisy).
//!
//! - `ring0`: the harness's hand-made ring-0 guest, timed on this machine's own
//!   `/dev/kvm` and inside the nested test host (or directly, on hardware).
//! - `boot`: brig-vmm vs `qemu-system-x86_64 -M microvm`, same kernel and
//!   initramfs, inside the test host: time to agent-ready and VMM RSS.
//! - `ctr`: `ctr run --rm … true` through Debian's containerd with brig and with
//!   runc, inside the test host; the memory one running brig task costs.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{apt, artifacts, cargo, testhost};

const ALL: &[&str] = &["ring0", "boot", "ctr"];

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
            _ => unreachable!("checked above"),
        }
    }
    Ok(())
}
