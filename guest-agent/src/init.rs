//! PID 1 duties: the kernel filesystems, and powering off.

use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot create {0}")]
    Mkdir(String, #[source] std::io::Error),
    #[error("cannot mount {fstype} on {target}")]
    Mount { fstype: &'static str, target: &'static str, source: nix::Error },
}

/// Filesystems every guest has, in mount order.
const MOUNTS: &[(&str, &str, MsFlags, &str)] = &[
    ("proc", "/proc", MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC), ""),
    ("sysfs", "/sys", MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC), ""),
    ("devtmpfs", "/dev", MsFlags::MS_NOSUID, "mode=0755"),
    ("cgroup2", "/sys/fs/cgroup", MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC), ""),
    ("devpts", "/dev/pts", MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC), "gid=5,mode=0620,ptmxmode=0666"),
    ("tmpfs", "/dev/shm", MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV), "mode=1777"),
    ("tmpfs", "/run", MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV), "mode=0755"),
];

/// Set in the environment of the agent re-executed by [`leave_initramfs`].
const SWITCHED: &str = "BRIG_AGENT_SWITCHED";

/// Moves PID 1 off the initramfs onto a tmpfs root and re-executes it there.
///
/// The kernel's initial root (`rootfs`) is not a mount with a parent, so
/// `pivot_root(2)` fails in every mount namespace copied from it, and containers
/// need `pivot_root` (a `chroot` can be escaped). Like `switch_root`, this copies
/// `/init` onto a fresh tmpfs, deletes it from the initramfs, moves the tmpfs over
/// `/`, and execs the copy. Returns only if already switched; otherwise it execs or
/// fails.
pub fn leave_initramfs() -> Result<(), InitError> {
    if std::env::var_os(SWITCHED).is_some() {
        return Ok(());
    }
    let new_root = "/.root";
    std::fs::create_dir_all(new_root).map_err(|e| InitError::Mkdir(new_root.into(), e))?;
    mount(Some("tmpfs"), new_root, Some("tmpfs"), MsFlags::MS_NOSUID, Some("mode=0755"))
        .map_err(|source| InitError::Mount { fstype: "tmpfs", target: "/.root", source })?;
    for dir in ["dev", "proc", "sys", "run", "tmp"] {
        let path = format!("{new_root}/{dir}");
        std::fs::create_dir_all(&path).map_err(|e| InitError::Mkdir(path, e))?;
    }
    std::fs::copy("/init", "/.root/init").map_err(|e| InitError::Mkdir("/.root/init".into(), e))?;
    // Frees the initramfs copy (the kernel cannot free rootfs itself).
    let _ = std::fs::remove_file("/init");
    nix::unistd::chdir(new_root).map_err(|source| InitError::Mount { fstype: "tmpfs", target: "/", source })?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(|source| InitError::Mount {
        fstype: "tmpfs",
        target: "/",
        source,
    })?;
    nix::unistd::chroot(".").map_err(|source| InitError::Mount { fstype: "tmpfs", target: "/", source })?;
    nix::unistd::chdir("/").map_err(|source| InitError::Mount { fstype: "tmpfs", target: "/", source })?;
    let init = std::ffi::CString::new("/init").expect("static");
    let args: Vec<std::ffi::CString> = std::env::args().filter_map(|a| std::ffi::CString::new(a).ok()).collect();
    let mut env: Vec<std::ffi::CString> =
        std::env::vars().filter_map(|(k, v)| std::ffi::CString::new(format!("{k}={v}")).ok()).collect();
    env.push(std::ffi::CString::new(format!("{SWITCHED}=1")).expect("static"));
    let err = nix::unistd::execve(&init, &args, &env).err();
    Err(InitError::Mount { fstype: "exec", target: "/init", source: err.unwrap_or(nix::errno::Errno::EINVAL) })
}

/// Mounts proc, sys, dev, cgroup2 and friends.
pub fn mount_filesystems() -> Result<(), InitError> {
    for &(fstype, target, flags, data) in MOUNTS {
        std::fs::create_dir_all(target).map_err(|e| InitError::Mkdir(target.into(), e))?;
        let data = (!data.is_empty()).then_some(data);
        mount(Some(fstype), target, Some(fstype), flags, data).map_err(|source| InitError::Mount {
            fstype,
            target,
            source,
        })?;
    }
    Ok(())
}

/// Makes the guest's root (the initramfs, holding `/init`) read-only, so nothing
/// in the guest can replace the agent's binary.
pub fn protect_root() -> Result<(), InitError> {
    let flags = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    mount(None::<&str>, "/", None::<&str>, flags, None::<&str>).map_err(|source| InitError::Mount {
        fstype: "rootfs",
        target: "/",
        source,
    })
}

/// Whether the kernel filesystems are in place (for diagnostics).
pub fn mounted() -> bool {
    Path::new("/proc/self").exists() && Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// Ends the VM. brig's guests leave through a reset (`reboot=k`: the i8042 reset
/// line), which the VMM treats as a clean exit; a minimal kernel without ACPI has
/// no power-off path of its own.
pub fn power_off() -> ! {
    nix::unistd::sync();
    // Only returns on error; a PID 1 that cannot reboot has nothing better to do than panic the
    // kernel by exiting, which the VMM reports with the console tail.
    let err = reboot(RebootMode::RB_AUTOBOOT);
    log::error!("reboot failed: {err:?}");
    std::process::exit(1);
}
