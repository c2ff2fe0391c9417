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
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use super::{feature, read_config_bytes, ActivateError, Activation, SingleQueue, VirtioDevice};
use crate::config::BlockConfig;
use crate::event_loop::EventOps;
use crate::guest_warn;
use crate::metrics::METRICS;

/// virtio-blk sectors are 512 bytes whatever the image's block size (not in virtio-bindings).
const SECTOR_SHIFT: u64 = 9;
const QUEUE_SIZE: u16 = 256;
/// Segments per request we tell the driver it may use.
const SEG_MAX: u32 = 128;
/// Larger requests are refused rather than buffered.
const MAX_REQUEST: usize = 4 << 20;

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
    id: [u8; VIRTIO_BLK_ID_BYTES as usize],
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
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        if let Some(serial) = &config.serial {
            let bytes = serial.as_bytes();
            let n = bytes.len().min(id.len());
            id[..n].copy_from_slice(&bytes[..n]);
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
            VIRTIO_BLK_S_IOERR
        } else {
            let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            let mut sector = [0u8; 8];
            sector.copy_from_slice(&header[8..16]);
            let sector = u64::from_le_bytes(sector);
            match kind {
                VIRTIO_BLK_T_IN => self.read(sector, &mut writer),
                VIRTIO_BLK_T_OUT => self.write(sector, &mut reader),
                VIRTIO_BLK_T_FLUSH => self.flush(),
                VIRTIO_BLK_T_GET_ID => {
                    let n = writer.available_bytes().min(self.id.len());
                    if writer.write_all(&self.id[..n]).is_ok() {
                        VIRTIO_BLK_S_OK
                    } else {
                        VIRTIO_BLK_S_IOERR
                    }
                }
                _ => VIRTIO_BLK_S_UNSUPP,
            }
        };
        if status == VIRTIO_BLK_S_IOERR {
            METRICS.block_errors.inc();
        }
        // The status is one byte on the ring; the bindings' values (0, 1, 2) fit it.
        if status_writer.write_all(&[status as u8]).is_err() {
            return 0;
        }
        (writer.bytes_written() + 1) as u32
    }

    /// The byte range of a request, if it lies within the disk.
    fn range(&self, sector: u64, len: usize) -> Option<u64> {
        let offset = sector.checked_mul(1 << SECTOR_SHIFT)?;
        (len <= MAX_REQUEST && offset.checked_add(len as u64)? <= self.capacity).then_some(offset)
    }

    fn read(&self, sector: u64, writer: &mut virtio_queue::Writer<'_>) -> u32 {
        let len = writer.available_bytes();
        let Some(offset) = self.range(sector, len) else {
            guest_warn!("block read of {len} bytes at sector {sector} is out of range");
            return VIRTIO_BLK_S_IOERR;
        };
        let mut buf = vec![0u8; len];
        if self.file.read_exact_at(&mut buf, offset).is_err() || writer.write_all(&buf).is_err() {
            return VIRTIO_BLK_S_IOERR;
        }
        METRICS.block_reads.inc();
        METRICS.block_read_bytes.add(len as u64);
        VIRTIO_BLK_S_OK
    }

    fn write(&self, sector: u64, reader: &mut virtio_queue::Reader<'_>) -> u32 {
        if self.read_only {
            guest_warn!("write to a read-only block device refused");
            return VIRTIO_BLK_S_IOERR;
        }
        let len = reader.available_bytes();
        let Some(offset) = self.range(sector, len) else {
            guest_warn!("block write of {len} bytes at sector {sector} is out of range");
            return VIRTIO_BLK_S_IOERR;
        };
        let mut buf = vec![0u8; len];
        if reader.read_exact(&mut buf).is_err() || self.file.write_all_at(&buf, offset).is_err() {
            return VIRTIO_BLK_S_IOERR;
        }
        METRICS.block_writes.inc();
        METRICS.block_write_bytes.add(len as u64);
        VIRTIO_BLK_S_OK
    }

    fn flush(&self) -> u32 {
        METRICS.block_flushes.inc();
        if self.read_only || self.file.sync_data().is_ok() {
            VIRTIO_BLK_S_OK
        } else {
            VIRTIO_BLK_S_IOERR
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        let ro = if self.disk.read_only { feature(VIRTIO_BLK_F_RO) } else { 0 };
        feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_BLK_F_FLUSH) | feature(VIRTIO_BLK_F_SEG_MAX) | ro
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

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const HEADER: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;

    fn disk(name: &str, contents: &[u8], read_only: bool) -> (Block, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("brig-blk-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).expect("image");
        let config = BlockConfig { path: path.clone(), read_only, serial: Some("disk-serial".into()) };
        (Block::new(&config).expect("block"), path)
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("mem")
    }

    fn desc(addr: u64, len: u32, writable: bool) -> RawDescriptor {
        let flags = if writable { VRING_DESC_F_WRITE as u16 } else { 0 };
        RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
    }

    /// Runs one request whose chain is `descs`, with a header of `kind` at `sector`.
    fn request(block: &Block, mem: &GuestMemoryMmap, kind: u32, sector: u64, descs: &[RawDescriptor]) -> u32 {
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&kind.to_le_bytes());
        header[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&header, GuestAddress(HEADER)).expect("header");
        mem.write_obj(0xffu8, GuestAddress(STATUS)).expect("status");
        let queue = MockSplitQueue::new(mem, 16);
        let chain = queue.build_desc_chain(descs).expect("chain");
        block.disk.handle(mem, chain)
    }

    /// The status byte the device wrote, widened to the bindings' type.
    fn status(mem: &GuestMemoryMmap) -> u32 {
        u32::from(mem.read_obj::<u8>(GuestAddress(STATUS)).expect("status"))
    }

    #[test]
    fn offered_features_are_the_spec_bits() {
        // VERSION_1 (32), FLUSH (9), SEG_MAX (2), and RO (5) only for a read-only disk.
        let (rw, rw_path) = disk("features-rw", &[0u8; 512], false);
        assert_eq!(rw.avail_features(), 0x1_0000_0204);
        let (ro, ro_path) = disk("features-ro", &[0u8; 512], true);
        assert_eq!(ro.avail_features(), 0x1_0000_0224);
        std::fs::remove_file(rw_path).expect("cleanup");
        std::fs::remove_file(ro_path).expect("cleanup");
    }

    #[test]
    fn a_write_to_a_read_only_disk_is_refused_even_if_the_guest_ignores_the_flag() {
        let (block, path) = disk("ro", &[0x11; 4096], true);
        assert_ne!(block.avail_features() & feature(VIRTIO_BLK_F_RO), 0, "the guest is told the disk is read-only");
        let mem = mem();
        mem.write_slice(&[0xaa; 512], GuestAddress(DATA)).expect("data");
        let used = request(
            &block,
            &mem,
            VIRTIO_BLK_T_OUT,
            0,
            &[desc(HEADER, 16, false), desc(DATA, 512, false), desc(STATUS, 1, true)],
        );
        assert_eq!((used, status(&mem)), (1, VIRTIO_BLK_S_IOERR));
        assert_eq!(std::fs::read(&path).expect("image"), vec![0x11; 4096], "the image is untouched");
        std::fs::remove_file(path).expect("cleanup");
    }

    #[test]
    fn writes_and_reads_round_trip_and_get_id_returns_the_serial() {
        let (block, path) = disk("rw", &[0u8; 8192], false);
        let mem = mem();
        mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).expect("data");
        let out = [desc(HEADER, 16, false), desc(DATA, 512, false), desc(STATUS, 1, true)];
        assert_eq!((request(&block, &mem, VIRTIO_BLK_T_OUT, 3, &out), status(&mem)), (1, VIRTIO_BLK_S_OK));
        assert_eq!(&std::fs::read(&path).expect("image")[3 * 512..4 * 512], &[0x5a; 512]);

        mem.write_slice(&[0u8; 512], GuestAddress(DATA)).expect("clear");
        let inn = [desc(HEADER, 16, false), desc(DATA, 512, true), desc(STATUS, 1, true)];
        assert_eq!((request(&block, &mem, VIRTIO_BLK_T_IN, 3, &inn), status(&mem)), (513, VIRTIO_BLK_S_OK));
        let mut back = [0u8; 512];
        mem.read_slice(&mut back, GuestAddress(DATA)).expect("read");
        assert_eq!(back, [0x5a; 512]);

        let id = [desc(HEADER, 16, false), desc(DATA, 20, true), desc(STATUS, 1, true)];
        assert_eq!((request(&block, &mem, VIRTIO_BLK_T_GET_ID, 0, &id), status(&mem)), (21, VIRTIO_BLK_S_OK));
        let mut serial = [0u8; 11];
        mem.read_slice(&mut serial, GuestAddress(DATA)).expect("serial");
        assert_eq!(&serial, b"disk-serial");
        std::fs::remove_file(path).expect("cleanup");
    }

    #[test]
    fn hostile_requests_get_errors_not_panics() {
        let (block, path) = disk("hostile", &[0u8; 4096], false);
        let mem = mem();
        // Past the end of the disk.
        let inn = [desc(HEADER, 16, false), desc(DATA, 512, true), desc(STATUS, 1, true)];
        assert_eq!(request(&block, &mem, VIRTIO_BLK_T_IN, 8, &inn), 1);
        assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
        // Sector number that overflows when turned into bytes.
        assert_eq!(request(&block, &mem, VIRTIO_BLK_T_IN, u64::MAX, &inn), 1);
        assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
        // A header shorter than 16 bytes.
        assert_eq!(request(&block, &mem, VIRTIO_BLK_T_IN, 0, &[desc(HEADER, 8, false), desc(STATUS, 1, true)]), 1);
        assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
        // No writable status byte at all: nothing to answer with.
        assert_eq!(request(&block, &mem, VIRTIO_BLK_T_IN, 0, &[desc(HEADER, 16, false)]), 0);
        // A buffer outside guest memory.
        let outside = [desc(HEADER, 16, false), desc(0xfff_0000, 512, true), desc(STATUS, 1, true)];
        assert_eq!(request(&block, &mem, VIRTIO_BLK_T_IN, 0, &outside), 0);
        // An unknown request type.
        assert_eq!(request(&block, &mem, 77, 0, &[desc(HEADER, 16, false), desc(STATUS, 1, true)]), 1);
        assert_eq!(status(&mem), VIRTIO_BLK_S_UNSUPP);
        std::fs::remove_file(path).expect("cleanup");
    }
}
