//! brig-vmm's lifecycle: pause and resume, state saving, guest panics, and the
//! errors a user hits, each leaving nothing behind.

use std::process::Command;
use std::time::{Duration, Instant};

use brig_tests::scratch::Scratch;
use brig_tests::vm::{probe_spec, VmSpec};
use brig_vmm_api::{ErrorCode, Response, RunState};

const BOOT: Duration = Duration::from_secs(60);

fn last_tick(console: &str) -> Option<u64> {
    console.lines().rev().find_map(|l| l.split("probe: tick ").nth(1)?.trim().parse().ok())
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn pause_stops_the_guest_and_resume_continues_it() {
    brig_tests::require_kvm_host();
    let mut vm = probe_spec(&["probe.ticks=100000".into()]).vcpus(2).start();
    let deadline = Instant::now() + BOOT;
    while last_tick(&vm.console_text()).is_none_or(|t| t < 5) {
        assert!(Instant::now() < deadline, "guest never ticked:\n{}", vm.diagnostics());
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut control = vm.control().expect("control socket");
    assert_eq!(control.pause().expect("pause"), RunState::Paused);
    let at_pause = vm.console_text().len();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(vm.console_text().len(), at_pause, "a paused guest prints nothing");
    assert_eq!(control.state().expect("state").state, RunState::Paused);

    let state = vm.dir.join("state.bin");
    let saved = control.save_state(&state).expect("save-state");
    assert_eq!(saved.path, Some(state.clone()));
    let machine: brig_vmm::snapshot::MachineState = brig_vmm::snapshot::read(&state).expect("state file verifies");
    assert_eq!(machine.vcpus.len(), 2);
    assert!(machine.vcpus.iter().all(|v| v.summary.rip.starts_with("0xffffffff8")), "vCPUs are in the kernel");
    assert_eq!(machine.devices.len(), 2, "vsock and rng");

    let tick_at_pause = last_tick(&vm.console_text()).expect("ticks");
    assert_eq!(control.resume().expect("resume"), RunState::Running);
    let deadline = Instant::now() + Duration::from_secs(30);
    while last_tick(&vm.console_text()).is_none_or(|t| t < tick_at_pause + 5) {
        assert!(Instant::now() < deadline, "guest did not continue after resume:\n{}", vm.diagnostics());
        std::thread::sleep(Duration::from_millis(50));
    }

    let metrics = control.metrics().expect("metrics");
    assert!(metrics.counters.vcpu_exits_io > 0, "{metrics:?}");
    assert!(metrics.memory.rss_kib > 0, "{metrics:?}");
    assert_eq!(control.shutdown().expect("shutdown"), RunState::Stopping);
    assert_eq!(vm.wait(Duration::from_secs(10)).expect("exit").code(), Some(0));
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn save_state_requires_a_paused_vm_and_bad_requests_get_codes() {
    brig_tests::require_kvm_host();
    let vm = probe_spec(&["probe.ticks=100000".into()]).start();
    let deadline = Instant::now() + BOOT;
    while !vm.api.exists() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let path = vm.dir.join("state.bin");
    let mut control = vm.control().expect("control socket");
    let err = control.save_state(&path).expect_err("refused");
    assert_eq!(err.code(), Some(ErrorCode::FailedPrecondition), "{err}");
    assert!(!path.exists());
    let invalid = |answer: Response| matches!(answer, Response::Error(e) if e.code == ErrorCode::InvalidRequest);
    assert!(invalid(control.send_line(br#"{"op":"reboot-the-moon"}"#).expect("answer")));
    assert!(invalid(control.send_line(b"{not json").expect("answer")));
    assert_eq!(control.resume().expect("answer"), RunState::Running, "resume is idempotent");
    drop(vm);
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn a_panicking_guest_kernel_makes_brig_vmm_exit_non_zero_with_the_console_tail() {
    brig_tests::require_kvm_host();
    let mut vm = probe_spec(&["probe.exit=3".into()]).start();
    let status = vm.wait(BOOT).expect("exits");
    assert_eq!(status.code(), Some(2), "{}", vm.diagnostics());
    let stderr = vm.stderr_text();
    assert!(stderr.contains("the guest kernel panicked"), "{stderr}");
    assert!(stderr.contains("Kernel panic - not syncing: Attempted to kill init"), "{stderr}");
    assert!(!vm.vsock.exists() && !vm.api.exists(), "sockets removed");
}

/// Runs brig-vmm with `args` and expects it to fail at start with `message`,
/// quickly, leaving no socket or console file behind.
fn refuses(args: &[String], message: &str, dir: &Scratch) {
    let start = Instant::now();
    let out = Command::new(brig_tests::artifact("BRIG_VMM_BIN")).args(args).output().expect("run brig-vmm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(message), "expected `{message}` in:\n{stderr}");
    assert!(start.elapsed() < Duration::from_secs(10), "refusal took {:?}", start.elapsed());
    for leftover in ["vsock.sock", "api.sock", "console.log"] {
        assert!(!dir.join(leftover).exists(), "{leftover} left behind after: {message}");
    }
}

fn base_args(dir: &Scratch) -> Vec<String> {
    let spec = VmSpec::new();
    vec![
        "--kernel".into(),
        spec.kernel.display().to_string(),
        "--initramfs".into(),
        spec.initramfs.expect("initramfs").display().to_string(),
        "--vsock".into(),
        format!("cid=3,path={}", dir.join("vsock.sock").display()),
        "--api-socket".into(),
        dir.join("api.sock").display().to_string(),
        "--console".into(),
        dir.join("console.log").display().to_string(),
    ]
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn start_errors_are_clear_and_leave_nothing_behind() {
    brig_tests::require_kvm_host();
    let dir = Scratch::new("errors");
    let with = |extra: &[&str]| {
        let mut args = base_args(&dir);
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };

    let mut args = base_args(&dir);
    args[1] = "/nonexistent/vmlinux".into();
    refuses(&args, "the kernel /nonexistent/vmlinux does not exist", &dir);

    let mut args = base_args(&dir);
    args[3] = "/nonexistent/initramfs".into();
    refuses(&args, "the initramfs /nonexistent/initramfs does not exist", &dir);

    let mut args = base_args(&dir);
    args[1] = args[3].clone(); // a cpio archive is no kernel
    refuses(&args, "is not a loadable vmlinux", &dir);

    refuses(&with(&["--memory", "32"]), "MiB of guest memory is too little", &dir);
    refuses(&with(&["--memory", "8"]), "memory must be at least 32 MiB, not 8 MiB", &dir);
    refuses(&with(&["--vcpus", "0"]), "vcpus must be between 1 and 32, not 0", &dir);

    std::fs::write(dir.join("api.sock"), b"precious").expect("stale file");
    let out = Command::new(brig_tests::artifact("BRIG_VMM_BIN")).args(base_args(&dir)).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("api.sock already exists; remove it or choose another path"));
    assert_eq!(std::fs::read(dir.join("api.sock")).expect("kept"), b"precious", "an existing file is not touched");
    std::fs::remove_file(dir.join("api.sock")).expect("cleanup");

    // No /dev/kvm: hide it with a private /dev in a new mount namespace.
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", "mount -t tmpfs none /dev && exec \"$@\"", "sh"]);
    let out = cmd.arg(brig_tests::artifact("BRIG_VMM_BIN")).args(base_args(&dir)).output().expect("unshare");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/dev/kvm does not exist: load kvm-intel or kvm-amd"), "{stderr}");
    for leftover in ["vsock.sock", "api.sock", "console.log"] {
        assert!(!dir.join(leftover).exists(), "{leftover} left behind without /dev/kvm");
    }
}
