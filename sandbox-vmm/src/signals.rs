//! Termination signals as a file descriptor, so the event loop can shut the VM
//! down cleanly (removing its sockets) on SIGTERM, SIGINT or SIGHUP.
//!
//! `unsafe` here: `sigprocmask`-style masking and `signalfd(2)`. Invariants: the
//! mask is changed on the main thread before any vCPU thread starts (they inherit
//! it), and the signalfd is owned by the returned `File`.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

/// Signals that stop the VMM.
pub const TERMINATING: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

#[derive(Debug)]
pub struct SignalFd(File);

impl SignalFd {
    /// Blocks [`TERMINATING`] for this thread (and threads it starts later) and
    /// returns a descriptor that becomes readable when one arrives.
    pub fn new() -> std::io::Result<SignalFd> {
        // SAFETY: an all-zero sigset_t is a valid value to pass to sigemptyset.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid, writable sigset_t for all four calls.
        unsafe {
            libc::sigemptyset(&mut set);
            for signal in TERMINATING {
                libc::sigaddset(&mut set, signal);
            }
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // SAFETY: `set` is initialised; -1 asks for a new descriptor.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nothing else.
        Ok(SignalFd(unsafe { File::from_raw_fd(fd) }))
    }

    /// The signal that arrived, if any.
    pub fn read(&mut self) -> Option<i32> {
        let mut info = [0u8; 128]; // sizeof(struct signalfd_siginfo)
        match self.0.read(&mut info) {
            Ok(128) => Some(i32::from_le_bytes([info[0], info[1], info[2], info[3]])),
            _ => None,
        }
    }
}

impl AsRawFd for SignalFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
