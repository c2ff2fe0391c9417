//! The jail's filesystem: a root directory on the host holding only what this VM
//! needs, bind-mounted in a mount namespace of its own, then `pivot_root`.
//!
//! The root directory itself lives on the host (so the shim reaches the sockets
//! brig-vmm makes in `state/`); every mount is made inside the jail's mount
//! namespace and goes away with it, also when brig-vmm is SIGKILLed.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chown, pivot_root, Gid, Uid};

use super::{JailError, JailSpec, JAIL_MEMORY};

/// Makes the root (0755, root's) and its `state/` (0700, the sandbox uid's).
/// The root must be new, in a directory only root can change: otherwise it would
/// not be this VM's alone.
pub fn make_root(spec: &JailSpec) -> Result<(), JailError> {
    use std::os::unix::fs::MetadataExt;
    let root = &spec.root;
    let parent = root.parent().unwrap_or(Path::new("/"));
    let meta = std::fs::metadata(parent).map_err(JailError::step(format!("reading {}", parent.display())))?;
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(JailError::Invalid(format!(
            "jail root {}: its directory {} must be root's and writable by root alone (it is uid {}, mode {:o})",
            root.display(),
            parent.display(),
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    std::fs::DirBuilder::new().mode(0o755).create(root).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => JailError::Invalid(format!(
            "jail root {} already exists: another VM's, or a leftover (remove it)",
            root.display()
        )),
        _ => JailError::step(format!("creating jail root {}", root.display()))(e),
    })?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))
        .map_err(JailError::step(format!("chmod {}", root.display())))?;
    let state = spec.host_state_dir();
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&state)
        .map_err(JailError::step(format!("creating {}", state.display())))?;
    chown(&state, Some(Uid::from_raw(spec.uid)), Some(Gid::from_raw(spec.gid)))
        .map_err(JailError::nix(format!("chown {}", state.display())))?;
    Ok(())
}

/// New mount, IPC, UTS and cgroup namespaces (the sandbox's cgroup, entered
/// before, becomes its `/`), and the sandbox's network namespace (a new, empty one
/// when it has none). Called in the child, already in the new PID namespace.
pub fn enter_namespaces(spec: &JailSpec) -> Result<(), JailError> {
    let mut flags =
        CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWCGROUP;
    if spec.netns.is_none() {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    nix::sched::unshare(flags).map_err(JailError::nix("unshare(mount, IPC, UTS, cgroup, network namespaces)"))?;
    if let Some(netns) = &spec.netns {
        let ns = std::fs::File::open(netns)
            .map_err(JailError::step(format!("opening network namespace {}", netns.display())))?;
        nix::sched::setns(ns, CloneFlags::CLONE_NEWNET)
            .map_err(JailError::nix(format!("joining network namespace {}", netns.display())))?;
    }
    nix::unistd::sethostname("brig-vmm").map_err(JailError::nix("sethostname"))?;
    Ok(())
}

/// Mounts the jail's contents and makes it the root.
pub fn build_and_pivot(spec: &JailSpec) -> Result<(), JailError> {
    let none: Option<&str> = None;
    // Nothing done here may reach the host's mounts.
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none).map_err(JailError::nix("making / private"))?;
    let root = &spec.root;
    bind(root, root, MsFlags::MS_NOSUID)?;
    bind(
        &spec.exec,
        &placeholder(root, &spec.jail_exec(), false)?,
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )?;
    for file in &spec.files {
        let target = placeholder(root, &file.jail, false)?;
        let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        if !file.writable {
            flags |= MsFlags::MS_RDONLY;
        }
        bind(&file.host, &target, flags)?;
    }
    for device in &spec.devices {
        let (path, major, minor) = device.node();
        let node = inside(root, Path::new(path));
        make_parent(&node)?;
        mknod(&node, SFlag::S_IFCHR, Mode::from_bits_truncate(0o600), makedev(major, minor))
            .map_err(JailError::nix(format!("mknod {}", node.display())))?;
        chown(&node, Some(Uid::from_raw(spec.uid)), Some(Gid::from_raw(spec.gid)))
            .map_err(JailError::nix(format!("chown {}", node.display())))?;
    }
    // /proc of the jail's own PID namespace: brig-vmm reads its own status there.
    let proc = inside(root, Path::new("/proc"));
    std::fs::DirBuilder::new()
        .mode(0o555)
        .create(&proc)
        .map_err(JailError::step(format!("creating {}", proc.display())))?;
    mount(
        Some("proc"),
        &proc,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("hidepid=2"),
    )
    .map_err(JailError::nix(format!("mounting proc on {}", proc.display())))?;
    if let Some(bytes) = spec.memory_tmpfs {
        memory_tmpfs(spec, bytes)?;
    }
    // The root is read-only from here (device nodes and mount points are made);
    // only state/ stays writable, without exec, suid or devices.
    let state = spec.host_state_dir();
    bind(&state, &state, MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC)?;
    remount(root, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC)?;
    // pivot_root(".", "."): the old root ends up on top of the new one, and is
    // then unmounted; no directory of it is left in the jail.
    std::env::set_current_dir(root).map_err(JailError::step(format!("chdir {}", root.display())))?;
    pivot_root(".", ".").map_err(JailError::nix("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(JailError::nix("unmounting the old root"))?;
    std::env::set_current_dir("/").map_err(JailError::step("chdir /"))?;
    Ok(())
}

/// The tmpfs for guest RAM at [`JAIL_MEMORY`]: just large enough, the sandbox uid's,
/// `huge=within_size` so that the guest gets 2 MiB pages; a kernel without huge
/// pages for tmpfs refuses that option, and gets the tmpfs without it (brig-vmm
/// then logs that the guest has 4 KiB pages, and why).
fn memory_tmpfs(spec: &JailSpec, bytes: u64) -> Result<(), JailError> {
    const HUGE: u64 = 2 << 20;
    let target = placeholder(&spec.root, Path::new(JAIL_MEMORY), true)?;
    let size = bytes.div_ceil(HUGE) * HUGE;
    let base = format!("size={size},nr_inodes=16,mode=0700,uid={},gid={}", spec.uid, spec.gid);
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let huge = format!("{base},huge=within_size");
    let mounted = mount(Some("brig-memory"), &target, Some("tmpfs"), flags, Some(huge.as_str()));
    match mounted {
        Err(nix::errno::Errno::EINVAL) => {
            mount(Some("brig-memory"), &target, Some("tmpfs"), flags, Some(base.as_str()))
        }
        other => other,
    }
    .map_err(JailError::nix(format!("mounting the guest-memory tmpfs on {}", target.display())))
}

/// `path` (absolute inside the jail) under the jail root on the host.
fn inside(root: &Path, path: &Path) -> std::path::PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn make_parent(path: &Path) -> Result<(), JailError> {
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(JailError::step(format!("creating {}", parent.display())))?;
    }
    Ok(())
}

/// An empty file (or directory) to bind-mount onto.
fn placeholder(root: &Path, path: &Path, dir: bool) -> Result<std::path::PathBuf, JailError> {
    let target = inside(root, path);
    make_parent(&target)?;
    let made = if dir {
        std::fs::DirBuilder::new().mode(0o755).create(&target)
    } else {
        std::fs::OpenOptions::new().write(true).create_new(true).open(&target).map(drop)
    };
    made.map_err(JailError::step(format!("creating mount point {}", target.display())))?;
    Ok(target)
}

/// A bind mount, then a remount that applies `flags` (a bind mount ignores them).
fn bind(source: &Path, target: &Path, flags: MsFlags) -> Result<(), JailError> {
    let none: Option<&str> = None;
    mount(Some(source), target, none, MsFlags::MS_BIND, none).map_err(JailError::nix(format!(
        "bind-mounting {} on {}",
        source.display(),
        target.display()
    )))?;
    remount(target, flags)
}

/// Applies `flags` to the bind mount at `target`.
fn remount(target: &Path, flags: MsFlags) -> Result<(), JailError> {
    let none: Option<&str> = None;
    mount(none, target, none, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags, none)
        .map_err(JailError::nix(format!("remounting {} ({flags:?})", target.display())))
}
