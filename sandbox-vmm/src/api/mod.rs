//! The control socket: newline-delimited JSON requests and answers over a Unix
//! stream socket. The wire types, framing and limits are brig-vmm's contract, in
//! `brig-vmm-api`; this module serves them. Documented in docs/control-socket.md.

use std::collections::HashMap;
use std::io::{ErrorKind, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use brig_vmm_api::wire::{self, MAX_CONNECTIONS, MAX_LINE};
use brig_vmm_api::{ApiError, ErrorCode, Request, Response};

use crate::metrics::METRICS;

/// Parses one request line; a bad one gets this error as its answer.
pub fn parse(line: &[u8]) -> Result<Request, ApiError> {
    wire::parse_request(line)
}

/// Descriptors one connection may hold for its next request (`save-state-fd`
/// takes one); more close the connection.
const MAX_PENDING_FDS: usize = 1;
/// The most descriptors one Unix stream message can carry (the kernel's SCM_MAX_FD):
/// room for all of them, so the control data is never cut (a cut would leave
/// descriptors in brig-vmm that it cannot see).
const SCM_MAX_FD: usize = 253;

#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    /// Descriptors sent with the bytes in `buf`, oldest first.
    fds: Vec<OwnedFd>,
}

/// The listening socket and its connections. The socket file is removed on drop.
#[derive(Debug)]
pub struct ApiServer {
    path: PathBuf,
    listener: UnixListener,
    conns: HashMap<RawFd, Conn>,
}

/// What the event loop should do with a descriptor after [`ApiServer::on_readable`].
#[derive(Debug)]
pub enum Readiness {
    /// New connections to watch.
    Accepted(Vec<RawFd>),
    /// Complete requests from this connection (answer with [`ApiServer::reply`]).
    Requests(RawFd, Vec<Result<Request, ApiError>>),
    /// The connection is gone; stop watching it.
    Closed(RawFd),
}

impl ApiServer {
    pub fn bind(path: &Path) -> std::io::Result<ApiServer> {
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(ApiServer { path: path.into(), listener, conns: HashMap::new() })
    }

    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    pub fn on_readable(&mut self, fd: RawFd) -> Readiness {
        if fd == self.listener.as_raw_fd() {
            return Readiness::Accepted(self.accept());
        }
        let Some(conn) = self.conns.get_mut(&fd) else { return Readiness::Closed(fd) };
        let mut chunk = [0u8; 4096];
        match receive(&conn.stream, &mut chunk) {
            Ok((0, _)) => {
                self.conns.remove(&fd);
                return Readiness::Closed(fd);
            }
            Ok((n, fds)) => {
                conn.buf.extend_from_slice(&chunk[..n]);
                conn.fds.extend(fds);
                if conn.fds.len() > MAX_PENDING_FDS {
                    let refusal = Response::error(
                        ErrorCode::InvalidRequest,
                        format!("more than {MAX_PENDING_FDS} descriptor sent for one request"),
                    );
                    let _ = conn.stream.write_all(&wire::response_line(&refusal));
                    self.conns.remove(&fd);
                    return Readiness::Closed(fd);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                self.conns.remove(&fd);
                return Readiness::Closed(fd);
            }
        }
        let mut requests = Vec::new();
        while let Some(end) = conn.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = conn.buf.drain(..=end).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            METRICS.api_requests.inc();
            requests.push(parse(&line[..end]));
        }
        if conn.buf.len() > MAX_LINE {
            let refusal = Response::error(ErrorCode::InvalidRequest, format!("request longer than {MAX_LINE} bytes"));
            let _ = conn.stream.write_all(&wire::response_line(&refusal));
            self.conns.remove(&fd);
            return Readiness::Closed(fd);
        }
        Readiness::Requests(fd, requests)
    }

    fn accept(&mut self) -> Vec<RawFd> {
        let mut fds = Vec::new();
        while let Ok((stream, _)) = self.listener.accept() {
            if self.conns.len() >= MAX_CONNECTIONS || stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            self.conns.insert(fd, Conn { stream, buf: Vec::new(), fds: Vec::new() });
            fds.push(fd);
        }
        fds
    }

    /// The descriptor sent with connection `fd`'s current request, if any.
    pub fn take_fd(&mut self, fd: RawFd) -> Option<OwnedFd> {
        let conn = self.conns.get_mut(&fd)?;
        (!conn.fds.is_empty()).then(|| conn.fds.remove(0))
    }

    /// Closes descriptors no request took, once no partial line is waiting for them.
    pub fn drop_unclaimed_fds(&mut self, fd: RawFd) {
        if let Some(conn) = self.conns.get_mut(&fd) {
            if conn.buf.is_empty() {
                conn.fds.clear();
            }
        }
    }

    /// Writes a response; a client that does not read its answers is dropped.
    pub fn reply(&mut self, fd: RawFd, response: &Response) -> bool {
        let Some(conn) = self.conns.get_mut(&fd) else { return false };
        conn.stream.set_nonblocking(false).ok();
        let _ = conn.stream.set_write_timeout(Some(std::time::Duration::from_secs(1)));
        let ok = conn.stream.write_all(&wire::response_line(response)).is_ok();
        conn.stream.set_nonblocking(true).ok();
        if !ok {
            self.conns.remove(&fd);
        }
        ok
    }
}

/// One read from a control connection, with the descriptors sent with it
/// (`SCM_RIGHTS`, made close-on-exec).
fn receive(stream: &UnixStream, chunk: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut space = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let mut iov = [std::io::IoSliceMut::new(chunk)];
    let msg = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(std::io::Error::from)?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: the kernel has just installed these descriptors in this process for
            // this message; nothing else knows or owns them, so each gets one owner here.
            fds.extend(received.into_iter().map(|raw| unsafe { OwnedFd::from_raw_fd(raw) }));
        }
    }
    Ok((msg.bytes, fds))
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brig_vmm_api::RunState;
    use std::io::Read;

    #[test]
    fn requests_parse_and_unknown_ops_are_invalid() {
        assert_eq!(parse(br#"{"op":"pause"}"#), Ok(Request::Pause {}));
        assert_eq!(parse(br#"{"op":"save-state","path":"/x"}"#), Ok(Request::SaveState { path: "/x".into() }));
        let Err(error) = parse(br#"{"op":"frobnicate"}"#) else { panic!("must fail") };
        assert_eq!(error.code, ErrorCode::InvalidRequest);
        assert!(error.message.contains("frobnicate"), "{}", error.message);
        assert!(parse(br#"{"op":"pause","extra":1}"#).is_err());
        assert!(parse(b"not json").is_err());
    }

    #[test]
    fn a_client_gets_answers_line_by_line() {
        let path = std::env::temp_dir().join(format!("brig-api-{}.sock", std::process::id()));
        let mut server = ApiServer::bind(&path).expect("bind");
        let mut client = UnixStream::connect(&path).expect("connect");
        let Readiness::Accepted(fds) = server.on_readable(server.listener_fd()) else { panic!("accept") };
        client.write_all(b"{\"op\":\"state\"}\n{\"op\":\"metrics\"}\n").expect("write");
        let Readiness::Requests(fd, requests) = server.on_readable(fds[0]) else { panic!("requests") };
        assert_eq!(requests, vec![Ok(Request::State {}), Ok(Request::Metrics {})]);
        assert!(server.reply(fd, &Response::RunState { state: RunState::Paused }));
        let mut buf = [0u8; 64];
        let n = client.read(&mut buf).expect("read");
        assert_eq!(&buf[..n], b"{\"answer\":\"run-state\",\"state\":\"paused\"}\n");
        drop(server);
        assert!(!path.exists(), "socket removed on drop");
    }

    #[test]
    fn a_descriptor_goes_with_its_request_and_unclaimed_ones_are_closed() {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        let path = std::env::temp_dir().join(format!("brig-api-fd-{}.sock", std::process::id()));
        let mut server = ApiServer::bind(&path).expect("bind");
        let client = UnixStream::connect(&path).expect("connect");
        let Readiness::Accepted(fds) = server.on_readable(server.listener_fd()) else { panic!("accept") };
        let file = tempfile_in_tmp("fd");
        let send = |line: &[u8], with: &[RawFd]| {
            let control = [ControlMessage::ScmRights(with)];
            let control: &[ControlMessage] = if with.is_empty() { &[] } else { &control };
            sendmsg::<()>(client.as_raw_fd(), &[std::io::IoSlice::new(line)], control, MsgFlags::empty(), None)
                .expect("sendmsg");
        };
        send(b"{\"op\":\"save-state-fd\"}\n", &[file.as_raw_fd()]);
        let Readiness::Requests(fd, requests) = server.on_readable(fds[0]) else { panic!("requests") };
        assert_eq!(requests, vec![Ok(Request::SaveStateFd {})]);
        let got = server.take_fd(fd).expect("the descriptor");
        let same = |a: &OwnedFd| {
            let (a, b) = (nix::sys::stat::fstat(a).expect("fstat"), nix::sys::stat::fstat(&file).expect("fstat"));
            (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
        };
        assert!(same(&got), "the file the client sent");
        assert!(server.take_fd(fd).is_none(), "one descriptor, taken once");
        // One sent with a request that takes none is closed after it.
        send(b"{\"op\":\"state\"}\n", &[file.as_raw_fd()]);
        let Readiness::Requests(fd, _) = server.on_readable(fds[0]) else { panic!("requests") };
        server.drop_unclaimed_fds(fd);
        assert!(server.take_fd(fd).is_none(), "unclaimed descriptors are closed");
        // More than one for a request closes the connection.
        send(b"{\"op\":\"state\"}\n", &[file.as_raw_fd(), file.as_raw_fd()]);
        assert!(matches!(server.on_readable(fds[0]), Readiness::Closed(_)));
    }

    fn tempfile_in_tmp(name: &str) -> std::fs::File {
        let path = std::env::temp_dir().join(format!("brig-api-{name}-{}", std::process::id()));
        let file = std::fs::File::create(&path).expect("file");
        std::fs::remove_file(&path).expect("unlink");
        file
    }

    #[test]
    fn an_over_long_line_is_refused_and_closes_the_connection() {
        let path = std::env::temp_dir().join(format!("brig-api-long-{}.sock", std::process::id()));
        let mut server = ApiServer::bind(&path).expect("bind");
        let mut client = UnixStream::connect(&path).expect("connect");
        let Readiness::Accepted(fds) = server.on_readable(server.listener_fd()) else { panic!("accept") };
        client.set_nonblocking(true).expect("nonblocking");
        let chunk = vec![b'x'; 4096];
        let mut closed = false;
        for _ in 0..(MAX_LINE / chunk.len() + 2) {
            let _ = client.write_all(&chunk);
            if let Readiness::Closed(_) = server.on_readable(fds[0]) {
                closed = true;
                break;
            }
        }
        assert!(closed, "a line over {MAX_LINE} bytes closes the connection");
        client.set_nonblocking(false).expect("blocking");
        let mut answer = String::new();
        client.read_to_string(&mut answer).expect("read");
        let Ok(Response::Error(error)) = wire::parse_response(answer.trim_end().as_bytes()) else { panic!("{answer}") };
        assert_eq!(error.code, ErrorCode::InvalidRequest);
    }
}
