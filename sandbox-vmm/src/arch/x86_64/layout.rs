//! The guest physical address map.
//!
//! ```text
//! 0x0000_0500  GDT                0x0000_7000  zero page (boot_params)
//! 0x0000_0520  IDT                0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4               0x0000_a000  PDPT        0x0000_b000  PD
//! 0x0002_0000  kernel command line (up to CMDLINE_MAX)
//! 0x0009_fc00  MP table (EBDA; not RAM in the e820 map)
//! 0x0010_0000  RAM continues (the kernel loads at its ELF physical address, 16 MiB)
//! 0xd000_0000  MMIO gap: virtio-mmio devices, one 4 KiB slot each, then IOAPIC/LAPIC
//! 0x1_0000_0000 RAM above the gap, when memory is larger than MMIO_START
//! ```

pub const GDT_START: u64 = 0x500;
pub const IDT_START: u64 = 0x520;
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPT_START: u64 = 0xa000;
pub const PD_START: u64 = 0xb000;
pub const CMDLINE_START: u64 = 0x20000;
/// Bytes reserved for the command line, including the NUL.
pub const CMDLINE_MAX: usize = 4096;
/// The MP table lives in the last KiB of base memory, where Linux scans for it.
pub const MPTABLE_START: u64 = 0x9fc00;
/// End of the low RAM range (start of the EBDA).
pub const EBDA_START: u64 = 0x9fc00;
/// Start of RAM above the legacy hole.
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO gap (768 MiB below 4 GiB).
pub const MMIO_START: u64 = 0xd000_0000;
/// First address above 4 GiB, where RAM resumes past the gap.
pub const RAM_ABOVE_GAP: u64 = 1 << 32;
/// Size of one virtio-mmio device window.
pub const MMIO_SLOT_SIZE: u64 = 0x1000;
/// At most this many virtio-mmio devices (IRQs 5..=23).
pub const MMIO_SLOTS: u64 = 19;

pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const LAPIC_START: u64 = 0xfee0_0000;
/// KVM's TSS and identity-map pages, inside the gap and clear of the devices.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Legacy IRQ of the serial port (COM1).
pub const SERIAL_IRQ: u32 = 4;
/// First IRQ handed to virtio-mmio devices.
pub const FIRST_VIRTIO_IRQ: u32 = 5;
/// Highest IOAPIC input.
pub const IRQ_MAX: u32 = 23;

pub const PAGE_SIZE: u64 = 4096;

// The device windows end below the IOAPIC, and KVM's private pages sit above the LAPIC.
const _: () = assert!(MMIO_START + MMIO_SLOTS * MMIO_SLOT_SIZE < IOAPIC_START);
const _: () = assert!(KVM_IDENTITY_MAP_ADDRESS > LAPIC_START);
const _: () = assert!((IRQ_MAX - FIRST_VIRTIO_IRQ + 1) as u64 == MMIO_SLOTS);
// The contract's device limit is exactly the slots this layout has.
const _: () = assert!(brig_vmm_api::config::MAX_DEVICES as u64 == MMIO_SLOTS);

/// Guest RAM ranges for `memory_bytes` of memory: below the MMIO gap, and above 4 GiB
/// for whatever does not fit below it.
pub fn ram_ranges(memory_bytes: u64) -> Vec<(u64, u64)> {
    if memory_bytes <= MMIO_START {
        vec![(0, memory_bytes)]
    } else {
        vec![(0, MMIO_START), (RAM_ABOVE_GAP, memory_bytes - MMIO_START)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
    }

    #[test]
    fn large_memory_skips_the_mmio_gap() {
        let ranges = ram_ranges(4 << 30);
        assert_eq!(ranges, vec![(0, MMIO_START), (RAM_ABOVE_GAP, (4 << 30) - MMIO_START)]);
        assert_eq!(ranges.iter().map(|r| r.1).sum::<u64>(), 4 << 30);
    }
}
