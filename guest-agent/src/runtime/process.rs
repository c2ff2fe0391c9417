//! The last steps before the workload runs: identity, capabilities, limits,
//! seccomp, terminal, then `execve`.
//!
//! `unsafe` here: `ioctl(TIOCSCTTY)` and resetting signal dispositions.
//! Invariants: the ioctl is made on fd 0, which the agent set up as the pty slave;
//! dispositions are only ever set to `SIG_DFL`, which runs no code of ours.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use caps::CapSet;
use nix::errno::Errno;
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::stat::{umask, Mode};
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
use oci_spec::runtime::{Capabilities, PosixRlimitType, Process};

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot set {what}")]
    Set { what: String, source: Errno },
    #[error("capability {0} is unknown to this kernel or brig")]
    UnknownCapability(String),
    #[error("cannot set the {set:?} capabilities")]
    Caps { set: CapSet, source: caps::errors::CapsError },
    #[error("the process has no args")]
    NoArgs,
    #[error("{arg0}: executable file not found in $PATH")]
    NotFound { arg0: String },
    #[error("exec {path} failed")]
    Exec { path: PathBuf, source: Errno },
    #[error("an argument or environment entry contains a NUL byte")]
    Nul,
}

fn set_err(what: &str) -> impl FnOnce(Errno) -> ProcessError {
    let what = what.to_owned();
    move |source| ProcessError::Set { what, source }
}

/// `oomScoreAdj`, while still privileged enough to lower it.
pub fn set_oom_score_adj(process: &Process) -> Result<(), ProcessError> {
    if let Some(adj) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| set_err("oom_score_adj")(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
    }
    Ok(())
}

fn resource(typ: PosixRlimitType) -> Resource {
    match typ {
        PosixRlimitType::RlimitCpu => Resource::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => Resource::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => Resource::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => Resource::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => Resource::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => Resource::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => Resource::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => Resource::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => Resource::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => Resource::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => Resource::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => Resource::RLIMIT_RTTIME,
    }
}

/// `rlimits` and `user.umask` (0022 when absent, as runc).
pub fn set_limits(process: &Process) -> Result<(), ProcessError> {
    for limit in process.rlimits().as_deref().unwrap_or_default() {
        setrlimit(resource(limit.typ()), limit.soft(), limit.hard())
            .map_err(set_err(&format!("rlimit {:?}", limit.typ())))?;
    }
    umask(Mode::from_bits_truncate(process.user().umask().unwrap_or(0o022)));
    Ok(())
}

/// Makes the pty on fd 0 the controlling terminal of a new session.
pub fn take_terminal() -> Result<(), ProcessError> {
    nix::unistd::setsid().map_err(set_err("a new session"))?;
    // SAFETY: fd 0 is the pty slave (module invariant); TIOCSCTTY takes an int argument.
    let rc = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
    Errno::result(rc).map(drop).map_err(set_err("the controlling terminal"))
}

fn to_caps(set: Option<&Capabilities>) -> Result<caps::CapsHashSet, ProcessError> {
    let mut out = HashSet::new();
    for cap in set.into_iter().flatten() {
        let name = format!("CAP_{cap}");
        out.insert(caps::Capability::from_str(&name).map_err(|_| ProcessError::UnknownCapability(name))?);
    }
    Ok(out)
}

/// Switches to the spec's uid/gid/groups and capability sets (runc's order: bounding
/// set first, then ids with capabilities kept across setuid, then the sets).
pub fn set_identity(process: &Process) -> Result<(), ProcessError> {
    let wanted = process.capabilities().as_ref();
    if let Some(c) = wanted {
        let bounding = to_caps(c.bounding().as_ref())?;
        for cap in caps::all() {
            if !bounding.contains(&cap) {
                // EINVAL: a capability newer than this kernel; it cannot be held anyway.
                if let Err(source) = caps::drop(None, CapSet::Bounding, cap) {
                    if caps::runtime::procfs_all_supported(None).is_ok_and(|s| s.contains(&cap)) {
                        return Err(ProcessError::Caps { set: CapSet::Bounding, source });
                    }
                }
            }
        }
    }
    nix::sys::prctl::set_keepcaps(true).map_err(set_err("keepcaps"))?;
    let user = process.user();
    let groups: Vec<Gid> =
        user.additional_gids().as_deref().unwrap_or_default().iter().map(|g| Gid::from_raw(*g)).collect();
    setgroups(&groups).map_err(set_err("supplementary groups"))?;
    let gid = Gid::from_raw(user.gid());
    setresgid(gid, gid, gid).map_err(set_err("gid"))?;
    let uid = Uid::from_raw(user.uid());
    setresuid(uid, uid, uid).map_err(set_err("uid"))?;
    nix::sys::prctl::set_keepcaps(false).map_err(set_err("keepcaps"))?;
    if let Some(c) = wanted {
        // Effective first (it must stay within permitted at every step), inheritable while
        // permitted still bounds it from above, permitted last.
        let sets = [
            (CapSet::Effective, c.effective()),
            (CapSet::Inheritable, c.inheritable()),
            (CapSet::Permitted, c.permitted()),
        ];
        for (set, list) in sets {
            let value = to_caps(list.as_ref())?;
            caps::set(None, set, &value).map_err(|source| ProcessError::Caps { set, source })?;
        }
        caps::clear(None, CapSet::Ambient).map_err(|source| ProcessError::Caps { set: CapSet::Ambient, source })?;
        for cap in to_caps(c.ambient().as_ref())? {
            caps::raise(None, CapSet::Ambient, cap)
                .map_err(|source| ProcessError::Caps { set: CapSet::Ambient, source })?;
        }
    }
    Ok(())
}

pub fn set_no_new_privileges() -> Result<(), ProcessError> {
    nix::sys::prctl::set_no_new_privs().map_err(set_err("no_new_privs"))
}

/// The process's `PATH` (or the usual default).
fn search_path(env: &[String]) -> String {
    env.iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .to_owned()
}

/// Where `arg0` is, the way a shell would find it.
pub fn resolve_executable(arg0: &str, env: &[String]) -> Result<PathBuf, ProcessError> {
    if arg0.contains('/') {
        return Ok(PathBuf::from(arg0));
    }
    search_path(env)
        .split(':')
        .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(arg0))
        .find(|candidate| nix::unistd::access(candidate, nix::unistd::AccessFlags::X_OK).is_ok() && candidate.is_file())
        .ok_or_else(|| ProcessError::NotFound { arg0: arg0.to_owned() })
}

/// Restores every signal's default disposition: `execve` keeps ignored signals
/// ignored, and the Rust runtime ignores `SIGPIPE`, which the workload must not inherit.
fn reset_signals() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    for sig in Signal::iterator().filter(|s| !matches!(s, Signal::SIGKILL | Signal::SIGSTOP)) {
        // SAFETY: SIG_DFL installs no handler (module invariant); failure leaves the old one.
        let _ = unsafe { signal(sig, SigHandler::SigDfl) };
    }
}

/// `chdir(cwd)` and `execve(args, env)`; returns only on failure.
pub fn exec(process: &Process) -> ProcessError {
    reset_signals();
    let args = process.args().as_deref().unwrap_or_default();
    let env = process.env().as_deref().unwrap_or_default();
    let Some(arg0) = args.first() else { return ProcessError::NoArgs };
    if let Err(e) = nix::unistd::chdir(process.cwd()) {
        return set_err(&format!("the working directory {}", process.cwd().display()))(e);
    }
    let path = match resolve_executable(arg0, env) {
        Ok(path) => path,
        Err(e) => return e,
    };
    let cstrings = |list: &[String]| list.iter().map(|s| CString::new(s.as_bytes())).collect::<Result<Vec<_>, _>>();
    let (Ok(c_path), Ok(c_args), Ok(c_env)) =
        (CString::new(path.as_os_str().as_bytes()), cstrings(args), cstrings(env))
    else {
        return ProcessError::Nul;
    };
    match nix::unistd::execve(&c_path, &c_args, &c_env) {
        Err(source) => ProcessError::Exec { path, source },
        Ok(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executables_are_found_on_the_process_path() {
        let env = vec!["PATH=/nonexistent:/bin".to_owned()];
        assert_eq!(resolve_executable("sh", &env).expect("sh"), PathBuf::from("/bin/sh"));
        assert_eq!(resolve_executable("/x/y", &env).expect("as is"), PathBuf::from("/x/y"));
        let err = resolve_executable("no-such-program", &env).expect_err("missing");
        assert_eq!(err.to_string(), "no-such-program: executable file not found in $PATH");
    }

    #[test]
    fn oci_capability_names_map_to_kernel_ones() {
        let set: Capabilities =
            [oci_spec::runtime::Capability::NetBindService, oci_spec::runtime::Capability::Chown].into_iter().collect();
        let mapped = to_caps(Some(&set)).expect("known");
        assert!(mapped.contains(&caps::Capability::CAP_NET_BIND_SERVICE));
        assert!(mapped.contains(&caps::Capability::CAP_CHOWN));
    }
}
