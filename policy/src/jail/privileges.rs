//! The jailer's two processes, and what the jailed one gives up before `execve`:
//! rlimits, every capability in every set, root's uid and gid, and the right to
//! gain privileges.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

use caps::CapSet;
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Gid, Uid};

use super::{JailError, JailSpec, Rlimits};

/// Signals the parent forwards to brig-vmm: those it handles (as PID 1 of its
/// namespace, it never sees a signal it has no handler for, except SIGKILL).
const FORWARDED: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

/// Forks into a new PID namespace. The child builds the jail and becomes brig-vmm
/// (PID 1 there); this process prints its host pid on stdout (`pid N`), forwards
/// signals to it and returns its exit status.
pub fn supervise(spec: &JailSpec) -> Result<i32, JailError> {
    let mut signals = SigSet::empty();
    for signal in FORWARDED.iter().copied().chain([Signal::SIGCHLD]) {
        signals.add(signal);
    }
    // Blocked before the fork, so no signal is lost between fork and sigwait.
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), None)
        .map_err(JailError::nix("blocking signals"))?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID).map_err(JailError::nix("unshare(PID namespace)"))?;
    // The parent holds `alive`'s write end until it exits: the child sees it gone
    // as a hang-up (getppid() is 0 across PID namespaces either way).
    let alive = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(JailError::nix("pipe"))?;
    let child = match crate::sys::fork_single_threaded().map_err(JailError::nix("fork"))? {
        ForkResult::Child => {
            drop(alive.1);
            let e = child_start(&alive.0, &signals).err().unwrap_or_else(|| super::jail_and_exec(spec, &alive.0));
            eprintln!("brig-jailer: {}: {e}", spec.id);
            std::process::exit(super::EXIT_JAIL_FAILED);
        }
        ForkResult::Parent { child } => child,
    };
    drop(alive.0);
    let _keep_alive = alive.1;
    println!("{}", super::pid_line(child));
    // stdout is the shim's pipe: nothing else goes there.
    let _ = nix::unistd::dup2_stdout(std::io::stdin());
    loop {
        match signals.wait().map_err(JailError::nix("sigwait"))? {
            Signal::SIGCHLD => match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
                Ok(_) => {}
                Err(e) => return Err(JailError::nix("waiting for brig-vmm")(e)),
            },
            signal => {
                let _ = kill(child, signal);
            }
        }
    }
}

/// First thing in the child: die with the parent, and take signals again.
fn child_start(alive: &std::os::fd::OwnedFd, signals: &SigSet) -> Result<(), JailError> {
    die_with_parent(alive)?;
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(signals), None)
        .map_err(JailError::nix("unblocking signals"))?;
    Ok(())
}

/// `PR_SET_PDEATHSIG` = SIGKILL, then checks the parent (the holder of `alive`'s write
/// end) did not die before it. Called again after the uid/gid change, which clears
/// the parent-death signal.
pub fn die_with_parent(alive: &std::os::fd::OwnedFd) -> Result<(), JailError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(JailError::nix("PR_SET_PDEATHSIG"))?;
    let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(alive), PollFlags::POLLIN)];
    if poll(&mut fds, PollTimeout::ZERO).map_err(JailError::nix("poll"))? > 0 {
        return Err(JailError::Prerequisite("the jailer's parent is gone".into()));
    }
    Ok(())
}

/// The jail's rlimits (soft = hard, so brig-vmm cannot raise them).
pub fn limit(limits: &Rlimits) -> Result<(), JailError> {
    for (resource, value, name) in [
        (Resource::RLIMIT_NOFILE, limits.nofile, "RLIMIT_NOFILE"),
        (Resource::RLIMIT_FSIZE, limits.fsize, "RLIMIT_FSIZE"),
        (Resource::RLIMIT_NPROC, limits.nproc, "RLIMIT_NPROC"),
    ] {
        setrlimit(resource, value, value).map_err(JailError::nix(format!("setrlimit {name} {value}")))?;
    }
    Ok(())
}

/// Drops the bounding set (capabilities 0 to `last_cap`), supplementary groups, gid, uid, then the inheritable and
/// ambient sets (setresuid from 0 clears permitted and effective), and sets
/// `no_new_privs`; then checks that every set is empty.
pub fn drop_all(uid: u32, gid: u32, last_cap: u32) -> Result<(), JailError> {
    let caps = |what: &str| {
        let what = what.to_owned();
        move |e: caps::errors::CapsError| JailError::Prerequisite(format!("{what}: {e}"))
    };
    // Every capability the kernel has, by number: also those newer than `caps`.
    for cap in 0..=last_cap {
        crate::sys::drop_bounding(cap)
            .map_err(JailError::step(format!("dropping capability {cap} from the bounding set")))?;
    }
    nix::unistd::setgroups(&[]).map_err(JailError::nix("setgroups([])"))?;
    let (gid, uid) = (Gid::from_raw(gid), Uid::from_raw(uid));
    nix::unistd::setresgid(gid, gid, gid).map_err(JailError::nix(format!("setresgid {gid}")))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(JailError::nix(format!("setresuid {uid}")))?;
    caps::clear(None, CapSet::Inheritable).map_err(caps("clearing the inheritable set"))?;
    caps::clear(None, CapSet::Ambient).map_err(caps("clearing the ambient set"))?;
    nix::sys::prctl::set_no_new_privs().map_err(JailError::nix("PR_SET_NO_NEW_PRIVS"))?;
    for cap in 0..=last_cap {
        if crate::sys::in_bounding(cap).map_err(JailError::step(format!("reading capability {cap}")))? {
            return Err(JailError::Prerequisite(format!("capability {cap} is still in the bounding set")));
        }
    }
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable, CapSet::Bounding, CapSet::Ambient] {
        let left = caps::read(None, set).map_err(caps(&format!("reading the {set:?} set")))?;
        if !left.is_empty() {
            return Err(JailError::Prerequisite(format!("the {set:?} capability set still holds {left:?}")));
        }
    }
    Ok(())
}

/// `execve` of brig-vmm inside the jail, with an empty environment. stdout goes
/// where stdin does (`/dev/null`): it is the shim's pipe for the pid line.
pub fn exec(spec: &JailSpec) -> Result<std::convert::Infallible, JailError> {
    let cstr = |s: &[u8]| CString::new(s).map_err(|_| JailError::Invalid("an argument holds a NUL byte".into()));
    let exec = spec.jail_exec();
    let mut argv = vec![cstr(exec.as_os_str().as_bytes())?];
    for arg in &spec.args {
        argv.push(cstr(std::ffi::OsStr::new(arg).as_bytes())?);
    }
    nix::unistd::dup2_stdout(std::io::stdin()).map_err(JailError::nix("pointing stdout at stdin"))?;
    let env: [CString; 0] = [];
    let e = nix::unistd::execve(&argv[0], &argv, &env).map_err(JailError::nix(format!("execve {}", exec.display())));
    match e {
        Ok(never) => match never {},
        Err(e) => Err(e),
    }
}
