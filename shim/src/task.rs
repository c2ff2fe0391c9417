//! containerd's Task API (v2) for one task: a container running in its own VM.
//!
//! Event order follows runc's shim: `TaskCreate` after the container exists,
//! `TaskStart` after it runs, `TaskExit` once the process has exited *and* its
//! output has been copied out, `TaskDelete` when it is gone; `TaskExecAdded` /
//! `TaskExecStarted` for exec'd processes, `TaskPaused` / `TaskResumed`, `TaskOOM`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use brig_protocol::agent as agent_api;
use brig_protocol::ttrpc::context as agent_context;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused, TaskResumed,
    TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::shim_async::Task as TaskApi;
use containerd_shim::protos::topics::*;
use containerd_shim::protos::ttrpc::{self, r#async::TtrpcContext};
use containerd_shim_protos::api::{self, Status};
use containerd_shim_protos::cgroups_v2::metrics as cg;
use containerd_shim_protos::protobuf::Message;
use tokio::sync::watch;

use crate::config::Config;
use crate::error::ShimError;
use crate::image::{self, RootfsImage};
use crate::io::{self, Copies, StdioPaths};
use crate::sandbox::{Sandbox, ROOTFS_SERIAL};
use crate::spec;

/// How long after a process exits its output may still be flowing.
const DRAIN: Duration = Duration::from_secs(5);
/// Exit status reported when the VM died under a process.
pub const VM_DIED_STATUS: u32 = 255;

type TtrpcResult<T> = ttrpc::Result<T>;

fn now() -> Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32, ..Default::default() }
}

fn timestamp_from_ns(ns: u64) -> Timestamp {
    Timestamp { seconds: (ns / 1_000_000_000) as i64, nanos: (ns % 1_000_000_000) as i32, ..Default::default() }
}

fn no_deadline() -> agent_context::Context {
    agent_context::with_timeout(0)
}

fn call_timeout() -> agent_context::Context {
    agent_context::with_timeout(Duration::from_secs(60).as_nanos() as i64)
}

#[derive(Debug, Clone)]
struct Exit {
    status: u32,
    at: Timestamp,
}

/// One process: the container's own (exec_id "") or an exec'd one.
#[derive(Debug)]
struct Proc {
    exec_id: String,
    paths: StdioPaths,
    /// An exec'd process's OCI `process` object (JSON).
    spec: Vec<u8>,
    started: std::sync::atomic::AtomicBool,
    exit: watch::Sender<Option<Exit>>,
    copies: tokio::sync::Mutex<Copies>,
}

impl Proc {
    fn new(exec_id: &str, paths: StdioPaths, spec: Vec<u8>) -> Arc<Proc> {
        Arc::new(Proc {
            exec_id: exec_id.to_owned(),
            paths,
            spec,
            started: std::sync::atomic::AtomicBool::new(false),
            exit: watch::channel(None).0,
            copies: tokio::sync::Mutex::new(Copies::default()),
        })
    }

    fn exit(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }

    /// Records the exit unless one was recorded already; true if this call did.
    fn record(&self, exit: Exit) -> bool {
        self.exit.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(exit);
            true
        })
    }

    async fn wait(&self) -> Exit {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(exit) = rx.borrow_and_update().clone() {
                return exit;
            }
            if rx.changed().await.is_err() {
                return Exit { status: VM_DIED_STATUS, at: now() };
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Created,
    Running,
    Paused,
}

#[derive(Debug)]
struct Container {
    id: String,
    bundle: PathBuf,
    dir: PathBuf,
    rootfs_mounted: bool,
    sandbox: Arc<Sandbox>,
    image: RootfsImage,
    init: Arc<Proc>,
    execs: Mutex<HashMap<String, Arc<Proc>>>,
    state: Mutex<State>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Container {
    fn process(&self, exec_id: &str) -> Result<Arc<Proc>, ShimError> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        lock(&self.execs).get(exec_id).cloned().ok_or_else(|| ShimError::NotFound(format!("process {exec_id}")))
    }

    fn pid(&self) -> u32 {
        self.sandbox.vmm_pid
    }
}

/// The task service: at most one container per shim (one VM per task).
#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TaskService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskService").field("namespace", &self.inner.namespace).finish_non_exhaustive()
    }
}

struct Inner {
    config: Result<Config, String>,
    namespace: String,
    publisher: RemotePublisher,
    exit: Arc<ExitSignal>,
    container: tokio::sync::Mutex<Option<Arc<Container>>>,
}

impl TaskService {
    pub fn new(
        config: Result<Config, String>,
        namespace: &str,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
    ) -> Self {
        TaskService {
            inner: Arc::new(Inner {
                config,
                namespace: namespace.to_owned(),
                publisher,
                exit,
                container: tokio::sync::Mutex::new(None),
            }),
        }
    }
}

impl Inner {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self.publisher.publish(Default::default(), topic, &self.namespace, event).await {
            log::warn!("cannot publish {topic}: {e}");
        }
    }

    async fn container(&self, id: &str) -> Result<Arc<Container>, ShimError> {
        match self.container.lock().await.as_ref() {
            Some(c) if c.id == id => Ok(c.clone()),
            _ => Err(ShimError::NotFound(format!("task {id}"))),
        }
    }

    /// Publishes the exit of `proc` once: from its waiter, or from the VM monitor.
    async fn exited(&self, container: &Container, proc: &Proc, exit: Exit) {
        if proc.record(exit.clone()) {
            let id = if proc.exec_id.is_empty() { container.id.clone() } else { proc.exec_id.clone() };
            let event = TaskExit {
                container_id: container.id.clone(),
                id,
                pid: container.pid(),
                exit_status: exit.status,
                exited_at: Some(exit.at).into(),
                ..Default::default()
            };
            self.publish(TASK_EXIT_EVENT_TOPIC, Box::new(event)).await;
        }
    }
}

/// Waits for a started process in the guest, then for its output, then reports the exit.
fn watch_process(inner: Arc<Inner>, container: Arc<Container>, proc: Arc<Proc>) {
    tokio::spawn(async move {
        let request = agent_api::WaitProcessRequest {
            container_id: container.id.clone(),
            exec_id: proc.exec_id.clone(),
            ..Default::default()
        };
        let exit = match container.sandbox.agent.wait_process(no_deadline(), &request).await {
            Ok(r) => Exit { status: r.exit_code as u32, at: timestamp_from_ns(r.exited_at_unix_ns) },
            // The VM went away; its monitor reports the exit.
            Err(_) => return,
        };
        proc.copies.lock().await.drain(DRAIN).await;
        inner.exited(&container, &proc, exit).await;
    });
}

/// If brig-vmm dies without being asked to stop, every running process has exited.
fn watch_vm(inner: Arc<Inner>, container: Arc<Container>) {
    tokio::spawn(async move {
        let code = container.sandbox.wait_exit().await;
        if container.sandbox.is_stopping() {
            return;
        }
        log::error!("brig-vmm of task {} exited unexpectedly ({code})", container.id);
        let exit = Exit { status: VM_DIED_STATUS, at: now() };
        let execs: Vec<Arc<Proc>> = lock(&container.execs).values().cloned().collect();
        for proc in execs.into_iter().chain(std::iter::once(container.init.clone())) {
            inner.exited(&container, &proc, exit.clone()).await;
        }
    });
}

/// Forwards the guest's OOM kills as `TaskOOM` events.
fn watch_oom(inner: Arc<Inner>, container: Arc<Container>) {
    tokio::spawn(async move {
        while container.sandbox.exit_code().is_none() {
            let request = agent_api::GetOomEventRequest::new();
            match container.sandbox.agent.get_oom_event(agent_context::with_timeout(30_000_000_000), &request).await {
                Ok(event) if event.container_id == container.id => {
                    let oom = TaskOOM { container_id: container.id.clone(), ..Default::default() };
                    inner.publish(TASK_OOM_EVENT_TOPIC, Box::new(oom)).await;
                }
                Ok(_) => {}
                Err(brig_protocol::ttrpc::Error::RpcStatus(s))
                    if s.code() == brig_protocol::ttrpc::Code::DEADLINE_EXCEEDED => {}
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    });
}

/// Everything a failed `Create` may have made, undone on drop unless disarmed.
struct Undo {
    bundle: Option<PathBuf>,
    dir: Option<PathBuf>,
    image: Option<RootfsImage>,
    sandbox: Option<Arc<Sandbox>>,
}

impl Undo {
    async fn run(mut self) {
        if let Some(sandbox) = self.sandbox.take() {
            sandbox.stop().await;
        }
        if let Some(image) = self.image.take() {
            image::release(&image);
        }
        if let Some(bundle) = self.bundle.take() {
            image::unmount_rootfs(&bundle);
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Where a task keeps its sockets and logs: short enough for Unix socket paths.
pub fn task_dir(config: &Config, namespace: &str, id: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{namespace}/{id}").as_bytes());
    config.state_dir.join(digest.iter().take(8).map(|b| format!("{b:02x}")).collect::<String>())
}

impl TaskService {
    async fn create_task(&self, req: api::CreateTaskRequest) -> Result<api::CreateTaskResponse, ShimError> {
        let inner = &self.inner;
        let config = inner.config.clone().map_err(ShimError::FailedPrecondition)?;
        config.check_installed().map_err(ShimError::FailedPrecondition)?;
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented("restoring from a checkpoint".into()));
        }
        let mut slot = inner.container.lock().await;
        if slot.is_some() {
            return Err(ShimError::AlreadyExists(format!("a task in this shim (asked for {})", req.id)));
        }
        let bundle = PathBuf::from(&req.bundle);
        let (spec_bytes, spec) = spec::guest_spec(&bundle)?;
        let dir = task_dir(&config, &inner.namespace, &req.id);
        std::fs::create_dir_all(&dir).map_err(ShimError::io(format!("creating {}", dir.display())))?;
        std::fs::write(dir.join("task"), format!("{}/{}\n{}\n", inner.namespace, req.id, req.bundle))
            .map_err(ShimError::io("writing the task file"))?;
        let mut undo = Undo { bundle: None, dir: Some(dir.clone()), image: None, sandbox: None };
        let result = self.create_in(&config, &req, &bundle, &dir, spec_bytes, &spec, &mut undo).await;
        match result {
            Ok(container) => {
                *slot = Some(container.clone());
                drop(slot);
                let event = TaskCreate {
                    container_id: req.id.clone(),
                    bundle: req.bundle.clone(),
                    rootfs: req.rootfs.clone(),
                    io: Some(TaskIO {
                        stdin: req.stdin.clone(),
                        stdout: req.stdout.clone(),
                        stderr: req.stderr.clone(),
                        terminal: req.terminal,
                        ..Default::default()
                    })
                    .into(),
                    pid: container.pid(),
                    ..Default::default()
                };
                inner.publish(TASK_CREATE_EVENT_TOPIC, Box::new(event)).await;
                watch_vm(inner.clone(), container.clone());
                watch_oom(inner.clone(), container.clone());
                Ok(api::CreateTaskResponse { pid: container.pid(), ..Default::default() })
            }
            Err(e) => {
                undo.run().await;
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_in(
        &self,
        config: &Config,
        req: &api::CreateTaskRequest,
        bundle: &std::path::Path,
        dir: &std::path::Path,
        spec_bytes: Vec<u8>,
        spec: &serde_json::Value,
        undo: &mut Undo,
    ) -> Result<Arc<Container>, ShimError> {
        let rootfs = image::mount_rootfs(bundle, &req.rootfs).await?;
        let rootfs_mounted = !req.rootfs.is_empty();
        if rootfs_mounted {
            undo.bundle = Some(bundle.to_path_buf());
        }
        let key = image::cache_key(&req.rootfs);
        let (image_dir, private) = (config.image_dir.clone(), dir.to_path_buf());
        let rootfs_image =
            tokio::task::spawn_blocking(move || image::prepare(&rootfs, key.as_ref(), &image_dir, &private))
                .await
                .map_err(|e| ShimError::Internal(format!("image task: {e}")))??;
        undo.image = Some(rootfs_image.clone());
        let sandbox = Sandbox::start(config, dir, spec::vm_size(spec, config), &rootfs_image.path).await?;
        undo.sandbox = Some(sandbox.clone());
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let request = agent_api::CreateContainerRequest {
            container_id: req.id.clone(),
            oci_spec: spec_bytes,
            rootfs: Some(agent_api::Rootfs {
                serial: ROOTFS_SERIAL.into(),
                fstype: "ext4".into(),
                read_only: true,
                writable_layer: true,
                ..Default::default()
            })
            .into(),
            stdio: Some(paths.agent_stdio()).into(),
            ..Default::default()
        };
        sandbox.agent.create_container(call_timeout(), &request).await?;
        let copies = io::attach(&sandbox, &req.id, "", &paths).await?;
        let init = Proc::new("", paths, Vec::new());
        *init.copies.lock().await = copies;
        undo.bundle = None;
        undo.image = None;
        undo.sandbox = None;
        undo.dir = None;
        Ok(Arc::new(Container {
            id: req.id.clone(),
            bundle: bundle.to_path_buf(),
            dir: dir.to_path_buf(),
            rootfs_mounted,
            sandbox,
            image: rootfs_image,
            init,
            execs: Mutex::new(HashMap::new()),
            state: Mutex::new(State::Created),
        }))
    }

    async fn start_process(&self, req: api::StartRequest) -> Result<api::StartResponse, ShimError> {
        let inner = &self.inner;
        let container = inner.container(&req.id).await?;
        let proc = container.process(&req.exec_id)?;
        if proc.started.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(ShimError::FailedPrecondition(format!("process {} already started", req.exec_id)));
        }
        let agent = &container.sandbox.agent;
        if req.exec_id.is_empty() {
            let request = agent_api::StartContainerRequest { container_id: req.id.clone(), ..Default::default() };
            agent.start_container(call_timeout(), &request).await?;
            *lock(&container.state) = State::Running;
            let event = TaskStart { container_id: req.id.clone(), pid: container.pid(), ..Default::default() };
            inner.publish(TASK_START_EVENT_TOPIC, Box::new(event)).await;
        } else {
            let request = agent_api::ExecProcessRequest {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                process: proc.spec.clone(),
                stdio: Some(proc.paths.agent_stdio()).into(),
                ..Default::default()
            };
            agent.exec_process(call_timeout(), &request).await?;
            let copies = io::attach(&container.sandbox, &req.id, &req.exec_id, &proc.paths).await?;
            *proc.copies.lock().await = copies;
            let event = TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid: container.pid(),
                ..Default::default()
            };
            inner.publish(TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(event)).await;
        }
        watch_process(inner.clone(), container.clone(), proc);
        Ok(api::StartResponse { pid: container.pid(), ..Default::default() })
    }

    async fn delete_process(&self, req: api::DeleteRequest) -> Result<api::DeleteResponse, ShimError> {
        let inner = &self.inner;
        let container = inner.container(&req.id).await?;
        if !req.exec_id.is_empty() {
            let proc = container.process(&req.exec_id)?;
            if proc.started.load(std::sync::atomic::Ordering::SeqCst) && proc.exit().is_none() {
                return Err(ShimError::FailedPrecondition(format!("process {} is still running", req.exec_id)));
            }
            lock(&container.execs).remove(&req.exec_id);
            let exit = proc.exit().unwrap_or(Exit { status: 0, at: now() });
            return Ok(api::DeleteResponse {
                pid: container.pid(),
                exit_status: exit.status,
                exited_at: Some(exit.at).into(),
                ..Default::default()
            });
        }
        if container.init.started.load(std::sync::atomic::Ordering::SeqCst) && container.init.exit().is_none() {
            return Err(ShimError::FailedPrecondition(format!("task {} is still running: kill it first", req.id)));
        }
        if container.sandbox.exit_code().is_none() {
            let request = agent_api::RemoveContainerRequest { container_id: req.id.clone(), ..Default::default() };
            if let Err(e) = container.sandbox.agent.remove_container(call_timeout(), &request).await {
                log::warn!("agent could not remove {}: {e}", req.id);
            }
        }
        container.sandbox.stop().await;
        if container.rootfs_mounted {
            image::unmount_rootfs(&container.bundle);
        }
        image::release(&container.image);
        let _ = std::fs::remove_dir_all(&container.dir);
        *inner.container.lock().await = None;
        let exit = container.init.exit().unwrap_or(Exit { status: 0, at: now() });
        let event = TaskDelete {
            container_id: req.id.clone(),
            pid: container.pid(),
            exit_status: exit.status,
            exited_at: Some(exit.at.clone()).into(),
            id: req.id.clone(),
            ..Default::default()
        };
        inner.publish(TASK_DELETE_EVENT_TOPIC, Box::new(event)).await;
        Ok(api::DeleteResponse {
            pid: container.pid(),
            exit_status: exit.status,
            exited_at: Some(exit.at).into(),
            ..Default::default()
        })
    }

    async fn state_of(&self, req: api::StateRequest) -> Result<api::StateResponse, ShimError> {
        let container = self.inner.container(&req.id).await?;
        let proc = container.process(&req.exec_id)?;
        let exit = proc.exit();
        let status = match (&exit, proc.started.load(std::sync::atomic::Ordering::SeqCst)) {
            (Some(_), _) => Status::STOPPED,
            (None, false) => Status::CREATED,
            (None, true) if req.exec_id.is_empty() && *lock(&container.state) == State::Paused => Status::PAUSED,
            (None, true) => Status::RUNNING,
        };
        Ok(api::StateResponse {
            id: if req.exec_id.is_empty() { req.id.clone() } else { req.exec_id.clone() },
            bundle: container.bundle.to_string_lossy().into_owned(),
            pid: container.pid(),
            status: status.into(),
            stdin: proc.paths.stdin.clone(),
            stdout: proc.paths.stdout.clone(),
            stderr: proc.paths.stderr.clone(),
            terminal: proc.paths.terminal,
            exit_status: exit.as_ref().map_or(0, |e| e.status),
            exited_at: exit.map(|e| e.at).into(),
            exec_id: req.exec_id,
            ..Default::default()
        })
    }

    async fn stats_of(&self, req: api::StatsRequest) -> Result<api::StatsResponse, ShimError> {
        let container = self.inner.container(&req.id).await?;
        let request = agent_api::StatsContainerRequest { container_id: req.id.clone(), ..Default::default() };
        let stats = container.sandbox.agent.stats_container(call_timeout(), &request).await?;
        let metrics = to_metrics(&stats);
        let value = metrics.write_to_bytes().map_err(|e| ShimError::Internal(format!("encoding metrics: {e}")))?;
        let any = Any { type_url: "io.containerd.cgroups.v2.Metrics".into(), value, ..Default::default() };
        Ok(api::StatsResponse { stats: Some(any).into(), ..Default::default() })
    }
}

/// The guest's cgroup statistics as containerd's cgroups v2 `Metrics`.
fn to_metrics(stats: &agent_api::StatsContainerResponse) -> cg::Metrics {
    let cpu = cg::CPUStat {
        usage_usec: stats.cpu.usage_usec,
        user_usec: stats.cpu.user_usec,
        system_usec: stats.cpu.system_usec,
        nr_periods: stats.cpu.nr_periods,
        nr_throttled: stats.cpu.nr_throttled,
        throttled_usec: stats.cpu.throttled_usec,
        ..Default::default()
    };
    let memory = cg::MemoryStat {
        usage: stats.memory.usage_bytes,
        usage_limit: stats.memory.limit_bytes,
        max_usage: stats.memory.max_usage_bytes,
        anon: stats.memory.anon_bytes,
        file: stats.memory.file_bytes,
        ..Default::default()
    };
    let events =
        cg::MemoryEvents { oom: stats.memory.oom_events, oom_kill: stats.memory.oom_kill_events, ..Default::default() };
    let pids = cg::PidsStat { current: stats.pids.current, limit: stats.pids.limit, ..Default::default() };
    let io = cg::IOStat {
        usage: stats
            .io
            .iter()
            .map(|d| cg::IOEntry {
                major: u64::from(d.major),
                minor: u64::from(d.minor),
                rbytes: d.read_bytes,
                wbytes: d.write_bytes,
                rios: d.read_ios,
                wios: d.write_ios,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    cg::Metrics {
        cpu: Some(cpu).into(),
        memory: Some(memory).into(),
        memory_events: Some(events).into(),
        pids: Some(pids).into(),
        io: Some(io).into(),
        ..Default::default()
    }
}

#[async_trait]
impl TaskApi for TaskService {
    async fn create(&self, _ctx: &TtrpcContext, req: api::CreateTaskRequest) -> TtrpcResult<api::CreateTaskResponse> {
        log::info!("create {} (bundle {})", req.id, req.bundle);
        Ok(self.create_task(req).await?)
    }

    async fn start(&self, _ctx: &TtrpcContext, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        Ok(self.start_process(req).await?)
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: api::DeleteRequest) -> TtrpcResult<api::DeleteResponse> {
        Ok(self.delete_process(req).await?)
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let container = self.inner.container(&req.id).await?;
        if container.init.exit().is_some() {
            return Err(ShimError::FailedPrecondition(format!("task {} has exited", req.id)).into());
        }
        let spec = req.spec.as_ref().map(|any| any.value.clone()).unwrap_or_default();
        let paths = StdioPaths { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, terminal: req.terminal };
        {
            let mut execs = lock(&container.execs);
            if execs.contains_key(&req.exec_id) {
                return Err(ShimError::AlreadyExists(format!("process {}", req.exec_id)).into());
            }
            execs.insert(req.exec_id.clone(), Proc::new(&req.exec_id, paths, spec));
        }
        let event = TaskExecAdded { container_id: req.id, exec_id: req.exec_id, ..Default::default() };
        self.inner.publish(TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(event)).await;
        Ok(api::Empty::new())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let container = self.inner.container(&req.id).await?;
        let proc = container.process(&req.exec_id)?;
        if proc.exit().is_some() {
            return Err(ShimError::NotFound(format!("process {} (already finished)", req.exec_id)).into());
        }
        let request = agent_api::SignalProcessRequest {
            container_id: req.id,
            exec_id: req.exec_id,
            signal: req.signal,
            all: req.all,
            ..Default::default()
        };
        container.sandbox.agent.signal_process(call_timeout(), &request).await.map_err(ShimError::from)?;
        Ok(api::Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let container = self.inner.container(&req.id).await?;
        let proc = container.process(&req.exec_id)?;
        let exit = proc.wait().await;
        Ok(api::WaitResponse { exit_status: exit.status, exited_at: Some(exit.at).into(), ..Default::default() })
    }

    async fn state(&self, _ctx: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        Ok(self.state_of(req).await?)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let container = self.inner.container(&req.id).await?;
        let request = agent_api::ListProcessesRequest { container_id: req.id, ..Default::default() };
        let pids = container.sandbox.agent.list_processes(call_timeout(), &request).await.map_err(ShimError::from)?;
        let processes = pids.pids.into_iter().map(|pid| api::ProcessInfo { pid, ..Default::default() }).collect();
        Ok(api::PidsResponse { processes, ..Default::default() })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        let container = self.inner.container(&req.id).await?;
        let request = agent_api::PauseContainerRequest { container_id: req.id.clone(), ..Default::default() };
        container.sandbox.agent.pause_container(call_timeout(), &request).await.map_err(ShimError::from)?;
        *lock(&container.state) = State::Paused;
        self.inner
            .publish(TASK_PAUSED_EVENT_TOPIC, Box::new(TaskPaused { container_id: req.id, ..Default::default() }))
            .await;
        Ok(api::Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        let container = self.inner.container(&req.id).await?;
        let request = agent_api::ResumeContainerRequest { container_id: req.id.clone(), ..Default::default() };
        container.sandbox.agent.resume_container(call_timeout(), &request).await.map_err(ShimError::from)?;
        *lock(&container.state) = State::Running;
        self.inner
            .publish(TASK_RESUMED_EVENT_TOPIC, Box::new(TaskResumed { container_id: req.id, ..Default::default() }))
            .await;
        Ok(api::Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<api::Empty> {
        let container = self.inner.container(&req.id).await?;
        let request = agent_api::ResizePtyRequest {
            container_id: req.id,
            exec_id: req.exec_id,
            width: req.width,
            height: req.height,
            ..Default::default()
        };
        container.sandbox.agent.resize_pty(call_timeout(), &request).await.map_err(ShimError::from)?;
        Ok(api::Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let container = self.inner.container(&req.id).await?;
        if req.stdin {
            let request =
                agent_api::CloseStdinRequest { container_id: req.id, exec_id: req.exec_id, ..Default::default() };
            container.sandbox.agent.close_stdin(call_timeout(), &request).await.map_err(ShimError::from)?;
        }
        Ok(api::Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let container = self.inner.container(&req.id).await?;
        let resources = req.resources.as_ref().map(|any| any.value.clone()).unwrap_or_default();
        let request = agent_api::UpdateContainerRequest { container_id: req.id, resources, ..Default::default() };
        container.sandbox.agent.update_container(call_timeout(), &request).await.map_err(ShimError::from)?;
        Ok(api::Empty::new())
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        Ok(self.stats_of(req).await?)
    }

    async fn checkpoint(&self, _ctx: &TtrpcContext, _req: api::CheckpointTaskRequest) -> TtrpcResult<api::Empty> {
        Err(ShimError::Unimplemented("checkpointing a task".into()).into())
    }

    async fn connect(&self, _ctx: &TtrpcContext, req: api::ConnectRequest) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.inner.container(&req.id).await.map(|c| c.pid()).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        let container = self.inner.container.lock().await.clone();
        match container {
            Some(c) if !req.now => {
                log::info!("shutdown requested while task {} exists; staying", c.id);
                return Ok(api::Empty::new());
            }
            Some(c) => c.sandbox.stop().await,
            None => {}
        }
        self.inner.exit.signal();
        Ok(api::Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_dirs_are_short_and_distinct() {
        let config = Config::default();
        let long_id = "a".repeat(64);
        let dir = task_dir(&config, "k8s.io", &long_id);
        assert!(dir.join("vsock.sock_1025").as_os_str().len() < 96, "{}", dir.display());
        assert_ne!(task_dir(&config, "default", "x"), task_dir(&config, "other", "x"));
    }

    #[test]
    fn guest_stats_become_cgroup_v2_metrics() {
        let stats = agent_api::StatsContainerResponse {
            cpu: Some(agent_api::CpuStats { usage_usec: 42, ..Default::default() }).into(),
            memory: Some(agent_api::MemoryStats {
                usage_bytes: 1 << 20,
                limit_bytes: 32 << 20,
                oom_kill_events: 1,
                ..Default::default()
            })
            .into(),
            pids: Some(agent_api::PidsStats { current: 3, limit: 64, ..Default::default() }).into(),
            ..Default::default()
        };
        let m = to_metrics(&stats);
        assert_eq!(m.cpu.usage_usec, 42);
        assert_eq!((m.memory.usage, m.memory.usage_limit), (1 << 20, 32 << 20));
        assert_eq!(m.memory_events.oom_kill, 1);
        assert_eq!((m.pids.current, m.pids.limit), (3, 64));
    }
}
