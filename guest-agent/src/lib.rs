//! brig-agent: the guest side of brig's VM boundary.
//!
//! It runs as PID 1 of the guest: mounts the kernel filesystems, reaps every
//! orphan, and serves the agent API (`brig-protocol`) over vsock to the shim.
//! Everything a request carries is treated as untrusted input.

pub mod container;
pub mod guest_info;
pub mod init;
pub mod reaper;
pub mod runtime;
pub mod service;

/// The agent's version, reported by `Ping`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
