//! The harness's own proof: a hand-made ring-0 guest runs 10⁸ instructions on the
//! KVM that `cargo xtask kvm-host` provides, and talks back through MMIO and port I/O.

use brig_tests::ring0::{self, expected, ITERATIONS};

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn ring0_guest_runs_1e8_instructions_and_reports_through_mmio_and_pio() {
    brig_tests::require_kvm_host();
    const { assert!(ITERATIONS * 3 >= 100_000_000, "the loop must cover 10^8 instructions") };
    let seed = 0x5eed_0000_1234_5678;
    let report = ring0::run_checked(seed).expect("the guest runs to hlt with correct results");
    assert_eq!(report.mmio_result, expected(seed));
    assert_eq!(report.pio_result, expected(seed) as u32);
    assert_eq!(report.exits, 4, "MMIO read, MMIO write, port write, hlt");
    eprintln!(
        "ring-0 loop: {} instructions in {:?} under kvm-host mode {:?}",
        ITERATIONS * 3,
        report.elapsed,
        brig_tests::kvm_host_mode()
    );
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn a_different_seed_gives_a_different_result() {
    brig_tests::require_kvm_host();
    let a = ring0::run_checked(1).expect("seed 1");
    let b = ring0::run_checked(2).expect("seed 2");
    assert_eq!(b.mmio_result - a.mmio_result, 1, "the seed read through MMIO reaches the guest");
}
