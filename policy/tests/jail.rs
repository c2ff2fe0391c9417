//! brig-jailer, for real: busybox (static, like brig-vmm) runs in a jail and
//! reports what it can see and do. Needs root (CI runs as root); no KVM, and no
//! cgroup v2 (the cgroup is tested in kvm-host, through the shim).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use brig_policy::jail::{self, JailFile, JailSpec, LandlockMode, Rlimits, EXIT_JAIL_FAILED};

const BUSYBOX: &str = "/bin/busybox";

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> Scratch {
    assert!(nix::unistd::geteuid().is_root(), "the jail tests need root (CI runs them as root)");
    let dir = std::env::temp_dir().join(format!("brig-jail-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    Scratch(dir)
}

fn spec(dir: &Path, script: &str) -> JailSpec {
    let disk = dir.join("disk.img");
    std::fs::write(&disk, "read-only disk\n").expect("disk");
    JailSpec {
        id: "jail-test".into(),
        root: dir.join("root"),
        uid: 424_242,
        gid: 424_243,
        exec: BUSYBOX.into(),
        args: vec!["sh".into(), "-c".into(), format!("exec 1>&2; {script}")],
        files: vec![JailFile { host: disk, jail: "/images/disk.img".into(), writable: false }],
        devices: vec![],
        cgroup: None,
        netns: None,
        rlimits: Rlimits { nofile: 128, fsize: 1 << 20, nproc: 64 },
        landlock: LandlockMode::BestEffort,
        memory_tmpfs: None,
        keep_fds: vec![],
    }
}

/// Starts brig-jailer on `spec` (written to `dir/jail.json`); returns it and the
/// jailed pid of its `pid N` line (0 when it printed none).
fn start(dir: &Path, spec: &JailSpec, stderr: Stdio) -> (std::process::Child, u32) {
    let path = dir.join("jail.json");
    std::fs::write(&path, serde_json::to_vec(spec).expect("json")).expect("spec");
    let mut child = Command::new(env!("CARGO_BIN_EXE_brig-jailer"))
        .arg("--spec")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start brig-jailer");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("pid line");
    let pid = jail::parse_pid_line(&line).unwrap_or(0);
    (child, pid)
}

/// Runs brig-jailer on `spec`; returns (exit code, the jailed pid, stderr).
fn jail(dir: &Path, spec: &JailSpec) -> (i32, u32, String) {
    let (mut child, pid) = start(dir, spec, Stdio::piped());
    let mut err = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut err).expect("stderr");
    let status = child.wait().expect("wait");
    (status.code().unwrap_or(-1), pid, err)
}

fn field<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[test]
fn the_jailed_process_has_no_privilege_and_sees_only_its_jail() {
    let dir = scratch("posture");
    // The shell is PID 1, brig-vmm's place: Landlock lets it read /proc/1 only.
    let spec = spec(
        &dir.0,
        "cat /proc/1/status; echo HOST $(hostname); \
         echo NET $(cat /proc/1/net/dev | tail -n +3 | cut -d: -f1); \
         echo > /state/ok && echo STATE-WRITABLE; echo > /x 2>/dev/null || echo ROOT-READONLY; \
         echo > /images/disk.img 2>/dev/null || echo DISK-READONLY; cat /images/disk.img; exit 7",
    );
    let (code, pid, out) = jail(&dir.0, &spec);
    assert_eq!(code, 7, "brig-jailer passes on the exit status:\n{out}");
    assert!(pid > 1, "the jailer reports the jailed pid:\n{out}");
    assert_eq!(field(&out, "Uid:"), "424242\t424242\t424242\t424242", "{out}");
    assert_eq!(field(&out, "Gid:"), "424243\t424243\t424243\t424243", "{out}");
    assert_eq!(field(&out, "Groups:"), "", "{out}");
    for set in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(field(&out, set), "0000000000000000", "{set}\n{out}");
    }
    assert_eq!(field(&out, "NoNewPrivs:"), "1", "{out}");
    assert_eq!(field(&out, "NSpid:").split_whitespace().last(), Some("1"), "PID 1 of its own namespace:\n{out}");
    // Only what the jail holds: itself, its image, /state and /proc.
    let mut root: Vec<String> = std::fs::read_dir(dir.0.join("root"))
        .expect("root")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    root.sort();
    assert_eq!(root, ["busybox", "images", "proc", "state"], "{out}");
    assert_eq!(field(&out, "HOST"), "brig-vmm", "{out}");
    assert_eq!(field(&out, "NET"), "lo", "a new, empty network namespace:\n{out}");
    for expected in ["STATE-WRITABLE", "ROOT-READONLY", "DISK-READONLY", "read-only disk"] {
        assert!(out.contains(expected), "{expected} missing:\n{out}");
    }
    assert!(dir.0.join("root/state/ok").exists(), "/state is the host's root/state");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir.0.join("root/state/ok")).expect("ok"));
    assert_eq!(owner, 424_242, "files it makes are its uid's");
    assert!(out.contains("jailed as 424242:424243"), "{out}");
    // The mounts lived in the jail's namespace: on the host the image's mount point is an empty file.
    assert_eq!(std::fs::read(dir.0.join("root/images/disk.img")).expect("placeholder"), b"");
}

#[test]
fn landlock_stops_writes_outside_state_where_the_kernel_has_it() {
    let dir = scratch("landlock");
    let mut spec = spec(
        &dir.0,
        "ls / ; mkdir /state/sub || echo NO-MKDIR; \
         ln -s /images /state/link || echo NO-SYMLINK; mknod /state/kvm c 10 232 || echo NO-MKNOD; \
         echo > /state/file && echo MAKE-FILE; /busybox true || echo NO-EXEC-PATH; echo done",
    );
    spec.landlock = LandlockMode::Require;
    let (code, _, out) = jail(&dir.0, &spec);
    if code == EXIT_JAIL_FAILED && out.contains("Landlock is required") {
        panic!(
            "this kernel has no Landlock; the jail refused to start as it should, but this test needs Landlock:\n{out}"
        );
    }
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Landlock: ABI") && out.contains("enforced in full"), "the enforced ABI is logged:\n{out}");
    // /state is the uid's own directory: only Landlock stops these there.
    assert!(out.contains("ls: can't open '/': Permission denied"), "{out}");
    for denied in ["NO-MKDIR", "NO-SYMLINK", "NO-MKNOD"] {
        assert!(out.contains(denied), "{denied} missing:\n{out}");
    }
    assert!(out.contains("MAKE-FILE") && out.contains("done"), "{out}");
}

#[test]
fn bad_specs_are_refused_before_anything_is_made() {
    let dir = scratch("bad");
    let mut root_uid = spec(&dir.0, "true");
    root_uid.uid = 0;
    let (code, _, out) = jail(&dir.0, &root_uid);
    assert_eq!(code, EXIT_JAIL_FAILED);
    assert!(out.contains("never runs as root"), "{out}");
    let mut escape = spec(&dir.0, "true");
    escape.files[0].jail = "/images/../../etc/passwd".into();
    let (code, _, out) = jail(&dir.0, &escape);
    assert_eq!(code, EXIT_JAIL_FAILED);
    assert!(out.contains("without `..`"), "{out}");
    assert!(!dir.0.join("root").exists(), "nothing was made for a refused spec");
    let open = dir.0.join("open");
    std::fs::create_dir(&open).expect("open dir");
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).expect("chmod");
    let mut shared = spec(&dir.0, "true");
    shared.root = open.join("root");
    let (code, _, out) = jail(&dir.0, &shared);
    assert_eq!(code, EXIT_JAIL_FAILED);
    assert!(out.contains("writable by root alone") && out.contains("1777"), "{out}");
    assert!(!shared.root.exists(), "no root is made in a directory others can write");
    let busy = spec(&dir.0, "true");
    std::fs::create_dir_all(dir.0.join("root")).expect("leftover");
    let (code, _, out) = jail(&dir.0, &busy);
    assert_eq!(code, EXIT_JAIL_FAILED);
    assert!(out.contains("already exists"), "{out}");
}

#[test]
fn a_kill_of_the_jailer_takes_the_jailed_process_with_it() {
    let dir = scratch("kill");
    let spec = spec(&dir.0, "sleep 60");
    let (mut child, pid) = start(&dir.0, &spec, Stdio::null());
    assert!(pid > 1, "brig-jailer reports the jailed pid");
    // Wait until the jailed process runs as its own uid (the id change clears the
    // parent-death signal, which the jailer must set again before exec).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if status.lines().any(|l| l.starts_with("Uid:") && l.contains("424242")) && status.contains("Name:\tsleep") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the jailed process never ran sleep:\n{status}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL the jailer");
    child.wait().expect("wait");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(std::time::Instant::now() < deadline, "the jailed process {pid} outlived its jailer");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
