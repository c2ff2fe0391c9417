//! The `brig` operator CLI through real containerd: `brig ps` lists every sandbox
//! with what its brig-vmm says (never the guest), and follows it through pause,
//! a SIGKILLed VMM and delete.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use brig_tests::containerd::{describe, Containerd};
use brig_vmm_api::client::Client;
use serde_json::Value;

fn brig(args: &[&str]) -> Output {
    Command::new(brig_tests::artifact("BRIG_CLI_BIN")).args(args).output().expect("run brig")
}

/// `brig ps --json`, by container id.
fn ps() -> Vec<Value> {
    let out = brig(&["ps", "--json"]);
    assert!(out.status.success(), "brig ps --json: {}", describe(&out));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)))
}

fn row<'a>(rows: &'a [Value], id: &str) -> Option<&'a Value> {
    rows.iter().find(|r| r["id"] == id)
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn brig_ps_shows_each_sandbox_as_its_vmm_sees_it() {
    brig_tests::require_kvm_host();
    let containerd = Containerd::start();
    let (a, b) = (containerd.run_idle("ps-a"), containerd.run_idle("ps-b"));
    let rows = ps();
    for (id, pid) in [("ps-a", a), ("ps-b", b)] {
        let r = row(&rows, id).unwrap_or_else(|| panic!("{id} missing from {rows:#?}"));
        assert_eq!(r["namespace"], "default", "{r}");
        assert_eq!(r["state"], "running", "{r}");
        assert_eq!((r["vcpus"].as_u64(), r["memory_mib"].as_u64()), (Some(1), Some(128)), "{r}");
        assert_eq!(r["vmm_pid"].as_u64(), Some(u64::from(pid)), "the pid containerd reports: {r}");
        assert_eq!(r["jailed"], true, "{r}");
        assert!(r["image"].as_str().is_some_and(|i| i.starts_with("rootfs ")), "{r}");
        assert!(r["uptime_secs"].as_u64().is_some(), "{r}");
        assert_eq!(r["pod"], Value::Null, "ctr makes no pod: {r}");
    }
    let table = brig(&["ps"]);
    assert!(table.status.success(), "{}", describe(&table));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("ID ") && text.lines().next().is_some_and(|h| h.contains("STATE")), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("ps-a ") && l.contains("running") && l.contains(&a.to_string())),
        "{text}"
    );

    // Paused through brig-vmm's control socket: the VM's own state, not the container's.
    let dir = row(&rows, "ps-b").and_then(|r| r["dir"].as_str()).expect("dir").to_owned();
    let mut control = Client::connect(&Path::new(&dir).join("jail/state/api.sock"), Duration::from_secs(5))
        .expect("ps-b's control socket");
    control.pause().expect("pause");
    assert_eq!(row(&ps(), "ps-b").map(|r| r["state"].clone()), Some("paused".into()));
    control.resume().expect("resume");
    assert_eq!(row(&ps(), "ps-b").map(|r| r["state"].clone()), Some("running".into()));

    // A SIGKILLed brig-vmm: `exited` until containerd deletes the task.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(a as i32), nix::sys::signal::Signal::SIGKILL).expect("kill");
    containerd.wait_for_status("ps-a", "STOPPED");
    let after = ps();
    let r = row(&after, "ps-a").unwrap_or_else(|| panic!("a stopped task is listed until deleted: {after:#?}"));
    assert_eq!(r["state"], "exited", "{r}");
    assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "says why: {r}");
    // A snapshot of a VM that is gone says so and makes nothing.
    let never = std::env::temp_dir().join(format!("brig-snapshot-exited-{a}"));
    let out = brig(&["snapshot", "ps-a", "-o", &never.to_string_lossy()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("has exited"), "{}", describe(&out));
    assert!(!never.exists(), "no output directory for a VM that is gone");
    containerd.assert_ok(&containerd.ctr(&["task", "rm", "ps-a"]));
    containerd.assert_ok(&containerd.ctr(&["container", "rm", "ps-a"]));
    containerd.assert_ok(&containerd.kill_and_delete("ps-b"));
    let gone = ps();
    assert!(row(&gone, "ps-a").is_none() && row(&gone, "ps-b").is_none(), "{gone:#?}");
    containerd.assert_no_leftovers("brig ps");
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn brig_help_reads_like_a_man_page_and_bad_input_is_named() {
    brig_tests::require_kvm_host();
    let help = brig(&["--help"]);
    assert!(help.status.success(), "{}", describe(&help));
    let text = String::from_utf8_lossy(&help.stdout);
    for section in ["Usage: brig", "ps", "FILES", "EXIT STATUS", "/etc/brig/config.toml"] {
        assert!(text.contains(section), "`brig --help` lacks {section}:\n{text}");
    }
    let ps_help = String::from_utf8_lossy(&brig(&["ps", "--help"]).stdout).into_owned();
    assert!(ps_help.contains("--json") && ps_help.contains("unreachable"), "{ps_help}");
    let bad = brig(&["frobnicate"]);
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("frobnicate"), "{}", describe(&bad));
    // A configuration that cannot be read is named, with the file.
    let broken = std::env::temp_dir().join(format!("brig-cli-bad-{}.toml", std::process::id()));
    std::fs::write(&broken, "state_dir = [\n").expect("config");
    let out = Command::new(brig_tests::artifact("BRIG_CLI_BIN"))
        .args(["ps"])
        .env("BRIG_CONFIG", &broken)
        .output()
        .expect("run brig");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&broken.display().to_string()), "{}", describe(&out));
    std::fs::remove_file(&broken).expect("cleanup");
}

/// Debian's crash on `core` with `vmlinux`, running `commands`; its whole output.
fn crash(vmlinux: &Path, core: &Path, commands: &[&str]) -> String {
    use std::io::Write;
    let mut child = Command::new("crash")
        .arg("-s")
        .arg("--no_crashrc")
        .arg(vmlinux)
        .arg(core)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("crash runs (the crash package)");
    let script = format!("{}\nquit\n", commands.join("\n"));
    child.stdin.take().expect("stdin").write_all(script.as_bytes()).expect("crash's stdin");
    let out = child.wait_with_output().expect("crash's output");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "crash {} {}: {text}", vmlinux.display(), core.display());
    text
}

/// SHA-256 of a file, hex.
fn sha256_of(path: &Path) -> String {
    use sha2::Digest;
    let mut file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut sha = sha2::Sha256::new();
    std::io::copy(&mut file, &mut sha).expect("hash");
    sha.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn brig_snapshot_captures_a_running_sandbox_that_goes_on_running() {
    use std::os::unix::fs::MetadataExt;
    brig_tests::require_kvm_host();
    let containerd = Containerd::start();
    let pid = containerd.run_idle("snap");
    let marker = containerd.hold_marker("snap");

    let dir = std::env::temp_dir().join(format!("brig-snapshot-{pid}"));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_arg = dir.to_string_lossy().into_owned();
    let out = brig(&["snapshot", "snap", "-o", &dir_arg, "--reason", "integration test", "--operator", "ci"]);
    assert!(out.status.success(), "brig snapshot: {}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("vCPUs paused for"), "{}", describe(&out));
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.mode() & 0o777).unwrap_or(0);
    assert_eq!(mode(&dir), 0o700);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest.json")).expect("json");
    let statement: Value = {
        use base64::Engine;
        let payload = manifest["payload"].as_str().expect("a DSSE envelope");
        let bytes = base64::engine::general_purpose::STANDARD.decode(payload).expect("base64");
        serde_json::from_slice(&bytes).expect("an in-toto statement")
    };
    assert_eq!(manifest["payloadType"], "application/vnd.in-toto+json");
    assert_eq!(manifest["signatures"].as_array().map(Vec::len), Some(1), "signed once: {manifest}");
    let manifest = statement;
    let subjects = manifest["subject"].as_array().expect("subjects");
    let names: Vec<&str> = subjects.iter().filter_map(|s| s["name"].as_str()).collect();
    for name in ["memory.elf", "state.bin", "config.json", "console.log", "vmm.log", "metrics.json", "agent-view.json"]
    {
        assert!(names.contains(&name), "{name} in the manifest: {names:?}");
    }
    for subject in subjects {
        let path = dir.join(subject["name"].as_str().expect("name"));
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        assert_eq!(subject["size"].as_u64(), std::fs::metadata(&path).ok().map(|m| m.len()), "{}", path.display());
        assert_eq!(subject["digest"]["sha256"].as_str(), Some(sha256_of(&path).as_str()), "{}", path.display());
    }
    let mut listed: Vec<String> =
        std::fs::read_dir(&dir).expect("dir").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    listed.sort();
    assert_eq!(
        listed.len(),
        subjects.len() + 2,
        "every file but manifest.json and custody.log is a subject: {listed:?}"
    );
    let custody = std::fs::read_to_string(dir.join("custody.log")).expect("custody.log");
    assert_eq!(custody.lines().count(), 1, "{custody}");
    assert!(custody.contains("\"action\":\"captured\"") && custody.contains("\"operator\":\"ci\""), "{custody}");
    assert_eq!(mode(&dir.join("custody.log")), 0o600);
    let predicate = &manifest["predicate"];
    assert_eq!((predicate["reason"].as_str(), predicate["operator"].as_str()), (Some("integration test"), Some("ci")));
    assert_eq!(predicate["resumed"], true);
    assert_eq!(predicate["sandbox"]["vmm_pid"].as_u64(), Some(u64::from(pid)));
    let memory_digest = subjects.iter().find(|s| s["name"] == "memory.elf").map(|s| s["digest"]["sha256"].clone());
    assert_eq!(Some(predicate["vmm_reported_memory_sha256"].clone()), memory_digest);
    marker.assert_in(&dir.join("memory.elf"));
    // The agent's claim, apart and labelled: here an honest agent, so it names the
    // container's processes and the guest's mounts.
    assert_eq!(predicate["agent_view"], "written (the guest's claim)");
    let view: Value =
        serde_json::from_slice(&std::fs::read(dir.join("agent-view.json")).expect("agent-view.json")).expect("json");
    assert!(view["untrusted"].as_str().is_some_and(|l| l.contains("the guest may lie")), "{view}");
    let comms: Vec<&str> =
        view["processes"].as_array().expect("processes").iter().filter_map(|p| p["comm"].as_str()).collect();
    assert!(comms.contains(&"sleep") && comms.contains(&"init"), "{comms:?}");
    assert!(view["mounts"].as_array().is_some_and(|m| m.iter().any(|m| m["target"] == "/proc")), "{view}");
    let sandbox = &predicate["sandbox"];
    assert!(sandbox["rootfs_image_sha256"].as_str().is_some_and(|d| d.len() == 64), "{sandbox}");

    // crash opens it with the guest's debug vmlinux: the kernel's own VMCOREINFO is in
    // it, its process list has the container's processes, its log the guest's boot.
    let kernel = &predicate["guest_kernel"];
    assert!(kernel["vmcoreinfo_bytes"].as_u64().is_some_and(|n| n > 100), "VMCOREINFO copied: {kernel}");
    assert_eq!((kernel["debug_matches"].as_bool(), kernel["errors"].as_array().map(Vec::len)), (Some(true), Some(0)));
    assert!(kernel["booted"]["build_id"].as_str().is_some_and(|b| b.len() == 40), "{kernel}");
    let debug_vmlinux = kernel["debug"]["path"].as_str().expect("the debug vmlinux");
    // The process list is the kernel's own task list, walked by crash's `list`: Debian
    // 12's crash 8.0.2 reads `struct pid` one `upid` short on Linux 6.1.y (which has
    // the flexible `pid.numbers[]`), so its `ps` finds only the idle task there
    // (fixed in crash 8.0.3, docs/snapshot-format.md).
    let tasks = "list task_struct.tasks -s task_struct.pid,comm -h init_task";
    let report = crash(Path::new(debug_vmlinux), &dir.join("memory.elf"), &["sys", tasks, "log"]);
    let release =
        String::from_utf8_lossy(&containerd.ctr(&["task", "exec", "--exec-id", "uname", "snap", "uname", "-r"]).stdout)
            .trim()
            .to_owned();
    assert!(!release.is_empty() && report.contains(&format!("RELEASE: {release}")), "crash's sys:\n{report}");
    assert!(!report.contains("cannot determine physical base address"), "{report}");
    for comm in ["init", "sleep", "sh"] {
        let quoted = format!("comm = \"{comm}\\000");
        assert!(report.contains(&quoted), "crash lists the task {comm}:\n{report}");
    }
    assert!(report.contains("Linux version"), "crash's log shows the guest's boot:\n{report}");

    // brig verify: passes, and names each kind of tampering.
    let verify = || brig(&["verify", &dir_arg]);
    let ok = verify();
    assert!(ok.status.success() && String::from_utf8_lossy(&ok.stdout).contains("files verified"), "{}", describe(&ok));
    let fails_with = |what: &str, expected: &str| {
        let out = verify();
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success() && text.contains(expected), "{what}: wanted {expected:?}: {}", describe(&out));
    };
    let memory = dir.join("memory.elf");
    let flip = |path: &Path, at: u64| {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open");
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, at).expect("read");
        file.write_all_at(&[byte[0] ^ 0xff], at).expect("write");
    };
    flip(&memory, 1 << 20);
    fails_with("a flipped byte", "memory.elf: expected");
    flip(&memory, 1 << 20);
    let manifest_path = dir.join("manifest.json");
    let original = std::fs::read_to_string(&manifest_path).expect("manifest");
    let mut envelope: Value = serde_json::from_str(&original).expect("envelope");
    let mut payload: Vec<u8> = envelope["payload"].as_str().expect("payload").bytes().collect();
    let middle = payload.len() / 2;
    payload[middle] = if payload[middle] == b'A' { b'B' } else { b'A' };
    envelope["payload"] = Value::String(String::from_utf8(payload).expect("base64"));
    std::fs::write(&manifest_path, serde_json::to_vec(&envelope).expect("json")).expect("edit");
    fails_with("an edited manifest", "bad signature");
    std::fs::write(&manifest_path, &original).expect("restore");
    std::fs::rename(dir.join("console.log"), dir.with_extension("console")).expect("move");
    fails_with("a deleted file", "missing file console.log");
    std::fs::rename(dir.with_extension("console"), dir.join("console.log")).expect("restore");
    std::fs::write(dir.join("extra.txt"), "planted").expect("plant");
    fails_with("an added file", "extra file extra.txt");
    std::fs::remove_file(dir.join("extra.txt")).expect("remove");
    let recorded = brig(&["verify", &dir_arg, "--record", "--operator", "bob", "--reason", "second look"]);
    assert!(recorded.status.success(), "{}", describe(&recorded));
    let custody_path = dir.join("custody.log");
    let custody = std::fs::read_to_string(&custody_path).expect("custody.log");
    assert_eq!(custody.lines().count(), 2, "{custody}");
    assert!(
        custody.lines().nth(1).is_some_and(|l| l.contains("\"action\":\"verified\"") && l.contains("bob")),
        "{custody}"
    );
    let second = custody.lines().nth(1).expect("line 2").to_owned();
    std::fs::write(&custody_path, format!("{second}\n")).expect("remove the first custody line");
    fails_with("a removed custody line", "custody.log: broken chain at line 1");
    std::fs::write(&custody_path, &custody).expect("restore");
    assert!(verify().status.success(), "restored, it verifies again");

    // brig copy: every file checked on the way, the copy recorded on both sides.
    let copy = dir.with_extension("copy");
    let _ = std::fs::remove_dir_all(&copy);
    let copy_arg = copy.to_string_lossy().into_owned();
    let out = brig(&["copy", &dir_arg, &copy_arg, "--operator", "carol", "--reason", "to the lab"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("both custody logs"),
        "{}",
        describe(&out)
    );
    let checked = brig(&["verify", &copy_arg]);
    assert!(checked.status.success(), "the copy verifies: {}", describe(&checked));
    let copied = std::fs::read_to_string(copy.join("custody.log")).expect("the copy's custody.log");
    let last = copied.lines().last().expect("a line");
    assert_eq!(copied.lines().count(), 3, "captured, verified, copied: {copied}");
    assert!(last.contains("\"action\":\"copied\"") && last.contains("carol") && last.contains(&copy_arg), "{last}");
    let source = std::fs::read_to_string(&custody_path).expect("custody");
    let recorded = source.lines().last().expect("a line");
    assert!(
        recorded.contains("\"action\":\"copied\"") && recorded.contains(&copy_arg),
        "the source says so: {recorded}"
    );
    assert!(verify().status.success(), "the source verifies with its copied entry");
    std::fs::remove_dir_all(&copy).expect("remove the copy");
    // A source changed since its capture is not copied: the copy is marked incomplete.
    flip(&memory, 4096);
    let out = brig(&["copy", &dir_arg, &copy_arg]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("memory.elf: expected"),
        "{}",
        describe(&out)
    );
    let refused = brig(&["verify", &copy_arg]);
    let text = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(!refused.status.success() && text.contains("incomplete capture") && text.contains("memory.elf"), "{text}");
    flip(&memory, 4096);
    std::fs::remove_dir_all(&copy).expect("remove the failed copy");

    // The workload went on: its VM runs and answers.
    assert_eq!(row(&ps(), "snap").map(|r| r["state"].clone()), Some("running".into()));
    let exec = containerd.ctr(&["task", "exec", "--exec-id", "after", "snap", "echo", "still here"]);
    assert!(String::from_utf8_lossy(&exec.stdout).contains("still here"), "{}", describe(&exec));

    // Bad input: a used directory, an unknown id.
    let again = brig(&["snapshot", "snap", "-o", &dir_arg]);
    assert!(
        !again.status.success() && String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "{}",
        describe(&again)
    );
    let unknown = brig(&["snapshot", "nope", "-o", "/tmp/brig-never-made"]);
    let text = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        !unknown.status.success() && text.contains("no brig sandbox `nope`") && text.contains("default/snap"),
        "{text}"
    );
    assert!(!Path::new("/tmp/brig-never-made").exists(), "nothing is made for an unknown id");

    // A brig-vmm that took over its jail's state/ and put a symlink to a host secret
    // where its console log was (done here as root, which such a VMM is not): the
    // snapshot reads no file through it, and says so.
    let task_dir = row(&ps(), "snap").and_then(|r| r["dir"].as_str()).expect("dir").to_owned();
    let state = Path::new(&task_dir).join("jail/state");
    std::fs::rename(state.join("console.log"), state.join("console.real")).expect("move the console");
    std::os::unix::fs::symlink("/etc/brig/keys/snapshot.key", state.join("console.log")).expect("plant a symlink");
    let planted = std::env::temp_dir().join(format!("brig-snapshot-planted-{pid}"));
    let _ = std::fs::remove_dir_all(&planted);
    let out = brig(&["snapshot", "snap", "-o", &planted.to_string_lossy()]);
    assert!(out.status.success(), "{}", describe(&out));
    let console = std::fs::read_to_string(planted.join("console.log")).expect("console.log");
    let secret = std::fs::read_to_string("/etc/brig/keys/snapshot.key").expect("the key");
    assert!(!console.contains(secret.trim()) && console.contains("not read"), "{console}");
    std::fs::remove_file(state.join("console.log")).expect("remove the symlink");
    std::fs::rename(state.join("console.real"), state.join("console.log")).expect("restore the console");
    std::fs::remove_dir_all(&planted).expect("cleanup");

    containerd.release_marker("snap", marker);
    containerd.assert_ok(&containerd.kill_and_delete("snap"));
    std::fs::remove_dir_all(&dir).expect("cleanup");
    containerd.assert_no_leftovers("brig snapshot");
}

#[test]
#[ignore = "needs kvm-host: run with `cargo xtask test`"]
fn a_full_disk_leaves_an_incomplete_unsigned_capture_and_the_vm_running() {
    brig_tests::require_kvm_host();
    let containerd = Containerd::start();
    let pid = containerd.run_idle("full");
    // 8 MiB of room for a 128 MiB guest's memory.elf.
    let mount = std::env::temp_dir().join(format!("brig-snapshot-full-{pid}"));
    std::fs::create_dir_all(&mount).expect("mount point");
    let status =
        Command::new("mount").args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"]).arg(&mount).status().expect("mount");
    assert!(status.success(), "mount a small tmpfs");
    let dir = mount.join("evidence");
    let out = brig(&["snapshot", "full", "-o", &dir.to_string_lossy()]);
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && text.contains("No space left on device"), "{}", describe(&out));
    assert!(dir.join("INCOMPLETE").exists() && !dir.join("manifest.json").exists(), "marked, and nothing signed");
    let verify = brig(&["verify", &dir.to_string_lossy()]);
    let said = String::from_utf8_lossy(&verify.stderr).into_owned();
    assert!(!verify.status.success() && said.contains("an incomplete capture"), "{}", describe(&verify));
    // The VM was resumed: it runs and answers.
    assert_eq!(row(&ps(), "full").map(|r| r["state"].clone()), Some("running".into()));
    let exec = containerd.ctr(&["task", "exec", "--exec-id", "after", "full", "echo", "resumed"]);
    assert!(String::from_utf8_lossy(&exec.stdout).contains("resumed"), "{}", describe(&exec));
    assert!(Command::new("umount").arg(&mount).status().expect("umount").success());
    std::fs::remove_dir_all(&mount).expect("cleanup");
    containerd.assert_ok(&containerd.kill_and_delete("full"));
    containerd.assert_no_leftovers("a snapshot onto a full disk");
}
