//! The virtio-mmio transport (virtio 1.2 §4.2, version 2 register layout).
//!
//! Register accesses arrive on vCPU threads as MMIO exits; queue notifications
//! bypass this code as ioeventfds and reach the device on the event loop. The
//! transport owns the queues until the driver sets DRIVER_OK, then hands them to
//! the device.

use std::os::fd::RawFd;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_CONFIG_GENERATION, VIRTIO_MMIO_DEVICE_FEATURES, VIRTIO_MMIO_DEVICE_FEATURES_SEL,
    VIRTIO_MMIO_DEVICE_ID, VIRTIO_MMIO_DRIVER_FEATURES, VIRTIO_MMIO_DRIVER_FEATURES_SEL, VIRTIO_MMIO_INTERRUPT_ACK,
    VIRTIO_MMIO_INTERRUPT_STATUS, VIRTIO_MMIO_MAGIC_VALUE, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, VIRTIO_MMIO_QUEUE_AVAIL_LOW,
    VIRTIO_MMIO_QUEUE_DESC_HIGH, VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_NOTIFY, VIRTIO_MMIO_QUEUE_NUM,
    VIRTIO_MMIO_QUEUE_NUM_MAX, VIRTIO_MMIO_QUEUE_READY, VIRTIO_MMIO_QUEUE_SEL, VIRTIO_MMIO_QUEUE_USED_HIGH,
    VIRTIO_MMIO_QUEUE_USED_LOW, VIRTIO_MMIO_STATUS, VIRTIO_MMIO_VENDOR_ID, VIRTIO_MMIO_VERSION,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{feature, Activation, Interrupt, QueueSnapshot, VirtioDevice};
use crate::devices::bus::BusDevice;
use crate::event_loop::{EventOps, EventSubscriber};
use crate::guest_warn;

// The values of the magic and version registers; virtio-bindings has only the offsets.
const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4252_4947; // "BRIG"

/// `VIRTIO_MMIO_QUEUE_NOTIFY` as a bus offset, for the builder's ioeventfds.
pub const QUEUE_NOTIFY: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;
/// Where the device-specific configuration space starts.
const CONFIG_SPACE: u64 = VIRTIO_MMIO_CONFIG as u64;

/// Transport-level state for snapshots.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransportSnapshot {
    pub device_type: u32,
    pub status: u32,
    pub acked_features: u64,
    pub interrupt_status: u32,
    pub activated: bool,
    pub queues: Vec<QueueSnapshot>,
    pub device: serde_json::Value,
}

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    ops: EventOps,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    features_select: u32,
    acked_features_select: u32,
    acked_features: u64,
    queue_select: u32,
    status: u32,
    config_generation: u32,
    activated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot create an eventfd for the device")]
    EventFd(#[source] std::io::Error),
    #[error("invalid queue size for device type {0}")]
    Queue(u32),
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("activated", &self.activated)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap, ops: EventOps) -> Result<Self, TransportError> {
        let irqfd = EventFd::new(EFD_NONBLOCK).map_err(TransportError::EventFd)?;
        let device_type = device.device_type();
        let queues = fresh_queues(device.as_ref()).ok_or(TransportError::Queue(device_type))?;
        let queue_evts = (0..queues.len())
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(TransportError::EventFd)?;
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Arc::new(Interrupt::new(irqfd)),
            ops,
            queues,
            queue_evts,
            features_select: 0,
            acked_features_select: 0,
            acked_features: 0,
            queue_select: 0,
            status: 0,
            config_generation: 0,
            activated: false,
        })
    }

    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    pub fn snapshot(&self) -> TransportSnapshot {
        let queues = if self.activated { self.device.queues() } else { &self.queues };
        TransportSnapshot {
            device_type: self.device.device_type(),
            status: self.status,
            acked_features: self.acked_features,
            interrupt_status: self.interrupt.status(),
            activated: self.activated,
            queues: queues.iter().map(QueueSnapshot::of).collect(),
            device: self.device.snapshot(),
        }
    }

    /// One half of a ring address. Checked here (alignment), so virtio-queue never
    /// logs what a guest wrote; a refused half leaves the address as it was.
    fn set_ring_address(&mut self, offset: u32, value: u32) {
        let Some(q) = self.selected_queue() else { return };
        let (current, high) = match offset {
            VIRTIO_MMIO_QUEUE_DESC_LOW | VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                (q.desc_table(), offset == VIRTIO_MMIO_QUEUE_DESC_HIGH)
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW | VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                (q.avail_ring(), offset == VIRTIO_MMIO_QUEUE_AVAIL_HIGH)
            }
            _ => (q.used_ring(), offset == VIRTIO_MMIO_QUEUE_USED_HIGH),
        };
        let address = if high {
            (current & 0xffff_ffff) | (u64::from(value) << 32)
        } else {
            (current & !0xffff_ffff) | u64::from(value)
        };
        let address = vm_memory::GuestAddress(address);
        let result = match offset {
            VIRTIO_MMIO_QUEUE_DESC_LOW | VIRTIO_MMIO_QUEUE_DESC_HIGH => q.try_set_desc_table_address(address),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW | VIRTIO_MMIO_QUEUE_AVAIL_HIGH => q.try_set_avail_ring_address(address),
            _ => q.try_set_used_ring_address(address),
        };
        if result.is_err() {
            guest_warn!("misaligned ring address {:#x} refused (register {offset:#x})", address.0);
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        if self.activated {
            guest_warn!("queue register written after DRIVER_OK");
            return None;
        }
        self.queues.get_mut(self.queue_select as usize)
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value;
        if value & VIRTIO_CONFIG_S_FEATURES_OK != 0 && self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            let offered = self.device.avail_features();
            if self.acked_features & !offered != 0 || self.acked_features & feature(VIRTIO_F_VERSION_1) == 0 {
                guest_warn!(
                    "driver accepted features {:#x} not offered ({offered:#x}) or without VERSION_1",
                    self.acked_features
                );
                value &= !VIRTIO_CONFIG_S_FEATURES_OK;
            } else {
                self.device.set_acked_features(self.acked_features);
            }
        }
        self.status = value;
        if value & VIRTIO_CONFIG_S_DRIVER_OK != 0 && value & VIRTIO_CONFIG_S_FEATURES_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        if !self.queues.iter().all(|q| q.is_valid(&self.mem)) {
            guest_warn!("driver set DRIVER_OK with invalid queues on device type {}", self.device.device_type());
            self.needs_reset();
            return;
        }
        let evts: Result<Vec<EventFd>, _> = self.queue_evts.iter().map(EventFd::try_clone).collect();
        let activation = Activation {
            mem: self.mem.clone(),
            interrupt: self.interrupt.clone(),
            queues: std::mem::take(&mut self.queues),
            queue_evts: match evts {
                Ok(evts) => evts,
                Err(e) => {
                    log::error!("cannot clone queue eventfds: {e}");
                    self.needs_reset();
                    return;
                }
            },
        };
        match self.device.activate(activation, &self.ops) {
            Ok(()) => self.activated = true,
            Err(e) => {
                log::error!("cannot activate device type {}: {e}", self.device.device_type());
                self.needs_reset();
            }
        }
    }

    fn needs_reset(&mut self) {
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        self.interrupt.signal_config_change();
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset(&self.ops);
        }
        self.activated = false;
        self.status = 0;
        self.acked_features = 0;
        self.features_select = 0;
        self.acked_features_select = 0;
        self.queue_select = 0;
        self.interrupt.ack(u32::MAX);
        if let Some(queues) = fresh_queues(self.device.as_ref()) {
            self.queues = queues;
        }
    }

    fn read_register(&mut self, offset: u32) -> u32 {
        let features_page = |features: u64, select: u32| match select {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        };
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => features_page(self.device.avail_features(), self.features_select),
            VIRTIO_MMIO_QUEUE_NUM_MAX => self.selected_queue_ref().map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => self.selected_queue_ref().is_some_and(|q| q.ready()) as u32,
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => {
                guest_warn!("read of unknown virtio-mmio register {offset:#x}");
                0
            }
        }
    }

    fn selected_queue_ref(&self) -> Option<&Queue> {
        if self.activated {
            self.device.queues().get(self.queue_select as usize)
        } else {
            self.queues.get(self.queue_select as usize)
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES => {
                if self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
                    guest_warn!("features written after FEATURES_OK");
                    return;
                }
                let shift = match self.acked_features_select {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                self.acked_features = (self.acked_features & !(0xffff_ffff_u64 << shift)) | (u64::from(value) << shift);
            }
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.acked_features_select = value,
            VIRTIO_MMIO_QUEUE_SEL => self.queue_select = value,
            VIRTIO_MMIO_QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    // Validated here, so virtio-queue never logs what a guest wrote.
                    match u16::try_from(value).ok().filter(|&size| q.try_set_size(size).is_ok()) {
                        Some(_) => {}
                        None => guest_warn!("queue size {value} refused (max {})", q.max_size()),
                    }
                }
            }
            VIRTIO_MMIO_QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => {
                // Normally caught by the ioeventfd; forward it if it arrives here.
                if let Some(evt) = self.queue_evts.get(value as usize) {
                    let _ = evt.write(1);
                }
            }
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            VIRTIO_MMIO_STATUS => self.set_status(value),
            VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH => self.set_ring_address(offset, value),
            _ => guest_warn!("write of unknown virtio-mmio register {offset:#x}"),
        }
    }
}

fn fresh_queues(device: &dyn VirtioDevice) -> Option<Vec<Queue>> {
    device.queue_max_sizes().iter().map(|&size| Queue::new(size).ok()).collect()
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
        } else if data.len() == 4 {
            // Below CONFIG_SPACE, so the offset fits the bindings' u32 register offsets.
            data.copy_from_slice(&self.read_register(offset as u32).to_le_bytes());
        } else {
            guest_warn!("{}-byte read of virtio-mmio register {offset:#x}", data.len());
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            self.config_generation = self.config_generation.wrapping_add(1);
        } else if let Ok(bytes) = <[u8; 4]>::try_from(data) {
            // Below CONFIG_SPACE, as in `read`.
            self.write_register(offset as u32, u32::from_le_bytes(bytes));
        } else {
            guest_warn!("{}-byte write of virtio-mmio register {offset:#x}", data.len());
        }
    }
}

impl EventSubscriber for MmioTransport {
    fn on_event(&mut self, fd: RawFd, events: EventSet, ops: &EventOps) {
        if self.activated {
            self.device.on_event(fd, events, ops);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::ActivateError;
    use crate::event_loop::DeviceEvents;
    use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER};
    use vm_memory::GuestAddress;

    struct Dummy {
        queues: Vec<Queue>,
        acked: u64,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn avail_features(&self) -> u64 {
            feature(VIRTIO_F_VERSION_1) | 1
        }
        fn set_acked_features(&mut self, features: u64) {
            self.acked = features;
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn activate(&mut self, activation: Activation, _ops: &EventOps) -> Result<(), ActivateError> {
            self.queues = activation.queues;
            Ok(())
        }
        fn on_event(&mut self, _fd: RawFd, _events: EventSet, _ops: &EventOps) {}
        fn reset(&mut self, _ops: &EventOps) {
            self.queues.clear();
        }
        fn queues(&self) -> &[Queue] {
            &self.queues
        }
    }

    fn transport() -> MmioTransport {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("mem");
        let mut events = DeviceEvents::new().expect("epoll");
        let transport = events
            .register_with(|ops| MmioTransport::new(Box::new(Dummy { queues: vec![], acked: 0 }), mem, ops))
            .expect("transport");
        drop(events);
        let Ok(transport) = Arc::try_unwrap(transport) else { panic!("only the test holds the transport") };
        transport.into_inner().expect("not poisoned")
    }

    fn read(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        t.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    fn negotiate(t: &mut MmioTransport, features_hi: u32) {
        write(t, 0x70, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
        write(t, 0x24, 1);
        write(t, 0x20, features_hi);
        write(t, 0x70, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK);
    }

    #[test]
    fn identifies_itself() {
        let mut t = transport();
        assert_eq!(read(&mut t, 0x00), MAGIC);
        assert_eq!(read(&mut t, 0x04), 2);
        assert_eq!(read(&mut t, 0x08), 42);
        write(&mut t, 0x14, 1);
        assert_eq!(read(&mut t, 0x10), 1, "VERSION_1 is bit 32");
        assert_eq!(read(&mut t, 0x34), 16);
    }

    /// The registers the other tests leave out, at the spec's offsets (the match uses
    /// virtio-bindings' names).
    #[test]
    fn registers_sit_at_the_spec_offsets() {
        let mut t = transport();
        assert_eq!(read(&mut t, 0x0c), VENDOR_ID);
        t.interrupt().signal_used_queue();
        assert_eq!(read(&mut t, 0x60), 1, "interrupt status");
        write(&mut t, 0x64, 1);
        assert_eq!(read(&mut t, 0x60), 0, "interrupt ack");
        t.write(0x100, &[0]);
        assert_eq!(read(&mut t, 0xfc), 1, "config generation");
        write(&mut t, 0x84, 1);
        write(&mut t, 0x94, 2);
        write(&mut t, 0xa4, 3);
        let q = &t.snapshot().queues[0];
        assert_eq!((q.desc_table, q.avail_ring, q.used_ring), (1 << 32, 2 << 32, 3 << 32), "high address halves");
        write(&mut t, 0x50, 0);
        assert_eq!(t.queue_evts()[0].read().expect("queue 0 notified"), 1);
        assert_eq!(QUEUE_NOTIFY, 0x50);
    }

    #[test]
    fn features_without_version_1_are_refused() {
        let mut t = transport();
        negotiate(&mut t, 0);
        assert_eq!(read(&mut t, 0x70) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    }

    #[test]
    fn driver_ok_with_valid_queues_activates_and_zero_resets() {
        let mut t = transport();
        negotiate(&mut t, 1);
        assert_ne!(read(&mut t, 0x70) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
        write(&mut t, 0x30, 0);
        write(&mut t, 0x38, 16);
        write(&mut t, 0x80, 0x1000);
        write(&mut t, 0x90, 0x2000);
        write(&mut t, 0xa0, 0x3000);
        write(&mut t, 0x44, 1);
        write(
            &mut t,
            0x70,
            VIRTIO_CONFIG_S_ACKNOWLEDGE
                | VIRTIO_CONFIG_S_DRIVER
                | VIRTIO_CONFIG_S_FEATURES_OK
                | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        assert!(t.activated);
        assert_eq!(t.snapshot().queues[0].desc_table, 0x1000);
        write(&mut t, 0x38, 8);
        assert_eq!(t.snapshot().queues[0].size, 16, "queue registers are frozen after DRIVER_OK");
        write(&mut t, 0x70, 0);
        assert!(!t.activated);
        assert_eq!(read(&mut t, 0x70), 0);
    }

    #[test]
    fn driver_ok_with_invalid_queues_asks_for_reset() {
        let mut t = transport();
        negotiate(&mut t, 1);
        write(&mut t, 0x30, 0);
        write(&mut t, 0x38, 16);
        write(&mut t, 0x80, 0xfff_0000); // outside guest memory
        write(&mut t, 0x44, 1);
        write(
            &mut t,
            0x70,
            VIRTIO_CONFIG_S_ACKNOWLEDGE
                | VIRTIO_CONFIG_S_DRIVER
                | VIRTIO_CONFIG_S_FEATURES_OK
                | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        assert!(!t.activated);
        assert_ne!(read(&mut t, 0x70) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    }
}
