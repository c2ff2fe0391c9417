//! A guest driving a virtio-mmio transport (blk, rng or vsock) over memory it
//! wrote: brig_vmm::fuzzing::virtio_mmio describes the input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| brig_vmm::fuzzing::virtio_mmio(data));
