//! brig-vmm in a jail without the shim: brig-jailer run on a spec like the shim's,
//! for a bare boot (the guest kernel and initramfs, no rootfs disk).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};
use brig_policy::jail::{CgroupSpec, Device, JailFile, JailSpec, LandlockMode, Rlimits};

use crate::vm::GUEST_CID;

/// Guest memory of a bare jailed boot.
pub const MEMORY_MIB: u64 = 128;

/// A jail for `exec` (a static brig-vmm) in `dir/<name>`, booting brig's kernel and
/// initramfs with a vsock at `/state/vsock.sock`; `extra` goes after brig-vmm's flags.
pub fn bare_spec(dir: &Path, name: &str, uid: u32, exec: PathBuf, extra: &[&str]) -> JailSpec {
    let mut args: Vec<String> = [
        "--kernel",
        "/vmlinux",
        "--initramfs",
        "/initramfs.cpio",
        "--memory",
        &MEMORY_MIB.to_string(),
        "--rng",
        "--memory-dir",
        brig_policy::jail::JAIL_MEMORY,
        "--vsock",
        &format!("cid={GUEST_CID},path=/state/vsock.sock"),
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(extra.iter().map(|a| a.to_string()));
    let file = |var: &str, jail: &str| JailFile { host: crate::artifact(var), jail: jail.into(), writable: false };
    JailSpec {
        id: name.into(),
        root: dir.join(name),
        uid,
        gid: uid,
        exec,
        args,
        files: vec![file("BRIG_GUEST_KERNEL", "/vmlinux"), file("BRIG_GUEST_INITRAMFS", "/initramfs.cpio")],
        devices: vec![Device::Kvm],
        cgroup: Some(CgroupSpec {
            path: PathBuf::from("brig-tests").join(name),
            memory_max: (MEMORY_MIB + 32) << 20,
            pids_max: 9,
            cpu_max: None,
        }),
        netns: None,
        rlimits: Rlimits { nofile: 4096, fsize: (MEMORY_MIB << 20) + (1 << 30), nproc: 9 },
        landlock: LandlockMode::Require,
        memory_tmpfs: Some(MEMORY_MIB << 20),
        keep_fds: Vec::new(),
    }
}

/// A running brig-jailer and the brig-vmm it reported.
#[derive(Debug)]
pub struct Jailed {
    pub jailer: Child,
    pub vmm_pid: u32,
    pub spec: JailSpec,
}

/// Writes `spec` next to its root and starts brig-jailer on it, stderr to `stderr`.
pub fn start(spec: JailSpec, stderr: Stdio) -> Result<Jailed> {
    let path = spec.root.with_extension("json");
    std::fs::write(&path, serde_json::to_vec(&spec)?)?;
    let mut jailer = Command::new(crate::artifact("BRIG_JAILER_BIN"))
        .arg("--spec")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .context("start brig-jailer")?;
    let mut line = String::new();
    std::io::BufReader::new(jailer.stdout.take().context("stdout")?).read_line(&mut line)?;
    let vmm_pid = brig_policy::jail::parse_pid_line(&line)
        .with_context(|| format!("brig-jailer printed {line:?}, not `pid N`"))?;
    Ok(Jailed { jailer, vmm_pid, spec })
}

impl Jailed {
    /// The host side of the jail's vsock socket.
    pub fn vsock(&self) -> PathBuf {
        self.spec.root.join("state/vsock.sock")
    }

    /// Kills the jailer (brig-vmm dies with it), then removes the cgroup and the root.
    pub fn remove(mut self) -> Result<()> {
        let _ = self.jailer.kill();
        let _ = self.jailer.wait();
        if let Some(cgroup) = &self.spec.cgroup {
            brig_policy::jail::remove_cgroup(&cgroup.path)?;
        }
        std::fs::remove_dir_all(&self.spec.root)?;
        let _ = std::fs::remove_file(self.spec.root.with_extension("json"));
        Ok(())
    }
}
