//! A real micro-VM for tests: brig-vmm running brig's guest kernel and
//! initramfs, reachable through its hybrid vsock socket and control socket.

use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use brig_protocol::agent_ttrpc::AgentClient;
use brig_protocol::ttrpc;
use brig_vmm_api::client::Client;

use crate::scratch::Scratch;

/// Guest CID used by test VMs.
pub const GUEST_CID: u64 = 3;

/// How to start a test VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub vcpus: u8,
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub blocks: Vec<String>,
    pub rng: bool,
    pub vsock: bool,
    pub api: bool,
    /// `--net` specs (`tap-fd=N,mac=MAC[,mtu=N]`): the descriptor must be open, without
    /// close-on-exec, in the test ([`crate::net::HostTap`]).
    pub nets: Vec<String>,
}

impl VmSpec {
    /// 1 vCPU, 128 MiB, brig's kernel and initramfs, vsock, rng and the control socket.
    pub fn new() -> VmSpec {
        VmSpec {
            vcpus: 1,
            memory_mib: 128,
            kernel: crate::artifact("BRIG_GUEST_KERNEL"),
            initramfs: Some(crate::artifact("BRIG_GUEST_INITRAMFS")),
            cmdline: None,
            blocks: Vec::new(),
            rng: true,
            vsock: true,
            api: true,
            nets: Vec::new(),
        }
    }

    pub fn vcpus(mut self, vcpus: u8) -> Self {
        self.vcpus = vcpus;
        self
    }

    pub fn memory(mut self, mib: u64) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Adds `--block SPEC` (e.g. `path=/x.img,ro,serial=data`).
    pub fn block(mut self, spec: impl Into<String>) -> Self {
        self.blocks.push(spec.into());
        self
    }

    /// Adds `--net SPEC`.
    pub fn net(mut self, spec: impl Into<String>) -> Self {
        self.nets.push(spec.into());
        self
    }

    pub fn cmdline(mut self, cmdline: impl Into<String>) -> Self {
        self.cmdline = Some(cmdline.into());
        self
    }

    pub fn start(self) -> TestVm {
        let mut vm = TestVm::start_in(self.clone(), Scratch::new("vm"));
        vm.spec = Some(self);
        vm
    }
}

impl Default for VmSpec {
    fn default() -> Self {
        VmSpec::new()
    }
}

/// A running brig-vmm process and its sockets. Killed (if still running) on drop.
#[derive(Debug)]
pub struct TestVm {
    child: Child,
    pub dir: Scratch,
    pub vsock: PathBuf,
    pub api: PathBuf,
    pub console: PathBuf,
    pub started: Instant,
    stderr: PathBuf,
    /// The spec, when the VM has a scratch directory of its own (so it can be booted
    /// again after the emulator's early-boot failure: [`TestVm::agent`]).
    spec: Option<VmSpec>,
}

impl TestVm {
    /// The hybrid vsock socket a VM started in `dir` will use (guest connections to
    /// host port P reach `<this>_P`).
    pub fn vsock_path(dir: &Scratch) -> PathBuf {
        dir.join("vsock.sock")
    }

    /// Starts the VM with its sockets and logs in `dir`, which the caller may have
    /// prepared (e.g. with host listeners for guest connections).
    pub fn start_in(spec: VmSpec, dir: Scratch) -> TestVm {
        let vsock = Self::vsock_path(&dir);
        let api = dir.join("api.sock");
        let console = dir.join("console.log");
        let stderr = dir.join("vmm.stderr");
        let mut cmd = Command::new(crate::artifact("BRIG_VMM_BIN"));
        cmd.arg("--kernel").arg(&spec.kernel);
        if let Some(initramfs) = &spec.initramfs {
            cmd.arg("--initramfs").arg(initramfs);
        }
        if let Some(cmdline) = &spec.cmdline {
            cmd.args(["--cmdline", cmdline]);
        }
        cmd.args(["--vcpus", &spec.vcpus.to_string(), "--memory", &spec.memory_mib.to_string()]);
        cmd.arg("--console").arg(&console);
        if spec.vsock {
            cmd.arg("--vsock").arg(format!("cid={GUEST_CID},path={}", vsock.display()));
        }
        if spec.api {
            cmd.arg("--api-socket").arg(&api);
        }
        for block in &spec.blocks {
            cmd.args(["--block", block]);
        }
        if spec.rng {
            cmd.arg("--rng");
        }
        let mut inherited: Vec<i32> = Vec::new();
        for net in &spec.nets {
            cmd.args(["--net", net]);
            let fd: Option<i32> =
                net.split(',').find_map(|part| part.strip_prefix("tap-fd=")).and_then(|fd| fd.parse().ok());
            inherited.extend(fd);
        }
        if !inherited.is_empty() {
            // SAFETY: between fork and exec the closure only calls fcntl(2), which is
            // async-signal-safe, on descriptors the parent holds open. A descriptor that
            // is not open (a test of bad input) fails fcntl, which is ignored: brig-vmm
            // reports it.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    for fd in &inherited {
                        libc::fcntl(*fd, libc::F_SETFD, 0);
                    }
                    Ok(())
                });
            }
        }
        cmd.args(["--log-level", "info"]);
        let err = std::fs::File::create(&stderr).expect("stderr file");
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err).spawn().expect("start brig-vmm");
        TestVm { child, dir, vsock, api, console, started: Instant::now(), stderr, spec: None }
    }

    /// Connects to guest vsock `port` through the hybrid socket, retrying until
    /// the guest listens or `timeout` passes.
    pub fn connect(&mut self, port: u32, timeout: Duration) -> Result<UnixStream> {
        let deadline = Instant::now() + timeout;
        let mut last = anyhow!("never tried");
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("brig-vmm exited ({status}) before the guest listened on port {port}:\n{}", self.diagnostics());
            }
            match hybrid_connect(&self.vsock, port) {
                Ok(stream) => return Ok(stream),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(last.context(format!("guest port {port} not reachable within {timeout:?}:\n{}", self.diagnostics())))
    }

    /// A ttrpc client for the agent, once it answers `Ping`.
    ///
    /// A guest that dies in early boot the way the nested test host's emulator makes
    /// guests die (ADR 015: before its first console line, a triple fault or silence
    /// until `timeout`) is booted once more from the same spec, with the first
    /// failure printed whole; any other failure, or a second one, is returned.
    pub fn agent(&mut self, timeout: Duration) -> Result<AgentClient> {
        let stream = match self.connect(brig_protocol::AGENT_VSOCK_PORT, timeout) {
            Ok(stream) => stream,
            Err(e) => match self.spec.clone() {
                Some(spec) if self.died_in_early_boot() => {
                    eprintln!(
                        "ADR 015: the guest died before its first console line, as the nested test host's \
                         emulator makes 1 in ~100 guests die; booting it once more. The first failure:\n{e:#}"
                    );
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    *self = spec.start();
                    self.spec = None; // once
                    self.connect(brig_protocol::AGENT_VSOCK_PORT, timeout)?
                }
                _ => return Err(e),
            },
        };
        let client = ttrpc::Client::new(stream.into_raw_fd()).map_err(|e| anyhow!("ttrpc client: {e}"))?;
        Ok(AgentClient::new(client))
    }

    /// A client of the control socket (version checked at connect), once brig-vmm has
    /// bound it (within 30 s of the call).
    pub fn control(&self) -> Result<Client> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.api.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        Client::connect(&self.api, Duration::from_secs(30)).context("connect to the control socket")
    }

    /// Waits for brig-vmm to exit.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("brig-vmm still running after {timeout:?}:\n{}", self.diagnostics());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The emulator's early-boot failure (ADR 007, 009, 015): nothing on the console,
    /// and brig-vmm either still running (a silent guest) or ended by a triple fault.
    fn died_in_early_boot(&mut self) -> bool {
        if !self.console_text().trim().is_empty() {
            return false;
        }
        match self.child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                status.code() == Some(3) && self.stderr_text().contains("triple fault (KVM_EXIT_SHUTDOWN)")
            }
            Err(_) => false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Console and VMM log, for assertion messages.
    pub fn diagnostics(&self) -> String {
        format!("--- brig-vmm stderr ---\n{}\n--- guest console ---\n{}", self.stderr_text(), self.console_text())
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
    }
}

/// Firecracker's hybrid vsock handshake (`brig_vmm_api::vsock`), as an anyhow result.
/// The peer VMM of the benchmarks: Debian's `qemu-system-x86_64 -M microvm` booting
/// brig's guest kernel and initramfs as brig-vmm does (1 vCPU, memfd memory, vsock
/// through vhost-vsock at `cid`, virtio-rng), exiting at a guest reset. The caller adds
/// `-serial` and the standard streams.
pub fn qemu_microvm(memory_mib: u64, cid: u32) -> Command {
    qemu_microvm_with(memory_mib, cid, "memory-backend-memfd")
}

/// [`qemu_microvm`] with guest RAM from another QEMU memory backend
/// (`memory-backend-ram`: anonymous memory, which QEMU advises for huge pages).
pub fn qemu_microvm_with(memory_mib: u64, cid: u32, backend: &str) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-M", "microvm,x-option-roms=off,rtc=off,acpi=off,memory-backend=mem"])
        .args(["-accel", "kvm", "-cpu", "host", "-smp", "1", "-m", &format!("{memory_mib}M")])
        .args(["-object", &format!("{backend},id=mem,size={memory_mib}M")])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(crate::artifact("BRIG_GUEST_KERNEL"))
        .arg("-initrd")
        .arg(crate::artifact("BRIG_GUEST_INITRAMFS"))
        .args(["-append", "console=ttyS0 quiet reboot=k panic=-1"])
        .args(["-device", &format!("vhost-vsock-device,guest-cid={cid}"), "-device", "virtio-rng-device"]);
    cmd
}

pub fn hybrid_connect(uds: &Path, port: u32) -> Result<UnixStream> {
    Ok(brig_vmm_api::vsock::connect(uds, port, Duration::from_secs(10))?)
}

/// A VM whose init is brig-guest-probe, running the given `probe.*` steps (see
/// tests/guest-probe), then resetting.
pub fn probe_spec(steps: &[String]) -> VmSpec {
    let mut spec = VmSpec::new();
    spec.initramfs = Some(crate::artifact("BRIG_PROBE_INITRAMFS"));
    spec.cmdline = Some(format!("console=ttyS0 quiet {}", steps.join(" ")));
    spec
}

/// The `probe: STEP …` lines of a console log.
pub fn probe_lines(console: &str, step: &str) -> Vec<String> {
    let prefix = format!("probe: {step} ");
    console.lines().filter_map(|l| l.find(&prefix).map(|i| l[i..].trim_end().to_owned())).collect()
}
