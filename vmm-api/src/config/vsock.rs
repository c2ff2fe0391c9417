//! The hybrid vsock device.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{check_new_socket, ConfigError};

/// CIDs 0–2 are the hypervisor's, the loopback's and the host's.
pub const MIN_GUEST_CID: u64 = 3;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id (3 or above).
    pub guest_cid: u64,
    /// Host Unix socket: the host connects here and sends `CONNECT <port>\n`; a
    /// connection the guest opens to host port P reaches `<uds_path>_P`.
    pub uds_path: PathBuf,
}

impl VsockConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.guest_cid < MIN_GUEST_CID {
            return Err(ConfigError::ReservedCid(self.guest_cid));
        }
        check_new_socket("the vsock socket", &self.uds_path)
    }
}
