//! The guest initramfs: a `newc` cpio archive whose `/init` is the static `brig-agent`.
//!
//! Reproducible by construction: entries are written in a fixed order with
//! mtime 0, uid/gid 0 and inode numbers counted from 1, so the same agent binary
//! always gives the same bytes. It is not compressed: the guest would spend longer
//! inflating it than the VMM spends copying it.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// One file-system object in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir { path: String, mode: u32 },
    File { path: String, mode: u32, data: Vec<u8> },
    CharDev { path: String, mode: u32, major: u32, minor: u32 },
}

impl Entry {
    fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. } | Entry::File { path, .. } | Entry::CharDev { path, .. } => path,
        }
    }
}

/// The entries of brig's guest initramfs around the given agent binary.
pub fn guest_entries(agent: Vec<u8>) -> Vec<Entry> {
    let dir = |path: &str| Entry::Dir { path: path.to_owned(), mode: 0o755 };
    vec![
        dir("dev"),
        // The kernel opens /dev/console for init's stdio before anything is mounted.
        Entry::CharDev { path: "dev/console".to_owned(), mode: 0o600, major: 5, minor: 1 },
        dir("proc"),
        dir("sys"),
        dir("run"),
        Entry::Dir { path: "tmp".to_owned(), mode: 0o1777 },
        Entry::File { path: "init".to_owned(), mode: 0o755, data: agent },
    ]
}

/// Builds the guest initramfs from the agent binary at `agent` and writes it to `out`.
pub fn build(agent: &Path, out: &Path) -> Result<()> {
    let data = fs::read(agent).with_context(|| format!("reading the guest agent {}", agent.display()))?;
    if !data.starts_with(b"\x7fELF") {
        bail!("{} is not an ELF binary; build brig-agent first", agent.display());
    }
    let archive = write_newc(&guest_entries(data))?;
    crate::cache::write_atomic(out, &archive)
}

/// Serialises entries as a `newc` archive with its `TRAILER!!!`.
pub fn write_newc(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let ino = u32::try_from(index + 1).context("too many entries")?;
        let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
            Entry::Dir { mode, .. } => (S_IFDIR | mode, &[], (0, 0)),
            Entry::File { mode, data, .. } => (S_IFREG | mode, data, (0, 0)),
            Entry::CharDev { mode, major, minor, .. } => (S_IFCHR | mode, &[], (*major, *minor)),
        };
        let nlink = if matches!(entry, Entry::Dir { .. }) { 2 } else { 1 };
        header(&mut out, ino, mode, nlink, data.len(), rdev, entry.path())?;
        out.extend_from_slice(data);
        pad4(&mut out);
    }
    header(&mut out, 0, 0, 1, 0, (0, 0), "TRAILER!!!")?;
    Ok(out)
}

fn header(out: &mut Vec<u8>, ino: u32, mode: u32, nlink: u32, size: usize, rdev: (u32, u32), name: &str) -> Result<()> {
    let size = u32::try_from(size).context("file larger than 4 GiB does not fit newc")?;
    let namesize = u32::try_from(name.len() + 1).context("name too long")?;
    let fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0];
    out.extend_from_slice(b"070701");
    for field in fields {
        out.extend_from_slice(format!("{field:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    Ok(())
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    fn sample() -> Vec<Entry> {
        guest_entries(b"\x7fELF-not-really-an-agent".to_vec())
    }

    #[test]
    fn same_input_gives_same_bytes() {
        let a = write_newc(&sample()).expect("archive");
        let b = write_newc(&sample()).expect("archive");
        assert_eq!(a, b);
        assert_eq!(a.len() % 4, 0);
    }

    /// GNU cpio is the reference reader: it must list exactly our entries, with our modes.
    #[test]
    fn gnu_cpio_reads_the_archive() {
        let archive = write_newc(&sample()).expect("archive");
        let mut child = Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cpio must be installed (apt-get install cpio)");
        child.stdin.take().expect("stdin").write_all(&archive).expect("write");
        let out = child.wait_with_output().expect("cpio output");
        assert!(out.status.success());
        let listing = String::from_utf8(out.stdout).expect("utf8");
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 7, "{listing}");
        assert!(lines[1].starts_with("crw-------") && lines[1].ends_with("dev/console"), "{listing}");
        assert!(lines[5].starts_with("drwxrwxrwt"), "{listing}");
        assert!(lines[6].starts_with("-rwxr-xr-x") && lines[6].ends_with(" init"), "{listing}");
        assert!(lines[6].contains(" 24 "), "init keeps its size: {listing}");
    }

    #[test]
    fn build_refuses_a_non_elf_agent() {
        let dir = std::env::temp_dir().join(format!("brig-initramfs-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let agent = dir.join("agent");
        fs::write(&agent, b"#!/bin/sh\n").expect("write");
        let err = build(&agent, &dir.join("out.cpio")).expect_err("not ELF");
        assert!(format!("{err}").contains("not an ELF binary"), "{err}");
        assert!(!dir.join("out.cpio").exists(), "nothing is written on error");
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
