//! What the agent tells a container helper process: sent as JSON over a pipe
//! (fd [`CONFIG_FD`]) right after the helper starts.

use std::path::PathBuf;

use oci_spec::runtime::{LinuxSeccomp, Process, Spec};
use serde::{Deserialize, Serialize};

/// Descriptors a helper inherits, besides 0-2 (its stdio).
pub const CONFIG_FD: i32 = 3;
/// Status pipe (write end): `R` when set up and waiting for start, `E<message>` on
/// failure; closed by a successful exec (close-on-exec).
pub const STATUS_FD: i32 = 4;
/// Start pipe (read end): one byte lets the process exec; EOF aborts it.
pub const START_FD: i32 = 5;
/// Exec helpers only (write end): the pid of the process they started, as text.
pub const PID_FD: i32 = 6;
/// Terminal processes only: a socket on which the helper sends back the pty master
/// it made inside the container (see `runtime::console`).
pub const CONSOLE_FD: i32 = 7;

/// `argv[1]` of a helper for a container's own process.
pub const INIT_ARG: &str = "container-init";
/// `argv[1]` of a helper for a process exec'd into a running container.
pub const EXEC_ARG: &str = "container-exec";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitConfig {
    /// Where the container's rootfs is mounted in the agent's mount namespace.
    pub rootfs: PathBuf,
    /// The bundle directory: relative bind-mount sources are taken from here.
    pub bundle: PathBuf,
    /// The container's cgroup directory (the agent has already moved the helper there).
    pub cgroup: PathBuf,
    pub spec: Spec,
    /// The process has a pty on stdin/stdout/stderr.
    pub terminal: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecConfig {
    /// The container's own process, whose namespaces the new process joins.
    pub init_pid: u32,
    pub cgroup: PathBuf,
    pub process: Process,
    /// The container's seccomp profile and sysctl-free settings that also bind exec'd processes.
    pub seccomp: Option<LinuxSeccomp>,
    pub terminal: bool,
}
