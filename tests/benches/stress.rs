//! Benchmark: guests booting in parallel, in rounds, inside the test host (the
//! stress of ADR 006/007). Each round starts `BRIG_STRESS_PARALLEL` (5) brig-vmm
//! processes (brig's kernel and agent, 1 vCPU, 128 MiB), waits until every agent
//! answers `Ping`, then stops them through the control socket. It counts boots and
//! guest failures by kind (brig-vmm's exit code: 2 panic, 3 vCPU failure such as a
//! triple fault; or no agent within 60 s), for `BRIG_STRESS_ROUNDS` (30) rounds.
//! `cargo xtask bench stress` runs it in fresh test hosts and adds the test host's
//! own failures. Prints numbers, asserts nothing about them.

use std::collections::BTreeMap;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use brig_protocol::agent::PingRequest;
use brig_protocol::agent_ttrpc::AgentClient;
use brig_protocol::ttrpc::{self, context};
use brig_tests::scratch::Scratch;
use brig_tests::vm::{hybrid_connect, GUEST_CID};
use brig_vmm_api::client::Client;

const READY_TIMEOUT: Duration = Duration::from_secs(60);

struct Guest {
    child: Child,
    dir: std::path::PathBuf,
    ready: Option<Duration>,
}

fn start(dir: &Scratch, round: usize, index: usize) -> Result<Guest> {
    let dir = dir.join(&format!("r{round}-g{index}"));
    std::fs::create_dir_all(&dir)?;
    let child = Command::new(brig_tests::artifact("BRIG_VMM_BIN"))
        .arg("--kernel")
        .arg(brig_tests::artifact("BRIG_GUEST_KERNEL"))
        .arg("--initramfs")
        .arg(brig_tests::artifact("BRIG_GUEST_INITRAMFS"))
        .args(["--memory", "128", "--rng"])
        .arg("--vsock")
        .arg(format!("cid={GUEST_CID},path={}", dir.join("vsock.sock").display()))
        .arg("--api-socket")
        .arg(dir.join("api.sock"))
        .arg("--console")
        .arg(dir.join("console.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("vmm.log"))?)
        .spawn()
        .context("start brig-vmm")?;
    Ok(Guest { child, dir, ready: None })
}

fn ping(fd: OwnedFd) -> Result<()> {
    let client = AgentClient::new(ttrpc::Client::new(fd.into_raw_fd()).map_err(|e| anyhow!("{e}"))?);
    client.ping(context::with_timeout(2_000_000_000), &PingRequest::new()).map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Why a guest did not make it, from brig-vmm's exit code (docs/control-socket.md).
fn failure(code: Option<i32>) -> &'static str {
    match code {
        Some(2) => "guest kernel panic",
        Some(3) => "vCPU failure (triple fault, failed entry)",
        Some(0) => "guest reset before its agent answered",
        Some(_) => "brig-vmm failed",
        None => "killed by a signal",
    }
}

/// Runs one round; returns the failures seen.
fn round(dir: &Scratch, round: usize, parallel: usize, failures: &mut BTreeMap<&'static str, u32>) -> Result<Vec<f64>> {
    let started = Instant::now();
    let mut guests = (0..parallel).map(|i| start(dir, round, i)).collect::<Result<Vec<_>>>()?;
    while guests.iter().any(|g| g.ready.is_none()) && started.elapsed() < READY_TIMEOUT {
        for g in guests.iter_mut().filter(|g| g.ready.is_none()) {
            if g.child.try_wait()?.is_some() {
                continue;
            }
            if let Ok(stream) = hybrid_connect(&g.dir.join("vsock.sock"), 1024) {
                if ping(OwnedFd::from(stream)).is_ok() {
                    g.ready = Some(started.elapsed());
                }
            }
        }
        if guests.iter_mut().all(|g| g.ready.is_some() || g.child.try_wait().ok().flatten().is_some()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut ready = Vec::new();
    for mut g in guests {
        match g.ready {
            Some(t) => {
                ready.push(t.as_secs_f64() * 1000.0);
                if let Ok(mut control) = Client::connect(&g.dir.join("api.sock"), Duration::from_secs(5)) {
                    let _ = control.shutdown();
                }
            }
            None => {
                let code = match g.child.try_wait()? {
                    Some(status) => status.code(),
                    None => {
                        *failures.entry("no agent within 60 s").or_default() += 1;
                        let _ = g.child.kill();
                        g.child.wait()?;
                        continue;
                    }
                };
                let kind = failure(code);
                *failures.entry(kind).or_default() += 1;
                let log = std::fs::read_to_string(g.dir.join("vmm.log")).unwrap_or_default();
                eprintln!("stress: round {round}: {kind}:\n{}", log.lines().take(12).collect::<Vec<_>>().join("\n"));
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
    Ok(ready)
}

fn main() -> Result<()> {
    let env = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (rounds, parallel) = (env("BRIG_STRESS_ROUNDS", 30), env("BRIG_STRESS_PARALLEL", 5));
    let dir = Scratch::new("bench-stress");
    let mut failures = BTreeMap::new();
    let mut ready = Vec::new();
    let started = Instant::now();
    for r in 0..rounds {
        ready.extend(round(&dir, r, parallel, &mut failures)?);
        // A line per round, and the tally in BRIG_STRESS_TALLY: when the test host
        // dies, they say how far it got.
        let failed: u32 = failures.values().sum();
        if let Ok(path) = std::env::var("BRIG_STRESS_TALLY") {
            let _ = std::fs::write(path, format!("{} {} {}\n", r + 1, ready.len() + failed as usize, failed));
        }
        println!(
            "stress: round {}/{rounds} done, {} boots, {} guest failures",
            r + 1,
            ready.len(),
            failures.values().sum::<u32>()
        );
    }
    ready.sort_by(f64::total_cmp);
    let failed: u32 = failures.values().sum();
    println!(
        "stress: {} boots in {rounds} rounds of {parallel} in {:.0} s; agent ready median {:.0} ms (max {:.0}); {failed} guest failures",
        ready.len() + failed as usize,
        started.elapsed().as_secs_f64(),
        ready.get(ready.len() / 2).copied().unwrap_or(0.0),
        ready.last().copied().unwrap_or(0.0),
    );
    for (kind, count) in &failures {
        println!("stress:   {count:>4} {kind}");
    }
    Ok(())
}
