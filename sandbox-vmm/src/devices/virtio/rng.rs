//! virtio-rng: fills the guest's buffers from the host kernel's CSPRNG (`getrandom(2)`:
//! no file to open, so nothing for the jail to hold).

use std::io::Write;
use std::os::fd::RawFd;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use super::{feature, ActivateError, Activation, SingleQueue, VirtioDevice};
use crate::event_loop::EventOps;
use crate::guest_warn;
use crate::metrics::METRICS;

const QUEUE_SIZE: u16 = 64;
/// Bytes served per request at most.
const MAX_REQUEST: usize = 64 << 10;

#[derive(Debug)]
pub struct Rng {
    active: Option<SingleQueue>,
}

impl Rng {
    /// Checks that the host's CSPRNG answers, so a VM never starts with an rng that cannot.
    pub fn new() -> std::io::Result<Rng> {
        getrandom(&mut [0u8; 16])?;
        Ok(Rng { active: None })
    }
}

/// Fills `buf` from `getrandom(2)`. Not the getrandom crate: on Linux it finds the
/// call through `dlsym`, which the static brig-vmm lacks, and falls back to
/// `/dev/urandom`, which its jail does not hold.
fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`, which is a
        // live, writable slice of that length for the duration of the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match n {
            n if n > 0 => filled += n as usize,
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// Fills one request; returns the bytes written.
fn fill(buf: &mut [u8], mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
    match chain.writer(mem) {
        Ok(mut writer) => {
            let n = writer.available_bytes().min(buf.len());
            if getrandom(&mut buf[..n]).is_ok() && writer.write_all(&buf[..n]).is_ok() {
                METRICS.rng_bytes.add(n as u64);
                n as u32
            } else {
                0
            }
        }
        Err(e) => {
            METRICS.virtio_bad_requests.inc();
            guest_warn!("rng request with bad descriptors: {e}");
            0
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        feature(VIRTIO_F_VERSION_1)
    }

    fn set_acked_features(&mut self, _features: u64) {}

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, activation: Activation, ops: &EventOps) -> Result<(), ActivateError> {
        self.active = Some(SingleQueue::activate(activation, ops)?);
        Ok(())
    }

    fn on_event(&mut self, fd: RawFd, _events: EventSet, _ops: &EventOps) {
        if let Some(queue) = self.active.as_mut().filter(|q| q.take_notification(fd)) {
            let mut buf = vec![0u8; MAX_REQUEST];
            queue.process(|mem, chain| fill(&mut buf, mem, chain));
        }
    }

    fn reset(&mut self, ops: &EventOps) {
        if let Some(queue) = self.active.take() {
            queue.deactivate(ops);
        }
    }

    fn queues(&self) -> &[Queue] {
        SingleQueue::queues(&self.active)
    }
}
