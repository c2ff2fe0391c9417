//! The jail around brig-vmm, through real containerd: every thread's posture after
//! boot, pause/resume, save-state and under vsock and blk traffic; the files,
//! namespaces, cgroup and descriptors it has; and nothing left after it.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use brig_tests::containerd::{describe, Containerd};
use brig_vmm_api::client::Client;
use sha2::Digest;

/// What a jail root holds (seen through `/proc/<pid>/root`).
const JAIL_ENTRIES: [&str; 9] =
    ["brig-vmm", "dev", "images", "initramfs.cpio", "memory", "proc", "state", "vm.json", "vmlinux"];

fn status_field(status: &str, name: &str) -> String {
    status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned()).unwrap_or_default()
}

/// The task directory (`/run/brig/<digest>`) whose `vmm.pid` is `pid`.
fn task_dir_of(pid: u32) -> PathBuf {
    std::fs::read_dir("/run/brig")
        .expect("/run/brig")
        .flatten()
        .map(|e| e.path())
        .find(|dir| std::fs::read_to_string(dir.join("vmm.pid")).is_ok_and(|p| p.trim() == pid.to_string()))
        .unwrap_or_else(|| {
            let recorded: Vec<String> = std::fs::read_dir("/run/brig")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| format!("{}: {:?}", e.path().display(), std::fs::read_to_string(e.path().join("vmm.pid"))))
                .collect();
            panic!("no task directory records brig-vmm {pid}: {recorded:#?}")
        })
}

/// Checks everything the issue asks of a jailed brig-vmm, for every thread.
fn assert_jailed(pid: u32, when: &str) {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let threads: Vec<PathBuf> =
        std::fs::read_dir(proc.join("task")).expect("threads").flatten().map(|e| e.path()).collect();
    assert!(threads.len() >= 2, "{when}: brig-vmm has a main and a vCPU thread: {threads:?}");
    for thread in &threads {
        let status = std::fs::read_to_string(thread.join("status")).expect("status");
        let name = status_field(&status, "Name:");
        let what = format!("{when}: thread {} ({name})", thread.display());
        assert_eq!(status_field(&status, "Seccomp:"), "2", "{what}: seccomp filter mode\n{status}");
        assert_eq!(status_field(&status, "NoNewPrivs:"), "1", "{what}\n{status}");
        for set in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
            assert_eq!(status_field(&status, set), "0000000000000000", "{what}: {set}\n{status}");
        }
        for ids in ["Uid:", "Gid:"] {
            let values = status_field(&status, ids);
            assert!(values.split_whitespace().all(|id| id != "0"), "{what}: {ids} {values}");
        }
    }
    // Its root is the jail: exactly what this VM needs.
    let mut root: Vec<String> = std::fs::read_dir(proc.join("root"))
        .expect("/proc/<pid>/root")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    root.sort();
    assert_eq!(root, JAIL_ENTRIES, "{when}: the jail's root");
    for ns in ["mnt", "pid", "net", "ipc", "uts", "cgroup"] {
        let own = std::fs::read_link(proc.join("ns").join(ns)).expect("ns");
        let host = std::fs::read_link(Path::new("/proc/self/ns").join(ns)).expect("host ns");
        assert_ne!(own, host, "{when}: brig-vmm shares the host's {ns} namespace");
    }
    // Its network namespace is the task's own (what CNI configures through
    // /proc/<task pid>/ns/net), bound in the task's directory.
    let ino = |path: &Path| std::fs::metadata(path).map(|m| m.ino()).expect("a namespace");
    assert_eq!(ino(&proc.join("ns/net")), ino(&task_dir_of(pid).join("netns")), "{when}: brig-vmm's netns");
    // Its cgroup is the sandbox's, with the limits.
    let cgroup = std::fs::read_to_string(proc.join("cgroup")).expect("cgroup");
    let path = cgroup.trim().strip_prefix("0::").expect("cgroup v2").to_owned();
    assert!(path.starts_with("/brig/"), "{when}: cgroup {path}");
    let dir = Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    let memory_max: u64 =
        std::fs::read_to_string(dir.join("memory.max")).expect("memory.max").trim().parse().expect("a number");
    assert_eq!(memory_max, (128 + 32) << 20, "{when}: guest memory (128 MiB) plus brig-vmm's overhead (32 MiB)");
    let pids_max = std::fs::read_to_string(dir.join("pids.max")).expect("pids.max");
    assert_eq!(pids_max.trim(), "9", "{when}: 1 vCPU + 8");
    let cpu_max = std::fs::read_to_string(dir.join("cpu.max")).expect("cpu.max");
    assert_eq!(cpu_max.trim(), "max 100000", "{when}: no CPU quota in the spec");
    // Its root is read-only; only /state is writable, and nothing in it executable.
    let mounts = std::fs::read_to_string(proc.join("mountinfo")).expect("mountinfo");
    let options = |point: &str| {
        mounts.lines().rev().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(4) == Some(&point))
                .then(|| fields.get(5).unwrap_or(&"").split(',').map(str::to_owned).collect())
        })
    };
    let root_options: Vec<String> = options("/").unwrap_or_else(|| panic!("{when}: no / in\n{mounts}"));
    assert!(
        root_options.iter().any(|o| o == "ro") && root_options.iter().any(|o| o == "noexec"),
        "{when}: / {root_options:?}"
    );
    let state_options: Vec<String> = options("/state").unwrap_or_else(|| panic!("{when}: no /state in\n{mounts}"));
    assert!(
        ["rw", "nosuid", "nodev", "noexec"].iter().all(|o| state_options.iter().any(|s| s == o)),
        "{when}: /state {state_options:?}"
    );
    // Guest RAM: an unnamed file in the jail's own huge-page tmpfs (ADR 014), and the
    // guest's touched memory in 2 MiB pages.
    let memory_options: Vec<String> = options("/memory").unwrap_or_else(|| panic!("{when}: no /memory in\n{mounts}"));
    assert!(
        ["rw", "nosuid", "nodev", "noexec"].iter().all(|o| memory_options.iter().any(|s| s == o)),
        "{when}: /memory {memory_options:?}"
    );
    let memory_fs = mounts
        .lines()
        .rev()
        .find(|line| line.split_whitespace().nth(4) == Some("/memory"))
        .and_then(|line| line.split_once(" - "))
        .map(|(_, fs)| fs.to_owned())
        .unwrap_or_default();
    assert!(
        memory_fs.starts_with("tmpfs ") && memory_fs.contains("huge=within_size"),
        "{when}: /memory is {memory_fs}"
    );
    assert_eq!(
        std::fs::read_dir(proc.join("root/memory")).expect("/memory").count(),
        0,
        "{when}: guest RAM has no name"
    );
    let huge = brig_tests::proc::memory(pid).huge_kib;
    assert!(huge >= 2048, "{when}: none of the guest's memory is in 2 MiB pages ({huge} KiB)");
    // Its descriptors: its own files, KVM's, sockets and stderr; nothing of containerd or the
    // shim. Files are compared by device and inode: their paths read differently across
    // mount namespaces.
    let task_dir = task_dir_of(pid);
    let spec = brig_policy::jail::JailSpec::from_file(&task_dir.join("jail.json")).expect("jail.json");
    let mut own: Vec<PathBuf> = spec.files.iter().map(|f| f.host.clone()).collect();
    own.extend([task_dir.join("vmm.log"), task_dir.join("jail/state/console.log"), task_dir.join("jail/dev/kvm")]);
    // The tap (its descriptor reads as /dev/net/tun's node): every VM has its NIC.
    own.extend(["/dev/null".into(), "/dev/net/tun".into()]);
    let id = |path: &Path| std::fs::metadata(path).map(|m| (m.dev(), m.ino())).ok();
    let allowed: Vec<(u64, u64)> = own.iter().filter_map(|p| id(p)).collect();
    // Guest RAM: the one unnamed file on the jail's /memory tmpfs.
    let memory_dev = std::fs::metadata(proc.join("root/memory")).expect("/memory").dev();
    for fd in std::fs::read_dir(proc.join("fd")).expect("fds").flatten() {
        let target = std::fs::read_link(fd.path()).map(|t| t.display().to_string()).unwrap_or_default();
        let expected = target.starts_with("anon_inode:")
            || target.starts_with("socket:[")
            || (target.ends_with(" (deleted)") && id(&fd.path()).is_some_and(|(dev, _)| dev == memory_dev))
            || id(&fd.path()).is_some_and(|file| allowed.contains(&file));
        assert!(
            expected,
            "{when}: brig-vmm holds fd {} → {target}, not one of {own:?}",
            fd.file_name().to_string_lossy()
        );
    }
    // Landlock: the jailer logs what the kernel enforces (the test host's 6.1: ABI 2, in full).
    let log = std::fs::read_to_string(task_dir.join("vmm.log")).expect("vmm.log");
    let abi =
        log.split("Landlock: ABI ").nth(1).and_then(|rest| rest.split(' ').next()).and_then(|n| n.parse::<u32>().ok());
    assert!(abi.is_some_and(|abi| abi >= 2) && log.contains("enforced in full"), "{when}: Landlock in vmm.log:\n{log}");
    // Its sockets are only its own (listening in its jail).
    let unix = std::fs::read_to_string(proc.join("net/unix")).expect("net/unix");
    for line in unix.lines().skip(1) {
        if let Some(path) = line.split_whitespace().nth(7) {
            assert!(path.starts_with("/state/"), "{when}: a socket outside the jail's state: {line}");
        }
    }
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn every_brig_vmm_thread_is_jailed_through_its_life() {
    brig_tests::require_kvm_host();
    let containerd = Containerd::start();
    let pid = containerd.run_idle("jailed");
    assert_jailed(pid, "after boot");

    // vsock and blk traffic: exec output through the agent, a read through the rootfs disk.
    let out = containerd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "traffic",
        "jailed",
        "sh",
        "-c",
        "cat /bin/busybox | md5sum; seq 1 20000",
    ]);
    containerd.assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("20000"), "{}", describe(&out));
    assert_jailed(pid, "after vsock and blk traffic");
    // And while traffic flows: an exec streams the rootfs through vsock until killed.
    let mut busy = containerd
        .command(&["task", "exec", "--exec-id", "busy", "jailed", "sh", "-c", "while true; do cat /bin/busybox; done"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ctr task exec");
    let mut first = [0u8; 4096];
    std::io::Read::read_exact(busy.stdout.as_mut().expect("stdout"), &mut first).expect("the exec's first output");
    assert_jailed(pid, "during vsock and blk traffic");
    containerd.assert_ok(&containerd.ctr(&["task", "kill", "--exec-id", "busy", "--signal", "SIGKILL", "jailed"]));
    drop(busy.stdout.take());
    let _ = busy.wait();

    let marker = containerd.hold_marker("jailed");
    containerd.assert_ok(&containerd.ctr(&["task", "pause", "jailed"]));
    containerd.wait_for_status("jailed", "PAUSED");
    assert_jailed(pid, "paused");
    let api = task_dir_of(pid).join("jail/state/api.sock");
    let mut control = Client::connect(&api, Duration::from_secs(5)).expect("brig-vmm's control socket");
    // The VM itself paused (ctr's pause freezes the container inside the guest).
    control.pause().expect("pause the vCPUs");
    let saved = control.save_state(Path::new("/state/saved.bin")).expect("save-state inside the jail");
    assert!(saved.bytes > 0, "{saved:?}");
    assert!(task_dir_of(pid).join("jail/state/saved.bin").is_file(), "the state file is in the jail's state/");
    let refused = control.save_state(Path::new("/vm.json")).expect_err("a file outside /state");
    assert!(!refused.to_string().is_empty());
    // Evidence goes outside the jail through a descriptor: a root-only file brig-vmm
    // could never open, sent with the request (SCM_RIGHTS).
    let evidence = std::env::temp_dir().join(format!("brig-jail-evidence-{pid}.bin"));
    let _ = std::fs::remove_file(&evidence);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&evidence)
        .expect("an evidence file outside the jail");
    let sent = control.save_state_to(&file).expect("save-state-fd into a host file");
    let written = std::fs::read(&evidence).expect("evidence");
    assert_eq!((sent.path, sent.bytes), (None, written.len() as u64), "{}", evidence.display());
    assert!(written.starts_with(b"BRIGSTAT"), "a brig state file");
    let again = control.save_state_to(&file).expect_err("a file that is not empty");
    assert!(again.to_string().contains("is not empty"), "{again}");
    std::fs::remove_file(&evidence).expect("cleanup");
    // Guest RAM as an ELF core, through a descriptor too.
    let core_path = std::env::temp_dir().join(format!("brig-jail-memory-{pid}.elf"));
    let _ = std::fs::remove_file(&core_path);
    // Through a pipe, as the brig CLI does: the file's page cache is then the reader's,
    // not charged to the sandbox's cgroup.
    let (pipe_out, pipe_in) = nix::unistd::pipe().expect("pipe");
    // The reader hashes what it receives, as the brig CLI will: brig-vmm's digest is a claim.
    let copier = {
        let core_path = core_path.clone();
        std::thread::spawn(move || -> std::io::Result<(u64, String)> {
            let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&core_path)?;
            let mut pipe = std::fs::File::from(pipe_out);
            let (mut sha, mut total, mut buf) = (sha2::Sha256::new(), 0u64, vec![0u8; 1 << 20]);
            loop {
                let n = std::io::Read::read(&mut pipe, &mut buf)?;
                if n == 0 {
                    return Ok((total, sha.finalize().iter().map(|b| format!("{b:02x}")).collect()));
                }
                sha.update(&buf[..n]);
                std::io::Write::write_all(&mut file, &buf[..n])?;
                total += n as u64;
            }
        })
    };
    let started = std::time::Instant::now();
    let dumped = control.dump_memory_to(&pipe_in, None, Duration::from_secs(120)).expect("dump-memory-fd");
    drop(pipe_in);
    let (copied, digest) = copier.join().expect("copier").expect("copy the pipe into memory.elf");
    eprintln!("dump-memory-fd: {} bytes in {:?}", dumped.bytes, started.elapsed());
    assert_eq!(copied, dumped.bytes, "the pipe carried the whole file");
    assert_eq!(dumped.sha256, digest, "brig-vmm's digest is that of what came through the pipe");
    let mut head = [0u8; 64];
    std::io::Read::read_exact(&mut std::fs::File::open(&core_path).expect("memory.elf"), &mut head).expect("header");
    assert!(head.starts_with(b"\x7fELF") && head[16] == 4, "an ELF core");
    assert_eq!((dumped.vcpus, dumped.regions), (1, 1));
    assert!(dumped.bytes > 128 << 20, "all 128 MiB of guest RAM: {} bytes", dumped.bytes);
    marker.assert_in(&core_path);
    // gdb reads the vCPU's registers from the core: those save-state recorded (the VM
    // stayed paused in between).
    let state: brig_vmm::snapshot::MachineState =
        brig_vmm::snapshot::read(&task_dir_of(pid).join("jail/state/saved.bin")).expect("state.bin verifies");
    let gdb = std::process::Command::new("gdb")
        .args(["-batch", "-nx", "-ex", "info threads", "-ex", "info registers rip rsp"])
        .arg("-c")
        .arg(&core_path)
        .output()
        .expect("gdb");
    let shown = String::from_utf8_lossy(&gdb.stdout).into_owned();
    let register = |name: &str| {
        shown.lines().find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(name))
                .then(|| words.next().and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok()))?
        })
    };
    let vcpu = &state.vcpus[0];
    assert_eq!(register("rip"), Some(vcpu.regs.rip), "gdb's rip is state.bin's: {}", describe(&gdb));
    assert_eq!(register("rsp"), Some(vcpu.regs.rsp), "gdb's rsp is state.bin's: {}", describe(&gdb));
    assert!(shown.contains("LWP 1"), "one thread per vCPU, numbered from 1: {}", describe(&gdb));
    let readelf = std::process::Command::new("readelf").args(["-l", "-n"]).arg(&core_path).output().expect("readelf");
    let listing = String::from_utf8_lossy(&readelf.stdout);
    assert!(readelf.status.success(), "{}", describe(&readelf));
    assert!(listing.contains("NT_PRSTATUS") && listing.contains("QEMU") && listing.contains("LOAD"), "{listing}");
    std::fs::remove_file(&core_path).expect("cleanup");
    assert_jailed(pid, "after save-state");
    control.resume().expect("resume the vCPUs");
    containerd.assert_ok(&containerd.ctr(&["task", "resume", "jailed"]));
    containerd.wait_for_status("jailed", "RUNNING");
    assert_jailed(pid, "resumed");

    containerd.release_marker("jailed", marker);
    containerd.assert_ok(&containerd.kill_and_delete("jailed"));
    containerd.assert_no_leftovers("a jailed task");
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn a_sigkilled_jailed_vmm_leaves_no_cgroup_uid_or_jail() {
    brig_tests::require_kvm_host();
    let containerd = Containerd::start();
    let pid = containerd.run_idle("killed");
    let dir = task_dir_of(pid);
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).expect("kill");
    containerd.wait_for_status("killed", "STOPPED");
    containerd.assert_ok(&containerd.ctr(&["task", "rm", "killed"]));
    containerd.assert_ok(&containerd.ctr(&["container", "rm", "killed"]));
    containerd.assert_no_leftovers("a SIGKILLed jailed brig-vmm");
    assert!(!dir.exists(), "{} is left", dir.display());
    let leaf = Path::new("/sys/fs/cgroup").join(cgroup.trim().trim_start_matches("0::/"));
    assert!(!leaf.exists(), "{} is left", leaf.display());
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn a_host_without_what_the_jail_needs_gets_a_clear_error() {
    brig_tests::require_kvm_host();
    // A uid range over a host user (root's group is gid 0; `daemon` is 1).
    let containerd = Containerd::start_with_brig_config("jail_uid_first = 1\njail_uid_count = 10\n");
    let out = containerd.run_with(&["--rm"], "badrange", &["true"]);
    assert!(!out.status.success());
    let text = format!("{}{}", describe(&out), containerd.log());
    assert!(text.contains("jail uid range 1-10") && text.contains("jail_uid_first"), "{text}");
    containerd.assert_no_leftovers("a refused uid range");
}

/// What stopped one simulated escape.
fn stopped_by(attempt: &str, thread: &str, seccomp: bool) -> String {
    let dir = brig_tests::scratch::Scratch::new("escape");
    let mut extra = vec!["--escape-test".to_owned(), format!("{attempt}@{thread}")];
    if !seccomp {
        extra.push("--no-seccomp".into());
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let name = format!("escape-{attempt}-{thread}-{}", if seccomp { "s" } else { "n" });
    let exec = brig_tests::artifact("BRIG_VMM_ESCAPE_BIN");
    let spec = brig_tests::jail::bare_spec(dir.path(), &name, 320_000, exec, &extra);
    let log = dir.join("stderr");
    let file = std::fs::File::create(&log).expect("stderr file");
    let mut jailed = brig_tests::jail::start(spec, file.into()).expect("brig-jailer");
    let status = jailed.jailer.wait().expect("wait");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    jailed.remove().expect("remove the jail");
    let what = format!("{attempt} on the {thread} thread{}", if seccomp { "" } else { " (--no-seccomp)" });
    assert!(!text.contains("ALLOWED"), "{what} was allowed:\n{text}");
    if seccomp && status.code() == Some(31) && text.contains("seccomp denied") {
        return "seccomp".into();
    }
    let errno = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("escape-test: {attempt} on {thread}: denied: ")))
        .unwrap_or_else(|| panic!("{what}: no report ({status}):\n{text}"))
        .to_owned();
    let errno = errno.split(':').next().unwrap_or_default().to_owned();
    let layer = match errno.as_str() {
        "ENOENT" => "the jail's root (nothing of the host is there)",
        "EACCES" => "Landlock / file ownership",
        "EROFS" => "a read-only bind mount",
        "EPERM" => "no capabilities",
        "ENETUNREACH" | "EADDRNOTAVAIL" => "the empty network namespace",
        "ESRCH" => "the PID namespace",
        other => panic!("{what}: failed with {other}, which no layer of the jail explains:\n{text}"),
    };
    format!("{layer} ({errno})")
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn simulated_escapes_from_every_thread_kind_are_stopped_and_the_layer_named() {
    brig_tests::require_kvm_host();
    let mut report = Vec::new();
    for thread in ["main", "vcpu"] {
        for attempt in sandbox_vmm_escape_attempts() {
            let first = stopped_by(attempt, thread, true);
            let behind = stopped_by(attempt, thread, false);
            report.push(format!("{attempt:<20} {thread:<5} {first:<12} then {behind}"));
        }
    }
    println!("simulated escape      thread stopped by   and without seccomp by\n{}", report.join("\n"));
    // seccomp alone must stop what the jail's other layers would let through.
    for must in ["execve-shell", "ptrace", "mount", "inet-socket"] {
        assert!(
            report.iter().filter(|l| l.starts_with(must)).all(|l| l.contains(" seccomp ")),
            "{must} is not stopped by seccomp on every thread:\n{}",
            report.join("\n")
        );
    }
}

/// The attempts brig-vmm's `--escape-test` knows (sandbox-vmm/src/escape.rs).
fn sandbox_vmm_escape_attempts() -> [&'static str; 7] {
    ["open-host-file", "connect-containerd", "execve-shell", "ptrace", "mount", "inet-socket", "write-outside-state"]
}
