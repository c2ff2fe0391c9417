//! brig-vmm's per-thread seccomp filters (docs/seccomp.md).
//!
//! brig-vmm runs two kinds of threads ([`ThreadKind`]). The main thread builds the VM,
//! starts the vCPU threads, then runs the event loop: virtio devices (block, net, rng, the
//! hybrid vsock's host sockets), VM events, termination signals, and the control
//! socket, which is served on this same thread (sandbox-vmm/src/vmm.rs). Each vCPU
//! thread runs `KVM_RUN` and the port-I/O and MMIO exits it returns: the serial
//! console, the i8042 reset line and the virtio-mmio registers, whose writes activate
//! and reset devices.
//!
//! Every thread installs its own filter once setup is over, so only what it does from
//! then on is allowed: a vCPU thread first thing, before the guest runs or reaches a
//! device; the main thread after the last vCPU thread is spawned, right before the
//! event loop (its filter has no `clone`, so no thread can start after it).
//!
//! The filters are data: [`allowed_syscalls`] lists every allowed call with why
//! brig-vmm makes it and what its arguments may be, and [`filter`] compiles exactly
//! that list. docs/seccomp.md's tables are rendered from it (a test compares them) and
//! the tests check every rule in both directions, so code, doc and BPF cannot drift.
//! Any other call makes the kernel raise SIGSYS on the calling thread
//! ([`SeccompAction::Trap`]); brig-vmm's handler ([`crate::sys::install_sigsys_handler`])
//! names the call and the thread, and ends brig-vmm with its own exit code.

#![forbid(unsafe_code)]

#[cfg(not(target_arch = "x86_64"))]
compile_error!("brig-vmm's seccomp filters are written for x86_64's system calls (docs/seccomp.md)");

mod names;

use std::collections::BTreeMap;
use std::fmt;
use std::mem::size_of;

use kvm_bindings::{
    kvm_clock_data, kvm_fpu, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msrs, kvm_pit_state2, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, KVMIO,
};
use libc::{
    AF_UNIX, FIONBIO, FUTEX_CLOCK_REALTIME, FUTEX_PRIVATE_FLAG, FUTEX_WAIT, FUTEX_WAIT_BITSET, FUTEX_WAKE,
    F_DUPFD_CLOEXEC, F_GETFD, MADV_DONTNEED, PROT_EXEC, SEEK_DATA, SEEK_HOLE, SIGABRT, SOL_SOCKET, SO_SNDTIMEO,
    TUNSETOFFLOAD,
};
use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use vmm_sys_util::ioctl::{ioctl_expr, _IOC_NONE, _IOC_READ, _IOC_WRITE};

pub use self::names::name as syscall_name;

/// The kinds of brig-vmm threads, one filter each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// The main thread once the VM is built: the event loop, which also serves the
    /// control socket.
    Main,
    /// A vCPU thread.
    Vcpu,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 2] = [ThreadKind::Main, ThreadKind::Vcpu];

    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
        }
    }
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot compile the {kind} thread's seccomp filter")]
    Compile { kind: ThreadKind, source: BackendError },
    #[error("cannot install the {kind} thread's seccomp filter")]
    Install { kind: ThreadKind, source: seccompiler::Error },
}

/// A constant and its name, for the documentation of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Named {
    pub name: &'static str,
    pub value: u64,
}

/// A system call argument: its position (0–5) and its name in the man page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arg {
    pub index: u8,
    pub name: &'static str,
}

/// What the arguments of an allowed system call may be.
///
/// Every argument a rule looks at is 32 bits wide where the kernel reads it (an `int`
/// or `unsigned int` in the system call's signature, or flag bits in the low word of
/// `prot`), so the filter compares the low 32 bits, which are all the kernel uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Args {
    /// Any arguments.
    Any,
    /// `arg` is one of `values`; the bits of `ignoring` (flags that only say how the
    /// call is made, not what it does) may be anything.
    OneOf { arg: Arg, values: Vec<Named>, ignoring: Option<Named> },
    /// `arg` has none of the bits of `bits` set.
    Without { arg: Arg, bits: Named },
    /// Every listed argument has its value.
    All(Vec<(Arg, Named)>),
}

/// One system call a thread kind may make, and why brig-vmm makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    pub name: &'static str,
    pub nr: i64,
    pub args: Args,
    pub why: &'static str,
}

/// The signal the main thread kicks vCPUs out of `KVM_RUN` with (brig-vmm's
/// `vcpu::kick_signal`; a test there checks the two agree): the only signal besides
/// `SIGABRT` the main thread may send.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

/// `kind`'s filter as a BPF program for x86_64: the calls in [`allowed_syscalls`] are
/// allowed, anything else traps (SIGSYS).
pub fn filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let compile = |source| SeccompError::Compile { kind, source };
    let rules = allowed_syscalls(kind)
        .iter()
        .map(|allowed| Ok((allowed.nr, rules(&allowed.args)?)))
        .collect::<Result<BTreeMap<_, _>, BackendError>>()
        .map_err(compile)?;
    let filter =
        SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, TargetArch::x86_64).map_err(compile)?;
    BpfProgram::try_from(filter).map_err(compile)
}

/// Installs `kind`'s filter on the calling thread, for good. seccompiler sets
/// `no_new_privs` first, which an unprivileged process needs to install a filter (the
/// jail has set it already; an unjailed brig-vmm in development has not). Threads the
/// caller starts afterwards inherit the filter.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    let program = filter(kind)?;
    // The SIGSYS report names the thread: `vcpu0`, `main`.
    crate::sys::set_thread_label(std::thread::current().name().unwrap_or(kind.name()));
    seccompiler::apply_filter(&program).map_err(|source| SeccompError::Install { kind, source })
}

/// Every system call `kind`'s filter allows, sorted by name, with its argument rule
/// and why brig-vmm makes it.
pub fn allowed_syscalls(kind: ThreadKind) -> Vec<Allowed> {
    let mut allowed = match kind {
        ThreadKind::Main => main_thread(),
        ThreadKind::Vcpu => vcpu_thread(),
    };
    allowed.sort_by_key(|a| a.name);
    allowed
}

fn rules(args: &Args) -> Result<Vec<SeccompRule>, BackendError> {
    let condition = |arg: &Arg, op, value| SeccompCondition::new(arg.index, SeccompCmpArgLen::Dword, op, value);
    match args {
        Args::Any => Ok(Vec::new()),
        Args::OneOf { arg, values, ignoring } => values
            .iter()
            .map(|value| {
                let op = match ignoring {
                    Some(flags) => SeccompCmpOp::MaskedEq(u64::from(u32::MAX) & !flags.value),
                    None => SeccompCmpOp::Eq,
                };
                SeccompRule::new(vec![condition(arg, op, value.value)?])
            })
            .collect(),
        Args::Without { arg, bits } => {
            Ok(vec![SeccompRule::new(vec![condition(arg, SeccompCmpOp::MaskedEq(bits.value), 0)?])?])
        }
        Args::All(pairs) => {
            let conditions = pairs.iter().map(|(arg, value)| condition(arg, SeccompCmpOp::Eq, value.value));
            Ok(vec![SeccompRule::new(conditions.collect::<Result<_, _>>()?)?])
        }
    }
}

// ---- the lists ----

/// KVM's ioctl requests as <linux/kvm.h> encodes them (`_IO`, `_IOR`, `_IOWR` on
/// `KVMIO`): kvm-bindings has the types and `KVMIO`, kvm-ioctls keeps the numbers
/// private. A test checks them against the kernel header's values.
const fn kvm_request(dir: u32, nr: u32, size: usize) -> u64 {
    ioctl_expr(dir, KVMIO, nr, size as u32) as u64
}

const KVM_RUN: u64 = kvm_request(_IOC_NONE, 0x80, 0);
const KVM_GET_REGS: u64 = kvm_request(_IOC_READ, 0x81, size_of::<kvm_regs>());
const KVM_GET_SREGS: u64 = kvm_request(_IOC_READ, 0x83, size_of::<kvm_sregs>());
const KVM_GET_MSRS: u64 = kvm_request(_IOC_READ | _IOC_WRITE, 0x88, size_of::<kvm_msrs>());
const KVM_GET_FPU: u64 = kvm_request(_IOC_READ, 0x8c, size_of::<kvm_fpu>());
const KVM_GET_LAPIC: u64 = kvm_request(_IOC_READ, 0x8e, size_of::<kvm_lapic_state>());
const KVM_GET_MP_STATE: u64 = kvm_request(_IOC_READ, 0x98, size_of::<kvm_mp_state>());
const KVM_GET_VCPU_EVENTS: u64 = kvm_request(_IOC_READ, 0x9f, size_of::<kvm_vcpu_events>());
const KVM_GET_XCRS: u64 = kvm_request(_IOC_READ, 0xa6, size_of::<kvm_xcrs>());
const KVM_GET_IRQCHIP: u64 = kvm_request(_IOC_READ | _IOC_WRITE, 0x62, size_of::<kvm_irqchip>());
const KVM_GET_PIT2: u64 = kvm_request(_IOC_READ, 0x9f, size_of::<kvm_pit_state2>());
const KVM_GET_CLOCK: u64 = kvm_request(_IOC_READ, 0x7c, size_of::<kvm_clock_data>());

/// A constant under its own name.
macro_rules! named {
    ($constant:ident) => {
        Named { name: stringify!($constant), value: $constant as u64 }
    };
}

const REQUEST: Arg = Arg { index: 1, name: "request" };
const PROT: Arg = Arg { index: 2, name: "prot" };
const CMD: Arg = Arg { index: 1, name: "cmd" };

fn any(nr: libc::c_long, why: &'static str) -> Allowed {
    Allowed { name: names::name(nr).unwrap_or("unknown"), nr, args: Args::Any, why }
}

fn with(nr: libc::c_long, args: Args, why: &'static str) -> Allowed {
    Allowed { args, ..any(nr, why) }
}

fn one_of(arg: Arg, values: Vec<Named>) -> Args {
    Args::OneOf { arg, values, ignoring: None }
}

/// What both thread kinds need for the allocator, locks, signals and ending: glibc's
/// malloc, std's channels and mutexes, a kick or a panic's abort.
fn common() -> Vec<Allowed> {
    let futex_ops = vec![named!(FUTEX_WAIT), named!(FUTEX_WAKE), named!(FUTEX_WAIT_BITSET)];
    let how = Named {
        name: "FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME",
        value: (FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME) as u64,
    };
    vec![
        any(libc::SYS_brk, "glibc's malloc grows and trims its main heap"),
        any(libc::SYS_clock_gettime, "clocks (`Instant`, log timestamps) when the vDSO cannot answer"),
        any(libc::SYS_exit_group, "ends brig-vmm, also from the SIGSYS handler"),
        with(
            libc::SYS_futex,
            Args::OneOf { arg: Arg { index: 1, name: "op" }, values: futex_ops, ignoring: Some(how) },
            "mutexes, condition variables, channels, thread joins; no priority-inheritance or requeue operation",
        ),
        any(libc::SYS_getpid, "`abort()` (and the main thread's `pthread_kill`) names the process"),
        any(libc::SYS_gettid, "`abort()` names the thread it raises SIGABRT on"),
        with(
            libc::SYS_madvise,
            one_of(Arg { index: 2, name: "advice" }, vec![named!(MADV_DONTNEED)]),
            "glibc returns freed heap pages and an ended thread's stack",
        ),
        with(
            libc::SYS_mmap,
            Args::Without { arg: PROT, bits: named!(PROT_EXEC) },
            "malloc maps heaps and large blocks; never executable memory",
        ),
        with(
            libc::SYS_mprotect,
            Args::Without { arg: PROT, bits: named!(PROT_EXEC) },
            "malloc makes reserved heap space usable; never executable",
        ),
        any(libc::SYS_mremap, "realloc moves large mapped blocks (it keeps their protection)"),
        any(libc::SYS_munmap, "free returns large blocks and heaps; a thread's stack and signal stack at its end"),
        any(
            libc::SYS_rt_sigprocmask,
            "`pthread_kill` and a thread's end block signals for a moment; `abort()` unblocks SIGABRT",
        ),
        any(libc::SYS_rt_sigreturn, "returns from a signal handler (the vCPU kick)"),
        any(libc::SYS_sched_yield, "std's channels back off under contention"),
        any(libc::SYS_sigaltstack, "std removes a thread's signal stack when the thread ends"),
        any(
            libc::SYS_write,
            "the log on stderr, eventfds (interrupts, wake-ups), the SIGSYS report; virtio-net's tap (main thread)",
        ),
    ]
}

fn main_thread() -> Vec<Allowed> {
    let requests = vec![named!(FIONBIO), named!(KVM_GET_IRQCHIP), named!(KVM_GET_PIT2), named!(KVM_GET_CLOCK)];
    let signals = vec![Named { name: "SIGRTMIN", value: kick_signal() as u64 }, named!(SIGABRT)];
    let timeout = vec![
        (Arg { index: 1, name: "level" }, named!(SOL_SOCKET)),
        (Arg { index: 2, name: "optname" }, named!(SO_SNDTIMEO)),
    ];
    let mut allowed = common();
    allowed.extend([
        any(libc::SYS_accept4, "accepts connections on the control socket and on the vsock host socket"),
        any(libc::SYS_close, "closes connections, the state file and /proc files; everything at exit"),
        any(
            libc::SYS_connect,
            "a guest-initiated vsock stream connects to `<uds_path>_<port>` (an AF_UNIX socket, see `socket`)",
        ),
        any(
            libc::SYS_epoll_ctl,
            "watches connections and vsock streams; pause and resume remove and re-add the device epoll set",
        ),
        any(libc::SYS_epoll_wait, "the event loop waits; it also polls the nested device epoll set"),
        with(
            libc::SYS_fcntl,
            one_of(CMD, vec![named!(F_GETFD)]),
            "debug builds: std checks that a descriptor is open before it closes it",
        ),
        any(libc::SYS_fdatasync, "virtio-blk flush"),
        any(libc::SYS_fsync, "save-state syncs the state file before answering"),
        with(
            libc::SYS_ioctl,
            one_of(REQUEST, requests),
            "FIONBIO: std's `set_nonblocking` on sockets; save-state reads the PIC and IOAPIC, the PIT, kvmclock",
        ),
        any(
            libc::SYS_openat,
            "save-state creates its file; `metrics` reads /proc/self/status (and, once, /proc/sys/kernel/osrelease)",
        ),
        any(libc::SYS_getrandom, "virtio-rng fills the guest's buffers from the host kernel's CSPRNG"),
        with(
            libc::SYS_lseek,
            one_of(Arg { index: 2, name: "whence" }, vec![named!(SEEK_DATA), named!(SEEK_HOLE)]),
            "dump-memory-fd finds the holes of the guest-memory file (memfd or tmpfs: pages never touched) and writes zeros for them without reading, so a dump allocates nothing",
        ),
        any(libc::SYS_pread64, "virtio-blk reads"),
        any(libc::SYS_pwrite64, "virtio-blk writes"),
        any(libc::SYS_read, "eventfds (queue notifications, VM events), the signalfd, /proc files, virtio-net's tap"),
        any(libc::SYS_readlinkat, "procfs resolves /proc/self"),
        any(
            libc::SYS_recvmsg,
            "reads control connections, with the descriptor a `save-state-fd` request brings (SCM_RIGHTS)",
        ),
        any(libc::SYS_recvfrom, "reads vsock streams (std's `UnixStream::read`)"),
        any(
            libc::SYS_sendto,
            "writes control answers and vsock streams (std's `UnixStream::write`, with MSG_NOSIGNAL)",
        ),
        with(
            libc::SYS_setsockopt,
            Args::All(timeout),
            "a control answer is sent with a 1 s timeout: a client that does not read cannot stall the event loop",
        ),
        any(libc::SYS_shutdown, "vsock: when the guest stops sending, the host stream's write side is shut"),
        with(
            libc::SYS_socket,
            one_of(Arg { index: 0, name: "domain" }, vec![named!(AF_UNIX)]),
            "a guest-initiated vsock stream is a Unix socket; never AF_INET or any other family",
        ),
        any(
            libc::SYS_statx,
            "std sizes its read of /proc/sys/kernel/osrelease (on the first `metrics`); `save-state-fd` checks the \
             sent descriptor is an empty regular file",
        ),
        with(
            libc::SYS_tgkill,
            one_of(Arg { index: 2, name: "sig" }, signals),
            "kicks a vCPU out of `KVM_RUN` (SIGRTMIN); `abort()` on a panic (SIGABRT)",
        ),
        any(libc::SYS_unlink, "removes the control socket and the vsock host socket when brig-vmm stops"),
    ]);
    allowed
}

fn vcpu_thread() -> Vec<Allowed> {
    let requests = vec![
        named!(KVM_RUN),
        named!(KVM_GET_REGS),
        named!(KVM_GET_SREGS),
        named!(KVM_GET_MSRS),
        named!(KVM_GET_FPU),
        named!(KVM_GET_LAPIC),
        named!(KVM_GET_MP_STATE),
        named!(KVM_GET_VCPU_EVENTS),
        named!(KVM_GET_XCRS),
        named!(TUNSETOFFLOAD),
    ];
    let mut allowed = common();
    allowed.extend([
        any(
            libc::SYS_close,
            "a device reset the guest asks for closes eventfd clones and vsock connections; the vCPU fd at the end",
        ),
        any(
            libc::SYS_epoll_ctl,
            "virtio activation and reset (register writes run here) add and remove the device's eventfds and sockets",
        ),
        any(libc::SYS_exit, "ends the thread"),
        with(
            libc::SYS_fcntl,
            one_of(CMD, vec![named!(F_DUPFD_CLOEXEC), named!(F_GETFD)]),
            "virtio activation clones queue eventfds (`EventFd::try_clone`); F_GETFD: std's debug-build close check",
        ),
        with(
            libc::SYS_ioctl,
            one_of(REQUEST, requests),
            "`KVM_RUN`; save-state and a failed vCPU's report read its registers and state; virtio-net's \
             activation tells its tap which checksum offload the guest accepted",
        ),
        with(libc::SYS_tgkill, one_of(Arg { index: 2, name: "sig" }, vec![named!(SIGABRT)]), "`abort()` on a panic"),
    ]);
    allowed
}

impl fmt::Display for Args {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |values: &[Named]| values.iter().map(|v| format!("`{}`", v.name)).collect::<Vec<_>>().join(", ");
        match self {
            Args::Any => f.write_str("any"),
            Args::OneOf { arg, values, ignoring } => {
                match values.as_slice() {
                    [one] => write!(f, "`{}` = `{}`", arg.name, one.name)?,
                    _ => write!(f, "`{}` one of {}", arg.name, names(values))?,
                }
                match ignoring {
                    Some(flags) => write!(f, ", with or without `{}`", flags.name),
                    None => Ok(()),
                }
            }
            Args::Without { arg, bits } => write!(f, "`{}` without `{}`", arg.name, bits.name),
            Args::All(pairs) => {
                let each: Vec<String> = pairs.iter().map(|(arg, v)| format!("`{}` = `{}`", arg.name, v.name)).collect();
                f.write_str(&each.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests;
