//! brig's second wall behind KVM: the jail every brig-vmm runs in, and the
//! per-thread seccomp filters brig-vmm installs in itself.
//!
//! - [`jail`]: what a jail is made of ([`jail::JailSpec`]) and how `brig-jailer`
//!   builds it, in Firecracker's jailer order (docs/jail.md).
//! - [`seccomp`]: one filter per brig-vmm thread kind (docs/seccomp.md).
//! - [`sys`]: the only module with `unsafe`.

pub mod jail;
pub mod seccomp;
pub mod sys;
