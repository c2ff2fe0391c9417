//! `cargo xtask demo`: brig's main job, from a fresh machine.
//!
//! Installs what is missing, builds the guest kernel, agent and VMM, and runs the
//! demo inside kvm-host: a micro-VM booted by brig-vmm whose agent reports the
//! guest kernel next to the host's.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{apt, artifacts, cargo, testhost};

pub fn run() -> Result<()> {
    apt::ensure(apt::BASE)?;
    let env = artifacts::build()?.env();
    let demo =
        cargo::build_executables(&["build", "-p", "brig-tests", "--bin", "brig-demo-vm"], |kind, _| kind == "bin")?
            .into_iter()
            .next()
            .context("cargo built no brig-demo-vm")?;
    let mut host = testhost::Options::new(crate::workspace_root());
    host.timeout = Duration::from_secs(10 * 60);
    host.env = env;
    let code = testhost::run(&[demo.to_string_lossy().into_owned()], &host)?;
    if code != 0 {
        bail!("the demo failed (exit {code})");
    }
    Ok(())
}
