//! The boot state of an x86_64 vCPU, as data: CPUID adjustments, boot MSRs,
//! registers for the 64-bit entry, FPU defaults and the LAPIC's local interrupts.
//! `vcpu` applies these with ioctls; nothing here touches KVM.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, CpuId};

use super::boot::BOOT_GDT;
use super::layout::{BOOT_STACK_POINTER, GDT_START, IDT_START, PML4_START, ZERO_PAGE_START};

// CPUID leaves and bits (not in kvm-bindings, which has no CPUID feature bits).
const LEAF_FEATURES: u32 = 0x1;
const LEAF_TOPOLOGY: u32 = 0xb;
const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;

const LEAF_XSAVE: u32 = 0xd;
const ECX_XSAVE: u32 = 1 << 26;

// MSRs set at boot (not in kvm-bindings, which has no MSR indices).
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back: without it the guest runs uncached.
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

// Control register and EFER bits (not in kvm-bindings).
const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

// LAPIC local vector table (not in kvm-bindings).
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Adjusts KVM's supported CPUID for vCPU `index` of `count`: APIC ids, topology,
/// the hypervisor bit, and the TSC-deadline timer.
///
/// KVM emulates the TSC-deadline timer in its in-kernel LAPIC (`KVM_CAP_TSC_DEADLINE_TIMER`,
/// which brig-vmm requires) but `KVM_GET_SUPPORTED_CPUID` did not report it before
/// Linux 6.14. Without it, Linux calibrates the LAPIC timer against the PIT at boot and
/// may keep the PIT as its tick or broadcast device, one or more port-I/O exits for
/// every timer event (ADR 007).
pub fn adjust_cpuid(cpuid: &mut CpuId, index: u8, count: u8) {
    let bits_for_cpus = u32::from(count).next_power_of_two().trailing_zeros();
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx = (entry.ebx & 0x0000_ffff) | (u32::from(index) << 24) | (u32::from(count) << 16);
                entry.ecx |= ECX_HYPERVISOR | ECX_TSC_DEADLINE;
                if count > 1 {
                    entry.edx |= EDX_HTT;
                }
            }
            LEAF_TOPOLOGY => {
                // Level 0: one thread per core; level 1: `count` cores per package.
                entry.edx = u32::from(index);
                match entry.index {
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = 1 << 8;
                    }
                    1 => {
                        entry.eax = bits_for_cpus;
                        entry.ebx = u32::from(count);
                        entry.ecx = (2 << 8) | 1;
                    }
                    _ => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = entry.index;
                    }
                }
            }
            _ => {}
        }
    }
}

/// The XCR0 value enabling every state component the CPUID offers, if it offers XSAVE.
///
/// Set before the guest runs so that CPUID 0xD.0's EBX (the XSAVE area size for the
/// current XCR0, which KVM recomputes when XCR0 changes) already matches what Linux
/// enables. Otherwise, under a hypervisor that does not intercept XSETBV (QEMU's
/// emulated SVM in the nested test host), the guest sees a stale size, warns
/// "XSAVE consistency problem" and falls back to FXSAVE.
pub fn supported_xcr0(cpuid: &CpuId) -> Option<u64> {
    let entries = cpuid.as_slice();
    let xsave = entries.iter().any(|e| e.function == LEAF_FEATURES && e.ecx & ECX_XSAVE != 0);
    let leaf = entries.iter().find(|e| e.function == LEAF_XSAVE && e.index == 0)?;
    xsave.then(|| u64::from(leaf.eax) | (u64::from(leaf.edx) << 32))
}

/// MSRs every vCPU starts with.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let entry = |index, data| kvm_msr_entry { index, data, ..Default::default() };
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
}

/// General registers for the 64-bit entry: `rsi` points at the zero page.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

fn segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let g = ((entry >> 55) & 1) as u8;
    let raw_limit = ((entry >> 32) & 0x000f_0000) | (entry & 0x0000_ffff);
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 { ((raw_limit as u32) << 12) | 0xfff } else { raw_limit as u32 },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Special registers for long mode with the boot GDT and page tables.
pub fn boot_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = segment_from_gdt(BOOT_GDT[1], 1);
    let data = segment_from_gdt(BOOT_GDT[2], 2);
    let tss = segment_from_gdt(BOOT_GDT[3], 3);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (BOOT_GDT.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = tss;
    sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
    sregs.cr3 = PML4_START;
    sregs.cr4 = CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
    sregs
}

/// x87 and SSE control words as after `FNINIT`.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() }
}

/// LINT0 as ExtINT (the PIC) and LINT1 as NMI, as firmware leaves them.
pub fn set_local_interrupts(lapic: &mut kvm_lapic_state) {
    for (offset, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let value = read_lapic(lapic, offset);
        write_lapic(lapic, offset, (value & !0x700) | (mode << 8));
    }
}

fn read_lapic(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = |i: usize| lapic.regs[offset + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn write_lapic(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *byte as _;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn long_mode_sregs_use_the_boot_gdt() {
        let sregs = boot_sregs(kvm_sregs::default());
        assert_eq!(sregs.cs.selector, 0x08);
        assert_eq!(sregs.cs.l, 1, "64-bit code segment");
        assert_eq!(sregs.cs.limit, 0xffff_ffff);
        assert_eq!(sregs.ds.selector, 0x10);
        assert_eq!(sregs.ds.db, 1);
        assert_eq!(sregs.tr.selector, 0x18);
        assert_eq!(sregs.efer & EFER_LMA, EFER_LMA);
        assert_eq!(sregs.cr0 & CR0_PG, CR0_PG);
    }

    #[test]
    fn cpuid_carries_the_apic_id_cpu_count_and_tsc_deadline() {
        let entries = [
            kvm_cpuid_entry2 { function: LEAF_FEATURES, ebx: 0xffff_0000, ..Default::default() },
            kvm_cpuid_entry2 { function: LEAF_TOPOLOGY, index: 1, ..Default::default() },
        ];
        let mut cpuid = CpuId::from_entries(&entries).expect("cpuid");
        adjust_cpuid(&mut cpuid, 3, 4);
        let leaf1 = cpuid.as_slice()[0];
        assert_eq!(leaf1.ebx >> 24, 3);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
        assert_ne!(leaf1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(leaf1.ecx & ECX_TSC_DEADLINE, 0);
        let topo = cpuid.as_slice()[1];
        assert_eq!((topo.eax, topo.ebx, topo.edx), (2, 4, 3));
    }

    #[test]
    fn xcr0_comes_from_leaf_0xd_only_with_xsave() {
        let mut entries = [
            kvm_cpuid_entry2 { function: LEAF_FEATURES, ecx: ECX_XSAVE, ..Default::default() },
            kvm_cpuid_entry2 { function: LEAF_XSAVE, index: 0, eax: 0x207, edx: 0x1, ..Default::default() },
        ];
        let cpuid = CpuId::from_entries(&entries).expect("cpuid");
        assert_eq!(supported_xcr0(&cpuid), Some(0x1_0000_0207));
        entries[0].ecx = 0;
        let cpuid = CpuId::from_entries(&entries).expect("cpuid");
        assert_eq!(supported_xcr0(&cpuid), None);
    }

    #[test]
    fn lapic_local_interrupts_are_extint_and_nmi() {
        let mut lapic = kvm_lapic_state::default();
        write_lapic(&mut lapic, APIC_LVT0, 0x0001_0700);
        set_local_interrupts(&mut lapic);
        assert_eq!(read_lapic(&lapic, APIC_LVT0), 0x0001_0700);
        assert_eq!(read_lapic(&lapic, APIC_LVT1) & 0x700, 0x400);
    }

    #[test]
    fn mtrrs_default_to_write_back() {
        let msrs = boot_msrs();
        let mtrr = msrs.iter().find(|m| m.index == MSR_MTRR_DEF_TYPE).expect("MTRR def type");
        assert_eq!(mtrr.data & 0xff, 6);
        assert_ne!(mtrr.data & (1 << 11), 0);
    }
}
