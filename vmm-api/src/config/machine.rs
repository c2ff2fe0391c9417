//! vCPUs and memory.

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
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig { vcpus: 1, memory_mib: 128 }
    }
}

impl MachineConfig {
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
        let err = MachineConfig { vcpus: 0, memory_mib: 128 }.validate().expect_err("0 vcpus");
        assert_eq!(err.to_string(), "vcpus must be between 1 and 32, not 0");
        let err = MachineConfig { vcpus: 1, memory_mib: 8 }.validate().expect_err("8 MiB");
        assert_eq!(err.to_string(), "memory must be at least 32 MiB, not 8 MiB");
        MachineConfig { vcpus: 32, memory_mib: 256 }.validate().expect("fine");
    }
}
