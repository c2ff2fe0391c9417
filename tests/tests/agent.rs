//! brig-agent as an OCI runtime inside a real guest: processes, I/O, the cgroup
//! operations, bad requests, and containment. Each test boots one VM and runs
//! several containers in it.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use brig_protocol::agent::*;
use brig_protocol::stdio::Stream;
use brig_protocol::ttrpc::Code;
use brig_tests::container::{code, ctx, default_spec, process, AgentVm};
use serde_json::json;

fn stdio_out() -> Stdio {
    Stdio { stdout: true, stderr: true, ..Default::default() }
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn exit_codes_signals_env_cwd_and_user_follow_the_spec() {
    brig_tests::require_kvm_host();
    let mut vm = AgentVm::start();

    let (exit, _, _) = vm.run("exit42", &default_spec(&["sh", "-c", "exit 42"])).expect("run");
    assert_eq!((exit.exit_code, exit.signal), (42, 0));

    let mut spec = default_spec(&["sh", "-c", "echo \"$GREETING\"; pwd; id -u; id -g; id -G; echo err >&2"]);
    spec["process"]["env"] = json!(["PATH=/bin:/usr/bin", "GREETING=hello brig"]);
    spec["process"]["cwd"] = json!("/tmp");
    spec["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [5, 1000]});
    let (exit, out, err) = vm.run("identity", &spec).expect("run");
    assert_eq!(exit.exit_code, 0, "{err}");
    assert_eq!(out, "hello brig\n/tmp\n1000\n1000\n1000 5\n");
    assert_eq!(err, "err\n");

    // A signal ends a process with 128 + signal and reports the signal.
    vm.create("sleeper", &default_spec(&["sleep", "1000"]), stdio_out()).expect("create");
    vm.start_container("sleeper").expect("start");
    let kill = SignalProcessRequest { container_id: "sleeper".into(), signal: 9, ..Default::default() };
    vm.agent.signal_process(ctx(), &kill).expect("kill");
    let exit = vm.wait("sleeper", "").expect("wait");
    assert_eq!((exit.exit_code, exit.signal), (137, 9));
    let again = vm.agent.signal_process(ctx(), &kill).expect_err("already exited");
    assert_eq!(code(&again), Some(Code::NOT_FOUND));
    vm.remove("sleeper").expect("remove");

    // A missing executable is an error at start, not a hang.
    vm.create("missing", &default_spec(&["/no/such/binary"]), stdio_out()).expect("create");
    let err = vm.start_container("missing").expect_err("exec fails");
    assert_eq!(code(&err), Some(Code::FAILED_PRECONDITION), "{err:?}");
    assert!(format!("{err:?}").contains("/no/such/binary"), "{err:?}");
    vm.remove("missing").expect("remove");
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn ten_mib_of_binary_data_echo_through_stdin_and_stdout_intact() {
    brig_tests::require_kvm_host();
    let mut vm = AgentVm::start();
    let stdio = Stdio { stdin: true, stdout: true, stderr: true, ..Default::default() };
    vm.create("cat", &default_spec(&["cat"]), stdio).expect("create");
    let mut input = vm.attach("cat", "", Stream::Stdin).expect("stdin");
    let mut output = vm.attach("cat", "", Stream::Stdout).expect("stdout");
    vm.start_container("cat").expect("start");

    let data: Vec<u8> = (0u32..(10 << 20) / 4).flat_map(|i| i.wrapping_mul(0x9e37_79b9).to_le_bytes()).collect();
    let to_send = data.clone();
    let writer = std::thread::spawn(move || {
        input.write_all(&to_send).expect("stdin");
        input.shutdown(std::net::Shutdown::Write).expect("close stdin");
    });
    let start = Instant::now();
    let mut echoed = Vec::with_capacity(data.len());
    output.read_to_end(&mut echoed).expect("stdout");
    writer.join().expect("writer");
    assert_eq!(echoed.len(), data.len());
    assert!(echoed == data, "the echoed bytes differ");
    eprintln!("10 MiB echoed in {:?}", start.elapsed());
    assert_eq!(vm.wait("cat", "").expect("wait").exit_code, 0, "cat saw EOF on stdin and exited");
    vm.remove("cat").expect("remove");

    // CloseStdin ends an attached stdin too.
    let stdio = Stdio { stdin: true, stdout: true, ..Default::default() };
    vm.create("cat2", &default_spec(&["cat"]), stdio).expect("create");
    let _input = vm.attach("cat2", "", Stream::Stdin).expect("stdin");
    let mut output = vm.attach("cat2", "", Stream::Stdout).expect("stdout");
    vm.start_container("cat2").expect("start");
    let close = CloseStdinRequest { container_id: "cat2".into(), ..Default::default() };
    vm.agent.close_stdin(ctx(), &close).expect("close stdin");
    let mut rest = String::new();
    output.read_to_string(&mut rest).expect("stdout ends");
    assert_eq!(vm.wait("cat2", "").expect("wait").exit_code, 0);
    vm.remove("cat2").expect("remove");
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn a_terminal_is_the_containers_own_pty_and_resizes() {
    brig_tests::require_kvm_host();
    let mut vm = AgentVm::start();
    // The pty comes from the container's devpts (as runc makes it): `tty` names it, and
    // /dev/console is the same device.
    let report = "stty size; tty; stat -L -c %t:%T /dev/console /proc/self/fd/0";
    let mut spec = default_spec(&["sh", "-c", &format!("{report}; read line; echo got $line")]);
    spec["process"]["terminal"] = json!(true);
    let stdio = Stdio { stdin: true, stdout: true, terminal: true, ..Default::default() };
    vm.create("tty", &spec, stdio).expect("create");
    let resize = ResizePtyRequest { container_id: "tty".into(), width: 123, height: 45, ..Default::default() };
    vm.agent.resize_pty(ctx(), &resize).expect("resize");
    let mut input = vm.attach("tty", "", Stream::Stdin).expect("stdin");
    let mut output = vm.attach("tty", "", Stream::Stdout).expect("stdout");
    vm.start_container("tty").expect("start");

    // An exec'd process gets a pty of its own from the same devpts.
    let mut exec = process(&["tty"]);
    exec["terminal"] = json!(true);
    let request = ExecProcessRequest {
        container_id: "tty".into(),
        exec_id: "t2".into(),
        process: serde_json::to_vec(&exec).expect("json"),
        stdio: Some(Stdio { stdout: true, terminal: true, ..Default::default() }).into(),
        ..Default::default()
    };
    vm.agent.exec_process(ctx(), &request).expect("exec with a terminal");
    let mut exec_out = String::new();
    vm.attach("tty", "t2", Stream::Stdout).expect("attach").read_to_string(&mut exec_out).expect("read");
    assert_eq!(exec_out.replace('\r', ""), "/dev/pts/1\n");
    assert_eq!(vm.wait("tty", "t2").expect("wait").exit_code, 0);

    // Type only once the report is out: the pty echoes what is typed at once, and
    // typed early, the echo came before the report (seen once in CI).
    let mut text = Vec::new();
    output.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut chunk = [0u8; 256];
    while String::from_utf8_lossy(&text).matches("88:0").count() < 2 {
        match output.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => text.extend_from_slice(&chunk[..n]),
        }
    }
    input.write_all(b"typed\n").expect("type");
    let exit = vm.wait("tty", "").expect("wait");
    output.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let _ = output.read_to_end(&mut text);
    let text = String::from_utf8_lossy(&text).replace('\r', "");
    assert_eq!(exit.exit_code, 0, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[..3], ["45 123", "/dev/pts/0", "88:0"], "stty sees the resize; tty names the pty: {text:?}");
    assert_eq!(lines[3], "88:0", "/dev/console is the container's pty: {text:?}");
    assert!(text.contains("got typed"), "input reaches the process through the pty: {text:?}");
    vm.remove("tty").expect("remove");
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn exec_pause_resume_update_stats_processes_and_oom() {
    brig_tests::require_kvm_host();
    let mut vm = AgentVm::start();
    let mut spec = default_spec(&["sleep", "1000"]);
    spec["linux"]["resources"] = json!({"memory": {"limit": 32 << 20}, "pids": {"limit": 64}});
    vm.create("box", &spec, Stdio::default()).expect("create");
    vm.start_container("box").expect("start");

    // Exec with its own env, cwd and exit code.
    let mut exec = process(&["sh", "-c", "echo \"in $PWD as $(id -u): $X\"; exit 3"]);
    exec["env"] = json!(["PATH=/bin", "X=exec'd"]);
    exec["cwd"] = json!("/etc");
    let request = ExecProcessRequest {
        container_id: "box".into(),
        exec_id: "e1".into(),
        process: serde_json::to_vec(&exec).expect("json"),
        stdio: Some(Stdio { stdout: true, ..Default::default() }).into(),
        ..Default::default()
    };
    vm.agent.exec_process(ctx(), &request).expect("exec");
    let mut out = String::new();
    vm.attach("box", "e1", Stream::Stdout).expect("attach").read_to_string(&mut out).expect("read");
    assert_eq!(out, "in /etc as 0: exec'd\n");
    assert_eq!(vm.wait("box", "e1").expect("wait").exit_code, 3);
    let again = vm.agent.exec_process(ctx(), &request).expect_err("same exec id");
    assert_eq!(code(&again), Some(Code::ALREADY_EXISTS));

    // Processes, pause (the freezer) and resume.
    let pids = vm
        .agent
        .list_processes(ctx(), &ListProcessesRequest { container_id: "box".into(), ..Default::default() })
        .expect("ps");
    assert_eq!(pids.pids.len(), 1, "{:?}", pids.pids);
    let pause = PauseContainerRequest { container_id: "box".into(), ..Default::default() };
    vm.agent.pause_container(ctx(), &pause).expect("pause");
    let frozen = vm.agent.exec_process(ctx(), &ExecProcessRequest { exec_id: "e2".into(), ..request.clone() });
    assert_eq!(code(&frozen.expect_err("no exec while paused")), Some(Code::FAILED_PRECONDITION));
    vm.agent
        .resume_container(ctx(), &ResumeContainerRequest { container_id: "box".into(), ..Default::default() })
        .expect("resume");

    // Stats reflect the limits; update changes them.
    let stats = vm
        .agent
        .stats_container(ctx(), &StatsContainerRequest { container_id: "box".into(), ..Default::default() })
        .expect("stats");
    assert_eq!(stats.memory.limit_bytes, 32 << 20);
    assert_eq!(stats.pids.limit, 64);
    assert!(stats.pids.current >= 1);
    assert!(stats.cpu.usage_usec > 0);
    let update = UpdateContainerRequest {
        container_id: "box".into(),
        resources: serde_json::to_vec(&json!({"pids": {"limit": 10}})).expect("json"),
        ..Default::default()
    };
    vm.agent.update_container(ctx(), &update).expect("update");
    let stats = vm
        .agent
        .stats_container(ctx(), &StatsContainerRequest { container_id: "box".into(), ..Default::default() })
        .expect("stats");
    assert_eq!(stats.pids.limit, 10);

    // Allocating past the memory limit gets the container OOM-killed, and the event is reported.
    // One 64 MiB read into one buffer: the limit is crossed in a single system call, however
    // slow the emulated test host is (`head | tail` grew its buffer in small steps, each a
    // copy, and on a slow CI machine it had not reached the limit when GetOomEvent gave up).
    let hog = process(&["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]);
    let request = ExecProcessRequest {
        container_id: "box".into(),
        exec_id: "hog".into(),
        process: serde_json::to_vec(&hog).expect("json"),
        ..Default::default()
    };
    vm.agent.exec_process(ctx(), &request).expect("exec hog");
    let event = vm.agent.get_oom_event(ctx(), &GetOomEventRequest::new()).expect("an OOM event");
    assert_eq!(event.container_id, "box");
    let hog_exit = vm.wait("box", "hog").expect("wait");
    assert_ne!(hog_exit.exit_code, 0);
    vm.remove("box").expect("remove");
    let gone =
        vm.agent.stats_container(ctx(), &StatsContainerRequest { container_id: "box".into(), ..Default::default() });
    assert_eq!(code(&gone.expect_err("removed")), Some(Code::NOT_FOUND));
    // The id is free again, and nothing of the old container is left in the way.
    let (exit, _, _) = vm.run("box", &default_spec(&["true"])).expect("rerun");
    assert_eq!(exit.exit_code, 0);
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn bad_and_hostile_requests_get_status_codes_and_the_agent_survives() {
    brig_tests::require_kvm_host();
    let mut vm = AgentVm::start();
    let ok_spec = default_spec(&["true"]);
    let wait = WaitProcessRequest { container_id: "nope".into(), ..Default::default() };
    assert_eq!(code(&vm.agent.wait_process(ctx(), &wait).expect_err("unknown")), Some(Code::NOT_FOUND));
    for id in ["../escape", "a/b", "", ".hidden"] {
        let err = vm.create(id, &ok_spec, Stdio::default()).expect_err("bad id");
        assert_eq!(code(&err), Some(Code::INVALID_ARGUMENT), "{id:?}: {err:?}");
    }
    let mut relative = ok_spec.clone();
    relative["mounts"] = json!([{"destination": "relative/dir", "type": "tmpfs", "source": "tmpfs"}]);
    assert_eq!(
        code(&vm.create("rel", &relative, Stdio::default()).expect_err("relative")),
        Some(Code::INVALID_ARGUMENT)
    );
    let mut cwd = ok_spec.clone();
    cwd["process"]["cwd"] = json!("../..");
    assert_eq!(code(&vm.create("cwd", &cwd, Stdio::default()).expect_err("cwd")), Some(Code::INVALID_ARGUMENT));
    let mut userns = ok_spec.clone();
    userns["linux"]["namespaces"] = json!([{"type": "user"}]);
    assert_eq!(code(&vm.create("userns", &userns, Stdio::default()).expect_err("userns")), Some(Code::UNIMPLEMENTED));

    let garbage = CreateContainerRequest {
        container_id: "garbage".into(),
        oci_spec: b"{not json".to_vec(),
        ..Default::default()
    };
    assert_eq!(code(&vm.agent.create_container(ctx(), &garbage).expect_err("garbage")), Some(Code::INVALID_ARGUMENT));
    let huge =
        CreateContainerRequest { container_id: "huge".into(), oci_spec: vec![b' '; 3 << 20], ..Default::default() };
    assert!(vm.agent.create_container(ctx(), &huge).is_err(), "a 3 MiB spec is refused");

    // Raw garbage on the agent's port, and an oversized frame header, then a normal call.
    for junk in [vec![0xffu8; 4096], b"\x7f\xff\xff\xff\x00\x00\x00\x01\x01\x00".to_vec()] {
        let mut raw = vm.vm.connect(brig_protocol::AGENT_VSOCK_PORT, Duration::from_secs(10)).expect("connect");
        let _ = raw.write_all(&junk);
        let _ = raw.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        raw.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let _ = raw.read_to_end(&mut sink);
    }
    vm.agent.ping(ctx(), &PingRequest::new()).expect("the agent still answers");
    let (exit, _, _) = vm.run("after", &ok_spec).expect("still runs containers");
    assert_eq!(exit.exit_code, 0);
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn the_workload_is_contained() {
    brig_tests::require_kvm_host();
    let mut vm = AgentVm::start();
    let probe = "/usr/bin/brig-guest-probe";

    // No vsock for containers: not the agent (guest CID 3, loopback 1), not the host (2).
    let mut spec = default_spec(&[
        probe,
        "probe.vsock-connect=3:1024",
        "probe.vsock-connect=1:1024",
        "probe.vsock-connect=2:1024",
    ]);
    spec["process"]["capabilities"] = json!({"bounding": [], "effective": [], "permitted": []});
    let (_, out, _) = vm.run("vsock", &spec).expect("run");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    for line in lines {
        assert!(line.starts_with("probe: vsock-connect error: socket: EACCES"), "{line}");
    }

    // Even as root with every capability, a container cannot open the agent's binary for
    // writing while processes are exec'd into it (the CVE-2019-5736 attack).
    let mut spec = default_spec(&[probe, "probe.overwrite-exe=6"]);
    let all: Vec<String> = caps_all();
    spec["process"]["capabilities"] = json!({"bounding": all, "effective": all, "permitted": all});
    spec["process"]["noNewPrivileges"] = json!(false);
    vm.create("attacker", &spec, stdio_out()).expect("create");
    let mut out = vm.attach("attacker", "", Stream::Stdout).expect("stdout");
    vm.start_container("attacker").expect("start");
    for i in 0..10 {
        let exec = ExecProcessRequest {
            container_id: "attacker".into(),
            exec_id: format!("victim{i}"),
            process: serde_json::to_vec(&process(&["true"])).expect("json"),
            ..Default::default()
        };
        if let Err(e) = vm.agent.exec_process(ctx(), &exec) {
            let mut early = String::new();
            let _ = out.read_to_string(&mut early);
            panic!("exec {i}: {e:?}; the attacker printed: {early:?}");
        }
        vm.wait("attacker", &format!("victim{i}")).expect("wait");
    }
    let mut report = String::new();
    out.read_to_string(&mut report).expect("report");
    assert!(report.contains("probe: overwrite-exe ok:"), "{report}");
    assert!(report.contains(" 0 opened []"), "{report}");
    assert!(!report.contains(" 0 attempts"), "the attacker saw exec'd processes: {report}");
    vm.remove("attacker").expect("remove");

    // With CAP_MKNOD (containerd's default), a node for the guest's disk can be neither made nor read:
    // the device cgroup program denies it.
    let script = "dev=$(cat /sys/block/vda/dev); mknod /tmp/disk b ${dev%:*} ${dev#*:} 2>&1; \
                  head -c 1 /tmp/disk >/dev/null 2>&1 && echo READ || echo denied; echo ok > /dev/null && echo null-ok";
    let (_, out, _) = vm.run("mknod", &default_spec(&["sh", "-c", script])).expect("run");
    assert!(out.contains("Operation not permitted"), "mknod of the disk is refused: {out}");
    assert!(out.contains("denied\n") && out.contains("null-ok"), "{out}");

    // A mount through a symlink that points outside the rootfs lands inside it.
    let mut spec =
        default_spec(&["sh", "-c", "ls -d /escape/target && cat /proc/self/mountinfo | grep -c ' /escape/target '"]);
    spec["mounts"].as_array_mut().expect("mounts").push(json!(
        {"destination": "/etc/evil/target", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]}
    ));
    spec["process"]["env"] = json!(["PATH=/bin"]);
    let (exit, out, err) = vm.run("symlink", &spec).expect("run");
    assert_eq!(exit.exit_code, 0, "{out}{err}");
    assert_eq!(out, "/escape/target\n1\n", "the tmpfs is inside the container at the symlink's target");
    let info = vm.agent.guest_info(ctx(), &GuestInfoRequest::new()).expect("agent alive");
    assert!(info.uptime_ms > 0);
}

fn caps_all() -> Vec<String> {
    [
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
    ]
    .iter()
    .map(|c| format!("CAP_{c}"))
    .collect()
}
