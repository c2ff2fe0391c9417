//! The guest kernel: Debian's `linux-source-6.1`, `make tinyconfig`, the checked-in
//! fragment `kernel/guest.config` merged over it, `make vmlinux`.
//!
//! The result is cached under a hash of the source package version, the fragment
//! and [`RECIPE`], so a change to any of them rebuilds and nothing else does.
//! After `olddefconfig`, every symbol of the fragment is checked: Kconfig silently
//! drops a symbol whose dependencies are off, and a guest missing vsock or
//! seccomp is worse than a failed build.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cache::{self, EntryLock, Key};
use crate::progress;

/// The configuration fragment merged over `tinyconfig`.
pub const FRAGMENT: &str = include_str!("../kernel/guest.config");

/// Bumped whenever the build steps below change the output.
const RECIPE: &str = "brig-guest-kernel/2";

/// The Debian package that provides the source tarball.
pub const SOURCE_PACKAGE: &str = "linux-source-6.1";
const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";

/// Output lines of a typical `make vmlinux` with this fragment (for the progress %).
const EXPECTED_BUILD_LINES: usize = 1650;

/// A built guest kernel.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    /// Uncompressed ELF kernel, loadable by brig-vmm: `vmlinux.debug` with its debug
    /// sections stripped (the same loaded bytes, symbols and build-id).
    pub vmlinux: PathBuf,
    /// The kernel as linked, with its DWARF: what crash and gdb open a memory.elf with.
    pub debug_vmlinux: PathBuf,
    /// The full `.config` it was built with.
    pub config: PathBuf,
    /// `uname -r` of the guest.
    pub release: String,
}

/// The cache entry for the current source package and fragment, built if missing.
pub fn build() -> Result<GuestKernel> {
    let version = source_version()?;
    let mut key = Key::new("guest-kernel");
    key.add("source-version", version.as_bytes()).add("fragment", FRAGMENT.as_bytes()).add("recipe", RECIPE.as_bytes());
    let entry = cache::root()?.join("kernel").join(key.hex());
    if let Some(kernel) = load(&entry)? {
        return Ok(kernel);
    }
    let _lock = EntryLock::acquire(&entry)?;
    if let Some(kernel) = load(&entry)? {
        return Ok(kernel);
    }
    eprintln!("[guest kernel] building from {SOURCE_PACKAGE} {version} into {}", entry.display());
    build_into(&entry)?;
    load(&entry)?.context("kernel build finished without a vmlinux")
}

fn load(entry: &Path) -> Result<Option<GuestKernel>> {
    let (vmlinux, debug_vmlinux) = (entry.join("vmlinux"), entry.join("vmlinux.debug"));
    if !vmlinux.is_file() || !debug_vmlinux.is_file() {
        return Ok(None);
    }
    let release = fs::read_to_string(entry.join("release"))
        .with_context(|| format!("reading {}/release", entry.display()))?
        .trim()
        .to_owned();
    Ok(Some(GuestKernel { vmlinux, debug_vmlinux, config: entry.join("config"), release }))
}

/// The installed version of the source package.
fn source_version() -> Result<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", SOURCE_PACKAGE])
        .output()
        .context("running dpkg-query")?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || version.is_empty() || !Path::new(SOURCE_TARBALL).is_file() {
        bail!(
            "the guest kernel needs Debian's {SOURCE_PACKAGE} ({SOURCE_TARBALL} is missing): \
             run `apt-get install {SOURCE_PACKAGE}` (`cargo xtask test` and `cargo xtask demo` install it)"
        );
    }
    Ok(version)
}

fn build_into(entry: &Path) -> Result<()> {
    let build = entry.with_extension("build");
    if build.exists() {
        fs::remove_dir_all(&build).with_context(|| format!("removing stale {}", build.display()))?;
    }
    fs::create_dir_all(&build)?;
    let log = build.with_extension("log");

    let mut untar = Command::new("tar");
    untar.args(["-xf", SOURCE_TARBALL, "--strip-components=1", "-C"]).arg(&build);
    progress::run_logged("unpack kernel source", untar, &log, 0)?;

    progress::run_logged("tinyconfig", make(&build, &["tinyconfig"]), &log, 0)?;
    let fragment = build.join("brig.config");
    fs::write(&fragment, kconfig_fragment(FRAGMENT))?;
    let mut merge = Command::new("scripts/kconfig/merge_config.sh");
    merge.current_dir(&build).args(["-m", ".config", "brig.config"]);
    progress::run_logged("merge guest.config", merge, &log, 0)?;
    progress::run_logged("olddefconfig", make(&build, &["olddefconfig"]), &log, 0)?;
    let config = fs::read_to_string(build.join(".config"))?;
    check_config(FRAGMENT, &config)?;

    let jobs = std::env::var("BRIG_KERNEL_JOBS")
        .ok()
        .and_then(|j| j.parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let jobs = format!("-j{jobs}");
    progress::run_logged("guest kernel", make(&build, &[&jobs, "vmlinux"]), &log, EXPECTED_BUILD_LINES)?;

    let release = fs::read_to_string(build.join("include/config/kernel.release"))?;
    let staging = entry.with_extension("tmp");
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    fs::create_dir_all(&staging)?;
    fs::copy(build.join("vmlinux"), staging.join("vmlinux.debug"))?;
    let mut strip = Command::new("objcopy");
    strip.arg("--strip-debug").arg(build.join("vmlinux")).arg(staging.join("vmlinux"));
    progress::run_logged("strip the booted vmlinux", strip, &log, 0)?;
    fs::write(staging.join("config"), &config)?;
    fs::write(staging.join("release"), release)?;
    fs::rename(&staging, entry).with_context(|| format!("moving the kernel into {}", entry.display()))?;
    fs::remove_dir_all(&build)?;
    fs::remove_file(&log)?;
    Ok(())
}

fn make(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("make");
    cmd.current_dir(dir)
        .args(args)
        // Reproducible: no builder name, host or time in the image.
        .env("KBUILD_BUILD_USER", "brig")
        .env("KBUILD_BUILD_HOST", "brig")
        .env("KBUILD_BUILD_TIMESTAMP", "1970-01-01")
        .env("KBUILD_BUILD_VERSION", "1");
    cmd
}

/// One wanted symbol: `Some(value)` for `=y`/`=m`/`=<value>`, `None` for `=n`.
fn wanted(fragment: &str) -> Vec<(&str, Option<&str>)> {
    fragment
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("CONFIG_"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k, if v == "n" { None } else { Some(v) }))
        .collect()
}

/// The fragment in Kconfig's own syntax (`=n` becomes `# X is not set`).
fn kconfig_fragment(fragment: &str) -> String {
    wanted(fragment)
        .into_iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}\n"),
            None => format!("# {k} is not set\n"),
        })
        .collect()
}

/// Fails with every symbol of `fragment` that `.config` did not keep.
fn check_config(fragment: &str, config: &str) -> Result<()> {
    let have: BTreeMap<&str, &str> =
        config.lines().filter(|l| l.starts_with("CONFIG_")).filter_map(|l| l.split_once('=')).collect();
    let missing: Vec<String> = wanted(fragment)
        .into_iter()
        .filter(|(k, v)| have.get(k).copied() != *v)
        .map(|(k, v)| format!("{k}: wanted {}, got {}", v.unwrap_or("n"), have.get(k).copied().unwrap_or("n")))
        .collect();
    if !missing.is_empty() {
        bail!(
            "guest.config asks for symbols the kernel configuration did not keep \
             (a dependency is off); fix rootfs-builder/kernel/guest.config:\n  {}",
            missing.join("\n  ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_asks_for_what_the_design_requires() {
        let want: BTreeMap<_, _> = wanted(FRAGMENT).into_iter().collect();
        for sym in [
            "CONFIG_VIRTIO_MMIO",
            "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES",
            "CONFIG_VIRTIO_VSOCKETS",
            "CONFIG_VIRTIO_BLK",
            "CONFIG_HW_RANDOM_VIRTIO",
            "CONFIG_EXT4_FS",
            "CONFIG_OVERLAY_FS",
            "CONFIG_SECCOMP_FILTER",
            "CONFIG_CGROUPS",
            "CONFIG_PID_NS",
            "CONFIG_SERIAL_8250_CONSOLE",
        ] {
            assert_eq!(want.get(sym), Some(&Some("y")), "{sym} must be built in");
        }
    }

    #[test]
    fn check_config_names_every_dropped_symbol() {
        let fragment = "CONFIG_A=y\nCONFIG_B=y\nCONFIG_C=n\nCONFIG_D=n\n";
        let config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_D=y\n";
        let err = format!("{:#}", check_config(fragment, config).expect_err("B and D differ"));
        assert!(err.contains("CONFIG_B: wanted y, got n"), "{err}");
        assert!(err.contains("CONFIG_D: wanted n, got y"), "{err}");
        assert!(!err.contains("CONFIG_A") && !err.contains("CONFIG_C"), "{err}");
    }

    #[test]
    fn kconfig_fragment_spells_n_as_not_set() {
        assert_eq!(kconfig_fragment("# c\nCONFIG_A=y\nCONFIG_B=n\n"), "CONFIG_A=y\n# CONFIG_B is not set\n");
    }
}
