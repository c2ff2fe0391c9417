//! `linux.maskedPaths` and `linux.readonlyPaths`.
//!
//! A masked file must be the null device and read empty; a masked directory must be
//! empty and on a read-only mount. A read-only path must refuse writes with `EROFS`:
//! a directory refuses a new entry, a file refuses `O_WRONLY|O_TRUNC` (which the kernel
//! turns down on a read-only mount before any permission check, so the answer does not
//! depend on the container's uid). A path that does not exist passes both: there is
//! nothing to hide or protect, and runtimes skip such paths.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read as _};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use nix::sys::stat::{major, minor};
use nix::sys::statvfs::{statvfs, FsFlags};

use crate::report::{errno_name, Check};

const NULL_DEVICE: (u64, u64) = (1, 3);

pub fn masked(path: &str) -> Check {
    let name = format!("maskedPaths {path}");
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Check::pass(name),
        Err(e) => return Check::fail(name, "masked", errno_name(&e)),
    };
    if meta.is_dir() {
        let got = match fs::read_dir(path) {
            Ok(entries) => format!("{} entries, {}", entries.count(), mount_access(Path::new(path))),
            Err(e) => errno_name(&e),
        };
        return Check::compare(name, "0 entries, read-only", got);
    }
    let want = "the null device, reading empty";
    let kind = meta.file_type();
    if !kind.is_char_device() {
        let what = if kind.is_file() { "a regular file" } else { "a special file" };
        return Check::fail(name, want, what);
    }
    let device = (major(meta.rdev()), minor(meta.rdev()));
    if device != NULL_DEVICE {
        return Check::fail(name, want, format!("char device {}:{}", device.0, device.1));
    }
    let mut byte = [0u8; 1];
    let got = match File::open(path).and_then(|mut f| f.read(&mut byte)) {
        Ok(0) => want.to_owned(),
        Ok(_) => "the null device, reading data".to_owned(),
        Err(e) => errno_name(&e),
    };
    Check::compare(name, want, got)
}

pub fn readonly(path: &str) -> Check {
    let name = format!("readonlyPaths {path}");
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Check::pass(name),
        Err(e) => return Check::fail(name, "EROFS", errno_name(&e)),
    };
    let path = Path::new(path);
    let got = if meta.is_dir() { refuse_new_entry(path) } else { refuse_truncate(path) };
    Check::compare(name, "EROFS", got)
}

/// Tries to create a directory inside `dir`. Where lookups of unknown names fail
/// before the write check (procfs and sysfs answer `ENOENT`), it truncates the first
/// regular file below `dir` instead.
fn refuse_new_entry(dir: &Path) -> String {
    let probe = dir.join(".brig-oci-check-probe");
    match fs::create_dir(&probe) {
        Ok(()) => {
            let _ = fs::remove_dir(&probe);
            "created an entry".to_owned()
        }
        Err(e) if e.kind() == ErrorKind::ReadOnlyFilesystem => "EROFS".to_owned(),
        Err(e) => match first_file(dir, 3) {
            Some(file) => refuse_truncate(&file),
            None => errno_name(&e),
        },
    }
}

/// `O_WRONLY|O_TRUNC`, only once the mount is known to be read-only, so a runtime
/// that failed to protect the path does not lose the file's contents to the check.
fn refuse_truncate(file: &Path) -> String {
    let access = mount_access(file);
    if access != "read-only" {
        return access;
    }
    match OpenOptions::new().write(true).truncate(true).open(file) {
        Ok(_) => "opened for writing".to_owned(),
        Err(e) => errno_name(&e),
    }
}

/// `read-only` or `read-write` from statvfs's mount flags, or the errno.
fn mount_access(path: &Path) -> String {
    match statvfs(path) {
        Ok(st) if st.flags().contains(FsFlags::ST_RDONLY) => "read-only".to_owned(),
        Ok(_) => "read-write".to_owned(),
        Err(errno) => format!("{errno:?}"),
    }
}

/// The first regular file below `dir` in name order, at most `depth` levels down.
fn first_file(dir: &Path, depth: u32) -> Option<PathBuf> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir).ok()?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for entry in entries {
        let Ok(meta) = fs::symlink_metadata(&entry) else { continue };
        if meta.is_file() {
            return Some(entry);
        }
        if meta.is_dir() && depth > 0 {
            if let Some(found) = first_file(&entry, depth - 1) {
                return Some(found);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let path = std::env::temp_dir().join(format!("brig-oci-check-{tag}-{}", std::process::id()));
            fs::create_dir_all(&path).expect("temp dir");
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn missing_paths_pass() {
        assert_eq!(masked("/nonexistent/brig").to_string(), "PASS maskedPaths /nonexistent/brig");
        assert_eq!(readonly("/nonexistent/brig").to_string(), "PASS readonlyPaths /nonexistent/brig");
    }

    #[test]
    fn the_null_device_is_a_masked_file() {
        assert!(masked("/dev/null").passed());
        assert_eq!(
            masked("/dev/zero").to_string(),
            "FAIL maskedPaths /dev/zero: want the null device, reading empty got char device 1:5"
        );
    }

    #[test]
    fn unmasked_files_and_directories_fail() {
        let dir = TempDir::new("masked");
        let file = dir.0.join("secret");
        fs::write(&file, "secret").expect("write");
        let file = file.to_string_lossy().into_owned();
        assert_eq!(
            masked(&file).to_string(),
            format!("FAIL maskedPaths {file}: want the null device, reading empty got a regular file")
        );
        let shown = dir.0.to_string_lossy().into_owned();
        let access = mount_access(&dir.0);
        assert_eq!(
            masked(&shown).to_string(),
            format!("FAIL maskedPaths {shown}: want 0 entries, read-only got 1 entries, {access}")
        );
    }

    #[test]
    fn writable_paths_fail_without_losing_data() {
        let dir = TempDir::new("readonly");
        let file = dir.0.join("data");
        fs::write(&file, "keep me").expect("write");
        if mount_access(&dir.0) != "read-write" {
            panic!("{} must be on a writable mount for this test", dir.0.display());
        }
        let shown = file.to_string_lossy().into_owned();
        assert_eq!(readonly(&shown).to_string(), format!("FAIL readonlyPaths {shown}: want EROFS got read-write"));
        assert_eq!(fs::read_to_string(&file).expect("read"), "keep me", "the check never truncates a writable file");
        let shown = dir.0.to_string_lossy().into_owned();
        assert_eq!(
            readonly(&shown).to_string(),
            format!("FAIL readonlyPaths {shown}: want EROFS got created an entry")
        );
        assert!(!dir.0.join(".brig-oci-check-probe").exists(), "the probe is removed");
    }

    #[test]
    fn first_file_walks_in_name_order() {
        let dir = TempDir::new("walk");
        fs::create_dir_all(dir.0.join("a/b")).expect("dirs");
        fs::write(dir.0.join("a/b/f"), "").expect("write");
        fs::write(dir.0.join("z"), "").expect("write");
        assert_eq!(first_file(&dir.0, 3), Some(dir.0.join("a/b/f")));
        assert_eq!(first_file(&dir.0, 1), Some(dir.0.join("z")), "a/b/f is too deep");
    }
}
