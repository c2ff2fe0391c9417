//! Benchmark: brig-vmm (guest RAM in 4 KiB pages, in 2 MiB pages, and in its jail as
//! the shim runs it), Debian's `qemu-system-x86_64 -M microvm` (memfd RAM, and
//! anonymous RAM that QEMU advises for huge pages) and, when `FIRECRACKER_BIN` names
//! a Firecracker binary, Firecracker: all booting the same guest kernel and initramfs
//! (brig-agent as init, 1 vCPU, 128 MiB, vsock only besides virtio-rng), side by side.
//!
//! For each: time from process start to the agent's first `Ping` answer; the VMM's
//! resident memory beyond guest memory (RssAnon + RssFile, where guest RAM is shared
//! memory and so left out); the guest RAM resident after boot, and how much of it is
//! in 2 MiB pages. Run inside the test host by `cargo xtask bench boot`; prints
//! numbers, asserts nothing about them. (Firecracker is built by hand from its public
//! repository; brig never builds it.)

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use brig_tests::peers::{self, AgentAddr};
use brig_tests::scratch::Scratch;
use brig_tests::vm::GUEST_CID;

const MEMORY_MIB: u64 = 128;
const READY_TIMEOUT: Duration = Duration::from_secs(60);

struct Sample {
    ready: Duration,
    /// The VMM's own memory; `None` where guest RAM is anonymous too, so the two
    /// cannot be told apart.
    own_kib: Option<u64>,
    guest_kib: u64,
    huge_kib: u64,
}

/// Where a VMM keeps guest RAM, which decides how its memory is read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ram {
    Shared,
    Anonymous,
}

/// Polls until the agent answers, then samples the memory of the VMM `vmm` (the
/// child itself, or the brig-vmm a jailer runs).
fn wait_ready(child: &mut Child, vmm: u32, ram: Ram, start: Instant, agent: &AgentAddr) -> Result<Sample> {
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the VMM exited early: {status}");
        }
        if start.elapsed() > READY_TIMEOUT {
            bail!("the agent did not answer within {READY_TIMEOUT:?}");
        }
        if agent.answers() {
            let ready = start.elapsed();
            std::thread::sleep(Duration::from_millis(200)); // let the guest settle before sampling
            let memory = brig_tests::proc::memory(vmm);
            return Ok(match ram {
                Ram::Shared => Sample {
                    ready,
                    own_kib: Some(memory.own_kib),
                    guest_kib: memory.shmem_kib,
                    huge_kib: memory.huge_kib,
                },
                Ram::Anonymous => Sample { ready, own_kib: None, guest_kib: memory.rss_kib, huge_kib: memory.huge_kib },
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// brig-vmm unjailed, guest RAM in a memfd in 4 KiB pages (`memory_dir: None`), or in
/// `memory_dir` (a `huge=within_size` tmpfs, as the jail mounts).
fn run_brig(dir: &Scratch, memory_dir: Option<&Path>) -> Result<Sample> {
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
        .args(match memory_dir {
            Some(dir) => vec!["--memory-dir".into(), dir.as_os_str().to_owned()],
            None => vec!["--no-huge-pages".into()],
        })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start brig-vmm")?;
    let pid = child.id();
    let sample = wait_ready(&mut child, pid, Ram::Shared, start, &AgentAddr::Hybrid(vsock));
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
    let sample = wait_ready(&mut jailed.jailer, jailed.vmm_pid, Ram::Shared, start, &AgentAddr::Hybrid(vsock));
    jailed.remove()?;
    sample
}

fn run_qemu(cid: u32, ram: Ram) -> Result<Sample> {
    let backend = match ram {
        Ram::Shared => "memory-backend-memfd",
        Ram::Anonymous => "memory-backend-ram",
    };
    let start = Instant::now();
    let mut child = brig_tests::vm::qemu_microvm_with(MEMORY_MIB, cid, backend)
        .args(["-serial", "null"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start qemu-system-x86_64")?;
    let pid = child.id();
    let sample = wait_ready(&mut child, pid, ram, start, &AgentAddr::Vsock(cid));
    stop(child);
    sample
}

/// Firecracker booting the same kernel and initramfs, configured as brig-vmm is
/// (its own default memory: anonymous).
fn run_firecracker(firecracker: &Path, dir: &Scratch, run: usize) -> Result<Sample> {
    let vsock = dir.join(&format!("fc-{run}.vsock"));
    let _ = std::fs::remove_file(&vsock);
    let mut cmd = peers::firecracker(firecracker, &dir.join(&format!("fc-{run}.json")), &vsock, MEMORY_MIB)?;
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", firecracker.display()))?;
    let pid = child.id();
    let sample = wait_ready(&mut child, pid, Ram::Anonymous, start, &AgentAddr::Hybrid(vsock));
    stop(child);
    sample
}

fn median<T: Copy + PartialOrd>(values: impl Iterator<Item = T>) -> (T, T, T) {
    let mut v: Vec<T> = values.collect();
    v.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn report(name: &str, samples: &[Sample]) {
    let (ready, low, high) = median(samples.iter().map(|s| s.ready.as_secs_f64() * 1000.0));
    let own = match samples.iter().map(|s| s.own_kib).collect::<Option<Vec<u64>>>() {
        Some(own) => format!("{:>6} KiB", median(own.into_iter()).0),
        None => "   n/a    ".to_owned(),
    };
    let (guest, _, _) = median(samples.iter().map(|s| s.guest_kib));
    let (huge, _, _) = median(samples.iter().map(|s| s.huge_kib));
    println!(
        "boot [{name:<28}] agent ready: median {ready:>6.0} ms (min {low:.0}, max {high:.0}); VMM own RSS {own}; \
         guest RAM resident {:>4} MiB, {:>4} MiB of it in 2 MiB pages; {} runs",
        guest >> 10,
        huge >> 10,
        samples.len()
    );
}

fn main() -> Result<()> {
    let runs: usize = std::env::var("BRIG_BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    let firecracker = peers::firecracker_bin();
    let dir = Scratch::new("bench-boot");
    let tmpfs = peers::HugeTmpfs::mount(&dir, MEMORY_MIB + 2)?;
    let thp = |name: &str| std::fs::read_to_string(format!("/sys/kernel/mm/transparent_hugepage/{name}"));
    println!(
        "boot: test host THP enabled = {}, shmem_enabled = {}",
        thp("enabled").unwrap_or_default().trim(),
        thp("shmem_enabled").unwrap_or_default().trim()
    );
    let mut rows: Vec<(&str, Vec<Sample>)> = vec![
        ("brig-vmm, 4 KiB pages", Vec::new()),
        ("brig-vmm, huge tmpfs", Vec::new()),
        ("brig-vmm in its jail", Vec::new()),
        ("qemu -M microvm, memfd", Vec::new()),
        ("qemu -M microvm, anonymous", Vec::new()),
    ];
    if firecracker.is_some() {
        rows.push(("firecracker", Vec::new()));
    }
    // Interleaved, and each round starting one row later, so that drift in the
    // (shared, noisy) machine and the order within a round affect all alike.
    for run in 0..runs {
        for i in 0..rows.len() {
            let row = (run + i) % rows.len();
            let sample = match row {
                0 => run_brig(&dir, None)?,
                1 => run_brig(&dir, Some(&tmpfs.0))?,
                2 => run_brig_jailed(&dir, run)?,
                3 => run_qemu(100 + run as u32, Ram::Shared)?,
                4 => run_qemu(200 + run as u32, Ram::Anonymous)?,
                _ => run_firecracker(firecracker.as_deref().expect("a row only with FIRECRACKER_BIN"), &dir, run)?,
            };
            rows[row].1.push(sample);
        }
    }
    for (name, samples) in &rows {
        report(name, samples);
    }
    if firecracker.is_none() {
        println!("boot: FIRECRACKER_BIN is not set, so Firecracker is not measured");
    }
    drop(tmpfs);
    let _ = std::fs::remove_dir("/sys/fs/cgroup/brig-tests");
    Ok(())
}
