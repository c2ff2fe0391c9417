//! A terminal process's pty, made where runc makes it: inside the container, from
//! the container's own `/dev/ptmx`, so the slave belongs to the container's devpts
//! (`tty` prints `/dev/pts/0`, and `/dev/console` is that slave). The master goes
//! back to the agent over the console socket ([`CONSOLE_FD`]).

use std::fs::File;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, MsFlags};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

use super::config::CONSOLE_FD;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("cannot open the container's /dev/ptmx (does the spec mount devpts on /dev/pts?)")]
    Open(#[source] Errno),
    #[error("cannot {what}")]
    Pty { what: &'static str, source: Errno },
    #[error("cannot bind the terminal on /dev/console")]
    Mount(#[source] Errno),
    #[error("cannot hand the terminal to the agent")]
    Send(#[source] Errno),
}

/// Both ends of a new pty.
#[derive(Debug)]
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

fn pty_err(what: &'static str) -> impl FnOnce(Errno) -> ConsoleError {
    move |source| ConsoleError::Pty { what, source }
}

/// Opens a pty from `/dev/ptmx` of the current mount namespace and root.
pub fn create() -> Result<Pty, ConsoleError> {
    let master =
        nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).map_err(ConsoleError::Open)?;
    nix::pty::unlockpt(&master).map_err(pty_err("unlock the pty"))?;
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: `master` is an open pty master; TIOCGPTPEER takes open flags and returns
    // a new descriptor for its slave (no path lookup that could be raced).
    let slave = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    let slave = Errno::result(slave).map_err(pty_err("open the pty's slave"))?;
    // SAFETY: the ioctl returned a new descriptor that nothing else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    // SAFETY: `posix_openpt`'s result owns its descriptor; taking it out transfers that.
    let master = unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(master)) };
    Ok(Pty { master, slave })
}

/// Bind-mounts the slave on `/dev/console` (after `pivot_root`), creating the file.
pub fn mount_console(slave: &OwnedFd) -> Result<(), ConsoleError> {
    let console = Path::new("/dev/console");
    if std::fs::symlink_metadata(console).is_err() {
        File::create(console).map_err(|e| ConsoleError::Mount(Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
    }
    let source = format!("/proc/self/fd/{}", slave.as_raw_fd());
    mount(Some(source.as_str()), console, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(ConsoleError::Mount)
}

/// Makes the slave this process's stdin, stdout and stderr.
pub fn install(slave: &OwnedFd) -> Result<(), ConsoleError> {
    for fd in 0..=2 {
        // SAFETY: dup2 onto the standard descriptors, which this helper owns.
        Errno::result(unsafe { libc::dup2(slave.as_raw_fd(), fd) }).map_err(pty_err("make the pty stdio"))?;
    }
    Ok(())
}

/// Sends the master to the agent and closes the console socket.
pub fn send(master: OwnedFd) -> Result<(), ConsoleError> {
    // SAFETY: the agent places the console socket at CONSOLE_FD for terminal processes
    // only, and it is taken exactly once, here.
    let socket = unsafe { OwnedFd::from_raw_fd(CONSOLE_FD) };
    let fds: [RawFd; 1] = [master.as_raw_fd()];
    sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(b"M")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(ConsoleError::Send)?;
    Ok(())
}
