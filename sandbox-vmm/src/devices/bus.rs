//! Address buses for port I/O and MMIO exits.
//!
//! A bus is built once, before vCPUs start, and never changes: lookups from vCPU
//! threads take no lock on the bus itself, only on the device they hit.

use std::sync::{Arc, Mutex};

use crate::metrics::METRICS;

/// A device mapped on a bus. `offset` is relative to the device's base.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error)]
#[error("bus range {base:#x}+{len:#x} overlaps another device or is empty")]
pub struct BusError {
    pub base: u64,
    pub len: u64,
}

struct Entry {
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Ranges sorted by base address.
#[derive(Default)]
pub struct Bus {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.entries.iter().map(|e| (e.base, e.len))).finish()
    }
}

impl Bus {
    pub fn insert(&mut self, base: u64, len: u64, device: Arc<Mutex<dyn BusDevice>>) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0).ok_or(BusError { base, len })?;
        if self.entries.iter().any(|e| base < e.base + e.len && e.base < end) {
            return Err(BusError { base, len });
        }
        let at = self.entries.partition_point(|e| e.base < base);
        self.entries.insert(at, Entry { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(&Entry, u64)> {
        let at = self.entries.partition_point(|e| e.base <= addr);
        let entry = self.entries.get(at.checked_sub(1)?)?;
        (addr < entry.base + entry.len).then(|| (entry, addr - entry.base))
    }

    /// Returns false when nothing is mapped at `addr` (`data` is then all ones, as on real hardware).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((entry, offset)) => {
                lock(&entry.device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                METRICS.unhandled_accesses.inc();
                false
            }
        }
    }

    /// Returns false when nothing is mapped at `addr` (the write is dropped).
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((entry, offset)) => {
                lock(&entry.device).write(offset, data);
                true
            }
            None => {
                METRICS.unhandled_accesses.inc();
                false
            }
        }
    }
}

/// Locks a device, recovering from a poisoned lock: a panic in one device handler
/// must not take every vCPU down with it.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_with_relative_offsets() {
        let a = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::default();
        bus.insert(0x3f8, 8, a.clone()).expect("insert");
        bus.insert(0x60, 5, Arc::new(Mutex::new(Recorder::default()))).expect("insert");
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data, [5]);
        assert!(bus.write(0x3f8, b"x"));
        assert_eq!(lock(&a).last_write, Some((0, vec![b'x'])));
        assert!(!bus.read(0x400, &mut data), "past the end");
        assert_eq!(data, [0xff]);
        assert!(!bus.write(0x5f, &[1]), "before the start");
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let mut bus = Bus::default();
        let dev = || -> Arc<Mutex<dyn BusDevice>> { Arc::new(Mutex::new(Recorder::default())) };
        bus.insert(0x1000, 0x100, dev()).expect("insert");
        assert!(bus.insert(0x10ff, 1, dev()).is_err());
        assert!(bus.insert(0xf01, 0x100, dev()).is_err());
        assert!(bus.insert(0x1100, 1, dev()).is_ok());
        assert!(bus.insert(0x2000, 0, dev()).is_err());
    }
}
