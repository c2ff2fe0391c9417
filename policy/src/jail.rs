//! The jail around one brig-vmm, built by `brig-jailer` in Firecracker's jailer
//! order (docs/jail.md):
//!
//! 1. validate the [`JailSpec`];
//! 2. close every descriptor above 2 that is not passed on purpose;
//! 3. make the jail root (under the task's state directory) and its `state/`;
//! 4. make the sandbox's cgroup v2 with its limits, and enter it;
//! 5. a new PID namespace: fork; the parent stays outside, reports brig-vmm's pid,
//!    forwards signals and exits with brig-vmm's status;
//! 6. the child: new mount, IPC, UTS and network namespaces (or the sandbox's own
//!    network namespace), the files it needs bind-mounted in (read-only where it
//!    only reads), `/dev/kvm` made for its uid, `pivot_root` with the old root
//!    unmounted, rlimits, Landlock, no capabilities in any set, the sandbox's
//!    uid/gid, `no_new_privs`, and `execve` of brig-vmm with an empty environment.
//!
//! brig-vmm then installs its own per-thread seccomp filters ([`crate::seccomp`]).

mod cgroup;
mod landlock;
mod mounts;
mod privileges;
pub mod uids;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use self::cgroup::{remove_cgroup, CGROUP_ROOT};
pub use self::landlock::LandlockMode;

/// brig-vmm's only writable directory inside its jail (sockets, console, saved state).
pub const JAIL_STATE: &str = "/state";
/// The tmpfs inside the jail that holds guest RAM (an unnamed file brig-vmm makes),
/// mounted `huge=within_size` so that the guest gets 2 MiB pages (ADR 014).
pub const JAIL_MEMORY: &str = "/memory";
/// The name of the state directory inside the jail root, seen from the host.
pub const STATE_DIR_NAME: &str = "state";
/// brig-jailer's exit code when it could not build the jail (the message says
/// why); brig-vmm's own codes are 1-3 and 31.
pub const EXIT_JAIL_FAILED: i32 = 30;

/// brig-jailer's first line on stdout, once brig-vmm is forked: `pid N`, its host pid.
pub fn pid_line(pid: impl std::fmt::Display) -> String {
    format!("pid {pid}")
}

/// The pid in brig-jailer's `pid N` line.
pub fn parse_pid_line(line: &str) -> Option<u32> {
    line.trim().strip_prefix("pid ")?.parse().ok().filter(|pid| *pid > 0)
}

/// Everything brig-jailer needs to jail one brig-vmm: written by the shim as
/// `jail.json`, read by `brig-jailer --spec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailSpec {
    /// The sandbox's name, for messages and the UTS hostname (`[A-Za-z0-9_.-]{1,64}`).
    pub id: String,
    /// The jail root: a directory brig-jailer makes (its parent must exist and be
    /// root's alone). It becomes brig-vmm's `/`.
    pub root: PathBuf,
    /// The sandbox's own uid and gid (never 0).
    pub uid: u32,
    pub gid: u32,
    /// The brig-vmm binary on the host; statically linked (the jail has no libc).
    pub exec: PathBuf,
    /// brig-vmm's arguments (after argv[0]), with paths as seen inside the jail.
    pub args: Vec<String>,
    /// Host files bind-mounted into the jail.
    pub files: Vec<JailFile>,
    /// Device nodes made in the jail's `/dev`, owned by `uid`.
    pub devices: Vec<Device>,
    /// The sandbox's cgroup (`None`: stay in the caller's cgroup; development only).
    pub cgroup: Option<CgroupSpec>,
    /// The sandbox's network namespace (a `/var/run/netns/…` or `/proc/…/ns/net`
    /// path); `None`: a new, empty one.
    pub netns: Option<PathBuf>,
    pub rlimits: Rlimits,
    pub landlock: LandlockMode,
    /// Bytes of guest RAM: a tmpfs this large (rounded up to 2 MiB) is mounted at
    /// [`JAIL_MEMORY`] for it, `huge=within_size` where the kernel has huge pages.
    /// `None`: no such mount (brig-vmm uses a memfd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_tmpfs: Option<u64>,
    /// Descriptors above 2 that brig-vmm gets (none today; the tap once networking lands).
    #[serde(default)]
    pub keep_fds: Vec<i32>,
}

/// One host file in the jail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailFile {
    /// The host file (a regular file).
    pub host: PathBuf,
    /// Where brig-vmm sees it: an absolute path inside the jail, not under `/state`.
    pub jail: PathBuf,
    /// Mounted read-write (a writable disk); read-only otherwise.
    #[serde(default)]
    pub writable: bool,
}

/// A device node brig-vmm may open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Device {
    /// `/dev/kvm` (10, 232).
    Kvm,
    /// `/dev/net/tun` (10, 200).
    NetTun,
}

impl Device {
    /// Its path inside the jail, and its major and minor numbers.
    pub fn node(self) -> (&'static str, u64, u64) {
        match self {
            Device::Kvm => ("/dev/kvm", 10, 232),
            Device::NetTun => ("/dev/net/tun", 10, 200),
        }
    }
}

/// The sandbox's cgroup v2 and its limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CgroupSpec {
    /// Its path below [`CGROUP_ROOT`], e.g. `brig/0a1b2c3d4e5f6a7b`.
    pub path: PathBuf,
    /// `memory.max`, bytes: guest memory plus brig-vmm's own.
    pub memory_max: u64,
    /// `pids.max`: brig-vmm's threads and the jailer.
    pub pids_max: u64,
    /// `cpu.max` as (quota, period) in µs; `None`: `max`.
    pub cpu_max: Option<(u64, u64)>,
}

/// Resource limits brig-vmm runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rlimits {
    /// `RLIMIT_NOFILE`.
    pub nofile: u64,
    /// `RLIMIT_FSIZE`, bytes: the largest file brig-vmm may write.
    pub fsize: u64,
    /// `RLIMIT_NPROC`: processes and threads of the sandbox's uid.
    pub nproc: u64,
}

/// Why a jail could not be built: the step, and what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("invalid jail spec: {0}")]
    Invalid(String),
    #[error("{step}: {source}")]
    Step { step: String, source: std::io::Error },
    #[error("{0}")]
    Prerequisite(String),
}

impl JailError {
    /// A failed step, with the system error behind it.
    pub fn step(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
        let step = step.into();
        move |source| JailError::Step { step, source }
    }

    fn nix(step: impl Into<String>) -> impl FnOnce(nix::Error) -> JailError {
        let step = step.into();
        move |errno| JailError::Step { step, source: std::io::Error::from(errno) }
    }
}

impl JailSpec {
    /// Reads a spec file.
    pub fn from_file(path: &Path) -> Result<JailSpec, JailError> {
        let text = std::fs::read(path).map_err(JailError::step(format!("reading {}", path.display())))?;
        serde_json::from_slice(&text).map_err(|e| JailError::Invalid(format!("{}: {e}", path.display())))
    }

    /// Checks everything that can be checked before anything is made.
    pub fn validate(&self) -> Result<(), JailError> {
        let invalid = |m: String| Err(JailError::Invalid(m));
        let id_ok = |c: char| c.is_ascii_alphanumeric() || "_.-".contains(c);
        if self.id.is_empty() || self.id.len() > 64 || !self.id.chars().all(id_ok) {
            return invalid(format!("id `{}` must be 1-64 characters of [A-Za-z0-9_.-]", self.id));
        }
        if self.uid == 0 || self.gid == 0 {
            return invalid(format!("uid {} / gid {}: a jailed brig-vmm never runs as root", self.uid, self.gid));
        }
        if !self.root.is_absolute() || self.root.parent().is_none_or(|p| !p.is_dir()) {
            return invalid(format!("root {} must be absolute, in an existing directory", self.root.display()));
        }
        if !self.exec.is_absolute() || !self.exec.is_file() {
            return invalid(format!("exec {} is not a file", self.exec.display()));
        }
        if self.exec.file_name().is_none() {
            return invalid(format!("exec {} has no file name", self.exec.display()));
        }
        let mut seen = vec![self.jail_exec(), Path::new(JAIL_STATE).to_path_buf(), Path::new(JAIL_MEMORY).into()];
        for file in &self.files {
            if !file.host.is_file() {
                return invalid(format!("{} is not a file", file.host.display()));
            }
            let inside = &file.jail;
            let plain = inside.components().skip(1).all(|c| matches!(c, std::path::Component::Normal(_)));
            let reserved = [JAIL_STATE, JAIL_MEMORY, "/dev"].iter().any(|r| inside.starts_with(r));
            if !inside.is_absolute() || !plain || reserved {
                return invalid(format!(
                    "jail path {} must be absolute, without `..`, outside /state, /memory and /dev",
                    inside.display()
                ));
            }
            if seen.iter().any(|s| s == inside) {
                return invalid(format!("jail path {} is given twice", inside.display()));
            }
            seen.push(inside.clone());
        }
        if let Some(cgroup) = &self.cgroup {
            let plain = cgroup.path.components().all(|c| matches!(c, std::path::Component::Normal(_)));
            if cgroup.path.as_os_str().is_empty() || !plain {
                return invalid(format!("cgroup path {} must be relative, without `..`", cgroup.path.display()));
            }
            if cgroup.pids_max < 2 {
                return invalid(format!("pids_max {} leaves no room for brig-vmm", cgroup.pids_max));
            }
        }
        if self.rlimits.nofile < 64 || self.rlimits.nproc < 2 {
            return invalid(format!("rlimits {:?} are below what brig-vmm needs", self.rlimits));
        }
        if self.keep_fds.iter().any(|fd| *fd <= 2) {
            return invalid("keep_fds lists stdio (0-2), which is always kept".into());
        }
        Ok(())
    }

    /// Where the binary is inside the jail: `/` and its file name (`/brig-vmm`).
    pub fn jail_exec(&self) -> PathBuf {
        Path::new("/").join(self.exec.file_name().unwrap_or_default())
    }

    /// The jail's `state/` directory, seen from the host.
    pub fn host_state_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR_NAME)
    }
}

/// brig-jailer: builds the jail and runs brig-vmm in it. Returns brig-vmm's exit
/// code (128 + N if a signal N ended it); `Err` if the jail could not be built
/// (nothing it made is left, except what the caller removes with the task:
/// the root directory and the cgroup).
pub fn run(spec: &JailSpec) -> Result<i32, JailError> {
    spec.validate()?;
    crate::sys::close_fds_from(3, &spec.keep_fds).map_err(JailError::step("closing inherited descriptors"))?;
    mounts::make_root(spec)?;
    if let Some(cgroup) = &spec.cgroup {
        cgroup::create_and_enter(cgroup)?;
    }
    privileges::supervise(spec)
}

/// The child side, in the new PID namespace: never returns unless the jail could
/// not be built.
fn jail_and_exec(spec: &JailSpec, alive: &std::os::fd::OwnedFd) -> JailError {
    let jailed = (|| -> Result<std::convert::Infallible, JailError> {
        // Read while the host's /proc is still there (Landlock then hides it).
        let last_cap = crate::sys::cap_last_cap().map_err(JailError::step("reading /proc/sys/kernel/cap_last_cap"))?;
        mounts::enter_namespaces(spec)?;
        mounts::build_and_pivot(spec)?;
        privileges::limit(&spec.rlimits)?;
        let enforced = landlock::restrict(spec)?;
        privileges::drop_all(spec.uid, spec.gid, last_cap)?;
        // Changing ids cleared the parent-death signal: set it again. `alive` is
        // close-on-exec, so brig-vmm does not inherit it.
        privileges::die_with_parent(alive)?;
        eprintln!("brig-jailer: {}: jailed as {}:{}; {enforced}", spec.id, spec.uid, spec.gid);
        privileges::exec(spec)
    })();
    match jailed {
        Ok(never) => match never {},
        Err(e) => e,
    }
}
