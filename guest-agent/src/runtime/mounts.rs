//! The container's filesystem view: mounts from the spec, device nodes, the
//! console, `pivot_root`, masked and read-only paths.
//!
//! Runs in the container's new mount namespace, before `pivot_root`. Every mount
//! target is resolved inside the rootfs ([`super::paths`]); bind sources and the
//! rootfs are in the agent's (guest's) filesystem, and a relative bind source is
//! taken relative to the container's guest bundle directory.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknodat, Mode, SFlag};
use nix::unistd::{chdir, pivot_root};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use super::console::{self, ConsoleError, Pty};
use super::paths::{create_in_root, fd_path, open_in_root, Kind, PathError};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(transparent)]
    Console(#[from] ConsoleError),
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("cannot mount {what} on {target}")]
    Mount { what: String, target: PathBuf, source: Errno },
    #[error("cannot create device {path}")]
    Device { path: PathBuf, source: Errno },
    #[error("cannot pivot into the container's rootfs")]
    Pivot(#[source] Errno),
    #[error("unknown rootfs propagation `{0}`")]
    Propagation(String),
    #[error("bind source {0} leaves the bundle: a relative source must not contain `..`")]
    SourceOutsideBundle(PathBuf),
    #[error("cannot mask or protect {path}")]
    Protect { path: String, source: Errno },
}

/// Mount flags and data from OCI mount options.
#[derive(Debug, PartialEq, Eq)]
pub struct Options {
    pub flags: MsFlags,
    pub propagation: MsFlags,
    pub data: Vec<String>,
}

pub fn parse_options(options: &[String]) -> Options {
    let mut out = Options { flags: MsFlags::empty(), propagation: MsFlags::empty(), data: Vec::new() };
    for option in options {
        let (set, clear, propagation) = match option.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty(), MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty(), MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID, MsFlags::empty()),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty(), MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV, MsFlags::empty()),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty(), MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty(), MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty(), MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME, MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty(), MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty(), MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty(), MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty(), MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty(), MsFlags::empty()),
            "private" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_PRIVATE),
            "rprivate" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_PRIVATE | MsFlags::MS_REC),
            "shared" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SHARED),
            "rshared" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SHARED | MsFlags::MS_REC),
            "slave" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SLAVE),
            "rslave" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SLAVE | MsFlags::MS_REC),
            "unbindable" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_UNBINDABLE),
            "runbindable" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_UNBINDABLE | MsFlags::MS_REC),
            // containerd's copy-up hint for tmpfs; nothing to copy from in a fresh rootfs.
            "tmpcopyup" => continue,
            data => {
                out.data.push(data.to_owned());
                continue;
            }
        };
        out.flags = (out.flags | set) & !clear;
        out.propagation |= propagation;
    }
    out
}

fn mount_err(what: &str, target: &Path) -> impl FnOnce(Errno) -> MountError {
    let (what, target) = (what.to_owned(), target.to_owned());
    move |source| MountError::Mount { what, target, source }
}

/// What [`setup`] needs besides the spec.
#[derive(Debug)]
pub struct Setup<'a> {
    /// The rootfs, in the agent's mount namespace.
    pub rootfs: &'a Path,
    /// Relative bind sources are taken from here.
    pub bundle: &'a Path,
    /// The container's cgroup directory when it has no cgroup namespace of its own:
    /// a `cgroup` mount then shows this directory, as runc makes it, not the root.
    pub own_cgroup: Option<&'a Path>,
    /// Make a pty in the container and bind its slave on `/dev/console`.
    pub terminal: bool,
}

/// Sets up every spec mount inside the rootfs and pivots into it; returns the
/// container's terminal if one was asked for.
pub fn setup(spec: &Spec, setup: &Setup<'_>) -> Result<Option<Pty>, MountError> {
    let (rootfs, bundle) = (setup.rootfs, setup.bundle);
    let linux = spec.linux().as_ref();
    let propagation = match linux.and_then(|l| l.rootfs_propagation().as_deref()) {
        None | Some("") | Some("rslave") | Some("slave") => MsFlags::MS_SLAVE,
        Some("rprivate") | Some("private") => MsFlags::MS_PRIVATE,
        Some("rshared") | Some("shared") => MsFlags::MS_SHARED,
        Some("runbindable") | Some("unbindable") => MsFlags::MS_UNBINDABLE,
        Some(other) => return Err(MountError::Propagation(other.to_owned())),
    };
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | propagation, None::<&str>)
        .map_err(mount_err("propagation", Path::new("/")))?;
    // pivot_root needs the new root to be a mount point.
    mount(Some(rootfs), rootfs, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(mount_err("the rootfs", rootfs))?;
    let root = open(rootfs, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(mount_err("the rootfs", rootfs))?;

    let mut dev_from_spec = false;
    for m in spec.mounts().as_deref().unwrap_or_default() {
        dev_from_spec |= m.destination() == Path::new("/dev");
        match (m.typ().as_deref(), setup.own_cgroup) {
            (Some("cgroup" | "cgroup2"), Some(own)) => mount_one(&root, &cgroup_bind(m, own), bundle)?,
            _ => mount_one(&root, m, bundle)?,
        }
    }
    if dev_from_spec {
        create_devices(&root, linux.and_then(|l| l.devices().as_deref()).unwrap_or_default())?;
    }
    drop(root);

    chdir(rootfs).map_err(MountError::Pivot)?;
    pivot_root(".", ".").map_err(MountError::Pivot)?;
    umount2(".", MntFlags::MNT_DETACH).map_err(MountError::Pivot)?;
    chdir("/").map_err(MountError::Pivot)?;
    let pty = if setup.terminal {
        let pty = console::create()?;
        console::mount_console(&pty.slave)?;
        Some(pty)
    } else {
        None
    };

    for path in linux.and_then(|l| l.masked_paths().as_deref()).unwrap_or_default() {
        mask(path)?;
    }
    for path in linux.and_then(|l| l.readonly_paths().as_deref()).unwrap_or_default() {
        make_readonly(path)?;
    }
    if spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false) {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(None::<&str>, "/", None::<&str>, flags, None::<&str>)
            .map_err(mount_err("read-only root", Path::new("/")))?;
    }
    Ok(pty)
}

/// A `cgroup` mount as a bind of the container's own cgroup directory.
fn cgroup_bind(m: &Mount, own: &Path) -> Mount {
    let mut options = m.options().clone().unwrap_or_default();
    options.push("rbind".into());
    let mut bind = m.clone();
    bind.set_typ(Some("bind".into())).set_source(Some(own.to_path_buf())).set_options(Some(options));
    bind
}

/// Where a bind source is: absolute as given, relative inside the bundle (never above it).
fn bind_source(bundle: &Path, source: PathBuf) -> Result<PathBuf, MountError> {
    if source.is_absolute() {
        return Ok(source);
    }
    if source.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(MountError::SourceOutsideBundle(source));
    }
    Ok(bundle.join(source))
}

fn mount_one(root: &OwnedFd, m: &Mount, bundle: &Path) -> Result<(), MountError> {
    let options = parse_options(m.options().as_deref().unwrap_or_default());
    let typ = m.typ().as_deref().unwrap_or("");
    let bind = options.flags.contains(MsFlags::MS_BIND) || typ == "bind";
    let dest = m.destination();
    let source = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
    if bind {
        let source = bind_source(bundle, source)?;
        let kind = if source.is_dir() { Kind::Dir } else { Kind::File };
        let target = create_in_root(root, dest, kind)?;
        let target_path = fd_path(&target);
        let what = source.display().to_string();
        mount(
            Some(&source),
            &target_path,
            None::<&str>,
            MsFlags::MS_BIND | (options.flags & MsFlags::MS_REC),
            None::<&str>,
        )
        .map_err(mount_err(&what, dest))?;
        // The descriptor still names the directory under the new mount: reopen to reach its root.
        let mounted = open_in_root(root, dest)?;
        let target_path = fd_path(&mounted);
        let remount = options.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
        if !remount.is_empty() {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | remount;
            mount(None::<&str>, &target_path, None::<&str>, flags, None::<&str>)
                .map_err(mount_err(&format!("{what} (remount {remount:?})"), dest))?;
        }
        if !options.propagation.is_empty() {
            mount(None::<&str>, &target_path, None::<&str>, options.propagation, None::<&str>)
                .map_err(mount_err(&format!("{what} (propagation)"), dest))?;
        }
        return Ok(());
    }
    let target = create_in_root(root, dest, Kind::Dir)?;
    let data = options.data.join(",");
    let data = (!data.is_empty()).then_some(data.as_str());
    let fstype = if typ == "cgroup" { "cgroup2" } else { typ };
    mount(Some(&source), &fd_path(&target), Some(fstype), options.flags, data)
        .map_err(mount_err(&format!("{fstype} ({})", source.display()), dest))?;
    Ok(())
}

/// The devices every container gets (as runc gives them), plus the spec's.
fn create_devices(root: &OwnedFd, extra: &[LinuxDevice]) -> Result<(), MountError> {
    const DEFAULTS: &[(&str, u64, u64)] = &[
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ];
    for &(path, major, minor) in DEFAULTS {
        mknod_in_root(root, Path::new(path), SFlag::S_IFCHR, 0o666, major, minor)?;
    }
    for device in extra {
        let kind = match device.typ() {
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            _ => SFlag::S_IFCHR,
        };
        let mode = device.file_mode().unwrap_or(0o666);
        mknod_in_root(root, device.path(), kind, mode, device.major() as u64, device.minor() as u64)?;
    }
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
        ("/dev/ptmx", "pts/ptmx"),
    ] {
        let dev = create_in_root(root, Path::new("/dev"), Kind::Dir)?;
        let name = &link["/dev/".len()..];
        match nix::unistd::symlinkat(target, &dev, name) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(source) => return Err(MountError::Device { path: link.into(), source }),
        }
    }
    Ok(())
}

fn mknod_in_root(
    root: &OwnedFd,
    path: &Path,
    kind: SFlag,
    mode: u32,
    major: u64,
    minor: u64,
) -> Result<(), MountError> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().ok_or_else(|| MountError::Device { path: path.into(), source: Errno::EINVAL })?;
    let dir = create_in_root(root, parent, Kind::Dir)?;
    match mknodat(&dir, name, kind, Mode::from_bits_truncate(mode), makedev(major, minor)) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(source) => Err(MountError::Device { path: path.into(), source }),
    }
}

/// Hides `path`: `/dev/null` over a file, an empty read-only tmpfs over a directory.
fn mask(path: &str) -> Result<(), MountError> {
    let err = |source| MountError::Protect { path: path.to_owned(), source };
    match std::fs::symlink_metadata(path) {
        Err(_) => Ok(()), // nothing there to hide
        Ok(meta) if meta.is_dir() => {
            mount(Some("tmpfs"), path, Some("tmpfs"), MsFlags::MS_RDONLY, Some("size=0")).map_err(err)
        }
        Ok(_) => mount(Some("/dev/null"), path, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(err),
    }
}

/// Makes `path` read-only (a read-only bind of itself).
fn make_readonly(path: &str) -> Result<(), MountError> {
    let err = |source| MountError::Protect { path: path.to_owned(), source };
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    mount(Some(path), path, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>).map_err(err)?;
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC;
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_bind_sources_stay_in_the_bundle() {
        let bundle = Path::new("/run/brig/bundle");
        assert_eq!(bind_source(bundle, "data".into()).expect("inside"), bundle.join("data"));
        assert_eq!(bind_source(bundle, "/dev/null".into()).expect("absolute"), Path::new("/dev/null"));
        for escape in ["../../..", "data/../../etc", ".."] {
            let err = bind_source(bundle, escape.into()).expect_err(escape);
            assert!(err.to_string().contains("leaves the bundle"), "{err}");
        }
    }

    fn opts(list: &[&str]) -> Options {
        parse_options(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options_become_flags_and_data() {
        let o = opts(&["nosuid", "noexec", "nodev", "mode=755", "size=65536k"]);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV);
        assert_eq!(o.data, vec!["mode=755", "size=65536k"]);
        let o = opts(&["rbind", "ro", "rprivate"]);
        assert_eq!(o.flags, MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY);
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        let o = opts(&["ro", "rw"]);
        assert!(!o.flags.contains(MsFlags::MS_RDONLY), "the last of ro/rw wins");
        assert!(opts(&["tmpcopyup"]).data.is_empty());
    }
}

#[cfg(test)]
mod mount_tests {
    use super::*;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};

    /// Runs `f` in a forked child in a private mount namespace; returns its exit code.
    fn in_mount_namespace(f: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the test process forks and the child only runs `f` and exits.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                let code = match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS) {
                    Ok(()) => {
                        let _ =
                            mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>);
                        f()
                    }
                    Err(_) => 99,
                };
                std::process::exit(code)
            }
            ForkResult::Parent { child } => match waitpid(child, None).expect("wait") {
                WaitStatus::Exited(_, code) => code,
                other => panic!("child ended with {other:?}"),
            },
        }
    }

    #[test]
    fn a_read_only_bind_mount_is_read_only() {
        let dir = std::env::temp_dir().join(format!("brig-mounts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("rootfs/mnt")).expect("rootfs");
        std::fs::create_dir_all(dir.join("data")).expect("data");
        std::fs::write(dir.join("data/file"), b"x").expect("file");
        let m: Mount = serde_json::from_value(serde_json::json!(
            {"destination": "/mnt/ro", "type": "bind", "source": "data", "options": ["rbind", "ro"]}
        ))
        .expect("mount");
        let (rootfs, bundle) = (dir.join("rootfs"), dir.clone());
        let code = in_mount_namespace(|| {
            let root = match open(&rootfs, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()) {
                Ok(root) => root,
                Err(_) => return 2,
            };
            if let Err(e) = mount_one(&root, &m, &bundle) {
                eprintln!("{e}: {:?}", std::error::Error::source(&e));
                return 3;
            }
            match std::fs::write(rootfs.join("mnt/ro/file"), b"y") {
                Err(e) if e.raw_os_error() == Some(libc::EROFS) => 0,
                _ => 4,
            }
        });
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert_eq!(code, 0, "2: no root, 3: mount failed, 4: still writable, 99: no namespace");
    }
}
