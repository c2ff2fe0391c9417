//! What a client asks brig-vmm over the control socket: one JSON object per line,
//! tagged by `op`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ApiVersion;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// brig-vmm's API and build versions. A client names its own API version and
    /// brig-vmm refuses one of another major version (`version_mismatch`).
    Version {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<ApiVersion>,
    },
    // Empty struct variants, not unit ones: serde ignores unknown fields on unit
    // variants of internally tagged enums, and a typo should not pass silently.
    /// Stops every vCPU and device processing. Idempotent.
    Pause {},
    /// Idempotent.
    Resume {},
    /// Stops the VM now; brig-vmm exits 0.
    Shutdown {},
    State {},
    Metrics {},
    /// Writes vCPU, VM and device state to a new file (needs a paused VM).
    SaveState {
        path: PathBuf,
    },
    /// [`Request::SaveState`] into the file descriptor sent with this request line
    /// (`SCM_RIGHTS`): an empty regular file the client opened for writing. brig-vmm
    /// needs no path and no write access outside its jail (API 1.1).
    SaveStateFd {},
    /// Writes guest RAM and the vCPUs' registers as an ELF64 core (`memory.elf`,
    /// docs/snapshot-format.md) into the descriptor sent with this request line
    /// (`SCM_RIGHTS`): an empty regular file or a pipe (needs a paused VM; API 1.2).
    DumpMemoryFd {
        /// Where the guest kernel keeps its `vmcoreinfo_note` pointer: the
        /// guest-physical address of that variable, from the kernel's own symbol
        /// table. brig-vmm follows the pointer and copies the note it finds there,
        /// checked, as the core's `VMCOREINFO` note (API 1.3). Without it, or when
        /// nothing valid is there, the core has no such note.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vmcoreinfo_note_symbol: Option<u64>,
    },
}

impl Request {
    /// The `op` name, as on the wire.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Version { .. } => "version",
            Request::Pause {} => "pause",
            Request::Resume {} => "resume",
            Request::Shutdown {} => "shutdown",
            Request::State {} => "state",
            Request::Metrics {} => "metrics",
            Request::SaveState { .. } => "save-state",
            Request::SaveStateFd {} => "save-state-fd",
            Request::DumpMemoryFd { .. } => "dump-memory-fd",
        }
    }
}
