//! Paths inside a container's rootfs, resolved so that nothing escapes it.
//!
//! Every component is resolved by the kernel with `openat2(RESOLVE_IN_ROOT)`:
//! `..` stops at the rootfs and absolute symlinks are taken relative to it, as if
//! the rootfs were `/`. Mount targets are then addressed through the opened
//! descriptor (`/proc/self/fd/N`), so a symlink swapped in after resolution cannot
//! redirect the mount either.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, readlinkat, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, mkdirat, Mode, SFlag};

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("{path} must be an absolute path")]
    NotAbsolute { path: PathBuf },
    #[error("cannot resolve {path} inside the container")]
    Resolve { path: PathBuf, source: Errno },
    #[error("cannot create {path} inside the container")]
    Create { path: PathBuf, source: Errno },
}

/// What to create at the end of a path that does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

fn how(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

/// How often a lookup is retried when the kernel answers `EAGAIN`.
const EAGAIN_RETRIES: usize = 128;

/// `openat2` inside the root. With `RESOLVE_IN_ROOT` the kernel refuses a lookup
/// through `..` with `EAGAIN` if any rename or mount happened on the system while it
/// ran (it cannot then prove the walk stayed inside); such a lookup is retried.
fn open_at(dir: impl AsFd, path: &Path, how: OpenHow) -> Result<OwnedFd, Errno> {
    let mut result = openat2(dir.as_fd(), path, how);
    for _ in 0..EAGAIN_RETRIES {
        if !matches!(result, Err(Errno::EAGAIN)) {
            break;
        }
        result = openat2(dir.as_fd(), path, how);
    }
    result
}

/// The path relative to the rootfs (`/a/b` → `a/b`); `.` and `..` are left for the
/// kernel to resolve inside the root.
fn relative(path: &Path) -> Result<PathBuf, PathError> {
    if !path.is_absolute() {
        return Err(PathError::NotAbsolute { path: path.into() });
    }
    let rel: PathBuf = path.components().filter(|c| !matches!(c, Component::RootDir)).collect();
    Ok(if rel.as_os_str().is_empty() { PathBuf::from(".") } else { rel })
}

/// Opens an existing `path` inside `root` as an `O_PATH` descriptor.
pub fn open_in_root(root: impl AsFd, path: &Path) -> Result<OwnedFd, PathError> {
    let rel = relative(path)?;
    open_at(root, rel.as_path(), how(OFlag::O_PATH)).map_err(|source| PathError::Resolve { path: path.into(), source })
}

/// Opens `path` inside `root`, creating what is missing: directories, and for
/// [`Kind::File`] the final file. A dangling symlink on the way is followed (inside
/// the root) and its target created, as a kernel lookup would resolve it.
pub fn create_in_root(root: &OwnedFd, path: &Path, kind: Kind) -> Result<OwnedFd, PathError> {
    let create_err = |source| PathError::Create { path: path.into(), source };
    let mut current = relative(path)?;
    // Each round creates one component or follows one symlink.
    for _ in 0..MAX_ROUNDS {
        match open_at(root, current.as_path(), how(OFlag::O_PATH)) {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) => {}
            Err(source) => return Err(PathError::Resolve { path: path.into(), source }),
        }
        let components: Vec<Component> = current.components().collect();
        let prefix = |n: usize| -> PathBuf {
            let p: PathBuf = components[..n].iter().collect();
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p
            }
        };
        // The first component that does not exist; any other failure is an error.
        let mut missing = None;
        for i in 0..components.len() {
            match open_at(root, prefix(i + 1).as_path(), how(OFlag::O_PATH)) {
                Ok(_) => {}
                Err(Errno::ENOENT) => {
                    missing = Some(i);
                    break;
                }
                Err(source) => return Err(PathError::Resolve { path: path.into(), source }),
            }
        }
        let missing = missing.ok_or_else(|| create_err(Errno::ENOENT))?;
        let parent = open_at(root, prefix(missing).as_path(), how(OFlag::O_PATH | OFlag::O_DIRECTORY))
            .map_err(|source| PathError::Resolve { path: path.into(), source })?;
        let name = components[missing].as_os_str();
        let rest: PathBuf = components[missing + 1..].iter().collect();
        match fstatat(&parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK => {
                let target = PathBuf::from(readlinkat(&parent, name).map_err(create_err)?);
                current = if target.is_absolute() { relative(&target)? } else { prefix(missing).join(target) };
                current.push(rest);
            }
            Ok(_) => return Err(create_err(Errno::ENOENT)),
            Err(Errno::ENOENT) if missing + 1 == components.len() && kind == Kind::File => {
                let mode = Mode::from_bits_truncate(0o644);
                let file = open_at(&parent, Path::new(name), how(OFlag::O_CREAT | OFlag::O_WRONLY).mode(mode));
                drop(file.map_err(create_err)?);
            }
            Err(Errno::ENOENT) => match mkdirat(&parent, name, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(source) => return Err(create_err(source)),
            },
            Err(source) => return Err(create_err(source)),
        }
    }
    Err(create_err(Errno::ELOOP))
}

/// Bound on creation rounds (components plus symlinks followed).
const MAX_ROUNDS: usize = 256;

/// The `/proc/self/fd/N` path of a descriptor, for syscalls that take paths.
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("brig-paths-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("root/etc")).expect("dirs");
        std::fs::create_dir_all(dir.join("outside")).expect("dirs");
        dir
    }

    fn root_fd(dir: &Path) -> OwnedFd {
        nix::fcntl::open(&dir.join("root"), OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .expect("root")
    }

    #[test]
    fn symlinks_and_dotdot_cannot_leave_the_root() {
        let dir = scratch("escape");
        let root = root_fd(&dir);
        // An absolute symlink pointing at the host, and a relative one climbing out.
        symlink(dir.join("outside"), dir.join("root/etc/abs")).expect("symlink");
        symlink("../../../../../outside", dir.join("root/etc/rel")).expect("symlink");
        for path in ["/etc/abs/x", "/etc/rel/x", "/../../outside/x"] {
            create_in_root(&root, Path::new(path), Kind::Dir).expect("created inside");
        }
        assert!(std::fs::read_dir(dir.join("outside")).expect("outside").next().is_none(), "nothing created outside");
        // They were created inside the root, where the symlinks point when the root is `/`.
        assert!(dir.join("root").join(dir.join("outside/x").strip_prefix("/").expect("abs")).is_dir());
        assert!(dir.join("root/outside/x").is_dir());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn lookups_through_dotdot_survive_renames_elsewhere() {
        let dir = scratch("renames");
        let root = root_fd(&dir);
        symlink("../../outside", dir.join("root/etc/up")).expect("symlink");
        // Any rename on the system makes the kernel refuse a `..` lookup with EAGAIN.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let renamer = {
            let (stop, a, b) = (stop.clone(), dir.join("outside/a"), dir.join("outside/b"));
            std::fs::write(&a, "").expect("file");
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::fs::rename(&a, &b).expect("rename");
                    std::fs::rename(&b, &a).expect("rename");
                    std::thread::sleep(std::time::Duration::from_micros(20));
                }
            })
        };
        let results: Vec<_> = (0..300)
            .map(|i| create_in_root(&root, Path::new(&format!("/etc/../etc/up/d{i}")), Kind::Dir).map(drop))
            .collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        renamer.join().expect("renamer");
        for result in results {
            result.expect("created despite concurrent renames");
        }
        assert_eq!(std::fs::read_dir(dir.join("root/outside")).expect("inside").count(), 300);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn files_are_created_and_relative_paths_refused() {
        let dir = scratch("files");
        let root = root_fd(&dir);
        create_in_root(&root, Path::new("/dev/console"), Kind::File).expect("file");
        assert!(dir.join("root/dev/console").is_file());
        open_in_root(&root, Path::new("/dev/console")).expect("opens");
        assert!(matches!(
            open_in_root(&root, Path::new("/nope")),
            Err(PathError::Resolve { source: Errno::ENOENT, .. })
        ));
        assert!(matches!(create_in_root(&root, Path::new("etc/x"), Kind::Dir), Err(PathError::NotAbsolute { .. })));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
