//! Where a task's brig-vmm runs: in its jail (brig-jailer, crate `brig-policy`,
//! docs/jail.md), or, with `jail = false` (development only), directly.
//!
//! [`Layout`] says where brig-vmm's files are on each side: the shim reaches the
//! sockets and console through the host paths, brig-vmm opens the jail paths.

use std::path::{Path, PathBuf};

use brig_policy::jail::uids::{HostIds, Lease, UidRange};
use brig_policy::jail::{self as policy, CgroupSpec, Device, JailFile, JailSpec, Rlimits};

use crate::config::Config;
use crate::error::ShimError;
use crate::files;
use crate::sandbox::Size;

/// The jail's root inside the task's state directory.
const JAIL_ROOT: &str = "jail";
/// Paths brig-vmm sees inside the jail.
/// Where the kernel sits in every jail (brig snapshot reads it through `/proc/PID/root`).
pub const JAIL_KERNEL: &str = "/vmlinux";
/// Where the initramfs sits in every jail.
pub const JAIL_INITRAMFS: &str = "/initramfs.cpio";
const JAIL_VM_JSON: &str = "/vm.json";
const JAIL_ROOTFS: &str = "/images/rootfs.img";
/// brig-vmm's threads besides its vCPUs (main, and room for the runtime's), plus the jailer.
const EXTRA_TASKS: u64 = 8;
/// Room above guest memory for the files brig-vmm writes (console, saved state).
const FSIZE_ROOM: u64 = 1 << 30;
const NOFILE: u64 = 4096;

/// brig-vmm's files, as the shim reaches them and as brig-vmm opens them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Host side.
    pub vsock: PathBuf,
    pub api: PathBuf,
    pub console: PathBuf,
    /// brig-vmm's side (the same as the host's without a jail).
    pub vm: VmPaths,
}

/// What brig-vmm is told (in `vm.json` and on its command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub rootfs: PathBuf,
    pub vsock: PathBuf,
    pub api: PathBuf,
    pub console: PathBuf,
    pub vm_json: PathBuf,
    /// The tmpfs guest RAM lives in (the jail's [`policy::JAIL_MEMORY`]); `None`: a memfd.
    pub memory_dir: Option<PathBuf>,
}

impl Layout {
    pub fn new(config: &Config, dir: &Path, rootfs: &Path) -> Layout {
        if !config.jail {
            let vm = VmPaths {
                kernel: config.kernel.clone(),
                initramfs: config.initramfs.clone(),
                rootfs: rootfs.to_path_buf(),
                vsock: dir.join("vsock.sock"),
                api: dir.join("api.sock"),
                console: dir.join("console.log"),
                vm_json: dir.join("vm.json"),
                memory_dir: None,
            };
            return Layout { vsock: vm.vsock.clone(), api: vm.api.clone(), console: vm.console.clone(), vm };
        }
        let state = dir.join(JAIL_ROOT).join(policy::STATE_DIR_NAME);
        let inside = |name: &str| Path::new(policy::JAIL_STATE).join(name);
        Layout {
            vsock: state.join("vsock.sock"),
            api: state.join("api.sock"),
            console: state.join("console.log"),
            vm: VmPaths {
                kernel: JAIL_KERNEL.into(),
                initramfs: JAIL_INITRAMFS.into(),
                rootfs: JAIL_ROOTFS.into(),
                vsock: inside("vsock.sock"),
                api: inside("api.sock"),
                console: inside("console.log"),
                vm_json: JAIL_VM_JSON.into(),
                memory_dir: config.huge_pages.then(|| policy::JAIL_MEMORY.into()),
            },
        }
    }
}

/// What a jailed sandbox holds on the host besides its state directory: its uid
/// lease and its cgroup. Released by [`Jail::release`], or by [`release_recorded`]
/// after the shim died.
#[derive(Debug)]
pub struct Jail {
    lease: Lease,
    cgroup: PathBuf,
    released: std::sync::atomic::AtomicBool,
}

impl Jail {
    /// Kills what is left in the cgroup and removes it, then gives the uid back;
    /// once (a failed start and a stop may both call it). A cgroup that cannot be
    /// removed keeps its uid leased: no other sandbox gets a uid with processes.
    pub fn release(&self) {
        if self.released.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        release(&self.cgroup, &self.lease);
    }
}

fn release(cgroup: &Path, lease: &Lease) {
    match policy::remove_cgroup(cgroup) {
        Ok(()) => lease.release(),
        Err(e) => log::warn!(
            "cannot remove cgroup {}: {e}; uid {} stays leased ({})",
            cgroup.display(),
            lease.uid,
            lease.path.display()
        ),
    }
}

/// The sandbox's name: its state directory's (a digest of namespace and id).
fn sandbox_name(dir: &Path) -> String {
    dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn leases(config: &Config) -> PathBuf {
    config.state_dir.join("uids")
}

/// The sandbox's cgroup, below the cgroup v2 root.
fn cgroup_of(config: &Config, name: &str) -> PathBuf {
    Path::new(&config.jail_cgroup_parent).join(name)
}

/// Leases a uid, writes `jail.json`, and returns the brig-jailer command that
/// runs brig-vmm with `vmm_args` in the jail.
pub fn prepare(
    config: &Config,
    dir: &Path,
    size: Size,
    rootfs: &Path,
    vmm_args: Vec<String>,
    keep_fds: Vec<i32>,
    netns: Option<PathBuf>,
) -> Result<(std::process::Command, Jail), ShimError> {
    let range = UidRange { first: config.jail_uid_first, count: config.jail_uid_count };
    range
        .check(&HostIds::read())
        .map_err(|e| ShimError::FailedPrecondition(format!("{e} (in {})", crate::config::DEFAULT_PATH)))?;
    let name = sandbox_name(dir);
    let lease = Lease::take(&leases(config), range, &name).map_err(ShimError::io("leasing a jail uid"))?;
    let cgroup = cgroup_of(config, &name);
    let jail = Jail { lease, cgroup: cgroup.clone(), released: false.into() };
    // brig-vmm reads its own vm.json (mounted read-only): the sandbox uid's alone.
    let (uid, gid) = (nix::unistd::Uid::from_raw(jail.lease.uid), nix::unistd::Gid::from_raw(jail.lease.uid));
    if let Err(e) = nix::unistd::chown(&dir.join("vm.json"), Some(uid), Some(gid)) {
        jail.release();
        return Err(ShimError::Internal(format!("chown {}/vm.json: {e}", dir.display())));
    }
    let memory = size.memory_mib + config.vmm_memory_overhead_mib;
    let spec = JailSpec {
        id: name,
        root: dir.join(JAIL_ROOT),
        uid: jail.lease.uid,
        gid: jail.lease.uid,
        exec: config.vmm.clone(),
        args: vmm_args,
        files: vec![
            JailFile { host: config.kernel.clone(), jail: JAIL_KERNEL.into(), writable: false },
            JailFile { host: config.initramfs.clone(), jail: JAIL_INITRAMFS.into(), writable: false },
            JailFile { host: dir.join("vm.json"), jail: JAIL_VM_JSON.into(), writable: false },
            JailFile { host: rootfs.to_path_buf(), jail: JAIL_ROOTFS.into(), writable: false },
        ],
        devices: vec![Device::Kvm],
        cgroup: Some(CgroupSpec {
            path: cgroup,
            memory_max: memory << 20,
            pids_max: u64::from(size.vcpus) + EXTRA_TASKS,
            cpu_max: size.cpu_max,
        }),
        netns,
        rlimits: Rlimits {
            nofile: NOFILE,
            fsize: (size.memory_mib << 20) + FSIZE_ROOM,
            nproc: u64::from(size.vcpus) + EXTRA_TASKS,
        },
        landlock: config.jail_landlock,
        memory_tmpfs: config.huge_pages.then_some(size.memory_mib << 20),
        keep_fds,
    };
    let written = serde_json::to_vec_pretty(&spec)
        .map_err(|e| ShimError::Internal(format!("encoding jail.json: {e}")))
        .and_then(|body| files::write_private(&dir.join("jail.json"), body).map_err(ShimError::from));
    if let Err(e) = written {
        jail.release();
        return Err(e);
    }
    let mut cmd = std::process::Command::new(&config.jailer);
    cmd.arg("--spec").arg(dir.join("jail.json")).env_clear();
    Ok((cmd, jail))
}

/// Releases what the sandbox in `dir` holds (containerd's `shim delete`, after the
/// shim died): its cgroup, killing what still runs there, then its uid lease. Both
/// follow from the configuration and the sandbox's name, not from a file in `dir`.
pub fn release_recorded(config: &Config, dir: &Path) {
    let name = sandbox_name(dir);
    let cgroup = cgroup_of(config, &name);
    match Lease::find(&leases(config), &name) {
        Some(lease) => release(&cgroup, &lease),
        None => {
            if let Err(e) = policy::remove_cgroup(&cgroup) {
                log::warn!("cannot remove cgroup {}: {e}", cgroup.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jailed_vm_gets_jail_paths_and_the_shim_the_host_side() {
        let config = Config::default();
        let layout = Layout::new(&config, Path::new("/run/brig/0a1b"), Path::new("/var/lib/brig/images/k.ext4"));
        assert_eq!(layout.api, Path::new("/run/brig/0a1b/jail/state/api.sock"));
        assert_eq!(layout.vm.api, Path::new("/state/api.sock"));
        assert_eq!(layout.vm.rootfs, Path::new("/images/rootfs.img"));
        assert_eq!(layout.vm.console, Path::new("/state/console.log"));
        let open = Config { jail: false, ..Config::default() };
        let layout = Layout::new(&open, Path::new("/run/brig/0a1b"), Path::new("/img"));
        assert_eq!(layout.api, layout.vm.api);
        assert_eq!(layout.vm.rootfs, Path::new("/img"));
    }

    #[test]
    fn the_jail_spec_holds_the_vms_files_limits_and_a_leased_uid() {
        let root = std::env::temp_dir().join(format!("brig-shim-jail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("0a1b2c3d");
        files::private_dir(&dir).expect("dir");
        files::write_private(&dir.join("vm.json"), "{}").expect("vm.json");
        let config = Config { state_dir: root.clone(), ..Config::default() };
        let size = Size { vcpus: 2, memory_mib: 256, cpu_max: Some((150_000, 100_000)) };
        let args = vec!["--config".into(), "/vm.json".into()];
        let (cmd, jail) = prepare(&config, &dir, size, Path::new("/img"), args, vec![7], None).expect("prepare");
        assert_eq!(cmd.get_program(), config.jailer.as_os_str());
        assert_eq!(cmd.get_envs().count(), 0, "the jailer starts with an empty environment");
        let spec = JailSpec::from_file(&dir.join("jail.json")).expect("jail.json");
        assert_eq!(spec.uid, jail.lease.uid);
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir.join("vm.json")).expect("vm.json"));
        assert_eq!(owner, spec.uid, "brig-vmm can read its vm.json");
        assert!(spec.uid >= config.jail_uid_first && spec.uid < config.jail_uid_first + config.jail_uid_count);
        assert_eq!(spec.devices, vec![Device::Kvm]);
        assert_eq!(spec.keep_fds, vec![7], "the tap brig-vmm inherits");
        assert!(spec.files.iter().all(|f| !f.writable), "{:?}", spec.files);
        let cgroup = spec.cgroup.expect("cgroup");
        assert_eq!(cgroup.path, Path::new("brig/0a1b2c3d"));
        assert_eq!(cgroup.memory_max, (256 + config.vmm_memory_overhead_mib) << 20);
        assert_eq!(cgroup.cpu_max, Some((150_000, 100_000)));
        assert_eq!(cgroup.pids_max, 2 + EXTRA_TASKS);
        std::fs::remove_file(dir.join("jail.json")).expect("jail.json");
        release_recorded(&config, &dir);
        assert_eq!(Lease::find(&leases(&config), "0a1b2c3d"), None, "the lease is released without jail.json");
        jail.release();
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
