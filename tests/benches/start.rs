//! Benchmark: where the time of `ctr run --rm IMAGE ID true` goes with brig (jailed,
//! as always, and with `jail = false` in a second containerd), step by step, next to
//! runc's whole run, in one test host. Each brig run's shim logs its
//! start timeline when the task is deleted (shim/src/timeline.rs: one line in
//! containerd's log); this reads it back and adds the two ends only `ctr` sees (from
//! `ctr run` to the shim being up, and from the VM gone to `ctr` returning).
//! `BRIG_START_RUNS` (10) runs of each, interleaved. Run by `cargo xtask bench
//! start`; prints the median of each step, asserts nothing about them.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use brig_tests::containerd::{Containerd, IMAGE, RUNTIME};
use brig_tests::ms;

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

/// Each step's samples for one runtime setup, and its whole runs.
#[derive(Default)]
struct Samples {
    steps: BTreeMap<&'static str, Vec<f64>>,
    whole: Vec<f64>,
    missing: usize,
    guest_clock: usize,
}

impl Samples {
    /// Runs `id` under brig in `containerd` and files its timeline.
    fn run(&mut self, containerd: &Containerd, id: &str) {
        let at = SystemTime::now();
        let took = containerd.time_run(RUNTIME, id);
        self.whole.push(ms(took));
        let Some(timeline) = parse(&containerd.log(), id) else {
            self.missing += 1;
            return;
        };
        let to_shim = timeline.shim_up.duration_since(at).map(ms).unwrap_or(0.0);
        self.steps.entry("shim_up").or_default().push(to_shim);
        let mut seen = to_shim;
        for (name, _) in STEPS {
            if let Some(step) = timeline.steps.get(*name) {
                self.steps.entry(name).or_default().push(*step);
                seen += step;
            }
        }
        self.guest_clock += usize::from(timeline.steps.contains_key("kernel_entry"));
        self.steps.entry("ctr_exit").or_default().push(ms(took) - seen);
    }

    fn median(&self, step: &str) -> Option<f64> {
        self.steps.get(step).cloned().and_then(median)
    }
}

fn main() {
    brig_tests::require_kvm_host();
    let runs = std::env::var("BRIG_START_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(10usize);
    let containerd = Containerd::start();
    let unjailed = Containerd::start_with_brig_config("jail = false\n");
    // Warm-up: the first brig run builds the rootfs image, the first runc run warms its caches.
    containerd.time_run(RUNTIME, "warm-brig");
    unjailed.time_run(RUNTIME, "warm-open");
    containerd.time_run("io.containerd.runc.v2", "warm-runc");

    let (mut jailed, mut open, mut runc) = (Samples::default(), Samples::default(), Vec::new());
    for i in 0..runs {
        jailed.run(&containerd, &format!("start-{i}"));
        open.run(&unjailed, &format!("open-{i}"));
        runc.push(ms(containerd.time_run("io.containerd.runc.v2", &format!("runc-{i}"))));
    }

    println!("ctr run --rm {IMAGE} ID true, {runs} runs each (interleaved), in the test host; medians:");
    println!("  {:<14} {:>9} {:>12}  (from the step before)", "step", "jailed", "jail = false");
    let mut rows = vec![("shim_up", "ctr run, containerd starts the shim")];
    rows.extend_from_slice(STEPS);
    rows.push(("ctr_exit", "containerd shuts the shim down, ctr returns"));
    let cell = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |m| format!("{m:.0}ms"));
    let (mut sum_jailed, mut sum_open) = (0.0, 0.0);
    for (name, what) in rows {
        let (j, o) = (jailed.median(name), open.median(name));
        sum_jailed += j.unwrap_or(0.0);
        sum_open += o.unwrap_or(0.0);
        println!("  {name:<14} {:>9} {:>12}  {what}", cell(j), cell(o));
    }
    println!("  {:<14} {:>9} {:>12}  (sum of the medians)", "all steps", cell(Some(sum_jailed)), cell(Some(sum_open)));
    let whole = |s: &Samples| median(s.whole.clone()).unwrap_or(0.0);
    let (j, o, r) = (whole(&jailed), whole(&open), median(runc).unwrap_or(0.0));
    println!("  {:<14} {:>9} {:>12}  io.containerd.brig.v2, whole run", "brig", cell(Some(j)), cell(Some(o)));
    println!("  {:<14} {:>9} {:>12}  io.containerd.runc.v2, whole run", "runc", cell(Some(r)), "");
    println!("  brig / runc (median): {:.2}x jailed, {:.2}x with jail = false", j / r, o / r);
    for (name, s) in [("jailed", &jailed), ("jail = false", &open)] {
        if s.missing > 0 {
            println!("  ({name}: {} of {runs} runs logged no timeline in containerd's log)", s.missing);
        }
        if s.guest_clock < runs - s.missing {
            println!(
                "  ({name}: in {} runs the guest's clock did not fit the host's: no kernel_entry/init)",
                runs - s.missing - s.guest_clock
            );
        }
    }
}
