//! Landlock: what brig-vmm may touch inside its jail, even if it gets root back.
//! It may execute only itself, read only its kernel, initramfs, config and
//! images, open `/dev/kvm` (and `/dev/net/tun`), read its own `/proc` entry, and
//! write and make sockets only in `/state`, and read `/proc/cpuinfo`. TCP bind and connect are denied
//! (ABI 4, Linux 6.7), and so are abstract Unix sockets and signals outside the
//! jail (ABI 6, Linux 6.12), where the kernel has them.

use std::path::Path;

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use serde::{Deserialize, Serialize};

use super::{JailError, JailSpec, JAIL_MEMORY, JAIL_STATE};

/// The newest ABI brig asks for; an older kernel's ABI is enforced in full.
const TARGET_ABI: ABI = ABI::V6;

/// How much Landlock a jail needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LandlockMode {
    /// The kernel must enforce Landlock; otherwise the jail is not built.
    #[default]
    Require,
    /// A kernel without Landlock runs the jail without it (logged).
    BestEffort,
}

/// Restricts this process (and so brig-vmm after `execve`) with every right of
/// the ABI the kernel reports, up to [`TARGET_ABI`], as a hard requirement: the
/// ruleset is enforced in full, or the jail is not built. Returns what was
/// enforced, for the log line.
pub fn restrict(spec: &JailSpec) -> Result<String, JailError> {
    let kernel = crate::sys::landlock_abi();
    let Some(abi) = abi_of(kernel) else {
        return match spec.landlock {
            LandlockMode::Require => Err(JailError::Prerequisite(
                "Landlock is required but this kernel does not enforce it: boot a kernel with \
                 CONFIG_SECURITY_LANDLOCK and `landlock` in its lsm= list (Linux 5.13+), or set \
                 jail_landlock = \"best-effort\" in /etc/brig/config.toml"
                    .into(),
            )),
            LandlockMode::BestEffort => Ok("Landlock: not enforced by this kernel (best-effort)".into()),
        };
    };
    let err = |e: landlock::RulesetError| JailError::Prerequisite(format!("Landlock ABI {}: {e}", abi as i32));
    let fs = AccessFs::from_all(abi);
    let mut ruleset =
        Ruleset::default().set_compatibility(CompatLevel::HardRequirement).handle_access(fs).map_err(err)?;
    let net = AccessNet::from_all(abi);
    if !net.is_empty() {
        ruleset = ruleset.handle_access(net).map_err(err)?;
    }
    let scopes = Scope::from_all(abi);
    if !scopes.is_empty() {
        ruleset = ruleset.scope(scopes).map_err(err)?;
    }
    let mut ruleset = ruleset.create().map_err(err)?;
    for (path, access) in rules(spec) {
        // A right newer than the kernel's ABI is not handled, so not granted either.
        let access = access & fs;
        if access.is_empty() {
            continue;
        }
        let fd = PathFd::new(Path::new(&path))
            .map_err(|e| JailError::Prerequisite(format!("Landlock rule for {path}: {e}")))?;
        ruleset = ruleset.add_rule(PathBeneath::new(fd, access)).map_err(err)?;
    }
    let status = ruleset.restrict_self().map_err(err)?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        return Err(JailError::Prerequisite(format!(
            "Landlock ABI {} was not enforced in full ({:?})",
            abi as i32, status.ruleset
        )));
    }
    Ok(if abi >= TARGET_ABI {
        format!("Landlock: ABI {} enforced in full", abi as i32)
    } else {
        format!(
            "Landlock: ABI {} enforced in full (the kernel's; the rights of ABI {}-{} need a newer kernel)",
            abi as i32,
            abi as i32 + 1,
            TARGET_ABI as i32
        )
    })
}

/// The ABI brig asks for on a kernel that reports `version` (`None`: no Landlock).
fn abi_of(version: i32) -> Option<ABI> {
    Some(match version {
        i32::MIN..=0 => return None,
        1 => ABI::V1,
        2 => ABI::V2,
        3 => ABI::V3,
        4 => ABI::V4,
        5 => ABI::V5,
        _ => TARGET_ABI,
    })
}

/// The paths brig-vmm may use and how, in the jail.
fn rules(spec: &JailSpec) -> Vec<(String, BitFlags<AccessFs>)> {
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
    if spec.memory_tmpfs.is_some() {
        // Guest RAM: one unnamed file (O_TMPFILE) in its own tmpfs.
        rules.push((
            JAIL_MEMORY.into(),
            AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::MakeReg | AccessFs::Truncate,
        ));
    }
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
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_version_picks_the_abi_up_to_brigs_target() {
        assert_eq!(abi_of(-1), None, "no Landlock (ENOSYS, EOPNOTSUPP)");
        assert_eq!(abi_of(0), None);
        assert_eq!(abi_of(2), Some(ABI::V2));
        assert_eq!(abi_of(6), Some(ABI::V6));
        assert_eq!(abi_of(7), Some(TARGET_ABI), "a newer kernel gets what brig knows");
    }

    #[test]
    fn every_rule_keeps_only_rights_the_abi_handles() {
        // The ABI 2 ruleset (Linux 6.1) must not name TRUNCATE (3) or IOCTL_DEV (5).
        let fs = AccessFs::from_all(ABI::V2);
        assert!(!fs.contains(AccessFs::Truncate) && !fs.contains(AccessFs::IoctlDev));
        assert!(AccessNet::from_all(ABI::V2).is_empty() && Scope::from_all(ABI::V5).is_empty());
    }
}
