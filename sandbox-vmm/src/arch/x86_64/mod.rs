//! x86_64: guest physical layout, boot structures (zero page, MP table, page tables,
//! GDT) and the vCPU's boot state (CPUID, MSRs, registers, LAPIC).

pub mod boot;
pub mod cpu;
pub mod layout;
pub mod mptable;
