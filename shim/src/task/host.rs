//! What the task service needs of the host besides the guest: the rootfs image
//! and the VM (brig-vmm). The real ones are [`BrigHost`] and [`Sandbox`]; the
//! lifecycle tests put fakes here, so no VM boots in them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim_protos::api::Mount;

use crate::config::Config;
use crate::error::ShimError;
use crate::guest::Guest;
use crate::image::{self, RootfsImage};
use crate::io::{self, Copies, StdioPaths};
use crate::sandbox::{Nic, Sandbox, Size};

/// A task's rootfs, ready for its VM.
#[derive(Debug, Clone)]
pub struct Rootfs {
    pub image: RootfsImage,
    /// The bundle whose `rootfs/` the shim mounted (`None`: containerd gave no mounts).
    pub mounted_on: Option<PathBuf>,
}

/// Making and unmaking what a task runs on.
#[async_trait]
pub trait Host: Send + Sync + std::fmt::Debug {
    /// Mounts containerd's rootfs `mounts` on the bundle and turns the result into
    /// a block image (cached, or private to the task in `dir`). On failure nothing
    /// is left mounted.
    async fn prepare_rootfs(
        &self,
        config: &Config,
        bundle: &Path,
        mounts: &[Mount],
        dir: &Path,
    ) -> Result<Rootfs, ShimError>;
    /// Undoes [`Host::prepare_rootfs`].
    fn release_rootfs(&self, rootfs: &Rootfs);
    /// Starts the VM in `dir`, booting with `rootfs` (and `nic`, a joined network
    /// namespace's tap), and waits for its agent.
    async fn start_vm(
        &self,
        config: &Config,
        dir: &Path,
        size: Size,
        rootfs: &Rootfs,
        nic: Option<Nic>,
    ) -> Result<Arc<dyn Vm>, ShimError>;
}

/// A task's running VM.
#[async_trait]
pub trait Vm: Send + Sync + std::fmt::Debug {
    /// brig-vmm's pid: the task's pid for containerd.
    fn pid(&self) -> u32;
    /// The agent in the VM.
    fn guest(&self) -> Arc<dyn Guest>;
    /// brig-vmm's exit code, once it has exited.
    fn exit_code(&self) -> Option<i32>;
    /// Waits until brig-vmm exits.
    async fn wait_exit(&self) -> i32;
    /// Whether [`Vm::stop`] has begun (an exit after that is expected).
    fn is_stopping(&self) -> bool;
    /// Powers the guest off, then makes sure brig-vmm is gone.
    async fn stop(&self);
    /// Joins containerd's stdio `paths` to a guest process (`exec_id` `None`: the
    /// container's own) and starts copying.
    async fn attach(&self, container_id: &str, exec_id: Option<&str>, paths: &StdioPaths) -> Result<Copies, ShimError>;
}

/// The real host: mounts, `mkfs.ext4` (crate::image) and brig-vmm.
#[derive(Debug, Default)]
pub struct BrigHost;

#[async_trait]
impl Host for BrigHost {
    async fn prepare_rootfs(
        &self,
        config: &Config,
        bundle: &Path,
        mounts: &[Mount],
        dir: &Path,
    ) -> Result<Rootfs, ShimError> {
        let source = image::mount_rootfs(bundle, mounts).await?;
        let mounted_on = (!mounts.is_empty()).then(|| bundle.to_path_buf());
        let key = image::cache_key(mounts);
        let (image_dir, private) = (config.image_dir.clone(), dir.to_path_buf());
        let built = tokio::task::spawn_blocking(move || image::prepare(&source, key.as_ref(), &image_dir, &private))
            .await
            .map_err(|e| ShimError::Internal(format!("image task: {e}")));
        match built {
            Ok(Ok(image)) => {
                crate::timeline::mark(crate::timeline::Step::RootfsImage);
                Ok(Rootfs { image, mounted_on })
            }
            Ok(Err(e)) | Err(e) => {
                if let Some(bundle) = &mounted_on {
                    image::unmount_rootfs(bundle);
                }
                Err(e)
            }
        }
    }

    fn release_rootfs(&self, rootfs: &Rootfs) {
        image::release(&rootfs.image);
        if let Some(bundle) = &rootfs.mounted_on {
            image::unmount_rootfs(bundle);
        }
    }

    async fn start_vm(
        &self,
        config: &Config,
        dir: &Path,
        size: Size,
        rootfs: &Rootfs,
        nic: Option<Nic>,
    ) -> Result<Arc<dyn Vm>, ShimError> {
        let sandbox: Arc<dyn Vm> = Sandbox::start(config, dir, size, &rootfs.image.path, nic).await?;
        Ok(sandbox)
    }
}

#[async_trait]
impl Vm for Sandbox {
    fn pid(&self) -> u32 {
        self.vmm_pid
    }

    fn guest(&self) -> Arc<dyn Guest> {
        Sandbox::guest(self)
    }

    fn exit_code(&self) -> Option<i32> {
        Sandbox::exit_code(self)
    }

    async fn wait_exit(&self) -> i32 {
        Sandbox::wait_exit(self).await
    }

    fn is_stopping(&self) -> bool {
        Sandbox::is_stopping(self)
    }

    async fn stop(&self) {
        Sandbox::stop(self).await;
    }

    async fn attach(&self, container_id: &str, exec_id: Option<&str>, paths: &StdioPaths) -> Result<Copies, ShimError> {
        io::attach(self, container_id, exec_id, paths).await
    }
}
