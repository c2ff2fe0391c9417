//! The only module of brig-policy with `unsafe`: the system calls that std, nix
//! and the crates do not wrap safely. Every block says why it is sound.

// ---- the jail (brig-jailer) ----

/// `fork(2)` in brig-jailer, which is single-threaded when it forks: the child may
/// then run ordinary code, not only async-signal-safe calls.
pub fn fork_single_threaded() -> nix::Result<nix::unistd::ForkResult> {
    // SAFETY: brig-jailer never starts a thread (it is a plain `main` with no runtime),
    // so the child is an exact copy of a single-threaded process: no lock can be held
    // by a thread that does not exist in the child.
    unsafe { nix::unistd::fork() }
}

/// Closes every file descriptor from `first` up, except those in `keep` (sorted
/// or not), with `close_range(2)`.
pub fn close_fds_from(first: i32, keep: &[i32]) -> std::io::Result<()> {
    let mut keep: Vec<u32> = keep.iter().filter(|fd| **fd >= first).map(|fd| *fd as u32).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut low = first as u32;
    for fd in keep.iter().copied().chain(std::iter::once(u32::MAX)) {
        if fd > low {
            let high = if fd == u32::MAX { u32::MAX } else { fd - 1 };
            // SAFETY: close_range only closes descriptors; brig-jailer owns every
            // descriptor in this range and holds no Rust object over them (it calls
            // this first thing, before opening anything it keeps).
            let rc = unsafe { libc::syscall(libc::SYS_close_range, low, high, 0u32) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        low = fd.saturating_add(1);
    }
    Ok(())
}

// ---- brig-vmm's seccomp report (crate::seccomp), in its own file ----

mod sigsys;

pub use self::sigsys::install_sigsys_handler;
#[cfg(test)]
pub(crate) use self::sigsys::probe;
pub(crate) use self::sigsys::set_thread_label;
