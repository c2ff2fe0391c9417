//! Guest memory: one shared-memory file, mapped region by region with vm-memory,
//! in 2 MiB transparent huge pages where the host gives them (ADR 014).
//!
//! A file (rather than anonymous memory) lets snapshots read guest RAM through a
//! file descriptor, find the pages never touched as holes, and lets a later restore
//! map the same file. The file is a memfd, or an unnamed file (`O_TMPFILE`) in a
//! tmpfs directory: brig's jail mounts one `huge=within_size` for each VM, which
//! gives huge pages whatever the host's `shmem_enabled` says (memfds get them only
//! when it is `advise` or more, and `madvise(MADV_HUGEPAGE)` asks). Guest memory is
//! only ever touched through vm-memory's volatile accessors, never through a Rust
//! slice (vm-memory issue #45).
//!
//! `unsafe` here: `memfd_create(2)` and `madvise(2)`, and taking ownership of the
//! descriptor `memfd_create` returns. Invariants: the descriptor is fresh and owned by
//! nobody else; the advised ranges are exactly vm-memory's live mappings.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use brig_vmm_api::config::MachineConfig;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::layout::ram_ranges;

/// The smallest VM brig-vmm accepts, whatever the kernel (part of its contract).
pub use brig_vmm_api::config::MIN_MEMORY_MIB;

/// The host's switch for huge pages in memfds and shared memory.
const SHMEM_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("memfd_create failed")]
    Memfd(#[source] std::io::Error),
    #[error("cannot create guest memory in {}: it must be a writable tmpfs directory", .0.display())]
    Dir(PathBuf, #[source] std::io::Error),
    #[error("memory_dir {}: guest RAM must stay in memory, and this directory is not on a tmpfs", .0.display())]
    NotTmpfs(PathBuf),
    #[error("cannot size guest memory to {0} bytes")]
    Truncate(u64, #[source] std::io::Error),
    #[error("cannot map guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
}

/// Guest RAM and the file behind it.
#[derive(Debug)]
pub struct GuestRam {
    pub memory: GuestMemoryMmap,
    pub file: File,
    pub bytes: u64,
    /// The page size the guest's memory gets, and why, for the log.
    pub pages: Pages,
}

/// What the host gives guest RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pages {
    /// 2 MiB transparent huge pages (where the kernel finds free 2 MiB blocks).
    Huge(String),
    /// 4 KiB pages, and why.
    Small(String),
}

/// Creates the guest RAM `machine` asks for, laid out around the MMIO gap.
pub fn create(machine: &MachineConfig) -> Result<GuestRam, MemoryError> {
    create_in(machine.memory_bytes(), machine.memory_dir.as_deref(), machine.huge_pages)
}

/// `bytes` of guest RAM in a memfd or an unnamed file in `dir`, huge pages asked
/// for when `huge`.
pub(crate) fn create_in(bytes: u64, dir: Option<&Path>, huge: bool) -> Result<GuestRam, MemoryError> {
    let file = match dir {
        Some(dir) => std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
            .open(dir)
            .map_err(|e| MemoryError::Dir(dir.to_path_buf(), e))
            .and_then(|file| on_tmpfs(file, dir))?,
        None => memfd()?,
    };
    file.set_len(bytes).map_err(|e| MemoryError::Truncate(bytes, e))?;
    let mut offset = 0;
    let mut ranges = Vec::new();
    for (start, len) in ram_ranges(bytes) {
        let file = file.try_clone().map_err(MemoryError::Memfd)?;
        ranges.push((GuestAddress(start), len as usize, Some(FileOffset::new(file, offset))));
        offset += len;
    }
    let memory = GuestMemoryMmap::from_ranges_with_files(ranges).map_err(MemoryError::Map)?;
    let pages = if huge {
        advise_huge(&memory);
        huge_page_source(dir, &read_or_empty)
    } else {
        Pages::Small("huge_pages is off in the VM's configuration".into())
    };
    Ok(GuestRam { memory, file, bytes, pages })
}

/// `file` if it is on a tmpfs: anywhere else guest RAM would be written to a disk.
fn on_tmpfs(file: File, dir: &Path) -> Result<File, MemoryError> {
    let fs = nix::sys::statfs::fstatfs(&file).map_err(|e| MemoryError::Dir(dir.to_path_buf(), e.into()))?;
    if fs.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC {
        return Err(MemoryError::NotTmpfs(dir.to_path_buf()));
    }
    Ok(file)
}

fn memfd() -> Result<File, MemoryError> {
    let name = CString::new("brig-guest-ram").expect("static name has no NUL");
    // SAFETY: `name` is a valid NUL-terminated string; the flags are valid.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Asks for huge pages on every region (what `shmem_enabled = advise` waits for;
/// harmless elsewhere). A refusal only means 4 KiB pages, so it is not an error.
fn advise_huge(memory: &GuestMemoryMmap) {
    for region in memory.iter() {
        let Ok(host) = region.get_host_address(vm_memory::MemoryRegionAddress(0)) else { continue };
        // SAFETY: `host .. host + len` is exactly this region's live mapping, which
        // `memory` keeps mapped; MADV_HUGEPAGE changes no contents.
        let rc = unsafe { libc::madvise(host.cast(), region.len() as usize, libc::MADV_HUGEPAGE) };
        if rc != 0 {
            log::debug!("madvise(MADV_HUGEPAGE): {}", std::io::Error::last_os_error());
        }
    }
}

fn read_or_empty(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Whether guest RAM in `dir` (or a memfd) gets huge pages, from the host's
/// settings as `read` finds them (`/sys/…/shmem_enabled`, `/proc/self/mountinfo`).
fn huge_page_source(dir: Option<&Path>, read: &dyn Fn(&Path) -> String) -> Pages {
    let shmem = read(Path::new(SHMEM_ENABLED));
    let chosen = shmem.split_whitespace().find_map(|w| w.strip_prefix('[')?.strip_suffix(']')).map(str::to_owned);
    if chosen.as_deref() == Some("deny") {
        return Pages::Small(format!("{SHMEM_ENABLED} is `deny`, which turns huge pages off for every tmpfs"));
    }
    let Some(dir) = dir else {
        return match chosen.as_deref() {
            Some(mode @ ("advise" | "always" | "within_size" | "force")) => {
                Pages::Huge(format!("memfd, shmem_enabled = {mode}"))
            }
            Some(mode) => Pages::Small(format!(
                "a memfd gets huge pages only when {SHMEM_ENABLED} is `advise` or more, and it is `{mode}` \
                 (brig's jail gives each VM a huge-page tmpfs instead; or set memory_dir)"
            )),
            None => Pages::Small(format!("{SHMEM_ENABLED} cannot be read, so this kernel has no shmem huge pages")),
        };
    };
    // The mount holding `dir`: the longest mount point it is under.
    let mountinfo = read(Path::new("/proc/self/mountinfo"));
    let mount = mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split_whitespace().nth(4)?;
            let mut right = right.split_whitespace();
            let (fstype, options) = (right.next()?, right.nth(1)?);
            dir.starts_with(point).then_some((point.len(), fstype, options))
        })
        .max_by_key(|(len, _, _)| *len);
    match mount {
        Some((_, "tmpfs", options)) => match options.split(',').find_map(|o| o.strip_prefix("huge=")) {
            Some(huge @ ("always" | "within_size" | "advise")) => {
                Pages::Huge(format!("tmpfs {} (huge={huge})", dir.display()))
            }
            _ => Pages::Small(format!("the tmpfs at {} is not mounted with huge=within_size", dir.display())),
        },
        Some((_, fstype, _)) => Pages::Small(format!("{} is on {fstype}, not a tmpfs", dir.display())),
        None => Pages::Small(format!("no mount for {} in /proc/self/mountinfo", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use vm_memory::Bytes;

    #[test]
    fn guest_writes_land_in_the_memfd() {
        let ram = create(&MachineConfig::new(1, 64)).expect("ram");
        ram.memory.write_obj(0xfeed_f00d_u32, GuestAddress(0x1234)).expect("write");
        let mut buf = [0u8; 4];
        ram.file.read_exact_at(&mut buf, 0x1234).expect("read memfd");
        assert_eq!(u32::from_le_bytes(buf), 0xfeed_f00d);
        assert_eq!(ram.memory.num_regions(), 1);
    }

    #[test]
    fn guest_ram_in_a_directory_is_an_unnamed_file_there() {
        let dir = PathBuf::from(format!("/dev/shm/brig-memory-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut machine = MachineConfig::new(1, 32);
        machine.memory_dir = Some(dir.clone());
        let ram = create(&machine).expect("ram in a directory");
        ram.memory.write_obj(0xabcd_u16, GuestAddress(0x10_0000)).expect("write");
        let mut buf = [0u8; 2];
        ram.file.read_exact_at(&mut buf, 0x10_0000).expect("read the file");
        assert_eq!(u16::from_le_bytes(buf), 0xabcd);
        assert_eq!(std::fs::read_dir(&dir).expect("list").count(), 0, "O_TMPFILE leaves no name behind");
        drop(ram);
        std::fs::remove_dir(&dir).expect("rmdir");

        machine.memory_dir = Some("/nonexistent/brig".into());
        let err = create(&machine).expect_err("no such directory");
        assert!(err.to_string().contains("/nonexistent/brig: it must be a writable tmpfs directory"), "{err}");
        let disk = std::env::current_dir().expect("cwd"); // the work tree: not a tmpfs
        machine.memory_dir = Some(disk.clone());
        let err = create(&machine).expect_err("a disk directory");
        assert!(matches!(err, MemoryError::NotTmpfs(ref d) if *d == disk), "{err}");
    }

    #[test]
    fn the_page_size_and_its_reason_come_from_the_hosts_settings() {
        let host = |shmem: &'static str, mountinfo: &'static str| {
            move |path: &Path| match path.to_str() {
                Some(SHMEM_ENABLED) => shmem.to_owned(),
                Some("/proc/self/mountinfo") => mountinfo.to_owned(),
                _ => String::new(),
            }
        };
        let huge_tmpfs = "22 1 0:20 / / rw - ext4 /dev/vda rw\n\
                          30 22 0:31 / /memory rw,nosuid - tmpfs tmpfs rw,size=131072k,huge=within_size\n";
        let plain_tmpfs = "22 1 0:20 / / rw - ext4 /dev/vda rw\n30 22 0:31 / /memory rw - tmpfs tmpfs rw\n";
        let memory = Some(Path::new("/memory"));
        let never = "always within_size advise [never] deny force";

        assert!(matches!(huge_page_source(memory, &host(never, huge_tmpfs)), Pages::Huge(_)));
        let Pages::Small(why) = huge_page_source(memory, &host(never, plain_tmpfs)) else { panic!("no huge=") };
        assert!(why.contains("not mounted with huge=within_size"), "{why}");
        let Pages::Small(why) = huge_page_source(Some(Path::new("/state")), &host(never, huge_tmpfs)) else {
            panic!("ext4")
        };
        assert!(why.contains("on ext4, not a tmpfs"), "{why}");
        let deny = "always within_size advise never [deny] force";
        let Pages::Small(why) = huge_page_source(memory, &host(deny, huge_tmpfs)) else { panic!("deny") };
        assert!(why.contains("`deny`"), "{why}");

        let Pages::Small(why) = huge_page_source(None, &host(never, "")) else { panic!("memfd, never") };
        assert!(why.contains("it is `never`"), "{why}");
        let advise = "always within_size [advise] never deny force";
        assert_eq!(huge_page_source(None, &host(advise, "")), Pages::Huge("memfd, shmem_enabled = advise".into()));
        let Pages::Small(why) = huge_page_source(None, &host("", "")) else { panic!("no THP") };
        assert!(why.contains("cannot be read"), "{why}");
    }
}
