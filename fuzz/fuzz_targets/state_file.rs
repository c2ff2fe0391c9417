//! A state file (or a forensic snapshot's state) from anywhere: decoding verifies
//! or refuses it, without panicking or allocating what its header claims.
#![no_main]

use brig_vmm::snapshot::{self, MachineState};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = snapshot::decode::<MachineState>("fuzz", data);
    // The same bytes behind a valid prefix, so the fuzzer reaches the payload decoder.
    let mut framed = Vec::with_capacity(data.len() + 52);
    framed.extend_from_slice(&snapshot::MAGIC);
    framed.extend_from_slice(&snapshot::FORMAT_VERSION.to_le_bytes());
    framed.extend_from_slice(&(data.len() as u64).to_le_bytes());
    framed.extend_from_slice(&snapshot::checksum(data));
    framed.extend_from_slice(data);
    let _ = snapshot::decode::<MachineState>("fuzz", &framed[..]);
});
