//! `memory.elf`: guest RAM of a paused VM as an ELF64 core that crash, gdb and
//! Volatility open (docs/control-socket.md, `dump-memory-fd`).
//!
//! Layout, in file order: the ELF header; one `PT_NOTE` program header, then one
//! `PT_LOAD` per guest-physical RAM region (sorted, `p_paddr` = guest-physical
//! address, `p_vaddr` = the kernel's direct map of it, `p_align` 0 as kdump and QEMU
//! write it, so crash reads notes at their 4-byte-aligned places); the notes: one
//! `CORE`/`NT_PRSTATUS` per vCPU (`pr_pid` = vCPU index + 1, the registers as
//! `user_regs_struct`), then one QEMU-style CPU state per vCPU (control registers,
//! segment bases, GDT/IDT: what crash needs to walk page tables and backtrace a
//! running CPU); the guest kernel's own `VMCOREINFO` note when the client named
//! where the kernel keeps it (its `vmcoreinfo_note` symbol) and a valid note is
//! there; zero padding to a page; then each region's bytes. Pages the guest never
//! touched are holes in the memfd: found with `SEEK_DATA`/`SEEK_HOLE` and written as
//! zeros without reading them, so a dump allocates no guest memory.
//!
//! The header types are linux-loader's ELF64 definitions (already brig-vmm's,
//! for loading the kernel). Guest memory is read only through vm-memory's volatile
//! accessors, through one bounce buffer that also feeds SHA-256: the digest covers
//! the whole file as written, and no byte is read twice.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use linux_loader::elf::{Elf64_Ehdr, Elf64_Nhdr, Elf64_Phdr};
use sha2::{Digest, Sha256};
use vm_memory::{
    ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, VolatileSlice,
};

use crate::vcpu::VcpuState;

const ELF_HEADER: u64 = 64;
const PROGRAM_HEADER: u64 = 56;
const PAGE: u64 = 4096;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_RWX: u32 = 7;
const NT_PRSTATUS: u32 = 1;
/// `struct elf_prstatus` on x86_64 (what gdb and BFD accept).
pub const PRSTATUS_SIZE: usize = 336;
/// `pr_reg` (27 × u64 of `user_regs_struct`) inside it.
const PR_REG: usize = 112;
/// QEMU's `QEMUCPUState`, version 1, with `kernel_gs_base` at its end.
pub const QEMU_CPU_STATE_SIZE: usize = 440;
/// The direct map of a non-KASLR x86_64 kernel, 4- and 5-level paging.
const PAGE_OFFSET_L4: u64 = 0xffff_8880_0000_0000;
const PAGE_OFFSET_L5: u64 = 0xff11_0000_0000_0000;
const CR4_LA57: u64 = 1 << 12;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// Guest memory goes to the file in pieces of this size.
const CHUNK: usize = 1 << 20;
/// The kernel's VMCOREINFO text is at most one page (`VMCOREINFO_BYTES`).
const VMCOREINFO_MAX: u32 = 4096;
const VMCOREINFO_NAME: &[u8] = b"VMCOREINFO\0";

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("cannot write the memory dump")]
    Write(#[source] std::io::Error),
    #[error("cannot read guest memory at {gpa:#x}")]
    Read { gpa: u64, source: vm_memory::GuestMemoryError },
}

/// One paused vCPU, as the notes need it.
#[derive(Debug, Clone)]
pub struct Cpu {
    pub index: u8,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    /// MSR `KERNEL_GS_BASE`.
    pub kernel_gs_base: u64,
}

impl From<&VcpuState> for Cpu {
    fn from(state: &VcpuState) -> Cpu {
        let kernel_gs_base = state.msrs.iter().find(|m| m.index == MSR_KERNEL_GS_BASE).map_or(0, |m| m.data);
        Cpu { index: state.index, regs: state.regs, sregs: state.sregs, kernel_gs_base }
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dumped {
    pub bytes: u64,
    /// SHA-256 of the whole file, as written.
    pub sha256: [u8; 32],
}

/// Writes the core of `memory` (its RAM `regions`, `(gpa, len)` sorted), the
/// paused `vcpus` and the guest kernel's `vmcoreinfo` text into `out`, sequentially.
pub fn write(
    out: &mut impl Write,
    memory: &GuestMemoryMmap,
    regions: &[(u64, u64)],
    vcpus: &[Cpu],
    vmcoreinfo: Option<&[u8]>,
) -> Result<Dumped, DumpError> {
    let head = header_block(regions, vcpus, vmcoreinfo);
    let mut sink = HashingSink { out, sha: Sha256::new(), bytes: 0, buf: vec![0; CHUNK], zeros: vec![0; CHUNK] };
    sink.emit(&head).map_err(DumpError::Write)?;
    for &(gpa, len) in regions {
        let backing = memory.find_region(GuestAddress(gpa)).and_then(|region| {
            let file = region.file_offset()?;
            Some((file.file().as_fd(), file.start() + (gpa - region.start_addr().0)))
        });
        let mut done = 0;
        while done < len {
            // The next stretch the memfd holds pages for; before it, a hole reads as zeros.
            let (data, data_end) = match backing {
                Some((fd, base)) => {
                    next_data(fd, base + done, base + len).map_or((done, len), |(d, h)| (d - base, h - base))
                }
                None => (done, len),
            };
            sink.zeros(data - done).map_err(DumpError::Write)?;
            done = data;
            while done < data_end {
                let n = (data_end - done).min(CHUNK as u64) as usize;
                let at = GuestAddress(gpa + done);
                let slice = memory.get_slice(at, n).map_err(|source| DumpError::Read { gpa: at.0, source })?;
                sink.copy_from(&slice).map_err(DumpError::Write)?;
                done += n as u64;
            }
        }
    }
    sink.out.flush().map_err(DumpError::Write)?;
    Ok(Dumped { bytes: sink.bytes, sha256: sink.sha.finalize().into() })
}

/// `[data, hole)` of the memfd from `from` on, clamped to `end`: `(end, end)` when
/// only holes are left. `None` when the file cannot say (then everything is read).
fn next_data(fd: BorrowedFd<'_>, from: u64, end: u64) -> Option<(u64, u64)> {
    let offset = i64::try_from(from).ok()?;
    let data = match nix::unistd::lseek(fd, offset, nix::unistd::Whence::SeekData) {
        Ok(data) => (data as u64).min(end),
        Err(nix::errno::Errno::ENXIO) => return Some((end, end)),
        Err(_) => return None,
    };
    let hole = nix::unistd::lseek(fd, data as i64, nix::unistd::Whence::SeekHole).ok()?;
    Some((data, (hole as u64).min(end)))
}

struct HashingSink<'a, W: Write> {
    out: &'a mut W,
    sha: Sha256,
    bytes: u64,
    buf: Vec<u8>,
    zeros: Vec<u8>,
}

impl<W: Write> HashingSink<'_, W> {
    fn emit(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.sha.update(bytes);
        self.out.write_all(bytes)?;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// `len` zero bytes: a hole in guest memory, written without touching it.
    fn zeros(&mut self, mut len: u64) -> std::io::Result<()> {
        let zeros = std::mem::take(&mut self.zeros);
        let mut result = Ok(());
        while len > 0 && result.is_ok() {
            let n = len.min(zeros.len() as u64) as usize;
            result = self.emit(&zeros[..n]);
            len -= n as u64;
        }
        self.zeros = zeros;
        result
    }

    /// Guest bytes through the bounce buffer (a volatile copy, never a slice of guest memory).
    fn copy_from(&mut self, slice: &VolatileSlice<'_, ()>) -> std::io::Result<()> {
        let n = slice.copy_to(&mut self.buf[..slice.len()]);
        let chunk = std::mem::take(&mut self.buf);
        let result = self.emit(&chunk[..n]);
        self.buf = chunk;
        result
    }
}

/// Where the data of each region starts, after the headers and notes.
fn data_offset(regions: &[(u64, u64)], notes: usize) -> u64 {
    let notes_end = ELF_HEADER + PROGRAM_HEADER * (1 + regions.len() as u64) + notes as u64;
    notes_end.div_ceil(PAGE) * PAGE
}

/// The guest kernel's VMCOREINFO text, found by following its `vmcoreinfo_note`
/// pointer (the variable at guest-physical `symbol`, from the kernel's symbol
/// table) into the direct map. The note is the guest's: every length is bounded
/// and the text must look like one (`OSRELEASE=` first, printable lines), or it is
/// left out with the reason. It only ever goes into the file, for an analyst.
pub fn find_vmcoreinfo(memory: &GuestMemoryMmap, symbol: u64, vcpus: &[Cpu]) -> Result<Vec<u8>, String> {
    let mut pointer = [0u8; 8];
    memory
        .read_slice(&mut pointer, GuestAddress(symbol))
        .map_err(|_| format!("the vmcoreinfo_note variable at {symbol:#x} is outside guest RAM"))?;
    let pointer = u64::from_le_bytes(pointer);
    let gpa = pointer
        .checked_sub(page_offset(vcpus))
        .ok_or_else(|| format!("vmcoreinfo_note is {pointer:#x}, not an address in the kernel's direct map"))?;
    let mut header = [0u8; 24];
    memory
        .read_slice(&mut header, GuestAddress(gpa))
        .map_err(|_| format!("vmcoreinfo_note points outside guest RAM ({gpa:#x})"))?;
    let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let (namesz, descsz, kind) = (word(0), word(4), word(8));
    if namesz != VMCOREINFO_NAME.len() as u32 || kind != 0 || &header[12..12 + VMCOREINFO_NAME.len()] != VMCOREINFO_NAME
    {
        return Err(format!("no VMCOREINFO note header at {gpa:#x}"));
    }
    if descsz == 0 || descsz > VMCOREINFO_MAX {
        return Err(format!("the VMCOREINFO note claims {descsz} bytes (at most {VMCOREINFO_MAX})"));
    }
    let mut text = vec![0u8; descsz as usize];
    memory
        .read_slice(&mut text, GuestAddress(gpa + header.len() as u64))
        .map_err(|_| format!("the VMCOREINFO text at {gpa:#x} runs outside guest RAM"))?;
    let printable = text.iter().all(|&b| b == b'\n' || (b' '..=b'~').contains(&b));
    if !text.starts_with(b"OSRELEASE=") || !printable {
        return Err("the VMCOREINFO text does not start with OSRELEASE= or is not printable text".into());
    }
    Ok(text)
}

/// The base of the guest kernel's direct map (no KASLR), from vCPU 0's paging mode.
fn page_offset(vcpus: &[Cpu]) -> u64 {
    match vcpus.first() {
        Some(vcpu) if vcpu.sregs.cr4 & CR4_LA57 != 0 => PAGE_OFFSET_L5,
        _ => PAGE_OFFSET_L4,
    }
}

/// The ELF header, program headers and notes, padded to where RAM starts.
pub fn header_block(regions: &[(u64, u64)], vcpus: &[Cpu], vmcoreinfo: Option<&[u8]>) -> Vec<u8> {
    let mut notes = Vec::new();
    for vcpu in vcpus {
        note(&mut notes, b"CORE\0", NT_PRSTATUS, &prstatus(vcpu.index, &vcpu.regs, &vcpu.sregs));
    }
    for vcpu in vcpus {
        note(&mut notes, b"QEMU\0", 0, &qemu_cpu_state(&vcpu.regs, &vcpu.sregs, vcpu.kernel_gs_base));
    }
    if let Some(text) = vmcoreinfo {
        note(&mut notes, VMCOREINFO_NAME, 0, text);
    }
    let phnum = 1 + regions.len() as u64;
    let notes_at = ELF_HEADER + PROGRAM_HEADER * phnum;
    let data_at = data_offset(regions, notes.len());
    let mut ident = [0u8; 16];
    ident[..4].copy_from_slice(b"\x7fELF");
    ident[4] = 2; // ELFCLASS64
    ident[5] = 1; // ELFDATA2LSB
    ident[6] = 1; // EV_CURRENT
    let ehdr = Elf64_Ehdr {
        e_ident: ident,
        e_type: 4,     // ET_CORE
        e_machine: 62, // EM_X86_64
        e_version: 1,
        e_phoff: ELF_HEADER,
        e_ehsize: ELF_HEADER as u16,
        e_phentsize: PROGRAM_HEADER as u16,
        e_phnum: phnum as u16,
        ..Elf64_Ehdr::default()
    };
    let mut head = ehdr.as_slice().to_vec();
    let note_header = Elf64_Phdr {
        p_type: PT_NOTE,
        p_offset: notes_at,
        p_filesz: notes.len() as u64,
        p_memsz: notes.len() as u64,
        ..Elf64_Phdr::default()
    };
    head.extend_from_slice(note_header.as_slice());
    let page_offset = page_offset(vcpus);
    let mut offset = data_at;
    for &(gpa, len) in regions {
        let load = Elf64_Phdr {
            p_type: PT_LOAD,
            p_flags: PF_RWX,
            p_offset: offset,
            p_vaddr: page_offset.wrapping_add(gpa),
            p_paddr: gpa,
            p_filesz: len,
            p_memsz: len,
            p_align: 0,
        };
        head.extend_from_slice(load.as_slice());
        offset += len;
    }
    head.extend_from_slice(&notes);
    head.resize(data_at as usize, 0);
    head
}

/// One note: header, name and descriptor, each padded to 4 bytes.
fn note(out: &mut Vec<u8>, name: &[u8], kind: u32, desc: &[u8]) {
    let header = Elf64_Nhdr { n_namesz: name.len() as u32, n_descsz: desc.len() as u32, n_type: kind };
    out.extend_from_slice(header.as_slice());
    for part in [name, desc] {
        out.extend_from_slice(part);
        out.resize(out.len().div_ceil(4) * 4, 0);
    }
}

fn put(buf: &mut [u8], at: usize, value: u64) {
    buf[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// `struct elf_prstatus` of vCPU `index`: `pr_pid` = index + 1 (gdb's thread ids),
/// the registers in `user_regs_struct` order.
pub fn prstatus(index: u8, regs: &kvm_regs, sregs: &kvm_sregs) -> [u8; PRSTATUS_SIZE] {
    let mut buf = [0u8; PRSTATUS_SIZE];
    buf[32..36].copy_from_slice(&(i32::from(index) + 1).to_le_bytes());
    let user_regs = [
        regs.r15,
        regs.r14,
        regs.r13,
        regs.r12,
        regs.rbp,
        regs.rbx,
        regs.r11,
        regs.r10,
        regs.r9,
        regs.r8,
        regs.rax,
        regs.rcx,
        regs.rdx,
        regs.rsi,
        regs.rdi,
        u64::MAX, // orig_rax: not in a system call
        regs.rip,
        u64::from(sregs.cs.selector),
        regs.rflags,
        regs.rsp,
        u64::from(sregs.ss.selector),
        sregs.fs.base,
        sregs.gs.base,
        u64::from(sregs.ds.selector),
        u64::from(sregs.es.selector),
        u64::from(sregs.fs.selector),
        u64::from(sregs.gs.selector),
    ];
    for (i, value) in user_regs.into_iter().enumerate() {
        put(&mut buf, PR_REG + 8 * i, value);
    }
    buf
}

/// QEMU's CPU state note (version 1): general registers, segments, GDT/IDT and
/// control registers, then `kernel_gs_base`.
pub fn qemu_cpu_state(regs: &kvm_regs, sregs: &kvm_sregs, kernel_gs_base: u64) -> [u8; QEMU_CPU_STATE_SIZE] {
    let mut buf = [0u8; QEMU_CPU_STATE_SIZE];
    buf[0..4].copy_from_slice(&1u32.to_le_bytes());
    buf[4..8].copy_from_slice(&(QEMU_CPU_STATE_SIZE as u32).to_le_bytes());
    let general = [
        regs.rax,
        regs.rbx,
        regs.rcx,
        regs.rdx,
        regs.rsi,
        regs.rdi,
        regs.rsp,
        regs.rbp,
        regs.r8,
        regs.r9,
        regs.r10,
        regs.r11,
        regs.r12,
        regs.r13,
        regs.r14,
        regs.r15,
        regs.rip,
        regs.rflags,
    ];
    for (i, value) in general.into_iter().enumerate() {
        put(&mut buf, 8 + 8 * i, value);
    }
    let segments = [&sregs.cs, &sregs.ds, &sregs.es, &sregs.fs, &sregs.gs, &sregs.ss, &sregs.ldt, &sregs.tr];
    for (i, segment) in segments.into_iter().enumerate() {
        let at = 152 + 24 * i;
        buf[at..at + 4].copy_from_slice(&u32::from(segment.selector).to_le_bytes());
        buf[at + 4..at + 8].copy_from_slice(&segment.limit.to_le_bytes());
        buf[at + 8..at + 12].copy_from_slice(&segment_flags(segment).to_le_bytes());
        put(&mut buf, at + 16, segment.base);
    }
    for (at, table) in [(344, &sregs.gdt), (368, &sregs.idt)] {
        buf[at + 4..at + 8].copy_from_slice(&u32::from(table.limit).to_le_bytes());
        put(&mut buf, at + 16, table.base);
    }
    for (i, cr) in [sregs.cr0, 0, sregs.cr2, sregs.cr3, sregs.cr4].into_iter().enumerate() {
        put(&mut buf, 392 + 8 * i, cr);
    }
    put(&mut buf, 432, kernel_gs_base);
    buf
}

/// The high dword of an x86 segment descriptor, from KVM's unpacked segment.
fn segment_flags(s: &kvm_segment) -> u32 {
    let present = s.present != 0 && s.unusable == 0;
    (u32::from(s.type_) << 8)
        | (u32::from(s.s) << 12)
        | (u32::from(s.dpl) << 13)
        | (u32::from(present) << 15)
        | (u32::from(s.avl) << 20)
        | (u32::from(s.l) << 21)
        | (u32::from(s.db) << 22)
        | (u32::from(s.g) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn u64_at(buf: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
    }

    fn u32_at(buf: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
    }

    fn vcpu(index: u8) -> Cpu {
        let regs = kvm_regs {
            rip: 0xffff_ffff_8100_0000 + u64::from(index),
            rsp: 0xffff_c900_0000_1000,
            rax: 7,
            ..Default::default()
        };
        let mut sregs = kvm_sregs { cr3: 0x10_0000, cr4: 0x20, ..Default::default() };
        sregs.cs = kvm_segment { selector: 0x10, type_: 0xb, s: 1, present: 1, l: 1, ..Default::default() };
        sregs.gs.base = 0xffff_8880_0fc0_0000;
        sregs.idt.base = 0xffff_ffff_ff57_8000;
        sregs.idt.limit = 0xfff;
        Cpu { index, regs, sregs, kernel_gs_base: 0x1234 }
    }

    #[test]
    fn registers_sit_where_gdb_and_crash_read_them() {
        let v = vcpu(1);
        let pr = prstatus(v.index, &v.regs, &v.sregs);
        assert_eq!(u32_at(&pr, 32), 2, "pr_pid = vCPU index + 1");
        assert_eq!(u64_at(&pr, 112 + 8 * 16), v.regs.rip, "rip");
        assert_eq!(u64_at(&pr, 112 + 8 * 19), v.regs.rsp, "rsp");
        assert_eq!(u64_at(&pr, 112 + 8 * 10), 7, "rax");
        assert_eq!(u64_at(&pr, 112 + 8 * 17), 0x10, "cs");
        assert_eq!(u64_at(&pr, 112 + 8 * 22), v.sregs.gs.base, "gs_base");
        let q = qemu_cpu_state(&v.regs, &v.sregs, 0x1234);
        assert_eq!((u32_at(&q, 0), u32_at(&q, 4)), (1, 440));
        assert_eq!(u64_at(&q, 136), v.regs.rip);
        assert_eq!(u64_at(&q, 416), 0x10_0000, "cr3");
        assert_eq!(u64_at(&q, 424), 0x20, "cr4");
        assert_eq!(u64_at(&q, 368 + 16), v.sregs.idt.base, "idt base");
        assert_eq!(u32_at(&q, 368 + 4), 0xfff, "idt limit");
        assert_eq!(u64_at(&q, 432), 0x1234, "kernel_gs_base");
        // cs: type 0xb, S, present, L.
        assert_eq!(u32_at(&q, 152 + 8), (0xb << 8) | (1 << 12) | (1 << 15) | (1 << 21));
    }

    #[test]
    fn the_file_is_headers_notes_then_ram_and_hashed_as_written() {
        let regions = [(0u64, 2 * PAGE), (0x1_0000_0000, PAGE)];
        let memory = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 2 * PAGE as usize),
            (GuestAddress(0x1_0000_0000), PAGE as usize),
        ])
        .expect("memory");
        memory.write_slice(b"brig-marker-0123", GuestAddress(PAGE + 16)).expect("marker");
        memory.write_slice(b"high", GuestAddress(0x1_0000_0000)).expect("high");
        let vcpus = [vcpu(0), vcpu(1)];
        let mut file = Vec::new();
        let dumped = write(&mut file, &memory, &regions, &vcpus, None).expect("dump");
        assert_eq!(dumped.bytes, file.len() as u64);
        assert_eq!(dumped.sha256, <[u8; 32]>::from(Sha256::digest(&file)), "the digest is the file's");
        assert_eq!(&file[..4], b"\x7fELF");
        assert_eq!(u16::from_le_bytes([file[16], file[17]]), 4, "ET_CORE");
        assert_eq!(u16::from_le_bytes([file[18], file[19]]), 62, "EM_X86_64");
        assert_eq!(u16::from_le_bytes([file[56], file[57]]), 3, "PT_NOTE + 2 PT_LOAD");
        let phdr = |i: usize| &file[64 + 56 * i..64 + 56 * (i + 1)];
        assert_eq!(u32_at(phdr(0), 0), PT_NOTE, "the note comes first");
        let notes_len = u64_at(phdr(0), 32) as usize;
        assert_eq!(notes_len, 2 * 356 + 2 * 460, "2 × NT_PRSTATUS + 2 × QEMU");
        let data = data_offset(&regions, notes_len);
        assert_eq!(data % PAGE, 0);
        for (i, &(gpa, len)) in regions.iter().enumerate() {
            let p = phdr(1 + i);
            assert_eq!(u32_at(p, 0), PT_LOAD);
            assert_eq!((u64_at(p, 24), u64_at(p, 32), u64_at(p, 40), u64_at(p, 48)), (gpa, len, len, 0));
            assert_eq!(u64_at(p, 16), PAGE_OFFSET_L4 + gpa, "p_vaddr: the direct map");
        }
        let at = |gpa_offset: u64| (data + gpa_offset) as usize;
        assert_eq!(&file[at(PAGE + 16)..at(PAGE + 32)], b"brig-marker-0123", "RAM at its p_offset");
        assert_eq!(&file[at(2 * PAGE)..at(2 * PAGE) + 4], b"high", "the second region follows the first");
        assert_eq!(file.len() as u64, data + 3 * PAGE);
        let first_note = &file[64 + 56 * 3..];
        assert_eq!((u32_at(first_note, 0), u32_at(first_note, 4), u32_at(first_note, 8)), (5, 336, 1));
        assert_eq!(&first_note[12..17], b"CORE\0");
    }

    /// Guest RAM holding a kernel's `vmcoreinfo_note` variable at 0x1000, pointing
    /// (through the direct map) at a note at 0x3000 with `text`.
    fn kernel_with_note(namesz: u32, descsz: u32, text: &[u8]) -> GuestMemoryMmap {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 * PAGE as usize)]).expect("memory");
        memory.write_slice(&(PAGE_OFFSET_L4 + 3 * PAGE).to_le_bytes(), GuestAddress(PAGE)).expect("pointer");
        let mut note = Vec::new();
        for word in [namesz, descsz, 0] {
            note.extend_from_slice(&word.to_le_bytes());
        }
        note.extend_from_slice(b"VMCOREINFO\0\0");
        note.extend_from_slice(text);
        memory.write_slice(&note, GuestAddress(3 * PAGE)).expect("note");
        memory
    }

    #[test]
    fn vmcoreinfo_is_the_kernels_note_copied_and_checked() {
        let text = b"OSRELEASE=6.1.0\nPAGESIZE=4096\nSYMBOL(_stext)=ffffffff81000000\n";
        let vcpus = [vcpu(0)];
        let memory = kernel_with_note(11, text.len() as u32, text);
        let found = find_vmcoreinfo(&memory, PAGE, &vcpus).expect("found");
        assert_eq!(found, text);

        let mut file = Vec::new();
        let regions = [(0u64, 4 * PAGE)];
        write(&mut file, &memory, &regions, &vcpus, Some(&found)).expect("dump");
        let notes = &file[64 + 56 * 2..];
        let last = &notes[356 + 460..];
        assert_eq!((u32_at(last, 0), u32_at(last, 4), u32_at(last, 8)), (11, text.len() as u32, 0));
        assert_eq!(&last[12..23], b"VMCOREINFO\0");
        assert_eq!(&last[24..24 + text.len()], text, "after the CPU notes, verbatim");
        let notes_len = u64_at(&file[64..], 32) as usize;
        assert_eq!(notes_len, 356 + 460 + 24 + text.len().div_ceil(4) * 4);
    }

    #[test]
    fn a_missing_or_forged_vmcoreinfo_is_left_out_with_the_reason() {
        let text = b"OSRELEASE=6.1.0\n";
        let vcpus = [vcpu(0)];
        let good = kernel_with_note(11, text.len() as u32, text);
        let outside = find_vmcoreinfo(&good, 64 * PAGE, &vcpus).expect_err("symbol outside RAM");
        assert!(outside.contains("outside guest RAM"), "{outside}");
        let not_direct = find_vmcoreinfo(&good, 0, &vcpus).expect_err("a null pointer");
        assert!(not_direct.contains("direct map"), "{not_direct}");
        let cases: [(u32, u32, &[u8], &str); 4] = [
            (12, text.len() as u32, text, "no VMCOREINFO note header"),
            (11, 8192, text, "at most 4096"),
            (11, 9, b"PAGESIZE=", "OSRELEASE="),
            (11, text.len() as u32, b"OSRELEASE=\x1b[2J\n", "printable"),
        ];
        for (namesz, descsz, body, want) in cases {
            let memory = kernel_with_note(namesz, descsz, body);
            let err = find_vmcoreinfo(&memory, PAGE, &vcpus).expect_err(want);
            assert!(err.contains(want), "{want}: {err}");
        }
        // A claimed length that runs past the end of RAM.
        let memory = kernel_with_note(11, 4096, b"OSRELEASE=x");
        memory.write_slice(&(PAGE_OFFSET_L4 + 3 * PAGE + 2048).to_le_bytes(), GuestAddress(PAGE)).expect("pointer");
        assert!(find_vmcoreinfo(&memory, PAGE, &vcpus).is_err());
    }

    #[test]
    fn holes_in_the_memfd_are_written_as_zeros_without_being_allocated() {
        use std::os::unix::fs::MetadataExt;
        let bytes = 64 * PAGE;
        let ram = crate::memory::create_in(bytes, None, false).expect("memfd guest RAM");
        let plain = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), bytes as usize)]).expect("anonymous memory");
        for (gpa, text) in [(3 * PAGE + 5, &b"first"[..]), (40 * PAGE, b"second"), (bytes - 4, b"last")] {
            ram.memory.write_slice(text, GuestAddress(gpa)).expect("write");
            plain.write_slice(text, GuestAddress(gpa)).expect("write");
        }
        let allocated = ram.file.metadata().expect("stat").blocks();
        let regions = [(0u64, bytes)];
        let vcpus = [vcpu(0)];
        let (mut sparse, mut full) = (Vec::new(), Vec::new());
        let skipped = write(&mut sparse, &ram.memory, &regions, &vcpus, None).expect("dump the memfd");
        let read = write(&mut full, &plain, &regions, &vcpus, None).expect("dump anonymous memory");
        assert_eq!(sparse, full, "the same file, holes as zeros");
        assert_eq!(skipped, read);
        assert_eq!(ram.file.metadata().expect("stat").blocks(), allocated, "no page was allocated by the dump");
    }
}
