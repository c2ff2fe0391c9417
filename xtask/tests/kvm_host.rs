//! `cargo xtask kvm-host` itself: the command runs where KVM can boot Linux, its
//! output and exit status come back, the work tree is shared read-write, a hang
//! ends at the timeout with the test host's console tail, and a test host whose
//! heartbeat stops, or that does not boot, is reported as wedged.
//!
//! One test, run in sequence: each case boots a test host (~5 s).

use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn kvm_host(args: &[&str]) -> Output {
    kvm_host_with_env(args, &[])
}

fn kvm_host_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("kvm-host")
        .args(args)
        .envs(env.iter().copied())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run xtask kvm-host")
}

fn nested() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").expect("cpuinfo");
    !cpuinfo.lines().any(|l| l.starts_with("flags") && (l.contains(" vmx") || l.contains(" svm")))
}

#[test]
fn runs_commands_where_kvm_can_boot_linux() {
    // The CPU the command sees offers hardware virtualization.
    let flag = if nested() { "svm" } else { "vmx|svm" };
    let out = kvm_host(&["--", "grep", "-c", "-w", "-E", flag, "/proc/cpuinfo"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let count: u32 = stdout.trim().parse().unwrap_or_else(|_| panic!("a count, got {stdout:?}\n{stderr}"));
    assert!(count >= 1, "{stdout}");
    if nested() {
        assert!(stderr.contains("test host booted in"), "the boot time is printed: {stderr}");
    }

    // Output comes back byte for byte: no `\r` added before each `\n` by the console tty.
    let out = kvm_host(&["--", "printf", "a\\nb\\tc\\n"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"a\nb\tc\n", "{:?}", String::from_utf8_lossy(&out.stdout));

    // Exit status comes back.
    let out = kvm_host(&["--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", String::from_utf8_lossy(&out.stderr));
    let out = kvm_host(&["--", "false"]);
    assert!(!out.status.success());

    // The work tree is at the same path and writable; /dev/kvm is there; we are root.
    let marker = format!("target/kvm-host-marker-{}", std::process::id());
    let script = format!("test -f Cargo.toml && test -c /dev/kvm && [ $(id -u) = 0 ] && echo hi > ../{marker}");
    let out = kvm_host(&["--", "sh", "-c", &script]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(&marker);
    assert_eq!(std::fs::read_to_string(&path).expect("written inside, read outside"), "hi\n");
    std::fs::remove_file(&path).expect("cleanup");

    // A hang ends at the timeout, with the console tail.
    let start = Instant::now();
    let out = kvm_host(&["--timeout", "20", "--", "sleep", "600"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "{stderr}");
    assert!(start.elapsed() < Duration::from_secs(90), "took {:?}", start.elapsed());
    assert!(stderr.contains("did not finish within 20s"), "{stderr}");
    if nested() {
        assert!(stderr.contains("Console tail") && stderr.contains("brig-testhost: ready"), "{stderr}");
    }

    // A test host whose heartbeat stops is called wedged (125), with its vCPUs' state.
    // The command stops the heartbeat the way a frozen test host would: init can no
    // longer write the file, so its age grows.
    if nested() {
        let freeze = "run=$(sed 's/.*brig.run=\\([^ ]*\\).*/\\1/' /proc/cmdline); \
                      until mkdir \"$run/heartbeat\" 2>/dev/null; do rm -f \"$run/heartbeat\"; done; sleep 600";
        let start = Instant::now();
        let out = kvm_host_with_env(
            &["--timeout", "300", "--", "sh", "-c", freeze],
            &[("BRIG_KVM_HOST_HEARTBEAT_SECS", "15")],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{stderr}");
        assert!(start.elapsed() < Duration::from_secs(120), "took {:?}", start.elapsed());
        assert!(stderr.contains("the test host is wedged (no heartbeat for"), "{stderr}");
        assert!(stderr.contains("CPU#0") && stderr.contains("RIP="), "the vCPUs' registers are printed: {stderr}");

        // A test host that does not come up is called wedged in boot (125), not left
        // to the command's timeout: no test host boots in one second under TCG.
        let start = Instant::now();
        let out = kvm_host_with_env(&["--timeout", "300", "--", "true"], &[("BRIG_KVM_HOST_BOOT_SECS", "1")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{stderr}");
        assert!(start.elapsed() < Duration::from_secs(60), "took {:?}", start.elapsed());
        assert!(stderr.contains("the test host is wedged in boot (not up after 1s"), "{stderr}");
        assert!(stderr.contains("CPU#0") && stderr.contains("RIP="), "the vCPUs' registers are printed: {stderr}");
    }
}
