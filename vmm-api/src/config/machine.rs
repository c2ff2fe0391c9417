//! vCPUs and memory.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Below this the guest kernel and agent do not fit.
pub const MIN_MEMORY_MIB: u64 = 32;
/// The MP table (and so the guest without ACPI) describes at most this many CPUs.
pub const MAX_VCPUS: u8 = 32;
/// Memory above this is refused (the e820 map and slot layout are tested up to here).
pub const MAX_MEMORY_MIB: u64 = 64 << 10;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub vcpus: u8,
    pub memory_mib: u64,
    /// Guest RAM in 2 MiB transparent huge pages where the host gives them (API 1.4;
    /// default on). brig-vmm falls back to 4 KiB pages, and logs why, where it cannot.
    #[serde(default = "on")]
    pub huge_pages: bool,
    /// A tmpfs directory to keep guest RAM in, as an unnamed file (`O_TMPFILE`)
    /// (API 1.4). Mounted `huge=within_size`, it gives huge pages whatever the host's
    /// `shmem_enabled`: brig's jail mounts one for each VM. `None`: a memfd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_dir: Option<PathBuf>,
}

fn on() -> bool {
    true
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig::new(1, 128)
    }
}

impl MachineConfig {
    /// `vcpus` and `memory_mib`, with huge pages on and guest RAM in a memfd.
    pub fn new(vcpus: u8, memory_mib: u64) -> Self {
        MachineConfig { vcpus, memory_mib, huge_pages: true, memory_dir: None }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus { got: self.vcpus, max: MAX_VCPUS });
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::TooLittleMemory { got: self.memory_mib, min: MIN_MEMORY_MIB });
        }
        if self.memory_mib > MAX_MEMORY_MIB {
            return Err(ConfigError::TooMuchMemory { got: self.memory_mib, max: MAX_MEMORY_MIB });
        }
        if let Some(dir) = &self.memory_dir {
            if !dir.is_absolute() {
                return Err(ConfigError::MemoryDir(dir.clone()));
            }
        }
        Ok(())
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_enforced_with_the_numbers_in_the_message() {
        let err = MachineConfig::new(0, 128).validate().expect_err("0 vcpus");
        assert_eq!(err.to_string(), "vcpus must be between 1 and 32, not 0");
        let err = MachineConfig::new(1, 8).validate().expect_err("8 MiB");
        assert_eq!(err.to_string(), "memory must be at least 32 MiB, not 8 MiB");
        MachineConfig::new(32, 256).validate().expect("fine");
    }
}
