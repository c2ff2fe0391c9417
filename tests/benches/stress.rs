//! Benchmark: guests booting in parallel, in rounds, inside the test host (the
//! stress of ADR 006/007/009). Each round starts `BRIG_STRESS_PARALLEL` (5) brig-vmm
//! processes (brig's kernel and agent, 1 vCPU, 128 MiB), waits until every agent
//! answers `Ping`, then stops them through the control socket. It counts boots and
//! guest failures by kind (brig-vmm's exit code: 2 panic, 3 vCPU failure such as a
//! triple fault; or no agent within 60 s), for `BRIG_STRESS_ROUNDS` (20) rounds.
//!
//! The peer: each brig-vmm round is followed by one of Debian's `qemu-system-x86_64
//! -M microvm` booting the same kernel and initramfs the same way (vhost-vsock), so
//! a failure rate that both VMMs share belongs to the test host, not to brig-vmm.
//! `BRIG_STRESS_PEER=none` leaves QEMU out. `BRIG_STRESS_PAGES=4k` gives brig-vmm's
//! guests 4 KiB pages (`--no-huge-pages`) instead of its default 2 MiB (ADR 014).
//!
//! `cargo xtask bench stress` runs it in fresh test hosts and adds the test host's
//! own failures. Prints numbers, asserts nothing about them.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use brig_tests::scratch::Scratch;
use brig_tests::vm::{hybrid_connect, GUEST_CID};
use brig_vmm_api::client::Client;
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const MEMORY_MIB: u32 = 128;

/// Which VMM boots a round's guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vmm {
    Brig,
    Qemu,
}

impl Vmm {
    fn name(self) -> &'static str {
        match self {
            Vmm::Brig => "brig-vmm",
            Vmm::Qemu => "qemu -M microvm",
        }
    }
}

struct Guest {
    vmm: Vmm,
    child: Child,
    dir: std::path::PathBuf,
    /// The guest's vsock CID (QEMU's guests: each its own, host-wide).
    cid: u32,
    ready: Option<Duration>,
}

impl Guest {
    /// A connection to the agent's port, if it listens yet.
    fn agent(&self) -> Result<OwnedFd> {
        match self.vmm {
            Vmm::Brig => Ok(OwnedFd::from(hybrid_connect(&self.dir.join("vsock.sock"), 1024)?)),
            Vmm::Qemu => {
                let fd = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
                connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &VsockAddr::new(self.cid, 1024))?;
                Ok(fd)
            }
        }
    }

    /// Stops a guest whose agent answered.
    fn stop(&mut self) {
        match self.vmm {
            Vmm::Brig => {
                if let Ok(mut control) = Client::connect(&self.dir.join("api.sock"), Duration::from_secs(5)) {
                    let _ = control.shutdown();
                }
            }
            Vmm::Qemu => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(self.child.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }
}

fn start(vmm: Vmm, dir: &Scratch, round: usize, index: usize, parallel: usize) -> Result<Guest> {
    let dir = dir.join(&format!("{}-r{round}-g{index}", if vmm == Vmm::Brig { "brig" } else { "qemu" }));
    std::fs::create_dir_all(&dir)?;
    let cid = 100 + (round * parallel + index) as u32;
    let stderr = std::fs::File::create(dir.join("vmm.log"))?;
    let child = match vmm {
        Vmm::Brig => brig(&dir, stderr)?,
        Vmm::Qemu => qemu(&dir, cid, stderr)?,
    };
    Ok(Guest { vmm, child, dir, cid, ready: None })
}

fn qemu(dir: &std::path::Path, cid: u32, stderr: std::fs::File) -> Result<Child> {
    brig_tests::vm::qemu_microvm(u64::from(MEMORY_MIB), cid)
        .arg("-serial")
        .arg(format!("file:{}", dir.join("console.log").display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .context("start qemu-system-x86_64")
}

fn brig(dir: &std::path::Path, stderr: std::fs::File) -> Result<Child> {
    let child = Command::new(brig_tests::artifact("BRIG_VMM_BIN"))
        .arg("--kernel")
        .arg(brig_tests::artifact("BRIG_GUEST_KERNEL"))
        .arg("--initramfs")
        .arg(brig_tests::artifact("BRIG_GUEST_INITRAMFS"))
        .args(["--memory", &MEMORY_MIB.to_string(), "--rng"])
        .arg("--vsock")
        .arg(format!("cid={GUEST_CID},path={}", dir.join("vsock.sock").display()))
        .arg("--api-socket")
        .arg(dir.join("api.sock"))
        .arg("--console")
        .arg(dir.join("console.log"))
        .args(std::env::var("BRIG_STRESS_PAGES").is_ok_and(|p| p == "4k").then_some("--no-huge-pages"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .context("start brig-vmm")?;
    Ok(child)
}

/// Why a guest did not make it, from its VMM's exit code (brig-vmm's are in
/// docs/control-socket.md; QEMU with `-no-reboot` exits 0 at a guest reset or triple
/// fault alike).
fn failure(vmm: Vmm, code: Option<i32>) -> &'static str {
    match (vmm, code) {
        (Vmm::Qemu, Some(0)) => "guest reset or triple fault (QEMU exited)",
        (Vmm::Qemu, Some(_)) => "QEMU failed",
        (Vmm::Qemu, None) => "killed by a signal",
        (Vmm::Brig, code) => brig_failure(code),
    }
}

fn brig_failure(code: Option<i32>) -> &'static str {
    match code {
        Some(2) => "guest kernel panic",
        Some(3) => "vCPU failure (triple fault, failed entry)",
        Some(0) => "guest reset before its agent answered",
        Some(_) => "brig-vmm failed",
        None => "killed by a signal",
    }
}

/// One VMM's boots and failures over the rounds.
#[derive(Default)]
struct Tally {
    ready: Vec<f64>,
    failures: BTreeMap<&'static str, u32>,
}

impl Tally {
    fn failed(&self) -> u32 {
        self.failures.values().sum()
    }

    fn boots(&self) -> usize {
        self.ready.len() + self.failed() as usize
    }
}

/// Runs one round of `vmm`'s guests; adds what happened to `tally`.
fn round(vmm: Vmm, dir: &Scratch, round: usize, parallel: usize, tally: &mut Tally) -> Result<()> {
    let started = Instant::now();
    let mut guests = (0..parallel).map(|i| start(vmm, dir, round, i, parallel)).collect::<Result<Vec<_>>>()?;
    while guests.iter().any(|g| g.ready.is_none()) && started.elapsed() < READY_TIMEOUT {
        for g in guests.iter_mut().filter(|g| g.ready.is_none()) {
            if g.child.try_wait()?.is_some() {
                continue;
            }
            if let Ok(fd) = g.agent() {
                if brig_tests::peers::ping(fd).is_ok() {
                    g.ready = Some(started.elapsed());
                }
            }
        }
        if guests.iter_mut().all(|g| g.ready.is_some() || g.child.try_wait().ok().flatten().is_some()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for mut g in guests {
        match g.ready {
            Some(t) => {
                tally.ready.push(t.as_secs_f64() * 1000.0);
                g.stop();
            }
            None => {
                let code = match g.child.try_wait()? {
                    Some(status) => status.code(),
                    None => {
                        *tally.failures.entry("no agent within 60 s").or_default() += 1;
                        let _ = g.child.kill();
                        g.child.wait()?;
                        continue;
                    }
                };
                let kind = failure(vmm, code);
                *tally.failures.entry(kind).or_default() += 1;
                let log = std::fs::read_to_string(g.dir.join("vmm.log")).unwrap_or_default();
                let console = std::fs::read_to_string(g.dir.join("console.log")).unwrap_or_default();
                eprintln!(
                    "stress: round {round}, {}: {kind}:\n{}\nconsole tail:\n{}",
                    vmm.name(),
                    log.lines().take(12).collect::<Vec<_>>().join("\n"),
                    console.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while g.child.try_wait()?.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = g.child.kill();
        let _ = g.child.wait();
        if g.ready.is_some() {
            let _ = std::fs::remove_dir_all(&g.dir);
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let env = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (rounds, parallel) = (env("BRIG_STRESS_ROUNDS", 20), env("BRIG_STRESS_PARALLEL", 5));
    let vmms: &[Vmm] = match std::env::var("BRIG_STRESS_PEER").as_deref() {
        Ok("none") => &[Vmm::Brig],
        _ => &[Vmm::Brig, Vmm::Qemu],
    };
    let dir = Scratch::new("bench-stress");
    let mut tallies: Vec<Tally> = vmms.iter().map(|_| Tally::default()).collect();
    let started = Instant::now();
    for r in 0..rounds {
        // Rounds alternate between the VMMs, so drift in the machine's load hits both.
        for (vmm, tally) in vmms.iter().zip(&mut tallies) {
            round(*vmm, &dir, r, parallel, tally)?;
        }
        // A line per round, and the tally in BRIG_STRESS_TALLY ("rounds" then boots and
        // failures per VMM): when the test host dies, they say how far it got.
        let counts: Vec<String> = tallies.iter().map(|t| format!("{} {}", t.boots(), t.failed())).collect();
        if let Ok(path) = std::env::var("BRIG_STRESS_TALLY") {
            let _ = std::fs::write(path, format!("{} {}\n", r + 1, counts.join(" ")));
        }
        let line: Vec<String> = vmms
            .iter()
            .zip(&tallies)
            .map(|(vmm, t)| format!("{}: {} boots, {} guest failures", vmm.name(), t.boots(), t.failed()))
            .collect();
        println!("stress: round {}/{rounds} done; {}", r + 1, line.join("; "));
    }
    println!("stress: {rounds} rounds of {parallel} per VMM in {:.0} s", started.elapsed().as_secs_f64());
    for (vmm, tally) in vmms.iter().zip(&mut tallies) {
        tally.ready.sort_by(f64::total_cmp);
        println!(
            "stress [{:<15}] {:>4} boots; agent ready median {:>6.0} ms (max {:.0}); {} guest failures",
            vmm.name(),
            tally.boots(),
            tally.ready.get(tally.ready.len() / 2).copied().unwrap_or(0.0),
            tally.ready.last().copied().unwrap_or(0.0),
            tally.failed(),
        );
        for (kind, count) in &tally.failures {
            println!("stress [{:<15}]   {count:>4} {kind}", vmm.name());
        }
    }
    Ok(())
}
