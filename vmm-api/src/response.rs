//! What brig-vmm answers: one JSON object per line, tagged by `answer`. Each
//! request has one answer kind ([`Request`](crate::Request) docs), or `error`.
//!
//! Answers accept fields they do not know (a newer brig-vmm of the same major
//! version may add some); requests do not, so a client's typo is an error.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::metrics::{Counters, MemoryUsage};
use crate::ApiVersion;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
pub enum Response {
    /// To `version`.
    Version(VersionInfo),
    /// To `pause`, `resume` and `shutdown`: the state the VM is now in.
    RunState { state: RunState },
    /// To `state`.
    State(VmState),
    /// To `metrics` (boxed: it is several times larger than the other answers).
    Metrics(Box<VmMetrics>),
    /// To `save-state`.
    Saved(Saved),
    /// To `dump-memory-fd`.
    MemoryDumped(MemoryDumped),
    /// To any request that failed.
    Error(ApiError),
}

impl Response {
    /// The `answer` name, as on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Response::Version(_) => "version",
            Response::RunState { .. } => "run-state",
            Response::State(_) => "state",
            Response::Metrics(_) => "metrics",
            Response::Saved(_) => "saved",
            Response::MemoryDumped(_) => "memory-dumped",
            Response::Error(_) => "error",
        }
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error(ApiError { code, message: message.into() })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Paused,
    /// `shutdown` was accepted; brig-vmm is exiting.
    Stopping,
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Stopping => "stopping",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The control API brig-vmm speaks.
    pub api: ApiVersion,
    /// brig-vmm's own version (its crate version).
    pub vmm_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmState {
    pub state: RunState,
    pub vcpus: u8,
    pub memory_mib: u64,
    /// Since the vCPUs started.
    pub uptime_ms: u64,
    /// The virtio-mmio devices in slot order.
    pub devices: Vec<DeviceInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The virtio device id (2 blk, 4 rng, 19 vsock).
    pub virtio_type: u32,
    /// Whether the guest driver has set DRIVER_OK.
    pub activated: bool,
    /// The virtio device status register.
    pub status: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmMetrics {
    pub counters: Counters,
    pub memory: MemoryUsage,
}

/// What `dump-memory-fd` wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryDumped {
    pub bytes: u64,
    /// SHA-256 of the whole file as brig-vmm wrote it (hex). A reader that hashes
    /// what it receives can compare; it is brig-vmm's claim, not proof.
    pub sha256: String,
    /// `NT_PRSTATUS` notes (one per vCPU).
    pub vcpus: u8,
    /// Guest-physical RAM regions, as `PT_LOAD` segments.
    pub regions: u8,
    /// Bytes of the guest kernel's `VMCOREINFO` text copied into the core (0: none).
    /// The text is the guest's own description of itself: for an analyst's tools,
    /// never for a decision (API 1.3).
    #[serde(default)]
    pub vmcoreinfo_bytes: u32,
    /// Why a `VMCOREINFO` note that was asked for is not in the core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmcoreinfo_missing: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// The file written (none for `save-state-fd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    pub bytes: u64,
}

/// Error classes, named after the gRPC codes the shim maps them to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, an unknown op, an unknown or missing field, an over-long line.
    InvalidRequest,
    /// The client's API major version is not brig-vmm's.
    VersionMismatch,
    /// The VM is not in a state for this (e.g. `save-state` while running, or a path that exists).
    FailedPrecondition,
    /// brig-vmm failed to do it (a vCPU that does not answer, an I/O error).
    Internal,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::VersionMismatch => "version_mismatch",
            ErrorCode::FailedPrecondition => "failed_precondition",
            ErrorCode::Internal => "internal",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} ({code})")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}
