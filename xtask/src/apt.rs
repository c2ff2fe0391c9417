//! Installs the Debian packages a command needs, when they are missing.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use brig_rootfs_builder::progress;

/// Packages every test and demo needs on the developer's machine.
pub const BASE: &[&str] = &[
    "qemu-system-x86",
    "kmod",
    "cpio",
    "busybox-static",
    "linux-source-6.1",
    "bc",
    "flex",
    "bison",
    "libelf-dev",
    "libssl-dev",
    "xz-utils",
    "e2fsprogs",
    "erofs-utils",
    "protobuf-compiler",
    "iproute2",
    // readelf, gdb and crash: the forensic tests open memory.elf with them.
    "binutils",
    "gdb",
    "crash",
];

/// containerd and its peers (runc, the CNI plugins in /usr/lib/cni), for the shim's
/// end-to-end tests and the demo.
pub const CONTAINERD: &[&str] = &["containerd", "runc", "containernetworking-plugins"];

static UPDATED: AtomicBool = AtomicBool::new(false);

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// A command run as root: directly when we are root, through `sudo` otherwise.
pub fn as_root(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg("-E").arg(program);
        cmd
    }
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Makes sure the package lists exist (a fresh container has none).
pub fn ensure_lists() -> Result<()> {
    if UPDATED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let lists = std::fs::read_dir("/var/lib/apt/lists")
        .map(|d| d.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().contains("_Packages")))
        .unwrap_or(false);
    if !lists {
        update()?;
    }
    Ok(())
}

fn update() -> Result<()> {
    let log = std::env::temp_dir().join("brig-apt-update.log");
    let mut cmd = as_root("apt-get");
    cmd.args(["update", "-q"]);
    progress::run_logged("apt-get update", cmd, &log, 0)?;
    UPDATED.store(true, Ordering::Relaxed);
    Ok(())
}

/// Where [`ensure_backports`] adds bookworm-backports when no source has it.
const BACKPORTS_SOURCE: &str = "/etc/apt/sources.list.d/brig-bookworm-backports.sources";

/// Makes sure apt knows bookworm-backports. Its packages keep apt's priority 100:
/// nothing installed changes unless it is asked for by name or `/bookworm-backports`.
pub fn ensure_backports() -> Result<()> {
    let sources = ["/etc/apt/sources.list", "/etc/apt/sources.list.d"]
        .iter()
        .flat_map(|p| match std::fs::read_dir(p) {
            Ok(dir) => dir.filter_map(|e| e.ok()).map(|e| e.path()).collect::<Vec<_>>(),
            Err(_) => vec![std::path::PathBuf::from(p)],
        })
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .any(|text| text.lines().any(|l| !l.trim_start().starts_with('#') && l.contains("bookworm-backports")));
    if !sources {
        eprintln!("[apt] adding bookworm-backports to apt's sources ({BACKPORTS_SOURCE})");
        let text = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\n\
                    Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";
        let mut tee = as_root("tee");
        tee.arg(BACKPORTS_SOURCE).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null());
        let mut child = tee.spawn().context("tee (writing the backports source)")?;
        std::io::Write::write_all(&mut child.stdin.take().context("tee's stdin")?, text.as_bytes())?;
        if !child.wait()?.success() {
            bail!("could not write {BACKPORTS_SOURCE}");
        }
        update()?;
    } else if !has_suite("bookworm-backports") {
        update()?;
    }
    Ok(())
}

/// Whether apt's lists hold packages of `suite`.
fn has_suite(suite: &str) -> bool {
    std::fs::read_dir("/var/lib/apt/lists")
        .map(|d| d.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().contains(&format!("_{suite}_"))))
        .unwrap_or(false)
}

/// Installs whichever of `pkgs` are missing.
pub fn ensure(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("[apt] installing {}", missing.join(" "));
    ensure_lists()?;
    let log = std::env::temp_dir().join("brig-apt-install.log");
    let install = || {
        let mut cmd = as_root("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing);
        progress::run_logged("apt-get install", cmd, &log, 0)
    };
    if install().is_err() {
        // Stale lists are the usual cause (a package version no longer on the mirror).
        update()?;
        install().context("installing Debian packages")?;
    }
    let still: Vec<&str> = missing.iter().copied().filter(|p| !installed(p)).collect();
    if !still.is_empty() {
        bail!("apt-get finished but these packages are still missing: {}", still.join(" "));
    }
    Ok(())
}
