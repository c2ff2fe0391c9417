//! `cargo xtask demo`: brig's main job, from a fresh machine.
//!
//! Installs what is missing (Debian packages, containerd, the kernel source), builds
//! the guest kernel, agent, VMM, shim and a busybox OCI image, and runs the demo inside
//! kvm-host: containerd runs the image under runc and under brig
//! (`ctr run --runtime io.containerd.brig.v2`), and the brig container reports the
//! kernel of its own micro-VM.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{apt, artifacts, cargo, testhost};

pub fn run() -> Result<()> {
    apt::ensure(apt::BASE)?;
    apt::ensure(apt::CONTAINERD)?;
    let env = artifacts::build()?.env()?;
    let demo = cargo::build_executables(&["build", "-p", "brig-tests", "--bin", "brig-demo"], |kind, _| kind == "bin")?
        .into_iter()
        .next()
        .context("cargo built no brig-demo")?;
    let mut host = testhost::Options::new(crate::workspace_root());
    host.timeout = Duration::from_secs(10 * 60);
    host.env = env;
    let code = testhost::run(&[demo.to_string_lossy().into_owned()], &host)?;
    if code != 0 {
        bail!("the demo failed (exit {code})");
    }
    Ok(())
}
