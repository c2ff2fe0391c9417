//! A guest sending any stream of vsock packets through a set-up vsock device.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| brig_vmm::fuzzing::vsock_packets(data));
