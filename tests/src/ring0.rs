//! A hand-assembled 64-bit guest that proves a KVM can run ring-0 code.
//!
//! The guest starts in long mode (identity-mapped first GiB, 2 MiB pages), reads a
//! seed with an MMIO read, adds `ITERATIONS..=1` to it in a three-instruction loop
//! (10⁸ instructions in all), then reports the sum with an 8-byte MMIO write and its
//! low 32 bits with a port write, and halts. Used by the harness test and by the
//! `ring0_loop` benchmark.
//!
//! `unsafe` here: registering guest memory with KVM (`set_user_memory_region`).
//! Invariant: the registered host range is the mapping owned by `GuestMemoryMmap`,
//! which outlives the VM (both live in [`Ring0Guest`], memory dropped last).

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kvm_bindings::{kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Loop iterations; three instructions each.
pub const ITERATIONS: u64 = 33_333_334;
/// MMIO address the guest reads its seed from (no memory slot: a KVM MMIO exit).
pub const MMIO_SEED: u64 = 0x1000_0000;
/// MMIO address the guest writes its 64-bit result to.
pub const MMIO_RESULT: u64 = 0x1000_0008;
/// I/O port the guest writes the low 32 bits of its result to.
pub const PIO_RESULT: u16 = 0x3f0;

const MEM_SIZE: usize = 4 << 20;
const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const PD: u64 = 0x3000;
const GDT: u64 = 0x500;
const CODE: u64 = 0x10000;

/// The guest program (`as --64`, Intel syntax), with the loop count patched in at [`COUNT_OFFSET`].
///
/// ```text
/// 0x00  48 8b 1c 25 00 00 00 10   mov rbx, [0x10000000]    ; MMIO read: seed
/// 0x08  48 c7 c1 56 a0 fc 01      mov rcx, ITERATIONS
/// 0x0f  48 89 d8                  mov rax, rbx
/// 0x12  48 01 c8                  add rax, rcx              ; loop:
/// 0x15  48 ff c9                  dec rcx
/// 0x18  75 f8                     jnz loop
/// 0x1a  48 89 04 25 08 00 00 10   mov [0x10000008], rax     ; MMIO write: result
/// 0x22  66 ba f0 03               mov dx, 0x3f0
/// 0x26  ef                        out dx, eax               ; port I/O: low 32 bits
/// 0x27  f4                        hlt
/// ```
const PROGRAM: [u8; 40] = [
    0x48, 0x8b, 0x1c, 0x25, 0x00, 0x00, 0x00, 0x10, //
    0x48, 0xc7, 0xc1, 0x00, 0x00, 0x00, 0x00, //
    0x48, 0x89, 0xd8, //
    0x48, 0x01, 0xc8, //
    0x48, 0xff, 0xc9, //
    0x75, 0xf8, //
    0x48, 0x89, 0x04, 0x25, 0x08, 0x00, 0x00, 0x10, //
    0x66, 0xba, 0xf0, 0x03, //
    0xef, //
    0xf4,
];
const COUNT_OFFSET: usize = 0x0b;

/// What the guest reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub mmio_result: u64,
    pub pio_result: u32,
    pub elapsed: Duration,
    /// Exits seen, in order: MMIO read, MMIO write, port write, halt.
    pub exits: usize,
}

/// The expected result for a seed.
pub fn expected(seed: u64) -> u64 {
    seed.wrapping_add(ITERATIONS * (ITERATIONS + 1) / 2)
}

/// One VM with one vCPU, ready to run the program.
#[derive(Debug)]
pub struct Ring0Guest {
    vcpu: VcpuFd,
    _vm: VmFd,
    _memory: GuestMemoryMmap,
}

impl Ring0Guest {
    pub fn new(kvm: &Kvm) -> Result<Self> {
        let vm = kvm.create_vm().context("KVM_CREATE_VM")?;
        let memory =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).context("allocating guest memory")?;
        let host = memory.get_host_address(GuestAddress(0)).context("guest memory mapping")?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: host as u64,
        };
        // SAFETY: `host` is the start of a MEM_SIZE mapping owned by `memory`, which is
        // stored in the returned `Ring0Guest` next to the VM and dropped after it.
        unsafe { vm.set_user_memory_region(region) }.context("KVM_SET_USER_MEMORY_REGION")?;

        write_page_tables(&memory)?;
        let mut program = PROGRAM;
        let count = u32::try_from(ITERATIONS).context("iterations fit the imm32")?;
        program[COUNT_OFFSET..COUNT_OFFSET + 4].copy_from_slice(&count.to_le_bytes());
        memory.write_slice(&program, GuestAddress(CODE))?;

        let vcpu = vm.create_vcpu(0).context("KVM_CREATE_VCPU")?;
        enter_long_mode(&vcpu)?;
        Ok(Ring0Guest { vcpu, _vm: vm, _memory: memory })
    }

    /// Runs the guest to its `hlt`, answering its MMIO read with `seed`.
    pub fn run(mut self, seed: u64) -> Result<Report> {
        let start = Instant::now();
        let (mut mmio_result, mut pio_result, mut exits) = (None, None, 0);
        loop {
            let exit = self.vcpu.run().context("KVM_RUN")?;
            exits += 1;
            match exit {
                VcpuExit::MmioRead(MMIO_SEED, data) if data.len() == 8 => data.copy_from_slice(&seed.to_le_bytes()),
                VcpuExit::MmioWrite(MMIO_RESULT, data) if data.len() == 8 => {
                    let bytes: [u8; 8] = data.try_into().context("8-byte MMIO write")?;
                    mmio_result = Some(u64::from_le_bytes(bytes));
                }
                VcpuExit::IoOut(PIO_RESULT, data) if data.len() == 4 => {
                    let bytes: [u8; 4] = data.try_into().context("4-byte port write")?;
                    pio_result = Some(u32::from_le_bytes(bytes));
                }
                VcpuExit::Hlt => break,
                other => bail!("unexpected vCPU exit {other:?} after {exits} exits"),
            }
        }
        let elapsed = start.elapsed();
        Ok(Report {
            mmio_result: mmio_result.context("the guest halted without its MMIO write")?,
            pio_result: pio_result.context("the guest halted without its port write")?,
            elapsed,
            exits,
        })
    }
}

/// Identity-maps the first GiB with 2 MiB pages.
fn write_page_tables(memory: &GuestMemoryMmap) -> Result<()> {
    const PRESENT_RW: u64 = 0b11;
    const HUGE: u64 = 1 << 7;
    memory.write_obj(PDPT | PRESENT_RW, GuestAddress(PML4))?;
    memory.write_obj(PD | PRESENT_RW, GuestAddress(PDPT))?;
    for i in 0..512u64 {
        memory.write_obj((i << 21) | PRESENT_RW | HUGE, GuestAddress(PD + i * 8))?;
    }
    // null, 64-bit code (0x08), data (0x10)
    for (i, descriptor) in [0u64, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff].iter().enumerate() {
        memory.write_obj(*descriptor, GuestAddress(GDT + i as u64 * 8))?;
    }
    Ok(())
}

fn enter_long_mode(vcpu: &VcpuFd) -> Result<()> {
    let mut sregs = vcpu.get_sregs().context("KVM_GET_SREGS")?;
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x08,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        ..Default::default()
    };
    let data = kvm_segment { selector: 0x10, type_: 0x3, db: 1, l: 0, ..code };
    sregs.cs = code;
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.gdt.base = GDT;
    sregs.gdt.limit = 3 * 8 - 1;
    sregs.cr3 = PML4;
    sregs.cr4 = 1 << 5; // PAE
    sregs.cr0 = (1 << 0) | (1 << 4) | (1 << 31); // PE, ET, PG
    sregs.efer = (1 << 8) | (1 << 10); // LME, LMA
    vcpu.set_sregs(&sregs).context("KVM_SET_SREGS")?;
    let regs = kvm_bindings::kvm_regs { rip: CODE, rflags: 0x2, rsp: 0x8000, ..Default::default() };
    vcpu.set_regs(&regs).context("KVM_SET_REGS")?;
    Ok(())
}

/// Opens `/dev/kvm`, runs the guest once with `seed`, and checks both reports.
pub fn run_checked(seed: u64) -> Result<Report> {
    let kvm = Kvm::new().context("opening /dev/kvm")?;
    let report = Ring0Guest::new(&kvm)?.run(seed)?;
    ensure!(
        report.mmio_result == expected(seed),
        "MMIO result {:#x}, expected {:#x}",
        report.mmio_result,
        expected(seed)
    );
    ensure!(report.pio_result == expected(seed) as u32, "port result {:#x}", report.pio_result);
    Ok(report)
}
