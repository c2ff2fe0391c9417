//! What a task's state directory tells an operator (the `brig` CLI): which task it
//! is, where its brig-vmm's control socket is, and what the shim wrote about it.
//! Read only; the live state (running or paused, uptime) comes from brig-vmm's
//! control socket, never from the guest.
//!
//! Files read (all written by the shim, root's, in a 0700 directory): `task`
//! (`namespace/id` and the bundle), `vm.json` (vCPUs, memory), `vmm.pid`, and
//! `jail.json` when the VM is jailed (the host side of its rootfs image).

use std::path::{Path, PathBuf};

use brig_policy::jail::{JailSpec, STATE_DIR_NAME};
use brig_vmm_api::config::VmConfig;

use crate::config::Config;
use crate::sandbox::ROOTFS_SERIAL;

/// One task's state directory, as the shim left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    pub dir: PathBuf,
    pub namespace: String,
    pub id: String,
    pub bundle: PathBuf,
    /// brig-vmm's host pid (absent before the VM started).
    pub vmm_pid: Option<u32>,
    pub vcpus: Option<u8>,
    pub memory_mib: Option<u64>,
    /// The rootfs block image on the host.
    pub rootfs: Option<PathBuf>,
    /// brig-vmm's control socket, host side.
    pub api: PathBuf,
    /// brig-vmm's hybrid vsock socket (the agent behind it).
    pub vsock: PathBuf,
    /// The guest console log, host side (in the jail's `state/`: the sandbox uid's).
    pub console: PathBuf,
    pub jailed: bool,
    /// The version of the shim that started it (its task file's third line).
    pub shim_version: Option<String>,
}

impl TaskRecord {
    /// Reads the task in `dir`; `None` if `dir` is not a task's (no `task` file).
    pub fn read(dir: &Path) -> Option<TaskRecord> {
        let task = std::fs::read_to_string(dir.join("task")).ok()?;
        let mut lines = task.lines();
        let (namespace, id) = lines.next()?.split_once('/')?;
        let bundle = PathBuf::from(lines.next().unwrap_or_default());
        let shim_version = lines.next().and_then(|l| l.strip_prefix("shim ")).map(str::to_owned);
        let vm: Option<VmConfig> =
            std::fs::read(dir.join("vm.json")).ok().and_then(|body| serde_json::from_slice(&body).ok());
        let jail = JailSpec::from_file(&dir.join("jail.json")).ok();
        let disk = vm.as_ref().and_then(|vm| vm.block.iter().find(|b| b.serial.as_deref() == Some(ROOTFS_SERIAL)));
        // Jailed, vm.json names the jail's path, and jail.json the host file behind it.
        let rootfs = match &jail {
            Some(jail) => disk.and_then(|b| jail.files.iter().find(|f| f.jail == b.path)).map(|f| f.host.clone()),
            None => disk.map(|b| b.path.clone()),
        };
        let jailed = jail.is_some();
        let state = if jailed { dir.join("jail").join(STATE_DIR_NAME) } else { dir.to_path_buf() };
        Some(TaskRecord {
            dir: dir.to_path_buf(),
            namespace: namespace.to_owned(),
            id: id.to_owned(),
            bundle,
            vmm_pid: std::fs::read_to_string(dir.join("vmm.pid")).ok().and_then(|p| p.trim().parse().ok()),
            vcpus: vm.as_ref().map(|vm| vm.machine.vcpus),
            memory_mib: vm.as_ref().map(|vm| vm.machine.memory_mib),
            rootfs,
            api: state.join("api.sock"),
            vsock: state.join("vsock.sock"),
            console: state.join("console.log"),
            jailed,
            shim_version,
        })
    }

    /// Whether the recorded brig-vmm pid is a live process.
    pub fn vmm_alive(&self) -> bool {
        self.vmm_pid.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
    }

    /// The OCI spec's annotations (CRI puts the pod and image names there).
    pub fn annotations(&self) -> std::collections::BTreeMap<String, String> {
        let spec: Option<serde_json::Value> =
            std::fs::read(self.bundle.join("config.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
        spec.and_then(|spec| serde_json::from_value(spec.get("annotations")?.clone()).ok()).unwrap_or_default()
    }
}

/// Every task in the configured state directory, ordered by namespace and id.
pub fn list(config: &Config) -> std::io::Result<Vec<TaskRecord>> {
    let entries = match std::fs::read_dir(&config.state_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut tasks: Vec<TaskRecord> = entries.flatten().filter_map(|e| TaskRecord::read(&e.path())).collect();
    tasks.sort_by(|a, b| (&a.namespace, &a.id).cmp(&(&b.namespace, &b.id)));
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files;
    use crate::jail::Layout;
    use crate::sandbox::{vm_config, Size};

    #[test]
    fn a_task_directory_reads_back_as_the_shim_wrote_it() {
        let root = std::env::temp_dir().join(format!("brig-record-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let config = Config { state_dir: root.clone(), jail: false, ..Config::default() };
        let dir = root.join("0a1b");
        files::private_dir(&dir).expect("dir");
        files::write_private(&dir.join("task"), "default/web\n/run/containerd/bundle/web\nshim 0.1.0\n").expect("task");
        let layout = Layout::new(&config, &dir, Path::new("/var/lib/brig/images/k.ext4"));
        let vm = vm_config(&config, &layout.vm, Size { vcpus: 2, memory_mib: 256, cpu_max: None });
        files::write_private(&dir.join("vm.json"), serde_json::to_vec(&vm).expect("json")).expect("vm.json");
        files::write_private(&dir.join("vmm.pid"), "4242").expect("pid");
        files::private_dir(&root.join("uids")).expect("not a task");
        let tasks = list(&config).expect("list");
        assert_eq!(tasks.len(), 1, "{tasks:?}");
        let task = &tasks[0];
        assert_eq!((task.namespace.as_str(), task.id.as_str()), ("default", "web"));
        assert_eq!((task.vcpus, task.memory_mib, task.vmm_pid), (Some(2), Some(256), Some(4242)));
        assert_eq!(task.rootfs.as_deref(), Some(Path::new("/var/lib/brig/images/k.ext4")));
        assert_eq!(task.api, layout.api, "the shim's host-side socket");
        assert_eq!(task.console, layout.console);
        assert_eq!(task.vsock, layout.vsock);
        assert_eq!(task.shim_version.as_deref(), Some("0.1.0"));
        assert!(!task.jailed);
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
