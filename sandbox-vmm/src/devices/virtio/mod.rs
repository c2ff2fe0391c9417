//! virtio devices on the MMIO transport: the device trait, the interrupt they
//! raise, and the devices themselves (block, net, rng, vsock).
//!
//! Every byte a device reads from a queue is guest-controlled: descriptor chains
//! are parsed with bounds checks, malformed requests are answered with an error
//! status or dropped (counted, rate-limited log), never trusted.

pub mod block;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod vsock;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
#[cfg(test)]
use vmm_sys_util::eventfd::EFD_NONBLOCK;

use crate::event_loop::EventOps;
use crate::metrics::METRICS;

/// The feature mask for a feature bit: virtio-bindings defines bit numbers
/// (`VIRTIO_F_VERSION_1` is 32), the feature registers carry masks.
pub const fn feature(bit: u32) -> u64 {
    1 << bit
}

/// A device's interrupt line: the status register the driver reads, and the irqfd.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl Interrupt {
    pub fn new(irqfd: EventFd) -> Interrupt {
        Interrupt { status: AtomicU32::new(0), irqfd }
    }

    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        METRICS.virtio_interrupts.inc();
        if let Err(e) = self.irqfd.write(1) {
            log::error!("cannot signal the guest's interrupt: {e}");
        }
    }

    /// Tells the driver there are new used buffers.
    pub fn signal_used_queue(&self) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    pub fn signal_config_change(&self) {
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the driver set up {got} queues, the device needs {want}")]
    QueueCount { got: usize, want: usize },
    #[error("cannot watch the device's events")]
    Register(#[source] std::io::Error),
    #[error("cannot set up the device's host side: {0}")]
    Host(String),
}

/// What a device gets when the driver sets DRIVER_OK.
#[derive(Debug)]
pub struct Activation {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<Interrupt>,
    pub queues: Vec<Queue>,
    /// `queue_evts[i]` is signalled when the driver notifies queue `i`.
    pub queue_evts: Vec<EventFd>,
}

/// One virtio device behind an [`mmio::MmioTransport`].
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered to the driver.
    fn avail_features(&self) -> u64;
    /// Features the driver accepted (a subset of the offered ones).
    fn set_acked_features(&mut self, features: u64);
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        crate::guest_warn!("device type {} has no writable configuration", self.device_type());
    }
    /// Takes over the queues and starts watching its descriptors.
    fn activate(&mut self, activation: Activation, ops: &EventOps) -> Result<(), ActivateError>;
    /// An event on a descriptor this device registered.
    fn on_event(&mut self, fd: RawFd, events: EventSet, ops: &EventOps);
    /// Back to the pre-activation state (the driver wrote 0 to the status register).
    fn reset(&mut self, ops: &EventOps);
    /// The active queues (empty before activation), for snapshots.
    fn queues(&self) -> &[Queue];
    /// Device-specific state for snapshots and forensics.
    fn snapshot(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// The driver-visible state of one queue.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
}

impl QueueSnapshot {
    pub fn of(queue: &Queue) -> QueueSnapshot {
        QueueSnapshot {
            max_size: queue.max_size(),
            size: queue.size(),
            ready: queue.ready(),
            desc_table: queue.desc_table(),
            avail_ring: queue.avail_ring(),
            used_ring: queue.used_ring(),
            next_avail: queue.next_avail(),
            next_used: queue.next_used(),
        }
    }
}

/// Copies the bytes of a little-endian config space into `data` at `offset`,
/// ignoring reads past its end.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    let Ok(offset) = usize::try_from(offset) else { return };
    if let Some(src) = config.get(offset..).and_then(|rest| rest.get(..data.len())) {
        data.copy_from_slice(src);
    } else {
        crate::guest_warn!("config read past the end ({offset}+{})", data.len());
    }
}

/// Descriptor chains served per queue event: one ring's worth.
pub fn budget(queue: &Queue) -> usize {
    usize::from(queue.size().max(1))
}

/// Makes a queue's notification fire again, so its leftover work is served on the
/// event loop's next turn, after the events that are waiting now.
pub fn rearm(evt: &EventFd) {
    METRICS.virtio_budget_exhausted.inc();
    if let Err(e) = evt.write(1) {
        log::error!("cannot re-arm a queue notification: {e}");
    }
}

/// A device with one queue (block, rng): the queue, its notification eventfd and
/// the request loop around a per-request handler.
#[derive(Debug)]
pub struct SingleQueue {
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queue: Queue,
    evt: EventFd,
}

impl SingleQueue {
    pub fn activate(mut activation: Activation, ops: &EventOps) -> Result<SingleQueue, ActivateError> {
        let got = activation.queues.len();
        if got != 1 || activation.queue_evts.len() != 1 {
            return Err(ActivateError::QueueCount { got, want: 1 });
        }
        let (Some(queue), Some(evt)) = (activation.queues.pop(), activation.queue_evts.pop()) else {
            return Err(ActivateError::QueueCount { got, want: 1 });
        };
        ops.add(evt.as_raw_fd(), EventSet::IN).map_err(ActivateError::Register)?;
        Ok(SingleQueue { mem: activation.mem, interrupt: activation.interrupt, queue, evt })
    }

    /// Whether `fd` is this queue's notification (which is then consumed).
    pub fn take_notification(&self, fd: RawFd) -> bool {
        if fd != self.evt.as_raw_fd() {
            return false;
        }
        // EAGAIN only means another wakeup already drained it.
        let _ = self.evt.read();
        METRICS.virtio_notifications.inc();
        true
    }

    /// Serves available requests with `handle`, which returns the bytes it wrote into
    /// guest buffers, then interrupts the guest if it wants to be told. At most
    /// [`budget`] requests per call: a guest that keeps moving `avail.idx` must not
    /// hold the event loop, so with more waiting the queue re-arms its own
    /// notification and the loop serves everything else first.
    pub fn process(&mut self, mut handle: impl FnMut(&GuestMemoryMmap, DescriptorChain<&GuestMemoryMmap>) -> u32) {
        let mem = &self.mem;
        let budget = budget(&self.queue);
        let mut served = 0;
        while served < budget {
            let Some(chain) = self.queue.pop_descriptor_chain(mem) else { break };
            let head = chain.head_index();
            let len = handle(mem, chain);
            if let Err(e) = self.queue.add_used(mem, head, len) {
                crate::guest_warn!("cannot return a buffer to the guest: {e}");
            }
            served += 1;
        }
        if served == budget {
            rearm(&self.evt);
        }
        if served > 0 && self.queue.needs_notification(mem).unwrap_or(true) {
            self.interrupt.signal_used_queue();
        }
    }

    pub fn deactivate(self, ops: &EventOps) {
        let _ = ops.remove(self.evt.as_raw_fd());
    }

    pub fn queues(this: &Option<SingleQueue>) -> &[Queue] {
        this.as_ref().map_or(&[], |a| std::slice::from_ref(&a.queue))
    }
}

/// The active queues of a device with several (net, vsock): guest memory, the
/// interrupt, the queues in the driver's order and each one's notification eventfd.
#[derive(Debug)]
pub struct Queues {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<Interrupt>,
    pub queues: Vec<Queue>,
    pub evts: Vec<EventFd>,
}

impl Queues {
    /// Takes the `want` queues of `activation` and watches their notifications and
    /// `extra` (the device's host-side descriptors). On error nothing stays watched.
    pub fn activate(
        activation: Activation,
        want: usize,
        extra: &[RawFd],
        ops: &EventOps,
    ) -> Result<Queues, ActivateError> {
        let got = activation.queues.len();
        if got != want || activation.queue_evts.len() != want {
            return Err(ActivateError::QueueCount { got, want });
        }
        let fds: Vec<RawFd> =
            activation.queue_evts.iter().map(AsRawFd::as_raw_fd).chain(extra.iter().copied()).collect();
        for (i, fd) in fds.iter().enumerate() {
            if let Err(e) = ops.add(*fd, EventSet::IN) {
                for added in &fds[..i] {
                    let _ = ops.remove(*added);
                }
                return Err(ActivateError::Register(e));
            }
        }
        Ok(Queues {
            mem: activation.mem,
            interrupt: activation.interrupt,
            queues: activation.queues,
            evts: activation.queue_evts,
        })
    }

    /// The index of the queue whose notification `fd` is (then consumed), if it is one.
    pub fn take_notification(&self, fd: RawFd) -> Option<usize> {
        let queue = self.evts.iter().position(|e| e.as_raw_fd() == fd)?;
        // EAGAIN only means another wakeup already drained it.
        let _ = self.evts[queue].read();
        METRICS.virtio_notifications.inc();
        Some(queue)
    }

    /// Stops watching the notifications (the device's own descriptors are its to remove).
    pub fn deactivate(self, ops: &EventOps) {
        for evt in &self.evts {
            let _ = ops.remove(evt.as_raw_fd());
        }
    }

    pub fn queues(this: &Option<Queues>) -> &[Queue] {
        this.as_ref().map_or(&[], |a| a.queues.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_that_keeps_moving_avail_idx_gets_one_ring_per_event() {
        use virtio_queue::desc::{split::Descriptor, RawDescriptor};
        use virtio_queue::mock::MockSplitQueue;
        use vm_memory::{Address, Bytes, GuestAddress};

        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("mem");
        let mock = MockSplitQueue::new(&mem, 16);
        let descs = [RawDescriptor::from(Descriptor::new(0x8_0000, 16, 0, 0))];
        mock.build_desc_chain(&descs).expect("chain");
        let avail_idx = mock.avail_addr().checked_add(2).expect("avail.idx");
        let queue: Queue = mock.create_queue().expect("queue");
        let (evt, irq) = (EventFd::new(EFD_NONBLOCK).expect("evt"), EventFd::new(0).expect("irq"));
        let mut single = SingleQueue { mem: mem.clone(), interrupt: Arc::new(Interrupt::new(irq)), queue, evt };
        // The hostile guest: every request it sees served, it posts one more, forever.
        let mut served = 0u32;
        single.process(|mem, _chain| {
            served += 1;
            let idx: u16 = mem.read_obj(avail_idx).expect("idx");
            mem.write_obj(idx.wrapping_add(1), avail_idx).expect("idx");
            0
        });
        assert_eq!(served, 16, "one ring's worth, then back to the event loop");
        assert_eq!(single.evt.read().expect("re-armed"), 1, "the rest waits for the next turn");
        assert!(single.evt.read().is_err(), "re-armed once");
    }

    #[test]
    fn config_reads_are_bounded() {
        let config = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let mut data = [0u8; 4];
        read_config_bytes(&config, 4, &mut data);
        assert_eq!(data, [5, 6, 7, 8]);
        let mut data = [9u8; 4];
        read_config_bytes(&config, 6, &mut data);
        assert_eq!(data, [9; 4], "a read past the end leaves the buffer alone");
    }

    #[test]
    fn feature_masks_come_from_bit_numbers() {
        use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
        assert_eq!(feature(VIRTIO_F_VERSION_1), 1 << 32);
        assert_eq!(feature(0), 1);
        assert_eq!(feature(63), 0x8000_0000_0000_0000);
    }

    #[test]
    fn interrupt_status_is_set_and_acked() {
        let interrupt = Interrupt::new(EventFd::new(0).expect("evt"));
        interrupt.signal_used_queue();
        interrupt.signal_config_change();
        assert_eq!(interrupt.status(), 0b11, "VRING is bit 0, CONFIG bit 1");
        interrupt.ack(VIRTIO_MMIO_INT_VRING);
        assert_eq!(interrupt.status(), VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(interrupt.irqfd().read().expect("irqfd"), 2);
    }
}
