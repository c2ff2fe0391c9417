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
    /// Memory mapped in 2 MiB pages (`ShmemPmdMapped + AnonHugePages` of `smaps_rollup`).
    pub huge_kib: u64,
}

pub fn memory(pid: u32) -> Memory {
    let Ok(status) = procfs::process::Process::new(pid as i32).and_then(|p| p.status()) else {
        return Memory::default();
    };
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        rollup
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Memory {
        rss_kib: status.vmrss.unwrap_or(0),
        own_kib: status.rssanon.unwrap_or(0) + status.rssfile.unwrap_or(0),
        shmem_kib: status.rssshmem.unwrap_or(0),
        huge_kib: field("ShmemPmdMapped") + field("AnonHugePages"),
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
