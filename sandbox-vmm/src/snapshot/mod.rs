//! Versioned, checksummed state files.
//!
//! Layout: `BRIGSTAT` magic (8 bytes) | format version (u32 LE) | payload length
//! (u64 LE) | SHA-256 of the payload (32 bytes) | payload (JSON). A file with the
//! wrong magic, version, length or checksum is refused as a whole: a restore or an
//! investigation must never proceed on silently damaged state. Files are created
//! mode 0600 and never overwritten.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::VmConfig;
use crate::devices::virtio::mmio::TransportSnapshot;
use crate::vcpu::VcpuState;
use crate::vm::VmState;

pub const MAGIC: [u8; 8] = *b"BRIGSTAT";
pub const FORMAT_VERSION: u32 = 1;
const PREFIX_LEN: usize = 8 + 4 + 8 + 32;
/// State files are small (no guest memory); refuse anything absurd before allocating.
const MAX_PAYLOAD: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot create the state file {path}")]
    Create { path: String, source: std::io::Error },
    #[error("cannot read the state file {path}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not a brig state file")]
    Magic { path: String },
    #[error("{path} is state format version {found}; this brig-vmm reads version {FORMAT_VERSION}")]
    Version { path: String, found: u32 },
    #[error("{path} is damaged: {detail}")]
    Corrupt { path: String, detail: String },
    #[error("cannot encode the state")]
    Encode(#[source] serde_json::Error),
}

/// Everything about a paused VM except its memory and disks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineState {
    pub vmm_version: String,
    pub config: VmConfig,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub devices: Vec<TransportSnapshot>,
}

/// Writes `value` to a new file at `path`; returns the bytes written.
pub fn write<T: Serialize>(path: &Path, value: &T) -> Result<u64, SnapshotError> {
    let display = path.display().to_string();
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| SnapshotError::Create { path: display.clone(), source })?;
    write_to(file, &display, value)
}

/// Writes `value` into `file`, which must be an empty regular file or a pipe (one a
/// client opened and sent: brig-vmm needs no path for it); returns the bytes written.
pub fn write_to<T: Serialize>(mut file: std::fs::File, display: &str, value: &T) -> Result<u64, SnapshotError> {
    let display = display.to_owned();
    check_output(&file, true).map_err(|source| SnapshotError::Create { path: display.clone(), source })?;
    let payload = serde_json::to_vec(value).map_err(SnapshotError::Encode)?;
    let mut prefix = Vec::with_capacity(PREFIX_LEN);
    prefix.extend_from_slice(&MAGIC);
    prefix.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    prefix.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    prefix.extend_from_slice(&Sha256::digest(&payload));
    let io = |source| SnapshotError::Create { path: display.clone(), source };
    file.write_all(&prefix).map_err(io)?;
    file.write_all(&payload).map_err(io)?;
    // A pipe has nothing to sync: its reader writes the file.
    if file.metadata().map_err(io)?.file_type().is_file() {
        file.sync_all().map_err(io)?;
    }
    Ok((prefix.len() + payload.len()) as u64)
}

/// Checks a descriptor a client sent for output: an empty regular file (or, with
/// `pipe`, a pipe), so nothing already there is overwritten or mixed in.
pub fn check_output(file: &std::fs::File, pipe: bool) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = file.metadata()?;
    let kind = meta.file_type();
    if (kind.is_file() && meta.len() == 0) || (pipe && kind.is_fifo()) {
        return Ok(());
    }
    let what = if kind.is_file() { "is not empty" } else { "is not a regular file" };
    let want = if pipe { "an empty file opened for writing, or a pipe" } else { "an empty file opened for writing" };
    Err(std::io::Error::other(format!("{what}: send {want}")))
}

/// The checksum a state file carries for `payload`.
pub fn checksum(payload: &[u8]) -> [u8; 32] {
    Sha256::digest(payload).into()
}

/// Reads and verifies a file written by [`write`].
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T, SnapshotError> {
    let display = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| SnapshotError::Read { path: display.clone(), source })?;
    decode(&display, file)
}

/// Verifies and decodes a state file's bytes; `name` is what errors call it.
pub fn decode<T: DeserializeOwned>(name: &str, mut file: impl Read) -> Result<T, SnapshotError> {
    let display = name.to_owned();
    let mut prefix = [0u8; PREFIX_LEN];
    file.read_exact(&mut prefix).map_err(|_| SnapshotError::Magic { path: display.clone() })?;
    if prefix[..8] != MAGIC {
        return Err(SnapshotError::Magic { path: display });
    }
    let version = u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]);
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version { path: display, found: version });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&prefix[12..20]);
    let len = u64::from_le_bytes(len);
    let corrupt = |detail: String| SnapshotError::Corrupt { path: display.clone(), detail };
    if len > MAX_PAYLOAD {
        return Err(corrupt(format!("payload length {len} is implausible")));
    }
    // The length is the file's word: grow with what is really there, never to it up front.
    let mut payload = Vec::with_capacity(len.min(1 << 20) as usize);
    file.take(len + 1)
        .read_to_end(&mut payload)
        .map_err(|source| SnapshotError::Read { path: display.clone(), source })?;
    if payload.len() as u64 > len {
        return Err(corrupt(format!("bytes follow the {len}-byte payload the header announces")));
    }
    if (payload.len() as u64) < len {
        return Err(corrupt(format!("payload is {} bytes, header says {len}", payload.len())));
    }
    if Sha256::digest(&payload)[..] != prefix[20..52] {
        return Err(corrupt("checksum mismatch".into()));
    }
    serde_json::from_slice(&payload).map_err(|e| corrupt(format!("payload does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("brig-snapshot-{}-{name}", std::process::id()))
    }

    #[test]
    fn round_trips_and_is_private() {
        let path = scratch("ok");
        let value = serde_json::json!({"rip": "0xffffffff81000000", "n": 3});
        write(&path, &value).expect("write");
        let mode = std::fs::metadata(&path).expect("meta").permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        let back: serde_json::Value = read(&path).expect("read");
        assert_eq!(back, value);
        assert!(write(&path, &value).is_err(), "never overwrites");
        std::fs::remove_file(&path).expect("cleanup");
    }

    #[test]
    fn a_flipped_byte_is_detected() {
        let path = scratch("flip");
        write(&path, &serde_json::json!({"a": 1})).expect("write");
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 2;
        bytes[last] ^= 0x01;
        std::fs::write(&path, &bytes).expect("rewrite");
        let err = read::<serde_json::Value>(&path).expect_err("corrupt");
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        std::fs::remove_file(&path).expect("cleanup");
    }

    #[test]
    fn wrong_magic_and_version_are_named() {
        let path = scratch("magic");
        std::fs::write(&path, b"not a state file at all, just some text here......").expect("write");
        assert!(matches!(read::<serde_json::Value>(&path), Err(SnapshotError::Magic { .. })));
        std::fs::remove_file(&path).expect("cleanup");
        write(&path, &1).expect("write");
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[8] = 9;
        std::fs::write(&path, &bytes).expect("rewrite");
        assert!(matches!(read::<serde_json::Value>(&path), Err(SnapshotError::Version { found: 9, .. })));
        std::fs::remove_file(&path).expect("cleanup");
    }
}
