//! What a snapshot says about the guest kernel: the booted vmlinux's digest and
//! build-id, the debug vmlinux an analyst opens the dump with, and where the
//! kernel keeps its VMCOREINFO note, from the kernel's own symbol table.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use object::elf::PT_LOAD;
use object::read::elf::{ElfFile64, ProgramHeader};
use object::{LittleEndian, Object, ObjectSymbol};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::signing::hex;

/// The symbol whose value is a pointer to the kernel's VMCOREINFO note.
const VMCOREINFO_NOTE: &str = "vmcoreinfo_note";

/// One vmlinux, as recorded in the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct Vmlinux {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    /// The GNU build-id note (hex), which the booted and the debug vmlinux share.
    pub build_id: Option<String>,
}

/// The booted kernel, inspected.
#[derive(Debug)]
pub struct Booted {
    pub vmlinux: Vmlinux,
    /// Guest-physical address of the `vmcoreinfo_note` variable, when the kernel has one.
    pub vmcoreinfo_note_symbol: Option<u64>,
}

/// Reads the kernel at `path` (a regular file, never through a symlink).
pub fn inspect(path: &Path) -> Result<Booted> {
    parsed(path, |data, elf| {
        let vmcoreinfo_note_symbol =
            elf.symbols().find(|s| s.name() == Ok(VMCOREINFO_NOTE)).and_then(|s| physical_address(elf, s.address()));
        Booted { vmlinux: describe(path, data, elf), vmcoreinfo_note_symbol }
    })
}

/// The debug vmlinux at `path`, if there is one.
pub fn inspect_debug(path: &Path) -> Result<Vmlinux> {
    parsed(path, |data, elf| describe(path, data, elf))
}

/// Reads the vmlinux at `path` once and hands its bytes and ELF view to `then`.
fn parsed<T>(path: &Path, then: impl FnOnce(&[u8], &ElfFile64<'_, LittleEndian>) -> T) -> Result<T> {
    let data = read_regular(path)?;
    let elf = ElfFile64::<LittleEndian>::parse(&*data)
        .with_context(|| format!("{} is not an ELF64 vmlinux", path.display()))?;
    Ok(then(&data, &elf))
}

fn describe(path: &Path, data: &[u8], elf: &ElfFile64<'_, LittleEndian>) -> Vmlinux {
    Vmlinux {
        path: path.to_path_buf(),
        size: data.len() as u64,
        sha256: hex(&Sha256::digest(data)),
        build_id: elf.build_id().ok().flatten().map(hex),
    }
}

/// Where the kernel image puts virtual address `va`: the `PT_LOAD` segment that
/// holds it maps it to its physical (load) address, as brig-vmm loaded it.
fn physical_address(elf: &ElfFile64<'_, LittleEndian>, va: u64) -> Option<u64> {
    let endian = elf.endian();
    elf.elf_program_headers().iter().find_map(|ph| {
        let (vaddr, paddr, size) = (ph.p_vaddr(endian), ph.p_paddr(endian), ph.p_memsz(endian));
        (ph.p_type(endian) == PT_LOAD && va >= vaddr && va - vaddr < size).then(|| paddr + (va - vaddr))
    })
}

fn read_regular(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    if !file.metadata()?.is_file() {
        anyhow::bail!("{} is not a regular file", path.display());
    }
    let mut data = Vec::new();
    file.read_to_end(&mut data).with_context(|| format!("reading {}", path.display()))?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_a_kernel_is_named() {
        let path = std::env::temp_dir().join(format!("brig-cli-not-elf-{}", std::process::id()));
        std::fs::write(&path, b"not an ELF").expect("write");
        let err = inspect(&path).expect_err("not ELF");
        assert!(format!("{err:#}").contains("is not an ELF64 vmlinux"), "{err:#}");
        std::fs::remove_file(&path).expect("cleanup");
    }
}
