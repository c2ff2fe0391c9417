//! brig-vmm on this machine's own `/dev/kvm`, outside the test host.
//!
//! Where the CPU has no hardware virtualization (or the KVM is the paravirtual
//! kvm_pvm, as on brig's development machines) a Linux guest cannot boot: brig-vmm
//! must say so at once instead of hanging. Where it has VT-x/AMD-V, it must get
//! past that check (and then fail on the bogus kernel this test gives it).

use std::process::Command;
use std::time::{Duration, Instant};

fn hardware_virtualization() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").expect("/proc/cpuinfo");
    let flags = cpuinfo.lines().any(|l| l.starts_with("flags") && (l.contains(" vmx") || l.contains(" svm")));
    flags && !std::path::Path::new("/sys/module/kvm_pvm").exists()
}

#[test]
fn refuses_a_kvm_that_cannot_run_linux_instead_of_hanging() {
    let dir = std::env::temp_dir().join(format!("brig-host-kvm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let kernel = dir.join("not-a-kernel");
    std::fs::write(&kernel, b"this is not an ELF file").expect("kernel");
    let api = dir.join("api.sock");

    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_brig-vmm"))
        .arg("--kernel")
        .arg(&kernel)
        .arg("--api-socket")
        .arg(&api)
        .output()
        .expect("run brig-vmm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
    let expected = if !std::path::Path::new("/dev/kvm").exists() {
        "/dev/kvm does not exist"
    } else if hardware_virtualization() {
        "is not a loadable vmlinux"
    } else {
        "this host's KVM cannot run Linux guests"
    };
    assert!(stderr.contains(expected), "expected `{expected}` in: {stderr}");
    assert!(!api.exists(), "no socket left behind");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
