//! The agent API implementation: maps requests to the container [`Manager`] and
//! its errors to ttrpc status codes.

use std::sync::Arc;
use std::time::Duration;

use brig_protocol::agent::*;
use brig_protocol::agent_ttrpc::{create_agent, Agent};
use brig_protocol::ttrpc::{self, Code, TtrpcContext};
use brig_protocol::{API_MAJOR, API_MINOR};

use crate::container::cgroup::CgroupError;
use crate::container::rootfs::RootfsError;
use crate::container::{network, ContainerError, Manager};
use crate::guest_info;

/// How long after answering `Shutdown` the agent ends the VM (so the reply leaves first).
const SHUTDOWN_DELAY: Duration = Duration::from_millis(50);
/// `GetOomEvent` waits at most this long when the call carries no deadline.
const OOM_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct AgentService {
    manager: Arc<Manager>,
    /// Called to end the VM; `init::power_off` in the guest.
    power_off: fn() -> !,
}

impl AgentService {
    pub fn new(manager: Arc<Manager>, power_off: fn() -> !) -> AgentService {
        AgentService { manager, power_off }
    }
}

fn status(code: Code, message: String) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

fn internal(what: &str, e: impl std::fmt::Display) -> ttrpc::Error {
    status(Code::INTERNAL, format!("{what}: {e}"))
}

/// The status code for an error, and its message with every source.
fn to_status(error: ContainerError) -> ttrpc::Error {
    let code = match &error {
        ContainerError::Invalid(_)
        | ContainerError::Cgroup(CgroupError::Invalid(_))
        | ContainerError::Devices(crate::container::devices::DeviceError::Access(_)) => Code::INVALID_ARGUMENT,
        ContainerError::NotFound(_) => Code::NOT_FOUND,
        ContainerError::AlreadyExists(_) => Code::ALREADY_EXISTS,
        ContainerError::FailedPrecondition(_)
        | ContainerError::Rootfs(RootfsError::NoDevice(_) | RootfsError::FsType(_)) => Code::FAILED_PRECONDITION,
        ContainerError::Rootfs(RootfsError::Path(_)) => Code::INVALID_ARGUMENT,
        ContainerError::Unimplemented(_) => Code::UNIMPLEMENTED,
        _ => Code::INTERNAL,
    };
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    log::warn!("request failed ({code:?}): {message}");
    status(code, message)
}

fn run<T>(result: Result<T, ContainerError>) -> ttrpc::Result<T> {
    result.map_err(to_status)
}

impl Agent for AgentService {
    fn ping(&self, _ctx: &TtrpcContext, _req: PingRequest) -> ttrpc::Result<PingResponse> {
        Ok(PingResponse {
            agent_version: crate::VERSION.to_owned(),
            api_major: API_MAJOR,
            api_minor: API_MINOR,
            boottime_ns: guest_info::boottime_ns(),
            agent_started_ns: guest_info::started_ns(),
            ..Default::default()
        })
    }

    fn guest_info(&self, _ctx: &TtrpcContext, _req: GuestInfoRequest) -> ttrpc::Result<GuestInfoResponse> {
        let uname = nix::sys::utsname::uname().map_err(|e| internal("uname", e))?;
        let read = |path: &str| std::fs::read_to_string(path).map_err(|e| internal(path, e));
        let (total, available) = guest_info::memory(&read("/proc/meminfo")?);
        Ok(GuestInfoResponse {
            kernel_release: uname.release().to_string_lossy().into_owned(),
            kernel_version: uname.version().to_string_lossy().into_owned(),
            uptime_ms: guest_info::uptime_ms(&read("/proc/uptime")?),
            mem_total_bytes: total,
            mem_available_bytes: available,
            cpus: guest_info::cpus(&read("/proc/stat")?),
            ..Default::default()
        })
    }

    fn describe_guest(&self, _ctx: &TtrpcContext, _req: DescribeGuestRequest) -> ttrpc::Result<DescribeGuestResponse> {
        let mut processes = Vec::new();
        let mut truncated = false;
        for entry in std::fs::read_dir("/proc").map_err(|e| internal("/proc", e))?.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            if processes.len() == guest_info::MAX_ENTRIES {
                truncated = true;
                break;
            }
            let dir = entry.path();
            // A process may end while it is read: what is gone is skipped.
            let Some((comm, state, ppid)) =
                std::fs::read_to_string(dir.join("stat")).ok().as_deref().and_then(guest_info::stat)
            else {
                continue;
            };
            let uid = std::fs::read_to_string(dir.join("status")).ok().as_deref().and_then(guest_info::uid);
            let cmdline = std::fs::read(dir.join("cmdline")).map(|raw| guest_info::cmdline(&raw)).unwrap_or_default();
            processes.push(GuestProcess {
                pid,
                ppid,
                comm,
                cmdline,
                uid: uid.unwrap_or(u32::MAX),
                state,
                ..Default::default()
            });
        }
        let text = std::fs::read_to_string("/proc/mounts").map_err(|e| internal("/proc/mounts", e))?;
        truncated |= text.lines().count() > guest_info::MAX_ENTRIES;
        let mounts = guest_info::mounts(&text)
            .into_iter()
            .map(|(source, target, fstype, options)| GuestMount {
                source,
                target,
                fstype,
                options,
                ..Default::default()
            })
            .collect();
        Ok(DescribeGuestResponse { processes, mounts, truncated, ..Default::default() })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> ttrpc::Result<ShutdownResponse> {
        log::info!("shutdown requested");
        let power_off = self.power_off;
        std::thread::spawn(move || {
            std::thread::sleep(SHUTDOWN_DELAY);
            power_off();
        });
        Ok(ShutdownResponse::default())
    }

    fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<CreateContainerResponse> {
        let rootfs =
            req.rootfs.into_option().ok_or_else(|| status(Code::INVALID_ARGUMENT, "rootfs is missing".into()))?;
        let stdio = req.stdio.into_option().unwrap_or_default();
        let interface = req.interface.as_ref().map(network::Interface::from_request).transpose();
        let interface = run(interface)?;
        let pid = run(self.manager.create(&req.container_id, &req.oci_spec, &rootfs, &stdio, interface))?;
        Ok(CreateContainerResponse { pid, ..Default::default() })
    }

    fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: StartContainerRequest,
    ) -> ttrpc::Result<StartContainerResponse> {
        let interface = req.interface.as_ref().map(network::Interface::from_request).transpose();
        let interface = run(interface)?;
        run(self.manager.start(&req.container_id, interface))?;
        Ok(StartContainerResponse::default())
    }

    fn exec_process(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<ExecProcessResponse> {
        let stdio = req.stdio.into_option().unwrap_or_default();
        let pid = run(self.manager.exec(&req.container_id, &req.exec_id, &req.process, &stdio))?;
        Ok(ExecProcessResponse { pid, ..Default::default() })
    }

    fn signal_process(&self, _ctx: &TtrpcContext, req: SignalProcessRequest) -> ttrpc::Result<SignalProcessResponse> {
        run(self.manager.signal(&req.container_id, &req.exec_id, req.signal, req.all))?;
        Ok(SignalProcessResponse::default())
    }

    fn wait_process(&self, _ctx: &TtrpcContext, req: WaitProcessRequest) -> ttrpc::Result<WaitProcessResponse> {
        let process = run(self.manager.process(&req.container_id, &req.exec_id))?;
        let exit = process.wait();
        Ok(WaitProcessResponse {
            exit_code: exit.code,
            signal: exit.signal,
            exited_at_unix_ns: exit.at_unix_ns,
            pid: process.pid,
            ..Default::default()
        })
    }

    fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        req: PauseContainerRequest,
    ) -> ttrpc::Result<PauseContainerResponse> {
        run(self.manager.pause(&req.container_id, true))?;
        Ok(PauseContainerResponse::default())
    }

    fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        req: ResumeContainerRequest,
    ) -> ttrpc::Result<ResumeContainerResponse> {
        run(self.manager.pause(&req.container_id, false))?;
        Ok(ResumeContainerResponse::default())
    }

    fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> ttrpc::Result<UpdateContainerResponse> {
        run(self.manager.update(&req.container_id, &req.resources))?;
        Ok(UpdateContainerResponse::default())
    }

    fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<RemoveContainerResponse> {
        run(self.manager.remove(&req.container_id))?;
        Ok(RemoveContainerResponse::default())
    }

    fn list_processes(&self, _ctx: &TtrpcContext, req: ListProcessesRequest) -> ttrpc::Result<ListProcessesResponse> {
        let pids = run(self.manager.pids(&req.container_id))?;
        Ok(ListProcessesResponse { pids, ..Default::default() })
    }

    fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: StatsContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        run(self.manager.stats(&req.container_id))
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<ResizePtyResponse> {
        let process = run(self.manager.process(&req.container_id, &req.exec_id))?;
        let (width, height) = (u16::try_from(req.width), u16::try_from(req.height));
        let (Ok(width), Ok(height)) = (width, height) else {
            return Err(status(
                Code::INVALID_ARGUMENT,
                format!("terminal size {}x{} is too large", req.width, req.height),
            ));
        };
        process.io.resize(width, height).map_err(|e| status(Code::FAILED_PRECONDITION, e.to_string()))?;
        Ok(ResizePtyResponse::default())
    }

    fn close_stdin(&self, _ctx: &TtrpcContext, req: CloseStdinRequest) -> ttrpc::Result<CloseStdinResponse> {
        let process = run(self.manager.process(&req.container_id, &req.exec_id))?;
        process.io.close_stdin();
        Ok(CloseStdinResponse::default())
    }

    fn get_oom_event(&self, ctx: &TtrpcContext, _req: GetOomEventRequest) -> ttrpc::Result<GetOomEventResponse> {
        let timeout = if ctx.timeout_nano > 0 { Duration::from_nanos(ctx.timeout_nano as u64) } else { OOM_WAIT };
        match self.manager.next_oom(timeout) {
            Some(container_id) => Ok(GetOomEventResponse { container_id, ..Default::default() }),
            None => Err(status(Code::DEADLINE_EXCEEDED, "no OOM event".into())),
        }
    }
}

/// Starts the ttrpc server on `address` (`vsock://-1:1024` in the guest).
pub fn serve(address: &str, service: AgentService) -> ttrpc::Result<ttrpc::Server> {
    let service: Arc<dyn Agent + Send + Sync> = Arc::new(service);
    let mut server = ttrpc::Server::new().bind(address)?.register_service(create_agent(service));
    server.start()?;
    Ok(server)
}
