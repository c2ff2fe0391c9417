//! A vCPU's architectural state, as KVM reports it, for snapshots and forensics.

use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// MSRs saved with every vCPU (those brig sets at boot, plus the ones Linux and
/// kvmclock keep state in).
const SAVED_MSRS: &[u32] = &[
    0x10,        // TSC
    0x174,       // SYSENTER_CS
    0x175,       // SYSENTER_ESP
    0x176,       // SYSENTER_EIP
    0x1a0,       // MISC_ENABLE
    0x277,       // PAT
    0x2ff,       // MTRRdefType
    0xc000_0080, // EFER
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SYSCALL_MASK
    0xc000_0100, // FS_BASE
    0xc000_0101, // GS_BASE
    0xc000_0102, // KERNEL_GS_BASE
    0xc000_0103, // TSC_AUX
    0x4b56_4d00, // KVM wall clock
    0x4b56_4d01, // KVM system time
    0x4b56_4d02, // KVM async PF
    0x4b56_4d03, // KVM steal time
];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VcpuState {
    pub index: u8,
    /// The few values an investigator looks at first, readable without decoding.
    pub summary: Summary,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub fpu: FpuState,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    pub events: kvm_vcpu_events,
    pub xcrs: Option<kvm_xcrs>,
    pub msrs: Vec<kvm_msr_entry>,
}

/// `kvm_fpu`, which kvm-bindings does not serialise.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FpuState {
    pub fpr: [[u8; 16]; 8],
    pub fcw: u16,
    pub fsw: u16,
    pub ftwx: u8,
    pub last_opcode: u16,
    pub last_ip: u64,
    pub last_dp: u64,
    pub xmm: [[u8; 16]; 16],
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for FpuState {
    fn from(f: &kvm_fpu) -> FpuState {
        FpuState {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Summary {
    pub rip: String,
    pub rsp: String,
    pub cr3: String,
    pub ring: u8,
}

impl VcpuState {
    /// Reads the state of a vCPU that is not in `KVM_RUN`.
    pub fn save(index: u8, fd: &VcpuFd) -> Result<VcpuState, kvm_ioctls::Error> {
        let regs = fd.get_regs()?;
        let sregs = fd.get_sregs()?;
        let entries: Vec<kvm_msr_entry> =
            SAVED_MSRS.iter().map(|&index| kvm_msr_entry { index, ..Default::default() }).collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| kvm_ioctls::Error::new(libc::E2BIG))?;
        let read = fd.get_msrs(&mut msrs)?;
        Ok(VcpuState {
            index,
            summary: Summary {
                rip: format!("{:#018x}", regs.rip),
                rsp: format!("{:#018x}", regs.rsp),
                cr3: format!("{:#018x}", sregs.cr3),
                ring: sregs.cs.dpl,
            },
            regs,
            sregs,
            fpu: FpuState::from(&fd.get_fpu()?),
            lapic: fd.get_lapic()?,
            mp_state: fd.get_mp_state()?,
            events: fd.get_vcpu_events()?,
            xcrs: fd.get_xcrs().ok(),
            // KVM stops at the first MSR it cannot read; keep those it did.
            msrs: msrs.as_slice()[..read].to_vec(),
        })
    }
}
