//! Where the time of a task's start goes: the moment each step of `ctr run` was
//! reached in this shim, logged as one line when the task is deleted (and read by
//! `cargo xtask bench start`).
//!
//! One shim serves one task, so the marks are the process's own. The guest's two
//! marks (kernel entry, init) are the agent's own clock carried back to the host's:
//! the agent says in `Ping` how long the guest has been up and when it began. A
//! guest can say anything there, so they are kept only when they fall between the
//! host's own marks around them, and they are never used for anything but this line.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The steps of a task's life, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The shim server's task service exists.
    ShimUp,
    /// containerd's `Create` arrived.
    Create,
    /// The rootfs block image is ready (built, or found in the cache).
    RootfsImage,
    /// brig-vmm (or brig-jailer) was started and its pid is known.
    VmmSpawned,
    /// The guest kernel began (the guest's clock's zero, on the host's clock).
    KernelEntry,
    /// The agent, the guest's PID 1, began.
    Init,
    /// The agent answered `Ping` through brig-vmm's vsock.
    AgentReady,
    /// `Create` returned: the container exists in the guest.
    Created,
    /// `Start` of the container's own process returned.
    Started,
    /// The shim saw that process exit.
    ExitSeen,
    /// `Delete` of the task returned: the VM is gone.
    Deleted,
}

impl Step {
    pub const ALL: [Step; 11] = [
        Step::ShimUp,
        Step::Create,
        Step::RootfsImage,
        Step::VmmSpawned,
        Step::KernelEntry,
        Step::Init,
        Step::AgentReady,
        Step::Created,
        Step::Started,
        Step::ExitSeen,
        Step::Deleted,
    ];

    /// The step's name in the log line.
    pub fn name(self) -> &'static str {
        match self {
            Step::ShimUp => "shim_up",
            Step::Create => "create",
            Step::RootfsImage => "rootfs_image",
            Step::VmmSpawned => "vmm_spawned",
            Step::KernelEntry => "kernel_entry",
            Step::Init => "init",
            Step::AgentReady => "agent_ready",
            Step::Created => "created",
            Step::Started => "started",
            Step::ExitSeen => "exit_seen",
            Step::Deleted => "deleted",
        }
    }
}

/// The moments each [`Step`] was first reached.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Timeline {
    marks: [Option<SystemTime>; Step::ALL.len()],
}

impl Timeline {
    /// Notes that `step` was reached `at`; a step keeps the first moment it was reached.
    pub fn mark_at(&mut self, step: Step, at: SystemTime) {
        self.marks[step as usize].get_or_insert(at);
    }

    pub fn get(&self, step: Step) -> Option<SystemTime> {
        self.marks[step as usize]
    }

    /// The guest's marks from the agent's `Ping` answer, received `at`: the guest had
    /// been up `uptime`, and its agent began `agent_began` after the kernel. Kept
    /// only when both fall after brig-vmm was spawned and before `at`; returns
    /// whether they were.
    pub fn guest_clock(&mut self, at: SystemTime, uptime: Duration, agent_began: Duration) -> bool {
        let Some(spawned) = self.get(Step::VmmSpawned) else { return false };
        let Some(kernel) = at.checked_sub(uptime) else { return false };
        let Some(init) = kernel.checked_add(agent_began) else { return false };
        if uptime.is_zero() || kernel < spawned || init > at {
            return false;
        }
        self.mark_at(Step::KernelEntry, kernel);
        self.mark_at(Step::Init, init);
        true
    }

    /// One line: when the shim came up (Unix seconds), then each step reached with
    /// the milliseconds since the step before it; `None` before the shim was up.
    pub fn report(&self, task: &str) -> Option<String> {
        let up = self.get(Step::ShimUp)?;
        let unix = up.duration_since(UNIX_EPOCH).ok()?;
        let mut line = format!("start timeline of task {task}: shim_up at {:.6}", unix.as_secs_f64());
        let mut previous = up;
        for step in &Step::ALL[1..] {
            if let Some(at) = self.get(*step) {
                let ms = at.duration_since(previous).unwrap_or_default().as_secs_f64() * 1000.0;
                line.push_str(&format!(", {} +{ms:.1} ms", step.name()));
                previous = at;
            }
        }
        Some(line)
    }
}

/// This shim's timeline (one task per shim).
static TIMELINE: Mutex<Timeline> = Mutex::new(Timeline { marks: [None; Step::ALL.len()] });

fn with<T>(f: impl FnOnce(&mut Timeline) -> T) -> T {
    f(&mut TIMELINE.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

/// Notes that this shim's task reached `step` now.
pub fn mark(step: Step) {
    with(|timeline| timeline.mark_at(step, SystemTime::now()));
}

/// [`Timeline::guest_clock`] on this shim's timeline, at the moment of the call.
pub fn guest_clock(uptime: Duration, agent_began: Duration) {
    if !with(|timeline| timeline.guest_clock(SystemTime::now(), uptime, agent_began)) {
        log::debug!("the agent's clock ({uptime:?} up, began at {agent_began:?}) does not fit the host's; not used");
    }
}

/// Logs this shim's timeline for `task` (at info level, in containerd's log).
pub fn log(task: &str) {
    if let Some(line) = with(|timeline| timeline.report(task)) {
        log::info!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(ms)
    }

    #[test]
    fn the_report_gives_each_step_after_the_one_before() {
        let mut t = Timeline::default();
        t.mark_at(Step::ShimUp, at(0));
        t.mark_at(Step::Create, at(30));
        t.mark_at(Step::Create, at(90)); // the first moment stays
        t.mark_at(Step::VmmSpawned, at(100));
        t.mark_at(Step::AgentReady, at(1100));
        assert_eq!(
            t.report("web").as_deref(),
            Some(
                "start timeline of task web: shim_up at 1700000000.000000, create +30.0 ms, vmm_spawned +70.0 ms, \
                 agent_ready +1000.0 ms"
            )
        );
        assert_eq!(Timeline::default().report("web"), None, "no shim_up, no line");
    }

    #[test]
    fn the_guest_clock_is_carried_to_the_hosts() {
        let mut t = Timeline::default();
        t.mark_at(Step::VmmSpawned, at(100));
        assert!(t.guest_clock(at(1000), Duration::from_millis(800), Duration::from_millis(500)));
        assert_eq!((t.get(Step::KernelEntry), t.get(Step::Init)), (Some(at(200)), Some(at(700))));
    }

    #[test]
    fn a_guest_clock_that_does_not_fit_is_not_used() {
        let fits = |uptime: u64, began: u64| {
            let mut t = Timeline::default();
            t.mark_at(Step::VmmSpawned, at(100));
            let kept = t.guest_clock(at(1000), Duration::from_millis(uptime), Duration::from_millis(began));
            assert_eq!(kept, t.get(Step::KernelEntry).is_some(), "kept means marked");
            kept
        };
        assert!(fits(900, 900), "the kernel began as brig-vmm did, the agent as it answered");
        assert!(!fits(0, 0), "an agent that says nothing");
        assert!(!fits(901, 0), "a kernel that began before brig-vmm did");
        assert!(!fits(500, 501), "an agent that began after it answered");
        assert!(!fits(u64::MAX / 2, 0), "an uptime beyond the host's clock");
        assert!(!fits(900, u64::MAX), "an agent that began beyond any clock");
        let mut never_spawned = Timeline::default();
        assert!(!never_spawned.guest_clock(at(1000), Duration::from_millis(10), Duration::ZERO));
    }
}
