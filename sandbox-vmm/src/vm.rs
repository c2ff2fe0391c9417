//! The KVM VM: memory slots, the in-kernel interrupt controllers and PIT, irqfds
//! and ioeventfds, and the VM-wide state that snapshots need.
//!
//! `unsafe` here: `KVM_SET_USER_MEMORY_REGION`. Invariant: every registered host
//! range is a mapping owned by the `GuestMemoryMmap` stored in [`Vm`], which is
//! dropped after the VM file descriptor (field order).

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("KVM_CREATE_VM failed")]
    Create(#[source] kvm_ioctls::Error),
    #[error("cannot set up the VM: {0} failed")]
    Setup(&'static str, #[source] kvm_ioctls::Error),
    #[error("cannot register guest memory slot {0}")]
    MemorySlot(u32, #[source] kvm_ioctls::Error),
    #[error("guest memory region at {0:#x} has no host mapping")]
    NoHostAddress(u64),
    #[error("cannot register an irqfd for GSI {0}")]
    Irqfd(u32, #[source] kvm_ioctls::Error),
    #[error("cannot register an ioeventfd at {0:#x}")]
    Ioeventfd(u64, #[source] kvm_ioctls::Error),
    #[error("cannot create vCPU {0}")]
    CreateVcpu(u8, #[source] kvm_ioctls::Error),
    #[error("cannot read VM state: {0} failed")]
    SaveState(&'static str, #[source] kvm_ioctls::Error),
}

/// VM-wide KVM state: interrupt controllers, PIT, kvmclock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
    memory: GuestMemoryMmap,
}

impl Vm {
    /// Creates the VM with its interrupt controllers and PIT, and registers `memory`.
    pub fn new(kvm: &Kvm, memory: GuestMemoryMmap) -> Result<Vm, VmError> {
        let fd = kvm.create_vm().map_err(VmError::Create)?;
        fd.set_tss_address(KVM_TSS_ADDRESS as usize).map_err(|e| VmError::Setup("KVM_SET_TSS_ADDR", e))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(|e| VmError::Setup("KVM_SET_IDENTITY_MAP_ADDR", e))?;
        fd.create_irq_chip().map_err(|e| VmError::Setup("KVM_CREATE_IRQCHIP", e))?;
        let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
        fd.create_pit2(pit).map_err(|e| VmError::Setup("KVM_CREATE_PIT2", e))?;
        for (slot, region) in memory.iter().enumerate() {
            let slot = slot as u32;
            let start = region.start_addr().raw_value();
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| VmError::NoHostAddress(start))?;
            let kvm_region = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: start,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: `host..host+len` is the mapping of `region`, owned by `memory`, which is
            // moved into the returned `Vm` and outlives `fd` (see the module invariant).
            unsafe { fd.set_user_memory_region(kvm_region) }.map_err(|e| VmError::MemorySlot(slot, e))?;
        }
        Ok(Vm { fd, memory })
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Routes writes to `evt` into interrupt line `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd.register_irqfd(evt, gsi).map_err(|e| VmError::Irqfd(gsi, e))
    }

    /// Signals `evt` (instead of exiting to userspace) when the guest writes `datamatch`
    /// to the 32-bit MMIO register at `addr`.
    pub fn register_mmio_ioevent(&self, evt: &EventFd, addr: u64, datamatch: u32) -> Result<(), VmError> {
        self.fd.register_ioevent(evt, &IoEventAddress::Mmio(addr), datamatch).map_err(|e| VmError::Ioeventfd(addr, e))
    }

    pub fn create_vcpu(&self, index: u8) -> Result<VcpuFd, VmError> {
        self.fd.create_vcpu(u64::from(index)).map_err(|e| VmError::CreateVcpu(index, e))
    }

    pub fn save_state(&self) -> Result<VmState, VmError> {
        let chip = |id| -> Result<kvm_irqchip, VmError> {
            let mut chip = kvm_irqchip { chip_id: id, ..Default::default() };
            self.fd.get_irqchip(&mut chip).map_err(|e| VmError::SaveState("KVM_GET_IRQCHIP", e))?;
            Ok(chip)
        };
        Ok(VmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
            pit: self.fd.get_pit2().map_err(|e| VmError::SaveState("KVM_GET_PIT2", e))?,
            clock: self.fd.get_clock().map_err(|e| VmError::SaveState("KVM_GET_CLOCK", e))?,
        })
    }
}
