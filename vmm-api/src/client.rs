//! Clients for the control socket: connect, check the API version, send a request,
//! get its typed answer within a timeout. [`Client`] blocks; [`AsyncClient`] (with
//! the `async` feature) is its tokio twin for the shim.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::wire::{self, MAX_LINE};
use crate::API_VERSION;
use crate::{
    ApiError, ApiVersion, ErrorCode, MemoryDumped, Request, Response, RunState, Saved, VersionInfo, VmMetrics, VmState,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to brig-vmm's control socket {path}")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("control socket I/O failed")]
    Io(#[source] std::io::Error),
    #[error("brig-vmm did not answer within {0:?}")]
    Timeout(Duration),
    #[error("brig-vmm closed the control connection")]
    Closed,
    #[error("brig-vmm's answer is longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("brig-vmm's answer {line:?} is not valid")]
    Decode { line: String, source: serde_json::Error },
    #[error("brig-vmm speaks control API {vmm}, this client {client}: install a matching brig-vmm")]
    VersionMismatch { vmm: ApiVersion, client: ApiVersion },
    #[error("brig-vmm refused `{op}`: {error}")]
    Api { op: &'static str, error: ApiError },
    #[error("brig-vmm answered `{op}` with `{answer}`")]
    Unexpected { op: &'static str, answer: &'static str },
}

impl ClientError {
    /// The error code brig-vmm answered with, if it answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { error, .. } => Some(error.code),
            _ => None,
        }
    }
}

/// Checks an answer to `version`.
fn check_version(answer: Response) -> Result<VersionInfo, ClientError> {
    match answer {
        Response::Version(info) if info.api.compatible_with(API_VERSION) => Ok(info),
        Response::Version(info) => Err(ClientError::VersionMismatch { vmm: info.api, client: API_VERSION }),
        // brig-vmm refuses us first when it sees our version; its message names its own.
        Response::Error(ApiError { code: ErrorCode::VersionMismatch, message }) => {
            let vmm = message.split_whitespace().find_map(parse_version).unwrap_or(ApiVersion { major: 0, minor: 0 });
            Err(ClientError::VersionMismatch { vmm, client: API_VERSION })
        }
        other => expect(&version_request(), other, |_| None),
    }
}

fn parse_version(word: &str) -> Option<ApiVersion> {
    let (major, minor) = word.trim_end_matches([',', ';', ':']).split_once('.')?;
    Some(ApiVersion { major: major.parse().ok()?, minor: minor.parse().ok()? })
}

fn version_request() -> Request {
    Request::Version { client: Some(API_VERSION) }
}

/// Picks the expected answer out of `answer`, or names what came instead.
fn expect<T>(request: &Request, answer: Response, pick: impl FnOnce(Response) -> Option<T>) -> Result<T, ClientError> {
    let op = request.op();
    match answer {
        Response::Error(error) => Err(ClientError::Api { op, error }),
        other => {
            let kind = other.kind();
            pick(other).ok_or(ClientError::Unexpected { op, answer: kind })
        }
    }
}

fn run_state(answer: Response) -> Option<RunState> {
    match answer {
        Response::RunState { state } => Some(state),
        _ => None,
    }
}

fn decode(line: &[u8]) -> Result<Response, ClientError> {
    let line = line.strip_suffix(b"\n").ok_or(ClientError::Closed)?;
    wire::parse_response(line)
        .map_err(|source| ClientError::Decode { line: String::from_utf8_lossy(line).into_owned(), source })
}

fn io_error(timeout: Duration) -> impl Fn(std::io::Error) -> ClientError {
    move |e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ClientError::Timeout(timeout),
        _ => ClientError::Io(e),
    }
}

/// A blocking control-socket client.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    timeout: Duration,
    /// What brig-vmm said it is, at connect.
    pub version: VersionInfo,
}

impl Client {
    /// Connects and checks that brig-vmm speaks this client's major API version.
    /// `timeout` bounds every request, this first one included.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect { path: path.into(), source })?;
        stream.set_read_timeout(Some(timeout)).map_err(ClientError::Io)?;
        stream.set_write_timeout(Some(timeout)).map_err(ClientError::Io)?;
        let placeholder = VersionInfo { api: API_VERSION, vmm_version: String::new() };
        let mut client = Client { reader: BufReader::new(stream), timeout, version: placeholder };
        client.version = check_version(client.call(&version_request())?)?;
        Ok(client)
    }

    /// Sends one request and returns whatever brig-vmm answered (errors included).
    pub fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        self.send_line(&wire::request_line(request))
    }

    /// Sends raw bytes as one request line (for tests of malformed input) and
    /// reads the answer.
    pub fn send_line(&mut self, line: &[u8]) -> Result<Response, ClientError> {
        let timeout = self.timeout;
        let stream = self.reader.get_mut();
        stream.write_all(line).map_err(io_error(timeout))?;
        if !line.ends_with(b"\n") {
            stream.write_all(b"\n").map_err(io_error(timeout))?;
        }
        self.read_answer()
    }

    pub fn pause(&mut self) -> Result<RunState, ClientError> {
        self.typed(Request::Pause {}, run_state)
    }

    pub fn resume(&mut self) -> Result<RunState, ClientError> {
        self.typed(Request::Resume {}, run_state)
    }

    pub fn shutdown(&mut self) -> Result<RunState, ClientError> {
        self.typed(Request::Shutdown {}, run_state)
    }

    pub fn state(&mut self) -> Result<VmState, ClientError> {
        self.typed(Request::State {}, |a| if let Response::State(s) = a { Some(s) } else { None })
    }

    pub fn metrics(&mut self) -> Result<VmMetrics, ClientError> {
        self.typed(Request::Metrics {}, |a| if let Response::Metrics(m) = a { Some(*m) } else { None })
    }

    pub fn save_state(&mut self, path: &Path) -> Result<Saved, ClientError> {
        self.typed(Request::SaveState { path: path.into() }, saved)
    }

    /// `save-state-fd`: brig-vmm writes the state into `file` (an empty regular
    /// file open for writing), which goes with the request as `SCM_RIGHTS`.
    pub fn save_state_to(&mut self, file: impl AsFd) -> Result<Saved, ClientError> {
        let timeout = self.timeout;
        self.typed_with_fd(Request::SaveStateFd {}, file.as_fd(), timeout, saved)
    }

    /// `dump-memory-fd`: brig-vmm writes guest RAM as an ELF core into `file` (an
    /// empty regular file or a pipe's write end, sent as `SCM_RIGHTS`). It answers
    /// once all of it is written, so `timeout` must allow for the guest's size.
    /// `vmcoreinfo_note_symbol`: see [`Request::DumpMemoryFd`].
    pub fn dump_memory_to(
        &mut self,
        file: impl AsFd,
        vmcoreinfo_note_symbol: Option<u64>,
        timeout: Duration,
    ) -> Result<MemoryDumped, ClientError> {
        self.typed_with_fd(Request::DumpMemoryFd { vmcoreinfo_note_symbol }, file.as_fd(), timeout, |a| {
            if let Response::MemoryDumped(d) = a {
                Some(d)
            } else {
                None
            }
        })
    }

    /// `request` with `fd` attached, its answer awaited for `timeout`.
    fn typed_with_fd<T>(
        &mut self,
        request: Request,
        fd: BorrowedFd<'_>,
        timeout: Duration,
        pick: impl FnOnce(Response) -> Option<T>,
    ) -> Result<T, ClientError> {
        send_with_fd(self.reader.get_ref(), &wire::request_line(&request), fd).map_err(io_error(self.timeout))?;
        self.reader.get_ref().set_read_timeout(Some(timeout)).map_err(ClientError::Io)?;
        let answer = self.read_answer_within(timeout);
        self.reader.get_ref().set_read_timeout(Some(self.timeout)).map_err(ClientError::Io)?;
        expect(&request, answer?, pick)
    }

    fn typed<T>(&mut self, request: Request, pick: impl FnOnce(Response) -> Option<T>) -> Result<T, ClientError> {
        let answer = self.call(&request)?;
        expect(&request, answer, pick)
    }

    fn read_answer(&mut self) -> Result<Response, ClientError> {
        self.read_answer_within(self.timeout)
    }

    fn read_answer_within(&mut self, timeout: Duration) -> Result<Response, ClientError> {
        let mut answer = Vec::new();
        Read::take(&mut self.reader, MAX_LINE as u64 + 1).read_until(b'\n', &mut answer).map_err(io_error(timeout))?;
        if answer.len() > MAX_LINE {
            return Err(ClientError::TooLong);
        }
        decode(&answer)
    }
}

fn saved(answer: Response) -> Option<Saved> {
    if let Response::Saved(s) = answer {
        Some(s)
    } else {
        None
    }
}

/// Writes `line` with `fd` attached to its first byte (`SCM_RIGHTS`).
fn send_with_fd(stream: &UnixStream, line: &[u8], fd: BorrowedFd<'_>) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd.as_raw_fd()];
    let control = [ControlMessage::ScmRights(&fds)];
    let sent =
        sendmsg::<()>(stream.as_raw_fd(), &[std::io::IoSlice::new(line)], &control, MsgFlags::MSG_NOSIGNAL, None)
            .map_err(std::io::Error::from)?;
    // The descriptor went with the first bytes; the rest of a short write follows plainly.
    let mut stream = stream;
    stream.write_all(&line[sent..])
}

/// The tokio twin of [`Client`].
#[cfg(feature = "async")]
#[derive(Debug)]
pub struct AsyncClient {
    reader: tokio::io::BufReader<tokio::net::UnixStream>,
    timeout: Duration,
    pub version: VersionInfo,
}

#[cfg(feature = "async")]
impl AsyncClient {
    /// Connects and checks the API version, as [`Client::connect`].
    pub async fn connect(path: &Path, timeout: Duration) -> Result<AsyncClient, ClientError> {
        let connect = tokio::net::UnixStream::connect(path);
        let stream = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
            .map_err(|source| ClientError::Connect { path: path.into(), source })?;
        let placeholder = VersionInfo { api: API_VERSION, vmm_version: String::new() };
        let mut client = AsyncClient { reader: tokio::io::BufReader::new(stream), timeout, version: placeholder };
        client.version = check_version(client.call(&version_request()).await?)?;
        Ok(client)
    }

    pub async fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

        let line = wire::request_line(request);
        let exchange = async {
            self.reader.get_mut().write_all(&line).await.map_err(ClientError::Io)?;
            let mut answer = Vec::new();
            (&mut self.reader)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut answer)
                .await
                .map_err(ClientError::Io)?;
            if answer.len() > MAX_LINE {
                return Err(ClientError::TooLong);
            }
            decode(&answer)
        };
        tokio::time::timeout(self.timeout, exchange).await.map_err(|_| ClientError::Timeout(self.timeout))?
    }

    pub async fn pause(&mut self) -> Result<RunState, ClientError> {
        self.typed(Request::Pause {}, run_state).await
    }

    pub async fn resume(&mut self) -> Result<RunState, ClientError> {
        self.typed(Request::Resume {}, run_state).await
    }

    pub async fn shutdown(&mut self) -> Result<RunState, ClientError> {
        self.typed(Request::Shutdown {}, run_state).await
    }

    pub async fn state(&mut self) -> Result<VmState, ClientError> {
        self.typed(Request::State {}, |a| if let Response::State(s) = a { Some(s) } else { None }).await
    }

    pub async fn metrics(&mut self) -> Result<VmMetrics, ClientError> {
        self.typed(Request::Metrics {}, |a| if let Response::Metrics(m) = a { Some(*m) } else { None }).await
    }

    async fn typed<T>(&mut self, request: Request, pick: impl FnOnce(Response) -> Option<T>) -> Result<T, ClientError> {
        let answer = self.call(&request).await?;
        expect(&request, answer, pick)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake brig-vmm that answers each request line with the next of `answers`
    /// and returns the lines it got.
    fn fake_vmm(name: &str, answers: Vec<Response>) -> (PathBuf, std::thread::JoinHandle<Vec<Request>>) {
        let path = std::env::temp_dir().join(format!("brig-api-client-{}-{name}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind");
        let handle = std::thread::spawn(move || {
            let (conn, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(conn);
            let mut got = Vec::new();
            for answer in answers {
                let mut line = String::new();
                if reader.read_line(&mut line).expect("read") == 0 {
                    break;
                }
                got.push(wire::parse_request(line.trim_end().as_bytes()).expect("a valid request"));
                reader.get_mut().write_all(&wire::response_line(&answer)).expect("answer");
            }
            got
        });
        (path, handle)
    }

    fn version(major: u32) -> Response {
        Response::Version(VersionInfo { api: ApiVersion { major, minor: 3 }, vmm_version: "9.9.9".into() })
    }

    #[test]
    fn a_client_checks_the_version_then_gets_typed_answers() {
        let answers = vec![version(API_VERSION.major), Response::RunState { state: RunState::Paused }];
        let (path, vmm) = fake_vmm("typed", answers);
        let mut client = Client::connect(&path, Duration::from_secs(5)).expect("connect");
        assert_eq!(client.version.vmm_version, "9.9.9");
        assert_eq!(client.pause().expect("pause"), RunState::Paused);
        drop(client);
        assert_eq!(vmm.join().expect("vmm"), vec![version_request(), Request::Pause {}]);
        std::fs::remove_file(&path).expect("cleanup");
    }

    #[test]
    fn another_major_version_is_refused_naming_both() {
        let (path, vmm) = fake_vmm("major", vec![version(API_VERSION.major + 1)]);
        let err = Client::connect(&path, Duration::from_secs(5)).expect_err("mismatch");
        vmm.join().expect("vmm");
        let vmm_version = format!("{}.3", API_VERSION.major + 1);
        assert_eq!(
            err.to_string(),
            format!(
                "brig-vmm speaks control API {vmm_version}, this client {API_VERSION}: install a matching brig-vmm"
            )
        );
        std::fs::remove_file(&path).expect("cleanup");

        // brig-vmm refusing us first gives the same error, with its version from its message.
        let refusal = Response::error(ErrorCode::VersionMismatch, "brig-vmm speaks control API 7.1, the client 1.0");
        let (path, vmm) = fake_vmm("refused", vec![refusal]);
        let err = Client::connect(&path, Duration::from_secs(5)).expect_err("refused");
        vmm.join().expect("vmm");
        let ClientError::VersionMismatch { vmm, client } = err else { panic!("{err}") };
        assert_eq!((vmm, client), (ApiVersion { major: 7, minor: 1 }, API_VERSION));
        std::fs::remove_file(&path).expect("cleanup");
    }

    #[test]
    fn errors_and_wrong_answers_are_named() {
        let refusal = Response::error(ErrorCode::FailedPrecondition, "needs a paused VM");
        let answers = vec![version(API_VERSION.major), refusal, Response::RunState { state: RunState::Running }];
        let (path, vmm) = fake_vmm("errors", answers);
        let mut client = Client::connect(&path, Duration::from_secs(5)).expect("connect");
        let err = client.save_state(Path::new("/x")).expect_err("refused");
        assert_eq!(err.code(), Some(ErrorCode::FailedPrecondition));
        assert_eq!(err.to_string(), "brig-vmm refused `save-state`: needs a paused VM (failed_precondition)");
        let err = client.state().expect_err("wrong answer");
        assert_eq!(err.to_string(), "brig-vmm answered `state` with `run-state`");
        drop(client);
        vmm.join().expect("vmm");
        std::fs::remove_file(&path).expect("cleanup");
    }

    #[test]
    fn a_silent_vmm_times_out() {
        let path = std::env::temp_dir().join(format!("brig-api-client-{}-silent.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let _listener = UnixListener::bind(&path).expect("bind");
        let err = Client::connect(&path, Duration::from_millis(200)).expect_err("silent");
        assert!(matches!(err, ClientError::Timeout(_)), "{err}");
        std::fs::remove_file(&path).expect("cleanup");
    }

    #[cfg(feature = "async")]
    #[tokio::test]
    async fn the_async_client_speaks_the_same() {
        let answers = vec![version(API_VERSION.major), Response::RunState { state: RunState::Stopping }];
        let (path, vmm) = fake_vmm("async", answers);
        let mut client = AsyncClient::connect(&path, Duration::from_secs(5)).await.expect("connect");
        assert_eq!(client.shutdown().await.expect("shutdown"), RunState::Stopping);
        drop(client);
        assert_eq!(vmm.join().expect("vmm"), vec![version_request(), Request::Shutdown {}]);
        std::fs::remove_file(&path).expect("cleanup");
    }
}
