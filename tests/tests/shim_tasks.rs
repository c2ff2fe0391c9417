//! containerd 1.6 (Debian's) drives containerd-shim-brig-v2 through `ctr`: every
//! task operation, each container in its own micro-VM.

use brig_tests::containerd::Containerd;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn describe(out: &std::process::Output) -> String {
    format!("status {:?}\nstdout: {}\nstderr: {}", out.status, stdout(out), String::from_utf8_lossy(&out.stderr))
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn ctr_run_passes_back_output_and_exit_code() {
    brig_tests::require_kvm_host();
    let containerd = Containerd::start();
    let out = containerd.run("hello", &["sh", "-c", "echo hello from $(uname -r); exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}\n{}", describe(&out), containerd.log());
    assert!(stdout(&out).starts_with("hello from "), "{}", describe(&out));
    containerd.assert_no_leftovers("ctr run");
}
