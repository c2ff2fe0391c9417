//! brig's integration-test harness.
//!
//! Every test in `tests/tests/` that needs `/dev/kvm`, root or a real guest is
//! marked `#[ignore = "needs kvm-host…"]` so that a plain `cargo test` on a
//! machine without a Linux-capable KVM reports it as ignored instead of failing.
//! `cargo xtask test` runs these binaries with `--include-ignored` inside
//! `cargo xtask kvm-host` and fails the run if any test is still ignored or
//! skipped there. Harness helpers never skip: a missing prerequisite panics with
//! what to do about it.

pub mod cni;
pub mod container;
pub mod containerd;
pub mod jail;
pub mod net;
pub mod oci;
pub mod peers;
pub mod proc;
pub mod ring0;
pub mod scratch;
pub mod vm;

/// `Some("nested")` or `Some("direct")` when running under `cargo xtask kvm-host`.
pub fn kvm_host_mode() -> Option<String> {
    std::env::var("BRIG_KVM_HOST").ok()
}

/// Panics unless the test runs where `/dev/kvm` can boot Linux.
pub fn require_kvm_host() {
    assert!(
        kvm_host_mode().is_some(),
        "this test needs a KVM that can boot Linux: run it with `cargo xtask test`, or \
         `cargo xtask kvm-host -- <test binary> --include-ignored`"
    );
    assert!(std::path::Path::new("/dev/kvm").exists(), "BRIG_KVM_HOST is set but /dev/kvm is missing");
}

/// A path from an environment variable set by `cargo xtask test` (see xtask/src/artifacts.rs).
pub fn artifact(var: &str) -> std::path::PathBuf {
    let path = std::env::var_os(var).unwrap_or_else(|| {
        panic!("{var} is not set: run this test through `cargo xtask test`, which builds and passes the artifacts")
    });
    let path = std::path::PathBuf::from(path);
    assert!(path.exists(), "{var}={} does not exist", path.display());
    path
}

/// `d` in milliseconds, as the benchmarks print it.
pub fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
