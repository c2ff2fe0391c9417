//! Many tasks, one after another and side by side: every run is a fresh VM, the
//! rootfs image of the unchanged snapshot is built once and reused, and nothing
//! accumulates.

use std::time::Instant;

use brig_tests::containerd::{cached_images, Containerd};

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
                    containerd.run(&format!("par-{i}"), &["sh", "-c", &format!("echo par {i}; hostname")])
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
