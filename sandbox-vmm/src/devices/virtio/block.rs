//! virtio-blk over a raw image file: read, write (unless read-only), flush and
//! the device id (serial).
//!
//! Requests are served synchronously on the event loop with `pread`/`pwrite`
//! through a bounce buffer. Anything malformed gets `VIRTIO_BLK_S_IOERR` when
//! there is a status byte to write it to, and is dropped otherwise.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::os::unix::fs::FileExt;

use serde_json::json;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use super::{read_config_bytes, ActivateError, Activation, SingleQueue, VirtioDevice, TYPE_BLOCK, VIRTIO_F_VERSION_1};
use crate::config::BlockConfig;
use crate::event_loop::EventOps;
use crate::guest_warn;
use crate::metrics::METRICS;

const SECTOR_SHIFT: u64 = 9;
const QUEUE_SIZE: u16 = 256;
/// Segments per request we tell the driver it may use.
const SEG_MAX: u32 = 128;
/// Larger requests are refused rather than buffered.
const MAX_REQUEST: usize = 4 << 20;

const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;

const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open the block device image {path}")]
    Open { path: String, source: std::io::Error },
}

#[derive(Debug)]
struct Disk {
    file: File,
    read_only: bool,
    capacity: u64,
    id: [u8; 20],
}

#[derive(Debug)]
pub struct Block {
    disk: Disk,
    config: Vec<u8>,
    acked_features: u64,
    active: Option<SingleQueue>,
}

impl Block {
    pub fn new(config: &BlockConfig) -> Result<Block, BlockError> {
        let open_err = |source| BlockError::Open { path: config.path.display().to_string(), source };
        let file = OpenOptions::new().read(true).write(!config.read_only).open(&config.path).map_err(open_err)?;
        let capacity = file.metadata().map_err(open_err)?.len();
        let mut id = [0u8; 20];
        if let Some(serial) = &config.serial {
            let bytes = serial.as_bytes();
            id[..bytes.len().min(20)].copy_from_slice(&bytes[..bytes.len().min(20)]);
        }
        let mut space = Vec::new();
        space.extend_from_slice(&(capacity >> SECTOR_SHIFT).to_le_bytes()); // capacity in sectors
        space.extend_from_slice(&0u32.to_le_bytes()); // size_max
        space.extend_from_slice(&SEG_MAX.to_le_bytes());
        Ok(Block {
            disk: Disk { file, read_only: config.read_only, capacity, id },
            config: space,
            acked_features: 0,
            active: None,
        })
    }
}

impl Disk {
    /// Serves one request; returns the bytes written into guest buffers.
    fn handle(&self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
        let (mut reader, mut writer) = match (chain.clone().reader(mem), chain.writer(mem)) {
            (Ok(r), Ok(w)) => (r, w),
            _ => {
                METRICS.virtio_bad_requests.inc();
                guest_warn!("block request with descriptors outside guest memory");
                return 0;
            }
        };
        let writable = writer.available_bytes();
        if writable == 0 {
            METRICS.virtio_bad_requests.inc();
            guest_warn!("block request without a status byte");
            return 0;
        }
        let Ok(mut status_writer) = writer.split_at(writable - 1) else { return 0 };
        let mut header = [0u8; 16];
        let status = if reader.read_exact(&mut header).is_err() {
            METRICS.virtio_bad_requests.inc();
            S_IOERR
        } else {
            let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            let mut sector = [0u8; 8];
            sector.copy_from_slice(&header[8..16]);
            let sector = u64::from_le_bytes(sector);
            match kind {
                T_IN => self.read(sector, &mut writer),
                T_OUT => self.write(sector, &mut reader),
                T_FLUSH => self.flush(),
                T_GET_ID => {
                    let n = writer.available_bytes().min(self.id.len());
                    if writer.write_all(&self.id[..n]).is_ok() {
                        S_OK
                    } else {
                        S_IOERR
                    }
                }
                _ => S_UNSUPP,
            }
        };
        if status == S_IOERR {
            METRICS.block_errors.inc();
        }
        if status_writer.write_all(&[status]).is_err() {
            return 0;
        }
        (writer.bytes_written() + 1) as u32
    }

    /// The byte range of a request, if it lies within the disk.
    fn range(&self, sector: u64, len: usize) -> Option<u64> {
        let offset = sector.checked_mul(1 << SECTOR_SHIFT)?;
        (len <= MAX_REQUEST && offset.checked_add(len as u64)? <= self.capacity).then_some(offset)
    }

    fn read(&self, sector: u64, writer: &mut virtio_queue::Writer<'_>) -> u8 {
        let len = writer.available_bytes();
        let Some(offset) = self.range(sector, len) else {
            guest_warn!("block read of {len} bytes at sector {sector} is out of range");
            return S_IOERR;
        };
        let mut buf = vec![0u8; len];
        if self.file.read_exact_at(&mut buf, offset).is_err() || writer.write_all(&buf).is_err() {
            return S_IOERR;
        }
        METRICS.block_reads.inc();
        METRICS.block_read_bytes.add(len as u64);
        S_OK
    }

    fn write(&self, sector: u64, reader: &mut virtio_queue::Reader<'_>) -> u8 {
        if self.read_only {
            guest_warn!("write to a read-only block device refused");
            return S_IOERR;
        }
        let len = reader.available_bytes();
        let Some(offset) = self.range(sector, len) else {
            guest_warn!("block write of {len} bytes at sector {sector} is out of range");
            return S_IOERR;
        };
        let mut buf = vec![0u8; len];
        if reader.read_exact(&mut buf).is_err() || self.file.write_all_at(&buf, offset).is_err() {
            return S_IOERR;
        }
        METRICS.block_writes.inc();
        METRICS.block_write_bytes.add(len as u64);
        S_OK
    }

    fn flush(&self) -> u8 {
        METRICS.block_flushes.inc();
        if self.read_only || self.file.sync_data().is_ok() {
            S_OK
        } else {
            S_IOERR
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        let ro = if self.disk.read_only { F_RO } else { 0 };
        VIRTIO_F_VERSION_1 | F_FLUSH | F_SEG_MAX | ro
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, activation: Activation, ops: &EventOps) -> Result<(), ActivateError> {
        self.active = Some(SingleQueue::activate(activation, ops)?);
        Ok(())
    }

    fn on_event(&mut self, fd: RawFd, _events: EventSet, _ops: &EventOps) {
        let disk = &self.disk;
        if let Some(queue) = self.active.as_mut().filter(|q| q.take_notification(fd)) {
            queue.process(|mem, chain| disk.handle(mem, chain));
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

    fn snapshot(&self) -> serde_json::Value {
        json!({
            "read_only": self.disk.read_only,
            "capacity_bytes": self.disk.capacity,
            "acked_features": self.acked_features,
        })
    }
}
