//! Emulated devices: the buses vCPU exits are dispatched on, the legacy port-I/O
//! devices (serial console, i8042 reset) and the virtio-mmio devices.

pub mod bus;
pub mod console;
pub mod legacy;
pub mod virtio;

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

/// An interrupt line or event backed by an eventfd (an irqfd when registered with KVM).
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
