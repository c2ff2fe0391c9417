//! The shim binary's lifecycle with containerd: `start` (spawn the long-running
//! shim server and print its address), `delete` (clean up after a shim that
//! died), and the server itself.

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::{Config as ShimConfig, Error, Flags, StartOpts};
use containerd_shim_protos::api::DeleteResponse;

use crate::config::Config;
use crate::task::{task_dir, TaskService, KILLED_STATUS};
use crate::{image, sandbox};

/// containerd-shim's options for this shim. No reaper: the shim's children
/// (brig-vmm, mkfs.ext4) are waited for by whoever started them, and a blanket
/// `waitpid(-1)` on SIGCHLD would take their exit first (`No child processes`).
/// This must be passed to `run`: it installs its SIGCHLD handler from these options
/// before `Shim::new` gets to change them.
pub fn shim_config() -> ShimConfig {
    ShimConfig { no_reaper: true, ..ShimConfig::default() }
}

#[derive(Clone)]
pub struct Service {
    exit: Arc<ExitSignal>,
    id: String,
    namespace: String,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("id", &self.id).field("namespace", &self.namespace).finish()
    }
}

#[async_trait]
impl Shim for Service {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut ShimConfig) -> Self {
        Service { exit: Arc::new(ExitSignal::default()), id: args.id.clone(), namespace: args.namespace.clone() }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        // One shim (and one VM) per task.
        let grouping = opts.id.clone();
        spawn(opts, &grouping, Vec::new()).await
    }

    /// containerd's `shim delete`, run after the shim server died: kill its VM, unmount
    /// the rootfs, remove the task's state.
    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        let config = Config::load().unwrap_or_default();
        let dir = task_dir(&config, &self.namespace, &self.id);
        if let Some(pid) = sandbox::kill_recorded(&dir) {
            log::warn!("killed brig-vmm {pid} left behind by the shim of {}", self.id);
        }
        crate::jail::release_recorded(&config, &dir);
        crate::network::leave_recorded(&dir).await;
        if let Ok(bundle) = std::env::current_dir() {
            image::unmount_rootfs(&bundle);
        }
        let _ = std::fs::remove_dir_all(&dir);
        // Its VM is killed: so is the task.
        let exited_at = containerd_shim::util::timestamp().ok();
        Ok(DeleteResponse { exit_status: KILLED_STATUS, exited_at: exited_at.into(), ..Default::default() })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let config = Config::load().map_err(|e| e.to_string());
        TaskService::new(config, &self.namespace, publisher, self.exit.clone())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn containerd_shim_reaps_none_of_the_shims_children() {
        assert!(super::shim_config().no_reaper, "run() would install a waitpid(-1) SIGCHLD handler");
    }
}
