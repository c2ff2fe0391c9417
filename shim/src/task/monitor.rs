//! What the shim watches in the background for a task: each started process's
//! exit, the VM dying under it, and OOM kills in the guest.

use std::sync::Arc;
use std::time::Duration;

use super::container::Container;
use super::events::{Publisher, TaskEvent};
use super::process::{Exit, Process, VM_DIED_STATUS};

/// How long the OOM watcher waits after a failed poll before asking again.
const OOM_RETRY: Duration = Duration::from_secs(1);

/// Records the exit of `proc` and publishes it, once: from its waiter, or from the
/// VM monitor, whichever comes first.
async fn report_exit(events: &dyn Publisher, container: &Container, proc: &Process, exit: Exit) {
    if proc.record_exit(exit.clone()) {
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
        log::error!("brig-vmm of task {} exited unexpectedly ({code})", container.id);
        let exit = Exit::now(VM_DIED_STATUS);
        for proc in container.processes() {
            report_exit(events.as_ref(), &container, &proc, exit.clone()).await;
        }
    });
}

/// Forwards the guest's OOM kills of this container as `TaskOOM` events, while the VM runs.
pub fn watch_oom(events: Arc<dyn Publisher>, container: Arc<Container>) {
    tokio::spawn(async move {
        while container.vm().exit_code().is_none() {
            match container.guest().oom_event().await {
                Ok(Some(id)) if id == container.id => events.publish(TaskEvent::oom(&container.id)).await,
                Ok(_) => {}
                Err(e) => {
                    log::debug!("polling for OOM kills in {}: {e}", container.id);
                    tokio::time::sleep(OOM_RETRY).await;
                }
            }
        }
    });
}
