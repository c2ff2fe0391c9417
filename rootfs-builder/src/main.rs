//! `brig-rootfs-builder`: builds the guest kernel and the guest initramfs.
//!
//! ```text
//! brig-rootfs-builder kernel                       # prints the vmlinux path
//! brig-rootfs-builder initramfs AGENT OUT          # writes OUT from the static agent
//! brig-rootfs-builder busybox-rootfs DIR [HOST=PATH...]   # a busybox root file system
//! brig-rootfs-builder ext4 DIR IMAGE MIB           # an ext4 image of DIR
//! brig-rootfs-builder oci-layout DIR OUT REF       # an OCI image-layout tarball of DIR
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use brig_rootfs_builder::{image, initramfs, kernel};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["kernel"] => {
            let built = kernel::build()?;
            println!("{}", built.vmlinux.display());
        }
        ["initramfs", agent, out] => initramfs::build(Path::new(agent), Path::new(out))?,
        ["busybox-rootfs", dir, extra @ ..] => {
            let extra = extra
                .iter()
                .map(|e| {
                    let (host, inside) = e.split_once('=').context("extra files are HOST=PATH-IN-ROOTFS")?;
                    Ok((PathBuf::from(host), inside))
                })
                .collect::<Result<Vec<_>>>()?;
            image::busybox_rootfs(Path::new(dir), &extra)?;
        }
        ["ext4", dir, out, mib] => {
            let mib = mib.parse().context("the image size is a number of MiB")?;
            image::ext4_image(Path::new(dir), Path::new(out), mib)?;
        }
        ["oci-layout", dir, out, reference] => image::oci_image_layout(Path::new(dir), Path::new(out), reference)?,
        _ => bail!(
            "usage: brig-rootfs-builder kernel | initramfs AGENT OUT | busybox-rootfs DIR [HOST=PATH...] \
             | ext4 DIR IMAGE MIB | oci-layout DIR OUT REF"
        ),
    }
    Ok(())
}
