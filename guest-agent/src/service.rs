//! The agent API implementation.

use std::sync::Arc;

use brig_protocol::agent::{
    GuestInfoRequest, GuestInfoResponse, PingRequest, PingResponse, ShutdownRequest, ShutdownResponse,
};
use brig_protocol::agent_ttrpc::{create_agent, Agent};
use brig_protocol::ttrpc::{self, TtrpcContext};
use brig_protocol::{API_MAJOR, API_MINOR};

use crate::guest_info;
use crate::reaper::Reaper;

/// How long after answering `Shutdown` the agent ends the VM (so the reply leaves first).
const SHUTDOWN_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

#[derive(Debug)]
pub struct AgentService {
    #[allow(dead_code)] // used by the container API
    reaper: Arc<Reaper>,
    /// Called to end the VM; `init::power_off` in the guest.
    power_off: fn() -> !,
}

impl AgentService {
    pub fn new(reaper: Arc<Reaper>, power_off: fn() -> !) -> AgentService {
        AgentService { reaper, power_off }
    }
}

fn internal(what: &str, e: impl std::fmt::Display) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::INTERNAL, format!("{what}: {e}")))
}

impl Agent for AgentService {
    fn ping(&self, _ctx: &TtrpcContext, _req: PingRequest) -> ttrpc::Result<PingResponse> {
        Ok(PingResponse {
            agent_version: crate::VERSION.to_owned(),
            api_major: API_MAJOR,
            api_minor: API_MINOR,
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

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> ttrpc::Result<ShutdownResponse> {
        log::info!("shutdown requested");
        let power_off = self.power_off;
        std::thread::spawn(move || {
            std::thread::sleep(SHUTDOWN_DELAY);
            power_off();
        });
        Ok(ShutdownResponse::default())
    }
}

/// Starts the ttrpc server on `address` (`vsock://-1:1024` in the guest).
pub fn serve(address: &str, service: AgentService) -> ttrpc::Result<ttrpc::Server> {
    let service: Arc<dyn Agent + Send + Sync> = Arc::new(service);
    let mut server = ttrpc::Server::new().bind(address)?.register_service(create_agent(service));
    server.start()?;
    Ok(server)
}
