//! Benchmark: the wall time of `ctr run --rm IMAGE ID true` with brig
//! (`io.containerd.brig.v2`, its VMM jailed as always, and with `jail = false` in a
//! second containerd) and with runc (`io.containerd.runc.v2`), side by side in the
//! same test host, plus what one running brig task costs the host in memory (shim
//! and VMM, guest RAM left out; and its cgroup's peak, the sum the jail's
//! `memory.max` must allow). Run by `cargo xtask bench ctr`; prints numbers,
//! asserts nothing about them.

use std::time::Duration;

use brig_tests::containerd::{shim_pid, Containerd, IMAGE, RUNTIME};
use brig_tests::ms;

const RUNS: usize = 10;

fn summary(mut samples: Vec<Duration>) -> (Duration, Duration, Duration) {
    samples.sort();
    (samples[0], samples[samples.len() / 2], samples[samples.len() - 1])
}

fn main() {
    brig_tests::require_kvm_host();
    let containerd = Containerd::start();
    let unjailed = Containerd::start_with_brig_config("jail = false\n");
    // Warm-up: the first brig run builds the rootfs image, the first runc run warms its caches.
    containerd.time_run(RUNTIME, "warm-brig");
    unjailed.time_run(RUNTIME, "warm-open");
    containerd.time_run("io.containerd.runc.v2", "warm-runc");

    let (mut brig, mut open, mut runc) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..RUNS {
        brig.push(containerd.time_run(RUNTIME, &format!("brig-{i}")));
        open.push(unjailed.time_run(RUNTIME, &format!("open-{i}")));
        runc.push(containerd.time_run("io.containerd.runc.v2", &format!("runc-{i}")));
    }
    println!("ctr run --rm {IMAGE} ID true, {RUNS} runs each (interleaved), in the test host:");
    println!("  {:<32} {:>10} {:>10} {:>10}", "runtime", "min", "median", "max");
    let (b, o, r) = (summary(brig), summary(open), summary(runc));
    for (name, (min, median, max)) in [
        ("io.containerd.brig.v2 (jailed)", b),
        ("io.containerd.brig.v2, jail = false", o),
        ("io.containerd.runc.v2", r),
    ] {
        println!("  {name:<32} {:>8.0}ms {:>8.0}ms {:>8.0}ms", ms(min), ms(median), ms(max));
    }
    println!("  brig / runc (median): {:.1}x; jail on / off: {:.2}x", ms(b.1) / ms(r.1), ms(b.1) / ms(o.1));
    drop(unjailed);

    let vmm = containerd.run_idle("resident");
    std::thread::sleep(Duration::from_secs(1));
    let shim = shim_pid("resident").expect("shim") as u32;
    println!("one running brig task (default 128 MiB guest), host memory beyond guest RAM:");
    let vmm_pid = vmm;
    let (shim, vmm) = (brig_tests::proc::memory(shim), brig_tests::proc::memory(vmm));
    println!("  containerd-shim-brig-v2 VmRSS      {:>6} KiB", shim.rss_kib);
    println!("  brig-vmm RssAnon + RssFile        {:>6} KiB", vmm.own_kib);
    println!("  brig-vmm RssShmem (guest touched) {:>6} KiB", vmm.shmem_kib);
    // The sandbox's cgroup: guest memory touched plus brig-vmm's own, at its peak,
    // idle and after the guest has touched most of its memory (dd's one 96 MiB
    // buffer, filled from /dev/zero): the peak beyond guest RAM is what
    // vmm_memory_overhead_mib must cover.
    let Some(cgroup) = sandbox_cgroup(vmm_pid) else {
        containerd.kill_and_delete("resident");
        return;
    };
    let read = |file: &str| std::fs::read_to_string(cgroup.join(file)).unwrap_or_default().trim().to_owned();
    let kib = |file: &str| read(file).parse::<u64>().map_or(0, |b| b >> 10);
    let report = |when: &str| {
        let shmem = brig_tests::proc::memory(vmm_pid).shmem_kib;
        let peak = kib("memory.peak");
        println!(
            "  its cgroup, {when}: memory.current {:>6} KiB, memory.peak {:>6} KiB, guest touched {shmem:>6} KiB, \
             peak beyond guest touched {:>6} KiB; memory.max {} (guest memory + vmm_memory_overhead_mib)",
            kib("memory.current"),
            peak,
            peak.saturating_sub(shmem),
            read("memory.max")
        );
    };
    report("idle");
    let fill = containerd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "fill",
        "resident",
        "sh",
        "-c",
        "dd if=/dev/zero of=/dev/null bs=100663296 count=1 2>&1 | tail -1",
    ]);
    println!("  filling guest memory: {}", brig_tests::containerd::describe(&fill).lines().next().unwrap_or(""));
    report("after a 96 MiB buffer in the guest");
    containerd.kill_and_delete("resident");
}

/// The cgroup v2 directory of process `pid`.
fn sandbox_cgroup(pid: u32) -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.trim().strip_prefix("0::/")?;
    Some(std::path::Path::new("/sys/fs/cgroup").join(path))
}
