//! The artifact cache: one directory outside the work tree, shared by every clone.
//!
//! `$BRIG_CACHE_DIR`, else `$XDG_CACHE_HOME/brig`, else `$HOME/.cache/brig`.
//! Entries are directories named by a content hash of their inputs; an entry is
//! written under a temporary name and renamed into place when complete, so a
//! half-built entry is never mistaken for a finished one.

use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// The cache's root directory (created if missing).
pub fn root() -> Result<PathBuf> {
    let dir = if let Some(dir) = std::env::var_os("BRIG_CACHE_DIR") {
        PathBuf::from(dir)
    } else if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        PathBuf::from(dir).join("brig")
    } else {
        let home = std::env::var_os("HOME").context("neither BRIG_CACHE_DIR nor HOME is set")?;
        PathBuf::from(home).join(".cache").join("brig")
    };
    fs::create_dir_all(&dir).with_context(|| format!("creating cache directory {}", dir.display()))?;
    Ok(dir)
}

/// A hex SHA-256 over labelled inputs, shortened to 16 characters for directory names.
#[derive(Debug, Default)]
pub struct Key(Sha256);

impl Key {
    pub fn new(kind: &str) -> Self {
        let mut key = Key(Sha256::new());
        key.add(kind, kind.as_bytes());
        key
    }

    /// Adds one input; the label keeps `("a", "bc")` and `("ab", "c")` apart.
    pub fn add(&mut self, label: &str, bytes: &[u8]) -> &mut Self {
        self.0.update((label.len() as u64).to_le_bytes());
        self.0.update(label.as_bytes());
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    pub fn hex(&self) -> String {
        let digest = self.0.clone().finalize();
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

/// An exclusive lock on one cache entry, so two builds of the same entry (two CI
/// jobs, or a test and a demo) don't race. Released on drop.
#[derive(Debug)]
pub struct EntryLock {
    _file: File,
}

impl EntryLock {
    pub fn acquire(entry: &Path) -> Result<Self> {
        let path = entry.with_extension("lock");
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        file.lock().with_context(|| format!("locking {}", path.display()))?;
        Ok(EntryLock { _file: file })
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_separates_labels_from_values() {
        let mut a = Key::new("k");
        a.add("a", b"bc");
        let mut b = Key::new("k");
        b.add("ab", b"c");
        assert_ne!(a.hex(), b.hex());
        assert_eq!(a.hex().len(), 16);
    }

    #[test]
    fn key_is_stable_for_the_same_inputs() {
        let mut a = Key::new("kernel");
        a.add("config", b"CONFIG_64BIT=y\n");
        let mut b = Key::new("kernel");
        b.add("config", b"CONFIG_64BIT=y\n");
        assert_eq!(a.hex(), b.hex());
    }
}
