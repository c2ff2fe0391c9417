//! What the shim watches in the background for a task: each started process's
//! exit, the VM dying under it, OOM kills in the guest, and SIGKILLs the guest
//! acknowledged but did not carry out. Whatever the agent does (answer at once,
//! forever, or never), none of these spins or waits without end.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::container::Container;
use super::events::{Publisher, TaskEvent};
use super::process::{Exit, Process, KILLED_STATUS, VM_DIED_STATUS};

/// How long the OOM watcher waits after a failed poll before asking again.
const OOM_RETRY: Duration = Duration::from_secs(1);

/// How the watchers pace themselves (the unit tests shorten the grace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long after a SIGKILL the guest has to report the process's exit before
    /// the shim ends the process itself.
    pub kill_grace: Duration,
    /// At most one `TaskOOM` per this interval: kills closer together are one event.
    pub oom_interval: Duration,
    /// OOM polls start at least this far apart, however fast the agent answers.
    pub oom_min_poll: Duration,
    /// How long a start that lost the agent waits for brig-vmm's exit before
    /// stopping the VM itself.
    pub vmm_exit_wait: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            kill_grace: Duration::from_secs(10),
            oom_interval: Duration::from_secs(1),
            oom_min_poll: Duration::from_millis(100),
            vmm_exit_wait: Duration::from_secs(5),
        }
    }
}

/// Records the exit of `proc` and publishes it, once: from its waiter, the VM
/// monitor or the kill enforcer, whichever comes first.
async fn report_exit(events: &dyn Publisher, container: &Container, proc: &Process, exit: Exit) {
    if proc.record_exit(exit.clone()) {
        if proc.exec_id.is_none() {
            crate::timeline::mark(crate::timeline::Step::ExitSeen);
        }
        events.publish(TaskEvent::exit(&container.id, proc.exec_id.as_deref(), container.pid(), &exit)).await;
    }
}

/// Waits for a started process in the guest, then for its output, then reports the exit.
pub fn watch_process(events: Arc<dyn Publisher>, container: Arc<Container>, proc: Arc<Process>) {
    tokio::spawn(async move {
        let exit = match container.guest().wait_process(&container.id, proc.exec_id.as_deref()).await {
            Ok(exit) => Exit::from(exit),
            // The VM went away; its monitor reports the exit.
            Err(e) => {
                log::debug!("waiting for {} of {}: {e}", proc.name(), container.id);
                return;
            }
        };
        proc.drain().await;
        report_exit(events.as_ref(), &container, &proc, exit).await;
    });
}

/// If brig-vmm dies without being asked to stop, every process not yet exited has.
pub fn watch_vm(events: Arc<dyn Publisher>, container: Arc<Container>) {
    tokio::spawn(async move {
        let code = container.vm().wait_exit().await;
        if container.vm().is_stopping() {
            return;
        }
        log::error!(
            "brig-vmm of task {} exited unexpectedly ({code}{})",
            container.id,
            crate::sandbox::exit_meaning(code).map(|m| format!(": {m}")).unwrap_or_default()
        );
        report_all(events.as_ref(), &container, Exit::now(VM_DIED_STATUS)).await;
    });
}

/// Records `exit` for every process of the task not yet exited.
async fn report_all(events: &dyn Publisher, container: &Container, exit: Exit) {
    for proc in container.processes() {
        report_exit(events, container, &proc, exit.clone()).await;
    }
}

/// The agent became unreachable while starting the container's process: brig-vmm
/// died, or the link to its guest did. Either way the task can never run, so it
/// ends here, before `Start` answers: containerd then sees it stopped (255, as for
/// a VM that dies later) and can delete it. Left created instead, it could not be
/// deleted (containerd deletes only stopped tasks) and `ctr run` would leak it.
pub async fn end_unstartable(events: &dyn Publisher, container: &Container, timing: Timing) {
    let vm = container.vm();
    if tokio::time::timeout(timing.vmm_exit_wait, vm.wait_exit()).await.is_err() {
        log::warn!("the agent of task {} is unreachable while brig-vmm runs: stopping its VM", container.id);
        vm.stop().await;
    }
    report_all(events, container, Exit::now(VM_DIED_STATUS)).await;
}

/// Sees a SIGKILL of a running process through: if the guest acknowledged it but
/// reports no exit within `grace`, the shim ends the process itself. For the
/// container's own process that means stopping the VM, after which every process
/// of the task has exited with [`KILLED_STATUS`]; an exec is recorded as killed.
/// containerd's `Delete` then works, whatever the agent does.
pub fn enforce_kill(events: Arc<dyn Publisher>, container: Arc<Container>, proc: Arc<Process>, grace: Duration) {
    if !proc.is_running() || !proc.watch_kill_once() {
        return;
    }
    tokio::spawn(async move {
        if tokio::time::timeout(grace, proc.wait()).await.is_ok() {
            return;
        }
        let killed = Exit::now(KILLED_STATUS);
        if proc.exec_id.is_some() {
            log::warn!(
                "process {} of task {} got SIGKILL {grace:?} ago and the guest reports no exit: recording it killed",
                proc.name(),
                container.id
            );
            report_exit(events.as_ref(), &container, &proc, killed).await;
            return;
        }
        log::warn!("task {} got SIGKILL {grace:?} ago and the guest reports no exit: stopping its VM", container.id);
        // Stopped first, so that nothing runs (and no agent is asked anything) once
        // containerd learns of the exit and deletes the task.
        container.vm().stop().await;
        report_exit(events.as_ref(), &container, &proc, killed.clone()).await;
        report_all(events.as_ref(), &container, killed).await;
    });
}

/// Forwards the guest's OOM kills of this container as `TaskOOM` events, while the
/// VM runs: at most one per [`Timing::oom_interval`] (more are coalesced into it),
/// and polls at most one per [`Timing::oom_min_poll`], so that an agent answering
/// `GetOomEvent` at once, forever, floods neither containerd nor the shim.
pub fn watch_oom(events: Arc<dyn Publisher>, container: Arc<Container>, timing: Timing) {
    tokio::spawn(async move {
        let mut published: Option<Instant> = None;
        let mut coalesced = 0u64;
        while container.vm().exit_code().is_none() {
            let polled = Instant::now();
            match container.guest().oom_event().await {
                Ok(Some(id)) if id == container.id => {
                    if published.is_some_and(|at| at.elapsed() < timing.oom_interval) {
                        coalesced += 1;
                    } else {
                        if coalesced > 0 {
                            log::info!("{coalesced} more OOM kill(s) in {} reported as one", container.id);
                            coalesced = 0;
                        }
                        events.publish(TaskEvent::oom(&container.id)).await;
                        published = Some(Instant::now());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    log::debug!("polling for OOM kills in {}: {e}", container.id);
                    tokio::time::sleep(OOM_RETRY).await;
                }
            }
            tokio::time::sleep_until(polled + timing.oom_min_poll).await;
        }
    });
}
