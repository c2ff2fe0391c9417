//! The guest artifacts every integration test and the demo need, built (or found in
//! the cache) and handed to tests as environment variables.

use anyhow::Result;
use brig_rootfs_builder::kernel;

/// Builds what is missing and returns `(variable, path)` pairs for the tests.
pub fn build() -> Result<Vec<(String, String)>> {
    let kernel = kernel::build()?;
    eprintln!("guest kernel {}: {}", kernel.release, kernel.vmlinux.display());
    Ok(vec![("BRIG_GUEST_KERNEL".into(), kernel.vmlinux.to_string_lossy().into_owned())])
}
