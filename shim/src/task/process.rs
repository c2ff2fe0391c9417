//! One process of a task: the container's own (`exec_id` `None`) or an exec'd one,
//! and the one enum that says where it is in its life.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::api::Status;
use tokio::sync::watch;

use crate::error::ShimError;
use crate::guest::ProcessExit;
use crate::io::{Copies, StdioPaths};

/// Exit status reported when the VM died under a process.
pub const VM_DIED_STATUS: u32 = 255;
/// Exit status of a process killed by SIGKILL (also when the shim had to see to it).
pub const KILLED_STATUS: u32 = 128 + 9;
/// How long after a process exits its output may still be flowing.
const DRAIN: Duration = Duration::from_secs(5);

/// The time now, as containerd's events carry it.
pub fn now() -> Timestamp {
    // Fails only for a clock set before 1970; the epoch is as good an answer as any.
    containerd_shim::util::timestamp().unwrap_or_default()
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    pub status: u32,
    pub at: Timestamp,
}

impl Exit {
    /// An exit the shim decides on now (the VM died; a process that never ran).
    pub fn now(status: u32) -> Exit {
        Exit { status, at: now() }
    }
}

impl From<ProcessExit> for Exit {
    fn from(exit: ProcessExit) -> Exit {
        let at = Timestamp {
            seconds: (exit.at_unix_ns / 1_000_000_000) as i64,
            nanos: (exit.at_unix_ns % 1_000_000_000) as i32,
            ..Default::default()
        };
        Exit { status: exit.status, at }
    }
}

/// Where a process is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum ProcessState {
    /// Known to the shim (and, for the container's own process, created in the
    /// guest), not started.
    Created,
    /// The guest is being asked to start it. containerd still sees it created (as
    /// with runc, a task is running once `Start` has returned), and a second
    /// `Start` is refused.
    Starting,
    /// Started: the guest runs it and has not reported an exit.
    Running,
    /// The container's own process while the container is frozen.
    Paused,
    Exited(Exit),
}

impl ProcessState {
    /// containerd's name for it.
    pub fn status(&self) -> Status {
        match self {
            ProcessState::Created | ProcessState::Starting => Status::CREATED,
            ProcessState::Running => Status::RUNNING,
            ProcessState::Paused => Status::PAUSED,
            ProcessState::Exited(_) => Status::STOPPED,
        }
    }
}

/// A process. Its state lives in the watch channel's value, nowhere else; the
/// channel is only how waiters learn of changes.
#[derive(Debug)]
pub struct Process {
    /// `None` for the container's own process.
    pub exec_id: Option<String>,
    pub paths: StdioPaths,
    /// An exec'd process's OCI `process` object (JSON), as containerd sent it.
    pub spec: Vec<u8>,
    state: watch::Sender<ProcessState>,
    copies: tokio::sync::Mutex<Copies>,
    /// Whether a SIGKILL's outcome is being watched (see `monitor::enforce_kill`).
    kill_watched: AtomicBool,
}

impl Process {
    pub fn new(exec_id: Option<String>, paths: StdioPaths, spec: Vec<u8>) -> Arc<Process> {
        Arc::new(Process {
            exec_id,
            paths,
            spec,
            state: watch::channel(ProcessState::Created).0,
            copies: tokio::sync::Mutex::new(Copies::default()),
            kill_watched: AtomicBool::new(false),
        })
    }

    /// True for the first caller only: one watcher per process sees a SIGKILL through.
    pub fn watch_kill_once(&self) -> bool {
        !self.kill_watched.swap(true, Ordering::SeqCst)
    }

    /// How containerd names the process in messages.
    pub fn name(&self) -> &str {
        self.exec_id.as_deref().unwrap_or("init")
    }

    pub fn state(&self) -> ProcessState {
        self.state.borrow().clone()
    }

    pub fn exit(&self) -> Option<Exit> {
        match &*self.state.borrow() {
            ProcessState::Exited(exit) => Some(exit.clone()),
            _ => None,
        }
    }

    /// Being started, or started and not yet exited.
    pub fn is_running(&self) -> bool {
        matches!(*self.state.borrow(), ProcessState::Starting | ProcessState::Running | ProcessState::Paused)
    }

    /// Created → Starting, claimed before the guest is asked to start it, so that a
    /// second `Start` is refused.
    pub fn begin_start(&self) -> Result<(), ShimError> {
        let mut refused = None;
        self.state.send_if_modified(|state| match state {
            ProcessState::Created => {
                *state = ProcessState::Starting;
                true
            }
            ProcessState::Starting => {
                refused = Some(format!("process {} is being started", self.name()));
                false
            }
            ProcessState::Exited(_) => {
                refused = Some(format!("process {} has exited", self.name()));
                false
            }
            ProcessState::Running | ProcessState::Paused => {
                refused = Some(format!("process {} already started", self.name()));
                false
            }
        });
        refused.map_or(Ok(()), |message| Err(ShimError::FailedPrecondition(message)))
    }

    /// Starting → Running: the guest started it.
    pub fn started(&self) {
        self.transition(ProcessState::Starting, ProcessState::Running);
    }

    /// Starting → Created again: the guest did not start it.
    pub fn start_failed(&self) {
        self.transition(ProcessState::Starting, ProcessState::Created);
    }

    /// Running → Paused (a process that is not running stays as it is).
    pub fn paused(&self) {
        self.transition(ProcessState::Running, ProcessState::Paused);
    }

    /// Paused → Running.
    pub fn resumed(&self) {
        self.transition(ProcessState::Paused, ProcessState::Running);
    }

    fn transition(&self, from: ProcessState, to: ProcessState) {
        self.state.send_if_modified(|state| {
            if *state != from {
                return false;
            }
            *state = to;
            true
        });
    }

    /// Records the exit unless one was recorded already; true if this call did.
    pub fn record_exit(&self, exit: Exit) -> bool {
        self.state.send_if_modified(|state| {
            if matches!(state, ProcessState::Exited(_)) {
                return false;
            }
            *state = ProcessState::Exited(exit);
            true
        })
    }

    /// Waits until the process has exited.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.state.subscribe();
        loop {
            if let ProcessState::Exited(exit) = &*rx.borrow_and_update() {
                return exit.clone();
            }
            if rx.changed().await.is_err() {
                // The sender lives in `self`: it cannot be gone while we borrow it.
                return Exit::now(VM_DIED_STATUS);
            }
        }
    }

    /// Keeps the copies of the process's output, to be drained once it exits.
    pub async fn set_copies(&self, copies: Copies) {
        *self.copies.lock().await = copies;
    }

    /// Waits (a while) until the output copies have reached containerd.
    pub async fn drain(&self) {
        self.copies.lock().await.drain(DRAIN).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> Arc<Process> {
        Process::new(Some("e1".into()), StdioPaths::default(), b"{}".to_vec())
    }

    #[test]
    fn a_process_starts_once_and_exits_once() {
        let proc = exec();
        assert_eq!(proc.state(), ProcessState::Created);
        assert!(!proc.is_running());
        proc.begin_start().expect("created → starting");
        assert!(proc.is_running(), "being started is not exited");
        assert_eq!(proc.state().status(), Status::CREATED, "containerd sees it created until started");
        let again = proc.begin_start().expect_err("a second start while the first runs");
        assert_eq!(again.to_string(), "process e1 is being started");
        proc.started();
        assert_eq!(proc.state().status(), Status::RUNNING);
        let again = proc.begin_start().expect_err("a second start");
        assert_eq!(again.to_string(), "process e1 already started");
        assert!(proc.record_exit(Exit { status: 3, at: Timestamp::default() }));
        assert!(!proc.record_exit(Exit::now(VM_DIED_STATUS)), "the first exit wins");
        assert_eq!(proc.exit().map(|e| e.status), Some(3));
        assert_eq!(proc.state().status(), Status::STOPPED);
        assert!(proc.begin_start().expect_err("exited").to_string().contains("has exited"));
    }

    #[test]
    fn only_a_running_process_pauses_and_a_failed_start_is_undone() {
        let proc = Process::new(None, StdioPaths::default(), Vec::new());
        assert_eq!(proc.name(), "init");
        proc.paused();
        assert_eq!(proc.state(), ProcessState::Created, "not started: nothing to pause");
        proc.begin_start().expect("start");
        proc.start_failed();
        assert_eq!(proc.state(), ProcessState::Created, "the guest refused: it can be started again");
        proc.begin_start().expect("start");
        proc.paused();
        assert_eq!(proc.state(), ProcessState::Starting, "not started yet: nothing to pause");
        proc.started();
        proc.paused();
        assert_eq!(proc.state().status(), Status::PAUSED);
        assert!(proc.is_running(), "a paused process has not exited");
        proc.resumed();
        assert_eq!(proc.state().status(), Status::RUNNING);
    }

    #[tokio::test]
    async fn waiters_see_the_exit() {
        let proc = exec();
        let waiter = tokio::spawn({
            let proc = proc.clone();
            async move { proc.wait().await }
        });
        tokio::task::yield_now().await;
        proc.begin_start().expect("start");
        proc.record_exit(Exit::from(ProcessExit { status: 137, at_unix_ns: 1_500_000_000 }));
        let exit = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken").expect("joined");
        assert_eq!((exit.status, exit.at.seconds, exit.at.nanos), (137, 1, 500_000_000));
        assert_eq!(proc.wait().await.status, 137, "an exited process answers at once");
    }
}
