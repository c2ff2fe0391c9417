//! The running VM: starts the vCPU threads, runs the main event loop (device
//! events, the control socket, VM events, termination signals) and decides when
//! and how the VM ends.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use brig_vmm_api::{
    ApiVersion, DeviceInfo, ErrorCode, MemoryDumped, Request, Response, RunState, Saved, VersionInfo, VmState,
    API_VERSION,
};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::api::{ApiServer, Readiness};
use crate::config::VmConfig;
use crate::coredump;
use crate::devices::bus::{lock, Bus};
use crate::devices::console::Console;
use crate::devices::virtio::mmio::MmioTransport;
use crate::event_loop::DeviceEvents;
use crate::events::{EventReceiver, EventSender, VmEvent};
use crate::metrics;
use crate::seccomp::{Seccomp, SeccompError, ThreadKind};
use crate::signals::SignalFd;
use crate::snapshot::{self, MachineState};
use crate::vcpu::{self, Request as VcpuRequest, Response as VcpuResponse, Vcpu, VcpuHandle, VcpuState};
use crate::vm::Vm;

const TOKEN_DEVICES: u64 = 1;
const TOKEN_VM_EVENTS: u64 = 2;
const TOKEN_SIGNALS: u64 = 3;
const TOKEN_API_LISTENER: u64 = 4;
/// API connections are `TOKEN_API_CONN | fd`.
const TOKEN_API_CONN: u64 = 1 << 32;

/// How long vCPUs get to acknowledge a pause, resume or exit.
const VCPU_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// After the console shows a panic, how long the guest gets to reset by itself.
const PANIC_GRACE: Duration = Duration::from_secs(2);
/// Console lines included in error reports.
pub const CONSOLE_TAIL_LINES: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("event loop failure")]
    Epoll(#[source] std::io::Error),
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
    #[error("cannot confine the main thread")]
    Confine(#[source] SeccompError),
}

/// Why the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    GuestReset,
    GuestPowerOff,
    /// `shutdown` on the control socket.
    Shutdown,
    Signal(i32),
    GuestPanic,
    VcpuFailed {
        index: u8,
        reason: String,
    },
}

impl ExitReason {
    /// brig-vmm's exit status (documented in docs/control-socket.md).
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::GuestReset | ExitReason::GuestPowerOff | ExitReason::Shutdown => 0,
            ExitReason::Signal(signal) => 128 + signal,
            ExitReason::GuestPanic => 2,
            ExitReason::VcpuFailed { .. } => 3,
        }
    }
}

#[derive(Debug)]
pub struct Outcome {
    pub reason: ExitReason,
    pub console_tail: String,
}

/// A built VM, ready to [`run`](Vmm::run).
pub struct Vmm {
    pub(crate) config: VmConfig,
    pub(crate) vm: Vm,
    pub(crate) vcpus: Vec<Vcpu>,
    pub(crate) io_bus: Arc<Bus>,
    pub(crate) mmio_bus: Arc<Bus>,
    pub(crate) devices: DeviceEvents,
    pub(crate) transports: Vec<Arc<Mutex<MmioTransport>>>,
    pub(crate) console: Console,
    pub(crate) events_tx: EventSender,
    pub(crate) events_rx: EventReceiver,
    pub(crate) api: Option<ApiServer>,
    pub(crate) signals: SignalFd,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm").field("config", &self.config).finish_non_exhaustive()
    }
}

/// The event loop's state once vCPUs run.
struct Running {
    vmm: Vmm,
    epoll: Epoll,
    handles: Vec<VcpuHandle>,
    responses: Receiver<VcpuResponse>,
    state: RunState,
    started: Instant,
    panic_deadline: Option<Instant>,
    exit: Option<ExitReason>,
}

impl Vmm {
    /// Starts the vCPUs and runs until the VM ends. With `seccomp` on, every vCPU thread
    /// and then this thread install their filters (docs/seccomp.md).
    pub fn run(mut self, seccomp: Seccomp) -> Result<Outcome, VmmError> {
        let epoll = Epoll::new().map_err(VmmError::Epoll)?;
        let add = |fd: RawFd, token: u64| {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token)).map_err(VmmError::Epoll)
        };
        add(self.devices.as_raw_fd(), TOKEN_DEVICES)?;
        add(self.events_rx.wake.as_raw_fd(), TOKEN_VM_EVENTS)?;
        add(self.signals.as_raw_fd(), TOKEN_SIGNALS)?;
        if let Some(api) = &self.api {
            add(api.listener_fd(), TOKEN_API_LISTENER)?;
        }

        let (responses_tx, responses): (Sender<VcpuResponse>, _) = std::sync::mpsc::channel();
        let mut handles = Vec::new();
        for vcpu in std::mem::take(&mut self.vcpus) {
            let (io_bus, mmio_bus, events) = (self.io_bus.clone(), self.mmio_bus.clone(), self.events_tx.clone());
            match vcpu.start(io_bus, mmio_bus, events, responses_tx.clone(), seccomp) {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    stop_vcpus(&mut handles, &responses);
                    return Err(e.into());
                }
            }
        }
        // Every thread is running: this one confines itself now, for the event loop and
        // the teardown. Its filter has no clone, so no thread can start after this.
        if let Err(e) = seccomp.confine(ThreadKind::Main) {
            stop_vcpus(&mut handles, &responses);
            return Err(VmmError::Confine(e));
        }
        let mut running = Running {
            vmm: self,
            epoll,
            handles,
            responses,
            state: RunState::Running,
            started: Instant::now(),
            panic_deadline: None,
            exit: None,
        };
        let result = running.event_loop();
        stop_vcpus(&mut running.handles, &running.responses);
        result?;
        let reason = running.exit.unwrap_or(ExitReason::Shutdown);
        Ok(Outcome { reason, console_tail: running.vmm.console.tail(CONSOLE_TAIL_LINES) })
    }
}

/// Asks every vCPU thread to exit and joins those that do.
fn stop_vcpus(handles: &mut [VcpuHandle], responses: &Receiver<VcpuResponse>) {
    for handle in handles.iter() {
        handle.send(VcpuRequest::Exit);
    }
    let deadline = Instant::now() + VCPU_ACK_TIMEOUT;
    while handles.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
        for handle in handles.iter().filter(|h| !h.is_finished()) {
            handle.kick();
        }
        let _ = responses.recv_timeout(Duration::from_millis(10));
    }
    for handle in handles.iter_mut() {
        if handle.is_finished() {
            handle.join();
        } else {
            log::error!("vCPU {} did not stop; leaving it to process exit", handle.index);
        }
    }
}

impl Running {
    fn event_loop(&mut self) -> Result<(), VmmError> {
        let mut events = [EpollEvent::default(); 32];
        while self.exit.is_none() {
            let timeout = match self.panic_deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()).as_millis() as i32,
                None => -1,
            };
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(VmmError::Epoll(e)),
            };
            for event in &events[..n] {
                self.dispatch(event.data());
            }
            if self.panic_deadline.is_some_and(|d| Instant::now() >= d) && self.exit.is_none() {
                self.exit = Some(ExitReason::GuestPanic);
            }
        }
        Ok(())
    }

    fn dispatch(&mut self, token: u64) {
        match token {
            TOKEN_DEVICES => {
                if let Err(e) = self.vmm.devices.dispatch() {
                    log::error!("device event dispatch failed: {e}");
                }
            }
            TOKEN_VM_EVENTS => self.on_vm_events(),
            TOKEN_SIGNALS => {
                if let Some(signal) = self.vmm.signals.read() {
                    log::info!("signal {signal}: stopping the VM");
                    self.exit.get_or_insert(ExitReason::Signal(signal));
                }
            }
            TOKEN_API_LISTENER => {
                if let Some(fd) = self.vmm.api.as_ref().map(ApiServer::listener_fd) {
                    self.on_api(fd);
                }
            }
            token if token & TOKEN_API_CONN != 0 => self.on_api(token as u32 as RawFd),
            _ => {}
        }
    }

    fn on_vm_events(&mut self) {
        let _ = self.vmm.events_rx.wake.read();
        while let Ok(event) = self.vmm.events_rx.rx.try_recv() {
            log::debug!("VM event {event:?}");
            let panicked = self.panic_deadline.is_some();
            let reason = match event {
                VmEvent::Panic => {
                    self.panic_deadline.get_or_insert(Instant::now() + PANIC_GRACE);
                    continue;
                }
                // A panicking kernel resets itself (panic=-1): that is still a panic.
                VmEvent::Reset | VmEvent::PowerOff if panicked => ExitReason::GuestPanic,
                VmEvent::Reset => ExitReason::GuestReset,
                VmEvent::PowerOff => ExitReason::GuestPowerOff,
                VmEvent::VcpuFailed { index, reason } => ExitReason::VcpuFailed { index, reason },
            };
            self.exit.get_or_insert(reason);
        }
    }

    fn on_api(&mut self, fd: RawFd) {
        let Some(api) = self.vmm.api.as_mut() else { return };
        match api.on_readable(fd) {
            Readiness::Accepted(fds) => {
                for fd in fds {
                    let event = EpollEvent::new(EventSet::IN, TOKEN_API_CONN | u64::from(fd as u32));
                    let _ = self.epoll.ctl(ControlOperation::Add, fd, event);
                }
            }
            Readiness::Closed(fd) => {
                let _ = self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
            Readiness::Requests(fd, requests) => {
                for request in requests {
                    let response = match request {
                        Ok(Request::SaveStateFd {}) => {
                            let file = self.vmm.api.as_mut().and_then(|api| api.take_fd(fd));
                            self.save_state(Target::Descriptor(file))
                        }
                        Ok(Request::DumpMemoryFd { vmcoreinfo_note_symbol }) => {
                            let file = self.vmm.api.as_mut().and_then(|api| api.take_fd(fd));
                            self.dump_memory(file, vmcoreinfo_note_symbol)
                        }
                        Ok(request) => self.handle(request),
                        Err(error) => Response::Error(error),
                    };
                    if let Some(api) = self.vmm.api.as_mut() {
                        if !api.reply(fd, &response) {
                            let _ = self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
                        }
                    }
                }
                if let Some(api) = self.vmm.api.as_mut() {
                    api.drop_unclaimed_fds(fd);
                }
            }
        }
    }

    fn handle(&mut self, request: Request) -> Response {
        log::info!("control request {request:?}");
        match request {
            Request::Version { client } => version(client),
            Request::Pause {} => self.pause(),
            Request::Resume {} => self.resume(),
            Request::Shutdown {} => {
                self.exit.get_or_insert(ExitReason::Shutdown);
                Response::RunState { state: RunState::Stopping }
            }
            Request::State {} => Response::State(self.vm_state()),
            Request::Metrics {} => Response::Metrics(Box::new(metrics::snapshot(self.vmm.config.machine.memory_mib))),
            Request::SaveState { path } => self.save_state(Target::Path(&path)),
            // Answered with its descriptor by the caller; here only if it came without one.
            Request::SaveStateFd {} => self.save_state(Target::Descriptor(None)),
            Request::DumpMemoryFd { .. } => self.dump_memory(None, None),
        }
    }

    /// Sends `request` to every vCPU and waits until each answered with `expect`.
    fn broadcast(&mut self, request: VcpuRequest) -> Result<Vec<VcpuResponse>, String> {
        for handle in &self.handles {
            handle.send(request);
        }
        let deadline = Instant::now() + VCPU_ACK_TIMEOUT;
        let mut answers = Vec::new();
        let mut pending: Vec<u8> = self.handles.iter().map(|h| h.index).collect();
        while !pending.is_empty() {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.responses.recv_timeout(wait) {
                Ok(VcpuResponse::Exited(index)) => {
                    return Err(format!("vCPU {index} has stopped"));
                }
                Ok(response) => {
                    let index = match &response {
                        VcpuResponse::Paused(i) | VcpuResponse::Resumed(i) | VcpuResponse::State(i, _) => *i,
                        VcpuResponse::Exited(i) => *i,
                    };
                    pending.retain(|&p| p != index);
                    answers.push(response);
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("vCPUs {pending:?} did not answer within {VCPU_ACK_TIMEOUT:?}"));
                }
                Err(RecvTimeoutError::Disconnected) => return Err("vCPU threads are gone".into()),
            }
        }
        Ok(answers)
    }

    fn set_devices_watched(&self, watched: bool) -> std::io::Result<()> {
        let fd = self.vmm.devices.as_raw_fd();
        if watched {
            self.epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, TOKEN_DEVICES))
        } else {
            self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default())
        }
    }

    fn pause(&mut self) -> Response {
        if self.state == RunState::Paused {
            return Response::RunState { state: RunState::Paused };
        }
        if let Err(e) = self.broadcast(VcpuRequest::Pause) {
            return Response::error(ErrorCode::Internal, format!("cannot pause: {e}"));
        }
        if let Err(e) = self.set_devices_watched(false) {
            return Response::error(ErrorCode::Internal, format!("cannot stop device processing: {e}"));
        }
        self.state = RunState::Paused;
        Response::RunState { state: RunState::Paused }
    }

    fn resume(&mut self) -> Response {
        if self.state == RunState::Running {
            return Response::RunState { state: RunState::Running };
        }
        if let Err(e) = self.set_devices_watched(true) {
            return Response::error(ErrorCode::Internal, format!("cannot restart device processing: {e}"));
        }
        if let Err(e) = self.broadcast(VcpuRequest::Resume) {
            return Response::error(ErrorCode::Internal, format!("cannot resume: {e}"));
        }
        self.state = RunState::Running;
        Response::RunState { state: RunState::Running }
    }

    fn vm_state(&self) -> VmState {
        let devices = self
            .vmm
            .transports
            .iter()
            .map(|t| {
                let snap = lock(t).snapshot();
                DeviceInfo { virtio_type: snap.device_type, activated: snap.activated, status: snap.status }
            })
            .collect();
        VmState {
            state: self.state,
            vcpus: self.vmm.config.machine.vcpus,
            memory_mib: self.vmm.config.machine.memory_mib,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            devices,
        }
    }

    /// Every vCPU's state, in index order; the VM must be paused (`op` names the request).
    fn paused_vcpus(&mut self, op: &str) -> Result<Vec<VcpuState>, Response> {
        if self.state != RunState::Paused {
            return Err(Response::error(
                ErrorCode::FailedPrecondition,
                format!("{op} needs a paused VM: send pause first"),
            ));
        }
        let answers = self
            .broadcast(VcpuRequest::SaveState)
            .map_err(|e| Response::error(ErrorCode::Internal, format!("cannot read vCPU state: {e}")))?;
        let mut vcpus = Vec::new();
        for answer in answers {
            if let VcpuResponse::State(index, state) = answer {
                match *state {
                    Ok(state) => vcpus.push(state),
                    Err(e) => return Err(Response::error(ErrorCode::Internal, format!("vCPU {index}: {e}"))),
                }
            }
        }
        vcpus.sort_by_key(|v| v.index);
        Ok(vcpus)
    }

    /// `dump-memory-fd`: guest RAM and the vCPUs' registers as an ELF core into `file`.
    fn dump_memory(&mut self, file: Option<std::os::fd::OwnedFd>, vmcoreinfo_note_symbol: Option<u64>) -> Response {
        let Some(file) = file else {
            return Response::error(
                ErrorCode::InvalidRequest,
                "dump-memory-fd needs a file descriptor sent with the request (SCM_RIGHTS)",
            );
        };
        let vcpus = match self.paused_vcpus("dump-memory-fd") {
            Ok(vcpus) => vcpus,
            Err(refusal) => return refusal,
        };
        let file = std::fs::File::from(file);
        if let Err(e) = snapshot::check_output(&file, true) {
            return Response::error(ErrorCode::FailedPrecondition, format!("the sent descriptor {e}"));
        }
        let regions = crate::arch::layout::ram_ranges(self.vmm.config.machine.memory_mib << 20);
        let cpus: Vec<coredump::Cpu> = vcpus.iter().map(coredump::Cpu::from).collect();
        let memory = self.vmm.vm.memory();
        let vmcoreinfo = vmcoreinfo_note_symbol.map(|symbol| coredump::find_vmcoreinfo(memory, symbol, &cpus));
        if let Some(Err(why)) = &vmcoreinfo {
            log::warn!("dump-memory-fd: no VMCOREINFO note: {why}");
        }
        let text = vmcoreinfo.as_ref().and_then(|found| found.as_deref().ok());
        let mut out = std::io::BufWriter::with_capacity(1 << 20, &file);
        let dumped = coredump::write(&mut out, memory, &regions, &cpus, text);
        drop(out);
        match dumped {
            Ok(dumped) => {
                // A regular file is synced before the answer; a pipe has nothing to sync.
                if file.metadata().is_ok_and(|m| m.file_type().is_file()) {
                    if let Err(e) = file.sync_all() {
                        return Response::error(ErrorCode::FailedPrecondition, format!("syncing the dump: {e}"));
                    }
                }
                Response::MemoryDumped(MemoryDumped {
                    bytes: dumped.bytes,
                    sha256: dumped.sha256.iter().map(|b| format!("{b:02x}")).collect(),
                    vcpus: cpus.len() as u8,
                    regions: regions.len() as u8,
                    vmcoreinfo_bytes: text.map_or(0, |t| t.len() as u32),
                    vmcoreinfo_missing: vmcoreinfo.and_then(Result::err),
                })
            }
            Err(e) => Response::error(ErrorCode::FailedPrecondition, error_chain(&e)),
        }
    }

    fn save_state(&mut self, target: Target<'_>) -> Response {
        let vcpus = match self.paused_vcpus("save-state") {
            Ok(vcpus) => vcpus,
            Err(refusal) => return refusal,
        };
        let vm = match self.vmm.vm.save_state() {
            Ok(vm) => vm,
            Err(e) => return Response::error(ErrorCode::Internal, e.to_string()),
        };
        let state = MachineState {
            vmm_version: env!("CARGO_PKG_VERSION").into(),
            config: self.vmm.config.clone(),
            vm,
            vcpus,
            devices: self.vmm.transports.iter().map(|t| lock(t).snapshot()).collect(),
        };
        let written = match target {
            Target::Path(path) => snapshot::write(path, &state).map(|bytes| (Some(path.to_path_buf()), bytes)),
            Target::Descriptor(Some(fd)) => {
                snapshot::write_to(std::fs::File::from(fd), "the sent descriptor", &state).map(|bytes| (None, bytes))
            }
            Target::Descriptor(None) => {
                return Response::error(
                    ErrorCode::InvalidRequest,
                    "save-state-fd needs a file descriptor sent with the request (SCM_RIGHTS)",
                )
            }
        };
        match written {
            Ok((path, bytes)) => Response::Saved(Saved { path, bytes }),
            Err(e) => Response::error(ErrorCode::FailedPrecondition, error_chain(&e)),
        }
    }
}

/// Where `save-state` writes: a new file it creates, or one the client sent.
enum Target<'a> {
    Path(&'a std::path::Path),
    Descriptor(Option<std::os::fd::OwnedFd>),
}

/// The answer to `version`: refused when the client names another major version.
fn version(client: Option<ApiVersion>) -> Response {
    match client {
        Some(client) if !API_VERSION.compatible_with(client) => Response::error(
            ErrorCode::VersionMismatch,
            format!("brig-vmm speaks control API {API_VERSION}, the client {client}: install matching brig binaries"),
        ),
        _ => Response::Version(VersionInfo { api: API_VERSION, vmm_version: env!("CARGO_PKG_VERSION").into() }),
    }
}

/// An error and its sources, as one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_answers_and_refuses_another_major() {
        let Response::Version(info) = version(None) else { panic!("a version") };
        assert_eq!(info.api, API_VERSION);
        assert!(matches!(version(Some(API_VERSION)), Response::Version(_)));
        let other = ApiVersion { major: API_VERSION.major + 1, minor: 0 };
        let Response::Error(error) = version(Some(other)) else { panic!("refused") };
        assert_eq!(error.code, ErrorCode::VersionMismatch);
        assert!(error.message.contains(&API_VERSION.to_string()) && error.message.contains(&other.to_string()));
    }
}
