//! A container's rootfs in the guest: the block device the VMM attached (found
//! by its serial), mounted under the container's directory, with an optional
//! tmpfs overlay on top to make a read-only image writable.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use brig_protocol::agent::Rootfs as RootfsRequest;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("no block device has serial {0:?}; the VMM must attach the rootfs with --block …,serial={0}")]
    NoDevice(String),
    #[error("rootfs filesystem type {0:?} is not supported (use ext4 or erofs)")]
    FsType(String),
    #[error("cannot create {path}")]
    Mkdir { path: PathBuf, source: std::io::Error },
    #[error("cannot mount {what} on {target}")]
    Mount { what: String, target: PathBuf, source: Errno },
    #[error("rootfs path {0:?} must be relative and must not contain `..`")]
    Path(String),
}

/// Mounted layers, unmounted in reverse order by [`Rootfs::unmount`].
#[derive(Debug)]
pub struct Rootfs {
    /// The device's root as the container's bundle directory: relative bind sources start here.
    pub bundle: PathBuf,
    /// What the container sees as `/`.
    pub path: PathBuf,
    mounts: Vec<PathBuf>,
}

/// The container root inside the device, checked: relative, no `..`.
fn subpath(path: &str) -> Result<PathBuf, RootfsError> {
    let p = Path::new(path);
    let clean = p.components().all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir));
    if p.is_absolute() || !clean {
        return Err(RootfsError::Path(path.to_owned()));
    }
    Ok(p.to_path_buf())
}

/// The `/dev/vdX` whose virtio-blk serial is `serial`.
pub fn device_by_serial(sys_block: &Path, serial: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(sys_block).ok()?;
    let mut names: Vec<String> =
        entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
        .into_iter()
        .find(|name| {
            std::fs::read_to_string(sys_block.join(name).join("serial"))
                .is_ok_and(|s| s.trim_end_matches('\0').trim() == serial)
        })
        .map(|name| PathBuf::from("/dev").join(name))
}

fn mkdir(path: &Path) -> Result<(), RootfsError> {
    std::fs::create_dir_all(path).map_err(|source| RootfsError::Mkdir { path: path.into(), source })
}

impl Rootfs {
    /// Mounts the rootfs described by `request` under `dir`.
    pub fn mount(dir: &Path, request: &RootfsRequest) -> Result<Rootfs, RootfsError> {
        let fstype = match request.fstype.as_str() {
            "ext4" | "erofs" => request.fstype.as_str(),
            other => return Err(RootfsError::FsType(other.to_owned())),
        };
        let sub = subpath(&request.path)?;
        let device = device_by_serial(Path::new("/sys/block"), &request.serial)
            .ok_or_else(|| RootfsError::NoDevice(request.serial.clone()))?;
        let bundle = dir.join("bundle");
        let mut rootfs = Rootfs { path: bundle.join(sub), bundle: bundle.clone(), mounts: Vec::new() };
        let image = if request.writable_layer { dir.join("image") } else { bundle.clone() };
        mkdir(&image)?;
        let mut flags = MsFlags::MS_NODEV;
        if request.read_only || fstype == "erofs" {
            flags |= MsFlags::MS_RDONLY;
        }
        rootfs.mount_one(Some(device.as_path()), &image, fstype, flags, None)?;
        if request.writable_layer {
            let rw = dir.join("rw");
            mkdir(&rw)?;
            rootfs.mount_one(None, &rw, "tmpfs", MsFlags::MS_NODEV, Some("mode=0755"))?;
            mkdir(&rw.join("upper"))?;
            mkdir(&rw.join("work"))?;
            mkdir(&bundle)?;
            let options = format!(
                "lowerdir={},upperdir={},workdir={}",
                image.display(),
                rw.join("upper").display(),
                rw.join("work").display()
            );
            rootfs.mount_one(None, &bundle, "overlay", MsFlags::empty(), Some(&options))?;
        }
        if !rootfs.path.is_dir() {
            rootfs.unmount();
            return Err(RootfsError::Path(request.path.clone()));
        }
        Ok(rootfs)
    }

    fn mount_one(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), RootfsError> {
        let what = source.map_or(fstype.to_owned(), |s| s.display().to_string());
        let result = mount(Some(source.unwrap_or(Path::new(fstype))), target, Some(fstype), flags, data);
        if let Err(source) = result {
            self.unmount();
            return Err(RootfsError::Mount { what, target: target.into(), source });
        }
        self.mounts.push(target.into());
        Ok(())
    }

    /// Unmounts every layer (lazily: a straggling process cannot keep them busy).
    pub fn unmount(&mut self) {
        while let Some(target) = self.mounts.pop() {
            if let Err(e) = umount2(&target, MntFlags::MNT_DETACH) {
                log::warn!("cannot unmount {}: {e}", target.display());
            }
        }
    }
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        self.unmount();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subpaths_stay_inside_the_device() {
        assert_eq!(subpath("").expect("root"), PathBuf::from(""));
        assert_eq!(subpath("rootfs").expect("sub"), PathBuf::from("rootfs"));
        for bad in ["/rootfs", "../x", "a/../../b"] {
            assert!(matches!(subpath(bad), Err(RootfsError::Path(_))), "{bad}");
        }
    }

    #[test]
    fn devices_are_found_by_serial() {
        let sys = std::env::temp_dir().join(format!("brig-sysblock-{}", std::process::id()));
        for (dev, serial) in [("vda", "other"), ("vdb", "rootfs\0\0\0")] {
            std::fs::create_dir_all(sys.join(dev)).expect("dir");
            std::fs::write(sys.join(dev).join("serial"), serial).expect("serial");
        }
        assert_eq!(device_by_serial(&sys, "rootfs"), Some(PathBuf::from("/dev/vdb")));
        assert_eq!(device_by_serial(&sys, "missing"), None);
        std::fs::remove_dir_all(&sys).expect("cleanup");
    }
}
