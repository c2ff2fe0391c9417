//! containerd's Task API (v2) for one task: a container running in its own VM.
//!
//! Laid out like containerd rust-extensions' runc shim: this file decodes each
//! request, calls the [`Container`](container::Container) or
//! [`Process`](process::Process) it names, publishes the event (in the order
//! [`events`] documents) and maps errors to ttrpc codes. The guest is reached only
//! through [`Guest`](crate::guest::Guest), the VM and rootfs only through
//! [`host`], so the whole lifecycle runs against fakes in the unit tests.
//!
//! Exec ids are `Option<&str>` inside the shim (`None`: the container's own
//! process); containerd's `""` is converted here, by [`exec_id`], and nowhere else.

mod container;
mod events;
mod host;
mod monitor;
mod process;
pub mod stats;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::shim_async::Task as TaskApi;
use containerd_shim::protos::ttrpc::{self, r#async::TtrpcContext};
use containerd_shim_protos::api;

pub use self::container::task_dir;
use self::container::Container;
use self::events::{Containerd, Publisher, TaskEvent};
use self::host::{BrigHost, Host};
use self::monitor::Timing;
pub use self::process::{KILLED_STATUS, VM_DIED_STATUS};
use crate::config::Config;
use crate::error::ShimError;
use crate::guest::GuestError;
use crate::io::StdioPaths;
use crate::timeline::{self, Step};

type TtrpcResult<T> = ttrpc::Result<T>;

const SIGKILL: u32 = nix::sys::signal::Signal::SIGKILL as u32;

/// containerd's exec id as the shim's: `""` names the container's own process.
fn exec_id(id: &str) -> Option<&str> {
    (!id.is_empty()).then_some(id)
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
    host: Arc<dyn Host>,
    events: Arc<dyn Publisher>,
    exit: Arc<ExitSignal>,
    timing: Timing,
    container: tokio::sync::Mutex<Option<Arc<Container>>>,
}

impl TaskService {
    pub fn new(
        config: Result<Config, String>,
        namespace: &str,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
    ) -> Self {
        timeline::mark(Step::ShimUp);
        let events = Arc::new(Containerd::new(publisher, namespace));
        TaskService::with_host(config, namespace, Arc::new(BrigHost), events, exit)
    }

    fn with_host(
        config: Result<Config, String>,
        namespace: &str,
        host: Arc<dyn Host>,
        events: Arc<dyn Publisher>,
        exit: Arc<ExitSignal>,
    ) -> Self {
        TaskService::with_timing(config, namespace, host, events, exit, Timing::default())
    }

    fn with_timing(
        config: Result<Config, String>,
        namespace: &str,
        host: Arc<dyn Host>,
        events: Arc<dyn Publisher>,
        exit: Arc<ExitSignal>,
        timing: Timing,
    ) -> Self {
        let inner = Inner {
            config,
            namespace: namespace.to_owned(),
            host,
            events,
            exit,
            timing,
            container: tokio::sync::Mutex::new(None),
        };
        TaskService { inner: Arc::new(inner) }
    }

    async fn container(&self, id: &str) -> Result<Arc<Container>, ShimError> {
        match self.inner.container.lock().await.as_ref() {
            Some(c) if c.id == id => Ok(c.clone()),
            _ => Err(ShimError::NotFound(format!("task {id}"))),
        }
    }

    async fn publish(&self, event: TaskEvent) {
        self.inner.events.publish(event).await;
    }

    async fn create_task(&self, req: &api::CreateTaskRequest) -> Result<u32, ShimError> {
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
        let container = Container::create(inner.host.clone(), &config, &inner.namespace, req).await?;
        *slot = Some(container.clone());
        drop(slot);
        self.publish(TaskEvent::create(req, container.pid())).await;
        monitor::watch_vm(inner.events.clone(), container.clone());
        monitor::watch_oom(inner.events.clone(), container.clone(), inner.timing);
        Ok(container.pid())
    }

    async fn delete_task(&self, container: &Container) -> Result<api::DeleteResponse, ShimError> {
        let exit = container.destroy().await?;
        timeline::mark(Step::Deleted);
        timeline::log(&container.id);
        *self.inner.container.lock().await = None;
        self.publish(TaskEvent::delete(&container.id, container.pid(), &exit)).await;
        Ok(api::DeleteResponse {
            pid: container.pid(),
            exit_status: exit.status,
            exited_at: Some(exit.at).into(),
            ..Default::default()
        })
    }
}

#[async_trait]
impl TaskApi for TaskService {
    async fn create(&self, _ctx: &TtrpcContext, req: api::CreateTaskRequest) -> TtrpcResult<api::CreateTaskResponse> {
        timeline::mark(Step::Create);
        log::info!("create {} (bundle {})", req.id, req.bundle);
        let pid = self.create_task(&req).await?;
        timeline::mark(Step::Created);
        Ok(api::CreateTaskResponse { pid, ..Default::default() })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        let container = self.container(&req.id).await?;
        let exec_id = exec_id(&req.exec_id);
        let proc = container.process(exec_id)?;
        if let Err(e) = container.start(&proc).await {
            if exec_id.is_none() && matches!(e, ShimError::Guest(GuestError::Unreachable { .. })) {
                monitor::end_unstartable(self.inner.events.as_ref(), &container, self.inner.timing).await;
            }
            return Err(e.into());
        }
        if exec_id.is_none() {
            timeline::mark(Step::Started);
        }
        self.publish(TaskEvent::started(&container.id, exec_id, container.pid())).await;
        monitor::watch_process(self.inner.events.clone(), container.clone(), proc);
        Ok(api::StartResponse { pid: container.pid(), ..Default::default() })
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: api::DeleteRequest) -> TtrpcResult<api::DeleteResponse> {
        let container = self.container(&req.id).await?;
        let Some(exec_id) = exec_id(&req.exec_id) else {
            return Ok(self.delete_task(&container).await?);
        };
        let exit = container.delete_exec(exec_id)?;
        Ok(api::DeleteResponse {
            pid: container.pid(),
            exit_status: exit.status,
            exited_at: Some(exit.at).into(),
            ..Default::default()
        })
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let container = self.container(&req.id).await?;
        let Some(exec_id) = exec_id(&req.exec_id) else {
            return Err(ShimError::InvalidArgument("an exec needs an exec id".into()).into());
        };
        let spec = req.spec.as_ref().map(|any| any.value.clone()).unwrap_or_default();
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        container.add_exec(exec_id, paths, spec)?;
        self.publish(TaskEvent::exec_added(&container.id, exec_id)).await;
        Ok(api::Empty::new())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let container = self.container(&req.id).await?;
        let exec_id = exec_id(&req.exec_id);
        container.kill(exec_id, req.signal, req.all).await?;
        if req.signal == SIGKILL {
            let (events, grace) = (self.inner.events.clone(), self.inner.timing.kill_grace);
            monitor::enforce_kill(events, container.clone(), container.process(exec_id)?, grace);
        }
        Ok(api::Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let container = self.container(&req.id).await?;
        let exit = container.process(exec_id(&req.exec_id))?.wait().await;
        Ok(api::WaitResponse { exit_status: exit.status, exited_at: Some(exit.at).into(), ..Default::default() })
    }

    async fn state(&self, _ctx: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        let container = self.container(&req.id).await?;
        let proc = container.process(exec_id(&req.exec_id))?;
        let state = proc.state();
        let exit = proc.exit();
        Ok(api::StateResponse {
            id: proc.exec_id.clone().unwrap_or_else(|| container.id.clone()),
            bundle: container.bundle.to_string_lossy().into_owned(),
            pid: container.pid(),
            status: state.status().into(),
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

    async fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let container = self.container(&req.id).await?;
        let pids = container.guest().list_processes(&container.id).await.map_err(ShimError::from)?;
        let processes = pids.into_iter().map(|pid| api::ProcessInfo { pid, ..Default::default() }).collect();
        Ok(api::PidsResponse { processes, ..Default::default() })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        let container = self.container(&req.id).await?;
        container.pause().await?;
        self.publish(TaskEvent::paused(&container.id)).await;
        Ok(api::Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        let container = self.container(&req.id).await?;
        container.resume().await?;
        self.publish(TaskEvent::resumed(&container.id)).await;
        Ok(api::Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<api::Empty> {
        let container = self.container(&req.id).await?;
        let guest = container.guest();
        guest.resize_pty(&container.id, exec_id(&req.exec_id), req.width, req.height).await.map_err(ShimError::from)?;
        Ok(api::Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let container = self.container(&req.id).await?;
        if req.stdin {
            container.guest().close_stdin(&container.id, exec_id(&req.exec_id)).await.map_err(ShimError::from)?;
        }
        Ok(api::Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let container = self.container(&req.id).await?;
        let resources = req.resources.as_ref().map(|any| any.value.clone()).unwrap_or_default();
        container.guest().update_container(&container.id, resources).await.map_err(ShimError::from)?;
        Ok(api::Empty::new())
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        let container = self.container(&req.id).await?;
        let stats = container.guest().stats_container(&container.id).await.map_err(ShimError::from)?;
        Ok(api::StatsResponse { stats: Some(stats::to_any(&stats)?).into(), ..Default::default() })
    }

    async fn checkpoint(&self, _ctx: &TtrpcContext, _req: api::CheckpointTaskRequest) -> TtrpcResult<api::Empty> {
        Err(ShimError::Unimplemented("checkpointing a task".into()).into())
    }

    async fn connect(&self, _ctx: &TtrpcContext, req: api::ConnectRequest) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.container(&req.id).await.map(|c| c.pid()).unwrap_or(0);
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
            Some(c) => c.vm().stop().await,
            None => {}
        }
        self.inner.exit.signal();
        Ok(api::Empty::new())
    }
}
