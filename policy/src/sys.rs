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

/// The Landlock ABI version this kernel enforces (0: none: not built in, or not
/// in `lsm=`), from `landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)`.
pub fn landlock_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
    // SAFETY: with this flag the kernel reads no memory (the attribute pointer is
    // NULL and its size 0) and only returns the version, or -1 with errno.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    i32::try_from(version).unwrap_or(0).max(0)
}

/// The highest capability number this kernel knows (`/proc/sys/kernel/cap_last_cap`):
/// capabilities newer than the `caps` crate are dropped too.
pub fn cap_last_cap() -> std::io::Result<u32> {
    let text = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")?;
    text.trim().parse().map_err(|_| std::io::Error::other(format!("cap_last_cap reads {text:?}")))
}

/// Drops capability `cap` from the bounding set (`PR_CAPBSET_DROP`).
pub fn drop_bounding(cap: u32) -> std::io::Result<()> {
    // SAFETY: PR_CAPBSET_DROP takes the capability number by value and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether capability `cap` is in the bounding set (`PR_CAPBSET_READ`).
pub fn in_bounding(cap: u32) -> std::io::Result<bool> {
    // SAFETY: PR_CAPBSET_READ takes the capability number by value and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0, 0, 0) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc == 1)
}

// ---- brig-vmm's seccomp report (crate::seccomp), in its own file ----

mod sigsys;

pub use self::sigsys::install_sigsys_handler;
#[cfg(test)]
pub(crate) use self::sigsys::probe;
pub(crate) use self::sigsys::set_thread_label;

// ---- the network (the shim) ----

/// Makes `cmd`'s child keep descriptor `fd` open across its exec (the shim's
/// descriptors are close-on-exec; the tap is the one brig-vmm inherits). Only
/// `fcntl` runs between fork and exec, which is async-signal-safe.
pub fn keep_open_on_exec(cmd: &mut std::process::Command, fd: std::os::fd::RawFd) {
    // SAFETY: the closure calls only fcntl(2), async-signal-safe, on a number; a
    // descriptor that is not open makes it fail, and the spawn with it.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Makes `cmd`'s child enter the network namespace `netns` before its exec (brig-vmm
/// without its jail; the jailer does it itself). Only setns(2), async-signal-safe,
/// runs between fork and exec; the descriptor is close-on-exec, so the child does
/// not keep it.
pub fn enter_netns_on_exec(cmd: &mut std::process::Command, netns: std::os::fd::OwnedFd) {
    use std::os::fd::AsRawFd;
    // SAFETY: the closure calls only setns(2) on a descriptor it owns (moved in, so
    // open for as long as `cmd` lives); a failure fails the spawn.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Creates tap `name` in the calling thread's network namespace and returns its
/// descriptor (close-on-exec): `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, not persistent,
/// so the interface goes away with its last descriptor. nix wraps no TUN ioctl.
pub fn create_tap(name: &str) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "an interface name is 1-15 bytes"));
    }
    // SAFETY: opens a NUL-terminated literal path; the result is checked.
    let raw = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` was just opened and nothing else owns it.
    let tap = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: all-zero is a valid ifreq.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads the live ifreq the pointer refers to (the name is
    // NUL-terminated: it is shorter than IFNAMSIZ and the rest is zero).
    if unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNSETIFF, &ifr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(tap)
}
