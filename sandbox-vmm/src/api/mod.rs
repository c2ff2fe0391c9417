//! The control socket: newline-delimited JSON requests and responses over a Unix
//! stream socket. Documented in docs/control-socket.md.
//!
//! ```text
//! → {"op":"pause"}
//! ← {"ok":true,"state":"paused"}
//! → {"op":"save-state","path":"/run/brig/x/state.bin"}
//! ← {"ok":true,"path":"/run/brig/x/state.bin","bytes":48213}
//! → {"op":"frobnicate"}
//! ← {"ok":false,"code":"invalid_request","error":"unknown variant `frobnicate`, expected one of …"}
//! ```

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::metrics::METRICS;

/// A request line longer than this closes the connection.
const MAX_LINE: usize = 64 << 10;
/// Concurrent control connections.
const MAX_CONNECTIONS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    // Empty struct variants, not unit ones: serde ignores unknown fields on unit
    // variants of internally tagged enums, and a typo should not pass silently.
    Pause {},
    Resume {},
    Shutdown {},
    State {},
    Metrics {},
    SaveState { path: PathBuf },
}

/// Error classes, named after the gRPC codes the shim maps them to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    InvalidRequest,
    FailedPrecondition,
    Internal,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    Ok(Value),
    Err(Code, String),
}

impl Response {
    pub fn to_line(&self) -> Vec<u8> {
        let value = match self {
            Response::Ok(Value::Object(fields)) => {
                let mut fields = fields.clone();
                fields.insert("ok".into(), Value::Bool(true));
                Value::Object(fields)
            }
            Response::Ok(other) => json!({"ok": true, "result": other}),
            Response::Err(code, error) => json!({"ok": false, "code": code, "error": error}),
        };
        let mut line = value.to_string().into_bytes();
        line.push(b'\n');
        line
    }
}

/// Parses one request line.
pub fn parse(line: &[u8]) -> Result<Request, Response> {
    serde_json::from_slice(line).map_err(|e| Response::Err(Code::InvalidRequest, e.to_string()))
}

#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
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
    Requests(RawFd, Vec<Result<Request, Response>>),
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
        match conn.stream.read(&mut chunk) {
            Ok(0) => {
                self.conns.remove(&fd);
                return Readiness::Closed(fd);
            }
            Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
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
            let _ = conn.stream.write_all(
                &Response::Err(Code::InvalidRequest, format!("request longer than {MAX_LINE} bytes")).to_line(),
            );
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
            self.conns.insert(fd, Conn { stream, buf: Vec::new() });
            fds.push(fd);
        }
        fds
    }

    /// Writes a response; a client that does not read its answers is dropped.
    pub fn reply(&mut self, fd: RawFd, response: &Response) -> bool {
        let Some(conn) = self.conns.get_mut(&fd) else { return false };
        conn.stream.set_nonblocking(false).ok();
        let _ = conn.stream.set_write_timeout(Some(std::time::Duration::from_secs(1)));
        let ok = conn.stream.write_all(&response.to_line()).is_ok();
        conn.stream.set_nonblocking(true).ok();
        if !ok {
            self.conns.remove(&fd);
        }
        ok
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_unknown_ops_are_invalid() {
        assert_eq!(parse(br#"{"op":"pause"}"#), Ok(Request::Pause {}));
        assert_eq!(parse(br#"{"op":"save-state","path":"/x"}"#), Ok(Request::SaveState { path: "/x".into() }));
        let Err(Response::Err(code, msg)) = parse(br#"{"op":"frobnicate"}"#) else { panic!("must fail") };
        assert_eq!(code, Code::InvalidRequest);
        assert!(msg.contains("frobnicate"), "{msg}");
        assert!(parse(br#"{"op":"pause","extra":1}"#).is_err());
        assert!(parse(b"not json").is_err());
    }

    #[test]
    fn responses_are_one_json_line() {
        let line = Response::Ok(json!({"state": "paused"})).to_line();
        assert_eq!(line.last(), Some(&b'\n'));
        let value: Value = serde_json::from_slice(&line).expect("json");
        assert_eq!(value, json!({"ok": true, "state": "paused"}));
        let line = Response::Err(Code::FailedPrecondition, "not paused".into()).to_line();
        let value: Value = serde_json::from_slice(&line).expect("json");
        assert_eq!(value, json!({"ok": false, "code": "failed_precondition", "error": "not paused"}));
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
        assert!(server.reply(fd, &Response::Ok(json!({"x": 1}))));
        let mut buf = [0u8; 64];
        let n = client.read(&mut buf).expect("read");
        assert_eq!(&buf[..n], b"{\"ok\":true,\"x\":1}\n");
        drop(server);
        assert!(!path.exists(), "socket removed on drop");
    }
}
