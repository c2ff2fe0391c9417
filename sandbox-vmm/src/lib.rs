//! brig-vmm: one KVM micro-VM per process, built on rust-vmm crates.
//!
//! Layout (see docs/design.md):
//! - [`config`]: the validated configuration, one file per resource (it is part of
//!   brig-vmm's contract, so it lives in `brig-vmm-api` and is re-exported here);
//! - [`kvm`], [`vm`], [`vcpu`]: the only modules that call KVM ioctls;
//! - [`memory`]: memfd-backed guest RAM;
//! - [`arch`]: the guest physical layout and boot structures (x86_64);
//! - [`devices`]: buses, legacy devices, virtio-mmio devices;
//! - [`event_loop`], [`vmm`]: the running VM; [`api`]: its control socket;
//! - [`snapshot`]: versioned, checksummed state files;
//! - [`logging`], [`metrics`]: a bounded log, rate-limited lines for what a guest triggers;
//! - [`seccomp`]: when each thread installs its seccomp filter (the filters are
//!   `brig_policy::seccomp`'s, docs/seccomp.md);
//! - [`builder`]: the one construction path.

pub mod api;
pub mod arch;
pub mod builder;
pub mod coredump;
pub use brig_vmm_api::config;
pub mod devices;
#[cfg(feature = "escape-test")]
pub mod escape;
pub mod event_loop;
pub mod events;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod kvm;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod seccomp;
pub mod signals;
pub mod snapshot;
pub mod vcpu;
pub mod vm;
pub mod vmm;
