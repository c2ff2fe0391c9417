//! containerd 1.6 (Debian's) drives containerd-shim-brig-v2 through `ctr`: every
//! task operation, each container in its own micro-VM.

use std::io::Write;
use std::process::{Output, Stdio};
use std::time::Duration;

use brig_tests::containerd::{describe, stdout, Containerd};

/// The guest kernel is brig's (built from linux-source), not the host's.
fn host_kernel() -> String {
    nix::sys::utsname::uname().expect("uname").release().to_string_lossy().into_owned()
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn ctr_run_passes_back_output_and_exit_code() {
    brig_tests::require_kvm_host();
    let containerd = Containerd::start();
    let out = containerd.run("hello", &["sh", "-c", "echo out $(uname -r); echo err >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}\n{}", describe(&out), containerd.log_for_failure());
    let guest_kernel = stdout(&out).trim().strip_prefix("out ").map(str::to_owned);
    let guest_kernel = guest_kernel.unwrap_or_else(|| panic!("{}", describe(&out)));
    assert_ne!(guest_kernel, host_kernel(), "the container ran on the host's kernel");
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "err");
    assert_start_timeline(&containerd, "hello");
    containerd.assert_no_leftovers("ctr run");
}

/// The shim logged task `id`'s start timeline (what `cargo xtask bench start` reads)
/// with every step, the guest's two marks included (its clock fitted the host's).
fn assert_start_timeline(containerd: &Containerd, id: &str) {
    let marker = format!("start timeline of task {id}: shim_up at ");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let log = loop {
        // containerd copies the shim's log lines as they come: the last may lag.
        let log = containerd.log();
        if log.contains(&marker) || std::time::Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let line = log.lines().find(|l| l.contains(&marker)).unwrap_or_else(|| panic!("no start timeline:\n{log}"));
    let steps = [
        "create",
        "rootfs_image",
        "vmm_spawned",
        "kernel_entry",
        "init",
        "agent_ready",
        "created",
        "started",
        "exit_seen",
        "deleted",
    ];
    let mut rest = line;
    for step in steps {
        let at = rest.find(&format!(", {step} +")).unwrap_or_else(|| panic!("{step} missing or out of place: {line}"));
        rest = &rest[at + 2..];
    }
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn stdin_reaches_the_process_and_its_end_ends_it() {
    brig_tests::require_kvm_host();
    let containerd = Containerd::start();
    let mut ctr = containerd
        .run_command(&["--rm"], "stdin", &["sh", "-c", "tr a-z A-Z; echo done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctr runs");
    let mut input = ctr.stdin.take().expect("stdin");
    let text = "hello brig\n".repeat(2000);
    input.write_all(text.as_bytes()).expect("write stdin");
    drop(input);
    let out = ctr.wait_with_output().expect("ctr");
    containerd.assert_ok(&out);
    assert_eq!(stdout(&out), format!("{}done\n", text.to_uppercase()));
    containerd.assert_no_leftovers("ctr run -i");
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn env_and_cwd_come_from_the_image_and_the_command_line() {
    brig_tests::require_kvm_host();
    let containerd = Containerd::start();
    let out = containerd.run_with(
        &["--rm", "--env", "GREETING=hi there", "--cwd", "/etc"],
        "env",
        &["sh", "-c", "echo \"$GREETING|$(pwd)|$PATH\""],
    );
    containerd.assert_ok(&out);
    let line = stdout(&out);
    let fields: Vec<&str> = line.trim().split('|').collect();
    assert_eq!(fields[..2], ["hi there", "/etc"], "{line}");
    assert!(fields[2].contains("/usr/bin"), "PATH comes from the image config: {line}");
    containerd.assert_no_leftovers("env and cwd");
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn a_running_task_can_be_exec_d_into_listed_measured_paused_and_resumed() {
    brig_tests::require_kvm_host();
    let containerd = Containerd::start();
    // Ticks with the guest's uptime every 0.1s: a freeze shows up as a gap.
    let ticker = "while true; do cut -d' ' -f1 /proc/uptime >> /tmp/ticks; sleep 0.1; done";
    containerd.assert_ok(&containerd.run_with(&["-d"], "busy", &["sh", "-c", ticker]));
    let pid = containerd.wait_for_status("busy", "RUNNING");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "the task's pid is brig-vmm on the host");

    let exec = containerd.ctr(&["task", "exec", "--exec-id", "probe", "busy", "sh", "-c", "echo $(pwd) $$; exit 3"]);
    assert_eq!(exec.status.code(), Some(3), "{}", describe(&exec));
    assert!(stdout(&exec).starts_with("/ "), "{}", describe(&exec));

    let ps = containerd.ctr(&["task", "ps", "busy"]);
    containerd.assert_ok(&ps);
    let pids = stdout(&ps).lines().skip(1).filter(|l| !l.trim().is_empty()).count();
    assert!(pids >= 1, "ctr task ps lists the guest processes: {}", describe(&ps));

    let metrics = containerd.ctr(&["task", "metrics", "--format", "json", "busy"]);
    containerd.assert_ok(&metrics);
    let m: serde_json::Value =
        serde_json::from_slice(&metrics.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&metrics)));
    assert!(m["pids"]["current"].as_u64().unwrap_or(0) >= 1, "{m}");
    assert!(m["memory"]["usage"].as_u64().unwrap_or(0) > 0, "{m}");
    assert!(m["cpu"]["usage_usec"].as_u64().unwrap_or(0) > 0, "{m}");

    containerd.assert_ok(&containerd.ctr(&["task", "pause", "busy"]));
    containerd.wait_for_status("busy", "PAUSED");
    std::thread::sleep(Duration::from_secs(2));
    containerd.assert_ok(&containerd.ctr(&["task", "resume", "busy"]));
    containerd.wait_for_status("busy", "RUNNING");
    std::thread::sleep(Duration::from_millis(500));
    let ticks = containerd.ctr(&["task", "exec", "--exec-id", "ticks", "busy", "cat", "/tmp/ticks"]);
    containerd.assert_ok(&ticks);
    let times: Vec<f64> = stdout(&ticks).lines().filter_map(|l| l.trim().parse().ok()).collect();
    let longest = times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    assert!(longest >= 1.8, "the ticker never stopped for the 2s pause (longest gap {longest:.2}s)");
    assert!(*times.last().unwrap_or(&0.0) > times[0] + longest, "it ticks again after resume: {times:?}");

    let delete = containerd.kill_and_delete("busy");
    let warning = String::from_utf8_lossy(&delete.stderr);
    assert!(warning.contains("exit code 137"), "delete reports SIGKILL's status: {}", describe(&delete));
    containerd.assert_no_leftovers("exec, ps, metrics, pause, resume, kill, delete");
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn kill_delivers_the_signal_to_the_container() {
    brig_tests::require_kvm_host();
    let containerd = Containerd::start();
    let trap = "trap 'echo got TERM; exit 42' TERM; echo ready; while true; do sleep 0.1; done";
    let ctr = containerd
        .run_command(&["--rm"], "trap", &["sh", "-c", trap])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctr runs");
    containerd.wait_for_status("trap", "RUNNING");
    std::thread::sleep(Duration::from_millis(500));
    containerd.assert_ok(&containerd.ctr(&["task", "kill", "trap"]));
    let out = ctr.wait_with_output().expect("ctr");
    assert_eq!(out.status.code(), Some(42), "{}", describe(&out));
    assert_eq!(stdout(&out), "ready\ngot TERM\n");
    containerd.assert_no_leftovers("kill");
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn a_terminal_has_the_callers_size_and_runs_an_interactive_shell() {
    brig_tests::require_kvm_host();
    let containerd = Containerd::start();
    let (code, screen) =
        containerd.run_in_terminal("tty", &["sh"], b"stty size; tty; echo answer=$((6*7)); exit 5\n", 33, 101);
    assert_eq!(code, Some(5), "{screen}\n{}", containerd.log_for_failure());
    assert!(screen.contains("33 101"), "the pty has ctr's window size: {screen:?}");
    assert!(screen.contains("\n/dev/pts/0\r"), "stdin is the container's own pty: {screen:?}");
    assert!(screen.contains("answer=42"), "{screen:?}");
    containerd.assert_no_leftovers("ctr run -t");
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn the_vm_is_sized_from_the_specs_resources() {
    brig_tests::require_kvm_host();
    let containerd = Containerd::start();
    let report = ["sh", "-c", "echo $(nproc) $(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2)"];
    let parse = |out: &Output| -> (u32, u64) {
        let text = stdout(out);
        let f: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(f.len(), 2, "{}", describe(out));
        (f[0].parse().expect("nproc"), f[1].parse().expect("MemTotal"))
    };
    let limits = ["-d", "--memory-limit", "268435456", "--cpus", "2"];
    containerd.assert_ok(&containerd.run_with(&limits, "sized", &["sleep", "1000"]));
    containerd.wait_for_status("sized", "RUNNING");
    let mut exec = vec!["task", "exec", "--exec-id", "report", "sized"];
    exec.extend_from_slice(&report);
    let sized = containerd.ctr(&exec);
    containerd.assert_ok(&sized);
    let (cpus, mem_kib) = parse(&sized);
    assert_eq!(cpus, 2, "--cpus 2 gives the VM two vCPUs");
    assert!(mem_kib > 256 * 1024, "the guest has room for the 256 MiB limit: {mem_kib} KiB");
    let metrics = containerd.ctr(&["task", "metrics", "--format", "json", "sized"]);
    let m: serde_json::Value =
        serde_json::from_slice(&metrics.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&metrics)));
    assert_eq!(m["memory"]["usage_limit"].as_u64(), Some(268435456), "the container's cgroup has the limit: {m}");
    containerd.kill_and_delete("sized");

    let default = containerd.run("default", &report);
    containerd.assert_ok(&default);
    let (cpus, mem_kib) = parse(&default);
    assert_eq!(cpus, 1, "config.toml's default_vcpus");
    assert!(mem_kib < 128 * 1024, "the default VM has config.toml's 128 MiB: {mem_kib} KiB");
    containerd.assert_no_leftovers("sized VMs");
}
