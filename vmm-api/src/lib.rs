//! brig-vmm's contract, shared by brig-vmm, the shim, the `brig` CLI and the tests
//! (as `brig-protocol` is the agent's): the VM's configuration, the control socket's
//! requests and typed answers, its error codes, [`API_VERSION`], and small clients
//! that do the line framing. It holds no VMM logic; docs/control-socket.md is
//! checked against these types by a test.
//!
//! ```text
//! → {"op":"version","client":{"major":1,"minor":0}}
//! ← {"answer":"version","api":{"major":1,"minor":0},"vmm_version":"0.1.0"}
//! → {"op":"pause"}
//! ← {"answer":"run-state","state":"paused"}
//! → {"op":"save-state","path":"/run/brig/x/state.bin"}
//! ← {"answer":"error","code":"failed_precondition","message":"the path exists"}
//! ```
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod examples;
pub mod metrics;
pub mod request;
pub mod response;
pub mod vsock;
pub mod wire;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use request::Request;
pub use response::{
    ApiError, DeviceInfo, ErrorCode, MemoryDumped, Response, RunState, Saved, VersionInfo, VmMetrics, VmState,
};

/// The control API's version. A minor bump adds requests or answer fields that old
/// clients ignore; a major bump changes what existing ones mean, and both sides
/// refuse a peer of another major version.
pub const API_VERSION: ApiVersion = ApiVersion { major: 1, minor: 5 };

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiVersion {
    pub major: u32,
    pub minor: u32,
}

impl ApiVersion {
    /// Whether a peer speaking `other` understands this side.
    pub fn compatible_with(self, other: ApiVersion) -> bool {
        self.major == other.major
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}
