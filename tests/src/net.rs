//! Host-side network plumbing for the tests: a tap with an address, the host end of
//! a guest's virtio-net NIC.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// A tap (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`) in the test's network namespace, with
/// an IPv4 address, up. Its descriptor is close-on-exec like any other; the brig-vmm
/// of a `--net tap-fd=N` spec inherits it alone (`TestVm` clears the flag in that
/// child only), so parallel tests' VMs never hold each other's taps. Not persistent:
/// the interface goes away when the last descriptor is closed.
#[derive(Debug)]
pub struct HostTap {
    pub name: String,
    fd: OwnedFd,
}

impl HostTap {
    /// Creates tap `name` and gives it `cidr` (e.g. `10.77.0.1/24`).
    pub fn new(name: &str, cidr: &str) -> Result<HostTap> {
        // SAFETY: opens a path from a NUL-terminated literal; the result is checked.
        let raw = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if raw < 0 {
            bail!("open /dev/net/tun: {}", std::io::Error::last_os_error());
        }
        // SAFETY: `raw` was just opened and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: all-zero is a valid ifreq.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads the live ifreq the pointer refers to.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &ifr) } < 0 {
            bail!("TUNSETIFF {name}: {}", std::io::Error::last_os_error());
        }
        let tap = HostTap { name: name.to_owned(), fd };
        ip(&["addr", "add", cidr, "dev", name])?;
        ip(&["link", "set", name, "up"])?;
        Ok(tap)
    }

    /// The descriptor number brig-vmm inherits.
    pub fn fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Whether interface `name` exists in the test's network namespace.
    pub fn exists(name: &str) -> bool {
        Path::new("/sys/class/net").join(name).exists()
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("run ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
