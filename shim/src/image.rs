//! The task's rootfs as a block image for the guest.
//!
//! containerd hands the shim the rootfs as mounts (an overlay of image layers plus
//! the container's writable snapshot). The shim mounts them on `<bundle>/rootfs`,
//! as runc's shim does, and copies the result into an ext4 image with
//! `mkfs.ext4 -d`, which the VM gets read-only; the guest puts a tmpfs overlay on
//! top for the container's writes.
//!
//! When the writable snapshot is empty (a fresh container), the image depends only
//! on the image layers, so it is cached under a hash of them and reused whenever
//! the same snapshot starts again. Otherwise the image is private to the task and
//! removed with it. Next to each cached image, `<key>.source` lists the directories
//! it was built from; once one of them is gone (containerd removed the image), the
//! next `prepare` collects the cached image, as it does unfinished builds whose
//! shim died.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use containerd_shim_protos::api::Mount;
use sha2::{Digest, Sha256};

use crate::error::ShimError;

/// An image ready for the VM.
#[derive(Debug, Clone)]
pub struct RootfsImage {
    pub path: PathBuf,
    /// Shared with other tasks: not removed with this one.
    pub cached: bool,
}

/// Where a shareable rootfs comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    pub key: String,
    /// The read-only directories the image is built from.
    pub sources: Vec<PathBuf>,
}

/// The cache key of a rootfs, if it can be shared: an overlay (or a single bind) whose
/// writable layer is empty.
pub fn cache_key(mounts: &[Mount]) -> Option<CacheKey> {
    let [mount] = mounts else { return None };
    let mut key = Sha256::new();
    let mut sources = Vec::new();
    match mount.type_.as_str() {
        "overlay" => {
            for option in &mount.options {
                if let Some(upper) = option.strip_prefix("upperdir=") {
                    if !dir_is_empty(Path::new(upper)) {
                        return None;
                    }
                } else if let Some(lower) = option.strip_prefix("lowerdir=") {
                    key.update(b"lowerdir=");
                    key.update(lower.as_bytes());
                    sources.extend(lower.split(':').map(PathBuf::from));
                }
            }
        }
        "bind" if mount.options.iter().any(|o| o == "ro") => {
            key.update(b"bind=");
            key.update(mount.source.as_bytes());
            sources.push(PathBuf::from(&mount.source));
        }
        _ => return None,
    }
    let digest = key.finalize();
    Some(CacheKey { key: digest.iter().take(16).map(|b| format!("{b:02x}")).collect(), sources })
}

fn dir_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(false)
}

/// Mounts containerd's rootfs mounts on `<bundle>/rootfs` (nothing to do if there are none).
pub async fn mount_rootfs(bundle: &Path, mounts: &[Mount]) -> Result<PathBuf, ShimError> {
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target).map_err(ShimError::io(format!("creating {}", target.display())))?;
    for mount in mounts {
        containerd_shim::asynchronous::util::mount_rootfs(mount, &target)
            .await
            .map_err(|e| ShimError::FailedPrecondition(format!("mounting the rootfs ({}): {e}", mount.type_)))?;
    }
    Ok(target)
}

/// Unmounts `<bundle>/rootfs` (lazily) if something is mounted there.
pub fn unmount_rootfs(bundle: &Path) {
    let target = bundle.join("rootfs");
    while nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
}

/// The image for the rootfs at `rootfs`: from the cache, or built (into the cache
/// when `key` is given, else into `private_dir`).
pub fn prepare(
    rootfs: &Path,
    key: Option<&CacheKey>,
    cache_dir: &Path,
    private_dir: &Path,
) -> Result<RootfsImage, ShimError> {
    match key {
        Some(CacheKey { key, sources }) => {
            std::fs::create_dir_all(cache_dir).map_err(ShimError::io(format!("creating {}", cache_dir.display())))?;
            std::fs::set_permissions(cache_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(ShimError::io(format!("chmod 0700 {}", cache_dir.display())))?;
            collect_garbage(cache_dir);
            let path = cache_dir.join(format!("{key}.ext4"));
            let lock = File::create(cache_dir.join(format!("{key}.lock"))).map_err(ShimError::io("image lock"))?;
            lock.lock().map_err(ShimError::io("locking the image cache"))?;
            if !path.exists() {
                let tmp = cache_dir.join(format!("{key}.ext4.tmp-{}", std::process::id()));
                build(rootfs, &tmp)?;
                let listing: String = sources.iter().map(|s| format!("{}\n", s.display())).collect();
                std::fs::write(cache_dir.join(format!("{key}.source")), listing)
                    .map_err(ShimError::io("recording the image's sources"))?;
                std::fs::rename(&tmp, &path).map_err(ShimError::io("moving the image into the cache"))?;
            }
            Ok(RootfsImage { path, cached: true })
        }
        None => {
            let path = private_dir.join("rootfs.ext4");
            build(rootfs, &path)?;
            Ok(RootfsImage { path, cached: false })
        }
    }
}

/// Removes cached images whose sources are gone and builds whose shim died. An entry
/// locked by a running build is left alone.
pub fn collect_garbage(cache_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(cache_dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((_, pid)) = name.split_once(".ext4.tmp-") {
            let alive = pid.parse::<i32>().is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
            if !alive {
                let _ = std::fs::remove_file(entry.path());
            }
            continue;
        }
        let Some(key) = name.strip_suffix(".source") else { continue };
        let listing = std::fs::read_to_string(entry.path()).unwrap_or_default();
        if listing.lines().all(|source| Path::new(source).is_dir()) {
            continue;
        }
        let Ok(lock) = File::create(cache_dir.join(format!("{key}.lock"))) else { continue };
        if lock.try_lock().is_err() {
            continue;
        }
        log::info!("removing cached rootfs image {key}: its snapshot is gone");
        for suffix in ["ext4", "source", "lock"] {
            let _ = std::fs::remove_file(cache_dir.join(format!("{key}.{suffix}")));
        }
    }
}

/// Bytes and entries under `dir` (not following symlinks).
fn usage(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut entries) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(read) = std::fs::read_dir(&dir) else { continue };
        for entry in read.flatten() {
            entries += 1;
            if let Ok(meta) = entry.path().symlink_metadata() {
                bytes += meta.len().div_ceil(4096) * 4096;
                if meta.is_dir() {
                    stack.push(entry.path());
                }
            }
        }
    }
    (bytes, entries)
}

/// `mkfs.ext4 -d`: an image sized for the content plus room for ext4's own data.
fn build(rootfs: &Path, image: &Path) -> Result<(), ShimError> {
    let (bytes, entries) = usage(rootfs);
    let size_mib = (bytes + bytes / 2).div_ceil(1 << 20) + 32;
    let inodes = entries * 2 + 1024;
    let file = File::create(image).map_err(ShimError::io(format!("creating {}", image.display())))?;
    file.set_len(size_mib << 20).map_err(ShimError::io("sizing the image"))?;
    // Readable by a jailed brig-vmm's own uid through its bind mount; the cache and
    // task directories above it are root's alone (0700), so no one else reaches it.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .map_err(ShimError::io("chmod the image"))?;
    drop(file);
    let output = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-N", &inodes.to_string(), "-d"])
        .arg(rootfs)
        .arg(image)
        .output()
        .map_err(ShimError::io("running mkfs.ext4 (package e2fsprogs)"))?;
    if !output.status.success() {
        let _ = std::fs::remove_file(image);
        return Err(ShimError::FailedPrecondition(format!(
            "mkfs.ext4 could not build the rootfs image: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

/// Removes a task's private image (cached ones stay).
pub fn release(image: &RootfsImage) {
    if !image.cached {
        let _ = std::fs::remove_file(&image.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay(upper: &Path, lower: &str) -> Mount {
        Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "index=off".into(),
                format!("workdir={}/work", upper.display()),
                format!("upperdir={}", upper.display()),
                format!("lowerdir={lower}"),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn a_fresh_snapshot_is_shared_and_a_used_one_is_not() {
        let dir = std::env::temp_dir().join(format!("brig-shim-key-{}", std::process::id()));
        let upper = dir.join("upper");
        std::fs::create_dir_all(&upper).expect("upper");
        let a = cache_key(&[overlay(&upper, "/s/1/fs:/s/2/fs")]).expect("shared");
        let b = cache_key(&[overlay(&upper, "/s/1/fs:/s/3/fs")]).expect("shared");
        assert_ne!(a.key, b.key, "other layers, other image");
        assert_eq!(a.sources, [PathBuf::from("/s/1/fs"), PathBuf::from("/s/2/fs")]);
        assert_eq!(Some(a.clone()), cache_key(&[overlay(&upper, "/s/1/fs:/s/2/fs")]), "same layers, same key");
        std::fs::write(upper.join("changed"), b"x").expect("write");
        assert_eq!(cache_key(&[overlay(&upper, "/s/1/fs:/s/2/fs")]), None, "writes in the snapshot");
        assert_eq!(cache_key(&[]), None);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn an_image_holds_the_rootfs_and_is_cached() {
        let dir = std::env::temp_dir().join(format!("brig-shim-image-{}", std::process::id()));
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).expect("rootfs");
        std::fs::write(rootfs.join("bin/hello"), b"#!/bin/sh\necho hi\n").expect("file");
        let key = CacheKey { key: "k1".into(), sources: vec![rootfs.clone()] };
        let image = prepare(&rootfs, Some(&key), &dir.join("cache"), &dir).expect("built");
        assert!(image.cached && image.path.exists());
        let listing = Command::new("debugfs").args(["-R", "ls -l /bin"]).arg(&image.path).output().expect("debugfs");
        assert!(String::from_utf8_lossy(&listing.stdout).contains("hello"), "the file is in the image");
        let modified = std::fs::metadata(&image.path).expect("meta").modified().expect("mtime");
        let again = prepare(&rootfs, Some(&key), &dir.join("cache"), &dir).expect("reused");
        assert_eq!(std::fs::metadata(&again.path).expect("meta").modified().expect("mtime"), modified, "not rebuilt");
        let private = prepare(&rootfs, None, &dir.join("cache"), &dir).expect("private");
        assert!(!private.cached);
        release(&private);
        assert!(!private.path.exists());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn images_of_removed_snapshots_and_dead_builds_are_collected() {
        let dir = std::env::temp_dir().join(format!("brig-shim-gc-{}", std::process::id()));
        let (kept, gone, cache) = (dir.join("kept"), dir.join("gone"), dir.join("cache"));
        for d in [&kept, &gone] {
            std::fs::create_dir_all(d.join("etc")).expect("rootfs");
        }
        let key = |name: &str, source: &Path| CacheKey { key: name.into(), sources: vec![source.to_path_buf()] };
        prepare(&kept, Some(&key("kept", &kept)), &cache, &dir).expect("kept");
        prepare(&gone, Some(&key("gone", &gone)), &cache, &dir).expect("gone");
        std::fs::remove_dir_all(&gone).expect("the snapshot goes away");
        std::fs::write(cache.join("dead.ext4.tmp-999999999"), b"half").expect("dead build");
        let running = cache.join(format!("live.ext4.tmp-{}", std::process::id()));
        std::fs::write(&running, b"half").expect("running build");
        collect_garbage(&cache);
        let mut left: Vec<String> = std::fs::read_dir(&cache)
            .expect("cache")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let live = format!("live.ext4.tmp-{}", std::process::id());
        assert_eq!(left, ["kept.ext4", "kept.lock", "kept.source", live.as_str()]);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
