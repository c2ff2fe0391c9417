//! Container helper processes: the code between `clone` and the workload's `execve`.
//!
//! The agent is multi-threaded, so after `clone` its child only re-executes the
//! agent's own (sealed, in-memory) binary with [`config::INIT_ARG`] or
//! [`config::EXEC_ARG`]. That fresh, single-threaded process reads its
//! configuration from a pipe and does everything else: namespaces, mounts,
//! `pivot_root`, identity, limits, seccomp, then waits for the agent's go-ahead
//! and execs. Failures are reported on the status pipe (`E<message>`), readiness
//! with `R`; a successful exec closes the pipe.

pub mod config;
pub mod console;
pub mod mounts;
pub mod paths;
pub mod process;
pub mod seccomp;
pub mod syscalls;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sched::{setns, unshare, CloneFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use self::config::{ExecConfig, InitConfig, CONFIG_FD, PID_FD, START_FD, STATUS_FD};
use self::seccomp::SeccompPrograms;

/// Takes ownership of a descriptor the agent set up for this helper.
fn inherited(fd: i32) -> File {
    // SAFETY: the agent places `fd` (3..=6) in the helper before exec and nothing else
    // in this fresh process owns it; each is taken exactly once.
    unsafe { File::from_raw_fd(fd) }
}

/// Reports `message` on the status pipe and exits.
fn fail(status: &mut File, message: impl std::fmt::Display) -> ! {
    let _ = status.write_all(format!("E{message}").as_bytes());
    std::process::exit(1);
}

/// Unwraps or reports the error (with its sources) and exits.
trait OrFail<T> {
    fn or_fail(self, status: &mut File, what: &str) -> T;
}

impl<T, E: std::error::Error> OrFail<T> for Result<T, E> {
    fn or_fail(self, status: &mut File, what: &str) -> T {
        match self {
            Ok(v) => v,
            Err(e) => {
                let mut text = format!("{what}: {e}");
                let mut source = e.source();
                while let Some(s) = source {
                    text.push_str(&format!(": {s}"));
                    source = s.source();
                }
                fail(status, text)
            }
        }
    }
}

fn read_config<T: serde::de::DeserializeOwned>(status: &mut File) -> T {
    let mut text = Vec::new();
    inherited(CONFIG_FD).read_to_end(&mut text).or_fail(status, "reading the configuration");
    serde_json::from_slice(&text).or_fail(status, "decoding the configuration")
}

/// Opens the status pipe (close-on-exec, so a successful exec closes it).
fn status_pipe() -> File {
    let status = inherited(STATUS_FD);
    // Without close-on-exec the agent would never see the exec succeed; nothing to report to if this fails.
    let _ = fcntl(&status, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    status
}

/// Waits for the agent's go-ahead: one byte; EOF means the container was removed.
fn wait_for_start(status: &mut File) {
    let mut start = inherited(START_FD);
    let _ = fcntl(&start, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    let _ = status.write_all(b"R");
    let mut byte = [0u8; 1];
    match start.read(&mut byte) {
        Ok(1) => {}
        _ => std::process::exit(1),
    }
}

fn namespace_flag(typ: LinuxNamespaceType) -> CloneFlags {
    CloneFlags::from_bits_truncate(typ as i32)
}

/// Joins the namespaces the spec names by path (a pod's shared network, say).
fn join_namespaces(spec: &Spec, status: &mut File) {
    let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().as_deref()).unwrap_or_default();
    for ns in namespaces {
        if let Some(path) = ns.path() {
            let fd = nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
                .or_fail(status, &format!("opening namespace {}", path.display()));
            setns(&fd, namespace_flag(ns.typ())).or_fail(status, &format!("joining namespace {}", path.display()));
        }
    }
}

fn wants_new(spec: &Spec, typ: LinuxNamespaceType) -> bool {
    let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().as_deref()).unwrap_or_default();
    namespaces.iter().any(|ns| ns.typ() == typ && ns.path().is_none())
}

/// Seccomp: the spec's profile (if any) and brig's own vsock ban, compiled now,
/// installed at the right moment (before dropping capabilities unless
/// `noNewPrivileges`, which lets an unprivileged process install filters).
fn seccomp_programs(profile: Option<&oci_spec::runtime::LinuxSeccomp>, status: &mut File) -> Vec<SeccompPrograms> {
    let mut programs = vec![seccomp::deny_vsock().or_fail(status, "building the vsock filter")];
    if let Some(profile) = profile {
        programs.push(seccomp::compile(profile).or_fail(status, "compiling the seccomp profile"));
    }
    programs
}

/// The shared tail of both helpers, in the container's namespaces.
fn finish(process: &oci_spec::runtime::Process, seccomp: Vec<SeccompPrograms>, terminal: bool, status: &mut File) -> ! {
    if terminal {
        process::take_terminal().or_fail(status, "terminal");
    }
    process::set_limits(process).or_fail(status, "limits");
    let nnp = process.no_new_privileges().unwrap_or(false);
    if !nnp {
        for programs in &seccomp {
            programs.install().or_fail(status, "installing seccomp filters");
        }
    }
    process::set_identity(process).or_fail(status, "user and capabilities");
    if nnp {
        process::set_no_new_privileges().or_fail(status, "no_new_privileges");
        for programs in &seccomp {
            programs.install().or_fail(status, "installing seccomp filters");
        }
    }
    wait_for_start(status);
    let error = process::exec(process);
    fail(status, error)
}

/// `brig-agent container-init`: becomes a container's own process.
pub fn init_main() -> ! {
    let mut status = status_pipe();
    let config: InitConfig = read_config(&mut status);
    let spec = &config.spec;
    let Some(process) = spec.process().as_ref() else { fail(&mut status, "the spec has no process") };
    let seccomp = seccomp_programs(spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()), &mut status);
    join_namespaces(spec, &mut status);
    if wants_new(spec, LinuxNamespaceType::Cgroup) {
        unshare(CloneFlags::CLONE_NEWCGROUP).or_fail(&mut status, "new cgroup namespace");
    }
    for (key, value) in spec.linux().as_ref().and_then(|l| l.sysctl().as_ref()).into_iter().flatten() {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        if key.contains("..") || key.contains('/') {
            fail(&mut status, format!("invalid sysctl name {key:?}"));
        }
        std::fs::write(&path, value).or_fail(&mut status, &format!("sysctl {key}"));
    }
    process::set_oom_score_adj(process).or_fail(&mut status, "oom_score_adj");
    let own_cgroup = (!wants_new(spec, LinuxNamespaceType::Cgroup)).then_some(config.cgroup.as_path());
    let setup = mounts::Setup { rootfs: &config.rootfs, bundle: &config.bundle, own_cgroup, terminal: config.terminal };
    let pty = mounts::setup(spec, &setup).or_fail(&mut status, "mounts");
    if let Some(pty) = pty {
        console::install(&pty.slave).or_fail(&mut status, "terminal");
        console::send(pty.master).or_fail(&mut status, "terminal");
    }
    if wants_new(spec, LinuxNamespaceType::Uts) {
        if let Some(hostname) = spec.hostname() {
            nix::unistd::sethostname(hostname).or_fail(&mut status, "hostname");
        }
        if let Some(domain) = spec.domainname() {
            std::fs::write("/proc/sys/kernel/domainname", domain).or_fail(&mut status, "domainname");
        }
    }
    finish(process, seccomp, config.terminal, &mut status)
}

/// `brig-agent container-exec`: joins a running container and starts a process in it.
pub fn exec_main() -> ! {
    let mut status = status_pipe();
    let config: ExecConfig = read_config(&mut status);
    let seccomp = seccomp_programs(config.seccomp.as_ref(), &mut status);
    std::fs::write(config.cgroup.join("cgroup.procs"), "0").or_fail(&mut status, "joining the container's cgroup");
    // Open every namespace first: after joining the mount namespace, /proc is the container's.
    let mut namespaces = Vec::new();
    for (name, flag) in [
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        let path = format!("/proc/{}/ns/{name}", config.init_pid);
        let fd = nix::fcntl::open(path.as_str(), OFlag::O_RDONLY | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
            .or_fail(&mut status, &format!("opening {path}"));
        namespaces.push((name, flag, fd));
    }
    for (name, flag, fd) in &namespaces {
        // Joining the namespace we are already in fails for some types; skip those.
        let own = std::fs::read_link(format!("/proc/self/ns/{name}")).ok();
        let theirs = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok();
        if own.is_some() && own == theirs {
            continue;
        }
        setns(fd, *flag).or_fail(&mut status, &format!("joining the {name} namespace"));
    }
    drop(namespaces);
    nix::unistd::chdir("/").or_fail(&mut status, "chdir /");
    if config.terminal {
        // In the container's mount namespace now: its /dev/ptmx, as `runc exec -t` does.
        let pty = console::create().or_fail(&mut status, "terminal");
        console::install(&pty.slave).or_fail(&mut status, "terminal");
        console::send(pty.master).or_fail(&mut status, "terminal");
    }
    process::set_oom_score_adj(&config.process).or_fail(&mut status, "oom_score_adj");
    // The new process must be forked to land in the pid namespace; CLONE_PARENT makes
    // it the agent's child, so the agent reaps it like any container process.
    let mut pid_pipe = inherited(PID_FD);
    let mut stack = vec![0u8; CHILD_STACK];
    let child_status = status.try_clone().or_fail(&mut status, "status pipe");
    let mut seccomp = seccomp;
    let child = Box::new(move || -> isize {
        // The pid pipe must reach EOF when the helper exits, not when this process execs.
        let _ = nix::unistd::close(PID_FD);
        let mut status = child_status.try_clone().unwrap_or_else(|_| std::process::exit(1));
        finish(&config.process, std::mem::take(&mut seccomp), config.terminal, &mut status)
    });
    // SAFETY: the child runs `child` on `stack` in a copy of this single-threaded process
    // (no CLONE_VM), never returns from it (`finish` execs or exits), and shares nothing.
    let spawned = unsafe { nix::sched::clone(child, &mut stack, CloneFlags::CLONE_PARENT, Some(libc::SIGCHLD)) };
    match spawned {
        Ok(pid) => {
            let _ = pid_pipe.write_all(pid.as_raw().to_string().as_bytes());
            std::process::exit(0);
        }
        Err(e) => fail(&mut status, format!("starting the process: {e}")),
    }
}

/// Stack for the process an exec helper forks.
const CHILD_STACK: usize = 1 << 20;
