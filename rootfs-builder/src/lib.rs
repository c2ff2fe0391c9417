//! brig's build-time artifacts for the guest side of the VM boundary, and the images
//! tests run in it.
//!
//! - [`kernel`]: the guest `vmlinux`, built from Debian's `linux-source-6.1` with the
//!   configuration fragment checked in at `rootfs-builder/kernel/guest.config`;
//! - [`initramfs`]: a reproducible `newc` cpio holding the static `brig-agent` as `/init`;
//! - [`cache`]: where both are kept between runs, outside the work tree;
//! - [`progress`]: the progress lines long steps print;
//! - [`image`]: container images for tests and demos: a busybox root file system, an
//!   ext4 image of a directory, an OCI image-layout tarball.
//!
//! This crate runs on the developer's machine or in CI, never in production paths,
//! so it uses `anyhow` for errors.
#![forbid(unsafe_code)]

pub mod cache;
pub mod image;
pub mod initramfs;
pub mod kernel;
pub mod progress;
