//! `brig-rootfs-builder`: builds the guest kernel and the guest initramfs.
//!
//! ```text
//! brig-rootfs-builder kernel                       # prints the vmlinux path
//! brig-rootfs-builder initramfs AGENT OUT          # writes OUT from the static agent
//! ```

use std::path::Path;

use anyhow::{bail, Result};
use brig_rootfs_builder::{initramfs, kernel};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["kernel"] => {
            let built = kernel::build()?;
            println!("{}", built.vmlinux.display());
        }
        ["initramfs", agent, out] => initramfs::build(Path::new(agent), Path::new(out))?,
        _ => bail!("usage: brig-rootfs-builder kernel | initramfs AGENT OUT"),
    }
    Ok(())
}
