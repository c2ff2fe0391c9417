//! containerd-shim-brig-v2: containerd's runtime v2 shim for brig.
//!
//! One shim process per task; it starts one brig-vmm micro-VM, turns the task's
//! rootfs into a block image for it, and drives the guest agent (brig-protocol)
//! to run the container. See docs/shim.md.
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod files;
pub mod guest;
pub mod image;
pub mod io;
pub mod jail;
pub mod network;
pub mod record;
pub mod sandbox;
pub mod service;
pub mod spec;
pub mod task;
pub mod timeline;
