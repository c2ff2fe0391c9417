//! Opening `/dev/kvm` and deciding, before creating anything, whether it can run a
//! Linux guest.
//!
//! Some hosts expose a `/dev/kvm` that is not backed by hardware virtualization:
//! a paravirtual KVM (`kvm_pvm`) inside a cloud VM runs ring-3 guest code natively
//! but emulates ring-0 instruction by instruction and lacks instructions Linux
//! needs at boot, so a Linux guest hangs or crawls there. brig-vmm refuses such a
//! host with a message instead of hanging.

use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

const KVM_PATH: &str = "/dev/kvm";
const KVM_API_VERSION: i32 = 12;

/// Capabilities brig-vmm relies on.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    (Cap::TscDeadlineTimer, "KVM_CAP_TSC_DEADLINE_TIMER"),
];

#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error(
        "{KVM_PATH} does not exist: load kvm-intel or kvm-amd, or run brig where hardware \
         virtualization is available (for development: cargo xtask kvm-host)"
    )]
    NoDevice,
    #[error("cannot open {KVM_PATH}: permission denied; run as root or join the group that owns it")]
    Permission,
    #[error("cannot open {KVM_PATH}")]
    Open(#[source] kvm_ioctls::Error),
    #[error("{KVM_PATH} speaks KVM API version {0}, brig-vmm needs {KVM_API_VERSION}")]
    ApiVersion(i32),
    #[error("this host's KVM lacks {0}, which brig-vmm needs")]
    MissingCap(&'static str),
    #[error("this host's KVM cannot run Linux guests: {0}")]
    CannotRunLinux(String),
}

/// Why `/dev/kvm` on this host cannot boot Linux, if it cannot. `cpuinfo` is the text
/// of `/proc/cpuinfo`; `pvm_loaded` says whether the `kvm_pvm` module is loaded.
pub fn linux_support(cpuinfo: &str, pvm_loaded: bool) -> Result<(), String> {
    if pvm_loaded {
        return Err("it is the paravirtual kvm_pvm, which emulates guest kernel code instruction by \
                    instruction and cannot boot Linux; use a host with VT-x/AMD-V or nested \
                    virtualization (for development: cargo xtask kvm-host)"
            .into());
    }
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !hw {
        return Err("the CPU shows neither vmx nor svm, so /dev/kvm has no hardware virtualization \
                    behind it; use a host with VT-x/AMD-V or nested virtualization"
            .into());
    }
    Ok(())
}

/// Opens `/dev/kvm` and checks it can run brig's Linux guests.
pub fn open() -> Result<Kvm, KvmError> {
    if !Path::new(KVM_PATH).exists() {
        return Err(KvmError::NoDevice);
    }
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::EACCES | libc::EPERM => KvmError::Permission,
        libc::ENOENT | libc::ENODEV | libc::ENXIO => KvmError::NoDevice,
        _ => KvmError::Open(e),
    })?;
    let version = kvm.get_api_version();
    if version != KVM_API_VERSION {
        return Err(KvmError::ApiVersion(version));
    }
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(*cap) {
            return Err(KvmError::MissingCap(name));
        }
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    linux_support(&cpuinfo, pvm).map_err(KvmError::CannotRunLinux)?;
    Ok(kvm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_is_refused_even_with_flags() {
        let err = linux_support("flags\t: fpu svm lm\n", true).expect_err("pvm");
        assert!(err.contains("kvm_pvm"), "{err}");
    }

    #[test]
    fn no_virtualization_flags_is_refused() {
        let err = linux_support("flags\t: fpu vme lm hypervisor\n", false).expect_err("no vmx/svm");
        assert!(err.contains("neither vmx nor svm"), "{err}");
    }

    #[test]
    fn vmx_or_svm_is_accepted() {
        linux_support("processor: 0\nflags\t: fpu vmx lm\n", false).expect("vmx");
        linux_support("flags\t: fpu svm lm\n", false).expect("svm");
    }
}
