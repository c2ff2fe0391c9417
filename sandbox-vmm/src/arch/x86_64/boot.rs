//! Guest memory contents for the Linux 64-bit boot protocol: the kernel ELF, the
//! initramfs, the command line, the zero page with its e820 map, the boot GDT/IDT
//! and identity-mapped page tables for the first GiB.

use std::fs::File;
use std::path::Path;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::Elf;
use linux_loader::loader::{load_cmdline, Cmdline, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::layout::*;

// Not in linux-loader's bootparam bindings (kvm-bindings has none of them either).
const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open the kernel {path}")]
    OpenKernel { path: String, source: std::io::Error },
    #[error("{path} is not a loadable vmlinux (an uncompressed x86_64 ELF kernel is needed)")]
    LoadKernel { path: String, source: linux_loader::loader::Error },
    #[error("cannot read the initramfs {path}")]
    ReadInitramfs { path: String, source: std::io::Error },
    #[error(
        "{memory_mib} MiB of guest memory is too little: the kernel ends at {kernel_end_mib} MiB and the \
         initramfs needs {initramfs_mib} MiB more; give the VM at least {needed_mib} MiB"
    )]
    TooLittleMemory { memory_mib: u64, kernel_end_mib: u64, initramfs_mib: u64, needed_mib: u64 },
    #[error("the kernel command line is invalid or longer than {CMDLINE_MAX} bytes: {0}")]
    Cmdline(String),
    #[error("cannot write boot structures into guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
    #[error("cannot write the zero page")]
    ZeroPage(#[source] linux_loader::configurator::Error),
}

/// Where things landed.
#[derive(Debug, Clone, Copy)]
pub struct BootLayout {
    /// The kernel's 64-bit entry point.
    pub entry: u64,
    pub kernel_end: u64,
    pub initramfs: Option<(u64, u64)>,
}

/// Memory the guest kernel needs beyond its image and initramfs to get to userspace.
pub const MIN_WORKING_MEMORY: u64 = 24 << 20;

/// Loads the kernel and initramfs, writes the command line and the zero page.
pub fn load(
    memory: &GuestMemoryMmap,
    memory_bytes: u64,
    kernel: &Path,
    initramfs: Option<&Path>,
    cmdline: &Cmdline,
) -> Result<BootLayout, BootError> {
    let path = kernel.display().to_string();
    let mut file = File::open(kernel).map_err(|source| BootError::OpenKernel { path: path.clone(), source })?;
    let loaded = Elf::load(memory, None, &mut file, Some(GuestAddress(HIMEM_START)))
        .map_err(|source| BootError::LoadKernel { path, source })?;
    let kernel_end = loaded.kernel_end;

    let low_end = memory_bytes.min(MMIO_START);
    let initramfs = match initramfs {
        Some(path) => Some(load_initramfs(memory, path, kernel_end, low_end, memory_bytes)?),
        None => {
            check_memory(memory_bytes, kernel_end, 0)?;
            None
        }
    };

    load_cmdline(memory, GuestAddress(CMDLINE_START), cmdline).map_err(|e| BootError::Cmdline(e.to_string()))?;
    let cmdline_len = cmdline.as_cstring().map_err(|e| BootError::Cmdline(e.to_string()))?.as_bytes().len();
    write_zero_page(memory, cmdline_len, initramfs)?;
    write_gdt_and_page_tables(memory)?;
    Ok(BootLayout { entry: loaded.kernel_load.raw_value(), kernel_end, initramfs })
}

fn check_memory(memory_bytes: u64, kernel_end: u64, initramfs_len: u64) -> Result<(), BootError> {
    let needed = kernel_end + initramfs_len + MIN_WORKING_MEMORY;
    if memory_bytes < needed {
        let mib = |b: u64| b.div_ceil(1 << 20);
        return Err(BootError::TooLittleMemory {
            memory_mib: memory_bytes >> 20,
            kernel_end_mib: mib(kernel_end),
            initramfs_mib: mib(initramfs_len),
            needed_mib: mib(needed),
        });
    }
    Ok(())
}

/// Places the initramfs at the top of low memory, page-aligned.
fn load_initramfs(
    memory: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    low_end: u64,
    memory_bytes: u64,
) -> Result<(u64, u64), BootError> {
    let display = path.display().to_string();
    let mut file = File::open(path).map_err(|source| BootError::ReadInitramfs { path: display.clone(), source })?;
    let len = file.metadata().map_err(|source| BootError::ReadInitramfs { path: display.clone(), source })?.len();
    check_memory(memory_bytes, kernel_end, len)?;
    let addr = (low_end - len) & !(PAGE_SIZE - 1);
    if addr < kernel_end {
        check_memory(0, kernel_end, len)?;
    }
    memory.read_exact_volatile_from(GuestAddress(addr), &mut file, len as usize).map_err(BootError::Memory)?;
    Ok((addr, len))
}

fn e820_map(memory: &GuestMemoryMmap) -> Vec<boot_e820_entry> {
    let mut map = vec![boot_e820_entry { addr: 0, size: EBDA_START, r#type: E820_RAM }];
    for region in memory.iter() {
        let start = region.start_addr().raw_value();
        let end = start + region.len();
        let start = start.max(HIMEM_START);
        if end > start {
            map.push(boot_e820_entry { addr: start, size: end - start, r#type: E820_RAM });
        }
    }
    map
}

fn write_zero_page(
    memory: &GuestMemoryMmap,
    cmdline_len: usize,
    initramfs: Option<(u64, u64)>,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32 + 1;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    if let Some((addr, len)) = initramfs {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = len as u32;
    }
    let map = e820_map(memory);
    params.e820_entries = map.len() as u8;
    for (slot, entry) in params.e820_table.iter_mut().zip(map) {
        *slot = entry;
    }
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        memory,
    )
    .map_err(BootError::ZeroPage)
}

/// The boot GDT: null, 64-bit code, data, TSS (selectors 0x08, 0x10, 0x18).
pub const BOOT_GDT: [u64; 4] =
    [0, gdt_entry(0xa09b, 0, 0xfffff), gdt_entry(0xc093, 0, 0xfffff), gdt_entry(0x808b, 0, 0xfffff)];

/// A GDT descriptor from flags (access byte + granularity nibble), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn write_gdt_and_page_tables(memory: &GuestMemoryMmap) -> Result<(), BootError> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        memory.write_obj(*entry, GuestAddress(GDT_START + i as u64 * 8)).map_err(BootError::Memory)?;
    }
    memory.write_obj(0u64, GuestAddress(IDT_START)).map_err(BootError::Memory)?;
    // Identity-map the first GiB with 2 MiB pages: enough for the kernel to build its own.
    const PRESENT_RW: u64 = 0x3;
    const HUGE: u64 = 0x80;
    memory.write_obj(PDPT_START | PRESENT_RW, GuestAddress(PML4_START)).map_err(BootError::Memory)?;
    memory.write_obj(PD_START | PRESENT_RW, GuestAddress(PDPT_START)).map_err(BootError::Memory)?;
    for i in 0..512u64 {
        memory.write_obj((i << 21) | PRESENT_RW | HUGE, GuestAddress(PD_START + i * 8)).map_err(BootError::Memory)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_match_the_architecture_manual() {
        // Well-known encodings of flat 64-bit code and 32-bit data segments.
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0x808b, 0, 0xfffff), 0x008f_8b00_0000_ffff);
    }

    fn memory(bytes: u64) -> GuestMemoryMmap {
        let ranges: Vec<(GuestAddress, usize)> =
            ram_ranges(bytes).into_iter().map(|(a, l)| (GuestAddress(a), l as usize)).collect();
        GuestMemoryMmap::from_ranges(&ranges).expect("memory")
    }

    #[test]
    fn e820_excludes_the_ebda_and_legacy_hole() {
        let map = e820_map(&memory(128 << 20));
        let pairs: Vec<(u64, u64)> = map.iter().map(|e| (e.addr, e.size)).collect();
        assert_eq!(pairs, vec![(0, EBDA_START), (HIMEM_START, (128 << 20) - HIMEM_START)]);
    }

    #[test]
    fn too_little_memory_says_how_much_is_needed() {
        let err = check_memory(64 << 20, 40 << 20, 8 << 20).expect_err("too small");
        let msg = err.to_string();
        assert!(msg.contains("64 MiB"), "{msg}");
        assert!(msg.contains("at least 72 MiB"), "{msg}");
    }

    #[test]
    fn a_non_elf_kernel_is_refused_with_its_path() {
        let dir = std::env::temp_dir().join(format!("brig-boot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let bogus = dir.join("vmlinuz");
        std::fs::write(&bogus, b"MZ not an elf").expect("write");
        let cmdline = Cmdline::new(CMDLINE_MAX).expect("cmdline");
        let err = load(&memory(128 << 20), 128 << 20, &bogus, None, &cmdline).expect_err("not ELF");
        assert!(err.to_string().contains("not a loadable vmlinux"), "{err}");
        assert!(err.to_string().contains("vmlinuz"), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
