//! What the benchmarks share: the agent's `Ping` as the mark of a booted guest, a
//! huge-page tmpfs for guest RAM as brig's jail mounts one, and Firecracker (when `FIRECRACKER_BIN` names one built by hand from its public
//! repository; brig never builds it) booting brig's kernel and initramfs the way
//! brig-vmm does.

use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Result};
use brig_protocol::agent::PingRequest;
use brig_protocol::agent_ttrpc::AgentClient;
use brig_protocol::ttrpc::{self, context};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};

use crate::scratch::Scratch;
use crate::vm::GUEST_CID;

/// Where a benchmarked guest's agent listens (port 1024).
#[derive(Debug, Clone)]
pub enum AgentAddr {
    /// A hybrid-vsock unix socket (brig-vmm, Firecracker): `CONNECT 1024`.
    Hybrid(PathBuf),
    /// The host kernel's vsock (QEMU's vhost-vsock), at this guest CID.
    Vsock(u32),
}

impl AgentAddr {
    /// A stream connected to the agent.
    pub fn connect(&self) -> Result<OwnedFd> {
        match self {
            AgentAddr::Hybrid(path) => Ok(OwnedFd::from(crate::vm::hybrid_connect(path, AGENT_PORT)?)),
            AgentAddr::Vsock(cid) => {
                let fd = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
                connect(fd.as_raw_fd(), &VsockAddr::new(*cid, AGENT_PORT))?;
                Ok(fd)
            }
        }
    }

    /// Whether the agent answers one `Ping` now.
    pub fn answers(&self) -> bool {
        self.connect().and_then(ping).is_ok()
    }
}

/// The agent's vsock port.
const AGENT_PORT: u32 = 1024;

/// One `Ping` to the agent on `fd` (a connected vsock stream), answered within 2 s.
pub fn ping(fd: OwnedFd) -> Result<()> {
    let client = AgentClient::new(ttrpc::Client::new(fd.into_raw_fd()).map_err(|e| anyhow!("{e}"))?);
    client.ping(context::with_timeout(2_000_000_000), &PingRequest::new()).map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// The Firecracker binary `FIRECRACKER_BIN` names, if it is set.
pub fn firecracker_bin() -> Option<PathBuf> {
    std::env::var_os("FIRECRACKER_BIN").map(PathBuf::from)
}

/// Firecracker without its API socket, configured as brig-vmm is (1 vCPU,
/// `memory_mib`, a hybrid vsock at `vsock`, an entropy device, brig's kernel command
/// line); its config file is written to `config`. The caller sets the standard streams.
pub fn firecracker(bin: &Path, config: &Path, vsock: &Path, memory_mib: u64) -> Result<Command> {
    let spec = serde_json::json!({
        "boot-source": {
            "kernel_image_path": crate::artifact("BRIG_GUEST_KERNEL"),
            "initrd_path": crate::artifact("BRIG_GUEST_INITRAMFS"),
            "boot_args": "console=ttyS0 quiet reboot=k panic=-1",
        },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": memory_mib },
        "vsock": { "guest_cid": GUEST_CID, "uds_path": vsock },
        "entropy": {},
        "drives": [],
    });
    std::fs::write(config, serde_json::to_vec(&spec)?)?;
    let mut cmd = Command::new(bin);
    cmd.arg("--no-api").arg("--config-file").arg(config);
    Ok(cmd)
}

/// A `huge=within_size` tmpfs of `mib` MiB for guest RAM (brig-vmm's `--memory-dir`),
/// as brig's jail mounts one; unmounted when dropped.
#[derive(Debug)]
pub struct HugeTmpfs(pub PathBuf);

impl HugeTmpfs {
    pub fn mount(dir: &Scratch, mib: u64) -> Result<HugeTmpfs> {
        let path = dir.join("memory");
        std::fs::create_dir_all(&path)?;
        let options = format!("size={mib}M,huge=within_size,mode=0700");
        let status = Command::new("mount").args(["-t", "tmpfs", "-o", &options, "brig-bench"]).arg(&path).status()?;
        if !status.success() {
            bail!("mount -t tmpfs -o {options} {}: {status}", path.display());
        }
        Ok(HugeTmpfs(path))
    }
}

impl Drop for HugeTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
