//! OCI conformance bundles: a busybox root file system holding the static
//! `brig-oci-check` (`BRIG_OCI_CHECK_BIN`) and a config.json that asks for one of
//! everything the checker verifies. Any runtime can run the bundle; the checker prints
//! one `PASS`/`FAIL` line per check, so runc's lines and brig's can be compared.
//!
//! Mount sources and `root.path` are relative to the bundle directory (as the runtime
//! spec allows for bind mounts), so a bundle can be copied elsewhere, e.g. into a VM.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use brig_rootfs_builder::image;
use serde_json::{json, Value};

/// Where the bundle's config.json appears inside the container (read-only).
pub const CONFIG_IN_CONTAINER: &str = "/brig-check/config.json";
/// Where the checker lives in the root file system.
pub const CHECKER_IN_ROOTFS: &str = "usr/bin/brig-oci-check";
/// The harmless syscall the seccomp profile denies, and the errno it returns (EACCES).
pub const SECCOMP_DENIED: (&str, u32) = ("getpriority", 13);
/// The spec annotation naming [`SECCOMP_DENIED`] for the checker.
pub const SECCOMP_ANNOTATION: &str = "io.brig.check.seccomp-denied";
/// The runc the tests compare brig with (Debian's package).
pub const RUNC: &str = "/usr/sbin/runc";

/// Masked: a kernel file, a sysfs directory, and a file and a directory of the rootfs.
const MASKED_PATHS: [&str; 4] = ["/proc/kcore", "/sys/firmware", "/etc/brig-secret", "/opt/brig-secrets"];
/// Read-only: a procfs directory and file, and a directory and a file of the rootfs.
const READONLY_PATHS: [&str; 4] = ["/proc/sys", "/proc/sysrq-trigger", "/opt/brig-ro", "/etc/brig-ro-file"];
const ENV: [&str; 3] = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "BRIG_GREETING=hello conformance",
    "BRIG_EMPTY=",
];
/// Sysctls valid in an IPC and a UTS namespace (no network namespace needed).
const SYSCTL: [(&str, &str); 2] = [("kernel.domainname", "brig.test"), ("kernel.msgmax", "4096")];
const RLIMITS: [(&str, u64, u64); 2] = [("RLIMIT_NOFILE", 1000, 2000), ("RLIMIT_CORE", 1 << 20, 2 << 20)];

/// The mounts of [`conformance_spec`]: the usual kernel file systems, a tmpfs, a
/// read-only directory bind mount and the read-only bind of config.json itself.
fn mounts(config_in_container: &str) -> Vec<Value> {
    vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/run/brig-tmpfs", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "nodev", "noexec", "mode=1777", "size=1m"]}),
        json!({"destination": "/mnt/ro-data", "type": "bind", "source": "ro-data", "options": ["rbind", "ro"]}),
        json!({"destination": config_in_container, "type": "bind", "source": "config.json", "options": ["bind", "ro"]}),
    ]
}

/// A config.json whose process is the checker (reading `config_in_container`) and
/// which exercises every check: non-default capability sets, uid/gid 1000 with
/// additional groups, cwd `/tmp`, env, two rlimits, noNewPrivileges, oomScoreAdj,
/// a hostname, the mounts above, masked and read-only paths, two sysctls and a seccomp
/// profile denying [`SECCOMP_DENIED`] with `SCMP_ACT_ERRNO` (named by
/// [`SECCOMP_ANNOTATION`]).
///
/// `rootfs` becomes `root.path` as given; the bind sources `ro-data` and `config.json`
/// are relative to the bundle directory.
pub fn conformance_spec(rootfs: &Path, config_in_container: &str) -> Value {
    // After execve a non-root process keeps only its ambient capabilities in its
    // effective and permitted sets, so those three sets are equal; inheritable and
    // bounding are larger.
    let kept = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"];
    let inheritable = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT"];
    let bounding = [
        "CAP_AUDIT_WRITE",
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SYS_CHROOT",
    ];
    let (syscall, errno) = SECCOMP_DENIED;
    json!({
        "ociVersion": "1.0.2",
        "root": {"path": rootfs, "readonly": false},
        "hostname": "brig-conformance",
        "process": {
            "terminal": false,
            "user": {"uid": image::USER.1, "gid": image::USER.1, "additionalGids": [1001, 1002]},
            "args": [format!("/{CHECKER_IN_ROOTFS}"), config_in_container],
            "env": ENV,
            "cwd": "/tmp",
            "capabilities": {
                "bounding": bounding,
                "effective": kept,
                "permitted": kept,
                "ambient": kept,
                "inheritable": inheritable,
            },
            "rlimits": RLIMITS.iter().map(|(typ, soft, hard)| json!({"type": typ, "soft": soft, "hard": hard})).collect::<Vec<_>>(),
            "noNewPrivileges": true,
            "oomScoreAdj": 123,
        },
        "mounts": mounts(config_in_container),
        "annotations": {SECCOMP_ANNOTATION: syscall},
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}, {"type": "cgroup"}],
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "sysctl": SYSCTL.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "seccomp": {
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": [syscall], "action": "SCMP_ACT_ERRNO", "errnoRet": errno}],
            },
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
        },
    })
}

/// The name of every check the checker must print for [`conformance_spec`] plus
/// `extra_mounts`: one missing means the checker silently skipped something.
pub fn expected_checks(extra_mounts: &[Value]) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = ["bounding", "effective", "inheritable", "permitted", "ambient"]
        .iter()
        .map(|set| format!("capabilities.{set}"))
        .collect();
    names.extend(
        ["user.uid", "user.gid", "user.additionalGids", "cwd", "noNewPrivileges", "oomScoreAdj", "hostname", "seccomp"]
            .map(String::from),
    );
    names.insert(format!("seccomp {}", SECCOMP_DENIED.0));
    names.extend(ENV.iter().map(|var| format!("env {}", var.split_once('=').map_or(*var, |(k, _)| k))));
    names.extend(RLIMITS.iter().map(|(typ, _, _)| format!("rlimit {typ}")));
    names.extend(SYSCTL.iter().map(|(key, _)| format!("sysctl {key}")));
    names.extend(MASKED_PATHS.iter().map(|p| format!("maskedPaths {p}")));
    names.extend(READONLY_PATHS.iter().map(|p| format!("readonlyPaths {p}")));
    for mount in mounts(CONFIG_IN_CONTAINER).iter().chain(extra_mounts) {
        let dest = mount["destination"].as_str().expect("mounts have a string destination");
        names.insert(format!("mount {dest}"));
    }
    names
}

/// A bundle directory written by [`bundle`].
#[derive(Debug)]
pub struct Bundle {
    pub dir: PathBuf,
    /// What config.json holds.
    pub spec: Value,
}

impl Bundle {
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// Replaces config.json (and [`Bundle::spec`]) with `spec`.
    pub fn write_config(&mut self, spec: Value) {
        write(&self.config(), &serde_json::to_vec_pretty(&spec).expect("a JSON value serialises"), 0o644);
        self.spec = spec;
    }
}

/// Writes a conformance bundle into `dir`: `rootfs/` (busybox, the checker, the files
/// and directories the spec masks or protects, its mount points), `ro-data/` (the
/// read-only bind mount's source) and `config.json` ([`conformance_spec`] with
/// `extra_mounts` appended; their sources must exist by the time the bundle runs).
/// Panics when something cannot be written, like every harness helper.
pub fn bundle(dir: &Path, extra_mounts: &[Value]) -> Bundle {
    let checker = crate::artifact("BRIG_OCI_CHECK_BIN");
    let rootfs = dir.join("rootfs");
    image::busybox_rootfs(&rootfs, &[(checker, CHECKER_IN_ROOTFS)])
        .unwrap_or_else(|e| panic!("building the busybox rootfs in {}: {e:#}", rootfs.display()));

    write(&rootfs.join("etc/brig-secret"), b"masked: the container must not read this\n", 0o644);
    write(&rootfs.join("opt/brig-secrets/key"), b"masked\n", 0o644);
    write(&rootfs.join("opt/brig-ro/data"), b"read-only\n", 0o644);
    write(&rootfs.join("etc/brig-ro-file"), b"read-only\n", 0o666);
    // Mount points, so a runtime with a read-only rootfs finds them too.
    for point in ["mnt/ro-data", "run/brig-tmpfs"] {
        fs::create_dir_all(rootfs.join(point)).expect("create mount point");
    }
    write(&rootfs.join(CONFIG_IN_CONTAINER.trim_start_matches('/')), b"", 0o644);
    write(&dir.join("ro-data/hello"), b"hello from a read-only bind mount\n", 0o644);

    let mut spec = conformance_spec(Path::new("rootfs"), CONFIG_IN_CONTAINER);
    let mounts = spec["mounts"].as_array_mut().expect("the spec has mounts");
    mounts.extend(extra_mounts.iter().cloned());
    let mut bundle = Bundle { dir: dir.to_path_buf(), spec: Value::Null };
    bundle.write_config(spec);
    bundle
}

fn write(path: &Path, bytes: &[u8], mode: u32) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
    }
    fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Runs the bundle with `runc run --bundle DIR ID` (foreground, no terminal) and
/// returns what the container printed. The container is deleted afterwards even if it
/// never started properly.
pub fn runc_run(bundle: &Bundle, id: &str) -> Output {
    assert!(Path::new(RUNC).exists(), "{RUNC} is missing: apt-get install runc (`cargo xtask test` installs it)");
    let output = Command::new(RUNC)
        .args(["run", "--bundle"])
        .arg(&bundle.dir)
        .arg(id)
        .stdin(Stdio::null())
        .output()
        .expect("runc starts");
    let _ = Command::new(RUNC).args(["delete", "--force", id]).stderr(Stdio::null()).status();
    output
}

/// The checker's lines by check name. Panics on a line that is neither `PASS` nor
/// `FAIL`, or on a check printed twice.
pub fn verdicts(stdout: &str) -> BTreeMap<String, String> {
    let mut verdicts = BTreeMap::new();
    for line in stdout.lines() {
        let name = match line.split_once(' ') {
            Some(("PASS", name)) => name,
            Some(("FAIL", rest)) => rest.split_once(": want ").map_or(rest, |(name, _)| name),
            _ => panic!("not a verdict line: {line:?}\nfull output:\n{stdout}"),
        };
        let previous = verdicts.insert(name.to_owned(), line.to_owned());
        assert!(previous.is_none(), "check {name:?} printed twice:\n{stdout}");
    }
    verdicts
}

/// Asserts the checker ran, printed exactly the `expected` checks, all `PASS`, and
/// exited 0.
pub fn assert_conformant(output: &Output, expected: &BTreeSet<String>) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let context =
        || format!("status {}\nstdout:\n{stdout}\nstderr:\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    let verdicts = verdicts(&stdout);
    let failed: Vec<&String> = verdicts.values().filter(|l| !l.starts_with("PASS ")).collect();
    assert!(failed.is_empty(), "failed checks: {failed:#?}\n{}", context());
    let got: BTreeSet<String> = verdicts.into_keys().collect();
    let missing: Vec<&String> = expected.difference(&got).collect();
    let unexpected: Vec<&String> = got.difference(expected).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "missing checks {missing:?}, unexpected {unexpected:?}\n{}",
        context()
    );
    assert!(output.status.success(), "the checker failed without a FAIL line\n{}", context());
}
