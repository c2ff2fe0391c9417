//! A process's standard streams on the agent side, and the stdio port where the
//! host attaches them (protocol: `brig_protocol::stdio`).
//!
//! Each stream is a pipe (or, with a terminal, the pty master). Until the host
//! attaches a stream its data waits in the pipe, so nothing is lost and a chatty
//! process is held back by the pipe's capacity; streams the host said it will not
//! attach are `/dev/null` from the start.
//!
//! A terminal is made by the helper inside the container (`runtime::console`); the
//! agent receives the master on a socket before the process may start.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brig_protocol::agent::Stdio;
use brig_protocol::stdio::{Header, Stream, MAX_HEADER};
use nix::fcntl::OFlag;
use nix::sys::socket::{
    recvmsg, shutdown, socketpair, AddressFamily, ControlMessageOwned, MsgFlags, Shutdown, SockFlag, SockType,
};

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("cannot create a pipe or pty")]
    Create(#[source] nix::Error),
    #[error("cannot open /dev/null")]
    DevNull(#[source] std::io::Error),
    #[error("cannot set the terminal size")]
    Resize(#[source] nix::Error),
    #[error("the process has no terminal")]
    NoTerminal,
    #[error("the container helper sent no terminal")]
    NoMaster(#[source] nix::Error),
}

/// The child's ends, installed as its fds 0, 1 and 2 (and the console socket).
#[derive(Debug)]
pub struct ChildStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// Terminal processes: where the helper sends the pty master.
    pub console: Option<OwnedFd>,
}

/// The agent's ends, waiting for the host.
#[derive(Debug, Default)]
pub struct ProcessIo {
    stdin: Mutex<Option<OwnedFd>>,
    stdout: Mutex<Option<OwnedFd>>,
    stderr: Mutex<Option<OwnedFd>>,
    /// The pty master, kept for resizing.
    pty: Mutex<Option<OwnedFd>>,
    /// Terminal processes, until the master arrives: the agent's end of the console
    /// socket, and whether the host will attach stdin.
    console: Mutex<Option<(OwnedFd, bool)>>,
    /// A handle on the attached stdin connection, to end it on `CloseStdin`.
    stdin_conn: Mutex<Option<OwnedFd>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), StdioError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(StdioError::Create)
}

fn dev_null() -> Result<OwnedFd, StdioError> {
    Ok(File::options().read(true).write(true).open("/dev/null").map_err(StdioError::DevNull)?.into())
}

/// Pipes (or a pty) for a new process, per what the host will attach.
pub fn create(stdio: &Stdio) -> Result<(Arc<ProcessIo>, ChildStdio), StdioError> {
    if stdio.terminal {
        let (agent_end, helper_end) =
            socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK)
                .map_err(StdioError::Create)?;
        let io = ProcessIo { console: Mutex::new(Some((agent_end, stdio.stdin))), ..Default::default() };
        let child =
            ChildStdio { stdin: dev_null()?, stdout: dev_null()?, stderr: dev_null()?, console: Some(helper_end) };
        return Ok((Arc::new(io), child));
    }
    let (child_in, host_in) = if stdio.stdin { pipe().map(|(r, w)| (r, Some(w)))? } else { (dev_null()?, None) };
    let (host_out, child_out) = if stdio.stdout { pipe().map(|(r, w)| (Some(r), w))? } else { (None, dev_null()?) };
    let (host_err, child_err) = if stdio.stderr { pipe().map(|(r, w)| (Some(r), w))? } else { (None, dev_null()?) };
    let io = ProcessIo {
        stdin: Mutex::new(host_in),
        stdout: Mutex::new(host_out),
        stderr: Mutex::new(host_err),
        ..Default::default()
    };
    Ok((Arc::new(io), ChildStdio { stdin: child_in, stdout: child_out, stderr: child_err, console: None }))
}

impl ProcessIo {
    /// Terminal processes: takes the pty master the helper sent (it sends it before
    /// reporting ready, so it is waiting on the socket).
    pub fn receive_terminal(&self) -> Result<(), StdioError> {
        let Some((socket, stdin)) = lock(&self.console).take() else { return Ok(()) };
        let master = receive_fd(&socket).map_err(StdioError::NoMaster)?;
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(|e| StdioError::Create(nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EBADF))))
        };
        *lock(&self.stdin) = stdin.then(|| dup(&master)).transpose()?;
        *lock(&self.stdout) = Some(dup(&master)?);
        *lock(&self.pty) = Some(master);
        Ok(())
    }

    /// Takes a stream for attaching; `None` if it was never offered or is taken.
    fn take(&self, stream: Stream) -> Option<OwnedFd> {
        match stream {
            Stream::Stdin => lock(&self.stdin).take(),
            Stream::Stdout => lock(&self.stdout).take(),
            Stream::Stderr => lock(&self.stderr).take(),
        }
    }

    /// Ends the process's stdin: now if unattached, else when the connection is shut.
    pub fn close_stdin(&self) {
        drop(lock(&self.stdin).take());
        if let Some(conn) = lock(&self.stdin_conn).take() {
            let _ = shutdown(conn.as_raw_fd(), Shutdown::Read);
        }
    }

    pub fn resize(&self, width: u16, height: u16) -> Result<(), StdioError> {
        let pty = lock(&self.pty);
        let pty = pty.as_ref().ok_or(StdioError::NoTerminal)?;
        let size = libc::winsize { ws_row: height, ws_col: width, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: `pty` is an open pty master and `size` a valid winsize for TIOCSWINSZ.
        let rc = unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        nix::errno::Errno::result(rc).map(drop).map_err(StdioError::Resize)
    }
}

/// One descriptor sent with `SCM_RIGHTS` (the helper sends exactly one).
fn receive_fd(socket: &OwnedFd) -> Result<OwnedFd, nix::Error> {
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            let mut owned = fds.into_iter().map(|fd| {
                // SAFETY: SCM_RIGHTS installed these descriptors in this process just now.
                unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
            });
            if let Some(fd) = owned.next() {
                return Ok(fd);
            }
        }
    }
    Err(nix::Error::ENOMSG)
}

/// Looks up the stream a header names.
pub trait StreamSource: Send + Sync {
    fn process_io(&self, container_id: &str, exec_id: &str) -> Option<Arc<ProcessIo>>;
}

/// Serves one connection on the stdio port: header, answer, then pump until EOF.
pub fn serve_connection(conn: File, source: &dyn StreamSource) {
    let header = match read_header(&conn) {
        Ok(header) => header,
        Err(reason) => return refuse(conn, &reason),
    };
    let Some(io) = source.process_io(&header.container_id, &header.exec_id) else {
        return refuse(conn, "no such process");
    };
    let Some(fd) = io.take(header.stream) else {
        return refuse(conn, &format!("{} is not offered or already attached", header.stream.as_str()));
    };
    let mut conn = conn;
    if conn.write_all(b"OK\n").is_err() {
        return;
    }
    match header.stream {
        Stream::Stdin => {
            *lock(&io.stdin_conn) = conn.as_fd().try_clone_to_owned().ok();
            pump(conn, File::from(fd));
            lock(&io.stdin_conn).take();
        }
        Stream::Stdout | Stream::Stderr => {
            let done = conn.try_clone();
            pump(File::from(fd), conn);
            if let Ok(conn) = done {
                let _ = shutdown(conn.as_raw_fd(), Shutdown::Write);
            }
        }
    }
}

fn refuse(mut conn: File, reason: &str) {
    log::warn!("stdio connection refused: {reason}");
    let _ = conn.write_all(format!("ERR {reason}\n").as_bytes());
}

fn read_header(mut conn: &File) -> Result<Header, String> {
    set_read_timeout(conn, Some(Duration::from_secs(10)));
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match conn.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => line.push(byte[0]),
            _ => return Err("no header".into()),
        }
        if line.len() > MAX_HEADER {
            return Err("header too long".into());
        }
    }
    set_read_timeout(conn, None);
    Header::parse(&String::from_utf8_lossy(&line))
}

fn set_read_timeout(conn: &File, timeout: Option<Duration>) {
    let tv =
        timeout.map_or(nix::sys::time::TimeVal::new(0, 0), |t| nix::sys::time::TimeVal::new(t.as_secs() as i64, 0));
    let _ = nix::sys::socket::setsockopt(conn, nix::sys::socket::sockopt::ReceiveTimeout, &tv);
}

/// Copies until EOF (or EIO: a pty whose last slave closed) or a write error.
fn pump(mut from: File, mut to: File) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    struct One(Arc<ProcessIo>);

    impl StreamSource for One {
        fn process_io(&self, container_id: &str, exec_id: &str) -> Option<Arc<ProcessIo>> {
            (container_id == "c1" && exec_id.is_empty()).then(|| self.0.clone())
        }
    }

    fn attach(source: Arc<One>, header: &str) -> (UnixStream, std::thread::JoinHandle<()>) {
        let (ours, theirs) = UnixStream::pair().expect("pair");
        let header = header.to_owned();
        let server = std::thread::spawn(move || serve_connection(File::from(OwnedFd::from(theirs)), source.as_ref()));
        let mut ours = ours;
        ours.write_all(header.as_bytes()).expect("header");
        (ours, server)
    }

    fn reply(conn: &mut UnixStream) -> String {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while conn.read(&mut byte).expect("reply") == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        String::from_utf8(line).expect("utf8")
    }

    #[test]
    fn streams_flow_and_attach_once() {
        let (io, child) =
            create(&Stdio { stdin: true, stdout: true, stderr: false, ..Default::default() }).expect("io");
        let source = Arc::new(One(io.clone()));

        // The "process" wrote before anyone attached; nothing is lost.
        File::from(child.stdout).write_all(b"early output").expect("write");
        let (mut out, server) = attach(source.clone(), "STDIO c1 - stdout\n");
        assert_eq!(reply(&mut out), "OK");
        let mut got = String::new();
        out.read_to_string(&mut got).expect("read");
        assert_eq!(got, "early output", "EOF arrives once the process's end is closed");
        server.join().expect("server");

        let (mut again, _) = attach(source.clone(), "STDIO c1 - stdout\n");
        assert!(reply(&mut again).starts_with("ERR stdout is not offered or already attached"));
        let (mut err, _) = attach(source.clone(), "STDIO c1 - stderr\n");
        assert!(reply(&mut err).starts_with("ERR"), "stderr was not offered");
        let (mut bad, _) = attach(source.clone(), "STDIO ../../etc - stdout\n");
        assert!(reply(&mut bad).starts_with("ERR invalid container id"));

        let (mut input, server) = attach(source.clone(), "STDIO c1 - stdin\n");
        assert_eq!(reply(&mut input), "OK");
        input.write_all(b"typed").expect("stdin");
        input.shutdown(std::net::Shutdown::Write).expect("eof");
        let mut typed = String::new();
        File::from(child.stdin).read_to_string(&mut typed).expect("child stdin");
        assert_eq!(typed, "typed");
        server.join().expect("server");
    }

    #[test]
    fn a_terminal_arrives_from_the_helper_resizes_and_others_refuse() {
        let (io, child) =
            create(&Stdio { stdin: true, stdout: true, terminal: true, ..Default::default() }).expect("pty");
        assert!(matches!(io.resize(80, 24), Err(StdioError::NoTerminal)), "no terminal before the helper sends it");
        // What the helper does (runtime::console::send), on this side of the socket.
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let helper = child.console.expect("a terminal process gets a console socket");
        let fds = [pty.master.as_raw_fd()];
        nix::sys::socket::sendmsg::<()>(
            helper.as_raw_fd(),
            &[std::io::IoSlice::new(b"M")],
            &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .expect("send the master");
        io.receive_terminal().expect("receive");
        assert!(
            io.take(Stream::Stdin).is_some() && io.take(Stream::Stdout).is_some() && io.take(Stream::Stderr).is_none()
        );
        io.resize(132, 43).expect("resize");
        let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: `pty.slave` is an open pty slave; TIOCGWINSZ fills `size`.
        let rc = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
        assert_eq!(rc, 0);
        assert_eq!((size.ws_col, size.ws_row), (132, 43));
        let (plain, _) = create(&Stdio::default()).expect("io");
        assert!(matches!(plain.resize(80, 24), Err(StdioError::NoTerminal)));
    }
}
