//! Starting a container helper process from the multi-threaded agent.
//!
//! `clone(2)` with the container's new namespaces; in the child, only
//! async-signal-safe calls (`dup2`, `sigprocmask`, `execve`, `_exit`) on data
//! prepared beforehand, to re-execute the agent binary as a fresh,
//! single-threaded helper (see `runtime`). The binary is executed from a sealed
//! in-memory copy, so a container process that reaches `/proc/<helper>/exe` finds
//! an unwritable memfd, not the agent's file (the CVE-2019-5736 class).
//!
//! `unsafe` here: `clone` and the child's raw libc calls. Invariants: every
//! pointer the child uses points into buffers owned by the parent's stack frame,
//! alive across `clone` (the child has its own copy of them); the child never
//! returns into Rust code.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::Receiver;

use nix::fcntl::{fcntl, FcntlArg, OFlag, SealFlag};
use nix::sched::CloneFlags;
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use super::stdio::ChildStdio;
use crate::reaper::Reaper;
use crate::runtime::config::{CONFIG_FD, CONSOLE_FD, PID_FD, START_FD, STATUS_FD};

/// The helper's stack: it only runs the few calls before `execve`.
const STACK: usize = 64 << 10;
/// Lowest descriptor number used while arranging the child's fds.
const HIGH_FD: RawFd = 16;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot make a sealed copy of the agent binary")]
    Seal(#[source] std::io::Error),
    #[error("cannot create the helper's pipes")]
    Pipe(#[source] nix::Error),
    #[error("clone failed")]
    Clone(#[source] nix::Error),
}

/// The agent binary, copied into a sealed memfd at start-up.
#[derive(Debug)]
pub struct SealedExe {
    fd: OwnedFd,
}

impl SealedExe {
    pub fn from_self() -> Result<SealedExe, SpawnError> {
        let io = |e: nix::Error| SpawnError::Seal(std::io::Error::from(e));
        let fd = memfd_create("brig-agent", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).map_err(io)?;
        let mut copy = File::from(fd);
        let mut exe = File::open("/proc/self/exe").map_err(SpawnError::Seal)?;
        std::io::copy(&mut exe, &mut copy).map_err(SpawnError::Seal)?;
        let seals = SealFlag::F_SEAL_SEAL | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE;
        fcntl(&copy, FcntlArg::F_ADD_SEALS(seals)).map_err(io)?;
        // Above every number the child's dup2s write to, or the helper would exec a pipe.
        let fd = high(copy.into()).map_err(|e| match e {
            SpawnError::Pipe(e) => io(e),
            other => other,
        })?;
        Ok(SealedExe { fd })
    }

    fn path(&self) -> CString {
        CString::new(format!("/proc/self/fd/{}", self.fd.as_raw_fd())).expect("a path of digits has no NUL")
    }
}

/// A started helper and the agent's ends of its pipes.
#[derive(Debug)]
pub struct Spawned {
    pub pid: Pid,
    pub exit: Receiver<WaitStatus>,
    /// Write the configuration here, then drop it (the helper reads to EOF).
    pub config: Option<File>,
    /// `R`, `E<message>`, or EOF.
    pub status: File,
    /// One byte lets the process exec.
    pub start: File,
    /// Exec helpers: the pid of the process they started.
    pub pid_pipe: Option<File>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)
}

/// Moves `fd` to a number at or above [`HIGH_FD`] (still close-on-exec), so the
/// child's `dup2`s into 0..=7 cannot overwrite a source they still need.
fn high(fd: OwnedFd) -> Result<OwnedFd, SpawnError> {
    let raw = fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(HIGH_FD)).map_err(SpawnError::Pipe)?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Starts `brig-agent <mode>` in new `namespaces` with `stdio` as fds 0-2.
pub fn spawn(
    exe: &SealedExe,
    reaper: &Reaper,
    mode: &str,
    namespaces: CloneFlags,
    stdio: ChildStdio,
    want_pid_pipe: bool,
) -> Result<Spawned, SpawnError> {
    let (config_r, config_w) = pipe()?;
    let (status_r, status_w) = pipe()?;
    let (start_r, start_w) = pipe()?;
    let (pid_r, pid_w) = if want_pid_pipe { pipe().map(|(r, w)| (Some(r), Some(w)))? } else { (None, None) };

    let mut child_fds: Vec<(OwnedFd, RawFd)> = vec![
        (high(stdio.stdin)?, 0),
        (high(stdio.stdout)?, 1),
        (high(stdio.stderr)?, 2),
        (high(config_r)?, CONFIG_FD),
        (high(status_w)?, STATUS_FD),
        (high(start_r)?, START_FD),
    ];
    if let Some(pid_w) = pid_w {
        child_fds.push((high(pid_w)?, PID_FD));
    }
    if let Some(console) = stdio.console {
        child_fds.push((high(console)?, CONSOLE_FD));
    }
    let moves: Vec<(RawFd, RawFd)> = child_fds.iter().map(|(fd, to)| (fd.as_raw_fd(), *to)).collect();

    let path = exe.path();
    let argv0 = CString::new("brig-agent").expect("static");
    let argv1 = CString::new(mode).map_err(|_| SpawnError::Pipe(nix::Error::EINVAL))?;
    let argv: [*const libc::c_char; 3] = [argv0.as_ptr(), argv1.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let (path_ptr, argv_ptr, envp_ptr, moves_ptr, moves_len) =
        (path.as_ptr(), argv.as_ptr(), envp.as_ptr(), moves.as_ptr(), moves.len());

    let child = Box::new(move || -> isize {
        // SAFETY: only async-signal-safe calls on buffers that outlive the clone (module
        // invariant); `moves` sources are >= HIGH_FD, destinations < HIGH_FD.
        unsafe {
            for i in 0..moves_len {
                let (from, to) = *moves_ptr.add(i);
                if libc::dup2(from, to) < 0 {
                    libc::_exit(126);
                }
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::execve(path_ptr, argv_ptr, envp_ptr);
            libc::_exit(127)
        }
    });
    let mut stack = vec![0u8; STACK];
    let (pid, exit) = reaper
        .spawn(|| {
            // SAFETY: see the module invariant; `child` never returns (execve or _exit).
            unsafe { nix::sched::clone(child, &mut stack, namespaces, Some(libc::SIGCHLD)) }
        })
        .map_err(SpawnError::Clone)?;
    drop(child_fds);
    Ok(Spawned {
        pid,
        exit,
        config: Some(File::from(config_w)),
        status: File::from(status_r),
        start: File::from(start_w),
        pid_pipe: pid_r.map(File::from),
    })
}

/// What a helper said on its status pipe.
#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    Ready,
    Failed(String),
    /// The pipe closed: after `Ready`, the exec succeeded; before, the helper died.
    Closed,
}

/// Reads the next status message.
pub fn read_status(status: &mut File) -> Status {
    let mut first = [0u8; 1];
    match status.read(&mut first) {
        Ok(1) if first[0] == b'R' => Status::Ready,
        Ok(1) => {
            let mut rest = String::new();
            let _ = status.take(64 << 10).read_to_string(&mut rest);
            Status::Failed(rest)
        }
        _ => Status::Closed,
    }
}

/// Lets the helper exec.
pub fn release(start: &mut File) -> std::io::Result<()> {
    start.write_all(b"G")
}
