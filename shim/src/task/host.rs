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
use crate::network::{self, Attachment, Interface};
use crate::sandbox::{Nic, Sandbox, Size};
use crate::spec::NetworkNamespace;
use brig_vmm_api::config::{MAX_MTU, MIN_MTU};

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
    /// Gives the task in `dir` its network (crate::network): the namespace the spec
    /// names, joined to a tap now, with what the guest NIC is to be; or, for a spec
    /// that names none, a namespace of the shim's own with a tap and no interface yet.
    /// Recorded in `dir` before anything is made; on failure nothing is left.
    async fn prepare_network(
        &self,
        network: &NetworkNamespace,
        dir: &Path,
    ) -> Result<(Nic, Option<Interface>, Attachment), ShimError>;
    /// At start, joins the interface CNI put in the shim's own namespace since
    /// create (`ctr run --cni`), if there is one, and records it in `attachment`.
    async fn connect_network(&self, attachment: &mut Attachment, dir: &Path) -> Result<Option<Interface>, ShimError>;
    /// Undoes [`Host::prepare_network`] and [`Host::connect_network`].
    async fn release_network(&self, attachment: &Attachment);
}

/// The guest NIC for a joined namespace: CNI's interface's address and MTU.
fn nic(joined: network::Joined, netns: PathBuf) -> Result<Nic, ShimError> {
    let interface = &joined.interface;
    let mtu = u16::try_from(interface.mtu).ok().filter(|mtu| (MIN_MTU..=MAX_MTU).contains(mtu)).ok_or_else(|| {
        ShimError::FailedPrecondition(format!(
            "interface {} has MTU {}; a brig VM's NIC takes {MIN_MTU}-{MAX_MTU}",
            interface.name, interface.mtu
        ))
    })?;
    Ok(Nic { mac: interface.mac, mtu, tap: joined.tap, netns })
}

/// The MTU the NIC of a VM in its own namespace boots with: the most an interface
/// CNI adds later may have (the guest's virtio-net takes the device's MTU as its
/// maximum), and Ethernet's, which CNI's bridge and ptp plugins give.
const OWN_NETNS_MTU: u16 = 1500;

/// A locally administered unicast address for the NIC of a VM in its own namespace,
/// from the task's directory name (a hash of namespace and id). The agent gives the
/// NIC CNI's address when an interface is joined; until then no frame leaves the tap.
fn own_netns_mac(dir: &Path) -> [u8; 6] {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut mac = [0x02, 0, 0, 0, 0, 0];
    for (i, byte) in mac.iter_mut().enumerate().skip(1) {
        *byte = name.get(2 * i..2 * i + 2).and_then(|hex| u8::from_str_radix(hex, 16).ok()).unwrap_or(0);
    }
    mac
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

    async fn prepare_network(
        &self,
        namespace: &NetworkNamespace,
        dir: &Path,
    ) -> Result<(Nic, Option<Interface>, Attachment), ShimError> {
        match namespace {
            NetworkNamespace::New => {
                let (tap, attachment) = network::own_task(dir).await?;
                let netns = attachment.netns.clone();
                Ok((Nic { tap, mac: own_netns_mac(dir), mtu: OWN_NETNS_MTU, netns }, None, attachment))
            }
            NetworkNamespace::Host(netns) => {
                let (joined, attachment) = network::join_task(netns.clone(), dir).await?;
                let interface = joined.interface.clone();
                match nic(joined, netns.clone()) {
                    Ok(nic) => Ok((nic, Some(interface), attachment)),
                    Err(e) => {
                        network::leave_task(&attachment).await;
                        Err(e)
                    }
                }
            }
        }
    }

    async fn connect_network(&self, attachment: &mut Attachment, dir: &Path) -> Result<Option<Interface>, ShimError> {
        network::connect_task(attachment, dir, u32::from(OWN_NETNS_MTU)).await
    }

    async fn release_network(&self, attachment: &Attachment) {
        network::leave_task(attachment).await;
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
