//! Guest memory: one memfd, mapped region by region with vm-memory.
//!
//! A memfd (rather than anonymous memory) lets snapshots read guest RAM through a
//! file descriptor, and lets a later restore map the same file. Guest memory is
//! only ever touched through vm-memory's volatile accessors, never through a Rust
//! slice (vm-memory issue #45).
//!
//! `unsafe` here: `memfd_create(2)` and taking ownership of the descriptor it
//! returns. Invariant: the descriptor is fresh and owned by nobody else.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use crate::arch::layout::ram_ranges;

/// The smallest VM brig-vmm accepts, whatever the kernel (part of its contract).
pub use brig_vmm_api::config::MIN_MEMORY_MIB;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("memfd_create failed")]
    Memfd(#[source] std::io::Error),
    #[error("cannot size guest memory to {0} bytes")]
    Truncate(u64, #[source] std::io::Error),
    #[error("cannot map guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
}

/// Guest RAM and the memfd behind it.
#[derive(Debug)]
pub struct GuestRam {
    pub memory: GuestMemoryMmap,
    pub file: File,
    pub bytes: u64,
}

/// Creates `bytes` of guest RAM laid out around the MMIO gap.
pub fn create(bytes: u64) -> Result<GuestRam, MemoryError> {
    let name = CString::new("brig-guest-ram").expect("static name has no NUL");
    // SAFETY: `name` is a valid NUL-terminated string; the flags are valid.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(bytes).map_err(|e| MemoryError::Truncate(bytes, e))?;
    let mut offset = 0;
    let mut ranges = Vec::new();
    for (start, len) in ram_ranges(bytes) {
        let file = file.try_clone().map_err(MemoryError::Memfd)?;
        ranges.push((GuestAddress(start), len as usize, Some(FileOffset::new(file, offset))));
        offset += len;
    }
    let memory = GuestMemoryMmap::from_ranges_with_files(ranges).map_err(MemoryError::Map)?;
    Ok(GuestRam { memory, file, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn guest_writes_land_in_the_memfd() {
        let ram = create(64 << 20).expect("ram");
        ram.memory.write_obj(0xfeed_f00d_u32, GuestAddress(0x1234)).expect("write");
        let mut buf = [0u8; 4];
        ram.file.read_exact_at(&mut buf, 0x1234).expect("read memfd");
        assert_eq!(u32::from_le_bytes(buf), 0xfeed_f00d);
        assert_eq!(ram.memory.num_regions(), 1);
    }
}
