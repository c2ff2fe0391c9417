//! Benchmark: where the time of `ctr run --rm IMAGE ID true` goes with brig, step by
//! step, next to runc's whole run, in one test host. Each brig run's shim logs its
//! start timeline when the task is deleted (shim/src/timeline.rs: one line in
//! containerd's log); this reads it back and adds the two ends only `ctr` sees (from
//! `ctr run` to the shim being up, and from the VM gone to `ctr` returning).
//! `BRIG_START_RUNS` (10) runs of each, interleaved. Run by `cargo xtask bench
//! start`; prints the median of each step, asserts nothing about them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use brig_tests::containerd::{Containerd, IMAGE, RUNTIME};

/// The steps the shim logs, in order, with what each one covers (from the step before).
const STEPS: &[(&str, &str)] = &[
    ("create", "containerd prepares the task, calls Create"),
    ("rootfs_image", "rootfs mounted, block image built or cached"),
    ("vmm_spawned", "jail built, brig-vmm started"),
    ("kernel_entry", "brig-vmm sets up the VM (guest clock)"),
    ("init", "guest kernel boots (guest clock)"),
    ("agent_ready", "agent starts, answers Ping"),
    ("created", "container created in the guest"),
    ("started", "containerd calls Start, process started"),
    ("exit_seen", "true runs, its exit reaches the shim"),
    ("deleted", "containerd calls Delete, VM stopped"),
];

/// One brig run: when the shim came up, and each step's milliseconds.
struct Timeline {
    shim_up: SystemTime,
    steps: BTreeMap<String, f64>,
}

/// The shim's line for task `id` in containerd's `log` (it may be quoted and
/// followed by other fields: only `name +N ms` items are read).
fn parse(log: &str, id: &str) -> Option<Timeline> {
    let marker = format!("start timeline of task {id}: shim_up at ");
    let rest = &log[log.find(&marker)? + marker.len()..];
    let line = rest.lines().next()?;
    let mut items = line.split(", ");
    let up: f64 = items.next()?.split_whitespace().next()?.parse().ok()?;
    let mut steps = BTreeMap::new();
    for item in items {
        let mut words = item.split_whitespace();
        let (Some(name), Some(ms)) = (words.next(), words.next()) else { break };
        let Some(ms) = ms.strip_prefix('+').and_then(|ms| ms.parse::<f64>().ok()) else { break };
        steps.insert(name.to_owned(), ms);
    }
    Some(Timeline { shim_up: UNIX_EPOCH + Duration::from_secs_f64(up), steps })
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

fn run(containerd: &Containerd, runtime: &str, id: &str) -> (SystemTime, Duration) {
    let (at, start) = (SystemTime::now(), Instant::now());
    let out = containerd.ctr(&["run", "--rm", "--runtime", runtime, IMAGE, id, "true"]);
    let took = start.elapsed();
    containerd.assert_ok(&out);
    (at, took)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    brig_tests::require_kvm_host();
    let runs = std::env::var("BRIG_START_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(10usize);
    let containerd = Containerd::start();
    // Warm-up: the first brig run builds the rootfs image, the first runc run warms its caches.
    run(&containerd, RUNTIME, "warm-brig");
    run(&containerd, "io.containerd.runc.v2", "warm-runc");

    let mut columns: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let (mut brig, mut runc, mut missing) = (Vec::new(), Vec::new(), 0);
    for i in 0..runs {
        let id = format!("start-{i}");
        let (at, took) = run(&containerd, RUNTIME, &id);
        brig.push(ms(took));
        runc.push(ms(run(&containerd, "io.containerd.runc.v2", &format!("runc-{i}")).1));
        let Some(timeline) = parse(&containerd.log(), &id) else {
            missing += 1;
            continue;
        };
        let to_shim = timeline.shim_up.duration_since(at).map(ms).unwrap_or(0.0);
        columns.entry("shim_up").or_default().push(to_shim);
        let mut seen = to_shim;
        for (name, _) in STEPS {
            if let Some(step) = timeline.steps.get(*name) {
                columns.entry(name).or_default().push(*step);
                seen += step;
            }
        }
        columns.entry("ctr_exit").or_default().push(ms(took) - seen);
    }

    println!("ctr run --rm {IMAGE} ID true, {runs} runs each (brig and runc interleaved), in the test host:");
    println!("  {:<14} {:>9}  (from the step before)", "step", "median");
    let mut rows = vec![("shim_up", "ctr run, containerd starts the shim")];
    rows.extend_from_slice(STEPS);
    rows.push(("ctr_exit", "containerd shuts the shim down, ctr returns"));
    let mut sum = 0.0;
    for (name, what) in rows {
        match columns.get(name).cloned().and_then(median) {
            Some(m) => {
                sum += m;
                println!("  {name:<14} {m:>7.0}ms  {what}");
            }
            None => println!("  {name:<14} {:>9}  {what}", "-"),
        }
    }
    let (b, r) = (median(brig).unwrap_or(0.0), median(runc).unwrap_or(0.0));
    println!("  {:<14} {sum:>7.0}ms  (sum of the medians)", "all steps");
    println!("  {:<14} {b:>7.0}ms  io.containerd.brig.v2, whole run (median)", "brig");
    println!("  {:<14} {r:>7.0}ms  io.containerd.runc.v2, whole run (median)", "runc");
    println!("  brig / runc (median): {:.2}x", b / r);
    if missing > 0 {
        println!("  ({missing} of {runs} brig runs logged no timeline: containerd's log has no line for them)");
    }
    if columns.get("kernel_entry").map_or(0, Vec::len) < runs - missing {
        println!("  (in some runs the guest's clock did not fit the host's: kernel_entry/init left out there)");
    }
}
