//! Containers through brig-agent, for tests: a VM with the test rootfs image
//! attached, OCI specs like containerd's defaults, and the stdio port.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use brig_protocol::agent::*;
use brig_protocol::agent_ttrpc::AgentClient;
use brig_protocol::stdio::{Header, Stream, STDIO_VSOCK_PORT};
use brig_protocol::ttrpc::{self, context};
use serde_json::{json, Value};

use crate::vm::{hybrid_connect, TestVm, VmSpec};

/// Serial of the test rootfs block device.
pub const ROOTFS_SERIAL: &str = "rootfs";
const BOOT: Duration = Duration::from_secs(60);

/// containerd's default capability set (oci.WithDefaultSpec).
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// A process object as containerd builds one.
pub fn process(args: &[&str]) -> Value {
    json!({
        "terminal": false,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "cwd": "/",
        "capabilities": {
            "bounding": DEFAULT_CAPS, "effective": DEFAULT_CAPS, "permitted": DEFAULT_CAPS
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": true
    })
}

/// A spec like containerd's default for `ctr run` (namespaces, mounts, masked and
/// read-only paths), running `args`.
pub fn default_spec(args: &[&str]) -> Value {
    json!({
        "ociVersion": "1.1.0",
        "process": process(args),
        "root": {"path": "rootfs"},
        "hostname": "brig-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// A VM running brig-agent with the test rootfs image as a read-only block device.
pub struct AgentVm {
    pub vm: TestVm,
    pub agent: AgentClient,
}

impl std::fmt::Debug for AgentVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentVm").field("vm", &self.vm).finish_non_exhaustive()
    }
}

pub fn ctx() -> context::Context {
    context::with_timeout(60_000_000_000)
}

impl AgentVm {
    pub fn start() -> AgentVm {
        Self::start_with(VmSpec::new().memory(256))
    }

    pub fn start_with(spec: VmSpec) -> AgentVm {
        let image = crate::artifact("BRIG_TEST_ROOTFS_IMAGE");
        let mut vm = spec.block(format!("path={},ro,serial={ROOTFS_SERIAL}", image.display())).start();
        let agent = vm.agent(BOOT).expect("the agent answers");
        AgentVm { vm, agent }
    }

    /// Creates a container from `spec` with the test image, read-only, under a tmpfs layer.
    pub fn create(&self, id: &str, spec: &Value, stdio: Stdio) -> ttrpc::Result<u32> {
        let request = CreateContainerRequest {
            container_id: id.into(),
            oci_spec: serde_json::to_vec(spec).expect("json"),
            rootfs: Some(Rootfs {
                serial: ROOTFS_SERIAL.into(),
                fstype: "ext4".into(),
                read_only: true,
                writable_layer: true,
                ..Default::default()
            })
            .into(),
            stdio: Some(stdio).into(),
            ..Default::default()
        };
        self.agent.create_container(ctx(), &request).map(|r| r.pid)
    }

    pub fn start_container(&self, id: &str) -> ttrpc::Result<()> {
        let request = StartContainerRequest { container_id: id.into(), ..Default::default() };
        self.agent.start_container(ctx(), &request).map(drop)
    }

    pub fn wait(&self, id: &str, exec_id: &str) -> ttrpc::Result<WaitProcessResponse> {
        let request = WaitProcessRequest { container_id: id.into(), exec_id: exec_id.into(), ..Default::default() };
        self.agent.wait_process(ctx(), &request)
    }

    pub fn remove(&self, id: &str) -> ttrpc::Result<()> {
        let request = RemoveContainerRequest { container_id: id.into(), ..Default::default() };
        self.agent.remove_container(ctx(), &request).map(drop)
    }

    /// Attaches one stream of a process through the stdio port.
    pub fn attach(&mut self, id: &str, exec_id: &str, stream: Stream) -> Result<UnixStream> {
        let mut conn = hybrid_connect(&self.vm.vsock, STDIO_VSOCK_PORT)?;
        let header = Header { container_id: id.into(), exec_id: exec_id.into(), stream };
        conn.write_all(header.to_string().as_bytes())?;
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while reply.last() != Some(&b'\n') {
            if conn.read(&mut byte)? == 0 {
                bail!("stdio port closed the connection after {:?}", String::from_utf8_lossy(&reply));
            }
            reply.push(byte[0]);
        }
        if reply != b"OK\n" {
            bail!("stdio port refused: {}", String::from_utf8_lossy(&reply).trim());
        }
        Ok(conn)
    }

    /// Runs `spec` to completion with stdout and stderr captured.
    pub fn run(&mut self, id: &str, spec: &Value) -> Result<(WaitProcessResponse, String, String)> {
        let stdio = Stdio { stdout: true, stderr: true, ..Default::default() };
        self.create(id, spec, stdio).map_err(|e| anyhow!("create {id}: {e}"))?;
        let mut out = self.attach(id, "", Stream::Stdout)?;
        let mut err = self.attach(id, "", Stream::Stderr)?;
        self.start_container(id).map_err(|e| anyhow!("start {id}: {e}"))?;
        let (mut stdout, mut stderr) = (String::new(), String::new());
        out.read_to_string(&mut stdout).context("stdout")?;
        err.read_to_string(&mut stderr).context("stderr")?;
        let exit = self.wait(id, "").map_err(|e| anyhow!("wait {id}: {e}"))?;
        self.remove(id).map_err(|e| anyhow!("remove {id}: {e}"))?;
        Ok((exit, stdout, stderr))
    }
}

/// The ttrpc status code of an error, if it is one.
pub fn code(error: &ttrpc::Error) -> Option<ttrpc::Code> {
    match error {
        ttrpc::Error::RpcStatus(status) => Some(status.code()),
        _ => None,
    }
}
