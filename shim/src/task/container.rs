//! The container a task runs: made in its own VM, its processes, and its teardown.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use brig_protocol::agent as agent_api;
use containerd_shim_protos::api;

use super::host::{Host, Rootfs, Vm};
use super::process::{Exit, Process};
use crate::config::Config;
use crate::error::ShimError;
use crate::files;
use crate::guest::Guest;
use crate::io::StdioPaths;
use crate::network::{self, Attachment};
use crate::sandbox::{Size, ROOTFS_SERIAL};
use crate::spec;

/// Where a task keeps its sockets and logs: short enough for Unix socket paths.
pub fn task_dir(config: &Config, namespace: &str, id: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{namespace}/{id}").as_bytes());
    config.state_dir.join(digest.iter().take(8).map(|b| format!("{b:02x}")).collect::<String>())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How the guest finds the rootfs: the VM's read-only ext4 disk, with a writable
/// layer on top.
fn guest_rootfs() -> agent_api::Rootfs {
    agent_api::Rootfs {
        serial: ROOTFS_SERIAL.into(),
        fstype: "ext4".into(),
        read_only: true,
        writable_layer: true,
        ..Default::default()
    }
}

/// What the agent makes of the VM's NIC in the container: CNI's interface.
fn guest_interface(interface: &network::Interface) -> agent_api::Interface {
    let net = |n: &network::IpNet| agent_api::IpNet {
        address: n.addr.to_string(),
        prefix: u32::from(n.prefix),
        ..Default::default()
    };
    agent_api::Interface {
        mac: interface.mac.to_vec(),
        mtu: interface.mtu,
        addresses: interface.addresses.iter().map(net).collect(),
        routes: interface
            .routes
            .iter()
            .map(|r| agent_api::Route {
                destination: r.destination.as_ref().map(net).into(),
                gateway: r.gateway.map(|g| g.to_string()).unwrap_or_default(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// A container and the VM it runs in.
#[derive(Debug)]
pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    dir: PathBuf,
    host: Arc<dyn Host>,
    rootfs: Rootfs,
    vm: Arc<dyn Vm>,
    guest: Arc<dyn Guest>,
    /// The container's own process.
    pub init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    /// The task's network namespace and the interface joined to the VM (the spec's
    /// namespace, or the shim's own for a spec that names none).
    network: Mutex<Option<Attachment>>,
}

/// What a failed `Create` has made so far, undone by [`Undo::run`].
struct Undo {
    host: Arc<dyn Host>,
    dir: PathBuf,
    rootfs: Option<Rootfs>,
    network: Option<Attachment>,
    vm: Option<Arc<dyn Vm>>,
}

impl Undo {
    async fn run(self) {
        if let Some(vm) = self.vm {
            vm.stop().await;
        }
        if let Some(attachment) = &self.network {
            self.host.release_network(attachment).await;
        }
        if let Some(rootfs) = self.rootfs {
            self.host.release_rootfs(&rootfs);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Container {
    /// Makes the container of `req`: its state directory, rootfs image and VM, and
    /// the container in the guest with its stdio attached. Nothing is left behind
    /// when this fails.
    pub async fn create(
        host: Arc<dyn Host>,
        config: &Config,
        namespace: &str,
        req: &api::CreateTaskRequest,
    ) -> Result<Arc<Container>, ShimError> {
        let bundle = PathBuf::from(&req.bundle);
        let spec = spec::guest_spec(&bundle)?;
        let size = spec::vm_size(&spec.spec, config)?;
        let dir = task_dir(config, namespace, &req.id);
        // Before the undo exists: a directory that is refused is not ours to remove.
        files::private_dir(&dir)?;
        let mut undo = Undo { host, dir, rootfs: None, network: None, vm: None };
        match Container::create_in(config, namespace, req, bundle, spec, size, &mut undo).await {
            Ok(container) => Ok(container),
            Err(e) => {
                undo.run().await;
                Err(e)
            }
        }
    }

    async fn create_in(
        config: &Config,
        namespace: &str,
        req: &api::CreateTaskRequest,
        bundle: PathBuf,
        spec: spec::GuestSpec,
        size: Size,
        undo: &mut Undo,
    ) -> Result<Arc<Container>, ShimError> {
        let (host, dir) = (undo.host.clone(), undo.dir.clone());
        let shim = env!("CARGO_PKG_VERSION");
        files::write_private(&dir.join("task"), format!("{namespace}/{}\n{}\nshim {shim}\n", req.id, req.bundle))?;
        let rootfs = host.prepare_rootfs(config, &bundle, &req.rootfs, &dir).await?;
        undo.rootfs = Some(rootfs.clone());
        let (nic, interface, attachment) = host.prepare_network(&spec.network, &dir).await?;
        undo.network = Some(attachment);
        let interface = interface.as_ref().map(guest_interface);
        let vm = host.start_vm(config, &dir, size, &rootfs, Some(nic)).await?;
        undo.vm = Some(vm.clone());
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let guest = vm.guest();
        guest.create_container(&req.id, spec.bytes, guest_rootfs(), paths.agent_stdio(), interface).await?;
        let copies = vm.attach(&req.id, None, &paths).await?;
        let init = Process::new(None, paths, Vec::new());
        init.set_copies(copies).await;
        Ok(Arc::new(Container {
            id: req.id.clone(),
            bundle,
            dir,
            host,
            rootfs,
            vm,
            guest,
            init,
            execs: Mutex::new(HashMap::new()),
            network: Mutex::new(undo.network.clone()),
        }))
    }

    /// The task's pid for containerd: brig-vmm's.
    pub fn pid(&self) -> u32 {
        self.vm.pid()
    }

    pub fn vm(&self) -> &Arc<dyn Vm> {
        &self.vm
    }

    pub fn guest(&self) -> &dyn Guest {
        self.guest.as_ref()
    }

    pub fn process(&self, exec_id: Option<&str>) -> Result<Arc<Process>, ShimError> {
        match exec_id {
            None => Ok(self.init.clone()),
            Some(exec_id) => {
                lock(&self.execs).get(exec_id).cloned().ok_or_else(|| ShimError::NotFound(format!("process {exec_id}")))
            }
        }
    }

    /// Every process: the execs, then the container's own.
    pub fn processes(&self) -> Vec<Arc<Process>> {
        let mut all: Vec<Arc<Process>> = lock(&self.execs).values().cloned().collect();
        all.push(self.init.clone());
        all
    }

    /// Registers an exec (started later by `Start`).
    pub fn add_exec(&self, exec_id: &str, paths: StdioPaths, spec: Vec<u8>) -> Result<(), ShimError> {
        if self.init.exit().is_some() {
            return Err(ShimError::FailedPrecondition(format!("task {} has exited", self.id)));
        }
        let mut execs = lock(&self.execs);
        if execs.contains_key(exec_id) {
            return Err(ShimError::AlreadyExists(format!("process {exec_id}")));
        }
        execs.insert(exec_id.to_owned(), Process::new(Some(exec_id.to_owned()), paths, spec));
        Ok(())
    }

    /// Starts `proc` in the guest; an exec gets its stdio attached. A process the
    /// guest refused to start can be started again.
    pub async fn start(&self, proc: &Process) -> Result<(), ShimError> {
        proc.begin_start()?;
        let interface = match proc.exec_id {
            None => self.connect_network().await,
            Some(_) => Ok(None),
        };
        let interface = match interface {
            Ok(interface) => interface,
            Err(e) => {
                proc.start_failed();
                return Err(e);
            }
        };
        let started = match proc.exec_id.as_deref() {
            None => self.guest.start_container(&self.id, interface).await,
            Some(exec_id) => {
                let stdio = proc.paths.agent_stdio();
                self.guest.exec_process(&self.id, exec_id, proc.spec.clone(), stdio).await
            }
        };
        if let Err(e) = started {
            proc.start_failed();
            return Err(e.into());
        }
        proc.started();
        if let Some(exec_id) = proc.exec_id.as_deref() {
            let copies = self.vm.attach(&self.id, Some(exec_id), &proc.paths).await?;
            proc.set_copies(copies).await;
        }
        Ok(())
    }

    /// At start, joins the interface CNI put in the task's own namespace since create
    /// (`ctr run --cni`), if it has one: what the guest NIC is to be in the container.
    async fn connect_network(&self) -> Result<Option<agent_api::Interface>, ShimError> {
        let attachment = lock(&self.network).clone();
        let Some(mut attachment) = attachment.filter(|a| a.owned && a.interface.is_empty()) else { return Ok(None) };
        let connected = self.host.connect_network(&mut attachment, &self.dir).await;
        *lock(&self.network) = Some(attachment);
        Ok(connected?.as_ref().map(guest_interface))
    }

    pub async fn kill(&self, exec_id: Option<&str>, signal: u32, all: bool) -> Result<(), ShimError> {
        let proc = self.process(exec_id)?;
        if proc.exit().is_some() {
            return Err(ShimError::NotFound(format!("process {} (already finished)", proc.name())));
        }
        self.guest.signal_process(&self.id, exec_id, signal, all).await?;
        Ok(())
    }

    /// Forgets an exec that is not running; its exit (a never-started one "exited" 0 now).
    pub fn delete_exec(&self, exec_id: &str) -> Result<Exit, ShimError> {
        let proc = self.process(Some(exec_id))?;
        if proc.is_running() {
            return Err(ShimError::FailedPrecondition(format!("process {exec_id} is still running")));
        }
        lock(&self.execs).remove(exec_id);
        Ok(proc.exit().unwrap_or_else(|| Exit::now(0)))
    }

    /// Tears the container down once its process is not running: the container in
    /// the guest, the VM, the rootfs, the state directory. Returns its exit.
    pub async fn destroy(&self) -> Result<Exit, ShimError> {
        if self.init.is_running() {
            return Err(ShimError::FailedPrecondition(format!("task {} is still running: kill it first", self.id)));
        }
        if self.vm.exit_code().is_none() {
            if let Err(e) = self.guest.remove_container(&self.id).await {
                log::warn!("agent could not remove {}: {e}", self.id);
            }
        }
        self.vm.stop().await;
        let attachment = lock(&self.network).take();
        if let Some(attachment) = &attachment {
            self.host.release_network(attachment).await;
        }
        self.host.release_rootfs(&self.rootfs);
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(self.init.exit().unwrap_or_else(|| Exit::now(0)))
    }

    pub async fn pause(&self) -> Result<(), ShimError> {
        self.guest.pause_container(&self.id).await?;
        self.init.paused();
        Ok(())
    }

    pub async fn resume(&self) -> Result<(), ShimError> {
        self.guest.resume_container(&self.id).await?;
        self.init.resumed();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_dirs_are_short_and_distinct() {
        let config = Config::default();
        let long_id = "a".repeat(64);
        let dir = task_dir(&config, "k8s.io", &long_id);
        assert!(dir.join("vsock.sock_1025").as_os_str().len() < 96, "{}", dir.display());
        assert_ne!(task_dir(&config, "default", "x"), task_dir(&config, "other", "x"));
    }
}
