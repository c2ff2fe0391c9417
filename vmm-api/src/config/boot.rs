//! Kernel, initramfs and command line.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{check_file, ConfigError};

/// Appended to every command line: how the guest leaves (see DESIGN.md: an i8042
/// reset is the exit path; a panic reboots at once and the console shows why).
pub const REQUIRED_CMDLINE: &str = "reboot=k panic=-1";
/// Used when the configuration gives no command line.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 quiet";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    /// Uncompressed ELF kernel (`vmlinux`).
    pub kernel: PathBuf,
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
    /// Extra kernel parameters; [`DEFAULT_CMDLINE`] when absent.
    #[serde(default)]
    pub cmdline: Option<String>,
}

impl BootConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_file("the kernel", &self.kernel)?;
        if let Some(initramfs) = &self.initramfs {
            check_file("the initramfs", initramfs)?;
        }
        Ok(())
    }

    /// The command line before device entries are added.
    pub fn base_cmdline(&self) -> String {
        format!("{} {}", self.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE), REQUIRED_CMDLINE)
    }
}
