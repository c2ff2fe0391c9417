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
