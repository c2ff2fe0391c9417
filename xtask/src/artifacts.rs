//! The artifacts every integration test and the demo need, built (or found in the
//! cache) and handed to tests as environment variables:
//!
//! | variable              | what                                              |
//! |-----------------------|---------------------------------------------------|
//! | `BRIG_GUEST_KERNEL`   | the guest vmlinux (cached by config hash)         |
//! | `BRIG_GUEST_INITRAMFS`| the initramfs around the static brig-agent        |
//! | `BRIG_AGENT_BIN`      | the static brig-agent                             |
//! | `BRIG_VMM_BIN`        | brig-vmm (release build)                          |

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use brig_rootfs_builder::{initramfs, kernel};

use crate::cargo;

/// The host's target triple; the agent is built for it, statically linked.
const TARGET: &str = "x86_64-unknown-linux-gnu";

#[derive(Debug, Clone)]
pub struct Artifacts {
    pub kernel: PathBuf,
    pub kernel_release: String,
    pub initramfs: PathBuf,
    pub agent: PathBuf,
    pub vmm: PathBuf,
}

impl Artifacts {
    pub fn env(&self) -> Vec<(String, String)> {
        let s = |p: &Path| p.to_string_lossy().into_owned();
        vec![
            ("BRIG_GUEST_KERNEL".into(), s(&self.kernel)),
            ("BRIG_GUEST_INITRAMFS".into(), s(&self.initramfs)),
            ("BRIG_AGENT_BIN".into(), s(&self.agent)),
            ("BRIG_VMM_BIN".into(), s(&self.vmm)),
        ]
    }
}

/// Builds what is missing.
pub fn build() -> Result<Artifacts> {
    let kernel = kernel::build()?;
    eprintln!("guest kernel {}: {}", kernel.release, kernel.vmlinux.display());
    let agent = build_agent()?;
    let target = crate::workspace_root().join("target");
    let initramfs = target.join("brig").join("initramfs.cpio");
    std::fs::create_dir_all(initramfs.parent().context("initramfs path")?)?;
    initramfs::build(&agent, &initramfs)?;
    cargo::run("build brig-vmm", &["build", "--release", "--quiet", "-p", "sandbox-vmm", "--bin", "brig-vmm"])?;
    Ok(Artifacts {
        kernel: kernel.vmlinux,
        kernel_release: kernel.release,
        initramfs,
        agent,
        vmm: target.join("release").join("brig-vmm"),
    })
}

/// The static brig-agent (`+crt-static`: the guest has no libc).
fn build_agent() -> Result<PathBuf> {
    let status = cargo::cargo()
        .args(["build", "--release", "--quiet", "-p", "guest-agent", "--bin", "brig-agent", "--target", TARGET])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .status()
        .context("starting cargo to build brig-agent")?;
    if !status.success() {
        bail!("building the static brig-agent failed");
    }
    let agent = crate::workspace_root().join("target").join(TARGET).join("release").join("brig-agent");
    let bytes = std::fs::read(&agent).with_context(|| format!("reading {}", agent.display()))?;
    if is_dynamic(&bytes) {
        bail!("{} is dynamically linked; the guest has no libc to load it", agent.display());
    }
    Ok(agent)
}

/// Whether an ELF file asks for a program interpreter (PT_INTERP), i.e. is dynamic.
fn is_dynamic(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u64_at =
        |o: usize| elf.get(o..o + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize);
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        elf.get(at..at + 4) == Some(&3u32.to_le_bytes()[..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_static_from_dynamic_binaries() {
        let dynamic = std::fs::read("/bin/sh").expect("/bin/sh");
        assert!(is_dynamic(&dynamic), "/bin/sh is dynamically linked on Debian");
        let busybox = std::fs::read("/bin/busybox").expect("busybox-static is installed by xtask");
        assert!(!is_dynamic(&busybox), "busybox-static has no interpreter");
    }
}
