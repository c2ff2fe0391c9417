//! `/etc/brig/config.toml`: where the guest kernel, initramfs and VMM are, and how
//! large a VM is by default. Every field has a default matching `cargo xtask
//! install`, so a missing file means "installed in the usual places".
//!
//! ```toml
//! kernel = "/usr/local/share/brig/vmlinux"
//! initramfs = "/usr/local/share/brig/initramfs.cpio"
//! vmm = "/usr/local/bin/brig-vmm"
//! default_vcpus = 1
//! default_memory_mib = 128
//! log_level = "info"
//! # kernel_cmdline_extra = "…"   (none by default)
//! jail = true
//! jailer = "/usr/local/bin/brig-jailer"
//! jail_uid_first = 200000
//! jail_uid_count = 65536
//! jail_cgroup_parent = "brig"
//! jail_landlock = "require"
//! vmm_memory_overhead_mib = 32
//! huge_pages = true
//! ```

use std::path::{Path, PathBuf};

use brig_policy::jail::LandlockMode;
use serde::{Deserialize, Serialize};

/// Where the shim looks unless `BRIG_CONFIG` names another file.
pub const DEFAULT_PATH: &str = "/etc/brig/config.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The guest kernel (uncompressed vmlinux).
    pub kernel: PathBuf,
    /// The guest initramfs (brig-agent as /init).
    pub initramfs: PathBuf,
    /// The brig-vmm binary.
    pub vmm: PathBuf,
    /// vCPUs when the spec sets no CPU limit.
    pub default_vcpus: u8,
    /// Guest memory when the spec sets no memory limit.
    pub default_memory_mib: u64,
    /// Memory added to a spec's limit for the guest kernel and agent.
    pub memory_overhead_mib: u64,
    /// Per-task state (sockets, console log, VM config).
    pub state_dir: PathBuf,
    /// Rootfs images, reused while their snapshot is unchanged.
    pub image_dir: PathBuf,
    /// How long the guest agent may take to answer after the VM starts.
    pub agent_timeout_secs: u64,
    pub log_level: String,
    /// Kernel parameters added after brig's own (`console=ttyS0 quiet`): for a test
    /// initramfs's switches, or a guest kernel option. None by default.
    pub kernel_cmdline_extra: Option<String>,
    /// Every brig-vmm runs in its jail (docs/jail.md); `false` is for development
    /// only, and warned about at every start.
    pub jail: bool,
    /// The brig-jailer binary.
    pub jailer: PathBuf,
    /// Jails take their uid (and the same gid) from `jail_uid_first` onwards,
    /// `jail_uid_count` of them; no host user or group may be in the range.
    pub jail_uid_first: u32,
    pub jail_uid_count: u32,
    /// The cgroup (below /sys/fs/cgroup) that sandboxes' cgroups are made in.
    pub jail_cgroup_parent: String,
    /// `require` (the kernel must enforce Landlock) or `best-effort`.
    pub jail_landlock: LandlockMode,
    /// Host memory a jailed brig-vmm may use beyond guest memory (its cgroup's
    /// `memory.max` is the sum): its own heap, stacks and page tables, and the
    /// page cache of its images.
    pub vmm_memory_overhead_mib: u64,
    /// Guest RAM in 2 MiB huge pages (ADR 014): a jailed brig-vmm keeps it in a
    /// `huge=within_size` tmpfs its jail mounts; unjailed, in a memfd advised for huge
    /// pages. Faster boots and fewer faults, for more resident memory per idle guest.
    pub huge_pages: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            kernel: PathBuf::from("/usr/local/share/brig/vmlinux"),
            initramfs: PathBuf::from("/usr/local/share/brig/initramfs.cpio"),
            vmm: PathBuf::from("/usr/local/bin/brig-vmm"),
            default_vcpus: 1,
            default_memory_mib: 128,
            memory_overhead_mib: 64,
            state_dir: PathBuf::from("/run/brig"),
            image_dir: PathBuf::from("/var/lib/brig/images"),
            agent_timeout_secs: 60,
            log_level: "info".into(),
            kernel_cmdline_extra: None,
            jail: true,
            jailer: PathBuf::from("/usr/local/bin/brig-jailer"),
            jail_uid_first: 200_000,
            jail_uid_count: 65_536,
            jail_cgroup_parent: "brig".into(),
            jail_landlock: LandlockMode::Require,
            vmm_memory_overhead_mib: 32,
            huge_pages: true,
        }
    }
}

impl Config {
    /// Reads `$BRIG_CONFIG` or [`DEFAULT_PATH`]; a missing default file gives the defaults.
    pub fn load() -> Result<Config, ConfigError> {
        match std::env::var_os("BRIG_CONFIG") {
            Some(path) => Self::from_file(Path::new(&path)),
            None if Path::new(DEFAULT_PATH).exists() => Self::from_file(Path::new(DEFAULT_PATH)),
            None => Ok(Config::default()),
        }
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let config: Config =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid { path: path.into(), message });
        if self.default_vcpus == 0 {
            return invalid("default_vcpus must be at least 1".into());
        }
        if self.default_memory_mib < 64 {
            return invalid(format!("default_memory_mib {} is below 64", self.default_memory_mib));
        }
        if let Some(extra) = &self.kernel_cmdline_extra {
            if extra.chars().any(char::is_control) {
                return invalid("kernel_cmdline_extra must be one line of kernel parameters".into());
            }
        }
        let plain =
            Path::new(&self.jail_cgroup_parent).components().all(|c| matches!(c, std::path::Component::Normal(_)));
        if self.jail_cgroup_parent.is_empty() || !plain {
            return invalid(format!(
                "jail_cgroup_parent {:?} must be a relative cgroup path like \"brig\"",
                self.jail_cgroup_parent
            ));
        }
        if self.jail_uid_first == 0
            || self.jail_uid_count == 0
            || self.jail_uid_first.checked_add(self.jail_uid_count).is_none()
        {
            return invalid(format!(
                "jail_uid_first {} / jail_uid_count {}: the range must be non-empty, above 0, and fit in 32 bits",
                self.jail_uid_first, self.jail_uid_count
            ));
        }
        Ok(())
    }

    /// The files a VM needs, checked before starting one (the message says how to fix it).
    pub fn check_installed(&self) -> Result<(), String> {
        let jailer = self.jail.then_some(("brig-jailer", &self.jailer));
        let needed = [("guest kernel", &self.kernel), ("initramfs", &self.initramfs), ("brig-vmm", &self.vmm)];
        for (what, path) in needed.into_iter().chain(jailer) {
            if !path.is_file() {
                return Err(format!(
                    "the {what} {} is missing: run `cargo xtask install`, or set it in {DEFAULT_PATH}",
                    path.display()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_file_keeps_the_other_defaults() {
        let config: Config = toml::from_str("default_vcpus = 2\nkernel = \"/k\"").expect("parse");
        assert_eq!(config.default_vcpus, 2);
        assert_eq!(config.kernel, PathBuf::from("/k"));
        assert_eq!(config.default_memory_mib, Config::default().default_memory_mib);
    }

    #[test]
    fn mistakes_are_reported_with_the_file() {
        let dir = std::env::temp_dir().join(format!("brig-shim-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("config.toml");
        std::fs::write(&path, "defualt_vcpus = 2\n").expect("write");
        let err = Config::from_file(&path).expect_err("typo");
        assert!(
            err.to_string().contains("config.toml is not valid") && err.to_string().contains("defualt_vcpus"),
            "{err}"
        );
        std::fs::write(&path, "default_vcpus = 0\n").expect("write");
        assert!(Config::from_file(&path).expect_err("zero").to_string().contains("at least 1"));
        std::fs::write(&path, "kernel_cmdline_extra = \"a=1\\ninit=/bin/sh\"\n").expect("write");
        assert!(Config::from_file(&path).expect_err("a newline").to_string().contains("one line"));
        std::fs::write(&path, "kernel_cmdline_extra = \"hostile.mode=silent\"\n").expect("write");
        let config = Config::from_file(&path).expect("extra parameters");
        assert_eq!(config.kernel_cmdline_extra.as_deref(), Some("hostile.mode=silent"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn the_example_config_is_valid_and_lists_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/brig/config.toml");
        let example = Config::from_file(&path).expect("examples/brig/config.toml parses");
        assert_eq!(example, Config::default(), "the example documents the defaults");
    }

    #[test]
    fn missing_artifacts_say_how_to_install() {
        let config = Config { kernel: "/nonexistent/vmlinux".into(), ..Config::default() };
        let err = config.check_installed().expect_err("missing");
        assert!(err.contains("/nonexistent/vmlinux") && err.contains("cargo xtask install"), "{err}");
    }
}
