//! The contract between the shim (host) and brig-agent (guest): the agent API's
//! messages and ttrpc stubs, generated at build time from `proto/agent.proto`.
//! No logic lives here.
#![forbid(unsafe_code)]

/// The vsock port the agent serves the API on.
pub const AGENT_VSOCK_PORT: u32 = 1024;
/// API version the agent reports in `Ping` (see the versioning note in agent.proto).
pub const API_MAJOR: u32 = 1;
/// Minor 1 added the container API, minor 2 `DescribeGuest`, minor 3 `Ping`'s guest clock,
/// minor 4 `CreateContainerRequest.interface`.
pub const API_MINOR: u32 = 5;

pub mod stdio;

/// Message types.
#[allow(unused, nonstandard_style, clippy::all, clippy::unwrap_used, missing_debug_implementations)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/sync/agent.rs"));
}

/// Blocking client and server.
#[allow(unused, nonstandard_style, clippy::all, clippy::unwrap_used, missing_debug_implementations)]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/sync/agent_ttrpc.rs"));
}

/// Async (tokio) client and server.
#[cfg(feature = "async")]
#[allow(unused, nonstandard_style, clippy::all, clippy::unwrap_used, missing_debug_implementations)]
pub mod agent_ttrpc_async {
    include!(concat!(env!("OUT_DIR"), "/async/agent_ttrpc.rs"));
}

pub use ttrpc;
