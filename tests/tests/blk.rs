//! virtio-blk through the guest kernel: writes reach the image, read-only devices
//! refuse them, the serial and the rng device are visible.

use std::os::unix::fs::FileExt;
use std::time::Duration;

use brig_tests::scratch::Scratch;
use brig_tests::vm::{probe_lines, probe_spec, TestVm};

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn guest_writes_reach_the_image_and_a_read_only_device_refuses_them() {
    brig_tests::require_kvm_host();
    let dir = Scratch::new("blk");
    let rw = dir.join("rw.img");
    let ro = dir.join("ro.img");
    std::fs::write(&rw, vec![0u8; 4 << 20]).expect("rw image");
    let mut ro_bytes = vec![0u8; 1 << 20];
    ro_bytes[..14].copy_from_slice(b"read-only-data");
    std::fs::write(&ro, &ro_bytes).expect("ro image");

    let spec = probe_spec(&[
        "probe.write=/dev/vda:4096:brig-blk-test".into(),
        "probe.write=/dev/vdb:0:overwritten!!".into(),
        "probe.read=/dev/vdb:0:14".into(),
        "probe.serial=vda".into(),
        "probe.hwrng=64".into(),
    ])
    .block(format!("path={},serial=rootdisk", rw.display()))
    .block(format!("path={},ro", ro.display()));
    let mut vm = TestVm::start_in(spec, dir);
    let status = vm.wait(Duration::from_secs(60)).expect("probe finishes");
    assert_eq!(status.code(), Some(0), "{}", vm.diagnostics());

    let console = vm.console_text();
    let writes = probe_lines(&console, "write");
    assert_eq!(writes.len(), 2, "{console}");
    assert_eq!(writes[0], "probe: write ok: 13 bytes");
    assert_eq!(writes[1], "probe: write error: write /dev/vdb: Operation not permitted (os error 1)");
    assert_eq!(probe_lines(&console, "read"), vec!["probe: read ok: read-only-data"]);
    assert_eq!(probe_lines(&console, "serial"), vec!["probe: serial ok: rootdisk"]);
    let rng = probe_lines(&console, "hwrng");
    assert!(rng.len() == 1 && rng[0].ends_with("of 64 from virtio_rng.0"), "{rng:?}");

    let mut got = [0u8; 13];
    std::fs::File::open(&rw).expect("rw").read_exact_at(&mut got, 4096).expect("read back");
    assert_eq!(&got, b"brig-blk-test", "data the guest wrote is on the host after shutdown");
    assert_eq!(std::fs::read(&ro).expect("ro"), ro_bytes, "the read-only image is untouched");
}
