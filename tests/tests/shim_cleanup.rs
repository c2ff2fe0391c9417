//! What the shim leaves behind when things go wrong: a VMM or a shim killed with
//! SIGKILL, a configuration that points nowhere, a guest that never answers.
//! Nothing may remain: no processes, mounts, sockets, state or private images.

use brig_tests::containerd::{describe, shim_pid, Containerd};
use brig_tests::scratch::Scratch;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn a_killed_vmm_ends_the_task_with_an_error_and_delete_still_works() {
    brig_tests::require_kvm_host();
    let containerd = Containerd::start();
    let vmm = containerd.run_idle("victim");
    kill(Pid::from_raw(vmm as i32), Signal::SIGKILL).expect("kill brig-vmm");
    containerd.wait_for_status("victim", "STOPPED");
    let delete = containerd.ctr(&["task", "delete", "victim"]);
    containerd.assert_ok(&delete);
    assert!(String::from_utf8_lossy(&delete.stderr).contains("exit code 255"), "{}", describe(&delete));
    containerd.assert_ok(&containerd.ctr(&["container", "delete", "victim"]));
    containerd.assert_no_leftovers("after kill -9 of brig-vmm");

    // A foreground `ctr run` gets the error status too.
    let ctr = containerd.run_command(&["--rm"], "victim2", &["sleep", "1000"]).spawn().expect("ctr");
    let vmm = containerd.wait_for_status("victim2", "RUNNING");
    kill(Pid::from_raw(vmm as i32), Signal::SIGKILL).expect("kill brig-vmm");
    let out = ctr.wait_with_output().expect("ctr");
    assert_eq!(out.status.code(), Some(255), "{}", describe(&out));
    containerd.assert_no_leftovers("after kill -9 of brig-vmm under ctr run");
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn a_killed_shim_is_cleaned_up_by_containerds_shim_delete() {
    brig_tests::require_kvm_host();
    let containerd = Containerd::start();
    let vmm = containerd.run_idle("orphan");
    let shim = shim_pid("orphan").expect("the shim of task orphan is running");
    kill(Pid::from_raw(shim), Signal::SIGKILL).expect("kill the shim");
    // containerd sees the shim's socket close and runs `containerd-shim-brig-v2 delete`.
    containerd.assert_no_leftovers("after kill -9 of the shim");
    // Killed by `shim delete`, it is reaped by the test host's init, which may take a moment.
    let proc_dir = std::path::PathBuf::from(format!("/proc/{vmm}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while proc_dir.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!proc_dir.exists(), "brig-vmm {vmm} is gone");
    let _ = containerd.ctr(&["task", "delete", "orphan"]);
    containerd.assert_ok(&containerd.ctr(&["container", "delete", "orphan"]));
    // The same name can run again.
    let again = containerd.run("orphan", &["true"]);
    containerd.assert_ok(&again);
    containerd.assert_no_leftovers("after running again");
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn a_missing_kernel_is_a_clear_error_that_leaves_nothing() {
    brig_tests::require_kvm_host();
    let containerd = Containerd::start_with_brig_config("kernel = \"/nonexistent/vmlinux\"\n");
    let out = containerd.run("nokernel", &["true"]);
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/vmlinux") && err.contains("cargo xtask install"), "{}", describe(&out));
    containerd.assert_no_leftovers("a missing kernel");
}

/// Runs `ctr run` with a config whose initramfs is `initramfs`; returns ctr's stderr.
fn run_with_initramfs(name: &str, initramfs: &std::path::Path) -> String {
    let config = format!("initramfs = \"{}\"\nagent_timeout_secs = 8\n", initramfs.display());
    let containerd = Containerd::start_with_brig_config(&config);
    let out = containerd.run(name, &["true"]);
    assert!(!out.status.success(), "{}", describe(&out));
    containerd.assert_no_leftovers(name);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn a_guest_that_never_answers_times_out_and_leaves_nothing() {
    brig_tests::require_kvm_host();
    // busybox as init: the guest boots and stays up, but nothing listens on the agent port.
    let scratch = Scratch::new("silent-initramfs");
    let initramfs = scratch.join("initramfs.cpio");
    brig_rootfs_builder::initramfs::build(std::path::Path::new("/bin/busybox"), &initramfs).expect("initramfs");
    let err = run_with_initramfs("silent", &initramfs);
    assert!(err.contains("the guest agent did not answer within 8s"), "{err}");
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn a_guest_that_dies_at_boot_is_reported_with_its_console() {
    brig_tests::require_kvm_host();
    // The probe's init reboots at once when given no steps.
    let err = run_with_initramfs("dying", &brig_tests::artifact("BRIG_PROBE_INITRAMFS"));
    assert!(err.contains("before the guest agent answered") && err.contains("probe: done"), "{err}");
}
