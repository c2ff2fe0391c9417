//! Benchmark: `brig snapshot` of a 256 MiB and a 1 GiB guest, 40 % of its memory
//! touched first (the rest are holes, which brig-vmm writes as zeros without
//! reading), next to `dd` writing as many bytes into the same directory in the
//! same run (`conv=fsync`, as brig syncs every file). Prints the snapshot's wall
//! time and MB/s, how long the vCPUs were paused, and dd's MB/s; asserts nothing
//! about the numbers. The last column is `sha256sum` of as many bytes, alone: brig
//! hashes everything twice on the way (brig-vmm, and `brig` as it arrives), so on
//! a machine where hashing is slower than the disk that is its bound. Run by
//! `cargo xtask bench snapshot`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use brig_tests::containerd::{describe, Containerd};

const SIZES_MIB: [u64; 2] = [256, 1024];
const RUNS: usize = 3;

struct Sample {
    wall: Duration,
    paused: Duration,
    bytes: u64,
    dd: Duration,
    sha256sum: Duration,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mb_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64()
}

/// `vCPUs paused for N ms` from brig snapshot's last line.
fn paused_ms(stdout: &str) -> Duration {
    let after = stdout.split("vCPUs paused for ").nth(1).expect("brig snapshot says how long it paused");
    Duration::from_millis(after.split_whitespace().next().and_then(|n| n.parse().ok()).expect("a number of ms"))
}

fn dd(path: &Path, mib: u64) -> Duration {
    let started = Instant::now();
    let out = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", path.display()))
        .args(["bs=1M", &format!("count={mib}"), "conv=fsync"])
        .output()
        .expect("dd runs");
    let took = started.elapsed();
    assert!(out.status.success(), "dd: {}", describe(&out));
    std::fs::remove_file(path).expect("remove dd's file");
    took
}

/// `sha256sum` of as many zero bytes: what hashing alone costs on this machine.
fn sha256sum(mib: u64) -> Duration {
    let started = Instant::now();
    let out = Command::new("sh")
        .args(["-c", &format!("dd if=/dev/zero bs=1M count={mib} status=none | sha256sum")])
        .output()
        .expect("sha256sum runs");
    let took = started.elapsed();
    assert!(out.status.success(), "sha256sum: {}", describe(&out));
    took
}

fn snapshot(containerd: &Containerd, id: &str, base: &Path, run: usize) -> Sample {
    let dir = base.join(format!("{id}-{run}"));
    let started = Instant::now();
    let out = Command::new(brig_tests::artifact("BRIG_CLI_BIN"))
        .args(["snapshot", id, "-o"])
        .arg(&dir)
        .args(["--reason", "benchmark"])
        .output()
        .expect("brig snapshot runs");
    let wall = started.elapsed();
    assert!(out.status.success(), "brig snapshot: {}\n{}", describe(&out), containerd.log_for_failure());
    let bytes: u64 =
        ["memory.elf", "state.bin"].iter().map(|f| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len())).sum();
    let paused = paused_ms(&String::from_utf8_lossy(&out.stdout));
    std::fs::remove_dir_all(&dir).expect("remove the snapshot");
    // dd writes as many bytes to the same directory's filesystem, right after.
    let dd = dd(&base.join(format!("dd-{id}-{run}")), bytes.div_ceil(1 << 20));
    Sample { wall, paused, bytes, dd, sha256sum: sha256sum(bytes.div_ceil(1 << 20)) }
}

fn main() {
    brig_tests::require_kvm_host();
    // Not /tmp: in the test host that may be a tmpfs, where "disk" would be RAM.
    let base = PathBuf::from("/var/tmp/brig-bench-snapshot");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("bench dir");
    let fs = Command::new("stat").args(["-f", "-c", "%T"]).arg(&base).output().expect("stat");
    println!(
        "brig snapshot vs dd (conv=fsync) into {} ({}), {RUNS} runs each, medians:",
        base.display(),
        String::from_utf8_lossy(&fs.stdout).trim()
    );
    println!(
        "  {:<10} {:>10} {:>12} {:>12} {:>10} {:>10} {:>8} {:>12}",
        "guest", "bytes", "snapshot", "snapshot", "paused", "dd", "brig/dd", "sha256sum"
    );
    for mib in SIZES_MIB {
        let containerd = Containerd::start_with_brig_config(&format!("default_memory_mib = {mib}\n"));
        let id = format!("bench-{mib}");
        containerd.run_idle(&id);
        // Touch guest memory: the container's writable layer is a tmpfs in guest RAM
        // (half of it at most), so a file there is 40 % of the guest in use.
        let fill = mib * 4 / 10;
        let touch = containerd.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "fill",
            &id,
            "dd",
            "if=/dev/zero",
            "of=/fill",
            "bs=1M",
            &format!("count={fill}"),
        ]);
        containerd.assert_ok(&touch);
        let samples: Vec<Sample> = (0..RUNS).map(|run| snapshot(&containerd, &id, &base, run)).collect();
        let bytes = samples[0].bytes;
        let wall = median(samples.iter().map(|s| s.wall).collect());
        let paused = median(samples.iter().map(|s| s.paused).collect());
        let dd = median(samples.iter().map(|s| s.dd).collect());
        let hashing = median(samples.iter().map(|s| s.sha256sum).collect());
        let (brig_rate, dd_rate) = (mb_per_s(bytes, wall), mb_per_s(bytes, dd));
        println!(
            "  {:<10} {:>10} {:>10.2} s {:>7.0} MB/s {:>7} ms {:>5.0} MB/s {:>7.0}% {:>7.0} MB/s",
            format!("{mib} MiB"),
            bytes,
            wall.as_secs_f64(),
            brig_rate,
            paused.as_millis(),
            dd_rate,
            100.0 * brig_rate / dd_rate,
            mb_per_s(bytes, hashing)
        );
        containerd.assert_ok(&containerd.kill_and_delete(&id));
    }
    std::fs::remove_dir_all(&base).expect("cleanup");
}
