//! brig against a hostile guest agent (`tests/hostile-agent`, its mode chosen per
//! test with `hostile.mode=` through the shim's `kernel_cmdline_extra`), through
//! real containerd: `ctr run`, `kill` and `delete` each finish in bounded time with
//! a clear error (or the answer the protocol allows), the shim neither dies nor
//! spins, and nothing is left behind.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use brig_tests::containerd::{describe, shim_pid, Containerd};

/// agent_timeout_secs where not answering is the agent's misdeed: long enough for
/// the guest to boot and be asked (a nested test host takes up to ~8 s), so that
/// it is the agent's answers that time out. Where the agent answers, the shim's
/// default (60 s).
const AGENT_TIMEOUT_SECS: u64 = 30;
/// The shim's deadline for an ordinary agent call (shim/src/guest.rs).
const CALL_TIMEOUT_SECS: u64 = 60;
/// The shim's grace between a SIGKILL and stopping the VM (shim/src/task/monitor.rs).
const KILL_GRACE_SECS: u64 = 10;

/// containerd with brig booting the hostile agent in `mode`.
fn containerd(mode: &str) -> Containerd {
    let initramfs = brig_tests::artifact("BRIG_HOSTILE_INITRAMFS");
    let mut config =
        format!("initramfs = \"{}\"\nkernel_cmdline_extra = \"hostile.mode={mode}\"\n", initramfs.display());
    if matches!(mode, "silent" | "garbage") {
        config.push_str(&format!("agent_timeout_secs = {AGENT_TIMEOUT_SECS}\n"));
    }
    Containerd::start_with_brig_config(&config)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `cmd` to its end and says how long it took; fails the test (killing it)
/// if it runs past `bound`.
fn within(bound: Duration, what: &str, mut cmd: Command) -> (Output, Duration) {
    let started = Instant::now();
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("ctr runs");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(bound) {
        Ok(out) => (out.expect("ctr's output"), started.elapsed()),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("{what} did not finish within {bound:?}");
        }
    }
}

/// The CPU time (user + system) process `pid` has used.
fn cpu_time(pid: i32) -> Duration {
    let stat = procfs::process::Process::new(pid).and_then(|p| p.stat()).expect("/proc/PID/stat of the shim");
    Duration::from_secs_f64((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

/// Asserts that the shim of task `id` uses little CPU over `window` (it does not spin).
fn assert_not_spinning(id: &str, window: Duration) {
    let shim = shim_pid(id).unwrap_or_else(|| panic!("the shim of {id} is running"));
    let before = cpu_time(shim);
    std::thread::sleep(window);
    let used = cpu_time(shim).saturating_sub(before);
    assert!(used < window / 4, "the shim of {id} used {used:?} of CPU in {window:?}");
}

/// The highest resident memory of any brig shim while `f` runs.
fn peak_shim_rss_kib<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let (stop, peak) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let sampler = std::thread::spawn({
        let (stop, peak) = (stop.clone(), peak.clone());
        move || {
            while !stop.load(Ordering::SeqCst) {
                for pid in brig_tests::containerd::leftovers()
                    .shim_processes
                    .iter()
                    .filter_map(|p| p.split_whitespace().next().and_then(|pid| pid.parse::<u32>().ok()))
                {
                    peak.fetch_max(brig_tests::proc::memory(pid).rss_kib, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
    let result = f();
    stop.store(true, Ordering::SeqCst);
    sampler.join().expect("sampler");
    (result, peak.load(Ordering::SeqCst))
}

/// After a `ctr run` whose create failed: `kill` and `delete` answer at once, the
/// shim did not panic, and nothing is left.
fn assert_failed_create_cleaned_up(containerd: &Containerd, id: &str) {
    for args in [["task", "kill", id], ["task", "delete", id], ["container", "delete", id]] {
        let (out, _) = within(Duration::from_secs(30), &args.join(" "), containerd.command(&args));
        assert!(!stderr(&out).contains("ttrpc: closed"), "{}", describe(&out));
    }
    containerd.assert_no_leftovers(id);
    assert!(!containerd.log().contains("panicked at"), "a shim panicked:\n{}", containerd.log_for_failure());
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn an_agent_that_never_answers_fails_create_within_agent_timeout_secs() {
    brig_tests::require_kvm_host();
    let containerd = containerd("silent");
    let bound = Duration::from_secs(AGENT_TIMEOUT_SECS + 50);
    let (out, took) = within(bound, "ctr run", containerd.run_command(&["--rm"], "silent", &["true"]));
    assert!(!out.status.success(), "{}", describe(&out));
    let expected = format!("the guest agent did not answer within {AGENT_TIMEOUT_SECS}s (agent_timeout_secs)");
    assert!(stderr(&out).contains(&expected), "{}\ncontainerd:\n{}", describe(&out), containerd.log_for_failure());
    assert!(stderr(&out).contains("hostile: agent connection"), "the agent was reached: {}", describe(&out));
    eprintln!("silent: ctr run failed after {took:?}");
    assert_failed_create_cleaned_up(&containerd, "silent");
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn an_agent_that_answers_garbage_fails_create_within_agent_timeout_secs() {
    brig_tests::require_kvm_host();
    let containerd = containerd("garbage");
    let bound = Duration::from_secs(AGENT_TIMEOUT_SECS + 50);
    let (out, took) = within(bound, "ctr run", containerd.run_command(&["--rm"], "garbage", &["true"]));
    assert!(!out.status.success(), "{}", describe(&out));
    let expected = format!("the guest agent did not answer within {AGENT_TIMEOUT_SECS}s (agent_timeout_secs)");
    assert!(stderr(&out).contains(&expected), "{}\ncontainerd:\n{}", describe(&out), containerd.log_for_failure());
    assert!(stderr(&out).contains("hostile: agent connection"), "the agent was reached: {}", describe(&out));
    eprintln!("garbage: ctr run failed after {took:?}");
    assert_failed_create_cleaned_up(&containerd, "garbage");
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn a_frame_claiming_4_gib_is_neither_read_nor_waited_for_past_the_calls_deadline() {
    brig_tests::require_kvm_host();
    let containerd = containerd("oversized");
    let bound = Duration::from_secs(CALL_TIMEOUT_SECS + 60);
    let ((out, took), peak_kib) =
        peak_shim_rss_kib(|| within(bound, "ctr run", containerd.run_command(&["--rm"], "oversized", &["true"])));
    assert!(!out.status.success(), "{}", describe(&out));
    let expected = format!("the guest agent did not answer CreateContainer within {CALL_TIMEOUT_SECS}s");
    assert!(stderr(&out).contains(&expected), "{}\ncontainerd:\n{}", describe(&out), containerd.log_for_failure());
    eprintln!("oversized: ctr run failed after {took:?}; the shim's peak RSS {peak_kib} KiB");
    assert!(peak_kib > 0, "the shim was sampled");
    assert!(peak_kib < 100 << 10, "the shim grew to {peak_kib} KiB: it allocated for the frame");
    assert_failed_create_cleaned_up(&containerd, "oversized");
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn an_agent_that_lies_about_exits_and_pids_cannot_keep_the_task() {
    brig_tests::require_kvm_host();
    let containerd = containerd("lie");
    // Nothing runs, Wait answers 42 at once, and Shutdown is acknowledged but ignored
    // (brig-vmm's own shutdown ends the VM).
    let (out, took) = within(Duration::from_secs(90), "ctr run", containerd.run_command(&["--rm"], "liar", &["true"]));
    assert_eq!(out.status.code(), Some(42), "{}\ncontainerd:\n{}", describe(&out), containerd.log_for_failure());
    eprintln!("lie: ctr run --rm exited 42 after {took:?}");
    containerd.assert_no_leftovers("a lying agent under ctr run --rm");

    containerd.assert_ok(&containerd.run_with(&["-d"], "liar2", &["sleep", "1000"]));
    containerd.wait_for_status("liar2", "STOPPED");
    let (ps, _) = within(Duration::from_secs(30), "ctr task ps", containerd.command(&["task", "ps", "liar2"]));
    eprintln!("lie: ctr task ps: {}", describe(&ps));
    let (kill, _) = within(Duration::from_secs(30), "ctr task kill", containerd.command(&["task", "kill", "liar2"]));
    assert!(!kill.status.success() && stderr(&kill).contains("not found"), "{}", describe(&kill));
    let (delete, _) =
        within(Duration::from_secs(60), "ctr task delete", containerd.command(&["task", "delete", "liar2"]));
    containerd.assert_ok(&delete);
    assert!(stderr(&delete).contains("exit code 42"), "{}", describe(&delete));
    containerd.assert_ok(&containerd.ctr(&["container", "delete", "liar2"]));
    containerd.assert_no_leftovers("a lying agent");
    assert!(!containerd.log().contains("panicked at"), "a shim panicked:\n{}", containerd.log_for_failure());
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn an_oom_flood_reaches_containerd_at_most_once_a_second_and_the_shim_does_not_spin() {
    brig_tests::require_kvm_host();
    let containerd = containerd("oom-flood");
    let mut events = containerd.command(&["events"]).stdout(Stdio::piped()).spawn().expect("ctr events");
    let started = Instant::now();
    containerd.run_idle("flood");
    assert_not_spinning("flood", Duration::from_secs(5));
    let delete = containerd.kill_and_delete("flood");
    assert!(stderr(&delete).contains("exit code 137"), "{}", describe(&delete));
    let flooded = started.elapsed();
    let _ = events.kill();
    let mut seen = String::new();
    events.stdout.take().expect("piped").read_to_string(&mut seen).expect("ctr events' output");
    let _ = events.wait();
    let ooms = seen.lines().filter(|l| l.contains("/tasks/oom")).count();
    eprintln!("oom-flood: {ooms} TaskOOM events in {flooded:?}");
    assert!(ooms >= 1, "the OOM kills reach containerd:\n{seen}");
    assert!(ooms as u64 <= flooded.as_secs() + 2, "{ooms} TaskOOM events in {flooded:?}:\n{seen}");
    containerd.assert_no_leftovers("an OOM flood");
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn a_sigkill_the_agent_never_carries_out_ends_the_task_with_137() {
    brig_tests::require_kvm_host();
    let containerd = containerd("never-wait");
    containerd.run_idle("stuck");
    assert_not_spinning("stuck", Duration::from_secs(3));
    let killed = Instant::now();
    containerd.assert_ok(&containerd.ctr(&["task", "kill", "-s", "SIGKILL", "stuck"]));
    containerd.wait_for_status("stuck", "STOPPED");
    let took = killed.elapsed();
    eprintln!("never-wait: STOPPED {took:?} after SIGKILL");
    assert!(took >= Duration::from_secs(KILL_GRACE_SECS), "the guest had its grace: {took:?}");
    let delete = containerd.ctr(&["task", "delete", "stuck"]);
    containerd.assert_ok(&delete);
    assert!(stderr(&delete).contains("exit code 137"), "{}", describe(&delete));
    containerd.assert_ok(&containerd.ctr(&["container", "delete", "stuck"]));
    containerd.assert_no_leftovers("a SIGKILL the agent ignored");

    // A foreground `ctr run` gets its answer too.
    let mut run = containerd.run_command(&["--rm"], "stuck2", &["sleep", "1000"]);
    let ctr = run.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("ctr run");
    containerd.wait_for_status("stuck2", "RUNNING");
    containerd.assert_ok(&containerd.ctr(&["task", "kill", "-s", "SIGKILL", "stuck2"]));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(ctr.wait_with_output()));
    let out = rx.recv_timeout(Duration::from_secs(KILL_GRACE_SECS + 50)).expect("ctr run ends").expect("ctr run");
    assert_eq!(out.status.code(), Some(137), "{}", describe(&out));
    containerd.assert_no_leftovers("a SIGKILL the agent ignored, under ctr run");
    assert!(!containerd.log().contains("panicked at"), "a shim panicked:\n{}", containerd.log_for_failure());
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn brig_snapshot_needs_no_agent_and_captures_one_that_stopped_answering() {
    brig_tests::require_kvm_host();
    let containerd = containerd("mute");
    // The id is the marker: the mute agent keeps it in its memory from CreateContainer.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let id = format!("mute-{nanos}");
    let pid = containerd.run_idle(&id);
    let dir = std::env::temp_dir().join(format!("brig-snapshot-mute-{pid}"));
    let _ = std::fs::remove_dir_all(&dir);
    let brig = brig_tests::artifact("BRIG_CLI_BIN");
    let mut snapshot = Command::new(&brig);
    snapshot.args(["snapshot", &id, "-o"]).arg(&dir).args(["--reason", "the agent stopped answering"]);
    let (out, took) = within(Duration::from_secs(120), "brig snapshot of a guest whose agent is mute", snapshot);
    eprintln!("mute: brig snapshot took {took:?}");
    assert!(out.status.success(), "{}", describe(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("agent-view.json not written: the agent did not answer within 1000 ms"), "{said}");
    assert!(!dir.join("agent-view.json").exists(), "nothing is written for an agent that does not answer");
    let verify = Command::new(&brig).arg("verify").arg(&dir).output().expect("brig verify");
    assert!(verify.status.success(), "{}", describe(&verify));
    // The guest's own console says its agent went quiet before the capture.
    let console = std::fs::read_to_string(dir.join("console.log")).expect("console.log");
    assert!(console.contains("from now on nothing is"), "{console}");
    let found = Command::new("grep").args(["-c", "-a", "-F", &id]).arg(dir.join("memory.elf")).output().expect("grep");
    assert!(found.status.success(), "the guest's copy of {id} is in memory.elf: {}", describe(&found));

    // brig-vmm SIGKILLed: the task ends without the agent, and nothing is left.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).expect("kill");
    containerd.wait_for_status(&id, "STOPPED");
    containerd.assert_ok(&containerd.ctr(&["task", "delete", &id]));
    containerd.assert_ok(&containerd.ctr(&["container", "delete", &id]));
    std::fs::remove_dir_all(&dir).expect("cleanup");
    containerd.assert_no_leftovers("a snapshot of a mute guest");
}
