//! The task events containerd gets, in the order and with the fields runc's shim
//! uses:
//!
//! - `TaskCreate` after the container exists (its VM is up and the agent created
//!   it), with the bundle, rootfs, stdio and the task's pid;
//! - `TaskStart` after the container's process runs;
//! - `TaskExecAdded` when an exec is registered, `TaskExecStarted` once it runs;
//! - `TaskExit` once a process has exited *and* its output has been copied out
//!   (`id` is the container id for the container's own process, the exec id
//!   otherwise), published once per process, by its waiter, the VM monitor, or the
//!   kill enforcer (a SIGKILL the guest did not carry out, `monitor::enforce_kill`);
//! - `TaskPaused` / `TaskResumed` after the guest froze / thawed the container;
//! - `TaskOOM` for the OOM kills the guest reports for the container, at most one a
//!   second (kills closer together are one event: a guest can report them in a loop);
//! - `TaskDelete` when the container and its VM are gone, with the container's
//!   exit.
//!
//! The pid in every event is brig-vmm's: the task's process on the host.

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused, TaskResumed,
    TaskStart,
};
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::topics::*;
use containerd_shim_protos::api;

use super::process::Exit;

/// One event for containerd.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskEvent {
    Create(TaskCreate),
    Start(TaskStart),
    ExecAdded(TaskExecAdded),
    ExecStarted(TaskExecStarted),
    Exit(TaskExit),
    Paused(TaskPaused),
    Resumed(TaskResumed),
    Oom(TaskOOM),
    Delete(TaskDelete),
}

impl TaskEvent {
    pub fn topic(&self) -> &'static str {
        match self {
            TaskEvent::Create(_) => TASK_CREATE_EVENT_TOPIC,
            TaskEvent::Start(_) => TASK_START_EVENT_TOPIC,
            TaskEvent::ExecAdded(_) => TASK_EXEC_ADDED_EVENT_TOPIC,
            TaskEvent::ExecStarted(_) => TASK_EXEC_STARTED_EVENT_TOPIC,
            TaskEvent::Exit(_) => TASK_EXIT_EVENT_TOPIC,
            TaskEvent::Paused(_) => TASK_PAUSED_EVENT_TOPIC,
            TaskEvent::Resumed(_) => TASK_RESUMED_EVENT_TOPIC,
            TaskEvent::Oom(_) => TASK_OOM_EVENT_TOPIC,
            TaskEvent::Delete(_) => TASK_DELETE_EVENT_TOPIC,
        }
    }

    fn into_message(self) -> Box<dyn MessageDyn> {
        match self {
            TaskEvent::Create(e) => Box::new(e),
            TaskEvent::Start(e) => Box::new(e),
            TaskEvent::ExecAdded(e) => Box::new(e),
            TaskEvent::ExecStarted(e) => Box::new(e),
            TaskEvent::Exit(e) => Box::new(e),
            TaskEvent::Paused(e) => Box::new(e),
            TaskEvent::Resumed(e) => Box::new(e),
            TaskEvent::Oom(e) => Box::new(e),
            TaskEvent::Delete(e) => Box::new(e),
        }
    }

    pub fn create(req: &api::CreateTaskRequest, pid: u32) -> TaskEvent {
        TaskEvent::Create(TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: Some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            })
            .into(),
            pid,
            ..Default::default()
        })
    }

    /// The start of a process: `TaskStart` for the container's own, `TaskExecStarted`
    /// for an exec.
    pub fn started(container_id: &str, exec_id: Option<&str>, pid: u32) -> TaskEvent {
        match exec_id {
            None => TaskEvent::Start(TaskStart { container_id: container_id.to_owned(), pid, ..Default::default() }),
            Some(exec_id) => TaskEvent::ExecStarted(TaskExecStarted {
                container_id: container_id.to_owned(),
                exec_id: exec_id.to_owned(),
                pid,
                ..Default::default()
            }),
        }
    }

    pub fn exec_added(container_id: &str, exec_id: &str) -> TaskEvent {
        TaskEvent::ExecAdded(TaskExecAdded {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        })
    }

    pub fn exit(container_id: &str, exec_id: Option<&str>, pid: u32, exit: &Exit) -> TaskEvent {
        TaskEvent::Exit(TaskExit {
            container_id: container_id.to_owned(),
            id: exec_id.unwrap_or(container_id).to_owned(),
            pid,
            exit_status: exit.status,
            exited_at: Some(exit.at.clone()).into(),
            ..Default::default()
        })
    }

    pub fn paused(container_id: &str) -> TaskEvent {
        TaskEvent::Paused(TaskPaused { container_id: container_id.to_owned(), ..Default::default() })
    }

    pub fn resumed(container_id: &str) -> TaskEvent {
        TaskEvent::Resumed(TaskResumed { container_id: container_id.to_owned(), ..Default::default() })
    }

    pub fn oom(container_id: &str) -> TaskEvent {
        TaskEvent::Oom(TaskOOM { container_id: container_id.to_owned(), ..Default::default() })
    }

    pub fn delete(container_id: &str, pid: u32, exit: &Exit) -> TaskEvent {
        TaskEvent::Delete(TaskDelete {
            container_id: container_id.to_owned(),
            pid,
            exit_status: exit.status,
            exited_at: Some(exit.at.clone()).into(),
            id: container_id.to_owned(),
            ..Default::default()
        })
    }
}

/// Where events go: containerd, or a test's recorder.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Publishes `event`; a failure is logged, never the caller's problem.
    async fn publish(&self, event: TaskEvent);
}

/// containerd's event service, through the shim's publisher.
pub struct Containerd {
    publisher: RemotePublisher,
    namespace: String,
}

impl std::fmt::Debug for Containerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containerd").field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

impl Containerd {
    pub fn new(publisher: RemotePublisher, namespace: &str) -> Containerd {
        Containerd { publisher, namespace: namespace.to_owned() }
    }
}

#[async_trait]
impl Publisher for Containerd {
    async fn publish(&self, event: TaskEvent) {
        let topic = event.topic();
        if let Err(e) = self.publisher.publish(Default::default(), topic, &self.namespace, event.into_message()).await {
            log::warn!("cannot publish {topic}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;

    #[test]
    fn exits_name_the_container_for_its_own_process_and_the_exec_otherwise() {
        let exit = Exit { status: 7, at: Timestamp { seconds: 5, ..Default::default() } };
        let TaskEvent::Exit(init) = TaskEvent::exit("c1", None, 42, &exit) else { panic!("an exit") };
        assert_eq!((init.container_id.as_str(), init.id.as_str(), init.pid, init.exit_status), ("c1", "c1", 42, 7));
        assert_eq!(init.exited_at.seconds, 5);
        let TaskEvent::Exit(exec) = TaskEvent::exit("c1", Some("e1"), 42, &exit) else { panic!("an exit") };
        assert_eq!(exec.id, "e1");
        assert_eq!(TaskEvent::started("c1", None, 1).topic(), TASK_START_EVENT_TOPIC);
        assert_eq!(TaskEvent::started("c1", Some("e1"), 1).topic(), TASK_EXEC_STARTED_EVENT_TOPIC);
        let message = TaskEvent::delete("c1", 42, &exit).into_message();
        let delete = message.downcast_ref::<TaskDelete>().expect("a TaskDelete");
        assert_eq!((delete.id.as_str(), delete.exit_status), ("c1", 7));
    }
}
