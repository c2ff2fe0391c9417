//! Benchmark: brig-vmm (plain, and in its jail as the shim runs it) and Debian's
//! `qemu-system-x86_64 -M microvm`, booting the same guest kernel and initramfs
//! (brig-agent as init), side by side.
//!
//! For each: time from process start to the agent's first `Ping` answer, and the
//! VMM's resident memory beyond guest memory (RssAnon + RssFile; guest RAM is a
//! memfd in both, so it counts as RssShmem and is left out). Run inside the test
//! host by `cargo xtask bench boot`; prints numbers, asserts nothing about them.

use std::os::fd::{IntoRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use brig_protocol::agent::PingRequest;
use brig_protocol::agent_ttrpc::AgentClient;
use brig_protocol::ttrpc::{self, context};
use brig_tests::scratch::Scratch;
use brig_tests::vm::{hybrid_connect, GUEST_CID};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};

const MEMORY_MIB: u64 = 128;
const READY_TIMEOUT: Duration = Duration::from_secs(60);

struct Sample {
    ready: Duration,
    rss_kib: u64,
}

fn ping(fd: OwnedFd) -> Result<()> {
    let client = AgentClient::new(ttrpc::Client::new(fd.into_raw_fd()).map_err(|e| anyhow!("{e}"))?);
    client.ping(context::with_timeout(2_000_000_000), &PingRequest::new()).map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Polls until the agent answers, then samples the memory of the VMM `vmm` (the
/// child itself, or the brig-vmm a jailer runs).
fn wait_ready(
    child: &mut Child,
    vmm: u32,
    start: Instant,
    mut try_connect: impl FnMut() -> Result<OwnedFd>,
) -> Result<Sample> {
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the VMM exited early: {status}");
        }
        if start.elapsed() > READY_TIMEOUT {
            bail!("the agent did not answer within {READY_TIMEOUT:?}");
        }
        if let Ok(fd) = try_connect() {
            if ping(fd).is_ok() {
                let ready = start.elapsed();
                std::thread::sleep(Duration::from_millis(200)); // let the guest settle before sampling
                return Ok(Sample { ready, rss_kib: brig_tests::proc::memory(vmm).own_kib });
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn run_brig(dir: &Scratch) -> Result<Sample> {
    let vsock = dir.join("vsock.sock");
    let _ = std::fs::remove_file(&vsock);
    let start = Instant::now();
    let mut child = Command::new(brig_tests::artifact("BRIG_VMM_BIN"))
        .arg("--kernel")
        .arg(brig_tests::artifact("BRIG_GUEST_KERNEL"))
        .arg("--initramfs")
        .arg(brig_tests::artifact("BRIG_GUEST_INITRAMFS"))
        .args(["--memory", &MEMORY_MIB.to_string(), "--rng"])
        .arg("--vsock")
        .arg(format!("cid={GUEST_CID},path={}", vsock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start brig-vmm")?;
    let pid = child.id();
    let sample = wait_ready(&mut child, pid, start, || Ok(OwnedFd::from(hybrid_connect(&vsock, 1024)?)));
    stop(child);
    sample
}

/// brig-vmm in the jail the shim gives it (brig-jailer, the shim's spec but for the
/// rootfs disk, which a bare boot has none of).
fn run_brig_jailed(dir: &Scratch, run: usize) -> Result<Sample> {
    let vmm = brig_tests::artifact("BRIG_VMM_BIN");
    let spec = brig_tests::jail::bare_spec(dir.path(), &format!("boot-{run}"), 310_000 + run as u32, vmm, &[]);
    let start = Instant::now();
    let mut jailed = brig_tests::jail::start(spec, Stdio::null())?;
    let vsock = jailed.vsock();
    let sample =
        wait_ready(&mut jailed.jailer, jailed.vmm_pid, start, || Ok(OwnedFd::from(hybrid_connect(&vsock, 1024)?)));
    jailed.remove()?;
    sample
}

fn run_qemu(cid: u32) -> Result<Sample> {
    let start = Instant::now();
    let mut child = brig_tests::vm::qemu_microvm(MEMORY_MIB, cid)
        .args(["-serial", "null"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start qemu-system-x86_64")?;
    let pid = child.id();
    let sample = wait_ready(&mut child, pid, start, || {
        let fd = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &VsockAddr::new(cid, 1024))?;
        Ok(fd)
    });
    stop(child);
    sample
}

fn report(name: &str, samples: &[Sample]) {
    let mut ready: Vec<f64> = samples.iter().map(|s| s.ready.as_secs_f64() * 1000.0).collect();
    let mut rss: Vec<u64> = samples.iter().map(|s| s.rss_kib).collect();
    ready.sort_by(f64::total_cmp);
    rss.sort_unstable();
    println!(
        "boot [{name:<22}] agent ready: median {:>6.0} ms (min {:.0}, max {:.0}); VMM RSS beyond guest memory: median {:>6} KiB (min {}, max {}); {} runs",
        ready[ready.len() / 2],
        ready[0],
        ready[ready.len() - 1],
        rss[rss.len() / 2],
        rss[0],
        rss[rss.len() - 1],
        samples.len()
    );
}

fn main() -> Result<()> {
    let runs: usize = std::env::var("BRIG_BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    let dir = Scratch::new("bench-boot");
    let (mut brig, mut jailed, mut qemu) = (Vec::new(), Vec::new(), Vec::new());
    // Interleaved, so drift in the (shared, noisy) machine affects all alike.
    for run in 0..runs {
        brig.push(run_brig(&dir)?);
        jailed.push(run_brig_jailed(&dir, run)?);
        qemu.push(run_qemu(100 + run as u32)?);
    }
    report("brig-vmm", &brig);
    report("brig-vmm in its jail", &jailed);
    report("qemu -M microvm", &qemu);
    let _ = std::fs::remove_dir("/sys/fs/cgroup/brig-tests");
    Ok(())
}
