//! The task lifecycle against a fake guest, a fake VM and a recording publisher:
//! what containerd sees (answers, codes, events in order) for each step.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use brig_protocol::agent as agent_api;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::shim_async::Task as TaskApi;
use containerd_shim::protos::ttrpc::{self, r#async::TtrpcContext, Code};
use containerd_shim_protos::api::{self, Mount, Status};
use tokio::sync::{mpsc, watch};

use super::events::{Publisher, TaskEvent};
use super::host::{Host, Rootfs, Vm};
use super::monitor::Timing;
use super::TaskService;
use crate::config::Config;
use crate::error::ShimError;
use crate::guest::{Guest, GuestError, ProcessExit};
use crate::image::RootfsImage;
use crate::io::{Copies, StdioPaths};
use crate::network::{Attachment, Interface};
use crate::sandbox::{Nic, Size};
use crate::spec::NetworkNamespace;

const VMM_PID: u32 = 4242;
/// Longer than any step of the lifecycle may take against fakes.
const BOUND: Duration = Duration::from_secs(5);
/// Long enough to believe that something is not going to happen.
const A_WHILE: Duration = Duration::from_millis(200);

/// What a hostile guest can do to the task service (tests/hostile.rs).
mod hostile;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("a test thread panicked")
}

/// Records every call; answers as a healthy agent would, except for the calls
/// told to fail or hang. A signal 9 or 15 "kills" the process: its `Wait` answers.
#[derive(Debug)]
struct FakeGuest {
    calls: Mutex<Vec<String>>,
    /// One failure per call name, used up by that call.
    fail: Mutex<HashMap<&'static str, GuestError>>,
    /// `Wait` never answers (a hung agent, or a process that ignores signals).
    hang_wait: AtomicBool,
    exits: watch::Sender<HashMap<Option<String>, ProcessExit>>,
    oom_tx: mpsc::UnboundedSender<String>,
    oom_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
    /// `Some(id)`: every OOM poll answers at once with an OOM kill in `id`.
    oom_flood: Mutex<Option<String>>,
    oom_polls: AtomicUsize,
    /// `Some`: `StartContainer` answers once the sender is used or dropped.
    start_gate: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
}

impl FakeGuest {
    fn new() -> Arc<FakeGuest> {
        let (oom_tx, oom_rx) = mpsc::unbounded_channel();
        Arc::new(FakeGuest {
            calls: Mutex::new(Vec::new()),
            fail: Mutex::new(HashMap::new()),
            hang_wait: AtomicBool::new(false),
            exits: watch::channel(HashMap::new()).0,
            oom_tx,
            oom_rx: tokio::sync::Mutex::new(oom_rx),
            oom_flood: Mutex::new(None),
            oom_polls: AtomicUsize::new(0),
            start_gate: Mutex::new(None),
        })
    }

    fn fail(&self, call: &'static str, error: GuestError) {
        lock(&self.fail).insert(call, error);
    }

    fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    fn called(&self, call: &'static str, detail: String) -> Result<(), GuestError> {
        lock(&self.calls).push(format!("{call} {detail}").trim_end().to_owned());
        lock(&self.fail).remove(call).map_or(Ok(()), Err)
    }
}

/// The exits published, in order: (process id, status).
fn exits(events: &Recorder) -> Vec<(String, u32)> {
    lock(&events.events)
        .iter()
        .filter_map(|e| match e {
            TaskEvent::Exit(exit) => Some((exit.id.clone(), exit.exit_status)),
            _ => None,
        })
        .collect()
}

fn refused(code: Code, message: &str) -> GuestError {
    GuestError::Refused { code: code as i32, message: message.into() }
}

#[async_trait]
impl Guest for FakeGuest {
    async fn create_container(
        &self,
        id: &str,
        oci_spec: Vec<u8>,
        rootfs: agent_api::Rootfs,
        stdio: agent_api::Stdio,
        _interface: Option<agent_api::Interface>,
    ) -> Result<(), GuestError> {
        let spec: serde_json::Value = serde_json::from_slice(&oci_spec).expect("the guest gets JSON");
        let detail = format!(
            "{id} args={} cgroupsPath={} rootfs={}:{}:ro={} stdout={}",
            spec["process"]["args"],
            spec["linux"]["cgroupsPath"],
            rootfs.serial,
            rootfs.fstype,
            rootfs.read_only,
            stdio.stdout
        );
        self.called("create", detail)
    }

    async fn start_container(&self, id: &str, interface: Option<agent_api::Interface>) -> Result<(), GuestError> {
        let gate = lock(&self.start_gate).take();
        let nic = interface.map(|i| format!(" nic mtu={}", i.mtu)).unwrap_or_default();
        let called = self.called("start", format!("{id}{nic}"));
        if let Some(gate) = gate {
            let _ = gate.await;
        }
        called
    }

    async fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        process: Vec<u8>,
        _stdio: agent_api::Stdio,
    ) -> Result<(), GuestError> {
        self.called("exec", format!("{id} {exec_id} {}", String::from_utf8_lossy(&process)))
    }

    async fn signal_process(&self, id: &str, exec_id: Option<&str>, signal: u32, all: bool) -> Result<(), GuestError> {
        self.called("signal", format!("{id} {exec_id:?} {signal} all={all}"))?;
        if signal == 9 || signal == 15 {
            let exit = ProcessExit { status: 128 + signal, at_unix_ns: 1_700_000_000_000_000_000 };
            self.exits.send_modify(|exits| {
                exits.insert(exec_id.map(str::to_owned), exit);
            });
        }
        Ok(())
    }

    async fn wait_process(&self, id: &str, exec_id: Option<&str>) -> Result<ProcessExit, GuestError> {
        self.called("wait", format!("{id} {exec_id:?}"))?;
        if self.hang_wait.load(Ordering::SeqCst) {
            return std::future::pending().await;
        }
        let key = exec_id.map(str::to_owned);
        let mut exits = self.exits.subscribe();
        loop {
            if let Some(exit) = exits.borrow_and_update().get(&key) {
                return Ok(*exit);
            }
            exits.changed().await.expect("the sender lives in the fake");
        }
    }

    async fn pause_container(&self, id: &str) -> Result<(), GuestError> {
        self.called("pause", id.to_owned())
    }

    async fn resume_container(&self, id: &str) -> Result<(), GuestError> {
        self.called("resume", id.to_owned())
    }

    async fn update_container(&self, id: &str, resources: Vec<u8>) -> Result<(), GuestError> {
        self.called("update", format!("{id} {}", String::from_utf8_lossy(&resources)))
    }

    async fn remove_container(&self, id: &str) -> Result<(), GuestError> {
        self.called("remove", id.to_owned())
    }

    async fn list_processes(&self, id: &str) -> Result<Vec<u32>, GuestError> {
        self.called("pids", id.to_owned())?;
        Ok(vec![1, 7])
    }

    async fn stats_container(&self, id: &str) -> Result<agent_api::StatsContainerResponse, GuestError> {
        self.called("stats", id.to_owned())?;
        let pids = agent_api::PidsStats { current: 2, limit: 64, ..Default::default() };
        Ok(agent_api::StatsContainerResponse { pids: Some(pids).into(), ..Default::default() })
    }

    async fn resize_pty(&self, id: &str, exec_id: Option<&str>, width: u32, height: u32) -> Result<(), GuestError> {
        self.called("resize", format!("{id} {exec_id:?} {width}x{height}"))
    }

    async fn close_stdin(&self, id: &str, exec_id: Option<&str>) -> Result<(), GuestError> {
        self.called("close-stdin", format!("{id} {exec_id:?}"))
    }

    async fn oom_event(&self) -> Result<Option<String>, GuestError> {
        // Counted, not recorded: the OOM watcher polls all the time.
        self.oom_polls.fetch_add(1, Ordering::SeqCst);
        let flood = lock(&self.oom_flood).clone();
        if let Some(id) = flood {
            // An answer over a socket would yield too.
            tokio::task::yield_now().await;
            return Ok(Some(id));
        }
        match self.oom_rx.lock().await.recv().await {
            Some(id) => Ok(Some(id)),
            None => std::future::pending().await,
        }
    }

    async fn shutdown(&self) -> Result<(), GuestError> {
        self.called("shutdown", String::new())
    }
}

/// A VM that is up until stopped (or told to die).
#[derive(Debug)]
struct FakeVm {
    guest: Arc<FakeGuest>,
    log: Arc<Mutex<Vec<String>>>,
    exited: watch::Sender<Option<i32>>,
    stopping: AtomicBool,
}

impl FakeVm {
    /// brig-vmm dies on its own.
    fn die(&self) {
        self.exited.send_replace(Some(137));
    }
}

#[async_trait]
impl Vm for FakeVm {
    fn pid(&self) -> u32 {
        VMM_PID
    }

    fn guest(&self) -> Arc<dyn Guest> {
        self.guest.clone()
    }

    fn exit_code(&self) -> Option<i32> {
        *self.exited.borrow()
    }

    async fn wait_exit(&self) -> i32 {
        let mut exited = self.exited.subscribe();
        let code = exited.wait_for(Option::is_some).await.expect("the sender lives in the fake");
        code.unwrap_or_default()
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    async fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        lock(&self.log).push("stop vm".into());
        self.exited.send_replace(Some(0));
    }

    async fn attach(&self, container_id: &str, exec_id: Option<&str>, paths: &StdioPaths) -> Result<Copies, ShimError> {
        lock(&self.log).push(format!("attach {container_id} {exec_id:?} stdout={}", paths.stdout));
        Ok(Copies::default())
    }
}

/// Prepares no image and boots no VM, but says what it was asked.
#[derive(Debug)]
struct FakeHost {
    guest: Arc<FakeGuest>,
    log: Arc<Mutex<Vec<String>>>,
    vm: Mutex<Option<Arc<FakeVm>>>,
    /// The interface CNI "added" to the task's own namespace before start.
    cni: Mutex<Option<Interface>>,
}

impl FakeHost {
    fn log(&self) -> Vec<String> {
        lock(&self.log).clone()
    }

    fn vm(&self) -> Arc<FakeVm> {
        lock(&self.vm).clone().expect("a VM was started")
    }
}

#[async_trait]
impl Host for FakeHost {
    async fn prepare_rootfs(
        &self,
        _config: &Config,
        bundle: &Path,
        mounts: &[Mount],
        dir: &Path,
    ) -> Result<Rootfs, ShimError> {
        lock(&self.log).push(format!("prepare rootfs ({} mounts)", mounts.len()));
        let image = RootfsImage { path: dir.join("rootfs.ext4"), cached: false };
        Ok(Rootfs { image, mounted_on: (!mounts.is_empty()).then(|| bundle.to_path_buf()) })
    }

    fn release_rootfs(&self, rootfs: &Rootfs) {
        lock(&self.log).push(format!("release rootfs (mounted: {})", rootfs.mounted_on.is_some()));
    }

    async fn start_vm(
        &self,
        _config: &Config,
        _dir: &Path,
        size: Size,
        _rootfs: &Rootfs,
        _nic: Option<Nic>,
    ) -> Result<Arc<dyn Vm>, ShimError> {
        lock(&self.log).push(format!("start vm {}x{}MiB", size.vcpus, size.memory_mib));
        let vm = Arc::new(FakeVm {
            guest: self.guest.clone(),
            log: self.log.clone(),
            exited: watch::channel(None).0,
            stopping: AtomicBool::new(false),
        });
        *lock(&self.vm) = Some(vm.clone());
        Ok(vm)
    }

    async fn prepare_network(
        &self,
        network: &NetworkNamespace,
        dir: &Path,
    ) -> Result<(Nic, Option<Interface>, Attachment), ShimError> {
        let (netns, owned) = match network {
            NetworkNamespace::New => (dir.join("netns"), true),
            NetworkNamespace::Host(path) => (path.clone(), false),
        };
        lock(&self.log).push(format!("prepare network (own: {owned})"));
        let tap = std::fs::File::open("/dev/null").expect("/dev/null").into();
        let nic = Nic { tap, mac: [2, 0, 0, 0, 0, 1], mtu: 1500, netns: netns.clone() };
        Ok((nic, None, Attachment { netns, interface: String::new(), owned }))
    }

    async fn connect_network(&self, attachment: &mut Attachment, _dir: &Path) -> Result<Option<Interface>, ShimError> {
        let cni = lock(&self.cni).take();
        lock(&self.log).push(format!("connect network ({})", cni.as_ref().map_or("none", |i| i.name.as_str())));
        if let Some(interface) = &cni {
            attachment.interface = interface.name.clone();
        }
        Ok(cni)
    }

    async fn release_network(&self, attachment: &Attachment) {
        lock(&self.log).push(format!("release network ({})", attachment.interface));
    }
}

/// Keeps what would have gone to containerd.
#[derive(Debug, Default)]
struct Recorder {
    events: Mutex<Vec<TaskEvent>>,
    published: tokio::sync::Notify,
}

impl Recorder {
    fn topics(&self) -> Vec<&'static str> {
        lock(&self.events).iter().map(|e| e.topic().trim_start_matches("/tasks/")).collect()
    }

    fn last(&self) -> TaskEvent {
        lock(&self.events).last().cloned().expect("an event")
    }

    /// Waits until `n` events have been published.
    async fn until(&self, n: usize) {
        let enough = async {
            loop {
                let notified = self.published.notified();
                if lock(&self.events).len() >= n {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(BOUND, enough).await.unwrap_or_else(|_| panic!("{n} events: {:?}", self.topics()));
    }
}

#[async_trait]
impl Publisher for Recorder {
    async fn publish(&self, event: TaskEvent) {
        lock(&self.events).push(event);
        self.published.notify_waiters();
    }
}

/// A task service over the fakes, with a bundle and a state directory of its own.
struct Harness {
    service: TaskService,
    guest: Arc<FakeGuest>,
    host: Arc<FakeHost>,
    events: Arc<Recorder>,
    exit: Arc<ExitSignal>,
    root: PathBuf,
    config: Config,
}

impl Harness {
    fn new(name: &str) -> Harness {
        Harness::with_timing(name, Timing::default())
    }

    fn with_timing(name: &str, timing: Timing) -> Harness {
        let root = std::env::temp_dir().join(format!("brig-shim-task-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let bundle = root.join("bundle");
        std::fs::create_dir_all(&bundle).expect("bundle");
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sleep", "1000"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "linux": {
                "resources": {"memory": {"limit": 128 << 20}},
                "cgroupsPath": "/default/c1",
                "namespaces": [{"type": "network"}],
            },
        });
        std::fs::write(bundle.join("config.json"), spec.to_string()).expect("config.json");
        // Any file will do for the artifacts: the fake host boots nothing.
        let exe = std::env::current_exe().expect("the test binary");
        let config = Config {
            kernel: exe.clone(),
            initramfs: exe.clone(),
            vmm: exe.clone(),
            jailer: exe,
            state_dir: root.join("state"),
            image_dir: root.join("images"),
            ..Config::default()
        };
        let guest = FakeGuest::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        let host = Arc::new(FakeHost { guest: guest.clone(), log, vm: Mutex::new(None), cni: Mutex::new(None) });
        let events = Arc::new(Recorder::default());
        let exit = Arc::new(ExitSignal::default());
        let service =
            TaskService::with_timing(Ok(config.clone()), "default", host.clone(), events.clone(), exit.clone(), timing);
        Harness { service, guest, host, events, exit, root, config }
    }

    fn task_dir(&self, id: &str) -> PathBuf {
        super::task_dir(&self.config, "default", id)
    }

    fn create_request(&self, id: &str) -> api::CreateTaskRequest {
        api::CreateTaskRequest {
            id: id.into(),
            bundle: self.root.join("bundle").to_string_lossy().into_owned(),
            stdout: "/run/fifo/out".into(),
            ..Default::default()
        }
    }

    async fn create(&self, id: &str) -> ttrpc::Result<api::CreateTaskResponse> {
        bounded(self.service.create(&ctx(), self.create_request(id))).await
    }

    async fn start(&self, id: &str, exec_id: &str) -> ttrpc::Result<api::StartResponse> {
        let req = api::StartRequest { id: id.into(), exec_id: exec_id.into(), ..Default::default() };
        bounded(self.service.start(&ctx(), req)).await
    }

    async fn exec(&self, id: &str, exec_id: &str) -> ttrpc::Result<api::Empty> {
        let spec = containerd_shim::protos::protobuf::well_known_types::any::Any {
            value: br#"{"args":["ls"]}"#.to_vec(),
            ..Default::default()
        };
        let req = api::ExecProcessRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            spec: Some(spec).into(),
            stdout: "/run/fifo/exec-out".into(),
            ..Default::default()
        };
        bounded(self.service.exec(&ctx(), req)).await
    }

    async fn kill(&self, id: &str, exec_id: &str, signal: u32) -> ttrpc::Result<api::Empty> {
        let req = api::KillRequest { id: id.into(), exec_id: exec_id.into(), signal, ..Default::default() };
        bounded(self.service.kill(&ctx(), req)).await
    }

    async fn wait(&self, id: &str, exec_id: &str) -> ttrpc::Result<api::WaitResponse> {
        let req = api::WaitRequest { id: id.into(), exec_id: exec_id.into(), ..Default::default() };
        bounded(self.service.wait(&ctx(), req)).await
    }

    async fn state(&self, id: &str, exec_id: &str) -> ttrpc::Result<api::StateResponse> {
        let req = api::StateRequest { id: id.into(), exec_id: exec_id.into(), ..Default::default() };
        bounded(self.service.state(&ctx(), req)).await
    }

    async fn status(&self, id: &str, exec_id: &str) -> Status {
        self.state(id, exec_id).await.expect("state").status.enum_value_or_default()
    }

    async fn delete(&self, id: &str, exec_id: &str) -> ttrpc::Result<api::DeleteResponse> {
        let req = api::DeleteRequest { id: id.into(), exec_id: exec_id.into(), ..Default::default() };
        bounded(self.service.delete(&ctx(), req)).await
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn ctx() -> TtrpcContext {
    TtrpcContext { mh: Default::default(), metadata: Default::default(), timeout_nano: 0 }
}

async fn bounded<T>(call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, call).await.expect("the call finishes in bounded time")
}

/// The ttrpc code containerd gets for a failed call.
fn code<T: std::fmt::Debug>(result: ttrpc::Result<T>) -> Code {
    match result {
        Err(ttrpc::Error::RpcStatus(status)) => status.code(),
        other => panic!("a status, not {other:?}"),
    }
}

#[tokio::test]
async fn the_lifecycle_reaches_containerd_in_runc_order() {
    let h = Harness::new("lifecycle");
    assert_eq!(h.create("c1").await.expect("create").pid, VMM_PID);
    let booted = [
        "prepare rootfs (0 mounts)",
        "prepare network (own: true)",
        "start vm 1x192MiB",
        "attach c1 None stdout=/run/fifo/out",
    ];
    assert_eq!(h.host.log(), booted, "the VM is sized from the spec (128 MiB + 64 MiB overhead)");
    assert_eq!(h.status("c1", "").await, Status::CREATED);
    assert!(h.task_dir("c1").join("task").is_file(), "the task file records namespace, id and bundle");

    assert_eq!(h.start("c1", "").await.expect("start").pid, VMM_PID);
    assert_eq!(h.status("c1", "").await, Status::RUNNING);
    h.exec("c1", "e1").await.expect("exec");
    assert_eq!(h.status("c1", "e1").await, Status::CREATED);
    h.start("c1", "e1").await.expect("start the exec");
    assert_eq!(h.status("c1", "e1").await, Status::RUNNING);

    h.kill("c1", "e1", 9).await.expect("kill the exec");
    let waited = h.wait("c1", "e1").await.expect("wait");
    assert_eq!((waited.exit_status, waited.exited_at.seconds), (137, 1_700_000_000));
    h.events.until(5).await;
    let TaskEvent::Exit(exit) = h.events.last() else { panic!("an exit: {:?}", h.events.topics()) };
    assert_eq!((exit.container_id.as_str(), exit.id.as_str(), exit.pid, exit.exit_status), ("c1", "e1", VMM_PID, 137));
    let state = h.state("c1", "e1").await.expect("state");
    assert_eq!(
        (state.status.enum_value_or_default(), state.exit_status, state.id.as_str()),
        (Status::STOPPED, 137, "e1")
    );
    assert_eq!(h.delete("c1", "e1").await.expect("delete the exec").exit_status, 137);
    assert_eq!(code(h.state("c1", "e1").await), Code::NOT_FOUND, "the exec is forgotten");

    h.kill("c1", "", 15).await.expect("kill the task");
    assert_eq!(h.wait("c1", "").await.expect("wait").exit_status, 143);
    h.events.until(6).await;
    let TaskEvent::Exit(exit) = h.events.last() else { panic!("an exit") };
    assert_eq!((exit.id.as_str(), exit.exit_status), ("c1", 143), "the task's own exit names the container");
    let deleted = h.delete("c1", "").await.expect("delete");
    assert_eq!((deleted.pid, deleted.exit_status), (VMM_PID, 143));
    let TaskEvent::Delete(delete) = h.events.last() else { panic!("a delete") };
    assert_eq!((delete.container_id.as_str(), delete.exit_status, delete.pid), ("c1", 143, VMM_PID));

    assert_eq!(h.events.topics(), ["create", "start", "exec-added", "exec-started", "exit", "exit", "delete"]);
    let (waits, calls): (Vec<String>, Vec<String>) = h.guest.calls().into_iter().partition(|c| c.starts_with("wait"));
    let mut waits = waits;
    waits.sort();
    let expected = [
        r#"create c1 args=["sleep","1000"] cgroupsPath=null rootfs=rootfs:ext4:ro=true stdout=true"#,
        "start c1",
        r#"exec c1 e1 {"args":["ls"]}"#,
        r#"signal c1 Some("e1") 9 all=false"#,
        "signal c1 None 15 all=false",
        "remove c1",
    ];
    assert_eq!(calls, expected, "exec ids reach the guest as None for the task's own process");
    assert_eq!(waits, ["wait c1 None", r#"wait c1 Some("e1")"#], "one waiter per started process");
    let torn_down = [
        "connect network (none)",
        r#"attach c1 Some("e1") stdout=/run/fifo/exec-out"#,
        "stop vm",
        "release network ()",
        "release rootfs (mounted: false)",
    ];
    assert_eq!(h.host.log()[4..], torn_down);
    assert!(!h.task_dir("c1").exists(), "the task's state directory is gone");
    assert_eq!(code(h.state("c1", "").await), Code::NOT_FOUND);
}

#[tokio::test]
async fn a_guest_that_never_answers_wait_does_not_hold_up_kill_delete_or_shutdown() {
    let h = Harness::new("hung-wait");
    h.guest.hang_wait.store(true, Ordering::SeqCst);
    h.create("c1").await.expect("create");
    h.start("c1", "").await.expect("start");
    h.kill("c1", "", 9).await.expect("the signal is delivered; no exit comes back");
    let wait_ctx = ctx();
    let wait = h.service.wait(&wait_ctx, api::WaitRequest { id: "c1".into(), ..Default::default() });
    assert!(
        tokio::time::timeout(A_WHILE, wait).await.is_err(),
        "containerd's Wait waits for an exit that has not come"
    );
    assert_eq!(h.status("c1", "").await, Status::RUNNING);
    assert_eq!(code(h.delete("c1", "").await), Code::FAILED_PRECONDITION, "a running task is not deleted");
    assert!(h.task_dir("c1").exists(), "a refused delete leaves the task as it was");

    let later = api::ShutdownRequest { id: "c1".into(), now: false, ..Default::default() };
    bounded(h.service.shutdown(&ctx(), later)).await.expect("shutdown");
    assert!(!h.host.log().contains(&"stop vm".to_owned()), "without `now` the shim stays for its task");
    let now = api::ShutdownRequest { id: "c1".into(), now: true, ..Default::default() };
    bounded(h.service.shutdown(&ctx(), now)).await.expect("shutdown now");
    assert!(h.host.log().contains(&"stop vm".to_owned()));
    bounded(h.exit.wait()).await;
    assert_eq!(h.events.topics(), ["create", "start"], "a stopped VM is no exit of its own");
}

#[tokio::test]
async fn a_vm_that_dies_ends_every_process_with_255() {
    let h = Harness::new("vm-died");
    h.guest.hang_wait.store(true, Ordering::SeqCst);
    h.create("c1").await.expect("create");
    h.start("c1", "").await.expect("start");
    h.exec("c1", "e1").await.expect("exec");
    h.start("c1", "e1").await.expect("start the exec");
    h.exec("c1", "e2").await.expect("an exec that never starts");
    let waiter = tokio::spawn({
        let service = h.service.clone();
        async move { service.wait(&ctx(), api::WaitRequest { id: "c1".into(), ..Default::default() }).await }
    });
    h.host.vm().die();
    let waited = bounded(waiter).await.expect("joined").expect("wait");
    assert_eq!(waited.exit_status, 255);
    h.events.until(8).await;
    let mut exits = exits(&h.events);
    exits.sort();
    assert_eq!(exits, [("c1".into(), 255), ("e1".into(), 255), ("e2".into(), 255)]);
    assert_eq!(code(h.start("c1", "e2").await), Code::FAILED_PRECONDITION, "nothing starts in a dead VM");
    assert_eq!(code(h.kill("c1", "", 9).await), Code::NOT_FOUND, "an exited process is not found for kill");
    assert_eq!(h.delete("c1", "e1").await.expect("delete the exec").exit_status, 255);
    assert_eq!(h.delete("c1", "").await.expect("delete").exit_status, 255);
    assert!(!h.guest.calls().contains(&"remove c1".to_owned()), "a dead VM is not asked to remove anything");
    let TaskEvent::Delete(delete) = h.events.last() else { panic!("a delete") };
    assert_eq!(delete.exit_status, 255);
}

#[tokio::test]
async fn a_task_is_running_once_start_has_returned() {
    let h = Harness::new("starting");
    h.create("c1").await.expect("create");
    let (open, gate) = tokio::sync::oneshot::channel();
    *lock(&h.guest.start_gate) = Some(gate);
    let start = tokio::spawn({
        let service = h.service.clone();
        async move { service.start(&ctx(), api::StartRequest { id: "c1".into(), ..Default::default() }).await }
    });
    while !h.guest.calls().contains(&"start c1".to_owned()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.status("c1", "").await, Status::CREATED, "while the guest starts it");
    assert_eq!(code(h.start("c1", "").await), Code::FAILED_PRECONDITION, "a second start while the first runs");
    open.send(()).expect("the start waits");
    bounded(start).await.expect("joined").expect("start");
    assert_eq!(h.status("c1", "").await, Status::RUNNING);
    assert_eq!(h.events.topics(), ["create", "start"]);
}

#[tokio::test]
async fn an_interface_cni_added_after_create_is_joined_at_start() {
    let h = Harness::new("cni-at-start");
    h.create("c1").await.expect("create");
    let eth0 = Interface {
        name: "eth0".into(),
        mac: [0x0a, 0x58, 10, 88, 0, 5],
        mtu: 1400,
        addresses: vec![crate::network::IpNet { addr: "10.88.0.5".parse().expect("ip"), prefix: 16 }],
        routes: Vec::new(),
    };
    *lock(&h.host.cni) = Some(eth0);
    h.start("c1", "").await.expect("start");
    assert!(h.guest.calls().contains(&"start c1 nic mtu=1400".to_owned()), "{:?}", h.guest.calls());
    h.exec("c1", "e1").await.expect("exec");
    h.start("c1", "e1").await.expect("an exec joins nothing");
    assert_eq!(h.host.log().iter().filter(|l| l.starts_with("connect network")).count(), 1, "{:?}", h.host.log());
    h.kill("c1", "", 9).await.expect("kill");
    h.wait("c1", "").await.expect("wait");
    h.delete("c1", "").await.expect("delete");
    assert!(
        h.host.log().contains(&"release network (eth0)".to_owned()),
        "the joined interface is left: {:?}",
        h.host.log()
    );
}

/// The agent is lost during `Start` (brig-vmm killed, or its guest link gone):
/// the task ends before `Start` answers, so that containerd can delete it.
async fn start_without_an_agent(h: &Harness) {
    h.create("c1").await.expect("create");
    h.exec("c1", "e1").await.expect("an exec that never starts");
    let lost = GuestError::Unreachable { call: "StartContainer", source: brig_protocol::ttrpc::Error::RemoteClosed };
    h.guest.fail("start", lost);
    assert_eq!(code(h.start("c1", "").await), Code::UNAVAILABLE);
    assert_eq!(h.status("c1", "").await, Status::STOPPED, "ended before Start answered");
    assert_eq!(h.wait("c1", "").await.expect("wait").exit_status, 255);
    let mut exits = exits(&h.events);
    exits.sort();
    assert_eq!(exits, [("c1".to_owned(), 255), ("e1".to_owned(), 255)], "each process ends once");
    assert_eq!(h.delete("c1", "").await.expect("a stopped task can be deleted").exit_status, 255);
}

#[tokio::test]
async fn a_vmm_killed_during_start_ends_the_task() {
    let h = Harness::new("start-vm-died");
    let dying = tokio::spawn({
        let host = h.host.clone();
        async move {
            while !host.guest.calls().iter().any(|c| c == "start c1") {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            host.vm().die();
        }
    });
    start_without_an_agent(&h).await;
    dying.await.expect("joined");
}

#[tokio::test]
async fn an_agent_lost_during_start_while_the_vmm_runs_stops_the_vm() {
    let quick = super::monitor::Timing { vmm_exit_wait: Duration::from_millis(100), ..Default::default() };
    let h = Harness::with_timing("start-link-lost", quick);
    start_without_an_agent(&h).await;
    assert!(h.host.log().contains(&"stop vm".to_owned()), "the VM is stopped: {:?}", h.host.log());
}

#[tokio::test]
async fn a_failing_create_leaves_nothing_registered() {
    let h = Harness::new("bad-create");
    h.guest.fail("create", refused(Code::INVALID_ARGUMENT, "process.args is empty"));
    let err = h.create("c1").await.expect_err("the agent refused");
    let ttrpc::Error::RpcStatus(status) = err else { panic!("a status: {err:?}") };
    assert_eq!(status.code(), Code::INVALID_ARGUMENT, "the agent's code reaches containerd");
    assert_eq!(status.message, "agent: process.args is empty");
    let undone = [
        "prepare rootfs (0 mounts)",
        "prepare network (own: true)",
        "start vm 1x192MiB",
        "stop vm",
        "release network ()",
        "release rootfs (mounted: false)",
    ];
    assert_eq!(h.host.log(), undone, "the VM is stopped and the rootfs released");
    assert!(!h.task_dir("c1").exists(), "no state directory is left");
    assert!(h.events.topics().is_empty(), "no TaskCreate for a task that does not exist");
    assert_eq!(code(h.state("c1", "").await), Code::NOT_FOUND);
    assert_eq!(h.create("c1").await.expect("the slot is free again").pid, VMM_PID);
    assert_eq!(h.events.topics(), ["create"]);
}

#[tokio::test]
async fn a_spec_the_shim_cannot_run_is_refused_before_a_vm_boots() {
    let h = Harness::new("bad-spec");
    std::fs::write(h.root.join("bundle/config.json"), "{").expect("config.json");
    assert_eq!(code(h.create("c1").await), Code::INVALID_ARGUMENT);
    assert!(h.host.log().is_empty(), "nothing was prepared");
    let missing = Config { kernel: "/nonexistent/vmlinux".into(), ..h.config.clone() };
    let service = TaskService::with_host(Ok(missing), "default", h.host.clone(), h.events.clone(), h.exit.clone());
    let err = bounded(service.create(&ctx(), h.create_request("c1"))).await;
    assert_eq!(code(err), Code::FAILED_PRECONDITION, "missing artifacts");
    let unconfigured = TaskService::with_host(
        Err("bad config.toml".into()),
        "default",
        h.host.clone(),
        h.events.clone(),
        h.exit.clone(),
    );
    assert_eq!(code(bounded(unconfigured.create(&ctx(), h.create_request("c1"))).await), Code::FAILED_PRECONDITION);
}

#[tokio::test]
async fn agent_errors_reach_containerd_with_their_codes() {
    let h = Harness::new("agent-errors");
    h.create("c1").await.expect("create");
    h.guest.fail("start", refused(Code::FAILED_PRECONDITION, "exec failed: no such file"));
    assert_eq!(code(h.start("c1", "").await), Code::FAILED_PRECONDITION);
    assert_eq!(h.status("c1", "").await, Status::CREATED, "a refused start leaves the task created");
    h.start("c1", "").await.expect("a second start goes through");
    assert_eq!(h.events.topics(), ["create", "start"]);

    h.guest.fail("signal", refused(Code::NOT_FOUND, "process gone"));
    assert_eq!(code(h.kill("c1", "", 15).await), Code::NOT_FOUND);
    h.guest.fail(
        "pids",
        GuestError::Unreachable { call: "ListProcesses", source: brig_protocol::ttrpc::Error::RemoteClosed },
    );
    let pids = bounded(h.service.pids(&ctx(), api::PidsRequest { id: "c1".into(), ..Default::default() })).await;
    assert_eq!(code(pids), Code::UNAVAILABLE, "a dead VMM");
    h.guest.fail("stats", GuestError::Timeout { call: "StatsContainer", timeout: Duration::from_secs(60) });
    let stats = bounded(h.service.stats(&ctx(), api::StatsRequest { id: "c1".into(), ..Default::default() })).await;
    assert_eq!(code(stats), Code::DEADLINE_EXCEEDED, "a silent agent");

    h.exec("c1", "e1").await.expect("exec");
    h.guest.fail("exec", refused(Code::FAILED_PRECONDITION, "container c1 is paused, not running"));
    assert_eq!(code(h.start("c1", "e1").await), Code::FAILED_PRECONDITION);
    assert_eq!(h.status("c1", "e1").await, Status::CREATED);
    h.delete("c1", "e1").await.expect("an exec that never ran can be deleted");
    assert!(!h.host.log().iter().any(|l| l.contains("e1")), "no stdio attached for an exec that did not start");
}

#[tokio::test]
async fn requests_that_do_not_fit_the_task_are_refused() {
    let h = Harness::new("refusals");
    assert_eq!(code(h.start("c1", "").await), Code::NOT_FOUND, "no task yet");
    h.create("c1").await.expect("create");
    assert_eq!(code(h.create("c2").await), Code::ALREADY_EXISTS, "one task per shim");
    assert_eq!(code(h.state("other", "").await), Code::NOT_FOUND);
    assert_eq!(code(h.exec("c1", "").await), Code::INVALID_ARGUMENT, "an exec needs an id");
    h.start("c1", "").await.expect("start");
    assert_eq!(code(h.start("c1", "").await), Code::FAILED_PRECONDITION, "started twice");
    h.exec("c1", "e1").await.expect("exec");
    assert_eq!(code(h.exec("c1", "e1").await), Code::ALREADY_EXISTS);
    assert_eq!(code(h.start("c1", "nope").await), Code::NOT_FOUND);
    h.start("c1", "e1").await.expect("start the exec");
    assert_eq!(code(h.delete("c1", "e1").await), Code::FAILED_PRECONDITION, "a running exec");
    let checkpoint = bounded(h.service.checkpoint(&ctx(), api::CheckpointTaskRequest::default())).await;
    assert_eq!(code(checkpoint), Code::UNIMPLEMENTED);
    let connected = bounded(h.service.connect(&ctx(), api::ConnectRequest { id: "c1".into(), ..Default::default() }))
        .await
        .expect("connect");
    assert_eq!((connected.task_pid, connected.shim_pid), (VMM_PID, std::process::id()));

    h.kill("c1", "", 9).await.expect("kill");
    h.wait("c1", "").await.expect("wait");
    assert_eq!(code(h.exec("c1", "e2").await), Code::FAILED_PRECONDITION, "no exec into an exited task");
    assert_eq!(code(h.kill("c1", "", 9).await), Code::NOT_FOUND, "already finished");
}

#[tokio::test]
async fn pause_resume_oom_and_the_guest_pass_throughs() {
    let h = Harness::new("pass-through");
    h.create("c1").await.expect("create");
    h.start("c1", "").await.expect("start");
    let id = || "c1".to_owned();
    bounded(h.service.pause(&ctx(), api::PauseRequest { id: id(), ..Default::default() })).await.expect("pause");
    assert_eq!(h.status("c1", "").await, Status::PAUSED);
    bounded(h.service.resume(&ctx(), api::ResumeRequest { id: id(), ..Default::default() })).await.expect("resume");
    assert_eq!(h.status("c1", "").await, Status::RUNNING);

    h.guest.oom_tx.send("another".into()).expect("oom");
    h.guest.oom_tx.send("c1".into()).expect("oom");
    h.events.until(5).await;
    assert_eq!(h.events.topics(), ["create", "start", "paused", "resumed", "oom"], "only this task's OOM kills");

    let pids =
        bounded(h.service.pids(&ctx(), api::PidsRequest { id: id(), ..Default::default() })).await.expect("pids");
    assert_eq!(pids.processes.iter().map(|p| p.pid).collect::<Vec<_>>(), [1, 7]);
    let stats = bounded(h.service.stats(&ctx(), api::StatsRequest { id: id(), ..Default::default() })).await;
    let any = stats.expect("stats").stats.into_option().expect("an Any");
    assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
    let resize = api::ResizePtyRequest { id: id(), width: 80, height: 24, ..Default::default() };
    bounded(h.service.resize_pty(&ctx(), resize)).await.expect("resize");
    let close = api::CloseIORequest { id: id(), exec_id: "e9".into(), stdin: true, ..Default::default() };
    bounded(h.service.close_io(&ctx(), close)).await.expect("close stdin");
    let resources = containerd_shim::protos::protobuf::well_known_types::any::Any {
        value: br#"{"pids":{"limit":10}}"#.to_vec(),
        ..Default::default()
    };
    let update = api::UpdateTaskRequest { id: id(), resources: Some(resources).into(), ..Default::default() };
    bounded(h.service.update(&ctx(), update)).await.expect("update");
    let calls: Vec<String> = h.guest.calls().into_iter().filter(|c| !c.starts_with("wait")).skip(2).collect();
    let expected = [
        "pause c1",
        "resume c1",
        "pids c1",
        "stats c1",
        "resize c1 None 80x24",
        r#"close-stdin c1 Some("e9")"#,
        r#"update c1 {"pids":{"limit":10}}"#,
    ];
    assert_eq!(calls, expected);
}
