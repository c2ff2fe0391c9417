//! Benchmark: memory density. `BRIG_DENSITY_COUNT` (50) idle 128 MiB guests (brig's
//! kernel and agent as init, 1 vCPU, vsock and virtio-rng) kept running at once, for
//! each VMM in turn: brig-vmm with guest RAM in 2 MiB pages (its default, the jail's
//! huge tmpfs emulated by a `huge=within_size` tmpfs), brig-vmm with 4 KiB pages, and
//! the peer: Firecracker when `FIRECRACKER_BIN` names one (built by hand from its
//! public repository), else `BRIG_DENSITY_QEMU` (10) of Debian's `qemu -M microvm`.
//!
//! Guests boot five at a time, each batch waiting for every agent's `Ping`. At every
//! ten guests up, and once all are, after 10 s of idling, it prints per VMM: the VMM's own RSS per sandbox
//! (RssAnon + RssFile, guest RAM left out where it is shared memory), the guest RAM
//! resident per sandbox, and the host memory all of them took (the drop in the test
//! host's `MemAvailable`), total and per sandbox. Run inside the test host by
//! `cargo xtask bench density` (whose test host gets enough memory for them); prints
//! numbers, asserts nothing about them. A batch that does not come up within 120 s
//! (the emulated test host slows as idle guests pile up) ends that VMM's ramp; the
//! line says so, and the guests already up are measured.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use brig_tests::peers::{self, AgentAddr};
use brig_tests::scratch::Scratch;
use brig_tests::vm::GUEST_CID;

const MEMORY_MIB: u64 = 128;
const BATCH: usize = 5;
const READY_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Vmm {
    BrigHuge,
    BrigSmall,
    Firecracker,
    Qemu,
}

impl Vmm {
    fn name(self) -> &'static str {
        match self {
            Vmm::BrigHuge => "brig-vmm, 2 MiB pages",
            Vmm::BrigSmall => "brig-vmm, 4 KiB pages",
            Vmm::Firecracker => "firecracker",
            Vmm::Qemu => "qemu -M microvm",
        }
    }
}

struct Guest {
    child: Child,
    agent: AgentAddr,
    vmm: Vmm,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(vmm: Vmm, dir: &Path, tmpfs: &Path, index: usize, firecracker: Option<&Path>) -> Result<Guest> {
    let vsock = dir.join(format!("g{index}.vsock"));
    let cid = 1000 + index as u32;
    let _ = std::fs::remove_file(&vsock); // a restarted guest's
    let mut cmd = match vmm {
        Vmm::BrigHuge | Vmm::BrigSmall => {
            let mut cmd = Command::new(brig_tests::artifact("BRIG_VMM_BIN"));
            cmd.arg("--kernel")
                .arg(brig_tests::artifact("BRIG_GUEST_KERNEL"))
                .arg("--initramfs")
                .arg(brig_tests::artifact("BRIG_GUEST_INITRAMFS"))
                .args(["--memory", &MEMORY_MIB.to_string(), "--rng"])
                .arg("--vsock")
                .arg(format!("cid={GUEST_CID},path={}", vsock.display()));
            if vmm == Vmm::BrigHuge {
                cmd.arg("--memory-dir").arg(tmpfs);
            } else {
                cmd.arg("--no-huge-pages");
            }
            cmd
        }
        Vmm::Firecracker => peers::firecracker(
            firecracker.context("FIRECRACKER_BIN")?,
            &dir.join(format!("g{index}.json")),
            &vsock,
            MEMORY_MIB,
        )?,
        Vmm::Qemu => {
            let mut cmd = brig_tests::vm::qemu_microvm(MEMORY_MIB, cid);
            cmd.args(["-serial", "null"]);
            cmd
        }
    };
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().context("start a VMM")?;
    let agent = if vmm == Vmm::Qemu { AgentAddr::Vsock(cid) } else { AgentAddr::Hybrid(vsock) };
    Ok(Guest { child, agent, vmm })
}

/// Waits until every guest of `batch` (guest `first` onwards) answers `Ping`. A guest
/// that exits before answering, as the emulated test host's early-boot failure ends
/// one now and then (ADR 015), is started again by `restart`, at most twice a batch;
/// returns how many were.
fn wait_ready(batch: &mut [Guest], first: usize, mut restart: impl FnMut(usize) -> Result<Guest>) -> Result<usize> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut ready = vec![false; batch.len()];
    let mut restarted = 0;
    while ready.iter().any(|r| !r) {
        for (i, (guest, ready)) in batch.iter_mut().zip(ready.iter_mut()).enumerate().filter(|(_, (_, r))| !**r) {
            if let Some(status) = guest.child.try_wait()? {
                if restarted == 2 {
                    bail!(
                        "a {} guest exited early: {status} (twice restarted in this batch already)",
                        guest.vmm.name()
                    );
                }
                restarted += 1;
                *guest = restart(first + i)?;
                continue;
            }
            *ready = guest.agent.answers();
        }
        if Instant::now() > deadline {
            bail!("guests did not answer within {READY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(restarted)
}

fn mem_available_kib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn measure(vmm: Vmm, count: usize, firecracker: Option<&Path>) -> Result<()> {
    let dir = Scratch::new("bench-density");
    let tmpfs = peers::HugeTmpfs::mount(&dir, (MEMORY_MIB + 2) * count as u64)?;
    let before = mem_available_kib();
    let started = Instant::now();
    let mut guests: Vec<Guest> = Vec::new();
    while guests.len() < count {
        let first = guests.len();
        for index in first..(first + BATCH).min(count) {
            guests.push(start(vmm, dir.path(), &tmpfs.0, index, firecracker)?);
        }
        let restart = |index| start(vmm, dir.path(), &tmpfs.0, index, firecracker);
        match wait_ready(&mut guests[first..], first, restart) {
            Ok(0) => {}
            Ok(n) => {
                println!(
                    "density [{:<22}] {n} guest(s) of {}-{} died in early boot and were started again",
                    vmm.name(),
                    first + 1,
                    guests.len()
                );
            }
            Err(e) => {
                // The nested test host slows as idle guests pile up: say where it stopped.
                println!(
                    "density [{:<22}] guests {}-{} did not come up ({e:#}); measured with {first}",
                    vmm.name(),
                    first + 1,
                    guests.len()
                );
                guests.truncate(first);
                break;
            }
        }
        if guests.len().is_multiple_of(10) && guests.len() < count {
            report(vmm, &guests, before, started.elapsed());
        }
    }
    if !guests.is_empty() {
        report(vmm, &guests, before, started.elapsed());
    }
    drop(guests);
    drop(tmpfs);
    Ok(())
}

/// Prints what the `guests` (all up) take, after they idled for 10 s.
fn report(vmm: Vmm, guests: &[Guest], before: u64, booted: Duration) {
    std::thread::sleep(Duration::from_secs(10));
    let after = mem_available_kib();
    let memory: Vec<_> = guests.iter().map(|g| brig_tests::proc::memory(g.child.id())).collect();
    let n = memory.len() as u64;
    let own = match vmm {
        Vmm::BrigHuge | Vmm::BrigSmall | Vmm::Qemu => {
            format!("{:>6} KiB", memory.iter().map(|m| m.own_kib).sum::<u64>() / n)
        }
        Vmm::Firecracker => "   n/a    ".to_owned(), // anonymous guest RAM: not separable
    };
    let guest = match vmm {
        Vmm::Firecracker => memory.iter().map(|m| m.rss_kib).sum::<u64>(),
        _ => memory.iter().map(|m| m.shmem_kib).sum::<u64>(),
    } / n;
    let taken = before.saturating_sub(after);
    println!(
        "density [{:<22}] {n:>2} idle guests, up after {:>5.1} s; VMM own RSS per sandbox {own}; guest RAM \
         resident per sandbox {:>4} MiB; host memory taken {:>5} MiB in all, {:>4} MiB per sandbox",
        vmm.name(),
        booted.as_secs_f64(),
        guest >> 10,
        taken >> 10,
        (taken / n) >> 10
    );
}

fn main() -> Result<()> {
    let env = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let count = env("BRIG_DENSITY_COUNT", 50);
    let firecracker = peers::firecracker_bin();
    measure(Vmm::BrigHuge, count, None)?;
    measure(Vmm::BrigSmall, count, None)?;
    match &firecracker {
        Some(bin) => measure(Vmm::Firecracker, count, Some(bin))?,
        None => {
            println!("density: FIRECRACKER_BIN is not set; the peer is QEMU");
            measure(Vmm::Qemu, env("BRIG_DENSITY_QEMU", 10), None)?;
        }
    }
    Ok(())
}
