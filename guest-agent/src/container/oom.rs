//! OOM events: a thread watches every container's `memory.events` and queues the
//! container id whenever its `oom_kill` count grows.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use super::Manager;

/// How often cgroup counters are looked at.
const INTERVAL: Duration = Duration::from_millis(200);
/// Queued events beyond this are dropped (nobody is asking).
const QUEUE: usize = 1024;

#[derive(Debug, Default)]
pub struct OomWatch {
    queue: Mutex<VecDeque<String>>,
    ready: Condvar,
}

impl OomWatch {
    pub fn next(&self, timeout: Duration) -> Option<String> {
        let queue = self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (mut queue, _) = self
            .ready
            .wait_timeout_while(queue, timeout, |q| q.is_empty())
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        queue.pop_front()
    }

    fn push(&self, id: String) {
        let mut queue = self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if queue.len() < QUEUE {
            queue.push_back(id);
        }
        self.ready.notify_all();
    }
}

/// Starts the watcher; it ends when the manager is dropped.
pub fn start(manager: &Arc<Manager>) {
    let weak: Weak<Manager> = Arc::downgrade(manager);
    std::thread::spawn(move || {
        let mut seen: HashMap<String, u64> = HashMap::new();
        while let Some(manager) = weak.upgrade() {
            let mut live = HashMap::new();
            for container in manager.containers() {
                let kills = container.cgroup.oom_kills();
                let before = seen.get(&container.id).copied().unwrap_or(0);
                if kills > before {
                    log::info!("container {} had an OOM kill", container.id);
                    manager.oom.push(container.id.clone());
                }
                live.insert(container.id.clone(), kills);
            }
            seen = live;
            drop(manager);
            std::thread::sleep(INTERVAL);
        }
    });
}
