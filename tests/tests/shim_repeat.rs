//! Many tasks, one after another and side by side: every run is a fresh VM, the
//! rootfs image of the unchanged snapshot is built once and reused, and nothing
//! accumulates.

use std::time::Instant;

use std::process::Output;

use brig_tests::containerd::{cached_images, describe, Containerd};

/// A guest that triple-faulted, or never reached its agent, while five boot at once in
/// the nested test host: the emulator's failure (ADR 009 measured QEMU's own microvm
/// guests failing as often in the same hosts), not one brig-vmm can cause.
fn is_emulator_boot_failure(out: &Output) -> bool {
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr.contains("triple fault (KVM_EXIT_SHUTDOWN)") || stderr.contains("the guest agent did not answer within")
}

fn mount_count() -> usize {
    std::fs::read_to_string("/proc/mounts").unwrap_or_default().lines().count()
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn twenty_sequential_runs_reuse_one_image_and_leak_nothing() {
    brig_tests::require_kvm_host();
    let containerd = Containerd::start();
    let mounts_before = mount_count();
    let mut took = Vec::new();
    // Other tests' images may be cached too; what counts is that run 0 adds one image
    // and runs 1..20 add none.
    let images_before = cached_images();
    let mut images_after_first = Vec::new();
    for i in 0..20 {
        let start = Instant::now();
        let out = containerd.run(&format!("seq-{i}"), &["sh", "-c", &format!("echo run {i}")]);
        took.push(start.elapsed());
        containerd.assert_ok(&out);
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("run {i}\n"));
        let images = cached_images();
        if i == 0 {
            let added = images.iter().filter(|image| !images_before.contains(image)).count();
            assert_eq!(added, 1, "run 0 adds one image: {images:?} (before: {images_before:?})");
            images_after_first = images;
        } else {
            assert_eq!(images, images_after_first, "run {i}: the unchanged snapshot's image is reused");
        }
    }
    took.sort();
    println!("20 sequential ctr run --rm: min {:?}, median {:?}, max {:?}", took[0], took[10], took[19]);
    containerd.assert_no_leftovers("20 sequential runs");
    assert_eq!(mount_count(), mounts_before, "mounts accumulated");
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn five_parallel_runs_each_get_their_own_vm_and_leak_nothing() {
    brig_tests::require_kvm_host();
    let containerd = Containerd::start();
    let mounts_before = mount_count();
    let images_before = cached_images();
    let outputs: Vec<_> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..5)
            .map(|i| {
                let containerd = &containerd;
                scope.spawn(move || {
                    let args = ["sh", "-c", &format!("echo par {i}; hostname")];
                    let first = containerd.run(&format!("par-{i}"), &args);
                    if first.status.success() || !is_emulator_boot_failure(&first) {
                        return first;
                    }
                    // ADR 011: the one failure the emulated test host causes, retried
                    // once and shown; any other failure, or a second one, fails the test.
                    println!("run {i}: the guest died in early boot, retried once:\n{}", describe(&first));
                    containerd.run(&format!("par-{i}-again"), &args)
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().expect("run thread")).collect()
    });
    for (i, out) in outputs.iter().enumerate() {
        containerd.assert_ok(out);
        assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("par {i}\n")), "run {i}");
    }
    let added = cached_images().into_iter().filter(|image| !images_before.contains(image)).count();
    assert_eq!(added, 1, "the parallel runs shared one image");
    containerd.assert_no_leftovers("5 parallel runs");
    assert_eq!(mount_count(), mounts_before, "mounts accumulated");
}
