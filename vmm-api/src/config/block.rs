//! virtio-blk devices.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{check_file, ConfigError};

/// virtio-blk's device id is 20 bytes.
pub const SERIAL_LEN: usize = 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    /// A raw disk image.
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    /// Returned to the guest's `VIRTIO_BLK_T_GET_ID` (`/sys/block/vdX/serial`).
    #[serde(default)]
    pub serial: Option<String>,
}

impl BlockConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_file("the block device image", &self.path)?;
        if let Some(serial) = &self.serial {
            if serial.len() > SERIAL_LEN {
                return Err(ConfigError::SerialTooLong(serial.clone()));
            }
        }
        Ok(())
    }
}
