//! Child reaping for PID 1.
//!
//! SIGCHLD is blocked in every thread and taken through a signalfd by one reaper
//! thread, which collects every exited child with `waitpid(-1)` (and also every
//! [`POLL_INTERVAL`], in case a thread started before the mask was set swallowed
//! the signal): orphans
//! re-parented to PID 1 are reaped and forgotten, and children started through
//! [`Reaper::spawn`] have their status delivered to whoever waits for them.
//! `spawn` registers the pid before the reaper can see it exit, so no status is
//! lost. A child that is only known after it started (a process an exec helper
//! forked with `CLONE_PARENT`) is claimed with [`Reaper::watch`]; the last
//! [`UNCLAIMED`] statuses nobody waited for are kept for that case. Nothing else in
//! the agent may call `wait` on a child.

use std::collections::HashMap;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use std::os::fd::AsFd;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How often the reaper looks for exited children without being signalled.
pub const POLL_INTERVAL: u16 = 100; // ms
/// Exit statuses of unregistered children kept for a late [`Reaper::watch`].
pub const UNCLAIMED: usize = 256;

#[derive(Debug, Default)]
struct State {
    waiters: HashMap<Pid, Sender<WaitStatus>>,
    unclaimed: std::collections::VecDeque<(Pid, WaitStatus)>,
}

#[derive(Debug, Default)]
pub struct Reaper {
    state: Mutex<State>,
}

impl Reaper {
    /// Blocks SIGCHLD in this thread (call before starting any other thread, so they
    /// inherit the mask) and starts the reaper thread.
    pub fn start() -> std::io::Result<Arc<Reaper>> {
        let mut set = SigSet::empty();
        set.add(Signal::SIGCHLD);
        set.thread_block().map_err(std::io::Error::from)?;
        let signals =
            SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).map_err(std::io::Error::from)?;
        let reaper = Arc::new(Reaper::default());
        let this = reaper.clone();
        std::thread::Builder::new().name("reaper".into()).spawn(move || loop {
            let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
            if let Ok(n) = poll(&mut fds, PollTimeout::from(POLL_INTERVAL)) {
                if n > 0 {
                    // Drain: one read per queued SIGCHLD; waitpid below collects them all anyway.
                    while let Ok(Some(_)) = signals.read_signal() {}
                }
            }
            this.reap_all();
        })?;
        Ok(reaper)
    }

    /// Starts a child with `start` (which returns its pid) and returns a receiver for
    /// its wait status. The pid is registered before the reaper can collect it.
    pub fn spawn<E>(&self, start: impl FnOnce() -> Result<Pid, E>) -> Result<(Pid, Receiver<WaitStatus>), E> {
        let mut state = self.lock();
        let pid = start()?;
        let (tx, rx) = channel();
        state.waiters.insert(pid, tx);
        Ok((pid, rx))
    }

    /// Claims an already running child (or one that just exited) of this process.
    pub fn watch(&self, pid: Pid) -> Receiver<WaitStatus> {
        let mut state = self.lock();
        let (tx, rx) = channel();
        if let Some(at) = state.unclaimed.iter().position(|(p, _)| *p == pid) {
            if let Some((_, status)) = state.unclaimed.remove(at) {
                let _ = tx.send(status);
            }
        } else {
            state.waiters.insert(pid, tx);
        }
        rx
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Collects every child that has exited.
    pub fn reap_all(&self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status) => {
                    let Some(pid) = status.pid() else { continue };
                    let finished = matches!(status, WaitStatus::Exited(..) | WaitStatus::Signaled(..));
                    let mut state = self.lock();
                    if finished {
                        match state.waiters.remove(&pid) {
                            Some(tx) => {
                                let _ = tx.send(status);
                            }
                            None => {
                                if state.unclaimed.len() == UNCLAIMED {
                                    state.unclaimed.pop_front();
                                }
                                state.unclaimed.push_back((pid, status));
                            }
                        }
                    }
                }
                Err(Errno::EINTR) => {}
                Err(e) => {
                    log::error!("waitpid failed: {e}");
                    return;
                }
            }
        }
    }
}
