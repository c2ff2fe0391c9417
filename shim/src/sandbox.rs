//! The micro-VM behind a task: brig-vmm started with a JSON configuration, the
//! guest agent reached through its hybrid vsock socket, and teardown.
//!
//! The shim never links the VMM: it writes `vm.json`, starts the `brig-vmm`
//! binary, and talks to it only through its sockets (docs/control-socket.md).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use brig_protocol::agent::{PingRequest, PingResponse};
use brig_protocol::agent_ttrpc_async::AgentClient;
use brig_protocol::stdio::{Header, Stream, STDIO_VSOCK_PORT};
use brig_protocol::ttrpc::asynchronous::transport::Socket;
use brig_protocol::ttrpc::context;
use brig_protocol::{AGENT_VSOCK_PORT, API_MAJOR, API_MINOR};
use brig_vmm_api::client::{AsyncClient, ClientError};
use brig_vmm_api::config::{
    BlockConfig, BootConfig, MacAddr, MachineConfig, NetConfig, VmConfig, VsockConfig, DEFAULT_CMDLINE,
};
use brig_vmm_api::vsock::{self, VsockError};
use tokio::sync::watch;

use crate::config::Config;
use crate::error::ShimError;
use crate::files;
use crate::guest::{AgentGuest, Guest};
use crate::jail::{self, Jail, Layout, VmPaths};
use crate::timeline::{self, Step};

/// Guest CID of every brig VM (each VM has its own vsock device).
const GUEST_CID: u64 = 3;
/// Serial of the rootfs block device (the agent finds it by this).
pub const ROOTFS_SERIAL: &str = "rootfs";
/// How long the agent gets to power the VM off before brig-vmm is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How a VM is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub vcpus: u8,
    pub memory_mib: u64,
    /// The spec's CPU quota and period (µs), for the jail's `cpu.max`.
    pub cpu_max: Option<(u64, u64)>,
}

/// A running VM.
pub struct Sandbox {
    pub dir: PathBuf,
    pub vmm_pid: u32,
    /// The agent; callers reach it as a [`Guest`] through [`Sandbox::guest`].
    agent: Arc<AgentGuest>,
    /// Where brig-vmm's sockets and console are (host side).
    layout: Layout,
    /// The jail's uid lease and cgroup (`None` with `jail = false`).
    jail: Option<Jail>,
    /// `Some(exit code)` once brig-vmm has exited.
    exited: watch::Receiver<Option<i32>>,
    stopping: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("dir", &self.dir).field("vmm_pid", &self.vmm_pid).finish_non_exhaustive()
    }
}

pub fn ctx(timeout: Duration) -> context::Context {
    context::with_timeout(timeout.as_nanos() as i64)
}

/// How long the vsock handshake and brig-vmm's control socket get to answer.
const VMM_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// brig-vmm's configuration (`vm.json`, read by `brig-vmm --config`), with the
/// paths brig-vmm sees (inside its jail, when it has one).
pub fn vm_config(config: &Config, paths: &VmPaths, size: Size) -> VmConfig {
    VmConfig {
        machine: MachineConfig {
            huge_pages: config.huge_pages,
            memory_dir: paths.memory_dir.clone(),
            ..MachineConfig::new(size.vcpus, size.memory_mib)
        },
        boot: BootConfig {
            kernel: paths.kernel.clone(),
            initramfs: Some(paths.initramfs.clone()),
            // brig-vmm's cmdline replaces its default: keep the default, then add.
            cmdline: config.kernel_cmdline_extra.as_ref().map(|extra| format!("{DEFAULT_CMDLINE} {extra}")),
        },
        console: Some(paths.console.clone()),
        vsock: Some(VsockConfig { guest_cid: GUEST_CID, uds_path: paths.vsock.clone() }),
        block: vec![BlockConfig { path: paths.rootfs.clone(), read_only: true, serial: Some(ROOTFS_SERIAL.into()) }],
        rng: true,
        net: Vec::new(),
        api_socket: Some(paths.api.clone()),
    }
}

/// brig-vmm's arguments for `vm_json` (a path as brig-vmm sees it).
fn vmm_args(config: &Config, vm_json: &Path) -> Vec<String> {
    vec!["--config".into(), vm_json.to_string_lossy().into_owned(), "--log-level".into(), config.log_level.clone()]
}

/// The variables brig-vmm gets from the shim's environment; it starts with a
/// cleared one, so nothing else in containerd's environment reaches it (its log
/// level is `--log-level`, not `RUST_LOG`).
const VMM_ENV: &[&str] = &["PATH", "RUST_BACKTRACE"];
/// brig-vmm's `PATH` when the shim has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The brig-vmm command for `vm_json`: its flags, and an environment of only
/// [`VMM_ENV`] (stdio and spawning are the caller's).
pub fn vmm_command(config: &Config, vm_json: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(&config.vmm);
    cmd.args(vmm_args(config, vm_json)).env_clear();
    for name in VMM_ENV {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", DEFAULT_PATH);
    }
    cmd
}

/// How much of the console's end is read for error messages.
const CONSOLE_TAIL_BYTES: u64 = 16 << 10;

/// The guest NIC of a VM (crate::network): the tap brig-vmm serves, the address and
/// MTU the NIC boots with, and the network namespace brig-vmm runs in (the task's,
/// so that `/proc/<task pid>/ns/net` is it, as containerd and CNI expect).
#[derive(Debug)]
pub struct Nic {
    pub tap: std::os::fd::OwnedFd,
    pub mac: [u8; 6],
    pub mtu: u16,
    pub netns: PathBuf,
}

/// The end of brig-vmm's (and brig-jailer's) stderr, `vmm.log`, for error messages.
pub fn vmm_log_tail(dir: &Path) -> String {
    files::read_tail(&dir.join("vmm.log"), CONSOLE_TAIL_BYTES)
}

/// The last lines of the guest console, for error messages (read as the jail's
/// files are: [`files::read_tail`]).
pub fn console_tail(console: &Path) -> String {
    let text = files::read_tail(console, CONSOLE_TAIL_BYTES);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl Sandbox {
    /// Starts brig-vmm in `dir` and waits for the agent.
    pub async fn start(
        config: &Config,
        dir: &Path,
        size: Size,
        rootfs_image: &Path,
        nic: Option<Nic>,
    ) -> Result<Arc<Sandbox>, ShimError> {
        let layout = Layout::new(config, dir, rootfs_image);
        let mut vm = vm_config(config, &layout.vm, size);
        // brig-vmm inherits the tap at the number it has here; the shim's copy closes
        // when `nic` drops at the end of this call, so the tap dies with brig-vmm.
        let tap_fd = nic.as_ref().map(|nic| nic.tap.as_raw_fd());
        if let (Some(nic), Some(tap_fd)) = (&nic, tap_fd) {
            vm.net.push(NetConfig { tap_fd, mac: MacAddr(nic.mac), mtu: nic.mtu });
        }
        let body = serde_json::to_vec_pretty(&vm).map_err(|e| ShimError::Internal(format!("encoding vm.json: {e}")))?;
        files::write_private(&dir.join("vm.json"), body)?;
        let vmm_args = vmm_args(config, &layout.vm.vm_json);
        let netns = nic.as_ref().map(|nic| nic.netns.clone());
        let (mut command, jail) = if config.jail {
            let keep_fds = tap_fd.into_iter().collect();
            let (command, jail) = jail::prepare(config, dir, size, rootfs_image, vmm_args, keep_fds, netns)?;
            (command, Some(jail))
        } else {
            log::warn!("brig-vmm runs WITHOUT its jail (jail = false in the config): for development only");
            let mut command = vmm_command(config, &layout.vm.vm_json);
            if let Some(netns) = netns {
                let file =
                    std::fs::File::open(&netns).map_err(ShimError::io(format!("opening {}", netns.display())))?;
                brig_policy::sys::enter_netns_on_exec(&mut command, file.into());
            }
            (command, None)
        };
        if let Some(fd) = tap_fd {
            brig_policy::sys::keep_open_on_exec(&mut command, fd);
        }
        let started = spawn(config, dir, command).await;
        drop(nic);
        let (exited, vmm_pid) = match started {
            Ok(started) => {
                timeline::mark(Step::VmmSpawned);
                started
            }
            Err(e) => {
                if let Some(jail) = &jail {
                    jail.release();
                }
                return Err(e);
            }
        };
        let ready = match files::write_private(&dir.join("vmm.pid"), vmm_pid.to_string()) {
            Ok(()) => wait_for_agent(config, dir, &layout, &exited).await,
            Err(e) => Err(e.into()),
        };
        let agent = match ready {
            Ok(agent) => agent,
            Err(e) => {
                // Nothing of the VM outlives a failed start: brig-vmm, its cgroup, its uid.
                kill(vmm_pid);
                let mut exited = exited.clone();
                let _ = tokio::time::timeout(STOP_GRACE, exited.wait_for(Option::is_some)).await;
                if let Some(jail) = &jail {
                    jail.release();
                }
                return Err(e);
            }
        };
        let sandbox = Sandbox {
            dir: dir.to_path_buf(),
            vmm_pid,
            agent: Arc::new(AgentGuest::new(agent).with_console(layout.console.clone())),
            layout,
            jail,
            exited,
            stopping: std::sync::atomic::AtomicBool::new(false),
        };
        Ok(Arc::new(sandbox))
    }

    /// brig-vmm's exit code, once it has exited.
    pub fn exit_code(&self) -> Option<i32> {
        *self.exited.borrow()
    }

    /// Waits until brig-vmm exits.
    pub async fn wait_exit(&self) -> i32 {
        let mut exited = self.exited.clone();
        loop {
            if let Some(code) = *exited.borrow_and_update() {
                return code;
            }
            if exited.changed().await.is_err() {
                return 255;
            }
        }
    }

    /// The guest agent in this VM.
    pub fn guest(&self) -> Arc<dyn Guest> {
        self.agent.clone()
    }

    /// Whether [`Sandbox::stop`] has begun (an exit after that is expected).
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Opens one stdio stream of a guest process (blocking socket, for copy threads).
    pub async fn attach(&self, container_id: &str, exec_id: &str, stream: Stream) -> Result<StdUnixStream, ShimError> {
        let vsock = self.layout.vsock.clone();
        let header = Header { container_id: container_id.into(), exec_id: exec_id.into(), stream };
        tokio::task::spawn_blocking(move || attach_blocking(&vsock, &header))
            .await
            .map_err(|e| ShimError::Internal(format!("attach task: {e}")))?
    }

    /// brig-vmm's control socket (docs/control-socket.md), version checked.
    pub async fn control(&self) -> Result<AsyncClient, ShimError> {
        let socket = socket(&self.layout.api)?;
        AsyncClient::connect(socket.path(), VMM_ANSWER_TIMEOUT).await.map_err(ShimError::from)
    }

    /// Powers the guest off through the agent; if it does not go, tells brig-vmm to
    /// stop; if that does not work either, kills brig-vmm.
    pub async fn stop(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        if self.exit_code().is_none() {
            let _ = tokio::time::timeout(Duration::from_secs(3), self.agent.shutdown()).await;
            if tokio::time::timeout(STOP_GRACE, self.wait_exit()).await.is_err() {
                self.stop_vmm().await;
            }
        }
        // A killed VMM cannot remove its sockets.
        for socket in [&self.layout.vsock, &self.layout.api] {
            let _ = std::fs::remove_file(socket);
        }
        if let Some(jail) = &self.jail {
            jail.release();
        }
    }

    /// The guest console's last lines.
    pub fn console_tail(&self) -> String {
        console_tail(&self.layout.console)
    }
}

impl Sandbox {
    /// A guest that did not power off: brig-vmm's `shutdown`, then SIGKILL.
    async fn stop_vmm(&self) {
        let asked = match self.control().await {
            Ok(mut control) => control.shutdown().await.map_err(ShimError::from),
            Err(e) => Err(e),
        };
        match asked {
            Ok(_) if tokio::time::timeout(STOP_GRACE, self.wait_exit()).await.is_ok() => return,
            Ok(_) => log::warn!("brig-vmm {} accepted shutdown but did not exit; killing it", self.vmm_pid),
            Err(e) => log::warn!("brig-vmm {} did not take shutdown ({}); killing it", self.vmm_pid, e.chain()),
        }
        kill(self.vmm_pid);
        let _ = tokio::time::timeout(STOP_GRACE, self.wait_exit()).await;
    }
}

/// brig-vmm's (and brig-jailer's) exit codes that say more than a number: see
/// `brig-vmm --help` and docs/seccomp.md.
pub fn exit_meaning(code: i32) -> Option<&'static str> {
    match code {
        1 => Some("the VM (or its jail) could not be started"),
        2 => Some("the guest kernel panicked"),
        3 => Some("a vCPU failed"),
        30 => Some("brig-jailer could not build the jail (vmm.log names the step and the fix)"),
        31 => Some("a brig-vmm thread made a system call its seccomp filter denies (vmm.log names it)"),
        137 => Some("brig-vmm was SIGKILLed"),
        _ => None,
    }
}

/// How long brig-jailer may take to report brig-vmm's pid.
const JAILER_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts `command` (brig-vmm, or brig-jailer running it) with its stderr in
/// `vmm.log`; returns a watch on its exit code and brig-vmm's pid (with a jail,
/// the pid brig-jailer prints as `pid N`).
async fn spawn(
    config: &Config,
    dir: &Path,
    command: std::process::Command,
) -> Result<(watch::Receiver<Option<i32>>, u32), ShimError> {
    let log = files::private_file(&dir.join("vmm.log"))?;
    let program = command.get_program().to_owned();
    let mut child = tokio::process::Command::from(command)
        .stdin(Stdio::null())
        .stdout(if config.jail { Stdio::piped() } else { Stdio::null() })
        .stderr(log)
        .kill_on_drop(false)
        .spawn()
        .map_err(ShimError::io(format!("starting {}", Path::new(&program).display())))?;
    let jailer_out = child.stdout.take();
    let own_pid = child.id().unwrap_or(0);
    let vmm_pid = match jailer_out {
        None => Ok(own_pid),
        Some(out) => {
            let mut line = String::new();
            let mut out = tokio::io::BufReader::new(out);
            let read = tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line);
            let read = tokio::time::timeout(JAILER_TIMEOUT, read).await;
            match brig_policy::jail::parse_pid_line(&line) {
                Some(pid) if read.is_ok() => Ok(pid),
                _ => {
                    // The jailer itself (the shim's child): brig-vmm dies with it.
                    let _ = child.start_kill();
                    let status = tokio::time::timeout(STOP_GRACE, child.wait()).await;
                    let code = match status {
                        Ok(Ok(status)) => exit_code(&status).to_string(),
                        _ => "none yet".to_owned(),
                    };
                    Err(ShimError::FailedPrecondition(format!(
                        "brig-jailer could not start brig-vmm (exit code {code}): {}",
                        vmm_log_tail(dir).trim()
                    )))
                }
            }
        }
    };
    let (tx, exited) = watch::channel(None);
    tokio::spawn(async move {
        let code = match child.wait().await {
            Ok(status) => exit_code(&status),
            Err(_) => 255,
        };
        let _ = tx.send(Some(code));
    });
    vmm_pid.map(|pid| (exited, pid))
}

/// Connects to the guest agent, until brig-vmm exits or `agent_timeout_secs` pass.
async fn wait_for_agent(
    config: &Config,
    dir: &Path,
    layout: &Layout,
    exited: &watch::Receiver<Option<i32>>,
) -> Result<AgentClient, ShimError> {
    let deadline = Instant::now() + Duration::from_secs(config.agent_timeout_secs);
    loop {
        if let Some(code) = *exited.borrow() {
            return Err(ShimError::Unavailable(format!(
                "brig-vmm exited ({code}{}) before the guest agent answered: {}\nconsole:\n{}",
                exit_meaning(code).map(|m| format!(": {m}")).unwrap_or_default(),
                vmm_log_tail(dir).trim(),
                console_tail(&layout.console)
            )));
        }
        if Instant::now() > deadline {
            return Err(ShimError::DeadlineExceeded(format!(
                "the guest agent did not answer within {}s (agent_timeout_secs): {}\nconsole:\n{}",
                config.agent_timeout_secs,
                vmm_log_tail(dir).trim(),
                console_tail(&layout.console)
            )));
        }
        // Each attempt ends by the deadline: a VMM that accepts for a guest that never
        // answers cannot hold Create past agent_timeout_secs.
        let attempt = deadline.saturating_duration_since(Instant::now()).min(VMM_ANSWER_TIMEOUT);
        if let Ok((agent, pong)) = ping_agent(&layout.vsock, attempt).await {
            timeline::guest_clock(Duration::from_nanos(pong.boottime_ns), Duration::from_nanos(pong.agent_started_ns));
            timeline::mark(Step::AgentReady);
            return Ok(agent);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl From<VsockError> for ShimError {
    fn from(e: VsockError) -> Self {
        match e {
            VsockError::Timeout { .. } => ShimError::DeadlineExceeded(e.to_string()),
            VsockError::BadReply { .. } => ShimError::Internal(e.to_string()),
            VsockError::Connect { .. } | VsockError::Io { .. } | VsockError::NotListening { .. } => {
                ShimError::Unavailable(crate::error::chain(&e))
            }
        }
    }
}

impl From<ClientError> for ShimError {
    fn from(e: ClientError) -> Self {
        use brig_vmm_api::ErrorCode;
        match &e {
            ClientError::Timeout(_) => ShimError::DeadlineExceeded(e.to_string()),
            ClientError::Connect { .. } | ClientError::Io(_) | ClientError::Closed => {
                ShimError::Unavailable(crate::error::chain(&e))
            }
            ClientError::VersionMismatch { .. } => ShimError::FailedPrecondition(e.to_string()),
            ClientError::Api { error, .. } if error.code == ErrorCode::FailedPrecondition => {
                ShimError::FailedPrecondition(e.to_string())
            }
            _ => ShimError::Internal(e.to_string()),
        }
    }
}

/// A process's exit code, or 128 + the signal that ended it (as a shell reports it).
fn exit_code(status: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or(128 + status.signal().unwrap_or(0))
}

/// SIGKILLs a brig-vmm process.
pub fn kill(pid: u32) {
    if pid > 0 {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Kills the brig-vmm recorded in `dir/vmm.pid`, if that pid is still a brig-vmm
/// (containerd's `shim delete` after the shim itself died).
pub fn kill_recorded(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join("vmm.pid")).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    if !String::from_utf8_lossy(argv0).ends_with("brig-vmm") {
        return None;
    }
    kill(pid);
    Some(pid)
}

/// One of brig-vmm's sockets, checked to be one ([`files::SocketPath`]).
fn socket(path: &Path) -> Result<files::SocketPath, ShimError> {
    files::SocketPath::open(path).map_err(ShimError::io(format!("opening {}", path.display())))
}

/// A client of the guest agent behind the hybrid vsock socket `vsock` (never through
/// a symlink), checked with `Ping` to speak this build's API; also brig snapshot's.
pub async fn connect_agent(vsock: &Path, timeout: Duration) -> Result<AgentClient, ShimError> {
    ping_agent(vsock, timeout).await.map(|(client, _)| client)
}

/// [`connect_agent`], with the agent's `Ping` answer.
async fn ping_agent(vsock: &Path, timeout: Duration) -> Result<(AgentClient, PingResponse), ShimError> {
    let socket = socket(vsock)?;
    let stream = vsock::connect_async(socket.path(), AGENT_VSOCK_PORT, timeout).await?;
    let client = AgentClient::new(brig_protocol::ttrpc::asynchronous::Client::new(Socket::from(stream)));
    let pong = client
        .ping(ctx(timeout.max(Duration::from_millis(100))), &PingRequest::new())
        .await
        .map_err(|e| ShimError::Unavailable(format!("the guest agent does not answer Ping: {e}")))?;
    if pong.api_major != API_MAJOR || pong.api_minor < API_MINOR {
        return Err(ShimError::FailedPrecondition(format!(
            "the guest agent speaks API {}.{}, this shim needs {API_MAJOR}.{API_MINOR}: install matching brig artifacts",
            pong.api_major, pong.api_minor
        )));
    }
    Ok((client, pong))
}

fn attach_blocking(vsock: &Path, header: &Header) -> Result<StdUnixStream, ShimError> {
    let io = |what: &str| ShimError::io(format!("{what} {}", header.stream.as_str()));
    let socket = socket(vsock)?;
    let mut conn = vsock::connect(socket.path(), STDIO_VSOCK_PORT, VMM_ANSWER_TIMEOUT)?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).map_err(io("stdio timeout"))?;
    conn.write_all(header.to_string().as_bytes()).map_err(io("stdio header"))?;
    let agent_reply = read_line(&mut conn).map_err(io("stdio header"))?;
    if agent_reply != "OK" {
        return Err(ShimError::FailedPrecondition(format!("attaching {}: {agent_reply}", header.stream.as_str())));
    }
    conn.set_read_timeout(None).map_err(io("stdio timeout"))?;
    Ok(conn)
}

/// The agent's one-line answer to a stdio header, read byte by byte so that no
/// byte of the stream after it is consumed.
fn read_line(conn: &mut StdUnixStream) -> std::io::Result<String> {
    const MAX_REPLY: usize = 512;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < MAX_REPLY && conn.read(&mut byte)? == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vm_gets_the_rootfs_read_only_and_its_own_sockets() {
        let config = Config::default();
        let open = Config { jail: false, ..config.clone() };
        let layout = Layout::new(&open, Path::new("/run/brig/x"), Path::new("/img"));
        let vm = vm_config(&config, &layout.vm, Size { vcpus: 2, memory_mib: 192, cpu_max: None });
        assert_eq!((vm.machine.vcpus, vm.machine.memory_mib, vm.machine.huge_pages), (2, 192, true));
        assert_eq!(vm.block, vec![BlockConfig { path: "/img".into(), read_only: true, serial: Some("rootfs".into()) }]);
        assert_eq!(vm.vsock.expect("vsock").uds_path, Path::new("/run/brig/x/vsock.sock"));
        assert_eq!(vm.api_socket.as_deref(), Some(Path::new("/run/brig/x/api.sock")));
    }

    #[test]
    fn extra_kernel_parameters_follow_brigs_own() {
        let paths = Layout::new(&Config::default(), Path::new("/d"), Path::new("/i")).vm;
        let plain = vm_config(&Config::default(), &paths, Size { vcpus: 1, memory_mib: 128, cpu_max: None });
        assert_eq!(plain.boot.cmdline, None, "brig-vmm's default");
        let config = Config { kernel_cmdline_extra: Some("hostile.mode=silent".into()), ..Config::default() };
        let vm = vm_config(&config, &paths, Size { vcpus: 1, memory_mib: 128, cpu_max: None });
        assert_eq!(vm.boot.cmdline.as_deref(), Some("console=ttyS0 quiet hostile.mode=silent"));
        assert!(vm.boot.base_cmdline().ends_with("hostile.mode=silent reboot=k panic=-1"));
    }

    #[test]
    fn brig_vmm_starts_with_only_the_allowed_environment() {
        let dir = std::env::temp_dir().join(format!("brig-shim-vmm-env-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        // A "brig-vmm" that writes down the environment it was given.
        let vmm = dir.join("brig-vmm");
        let seen = dir.join("env");
        std::fs::write(&vmm, format!("#!/bin/sh\n/usr/bin/env > '{}'\n", seen.display())).expect("script");
        std::fs::set_permissions(&vmm, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        let config = Config { vmm: vmm.clone(), ..Config::default() };
        let mut cmd = vmm_command(&config, &dir.join("vm.json"));
        let set: Vec<String> = cmd.get_envs().map(|(k, _)| k.to_string_lossy().into_owned()).collect();
        assert!(set.iter().all(|k| VMM_ENV.contains(&k.as_str())), "{set:?}");
        assert!(set.contains(&"PATH".to_owned()), "{set:?}");
        let status = cmd.status().expect("run the script");
        assert!(status.success());
        let env = std::fs::read_to_string(&seen).expect("env written");
        // The shell adds its own PWD, SHLVL and _; nothing of the shim's comes through.
        let names: Vec<&str> = env.lines().filter_map(|l| l.split_once('=').map(|(k, _)| k)).collect();
        let unexpected: Vec<&&str> =
            names.iter().filter(|k| !VMM_ENV.contains(k) && !["PWD", "SHLVL", "_", "OLDPWD"].contains(k)).collect();
        assert!(unexpected.is_empty(), "brig-vmm inherited {unexpected:?}");
        let leakable = std::env::vars_os().any(|(k, _)| !VMM_ENV.contains(&k.to_string_lossy().as_ref()));
        assert!(leakable, "the shim's environment has variables that could have leaked");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn only_a_brig_vmm_is_killed_from_a_pid_file() {
        let dir = std::env::temp_dir().join(format!("brig-shim-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        // Our own pid is alive but not brig-vmm: it must be left alone.
        std::fs::write(dir.join("vmm.pid"), std::process::id().to_string()).expect("pid");
        assert_eq!(kill_recorded(&dir), None);
        std::fs::write(dir.join("vmm.pid"), "not a pid").expect("pid");
        assert_eq!(kill_recorded(&dir), None);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
