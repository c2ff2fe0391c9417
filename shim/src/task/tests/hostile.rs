//! What a hostile (or broken) guest can try against the task service, and what it
//! gets: a SIGKILL acknowledged and never carried out still ends the task, an OOM
//! flood is coalesced and paced, and the task's host files are the shim's alone.

use std::os::unix::fs::PermissionsExt;

use super::*;

/// A grace short enough for a unit test.
fn quick_kill() -> Timing {
    Timing { kill_grace: Duration::from_millis(100), ..Timing::default() }
}

#[tokio::test]
async fn a_sigkill_the_guest_acknowledges_but_never_carries_out_stops_the_vm() {
    let h = Harness::with_timing("kill-ignored", quick_kill());
    // The agent says the signal went out, and no exit ever comes back.
    h.guest.hang_wait.store(true, Ordering::SeqCst);
    h.create("c1").await.expect("create");
    h.start("c1", "").await.expect("start");
    h.exec("c1", "e1").await.expect("exec");
    h.start("c1", "e1").await.expect("start the exec");
    h.kill("c1", "", 9).await.expect("acknowledged");

    let waited = h.wait("c1", "").await.expect("Wait ends within the grace and the VM's stop");
    assert_eq!(waited.exit_status, 137, "killed, not the 255 of a VM that died");
    assert!(h.host.log().contains(&"stop vm".to_owned()), "the shim stopped the VM itself: {:?}", h.host.log());
    assert_eq!(h.wait("c1", "e1").await.expect("wait the exec").exit_status, 137, "the exec died with the VM");
    assert_eq!(h.delete("c1", "e1").await.expect("delete the exec").exit_status, 137);
    let deleted = h.delete("c1", "").await.expect("delete works");
    assert_eq!(deleted.exit_status, 137);
    let mut reported = exits(&h.events);
    reported.sort();
    assert_eq!(reported, [("c1".into(), 137), ("e1".into(), 137)], "one TaskExit per process");
    assert_eq!(h.events.topics(), ["create", "start", "exec-added", "exec-started", "exit", "exit", "delete"]);
    assert!(!h.guest.calls().contains(&"remove c1".to_owned()), "a stopped VM's agent is asked nothing more");
    assert!(!h.task_dir("c1").exists());
}

#[tokio::test]
async fn an_exec_that_outlives_its_sigkill_is_recorded_killed_and_the_task_runs_on() {
    let h = Harness::with_timing("exec-kill-ignored", quick_kill());
    h.guest.hang_wait.store(true, Ordering::SeqCst);
    h.create("c1").await.expect("create");
    h.start("c1", "").await.expect("start");
    h.exec("c1", "e1").await.expect("exec");
    h.start("c1", "e1").await.expect("start the exec");
    h.kill("c1", "e1", 9).await.expect("acknowledged");
    assert_eq!(h.wait("c1", "e1").await.expect("wait").exit_status, 137);
    assert_eq!(h.delete("c1", "e1").await.expect("delete the exec").exit_status, 137);
    assert_eq!(h.status("c1", "").await, Status::RUNNING, "the container's own process is left alone");
    assert!(!h.host.log().contains(&"stop vm".to_owned()), "an exec is no reason to stop the VM");
    assert_eq!(exits(&h.events), [("e1".into(), 137)]);
}

#[tokio::test]
async fn a_sigterm_without_an_exit_is_left_to_containerd() {
    // A process may take its time over SIGTERM; containerd escalates to SIGKILL itself.
    let h = Harness::with_timing("term-ignored", quick_kill());
    h.guest.hang_wait.store(true, Ordering::SeqCst);
    h.create("c1").await.expect("create");
    h.start("c1", "").await.expect("start");
    h.kill("c1", "", 15).await.expect("acknowledged");
    tokio::time::sleep(quick_kill().kill_grace * 3).await;
    assert_eq!(h.status("c1", "").await, Status::RUNNING);
    assert!(!h.host.log().contains(&"stop vm".to_owned()));
    assert_eq!(code(h.delete("c1", "").await), Code::FAILED_PRECONDITION, "still running");
    // A process that does exit in time is reported by its waiter, not the enforcer.
    let honest = Harness::with_timing("kill-honoured", quick_kill());
    honest.create("c1").await.expect("create");
    honest.start("c1", "").await.expect("start");
    honest.kill("c1", "", 9).await.expect("kill");
    assert_eq!(honest.wait("c1", "").await.expect("wait").exit_status, 137);
    tokio::time::sleep(quick_kill().kill_grace * 3).await;
    assert!(!honest.host.log().contains(&"stop vm".to_owned()), "no VM stop for a kill that worked");
    let TaskEvent::Exit(exit) = honest.events.last() else { panic!("an exit: {:?}", honest.events.topics()) };
    assert_eq!(exit.exited_at.seconds, 1_700_000_000, "the guest's own exit time: its waiter reported it");
}

/// How many TaskOOM events, and OOM polls, a guest that answers every poll at once
/// with `oom_in` gets out of the shim in `window`.
async fn flood(name: &str, oom_in: &str, window: Duration) -> (usize, usize) {
    let h = Harness::new(name);
    *lock(&h.guest.oom_flood) = Some(oom_in.to_owned());
    h.create("c1").await.expect("create");
    tokio::time::sleep(window).await;
    let ooms = h.events.topics().iter().filter(|t| **t == "oom").count();
    let polls = h.guest.oom_polls.load(Ordering::SeqCst);
    (ooms, polls)
}

#[tokio::test]
async fn an_oom_flood_is_coalesced_and_paced() {
    let timing = Timing::default();
    let window = Duration::from_millis(1500);
    let (ooms, polls) = flood("oom-flood", "c1", window).await;
    // At t=0 and t≈1 s: never more than one per oom_interval.
    let most_events = (window.as_millis() / timing.oom_interval.as_millis()) as usize + 1;
    assert!((1..=most_events).contains(&ooms), "{ooms} TaskOOM events in {window:?}");
    let most_polls = (window.as_millis() / timing.oom_min_poll.as_millis()) as usize + 2;
    assert!(polls <= most_polls, "{polls} OOM polls in {window:?}: the watcher spins");

    // "No OOM here" at once, forever (an event for another container, or none): no spin either.
    let (ooms, polls) = flood("oom-elsewhere", "another", window).await;
    assert_eq!(ooms, 0);
    assert!(polls <= most_polls, "{polls} OOM polls in {window:?}: the watcher spins");
}

#[tokio::test]
async fn a_tasks_files_are_the_shims_alone() {
    let h = Harness::new("files");
    h.create("c1").await.expect("create");
    let dir = h.task_dir("c1");
    let mode = |p: &Path| std::fs::symlink_metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "the state directory");
    assert_eq!(mode(&dir.join("task")), 0o600, "the task file");
}

#[tokio::test]
async fn a_task_directory_that_is_not_the_shims_is_refused_and_left_alone() {
    let h = Harness::new("dir-in-the-way");
    let dir = h.task_dir("c1");
    let elsewhere = h.root.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("dir");
    std::fs::create_dir_all(dir.parent().expect("state_dir")).expect("state_dir");
    std::os::unix::fs::symlink(&elsewhere, &dir).expect("a symlink where the task directory goes");
    let err = h.create("c1").await.expect_err("refused");
    let ttrpc::Error::RpcStatus(status) = err else { panic!("a status: {err:?}") };
    assert_eq!(status.code(), Code::FAILED_PRECONDITION);
    assert!(status.message.contains("not a directory"), "{}", status.message);
    assert!(h.host.log().is_empty(), "nothing was prepared");
    assert!(std::fs::symlink_metadata(&dir).expect("still there").file_type().is_symlink(), "not removed");
    assert_eq!(std::fs::read_dir(&elsewhere).expect("dir").count(), 0, "nothing written through it");
}

#[tokio::test]
async fn a_backwards_cpuset_is_refused_before_a_vm_boots() {
    let h = Harness::new("cpuset");
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "linux": {"resources": {"cpu": {"cpus": "5-3"}}, "namespaces": [{"type": "network"}]},
    });
    std::fs::write(h.root.join("bundle/config.json"), spec.to_string()).expect("config.json");
    let err = h.create("c1").await.expect_err("refused");
    let ttrpc::Error::RpcStatus(status) = err else { panic!("a status: {err:?}") };
    assert_eq!(status.code(), Code::INVALID_ARGUMENT);
    assert!(status.message.contains("the range 5-3 runs backwards"), "{}", status.message);
    assert!(h.host.log().is_empty(), "nothing was prepared");
}
