//! Events that end or change the VM, sent from vCPU threads and devices to the
//! VMM's event loop.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// The guest reset the machine (i8042 `0xfe`, `reboot=k`): brig-vmm exits cleanly.
    Reset,
    /// The guest powered off (the kernel printed `reboot: Power down`).
    PowerOff,
    /// The guest kernel panicked (seen on the console).
    Panic,
    /// A vCPU stopped on an error (triple fault, failed entry, KVM error).
    VcpuFailed { index: u8, reason: String },
}

/// The sending side; cheap to clone into every thread.
#[derive(Debug, Clone)]
pub struct EventSender {
    tx: Sender<VmEvent>,
    wake: Arc<EventFd>,
}

impl EventSender {
    pub fn send(&self, event: VmEvent) {
        // The receiver only goes away when the VMM is exiting anyway.
        let _ = self.tx.send(event);
        let _ = self.wake.write(1);
    }
}

/// The receiving side, owned by the event loop; `wake` is in its epoll set.
#[derive(Debug)]
pub struct EventReceiver {
    pub rx: Receiver<VmEvent>,
    pub wake: Arc<EventFd>,
}

pub fn channel_pair() -> std::io::Result<(EventSender, EventReceiver)> {
    let (tx, rx) = channel();
    let wake = Arc::new(EventFd::new(EFD_NONBLOCK)?);
    Ok((EventSender { tx, wake: wake.clone() }, EventReceiver { rx, wake }))
}
