//! vCPU threads and their run loop.
//!
//! Each vCPU runs on its own thread as a small state machine:
//!
//! ```text
//!   Running ──(Pause request + kick)──► Paused ──(Resume)──► Running
//!      │                                  │ (SaveState: answer, stay Paused)
//!      └────────────(Exit request or a fatal exit)─────────► Exited
//! ```
//!
//! Requests arrive on a channel; a *kick* (a real-time signal) makes a thread in
//! `KVM_RUN` return with `EINTR` so it looks at the channel. The signal handler only
//! sets `immediate_exit` in this thread's `kvm_run`, which also covers a kick that
//! lands just before the thread enters `KVM_RUN`.
//!
//! `unsafe` here: the signal handler's write to `kvm_run` through a thread-local
//! pointer. Invariant: the pointer is set by the owning thread while its `VcpuFd`
//! (and so the `kvm_run` mapping) is alive, and cleared before the fd is dropped;
//! only that thread's handler ever reads it.

mod state;

use std::cell::Cell;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_bindings::{
    kvm_run, kvm_xcrs, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

pub use self::state::VcpuState;
use crate::arch::x86_64::cpu;
use crate::devices::bus::Bus;
use crate::events::{EventSender, VmEvent};
use crate::guest_warn;
use crate::metrics::METRICS;
use crate::seccomp::{Seccomp, SeccompError, ThreadKind};

/// A vCPU thread's stack. Less than 2 MiB, so that where the host's THP setting is
/// `always` the stack is never given a 2 MiB page of its own (std's default of
/// exactly 2 MiB, placed by the kernel next to guest RAM's 2 MiB-aligned mapping, was:
/// 2 MiB of brig-vmm's own RSS for a few KiB of stack; ADR 014).
const VCPU_STACK: usize = 1 << 20;

/// The signal that kicks a vCPU out of `KVM_RUN`.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot configure vCPU {index}: {what} failed")]
    Configure { index: u8, what: &'static str, source: kvm_ioctls::Error },
    #[error("vCPU {index} accepted only {set} of {want} boot MSRs")]
    Msrs { index: u8, set: usize, want: usize },
    #[error("cannot build the MSR list")]
    MsrList,
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
    #[error("cannot start the thread for vCPU {0}")]
    Spawn(u8, #[source] std::io::Error),
    #[error("cannot confine vCPU {0}'s thread")]
    Confine(u8, #[source] SeccompError),
    #[error("vCPU {0}'s thread ended before it could run")]
    Vanished(u8),
}

thread_local! {
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN.with(|ptr| {
        let run = ptr.get();
        if !run.is_null() {
            // SAFETY: see the module invariant: `run` points at this thread's live kvm_run.
            unsafe { std::ptr::write_volatile(&raw mut (*run).immediate_exit, 1) };
        }
    });
}

/// Installs the kick handler (once per process, before any vCPU starts).
pub fn install_kick_handler() -> Result<(), VcpuError> {
    register_signal_handler(kick_signal(), on_kick).map_err(VcpuError::Signal)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Pause,
    Resume,
    SaveState,
    Exit,
}

#[derive(Debug)]
pub enum Response {
    Paused(u8),
    Resumed(u8),
    State(u8, Box<Result<VcpuState, String>>),
    Exited(u8),
}

/// A configured vCPU, before its thread starts.
#[derive(Debug)]
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
}

impl Vcpu {
    pub fn new(index: u8, fd: VcpuFd) -> Vcpu {
        Vcpu { index, fd }
    }

    /// Sets CPUID, MSRs, registers, FPU and LAPIC for a 64-bit Linux entry at `entry`.
    pub fn configure(&self, kvm: &Kvm, count: u8, entry: u64) -> Result<(), VcpuError> {
        let index = self.index;
        let fail = |what: &'static str| move |source| VcpuError::Configure { index, what, source };
        let mut cpuid: CpuId =
            kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(fail("KVM_GET_SUPPORTED_CPUID"))?;
        cpu::adjust_cpuid(&mut cpuid, index, count);
        self.fd.set_cpuid2(&cpuid).map_err(fail("KVM_SET_CPUID2"))?;
        if let Some(xcr0) = cpu::supported_xcr0(&cpuid) {
            let mut xcrs = kvm_xcrs { nr_xcrs: 1, ..Default::default() };
            xcrs.xcrs[0].xcr = 0;
            xcrs.xcrs[0].value = xcr0;
            self.fd.set_xcrs(&xcrs).map_err(fail("KVM_SET_XCRS"))?;
        }

        let entries = cpu::boot_msrs();
        let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::MsrList)?;
        let set = self.fd.set_msrs(&msrs).map_err(fail("KVM_SET_MSRS"))?;
        if set != entries.len() {
            return Err(VcpuError::Msrs { index, set, want: entries.len() });
        }
        self.fd.set_regs(&cpu::boot_regs(entry)).map_err(fail("KVM_SET_REGS"))?;
        let sregs = self.fd.get_sregs().map_err(fail("KVM_GET_SREGS"))?;
        self.fd.set_sregs(&cpu::boot_sregs(sregs)).map_err(fail("KVM_SET_SREGS"))?;
        self.fd.set_fpu(&cpu::boot_fpu()).map_err(fail("KVM_SET_FPU"))?;
        let mut lapic = self.fd.get_lapic().map_err(fail("KVM_GET_LAPIC"))?;
        cpu::set_local_interrupts(&mut lapic);
        self.fd.set_lapic(&lapic).map_err(fail("KVM_SET_LAPIC"))?;
        Ok(())
    }

    /// Starts the vCPU's thread, which installs its seccomp filter (unless `seccomp` is
    /// off) before anything else, and returns once it has.
    pub fn start(
        self,
        io_bus: Arc<Bus>,
        mmio_bus: Arc<Bus>,
        events: EventSender,
        responses: Sender<Response>,
        seccomp: Seccomp,
    ) -> Result<VcpuHandle, VcpuError> {
        let index = self.index;
        let (tx, rx) = channel();
        let (confined_tx, confined) = sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .stack_size(VCPU_STACK)
            .spawn(move || {
                // Before the guest runs or reaches a device: from here on, the filter.
                let result = seccomp.confine(ThreadKind::Vcpu);
                let ok = result.is_ok();
                let _ = confined_tx.send(result);
                if ok {
                    let mut run = RunLoop { vcpu: self, io_bus, mmio_bus, events, requests: rx, responses };
                    run.run();
                }
            })
            .map_err(|e| VcpuError::Spawn(index, e))?;
        let mut handle = VcpuHandle { index, requests: tx, thread: Some(thread) };
        match confined.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(e)) => {
                handle.join();
                Err(VcpuError::Confine(index, e))
            }
            Err(_) => {
                handle.join();
                Err(VcpuError::Vanished(index))
            }
        }
    }
}

/// The VMM's side of a running vCPU thread.
#[derive(Debug)]
pub struct VcpuHandle {
    pub index: u8,
    requests: Sender<Request>,
    thread: Option<JoinHandle<()>>,
}

impl VcpuHandle {
    /// Sends `request` and kicks the thread so it sees it.
    pub fn send(&self, request: Request) {
        if self.requests.send(request).is_err() {
            return; // the thread has exited
        }
        self.kick();
    }

    pub fn kick(&self) {
        if let Some(thread) = &self.thread {
            // A thread that already finished cannot be signalled; nothing to do then.
            let _ = thread.kill(kick_signal());
        }
    }

    pub fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

enum Flow {
    Continue,
    Stop,
    /// The vCPU cannot go on (the reason); the run loop adds its registers and reports it.
    Failed(String),
}

struct RunLoop {
    vcpu: Vcpu,
    io_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
    events: EventSender,
    requests: Receiver<Request>,
    responses: Sender<Response>,
}

impl RunLoop {
    fn run(&mut self) {
        KVM_RUN.with(|ptr| ptr.set(self.vcpu.fd.get_kvm_run() as *mut kvm_run));
        loop {
            let flow = match self.vcpu.fd.run() {
                Ok(exit) => handle_exit(self.vcpu.index, exit, &self.io_bus, &self.mmio_bus, &self.events),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.vcpu.fd.set_kvm_immediate_exit(0);
                    self.handle_requests()
                }
                Err(e) => {
                    self.events
                        .send(VmEvent::VcpuFailed { index: self.vcpu.index, reason: format!("KVM_RUN failed: {e}") });
                    Flow::Stop
                }
            };
            match flow {
                Flow::Continue => {}
                Flow::Stop => break,
                Flow::Failed(reason) => {
                    let reason = format!("{reason}; {}", registers(&self.vcpu.fd));
                    self.events.send(VmEvent::VcpuFailed { index: self.vcpu.index, reason });
                    break;
                }
            }
        }
        KVM_RUN.with(|ptr| ptr.set(std::ptr::null_mut()));
        let _ = self.responses.send(Response::Exited(self.vcpu.index));
    }

    /// Serves requests; blocks while paused.
    fn handle_requests(&mut self) -> Flow {
        let index = self.vcpu.index;
        let mut paused = false;
        loop {
            let request = if paused {
                match self.requests.recv() {
                    Ok(r) => r,
                    Err(_) => return Flow::Stop,
                }
            } else {
                match self.requests.try_recv() {
                    Ok(r) => r,
                    Err(std::sync::mpsc::TryRecvError::Empty) => return Flow::Continue,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return Flow::Stop,
                }
            };
            let response = match request {
                Request::Pause => {
                    paused = true;
                    Response::Paused(index)
                }
                Request::Resume => {
                    paused = false;
                    Response::Resumed(index)
                }
                Request::SaveState => {
                    Response::State(index, Box::new(VcpuState::save(index, &self.vcpu.fd).map_err(|e| e.to_string())))
                }
                Request::Exit => return Flow::Stop,
            };
            let _ = self.responses.send(response);
        }
    }
}

/// The registers that say where a failed vCPU was, for its error report.
fn registers(fd: &VcpuFd) -> String {
    match (fd.get_regs(), fd.get_sregs()) {
        (Ok(r), Ok(s)) => format!(
            "rip {:#x} rsp {:#x} rflags {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} cs {:#x} idt {:#x}/{:#x}",
            r.rip, r.rsp, r.rflags, s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector, s.idt.base, s.idt.limit
        ),
        (Err(e), _) | (_, Err(e)) => format!("registers unavailable: {e}"),
    }
}

fn handle_exit(index: u8, exit: VcpuExit<'_>, io_bus: &Bus, mmio_bus: &Bus, events: &EventSender) -> Flow {
    match exit {
        VcpuExit::IoIn(port, data) => {
            METRICS.vcpu_exits_io.inc();
            io_bus.read(u64::from(port), data);
        }
        VcpuExit::IoOut(port, data) => {
            METRICS.vcpu_exits_io.inc();
            io_bus.write(u64::from(port), data);
        }
        VcpuExit::MmioRead(addr, data) => {
            METRICS.vcpu_exits_mmio.inc();
            mmio_bus.read(addr, data);
        }
        VcpuExit::MmioWrite(addr, data) => {
            METRICS.vcpu_exits_mmio.inc();
            mmio_bus.write(addr, data);
        }
        VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr => METRICS.vcpu_exits_other.inc(),
        VcpuExit::SystemEvent(kind, _) => {
            METRICS.vcpu_exits_other.inc();
            match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => events.send(VmEvent::PowerOff),
                KVM_SYSTEM_EVENT_RESET => events.send(VmEvent::Reset),
                other => guest_warn!("vCPU {index}: ignoring system event {other}"),
            }
        }
        VcpuExit::Shutdown => return Flow::Failed("triple fault (KVM_EXIT_SHUTDOWN)".into()),
        VcpuExit::FailEntry(reason, cpu) => {
            return Flow::Failed(format!("VM entry failed (hardware reason {reason:#x}, cpu {cpu})"));
        }
        VcpuExit::InternalError => return Flow::Failed("KVM internal error".into()),
        other => {
            METRICS.vcpu_exits_other.inc();
            guest_warn!("vCPU {index}: unexpected exit {other:?}");
        }
    }
    Flow::Continue
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_main_threads_filter_lets_it_kick() {
        assert_eq!(super::kick_signal(), brig_policy::seccomp::kick_signal());
    }
}
