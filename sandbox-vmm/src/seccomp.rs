//! When brig-vmm's threads confine themselves. The filters, and the SIGSYS report for
//! a call they deny, are `brig_policy::seccomp`'s (docs/seccomp.md); brig-vmm decides
//! the moments: a vCPU thread first thing, before its first `KVM_RUN` (`vcpu`); the
//! main thread once every vCPU thread runs, right before the event loop (`vmm`).

pub use brig_policy::seccomp::{SeccompError, ThreadKind};
pub use brig_policy::sys::install_sigsys_handler;

/// Whether threads install their filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seccomp {
    /// Every thread installs its filter (the default).
    Enforce,
    /// No filters: `--no-seccomp`, for development only.
    Off,
}

impl Seccomp {
    /// Confines the calling thread with `kind`'s filter, for good (nothing when `Off`).
    pub fn confine(self, kind: ThreadKind) -> Result<(), SeccompError> {
        match self {
            Seccomp::Enforce => brig_policy::seccomp::install(kind)?,
            Seccomp::Off => {}
        }
        // The jail's simulated escapes start here, where a real one would.
        #[cfg(feature = "escape-test")]
        crate::escape::at(kind.name());
        Ok(())
    }
}
