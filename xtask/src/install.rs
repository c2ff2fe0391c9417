//! `cargo xtask install [--prefix DIR] [--no-build]`: puts brig where containerd
//! finds it, so `ctr run --runtime io.containerd.brig.v2 …` needs nothing else.
//!
//! | what | where |
//! |---|---|
//! | `containerd-shim-brig-v2`, `brig-vmm` (static), `brig-jailer` | `PREFIX/bin` (containerd finds shims on its `PATH`) |
//! | `brig`, the operator CLI | `PREFIX/bin` |
//! | guest `vmlinux`, `initramfs.cpio` | `PREFIX/share/brig` |
//! | `config.toml` (only if none exists) | `/etc/brig` |
//! | the snapshot signing key (only if none exists: `brig keygen`) | `/etc/brig/keys` |
//!
//! `--no-build` installs the artifacts named by the `BRIG_*` variables `cargo xtask
//! test` sets (what the tests use inside kvm-host).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::{apt, artifacts};

const CONFIG_DIR: &str = "/etc/brig";

#[derive(Debug)]
pub struct Sources {
    pub shim: PathBuf,
    pub vmm: PathBuf,
    pub jailer: PathBuf,
    pub cli: PathBuf,
    pub kernel: PathBuf,
    pub debug_kernel: PathBuf,
    pub initramfs: PathBuf,
}

impl Sources {
    fn from_env() -> Result<Sources> {
        let var = |name: &str| -> Result<PathBuf> {
            std::env::var_os(name)
                .map(PathBuf::from)
                .with_context(|| format!("--no-build needs {name} (set by cargo xtask test)"))
        };
        Ok(Sources {
            shim: var("BRIG_SHIM_BIN")?,
            vmm: var("BRIG_VMM_BIN")?,
            jailer: var("BRIG_JAILER_BIN")?,
            cli: var("BRIG_CLI_BIN")?,
            kernel: var("BRIG_GUEST_KERNEL")?,
            debug_kernel: var("BRIG_GUEST_KERNEL_DEBUG")?,
            initramfs: var("BRIG_GUEST_INITRAMFS")?,
        })
    }
}

pub fn run(args: &[String]) -> Result<()> {
    let mut prefix = PathBuf::from("/usr/local");
    let mut build = true;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--prefix" => prefix = PathBuf::from(iter.next().context("--prefix needs a directory")?),
            "--no-build" => build = false,
            other => bail!("unknown option `{other}` for install (use --prefix DIR, --no-build)"),
        }
    }
    if !apt::is_root() {
        bail!("install writes to {} and {CONFIG_DIR}: run it as root", prefix.display());
    }
    let sources = if build {
        apt::ensure(apt::BASE)?;
        let built = artifacts::build()?;
        Sources {
            shim: built.shim,
            vmm: built.vmm,
            jailer: built.jailer,
            cli: built.cli,
            kernel: built.kernel,
            debug_kernel: built.debug_kernel,
            initramfs: built.initramfs,
        }
    } else {
        Sources::from_env()?
    };
    install(&sources, &prefix, Path::new(CONFIG_DIR))?;
    make_snapshot_key(&prefix.join("bin/brig"), &Path::new(CONFIG_DIR).join("keys"))
}

/// This host's snapshot signing key, made once by the installed `brig keygen`
/// (an existing key is kept); its public half is printed.
fn make_snapshot_key(brig: &Path, dir: &Path) -> Result<()> {
    let status = std::process::Command::new(brig)
        .arg("keygen")
        .arg("--dir")
        .arg(dir)
        .status()
        .with_context(|| format!("running {} keygen", brig.display()))?;
    if !status.success() {
        bail!("{} keygen --dir {} failed ({status})", brig.display(), dir.display());
    }
    Ok(())
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    // Replace, don't overwrite: a running shim or VMM keeps its old file.
    let tmp = to.with_extension("brig-new");
    std::fs::copy(from, &tmp).with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, to).with_context(|| format!("installing {}", to.display()))?;
    println!("  {}", to.display());
    Ok(())
}

/// Copies everything into place and writes a config file if there is none.
pub fn install(sources: &Sources, prefix: &Path, config_dir: &Path) -> Result<()> {
    println!("installing brig:");
    let bin = prefix.join("bin");
    let share = prefix.join("share/brig");
    copy(&sources.shim, &bin.join("containerd-shim-brig-v2"), 0o755)?;
    copy(&sources.vmm, &bin.join("brig-vmm"), 0o755)?;
    copy(&sources.jailer, &bin.join("brig-jailer"), 0o755)?;
    copy(&sources.cli, &bin.join("brig"), 0o755)?;
    copy(&sources.kernel, &share.join("vmlinux"), 0o644)?;
    // Beside the booted one, where brig snapshot finds it (docs/snapshot-format.md).
    copy(&sources.debug_kernel, &share.join("vmlinux.debug"), 0o644)?;
    copy(&sources.initramfs, &share.join("initramfs.cpio"), 0o644)?;
    let config = config_dir.join("config.toml");
    if config.exists() {
        println!("  {} (kept: it already exists)", config.display());
    } else {
        std::fs::create_dir_all(config_dir)?;
        let text = format!(
            "# brig's runtime configuration (see shim/src/config.rs for every field)\n\
             kernel = \"{}\"\ninitramfs = \"{}\"\nvmm = \"{}\"\njailer = \"{}\"\ndefault_vcpus = 1\ndefault_memory_mib = 128\n\
             log_level = \"info\"\n",
            share.join("vmlinux").display(),
            share.join("initramfs.cpio").display(),
            bin.join("brig-vmm").display(),
            bin.join("brig-jailer").display()
        );
        std::fs::write(&config, text)?;
        println!("  {}", config.display());
    }
    println!(
        "done: containerd finds {} on its PATH; try\n  ctr run --rm --runtime io.containerd.brig.v2 IMAGE ID uname -r",
        bin.join("containerd-shim-brig-v2").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_everything_and_keeps_an_existing_config() {
        let dir = std::env::temp_dir().join(format!("brig-install-{}", std::process::id()));
        let src = dir.join("src");
        std::fs::create_dir_all(&src).expect("dir");
        for name in ["shim", "vmm", "jailer", "brig", "vmlinux", "vmlinux.debug", "initramfs"] {
            std::fs::write(src.join(name), name).expect("write");
        }
        let sources = Sources {
            shim: src.join("shim"),
            vmm: src.join("vmm"),
            jailer: src.join("jailer"),
            cli: src.join("brig"),
            kernel: src.join("vmlinux"),
            debug_kernel: src.join("vmlinux.debug"),
            initramfs: src.join("initramfs"),
        };
        let (prefix, config_dir) = (dir.join("usr"), dir.join("etc"));
        install(&sources, &prefix, &config_dir).expect("install");
        assert_eq!(std::fs::read_to_string(prefix.join("bin/containerd-shim-brig-v2")).expect("shim"), "shim");
        assert_eq!(std::fs::read_to_string(prefix.join("share/brig/vmlinux")).expect("kernel"), "vmlinux");
        let debug = std::fs::read_to_string(prefix.join("share/brig/vmlinux.debug")).expect("debug kernel");
        assert_eq!(debug, "vmlinux.debug");
        let config = std::fs::read_to_string(config_dir.join("config.toml")).expect("config");
        assert!(config.contains(&format!("vmm = \"{}\"", prefix.join("bin/brig-vmm").display())), "{config}");
        assert!(config.contains(&format!("jailer = \"{}\"", prefix.join("bin/brig-jailer").display())), "{config}");
        assert_eq!(std::fs::read_to_string(prefix.join("bin/brig-jailer")).expect("jailer"), "jailer");
        assert_eq!(std::fs::read_to_string(prefix.join("bin/brig")).expect("brig"), "brig");
        std::fs::write(config_dir.join("config.toml"), "default_vcpus = 4\n").expect("edit");
        install(&sources, &prefix, &config_dir).expect("again");
        assert_eq!(std::fs::read_to_string(config_dir.join("config.toml")).expect("config"), "default_vcpus = 4\n");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
