//! brig-vmm's SIGSYS report: the handler that names the system call a seccomp filter
//! denied and the thread that made it, then ends brig-vmm (docs/seccomp.md); and, for
//! the tests, children that make one system call under a filter.
//!
//! Part of [`crate::sys`], the only module with `unsafe`. Invariant: the handler
//! touches only async-signal-safe state (the siginfo, a const-initialised thread-local
//! byte array, static tables, its own stack) and calls only `write(2)` and `_exit(2)`.

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};

/// The handler's exit code, set before the handler is installed.
static EXIT_CODE: AtomicU8 = AtomicU8::new(1);

/// Room for a thread label: Linux thread names are at most 15 bytes.
const LABEL_LEN: usize = 16;

std::thread_local! {
    /// The calling thread's name for the report, set when its filter is installed.
    /// Plain bytes in a const-initialised `Cell`: reading it takes no lock and
    /// allocates nothing, so the signal handler may.
    static THREAD_LABEL: Cell<[u8; LABEL_LEN]> = const { Cell::new([0; LABEL_LEN]) };
}

/// `si_code` of a SIGSYS that a seccomp filter raised (`SYS_SECCOMP` in
/// <asm-generic/siginfo.h>; libc does not define it).
const SYS_SECCOMP: libc::c_int = 1;

/// The head of the kernel's `siginfo_t` for SIGSYS: `si_signo`, `si_errno`, `si_code`,
/// then the union's `_sigsys` member (<asm-generic/siginfo.h>), whose fields libc's
/// `siginfo_t` does not expose. `repr(C)` aligns `call_addr` to 8 bytes, which puts it
/// at the union's offset (16 on x86_64), as in the kernel's struct.
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// Names the calling thread in a later report (the first 15 bytes of `name`).
pub(crate) fn set_thread_label(name: &str) {
    let mut label = [0u8; LABEL_LEN];
    let n = name.len().min(LABEL_LEN - 1);
    label[..n].copy_from_slice(&name.as_bytes()[..n]);
    THREAD_LABEL.set(label);
}

/// A line built on the stack: bytes past its end are dropped.
struct Line {
    buf: [u8; 192],
    len: usize,
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn push_number(&mut self, value: i64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut rest = value.unsigned_abs();
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        if value < 0 {
            self.push(b"-");
        }
        self.push(&digits[at..]);
    }
}

/// The report for a SIGSYS described by `info`, raised on the thread labelled `label`.
fn report(info: &SigsysInfo, label: &[u8; LABEL_LEN]) -> Line {
    let mut line = Line { buf: [0; 192], len: 0 };
    if info.code == SYS_SECCOMP {
        let nr = i64::from(info.syscall);
        line.push(b"brig-vmm: seccomp denied syscall ");
        line.push(crate::seccomp::syscall_name(nr).unwrap_or("unknown").as_bytes());
        line.push(b" (");
        line.push_number(nr);
        line.push(b") on thread ");
    } else {
        line.push(b"brig-vmm: SIGSYS, not from seccomp, on thread ");
    }
    match label.iter().position(|&b| b == 0).unwrap_or(LABEL_LEN) {
        0 => line.push(b"?"),
        n => line.push(&label[..n]),
    }
    line.push(b"; see docs/seccomp.md\n");
    line
}

extern "C" fn on_sigsys(_signal: libc::c_int, info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
    // SAFETY: the kernel hands an SA_SIGINFO handler a valid siginfo_t, which for
    // SIGSYS begins with SigsysInfo's fields in SigsysInfo's layout (see there).
    let info = unsafe { &*info.cast::<SigsysInfo>() };
    let line = report(info, &THREAD_LABEL.get());
    let code = EXIT_CODE.load(Ordering::Relaxed);
    // SAFETY: write(2) reads `line.len` initialised bytes of a live stack buffer;
    // _exit(2) ends the process and runs nothing else. Both are async-signal-safe.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.buf.as_ptr().cast(), line.len);
        libc::_exit(libc::c_int::from(code));
    }
}

/// Installs brig-vmm's SIGSYS handler for the whole process: a system call that a
/// seccomp filter denies ([`crate::seccomp`]) is reported on stderr as
/// `brig-vmm: seccomp denied syscall openat (257) on thread vcpu0; see docs/seccomp.md`,
/// then brig-vmm exits with `exit_code` at once (sockets are not removed). Install it
/// before the first filter.
pub fn install_sigsys_handler(exit_code: u8) -> std::io::Result<()> {
    EXIT_CODE.store(exit_code, Ordering::Relaxed);
    let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = on_sigsys;
    // SAFETY: an all-zero sigaction is a valid value (SIG_DFL, no flags, empty mask);
    // it is filled in below before use.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `action.sa_mask` is a valid sigset_t to fill (no other handler, such as
    // a vCPU kick, runs while the report is written); `action` is initialised and
    // `on_sigsys` has the SA_SIGINFO signature.
    let rc = unsafe {
        libc::sigfillset(&mut action.sa_mask);
        libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Children for the seccomp tests: each forks, runs a little code under a filter and
/// reports how it ended.
#[cfg(test)]
pub(crate) mod probe {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    use nix::sys::signal::{kill, Signal};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use nix::unistd::ForkResult;
    use seccompiler::sock_filter;

    /// The exit code of a child whose setup failed.
    pub(crate) const SETUP_FAILED: i32 = 120;
    /// How long a child may take.
    const TIMEOUT: Duration = Duration::from_secs(30);

    /// How a child ended, and what it wrote to its stderr.
    #[derive(Debug)]
    pub(crate) struct Report {
        pub status: WaitStatus,
        pub stderr: String,
    }

    /// Runs `body` in a forked child whose stderr is a pipe back to the caller, which
    /// never dumps core, and which has brig-vmm's SIGSYS handler (exiting with
    /// `sigsys_exit`) if asked. The child exits with what `body` returns.
    pub(crate) fn in_child(sigsys_exit: Option<u8>, body: impl FnOnce() -> i32) -> Report {
        let (read, write) = nix::unistd::pipe().expect("pipe");
        // SAFETY: test-only. The test harness is multi-threaded, so the child may only
        // do what cannot wait on a lock another thread held at the fork: the setup below
        // is raw system calls; bodies are raw system calls or plain std code that
        // allocates (glibc's fork leaves malloc usable in the child) and takes no shared
        // lock (they do not print). The child ends with `_exit`, never returning into the
        // harness.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            ForkResult::Child => {
                // SAFETY: dup2 and prctl on this child's own descriptors and state.
                let set_up = unsafe {
                    libc::dup2(write.as_raw_fd(), libc::STDERR_FILENO) >= 0
                        && libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
                };
                let handled = sigsys_exit.is_none_or(|code| super::install_sigsys_handler(code).is_ok());
                let code = if set_up && handled { body() } else { SETUP_FAILED };
                // SAFETY: ends the child at once, without the parent's atexit handlers.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => {
                drop(write);
                let start = Instant::now();
                let status = loop {
                    match waitpid(child, Some(WaitPidFlag::WNOHANG)).expect("waitpid") {
                        WaitStatus::StillAlive if start.elapsed() > TIMEOUT => {
                            let _ = kill(child, Signal::SIGKILL);
                        }
                        WaitStatus::StillAlive => std::thread::sleep(Duration::from_millis(1)),
                        status => break status,
                    }
                };
                let mut stderr = String::new();
                let _ = std::fs::File::from(read).read_to_string(&mut stderr);
                Report { status, stderr }
            }
        }
    }

    /// Makes system call `nr` with `args` in a child that first applies `program` (and
    /// labels its thread `probe` for the report).
    pub(crate) fn call(program: &[sock_filter], sigsys_exit: Option<u8>, nr: i64, args: [u64; 6]) -> Report {
        in_child(sigsys_exit, || {
            super::set_thread_label("probe");
            if seccompiler::apply_filter(program).is_err() {
                return SETUP_FAILED;
            }
            // SAFETY: the call runs in the child alone, which exits right after:
            // whatever it does to memory or descriptors dies with the child.
            unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4], args[5]) };
            0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handler_reads_the_kernels_sigsys_fields() {
        // The offsets of `_sigsys` in <asm-generic/siginfo.h> on x86_64.
        assert_eq!(std::mem::offset_of!(SigsysInfo, code), 8);
        assert_eq!(std::mem::offset_of!(SigsysInfo, call_addr), 16);
        assert_eq!(std::mem::offset_of!(SigsysInfo, syscall), 24);
        assert_eq!(std::mem::offset_of!(SigsysInfo, arch), 28);
        assert!(std::mem::size_of::<SigsysInfo>() <= std::mem::size_of::<libc::siginfo_t>());
    }

    #[test]
    fn the_report_names_the_call_and_the_thread() {
        let info = |code, syscall| SigsysInfo {
            signo: libc::SIGSYS,
            errno: 0,
            code,
            call_addr: std::ptr::null_mut(),
            syscall,
            arch: 0,
        };
        let text = |line: Line| String::from_utf8(line.buf[..line.len].to_vec()).expect("ascii");
        let mut label = [0u8; LABEL_LEN];
        label[..5].copy_from_slice(b"vcpu0");
        assert_eq!(
            text(report(&info(SYS_SECCOMP, 257), &label)),
            "brig-vmm: seccomp denied syscall openat (257) on thread vcpu0; see docs/seccomp.md\n"
        );
        assert_eq!(
            text(report(&info(SYS_SECCOMP, 4321), &[0; LABEL_LEN])),
            "brig-vmm: seccomp denied syscall unknown (4321) on thread ?; see docs/seccomp.md\n"
        );
        assert!(text(report(&info(0, 1), &label)).starts_with("brig-vmm: SIGSYS, not from seccomp, on thread vcpu0"));
    }

    #[test]
    fn labels_keep_fifteen_bytes() {
        set_thread_label("a-thread-name-longer-than-fifteen");
        assert_eq!(&THREAD_LABEL.get()[..], b"a-thread-name-l\0");
    }
}
