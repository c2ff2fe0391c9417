//! Memory of host processes (brig-vmm, the shim) for benchmarks, through procfs.

/// A process's resident memory in KiB, zeros where it cannot be read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: everything resident, guest RAM included.
    pub rss_kib: u64,
    /// `RssAnon + RssFile`: the process's own memory (brig-vmm's guest RAM is a memfd, so not in here).
    pub own_kib: u64,
    /// `RssShmem`: for brig-vmm, the guest RAM it has touched.
    pub shmem_kib: u64,
}

pub fn memory(pid: u32) -> Memory {
    let Ok(status) = procfs::process::Process::new(pid as i32).and_then(|p| p.status()) else {
        return Memory::default();
    };
    Memory {
        rss_kib: status.vmrss.unwrap_or(0),
        own_kib: status.rssanon.unwrap_or(0) + status.rssfile.unwrap_or(0),
        shmem_kib: status.rssshmem.unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn our_own_memory_is_read() {
        let m = super::memory(std::process::id());
        assert!(m.rss_kib > 0 && m.own_kib > 0, "{m:?}");
    }
}
