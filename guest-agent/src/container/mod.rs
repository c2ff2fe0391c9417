//! Containers in the guest: the agent's side of the OCI lifecycle.
//!
//! [`Manager`] keeps every container: its guest bundle directory
//! (`/run/brig/containers/<id>`, holding `config.json` and the rootfs mount), its
//! cgroup, its own process and the processes exec'd into it. Process exits arrive
//! from the [`Reaper`]; a thread per process records them for `WaitProcess`.

pub mod cgroup;
pub mod devices;
pub mod network;
pub mod rootfs;
pub mod spawn;
pub mod stdio;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use brig_protocol::agent::{Rootfs as RootfsRequest, StatsContainerResponse, Stdio};
use brig_protocol::stdio::valid_id;
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Process, Spec};

use self::cgroup::{Cgroup, CgroupError};
use self::rootfs::{Rootfs, RootfsError};
use self::spawn::{read_status, release, SealedExe, SpawnError, Spawned, Status};
use self::stdio::{ProcessIo, StdioError, StreamSource};
use crate::reaper::Reaper;
use crate::runtime::config::{ExecConfig, InitConfig, EXEC_ARG, INIT_ARG};

/// Where container bundles live in the guest.
pub const STATE_DIR: &str = "/run/brig/containers";
/// Specs and process objects larger than this are refused.
pub const MAX_SPEC: usize = 1 << 20;
/// How long a helper may take to set a container up.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors, each with the ttrpc status code the service answers with.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0} is not supported")]
    Unimplemented(String),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error(transparent)]
    Stdio(#[from] StdioError),
    #[error(transparent)]
    Devices(#[from] devices::DeviceError),
    #[error("{what}")]
    Io { what: String, source: std::io::Error },
    #[error("{what}")]
    Sys { what: String, source: nix::Error },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ContainerError {
    let what = what.into();
    move |source| ContainerError::Io { what, source }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Created => "created",
            State::Running => "running",
            State::Paused => "paused",
            State::Stopped => "stopped",
        })
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    pub signal: u32,
    pub at_unix_ns: u64,
}

#[derive(Debug)]
pub struct ProcessHandle {
    pub pid: u32,
    pub io: Arc<ProcessIo>,
    exit: Mutex<Option<Exit>>,
    exited: Condvar,
    start: Mutex<Option<std::fs::File>>,
    status: Mutex<Option<std::fs::File>>,
}

impl ProcessHandle {
    fn new(pid: u32, io: Arc<ProcessIo>, spawned: &mut Option<(std::fs::File, std::fs::File)>) -> Arc<ProcessHandle> {
        let (start, status) = spawned.take().map_or((None, None), |(a, b)| (Some(a), Some(b)));
        Arc::new(ProcessHandle {
            pid,
            io,
            exit: Mutex::new(None),
            exited: Condvar::new(),
            start: Mutex::new(start),
            status: Mutex::new(status),
        })
    }

    pub fn exit(&self) -> Option<Exit> {
        *lock(&self.exit)
    }

    /// Blocks until the process has exited.
    pub fn wait(&self) -> Exit {
        let mut exit = lock(&self.exit);
        loop {
            if let Some(e) = *exit {
                return e;
            }
            exit = self.exited.wait(exit).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Records the exit (from the reaper) and wakes waiters.
    fn record(&self, status: WaitStatus) {
        let at_unix_ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let exit = match status {
            WaitStatus::Exited(_, code) => Exit { code, signal: 0, at_unix_ns },
            WaitStatus::Signaled(_, signal, _) => Exit { code: 128 + signal as i32, signal: signal as u32, at_unix_ns },
            _ => return,
        };
        *lock(&self.exit) = Some(exit);
        self.exited.notify_all();
    }

    /// Lets the prepared process exec and waits until it has (or reports why not).
    fn release(&self) -> Result<(), ContainerError> {
        let mut start =
            lock(&self.start).take().ok_or_else(|| ContainerError::FailedPrecondition("already started".into()))?;
        let mut status =
            lock(&self.status).take().ok_or_else(|| ContainerError::FailedPrecondition("already started".into()))?;
        release(&mut start).map_err(io_err("releasing the process"))?;
        match read_status(&mut status) {
            Status::Closed | Status::Ready => Ok(()),
            Status::Failed(message) => Err(ContainerError::FailedPrecondition(message)),
        }
    }
}

#[derive(Debug)]
pub struct Container {
    pub id: String,
    dir: PathBuf,
    spec: Spec,
    cgroup: Cgroup,
    rootfs: Mutex<Option<Rootfs>>,
    init: Arc<ProcessHandle>,
    execs: Mutex<HashMap<String, Arc<ProcessHandle>>>,
    state: Mutex<State>,
}

impl Container {
    pub fn state(&self) -> State {
        let state = *lock(&self.state);
        if self.init.exit().is_some() {
            State::Stopped
        } else {
            state
        }
    }

    fn process(&self, exec_id: &str) -> Result<Arc<ProcessHandle>, ContainerError> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        lock(&self.execs)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ContainerError::NotFound(format!("process {exec_id} in {}", self.id)))
    }
}

/// All containers of this guest.
#[derive(Debug)]
pub struct Manager {
    state_dir: PathBuf,
    cgroup_root: PathBuf,
    exe: SealedExe,
    reaper: Arc<Reaper>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    oom: oom::OomWatch,
}

mod oom;

impl Manager {
    pub fn new(reaper: Arc<Reaper>) -> Result<Arc<Manager>, ContainerError> {
        let cgroup_root = PathBuf::from(cgroup::ROOT);
        cgroup::prepare(&cgroup_root)?;
        std::fs::create_dir_all(STATE_DIR).map_err(io_err(format!("creating {STATE_DIR}")))?;
        let manager = Arc::new(Manager {
            state_dir: PathBuf::from(STATE_DIR),
            cgroup_root,
            exe: SealedExe::from_self()?,
            reaper,
            containers: Mutex::new(HashMap::new()),
            oom: oom::OomWatch::default(),
        });
        oom::start(&manager);
        Ok(manager)
    }

    fn get(&self, id: &str) -> Result<Arc<Container>, ContainerError> {
        lock(&self.containers).get(id).cloned().ok_or_else(|| ContainerError::NotFound(format!("container {id}")))
    }

    pub fn containers(&self) -> Vec<Arc<Container>> {
        lock(&self.containers).values().cloned().collect()
    }

    pub fn create(
        &self,
        id: &str,
        spec_bytes: &[u8],
        rootfs: &RootfsRequest,
        stdio: &Stdio,
        interface: Option<network::Interface>,
    ) -> Result<u32, ContainerError> {
        if !valid_id(id) {
            return Err(ContainerError::Invalid(format!("container id {id:?}")));
        }
        if spec_bytes.len() > MAX_SPEC {
            return Err(ContainerError::Invalid(format!("spec of {} bytes (at most {MAX_SPEC})", spec_bytes.len())));
        }
        let spec: Spec =
            serde_json::from_slice(spec_bytes).map_err(|e| ContainerError::Invalid(format!("spec: {e}")))?;
        validate_spec(&spec)?;
        if lock(&self.containers).contains_key(id) {
            return Err(ContainerError::AlreadyExists(format!("container {id}")));
        }
        let dir = self.state_dir.join(id);
        std::fs::create_dir(&dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => ContainerError::AlreadyExists(format!("container {id}")),
            _ => ContainerError::Io { what: format!("creating {}", dir.display()), source: e },
        })?;
        let mut cleanup = Cleanup { dir: Some(dir.clone()), cgroup: None, rootfs: None, pid: None };
        std::fs::write(dir.join("config.json"), spec_bytes).map_err(io_err("writing config.json"))?;
        let rootfs_mount = Rootfs::mount(&dir, rootfs)?;
        let (rootfs_path, bundle) = (rootfs_mount.path.clone(), rootfs_mount.bundle.clone());
        cleanup.rootfs = Some(rootfs_mount);
        let cgroup = Cgroup::create(&self.cgroup_root, id)?;
        cleanup.cgroup = Some(cgroup.clone());
        let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
        if let Some(resources) = resources {
            cgroup.apply(resources)?;
        }
        let device_rules = devices::rules(resources.and_then(|r| r.devices().as_deref()).unwrap_or_default())?;
        devices::apply(cgroup.path(), &device_rules)?;
        let (io, child) = stdio::create(stdio)?;
        let terminal = stdio.terminal;
        let mut spawned = spawn::spawn(&self.exe, &self.reaper, INIT_ARG, clone_flags(&spec), child, false)?;
        let pid = spawned.pid;
        cleanup.pid = Some(pid);
        if let Err(e) = cgroup.add(pid.as_raw() as u32) {
            // The helper is already gone: its exit status says more than ESRCH.
            return Err(match spawned.exit.recv_timeout(Duration::from_secs(1)) {
                Ok(status) => ContainerError::FailedPrecondition(format!(
                    "the container helper exited at once ({})",
                    describe(status)
                )),
                Err(_) => e.into(),
            });
        }
        let config = InitConfig {
            rootfs: rootfs_path,
            bundle,
            cgroup: cgroup.path().to_path_buf(),
            spec: spec.clone(),
            terminal,
        };
        send_config(&mut spawned, &config)?;
        wait_ready(&mut spawned)?;
        if clone_flags(&spec).contains(CloneFlags::CLONE_NEWNET) {
            network::configure(pid.as_raw() as u32, interface)?;
        } else if interface.is_some() {
            return Err(ContainerError::Invalid(
                "an interface for a container without a network namespace of its own".into(),
            ));
        }
        io.receive_terminal()?;
        let Spawned { exit, start, status, .. } = spawned;
        let init = ProcessHandle::new(pid.as_raw() as u32, io, &mut Some((start, status)));
        watch_exit(init.clone(), exit);
        let container = Arc::new(Container {
            id: id.to_owned(),
            dir,
            spec,
            cgroup,
            rootfs: Mutex::new(cleanup.rootfs.take()),
            init,
            execs: Mutex::new(HashMap::new()),
            state: Mutex::new(State::Created),
        });
        cleanup.disarm();
        lock(&self.containers).insert(id.to_owned(), container);
        Ok(pid.as_raw() as u32)
    }

    /// Lets the container's process exec; with `interface`, the VM's NIC is moved
    /// into its network namespace and configured first.
    pub fn start(&self, id: &str, interface: Option<network::Interface>) -> Result<(), ContainerError> {
        let container = self.get(id)?;
        if container.state() != State::Created {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {id} is {}, not created",
                container.state()
            )));
        }
        if let Some(interface) = interface {
            if !clone_flags(&container.spec).contains(CloneFlags::CLONE_NEWNET) {
                return Err(ContainerError::Invalid(
                    "an interface for a container without a network namespace of its own".into(),
                ));
            }
            network::configure(container.init.pid, Some(interface))?;
        }
        container.init.release()?;
        *lock(&container.state) = State::Running;
        Ok(())
    }

    pub fn exec(&self, id: &str, exec_id: &str, process_bytes: &[u8], stdio: &Stdio) -> Result<u32, ContainerError> {
        let container = self.get(id)?;
        if !valid_id(exec_id) {
            return Err(ContainerError::Invalid(format!("exec id {exec_id:?}")));
        }
        if process_bytes.len() > MAX_SPEC {
            return Err(ContainerError::Invalid("process object too large".into()));
        }
        let process: Process =
            serde_json::from_slice(process_bytes).map_err(|e| ContainerError::Invalid(format!("process: {e}")))?;
        validate_process(&process)?;
        if container.state() != State::Running {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {id} is {}, not running",
                container.state()
            )));
        }
        if lock(&container.execs).contains_key(exec_id) {
            return Err(ContainerError::AlreadyExists(format!("process {exec_id} in {id}")));
        }
        let (io, child) = stdio::create(stdio)?;
        let mut spawned = spawn::spawn(&self.exe, &self.reaper, EXEC_ARG, CloneFlags::empty(), child, true)?;
        let config = ExecConfig {
            init_pid: container.init.pid,
            cgroup: container.cgroup.path().to_path_buf(),
            process,
            seccomp: container.spec.linux().as_ref().and_then(|l| l.seccomp().clone()),
            terminal: stdio.terminal,
        };
        send_config(&mut spawned, &config)?;
        // The helper forks the real process (CLONE_PARENT: our child too) and exits.
        let mut pid_text = String::new();
        if let Some(pipe) = spawned.pid_pipe.as_mut() {
            let _ = pipe.read_to_string(&mut pid_text);
        }
        let Ok(pid) = pid_text.trim().parse::<i32>() else {
            return Err(setup_failure(&mut spawned));
        };
        let exit = self.reaper.watch(Pid::from_raw(pid));
        wait_ready(&mut spawned).and_then(|()| Ok(io.receive_terminal()?)).inspect_err(|_| {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        })?;
        let Spawned { start, status, .. } = spawned;
        let handle = ProcessHandle::new(pid as u32, io, &mut Some((start, status)));
        watch_exit(handle.clone(), exit);
        lock(&container.execs).insert(exec_id.to_owned(), handle.clone());
        if let Err(e) = handle.release() {
            lock(&container.execs).remove(exec_id);
            return Err(e);
        }
        Ok(pid as u32)
    }

    pub fn signal(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<(), ContainerError> {
        let container = self.get(id)?;
        let signal =
            Signal::try_from(signal as i32).map_err(|_| ContainerError::Invalid(format!("signal {signal}")))?;
        if all {
            for pid in container.cgroup.pids()? {
                let _ = kill(Pid::from_raw(pid as i32), signal);
            }
            return Ok(());
        }
        let process = container.process(exec_id)?;
        if process.exit().is_some() {
            return Err(ContainerError::NotFound(format!("process {} (it has exited)", process.pid)));
        }
        kill(Pid::from_raw(process.pid as i32), signal)
            .map_err(|source| ContainerError::Sys { what: "kill".into(), source })
    }

    pub fn process(&self, id: &str, exec_id: &str) -> Result<Arc<ProcessHandle>, ContainerError> {
        self.get(id)?.process(exec_id)
    }

    pub fn pause(&self, id: &str, paused: bool) -> Result<(), ContainerError> {
        let container = self.get(id)?;
        let state = container.state();
        let expected = if paused { State::Running } else { State::Paused };
        if state != expected {
            return Err(ContainerError::FailedPrecondition(format!("container {id} is {state}")));
        }
        container.cgroup.freeze(paused)?;
        *lock(&container.state) = if paused { State::Paused } else { State::Running };
        Ok(())
    }

    pub fn update(&self, id: &str, resources: &[u8]) -> Result<(), ContainerError> {
        let container = self.get(id)?;
        let resources: LinuxResources =
            serde_json::from_slice(resources).map_err(|e| ContainerError::Invalid(format!("resources: {e}")))?;
        container.cgroup.apply(&resources)?;
        Ok(())
    }

    pub fn pids(&self, id: &str) -> Result<Vec<u32>, ContainerError> {
        Ok(self.get(id)?.cgroup.pids()?)
    }

    pub fn stats(&self, id: &str) -> Result<StatsContainerResponse, ContainerError> {
        Ok(self.get(id)?.cgroup.stats()?)
    }

    /// Kills whatever runs in the container and removes every trace of it.
    pub fn remove(&self, id: &str) -> Result<(), ContainerError> {
        let container = self.get(id)?;
        container.cgroup.destroy()?;
        // The processes are gone; make sure their exits were recorded before forgetting them.
        let deadline = std::time::Instant::now() + SETUP_TIMEOUT;
        while container.init.exit().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(mut rootfs) = lock(&container.rootfs).take() {
            rootfs.unmount();
        }
        let _ = std::fs::remove_dir_all(&container.dir);
        lock(&self.containers).remove(id);
        Ok(())
    }

    /// Blocks until some container's cgroup records an OOM kill, or `timeout`.
    pub fn next_oom(&self, timeout: Duration) -> Option<String> {
        self.oom.next(timeout)
    }
}

impl StreamSource for Manager {
    fn process_io(&self, container_id: &str, exec_id: &str) -> Option<Arc<ProcessIo>> {
        self.process(container_id, exec_id).ok().map(|p| p.io.clone())
    }
}

/// Undoes a half-made container on drop unless disarmed.
struct Cleanup {
    dir: Option<PathBuf>,
    cgroup: Option<Cgroup>,
    rootfs: Option<Rootfs>,
    pid: Option<Pid>,
}

impl Cleanup {
    fn disarm(&mut self) {
        self.dir = None;
        self.cgroup = None;
        self.rootfs = None;
        self.pid = None;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = kill(pid, Signal::SIGKILL);
        }
        if let Some(cgroup) = self.cgroup.take() {
            if let Err(e) = cgroup.destroy() {
                log::warn!("cleanup: {e}");
            }
        }
        if let Some(mut rootfs) = self.rootfs.take() {
            rootfs.unmount();
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn send_config<T: serde::Serialize>(spawned: &mut Spawned, config: &T) -> Result<(), ContainerError> {
    let bytes = serde_json::to_vec(config).map_err(|e| ContainerError::Invalid(format!("encoding: {e}")))?;
    let mut pipe =
        spawned.config.take().ok_or_else(|| ContainerError::FailedPrecondition("configuration already sent".into()))?;
    pipe.write_all(&bytes).map_err(io_err("sending the configuration to the helper"))?;
    Ok(())
}

/// Waits for `R`; anything else is a setup failure with the helper's message.
fn wait_ready(spawned: &mut Spawned) -> Result<(), ContainerError> {
    match read_status(&mut spawned.status) {
        Status::Ready => Ok(()),
        Status::Failed(message) => Err(ContainerError::FailedPrecondition(message)),
        Status::Closed => Err(setup_failure(spawned)),
    }
}

fn setup_failure(spawned: &mut Spawned) -> ContainerError {
    let status = spawned.exit.recv_timeout(SETUP_TIMEOUT).map(describe).unwrap_or_else(|_| "no exit status".into());
    ContainerError::FailedPrecondition(format!("the container helper died during setup ({status})"))
}

/// How a process ended, for error messages.
fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, signal, _) => format!("killed by {}", signal.as_str()),
        // The reaper forwards only exits; anything else is no exit.
        _ => "no exit status".into(),
    }
}

/// A thread that records the process's exit when the reaper reports it.
fn watch_exit(process: Arc<ProcessHandle>, exit: std::sync::mpsc::Receiver<WaitStatus>) {
    std::thread::spawn(move || {
        if let Ok(status) = exit.recv() {
            process.record(status);
        }
    });
}

/// The namespaces `clone` creates: those the spec asks for without a path
/// (cgroup is unshared by the helper once it sits in its cgroup).
fn clone_flags(spec: &Spec) -> CloneFlags {
    let mut flags = CloneFlags::empty();
    for ns in spec.linux().as_ref().and_then(|l| l.namespaces().as_deref()).unwrap_or_default() {
        if ns.path().is_some() {
            continue;
        }
        flags |= match ns.typ() {
            LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
            LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
            LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
            LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
            LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
            _ => CloneFlags::empty(),
        };
    }
    flags
}

fn validate_process(process: &Process) -> Result<(), ContainerError> {
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(ContainerError::Invalid("process.args is empty".into()));
    }
    if !process.cwd().is_absolute() {
        return Err(ContainerError::Invalid(format!("process.cwd {} is not absolute", process.cwd().display())));
    }
    Ok(())
}

/// What brig refuses before creating anything.
pub fn validate_spec(spec: &Spec) -> Result<(), ContainerError> {
    let process = spec.process().as_ref().ok_or_else(|| ContainerError::Invalid("the spec has no process".into()))?;
    validate_process(process)?;
    let linux = spec.linux().as_ref();
    for ns in linux.and_then(|l| l.namespaces().as_deref()).unwrap_or_default() {
        match (ns.typ(), ns.path()) {
            (LinuxNamespaceType::User, _) => return Err(ContainerError::Unimplemented("a user namespace".into())),
            (LinuxNamespaceType::Pid, Some(_)) => {
                return Err(ContainerError::Unimplemented("joining an existing PID namespace".into()))
            }
            (LinuxNamespaceType::Time, _) => return Err(ContainerError::Unimplemented("a time namespace".into())),
            _ => {}
        }
    }
    for mount in spec.mounts().as_deref().unwrap_or_default() {
        if !mount.destination().is_absolute() {
            return Err(ContainerError::Invalid(format!(
                "mount destination {} is not absolute",
                mount.destination().display()
            )));
        }
    }
    let paths = linux
        .map(|l| (l.masked_paths().as_deref().unwrap_or_default(), l.readonly_paths().as_deref().unwrap_or_default()));
    if let Some((masked, readonly)) = paths {
        if let Some(p) = masked.iter().chain(readonly).find(|p| !Path::new(p).is_absolute()) {
            return Err(ContainerError::Invalid(format!("path {p} is not absolute")));
        }
    }
    if let Some(seccomp) = linux.and_then(|l| l.seccomp().as_ref()) {
        let uses_notify = seccomp
            .syscalls()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|s| matches!(s.action(), oci_spec::runtime::LinuxSeccompAction::ScmpActNotify));
        if uses_notify || matches!(seccomp.default_action(), oci_spec::runtime::LinuxSeccompAction::ScmpActNotify) {
            return Err(ContainerError::Unimplemented("SCMP_ACT_NOTIFY".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).expect("spec")
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}
        })
    }

    #[test]
    fn states_and_exits_read_as_words_in_errors() {
        let words: Vec<String> =
            [State::Created, State::Running, State::Paused, State::Stopped].iter().map(State::to_string).collect();
        assert_eq!(words, ["created", "running", "paused", "stopped"]);
        let pid = Pid::from_raw(7);
        assert_eq!(describe(WaitStatus::Exited(pid, 3)), "exit status 3");
        assert_eq!(describe(WaitStatus::Signaled(pid, Signal::SIGKILL, false)), "killed by SIGKILL");
        assert_eq!(describe(WaitStatus::StillAlive), "no exit status");
    }

    #[test]
    fn a_plain_spec_is_valid_and_clones_its_namespaces() {
        let s = spec(base());
        validate_spec(&s).expect("valid");
        assert_eq!(clone_flags(&s), CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS);
    }

    #[test]
    fn bad_and_unsupported_specs_are_named() {
        let mut v = base();
        v["process"]["args"] = serde_json::json!([]);
        assert!(matches!(validate_spec(&spec(v)), Err(ContainerError::Invalid(m)) if m.contains("args")));
        let mut v = base();
        v["process"]["cwd"] = serde_json::json!("relative/dir");
        assert!(matches!(validate_spec(&spec(v)), Err(ContainerError::Invalid(m)) if m.contains("cwd")));
        let mut v = base();
        v["mounts"] = serde_json::json!([{"destination": "proc", "type": "proc"}]);
        assert!(matches!(validate_spec(&spec(v)), Err(ContainerError::Invalid(m)) if m.contains("not absolute")));
        let mut v = base();
        v["linux"]["namespaces"] = serde_json::json!([{"type": "user"}]);
        assert!(matches!(validate_spec(&spec(v)), Err(ContainerError::Unimplemented(_))));
        let mut v = base();
        v["linux"]["maskedPaths"] = serde_json::json!(["proc/kcore"]);
        assert!(matches!(validate_spec(&spec(v)), Err(ContainerError::Invalid(_))));
    }
}
