//! containerd's stdio (FIFOs or files named in the task request) joined to the
//! guest process's streams on the agent's stdio port.
//!
//! Each direction is a plain thread doing blocking copies: opening a FIFO blocks until
//! containerd's side opens it, which must not stall the task API, and a thread stuck
//! in a read must not keep the shim from exiting (tokio's blocking pool would: the
//! runtime waits for its tasks when it shuts down).

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use brig_protocol::stdio::Stream;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::sync::oneshot;

use crate::error::ShimError;
use crate::sandbox::Sandbox;

/// Paths containerd gave for a process (empty: not wanted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl StdioPaths {
    /// What the agent should offer: with a terminal, stdin and stdout carry the pty.
    pub fn agent_stdio(&self) -> brig_protocol::agent::Stdio {
        brig_protocol::agent::Stdio {
            stdin: !self.stdin.is_empty(),
            stdout: !self.stdout.is_empty(),
            stderr: !self.stderr.is_empty() && !self.terminal,
            terminal: self.terminal,
            ..Default::default()
        }
    }
}

/// Running copies for one process.
#[derive(Debug, Default)]
pub struct Copies {
    outputs: Vec<oneshot::Receiver<()>>,
}

impl Copies {
    /// Waits (at most `timeout`) until stdout and stderr have been copied to the end: the
    /// exit event goes out after the last output byte, as containerd expects.
    pub async fn drain(&mut self, timeout: Duration) {
        let outputs = std::mem::take(&mut self.outputs);
        let all = async {
            for done in outputs {
                let _ = done.await;
            }
        };
        if tokio::time::timeout(timeout, all).await.is_err() {
            log::warn!("output still open {timeout:?} after the process exited; not waiting longer");
        }
    }
}

fn spawn_copy(name: &str, copy: impl FnOnce() + Send + 'static) -> Result<oneshot::Receiver<()>, ShimError> {
    let (done, finished) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            copy();
            let _ = done.send(());
        })
        .map_err(ShimError::io(format!("starting the {name} thread")))?;
    Ok(finished)
}

/// Attaches every wanted stream of a process (`exec_id` `None`: the container's
/// own) and starts copying.
pub async fn attach(
    sandbox: &Sandbox,
    container_id: &str,
    exec_id: Option<&str>,
    paths: &StdioPaths,
) -> Result<Copies, ShimError> {
    // The stdio header's wire form: "" is the container's own process.
    let exec_id = exec_id.unwrap_or_default();
    let mut copies = Copies::default();
    let wanted = paths.agent_stdio();
    if wanted.stdin {
        let conn = sandbox.attach(container_id, exec_id, Stream::Stdin).await?;
        let path = paths.stdin.clone();
        // Not waited for: stdin ends when containerd closes it, or with the process.
        spawn_copy("stdin", move || copy_in(&path, conn))?;
    }
    for (stream, path, want) in
        [(Stream::Stdout, &paths.stdout, wanted.stdout), (Stream::Stderr, &paths.stderr, wanted.stderr)]
    {
        if !want {
            continue;
        }
        let conn = sandbox.attach(container_id, exec_id, stream).await?;
        let path = path.clone();
        copies.outputs.push(spawn_copy("output", move || copy_out(conn, &path))?);
    }
    Ok(copies)
}

/// containerd's stdin → the process. Ends the process's stdin when containerd's writer
/// closes, and stops when the process's side goes away.
///
/// The FIFO is opened non-blocking: containerd may already have written and closed it
/// (`ctr run` with stdin at /dev/null), and a blocking open would then wait forever.
/// Linux reports POLLHUP on a FIFO only once a writer has come and gone, so polling
/// tells "no writer yet" from "writer finished".
fn copy_in(path: &str, mut conn: UnixStream) {
    let mut fifo = match OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path) {
        Ok(fifo) => fifo,
        Err(e) => {
            log::warn!("cannot open stdin {path}: {e}");
            let _ = conn.shutdown(Shutdown::Write);
            return;
        }
    };
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let (input, guest) = {
            let mut fds = [
                PollFd::new(fifo.as_fd(), PollFlags::POLLIN),
                PollFd::new(conn.as_fd(), PollFlags::from_bits_retain(libc::POLLRDHUP)),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {
                    (fds[0].revents().unwrap_or(PollFlags::empty()), fds[1].revents().unwrap_or(PollFlags::empty()))
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    log::warn!("polling stdin: {e}");
                    break;
                }
            }
        };
        if !guest.is_empty() {
            // The process's stdin is gone (it exited, or closed it).
            break;
        }
        if input.is_empty() {
            continue;
        }
        match fifo.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock) => {}
            Err(e) => {
                log::warn!("reading stdin {path}: {e}");
                break;
            }
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
}

/// The process's output → containerd.
fn copy_out(mut conn: UnixStream, path: &str) {
    match OpenOptions::new().write(true).open(path) {
        Ok(mut out) => {
            let _ = pump(&mut conn, &mut out);
        }
        Err(e) => log::warn!("cannot open output {path}: {e}"),
    }
}

fn pump(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_carries_stdin_and_stdout_only() {
        let paths = StdioPaths { stdin: "/i".into(), stdout: "/o".into(), stderr: "/e".into(), terminal: true };
        let stdio = paths.agent_stdio();
        assert!(stdio.stdin && stdio.stdout && !stdio.stderr && stdio.terminal);
        let none = StdioPaths::default().agent_stdio();
        assert!(!none.stdin && !none.stdout && !none.stderr);
    }

    #[test]
    fn output_reaches_a_fifo_and_stdin_ends_with_its_writer() {
        let dir = std::env::temp_dir().join(format!("brig-shim-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let fifo = dir.join("out");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
        let (mut guest, shim) = UnixStream::pair().expect("pair");
        let path = fifo.to_string_lossy().into_owned();
        let copier = std::thread::spawn(move || copy_out(shim, &path));
        let reader = std::thread::spawn({
            let fifo = fifo.clone();
            move || std::fs::read_to_string(fifo).expect("read fifo")
        });
        guest.write_all(b"hello containerd").expect("write");
        drop(guest);
        copier.join().expect("copier");
        assert_eq!(reader.join().expect("reader"), "hello containerd");

        let input = dir.join("in");
        nix::unistd::mkfifo(&input, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
        let (shim, mut guest) = UnixStream::pair().expect("pair");
        let path = input.to_string_lossy().into_owned();
        let copier = std::thread::spawn(move || copy_in(&path, shim));
        std::fs::write(&input, b"typed").expect("containerd writes and closes");
        let mut got = String::new();
        guest.read_to_string(&mut got).expect("read");
        assert_eq!(got, "typed", "EOF reaches the guest side too");
        copier.join().expect("copier");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
