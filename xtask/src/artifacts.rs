//! The artifacts every integration test and the demo need, built (or found in the
//! cache) and handed to tests as environment variables:
//!
//! | variable              | what                                              |
//! |-----------------------|---------------------------------------------------|
//! | `BRIG_GUEST_KERNEL`   | the guest vmlinux (cached by config hash)         |
//! | `BRIG_GUEST_INITRAMFS`| the initramfs around the static brig-agent        |
//! | `BRIG_AGENT_BIN`      | the static brig-agent                             |
//! | `BRIG_VMM_BIN`        | brig-vmm (release build, static: its jail has no libc) |
//! | `BRIG_JAILER_BIN`     | brig-jailer (release build)                       |
//! | `BRIG_VMM_ESCAPE_BIN` | test-only static brig-vmm with `--escape-test` (feature `escape-test`) |
//! | `BRIG_PROBE_INITRAMFS`| test-only initramfs whose init is brig-guest-probe|
//! | `BRIG_HOSTILE_INITRAMFS`| test-only initramfs whose init is brig-hostile-agent |
//! | `BRIG_OCI_CHECK_BIN`  | the static brig-oci-check (OCI conformance tests) |
//! | `BRIG_TEST_ROOTFS_IMAGE` | ext4 busybox rootfs with the probe and checker |
//! | `BRIG_SHIM_BIN`       | containerd-shim-brig-v2 (release build)           |
//! | `BRIG_CLI_BIN`        | brig, the operator CLI (release build)            |
//! | `BRIG_OCI_IMAGE`      | busybox OCI image-layout tarball for `ctr image import` |

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use brig_rootfs_builder::{image, initramfs, kernel};

use crate::cargo;

/// What the busybox image is called once imported (`ctr image import`).
pub const OCI_IMAGE_REF: &str = "docker.io/library/brig-busybox:latest";

/// The host's target triple; the agent is built for it, statically linked.
const TARGET: &str = "x86_64-unknown-linux-gnu";

#[derive(Debug, Clone)]
pub struct Artifacts {
    pub kernel: PathBuf,
    /// The same kernel with its DWARF, for crash and gdb.
    pub debug_kernel: PathBuf,
    pub initramfs: PathBuf,
    pub agent: PathBuf,
    pub vmm: PathBuf,
    pub jailer: PathBuf,
    pub vmm_escape: PathBuf,
    pub probe_initramfs: PathBuf,
    pub hostile_initramfs: PathBuf,
    pub oci_check: PathBuf,
    pub test_rootfs: PathBuf,
    pub shim: PathBuf,
    pub cli: PathBuf,
    pub oci_image: PathBuf,
}

impl Artifacts {
    /// The variables that name the artifacts for tests, benchmarks and the demo, and
    /// `BRIG_XTASK_BIN` (this xtask, which they run as `install --no-build`).
    pub fn env(&self) -> Result<Vec<(String, String)>> {
        let s = |p: &Path| p.to_string_lossy().into_owned();
        Ok(vec![
            ("BRIG_GUEST_KERNEL".into(), s(&self.kernel)),
            ("BRIG_GUEST_KERNEL_DEBUG".into(), s(&self.debug_kernel)),
            ("BRIG_GUEST_INITRAMFS".into(), s(&self.initramfs)),
            ("BRIG_AGENT_BIN".into(), s(&self.agent)),
            ("BRIG_VMM_BIN".into(), s(&self.vmm)),
            ("BRIG_JAILER_BIN".into(), s(&self.jailer)),
            ("BRIG_VMM_ESCAPE_BIN".into(), s(&self.vmm_escape)),
            ("BRIG_PROBE_INITRAMFS".into(), s(&self.probe_initramfs)),
            ("BRIG_HOSTILE_INITRAMFS".into(), s(&self.hostile_initramfs)),
            ("BRIG_OCI_CHECK_BIN".into(), s(&self.oci_check)),
            ("BRIG_TEST_ROOTFS_IMAGE".into(), s(&self.test_rootfs)),
            ("BRIG_SHIM_BIN".into(), s(&self.shim)),
            ("BRIG_CLI_BIN".into(), s(&self.cli)),
            ("BRIG_OCI_IMAGE".into(), s(&self.oci_image)),
            ("BRIG_XTASK_BIN".into(), crate::test::own_binary()?),
        ])
    }
}

/// Builds what is missing.
pub fn build() -> Result<Artifacts> {
    let kernel = kernel::build()?;
    eprintln!("guest kernel {}: {}", kernel.release, kernel.vmlinux.display());
    let agent = build_static("guest-agent", "brig-agent")?;
    let probe = build_static("brig-guest-probe", "brig-guest-probe")?;
    let hostile = build_static("brig-hostile-agent", "brig-hostile-agent")?;
    let oci_check = build_static("brig-oci-check", "brig-oci-check")?;
    let out = crate::workspace_root().join("target").join("brig");
    std::fs::create_dir_all(&out)?;
    // The jail's escape tests' brig-vmm, built first and copied aside: the release
    // one below overwrites its output and must be the one without the feature.
    let vmm_escape = out.join("brig-vmm-escape");
    let escape = build_static_with("sandbox-vmm", "brig-vmm", &["--features", "escape-test"])?;
    std::fs::copy(&escape, &vmm_escape).with_context(|| format!("copying {}", escape.display()))?;
    // Static like the agent: the jail holds brig-vmm's binary and no libc.
    let vmm = build_static("sandbox-vmm", "brig-vmm")?;
    let initramfs = out.join("initramfs.cpio");
    initramfs::build(&agent, &initramfs)?;
    let probe_initramfs = out.join("probe-initramfs.cpio");
    initramfs::build(&probe, &probe_initramfs)?;
    let hostile_initramfs = out.join("hostile-initramfs.cpio");
    initramfs::build(&hostile, &hostile_initramfs)?;
    let test_rootfs = test_rootfs_image(&out, &probe, &oci_check)?;
    let oci_image = out.join("busybox-oci.tar");
    image::oci_image_layout(&out.join("test-rootfs"), &oci_image, OCI_IMAGE_REF)?;
    cargo::run(
        "build brig-jailer, the shim and the brig CLI",
        &[
            "build",
            "--release",
            "--quiet",
            "-p",
            "brig-policy",
            "--bin",
            "brig-jailer",
            "-p",
            "brig-shim",
            "--bin",
            "containerd-shim-brig-v2",
            "-p",
            "brig-cli",
            "--bin",
            "brig",
        ],
    )?;
    let release = crate::workspace_root().join("target").join("release");
    Ok(Artifacts {
        kernel: kernel.vmlinux,
        debug_kernel: kernel.debug_vmlinux,
        initramfs,
        agent,
        vmm,
        jailer: release.join("brig-jailer"),
        vmm_escape,
        shim: release.join("containerd-shim-brig-v2"),
        cli: release.join("brig"),
        oci_image,
        probe_initramfs,
        hostile_initramfs,
        oci_check,
        test_rootfs,
    })
}

/// The busybox rootfs the agent tests run containers from, as an ext4 image: the
/// probe and the checker in /usr/bin, and `/etc/evil`, an absolute symlink pointing
/// out of the rootfs (the symlink-escape test mounts through it).
fn test_rootfs_image(out: &Path, probe: &Path, checker: &Path) -> Result<PathBuf> {
    let dir = out.join("test-rootfs");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let extra = [(probe.to_path_buf(), "usr/bin/brig-guest-probe"), (checker.to_path_buf(), "usr/bin/brig-oci-check")];
    image::busybox_rootfs(&dir, &extra)?;
    std::os::unix::fs::symlink("/escape", dir.join("etc/evil"))?;
    let path = out.join("test-rootfs.ext4");
    image::ext4_image(&dir, &path, 64)?;
    Ok(path)
}

/// A statically linked binary (`+crt-static`): for the guest, which has no libc,
/// and brig-vmm, whose jail has none either.
fn build_static(package: &str, bin: &str) -> Result<PathBuf> {
    build_static_with(package, bin, &[])
}

/// [`build_static`] with more cargo arguments (`--features …`).
fn build_static_with(package: &str, bin: &str, extra: &[&str]) -> Result<PathBuf> {
    let status = cargo::cargo()
        .args(["build", "--release", "--quiet", "-p", package, "--bin", bin, "--target", TARGET])
        .args(extra)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .status()
        .with_context(|| format!("starting cargo to build {bin}"))?;
    if !status.success() {
        bail!("building the static {bin} failed");
    }
    let path = crate::workspace_root().join("target").join(TARGET).join("release").join(bin);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    if is_dynamic(&bytes) {
        bail!("{} is dynamically linked; the guest has no libc to load it", path.display());
    }
    Ok(path)
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
