//! The VM's configuration: validated types, one file per resource.
//!
//! The same structure comes from `brig-vmm`'s flags or from `--config FILE`
//! (JSON), which is what the shim writes. [`VmConfig::validate`] checks
//! everything that can be checked before touching KVM, so a bad path or size
//! fails before anything is created: brig-vmm runs it, and a caller may run it
//! first to fail earlier.

mod block;
mod boot;
mod machine;
mod net;
mod vsock;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use block::{BlockConfig, SERIAL_LEN};
pub use boot::{BootConfig, DEFAULT_CMDLINE, REQUIRED_CMDLINE};
pub use machine::{MachineConfig, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};
pub use net::{MacAddr, NetConfig, DEFAULT_MTU, MAX_MTU, MIN_MTU};
pub use vsock::{VsockConfig, MIN_GUEST_CID};

/// Virtio devices that fit on brig-vmm's MMIO bus (one slot and one IRQ each).
pub const MAX_DEVICES: usize = 19;
/// Longest socket path brig-vmm accepts: `sun_path` is 108 bytes with its NUL, and
/// vsock listeners add `_<port>` (up to 11 bytes).
pub const MAX_SOCKET_PATH: usize = 107 - 11;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{what} {path} does not exist")]
    Missing { what: &'static str, path: PathBuf },
    #[error("{what} {path} is not a regular file")]
    NotAFile { what: &'static str, path: PathBuf },
    #[error("{what} {path} already exists; remove it or choose another path")]
    SocketExists { what: &'static str, path: PathBuf },
    #[error("the directory for {what} {path} does not exist")]
    NoParent { what: &'static str, path: PathBuf },
    #[error("{what} path {path} is longer than a Unix socket address allows ({max} bytes)")]
    SocketPathTooLong { what: &'static str, path: PathBuf, max: usize },
    #[error("vcpus must be between 1 and {max}, not {got}")]
    Vcpus { got: u8, max: u8 },
    #[error("memory must be at least {min} MiB, not {got} MiB")]
    TooLittleMemory { got: u64, min: u64 },
    #[error("memory of {got} MiB is more than the {max} MiB brig-vmm supports")]
    TooMuchMemory { got: u64, max: u64 },
    #[error("memory_dir {} must be an absolute path (a tmpfs directory)", .0.display())]
    MemoryDir(std::path::PathBuf),
    #[error("guest CID {0} is reserved; use 3 or above")]
    ReservedCid(u64),
    #[error("at most {max} virtio devices fit on the MMIO bus; {got} were asked for")]
    TooManyDevices { got: usize, max: usize },
    #[error("block device serial `{0}` is longer than 20 bytes")]
    SerialTooLong(String),
    #[error("net tap_fd {0} cannot be a tap: pass the tap as descriptor 3 or above (0-2 are stdio)")]
    TapFd(i32),
    #[error("net MTU {got} is outside {min}..={max}")]
    Mtu { got: u16, min: u16, max: u16 },
    #[error("net mac: {0}")]
    Mac(String),
    #[error("net tap_fd {0} is given to two devices")]
    SharedTap(i32),
    #[error("cannot read the config file {path}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("the config file {path} is not valid: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
}

/// Everything one VM needs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    #[serde(default)]
    pub machine: MachineConfig,
    pub boot: BootConfig,
    /// Where the guest's serial console is written (none: discarded, but still
    /// scanned for panics and kept in memory for error messages).
    #[serde(default)]
    pub console: Option<PathBuf>,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    #[serde(default)]
    pub block: Vec<BlockConfig>,
    #[serde(default)]
    pub rng: bool,
    /// virtio-net devices, in the order the guest names them (eth0, eth1, …).
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// The control socket (see docs/control-socket.md).
    #[serde(default)]
    pub api_socket: Option<PathBuf>,
}

impl VmConfig {
    pub fn from_file(path: &Path) -> Result<VmConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile { path: path.into(), source })?;
        serde_json::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), source })
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.machine.validate()?;
        self.boot.validate()?;
        if let Some(vsock) = &self.vsock {
            vsock.validate()?;
        }
        for block in &self.block {
            block.validate()?;
        }
        for (i, net) in self.net.iter().enumerate() {
            net.validate()?;
            if self.net[..i].iter().any(|other| other.tap_fd == net.tap_fd) {
                return Err(ConfigError::SharedTap(net.tap_fd));
            }
        }
        let devices = self.block.len() + usize::from(self.vsock.is_some()) + usize::from(self.rng) + self.net.len();
        if devices > MAX_DEVICES {
            return Err(ConfigError::TooManyDevices { got: devices, max: MAX_DEVICES });
        }
        if let Some(api) = &self.api_socket {
            check_new_socket("the control socket", api)?;
        }
        Ok(())
    }
}

/// A file that must exist and be a regular file.
pub(crate) fn check_file(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Err(_) => Err(ConfigError::Missing { what, path: path.into() }),
        Ok(meta) if !meta.is_file() => Err(ConfigError::NotAFile { what, path: path.into() }),
        Ok(_) => Ok(()),
    }
}

/// A Unix socket path brig-vmm will create: it must not exist yet, and its directory must.
pub(crate) fn check_new_socket(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(ConfigError::SocketPathTooLong { what, path: path.into(), max: MAX_SOCKET_PATH });
    }
    if path.symlink_metadata().is_ok() {
        return Err(ConfigError::SocketExists { what, path: path.into() });
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(ConfigError::NoParent { what, path: path.into() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("brig-config-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    fn config_with_kernel(dir: &Path) -> VmConfig {
        let kernel = dir.join("vmlinux");
        std::fs::write(&kernel, b"\x7fELF").expect("kernel");
        VmConfig {
            machine: MachineConfig::default(),
            boot: BootConfig { kernel, initramfs: None, cmdline: None },
            console: None,
            vsock: None,
            block: vec![],
            rng: false,
            net: vec![],
            api_socket: None,
        }
    }

    #[test]
    fn an_existing_socket_path_is_refused() {
        let dir = scratch("socket");
        let mut config = config_with_kernel(&dir);
        let api = dir.join("api.sock");
        std::fs::write(&api, b"").expect("stale file");
        config.api_socket = Some(api);
        let err = config.validate().expect_err("exists");
        assert!(err.to_string().contains("already exists"), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_missing_kernel_is_named() {
        let dir = scratch("kernel");
        let mut config = config_with_kernel(&dir);
        config.boot.kernel = dir.join("nope");
        let err = config.validate().expect_err("missing");
        assert_eq!(err.to_string(), format!("the kernel {} does not exist", dir.join("nope").display()));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn json_round_trips_and_rejects_unknown_fields() {
        let dir = scratch("json");
        let config = config_with_kernel(&dir);
        let text = serde_json::to_string(&config).expect("json");
        let back: VmConfig = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, config);
        let bad = text.replacen('{', r#"{"vcpu":2,"#, 1);
        assert!(serde_json::from_str::<VmConfig>(&bad).is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
