//! The Intel MultiProcessor table, which tells a kernel without ACPI how many CPUs
//! there are and how the IOAPIC is wired (MP spec 1.4).
//!
//! Written as plain little-endian bytes: a floating pointer (`_MP_`) followed by a
//! configuration table (`PCMP`) with one processor entry per vCPU, an ISA bus, the
//! IOAPIC, an I/O interrupt entry per IOAPIC input and the two local interrupts.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{IOAPIC_START, IRQ_MAX, LAPIC_START, MPTABLE_START};

const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const PROCESSOR_LEN: usize = 20;
const SMALL_ENTRY_LEN: usize = 8;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// Everything must fit in the KiB Linux scans at 639 KiB.
const MAX_LEN: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("an MP table for {0} vCPUs does not fit in the 1 KiB the guest scans")]
    TooManyCpus(u8),
    #[error("cannot write the MP table into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// The IOAPIC's id: one past the last vCPU's APIC id.
pub fn ioapic_id(vcpus: u8) -> u8 {
    vcpus
}

/// The table's bytes for `vcpus` CPUs, to be placed at [`MPTABLE_START`].
pub fn build(vcpus: u8) -> Result<Vec<u8>, MptableError> {
    let irqs = IRQ_MAX as usize + 1;
    let entries = usize::from(vcpus) + 1 + 1 + irqs + 2;
    let table_len = HEADER_LEN + usize::from(vcpus) * PROCESSOR_LEN + (entries - usize::from(vcpus)) * SMALL_ENTRY_LEN;
    if vcpus == 0 || FLOATING_POINTER_LEN + table_len > MAX_LEN {
        return Err(MptableError::TooManyCpus(vcpus));
    }
    let table_addr = MPTABLE_START as u32 + FLOATING_POINTER_LEN as u32;

    let mut fp = Vec::with_capacity(FLOATING_POINTER_LEN);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&table_addr.to_le_bytes());
    fp.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // length (16-byte units), spec 1.4, checksum, features
    fp[10] = checksum(&fp);

    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.extend_from_slice(&[4, 0]); // spec 1.4, checksum (filled below)
    table.extend_from_slice(b"BRIG    ");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&(entries as u16).to_le_bytes());
    table.extend_from_slice(&(LAPIC_START as u32).to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // extended table length + checksum + reserved

    for cpu in 0..vcpus {
        let flags = if cpu == 0 { 0b11 } else { 0b01 }; // enabled (+ bootstrap processor)
        table.extend_from_slice(&[0, cpu, APIC_VERSION, flags]);
        table.extend_from_slice(&0x600u32.to_le_bytes()); // family 6 signature
        table.extend_from_slice(&0x201u32.to_le_bytes()); // FPU + APIC feature flags
        table.extend_from_slice(&[0; 8]);
    }
    table.extend_from_slice(&[1, 0]);
    table.extend_from_slice(b"ISA   ");
    table.extend_from_slice(&[2, ioapic_id(vcpus), IOAPIC_VERSION, 1]);
    table.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    for irq in 0..irqs as u8 {
        // type 3 (I/O interrupt), vectored INT, bus-default polarity/trigger, ISA bus
        table.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id(vcpus), irq]);
    }
    table.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]); // ExtINT -> LINT0 of every CPU
    table.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]); // NMI -> LINT1 of every CPU
    debug_assert_eq!(table.len(), table_len);
    table[7] = checksum(&table);

    fp.extend_from_slice(&table);
    Ok(fp)
}

/// Writes the table for `vcpus` CPUs into guest memory.
pub fn setup(memory: &GuestMemoryMmap, vcpus: u8) -> Result<(), MptableError> {
    let bytes = build(vcpus)?;
    memory.write_slice(&bytes, GuestAddress(MPTABLE_START)).map_err(MptableError::Write)
}

/// The byte that makes `bytes` sum to zero (mod 256).
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn checksums_and_pointers_are_consistent() {
        for vcpus in [1u8, 2, 8, 32] {
            let bytes = build(vcpus).expect("table");
            assert_eq!(&bytes[..4], b"_MP_");
            assert_eq!(sum(&bytes[..16]), 0, "floating pointer checksum");
            let table_addr = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
            assert_eq!(u64::from(table_addr), MPTABLE_START + 16);
            let table = &bytes[16..];
            assert_eq!(&table[..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "config table checksum");
            let count = u16::from_le_bytes([table[34], table[35]]) as usize;
            assert_eq!(count, vcpus as usize + 2 + 24 + 2);
        }
    }

    #[test]
    fn one_processor_entry_per_vcpu_and_only_cpu0_is_bsp() {
        let bytes = build(4).expect("table");
        let cpus: Vec<&[u8]> = bytes[16 + HEADER_LEN..].chunks(PROCESSOR_LEN).take(4).collect();
        for (i, cpu) in cpus.iter().enumerate() {
            assert_eq!(cpu[0], 0, "processor entry type");
            assert_eq!(cpu[1] as usize, i, "APIC id");
            assert_eq!(cpu[3] & 2 != 0, i == 0, "BSP flag");
        }
    }

    #[test]
    fn refuses_what_does_not_fit() {
        assert!(matches!(build(0), Err(MptableError::TooManyCpus(0))));
        assert!(matches!(build(64), Err(MptableError::TooManyCpus(64))));
    }
}
