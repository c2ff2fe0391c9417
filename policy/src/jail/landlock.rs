//! Landlock: what brig-vmm may touch inside its jail, even if it gets root back.
//! It may execute only itself, read only its kernel, initramfs, config and
//! images, open `/dev/kvm` (and `/dev/net/tun`), read its own `/proc` entry, and
//! write and make sockets only in `/state`, and read `/proc/cpuinfo`. TCP bind and connect are denied
//! (ABI 4, Linux 6.7), and so are abstract Unix sockets and signals outside the
//! jail (ABI 6, Linux 6.12), where the kernel has them.

use std::path::Path;

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, LandlockStatus, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use serde::{Deserialize, Serialize};

use super::{JailError, JailSpec, JAIL_STATE};

/// The newest ABI brig asks for; older kernels enforce what they have.
const TARGET_ABI: ABI = ABI::V6;

/// How much Landlock a jail needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LandlockMode {
    /// The kernel must enforce Landlock (every right of its ABI); otherwise the
    /// jail is not built.
    #[default]
    Require,
    /// Enforce what the kernel has; a kernel without Landlock gets none (logged).
    BestEffort,
}

/// Restricts this process (and so brig-vmm after `execve`). Returns what was
/// enforced, for the log line.
pub fn restrict(spec: &JailSpec) -> Result<String, JailError> {
    let err = |e: landlock::RulesetError| JailError::Prerequisite(format!("Landlock: {e}"));
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    let mut rules: Vec<(String, BitFlags<AccessFs>)> = vec![
        (spec.jail_exec().to_string_lossy().into_owned(), AccessFs::Execute | AccessFs::ReadFile),
        // Its sockets, console and saved state: files and sockets only (no
        // directories, links, fifos or device nodes).
        (
            JAIL_STATE.into(),
            AccessFs::ReadFile
                | AccessFs::WriteFile
                | AccessFs::ReadDir
                | AccessFs::RemoveFile
                | AccessFs::MakeReg
                | AccessFs::MakeSock
                | AccessFs::Truncate,
        ),
        // Its own /proc entry (brig-vmm is PID 1 of its namespace), and the CPU's
        // flags (brig-vmm checks for vmx/svm before it creates a VM).
        ("/proc/1".into(), read),
        ("/proc/cpuinfo".into(), AccessFs::ReadFile.into()),
    ];
    for file in &spec.files {
        let access = if file.writable {
            AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate
        } else {
            AccessFs::ReadFile.into()
        };
        rules.push((file.jail.to_string_lossy().into_owned(), access));
    }
    for device in &spec.devices {
        rules.push((device.node().0.into(), AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev));
    }
    // Both modes take what the kernel has of TARGET_ABI; `Require` then refuses a
    // kernel that enforces nothing (below).
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(TARGET_ABI))
        .map_err(err)?
        .handle_access(AccessNet::from_all(TARGET_ABI))
        .map_err(err)?
        .scope(Scope::from_all(TARGET_ABI))
        .map_err(err)?
        .create()
        .map_err(err)?;
    for (path, access) in rules {
        let fd = PathFd::new(Path::new(&path))
            .map_err(|e| JailError::Prerequisite(format!("Landlock rule for {path}: {e}")))?;
        ruleset = ruleset.add_rule(PathBeneath::new(fd, access)).map_err(err)?;
    }
    let status = ruleset.restrict_self().map_err(err)?;
    let abi = match status.landlock {
        LandlockStatus::Available { effective_abi, .. } => Some(effective_abi),
        _ => None,
    };
    match (status.ruleset, abi, spec.landlock) {
        (RulesetStatus::NotEnforced, _, LandlockMode::Require) | (_, None, LandlockMode::Require) => {
            Err(JailError::Prerequisite(format!(
                "Landlock is required but this kernel does not enforce it ({:?}): boot a kernel with \
                 CONFIG_SECURITY_LANDLOCK and `landlock` in its lsm= list (Linux 5.13+), or set \
                 jail_landlock = \"best-effort\" in /etc/brig/config.toml",
                status.landlock
            )))
        }
        (RulesetStatus::NotEnforced, _, _) | (_, None, _) => Ok("Landlock: not enforced by this kernel".into()),
        // Best effort drops exactly the rights of ABIs newer than the kernel's.
        (_, Some(abi), _) if abi >= TARGET_ABI => Ok(format!("Landlock: ABI {} enforced in full", TARGET_ABI as i32)),
        (_, Some(abi), _) => Ok(format!(
            "Landlock: ABI {} enforced in full (every right this kernel has; those of ABI {}-{} need a newer kernel)",
            abi as i32,
            abi as i32 + 1,
            TARGET_ABI as i32
        )),
    }
}
