//! The reaper leaves no zombies: orphans re-parented to us are collected, and a
//! spawned child's status reaches its waiter. Runs as its own process (reaping is
//! process-wide), marked a child subreaper to stand in for PID 1.

use std::process::Command;
use std::time::{Duration, Instant};

use brig_agent::reaper::Reaper;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

fn zombies_of(parent: u32) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r.trim().to_owned()) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") && fields.get(1) == Some(&parent.to_string().as_str()) {
            found.push(stat);
        }
    }
    found
}

/// Starts a command and forgets its handle: only the reaper waits for it.
#[allow(clippy::zombie_processes)] // the reaper under test collects it
fn spawn(cmd: &mut Command) -> std::io::Result<Pid> {
    cmd.spawn().map(|child| Pid::from_raw(child.id() as i32))
}

#[test]
fn orphans_are_reaped_and_spawned_children_report_their_status() {
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
    let reaper = Reaper::start().expect("reaper");

    // A child that leaves two orphans behind, which become ours and die.
    let (pid, exited) =
        reaper.spawn(|| spawn(Command::new("sh").args(["-c", "sleep 0.2 & sleep 0.3 & exit 0"]))).expect("sh");
    assert_eq!(exited.recv_timeout(Duration::from_secs(5)).expect("status"), WaitStatus::Exited(pid, 0));

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let zombies = zombies_of(std::process::id());
        let orphans_alive = std::fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .any(|s| s.contains("(sleep)") && s.contains(&format!(" {} ", std::process::id())));
        if zombies.is_empty() && !orphans_alive {
            break;
        }
        assert!(Instant::now() < deadline, "zombies left: {zombies:?}");
    }

    // A child claimed after it exited still reports its status.
    let pid = spawn(Command::new("sh").args(["-c", "exit 5"])).expect("sh");
    std::thread::sleep(Duration::from_millis(3 * u64::from(brig_agent::reaper::POLL_INTERVAL)));
    let status = reaper.watch(pid).recv_timeout(Duration::from_secs(5)).expect("late status");
    assert_eq!(status, WaitStatus::Exited(pid, 5));

    // A killed child reports its signal.
    let (pid, exited) = reaper.spawn(|| spawn(Command::new("sleep").arg("10"))).expect("sleep");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill");
    assert_eq!(
        exited.recv_timeout(Duration::from_secs(5)).expect("status"),
        WaitStatus::Signaled(pid, nix::sys::signal::Signal::SIGKILL, false)
    );
}
