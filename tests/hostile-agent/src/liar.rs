//! The modes that speak the protocol but lie with it, served by brig-protocol's
//! own ttrpc server: containers that do not exist, exits that did not happen,
//! signals that are not sent, OOM kills without end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use brig_protocol::agent::*;
use brig_protocol::agent_ttrpc::{create_agent, Agent};
use brig_protocol::ttrpc::{self, Code, TtrpcContext};
use brig_protocol::{AGENT_VSOCK_PORT, API_MAJOR, API_MINOR};

use crate::Mode;

/// The pid every lie names.
const MADE_UP_PID: u32 = 31337;
/// The exit status `lie` reports for any process, at once.
const MADE_UP_STATUS: i32 = 42;
/// How long a `GetOomEvent` with no deadline waits when there is nothing to flood.
const OOM_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct State {
    container: Option<String>,
    /// Exit statuses by exec id ("" for the container's own process).
    exits: HashMap<String, i32>,
}

#[derive(Debug)]
struct Liar {
    mode: Mode,
    state: Mutex<State>,
    exited: Condvar,
    /// `mute`: set once StartContainer has been answered.
    started: AtomicBool,
}

impl Liar {
    /// `mute`: once the container has "started", no call is ever answered again
    /// (the handler's thread waits forever), `Ping` included.
    fn mute(&self) {
        if self.mode == Mode::Mute && self.started.load(Ordering::SeqCst) {
            loop {
                std::thread::park();
            }
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn deadline_exceeded(message: &str) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(Code::DEADLINE_EXCEEDED, message))
}

/// Serves the agent API in `mode` (`lie`, `oom-flood`, `never-wait` or `mute`) in the
/// server's own threads, for as long as the server is kept.
pub fn serve(mode: Mode) -> Result<ttrpc::Server, String> {
    let liar: Arc<dyn Agent + Send + Sync> =
        Arc::new(Liar { mode, state: Mutex::default(), exited: Condvar::new(), started: AtomicBool::new(false) });
    let address = format!("vsock://-1:{AGENT_VSOCK_PORT}");
    let server = ttrpc::Server::new().bind(&address).map_err(|e| format!("bind {address}: {e}"))?;
    let mut server = server.register_service(create_agent(liar));
    server.start().map_err(|e| format!("start: {e}"))?;
    Ok(server)
}

impl Agent for Liar {
    fn ping(&self, _ctx: &TtrpcContext, _req: PingRequest) -> ttrpc::Result<PingResponse> {
        self.mute();
        Ok(PingResponse {
            agent_version: "hostile".into(),
            api_major: API_MAJOR,
            api_minor: API_MINOR,
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> ttrpc::Result<ShutdownResponse> {
        self.mute();
        if self.mode == Mode::Lie {
            println!("hostile: Shutdown acknowledged, and ignored");
        } else {
            crate::power_off();
        }
        Ok(ShutdownResponse::default())
    }

    fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<CreateContainerResponse> {
        println!("hostile: CreateContainer {} (nothing is created)", req.container_id);
        self.state().container = Some(req.container_id);
        Ok(CreateContainerResponse { pid: MADE_UP_PID, ..Default::default() })
    }

    fn start_container(
        &self,
        _ctx: &TtrpcContext,
        _req: StartContainerRequest,
    ) -> ttrpc::Result<StartContainerResponse> {
        if self.mode == Mode::Mute {
            println!("hostile: StartContainer answered; from now on nothing is");
            self.started.store(true, Ordering::SeqCst);
        }
        Ok(StartContainerResponse::default())
    }

    fn exec_process(&self, _ctx: &TtrpcContext, _req: ExecProcessRequest) -> ttrpc::Result<ExecProcessResponse> {
        self.mute();
        Ok(ExecProcessResponse { pid: MADE_UP_PID, ..Default::default() })
    }

    fn signal_process(&self, _ctx: &TtrpcContext, req: SignalProcessRequest) -> ttrpc::Result<SignalProcessResponse> {
        self.mute();
        println!("hostile: signal {} to {:?} acknowledged", req.signal, req.exec_id);
        if self.mode == Mode::OomFlood && (req.signal == 9 || req.signal == 15) {
            self.state().exits.insert(req.exec_id, 128 + req.signal as i32);
            self.exited.notify_all();
        }
        Ok(SignalProcessResponse::default())
    }

    fn wait_process(&self, _ctx: &TtrpcContext, req: WaitProcessRequest) -> ttrpc::Result<WaitProcessResponse> {
        self.mute();
        let exit_code = match self.mode {
            Mode::Lie => MADE_UP_STATUS,
            Mode::OomFlood => {
                let mut state = self.state();
                loop {
                    if let Some(code) = state.exits.get(&req.exec_id) {
                        break *code;
                    }
                    state = self.exited.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            }
            _ => {
                println!("hostile: Wait {:?} will never be answered", req.exec_id);
                loop {
                    std::thread::park();
                }
            }
        };
        Ok(WaitProcessResponse { exit_code, exited_at_unix_ns: 1, pid: MADE_UP_PID, ..Default::default() })
    }

    fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        _req: PauseContainerRequest,
    ) -> ttrpc::Result<PauseContainerResponse> {
        self.mute();
        Ok(PauseContainerResponse::default())
    }

    fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        _req: ResumeContainerRequest,
    ) -> ttrpc::Result<ResumeContainerResponse> {
        self.mute();
        Ok(ResumeContainerResponse::default())
    }

    fn update_container(
        &self,
        _ctx: &TtrpcContext,
        _req: UpdateContainerRequest,
    ) -> ttrpc::Result<UpdateContainerResponse> {
        self.mute();
        Ok(UpdateContainerResponse::default())
    }

    fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        _req: RemoveContainerRequest,
    ) -> ttrpc::Result<RemoveContainerResponse> {
        self.mute();
        Ok(RemoveContainerResponse::default())
    }

    fn list_processes(&self, _ctx: &TtrpcContext, _req: ListProcessesRequest) -> ttrpc::Result<ListProcessesResponse> {
        self.mute();
        let pids = if self.mode == Mode::Lie { vec![0, MADE_UP_PID, u32::MAX] } else { vec![MADE_UP_PID] };
        Ok(ListProcessesResponse { pids, ..Default::default() })
    }

    fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        _req: StatsContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        self.mute();
        Ok(StatsContainerResponse::default())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, _req: ResizePtyRequest) -> ttrpc::Result<ResizePtyResponse> {
        self.mute();
        Ok(ResizePtyResponse::default())
    }

    fn close_stdin(&self, _ctx: &TtrpcContext, _req: CloseStdinRequest) -> ttrpc::Result<CloseStdinResponse> {
        self.mute();
        Ok(CloseStdinResponse::default())
    }

    fn get_oom_event(&self, ctx: &TtrpcContext, _req: GetOomEventRequest) -> ttrpc::Result<GetOomEventResponse> {
        self.mute();
        let container = self.state().container.clone();
        match container {
            Some(container_id) if self.mode == Mode::OomFlood => {
                Ok(GetOomEventResponse { container_id, ..Default::default() })
            }
            _ => {
                let wait = if ctx.timeout_nano > 0 { Duration::from_nanos(ctx.timeout_nano as u64) } else { OOM_WAIT };
                std::thread::sleep(wait.min(OOM_WAIT));
                Err(deadline_exceeded("no OOM event"))
            }
        }
    }
}
