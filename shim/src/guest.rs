//! The guest agent as the task service sees it: typed calls behind a trait, so the
//! task lifecycle is tested against a fake guest (Kata runtime-rs `crates/agent`).
//!
//! Exec ids are `Option<&str>` here as everywhere in the shim: `None` is the
//! container's own process. The agent's wire format says `""` for it;
//! [`AgentGuest`] converts. Deadlines belong to the real client too: the service
//! only says what it wants done.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use brig_protocol::agent as api;
use brig_protocol::agent_ttrpc_async::AgentClient;
use brig_protocol::ttrpc::{self, context, Code};

/// How long an ordinary agent call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one OOM poll waits for an event before asking again.
const OOM_POLL: Duration = Duration::from_secs(30);
/// How long the agent gets to answer `Shutdown` (it powers off after replying).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest error message of the agent's that is relayed (to containerd, and the
/// shim's log): a guest can make its statuses as long as a ttrpc frame.
pub const MAX_AGENT_MESSAGE: usize = 4096;
/// What replaces the rest of a longer one.
const TRUNCATED: &str = "… (truncated)";

/// ttrpc 0.10 reports a request whose deadline passed on the client's side as
/// `Error::Others` with this text (`asynchronous/connection.rs`,
/// `request_timeout_error`); it has no variant of its own. The unit test
/// `a_silent_agent_times_out` fails if that changes.
const TTRPC_DEADLINE_ELAPSED: &str = "Request deadline elapsed";

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The agent answered with an error status; containerd gets its code.
    #[error("agent: {message}")]
    Refused { code: i32, message: String },
    /// The agent did not answer within the call's deadline.
    #[error("the guest agent did not answer {call} within {timeout:?}")]
    Timeout { call: &'static str, timeout: Duration },
    /// The connection to the agent is gone: the VM died or is being stopped.
    #[error("the guest agent is unreachable ({call})")]
    Unreachable {
        call: &'static str,
        #[source]
        source: ttrpc::Error,
    },
}

/// How a guest process ended, as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessExit {
    /// The exit status, or 128 + signal when a signal killed it.
    pub status: u32,
    pub at_unix_ns: u64,
}

/// What the shim asks of the agent in a task's VM.
#[async_trait]
pub trait Guest: Send + Sync + std::fmt::Debug {
    /// Creates the container; its process waits for [`Guest::start_container`]. With
    /// `interface`, the VM's NIC goes into its network namespace, configured so.
    async fn create_container(
        &self,
        id: &str,
        oci_spec: Vec<u8>,
        rootfs: api::Rootfs,
        stdio: api::Stdio,
        interface: Option<api::Interface>,
    ) -> Result<(), GuestError>;
    /// Lets the container's process exec; with `interface`, the VM's NIC goes into
    /// its network namespace first (one CNI set up after create).
    async fn start_container(&self, id: &str, interface: Option<api::Interface>) -> Result<(), GuestError>;
    /// Starts an OCI `process` object (JSON) in the running container.
    async fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        process: Vec<u8>,
        stdio: api::Stdio,
    ) -> Result<(), GuestError>;
    async fn signal_process(&self, id: &str, exec_id: Option<&str>, signal: u32, all: bool) -> Result<(), GuestError>;
    /// Blocks until the process exits, however long that takes.
    async fn wait_process(&self, id: &str, exec_id: Option<&str>) -> Result<ProcessExit, GuestError>;
    async fn pause_container(&self, id: &str) -> Result<(), GuestError>;
    async fn resume_container(&self, id: &str) -> Result<(), GuestError>;
    /// New `linux.resources` (OCI JSON) for the container's cgroup.
    async fn update_container(&self, id: &str, resources: Vec<u8>) -> Result<(), GuestError>;
    async fn remove_container(&self, id: &str) -> Result<(), GuestError>;
    /// The container's guest pids.
    async fn list_processes(&self, id: &str) -> Result<Vec<u32>, GuestError>;
    async fn stats_container(&self, id: &str) -> Result<api::StatsContainerResponse, GuestError>;
    async fn resize_pty(&self, id: &str, exec_id: Option<&str>, width: u32, height: u32) -> Result<(), GuestError>;
    async fn close_stdin(&self, id: &str, exec_id: Option<&str>) -> Result<(), GuestError>;
    /// Waits a while for an OOM kill: the container it hit, or `None` if none came.
    async fn oom_event(&self) -> Result<Option<String>, GuestError>;
    /// Asks the guest to power off.
    async fn shutdown(&self) -> Result<(), GuestError>;
}

/// How long [`AgentGuest`] waits for each kind of call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub call: Duration,
    pub oom_poll: Duration,
    pub shutdown: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { call: CALL_TIMEOUT, oom_poll: OOM_POLL, shutdown: SHUTDOWN_TIMEOUT }
    }
}

/// The real guest: brig-agent over ttrpc (brig-protocol).
#[derive(Clone)]
pub struct AgentGuest {
    client: AgentClient,
    timeouts: Timeouts,
    /// The guest console, whose last lines go to the shim's log when a call times out:
    /// a stalled guest kernel says why there (RCU stalls, soft lockups, oopses).
    console: Option<PathBuf>,
}

impl std::fmt::Debug for AgentGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentGuest").field("timeouts", &self.timeouts).finish_non_exhaustive()
    }
}

/// The agent's wire form of an exec id: `""` is the container's own process.
fn wire(exec_id: Option<&str>) -> String {
    exec_id.unwrap_or_default().to_owned()
}

fn deadline(timeout: Duration) -> context::Context {
    context::with_timeout(i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX))
}

/// An agent's message cut to [`MAX_AGENT_MESSAGE`] bytes (on a character boundary).
fn bounded_message(mut message: String) -> String {
    if message.len() > MAX_AGENT_MESSAGE {
        let mut end = MAX_AGENT_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str(TRUNCATED);
    }
    message
}

/// Sorts a failed call into refused, timed out or unreachable.
fn classify(call: &'static str, timeout: Duration) -> impl FnOnce(ttrpc::Error) -> GuestError {
    move |e| match e {
        ttrpc::Error::RpcStatus(status) => {
            GuestError::Refused { code: status.code.value(), message: bounded_message(status.message) }
        }
        ttrpc::Error::Others(message) if message == TTRPC_DEADLINE_ELAPSED => GuestError::Timeout { call, timeout },
        source => GuestError::Unreachable { call, source },
    }
}

impl AgentGuest {
    pub fn new(client: AgentClient) -> AgentGuest {
        AgentGuest::with_timeouts(client, Timeouts::default())
    }

    pub fn with_timeouts(client: AgentClient, timeouts: Timeouts) -> AgentGuest {
        AgentGuest { client, timeouts, console: None }
    }

    /// Logs `console`'s last lines with every call that times out.
    pub fn with_console(self, console: PathBuf) -> AgentGuest {
        AgentGuest { console: Some(console), ..self }
    }

    fn call(&self) -> context::Context {
        deadline(self.timeouts.call)
    }

    fn failed(&self, call: &'static str) -> impl FnOnce(ttrpc::Error) -> GuestError + '_ {
        let classify = classify(call, self.timeouts.call);
        move |e| {
            let err = classify(e);
            if let (GuestError::Timeout { .. }, Some(console)) = (&err, &self.console) {
                log::warn!("{err}; the guest console's last lines:\n{}", crate::sandbox::console_tail(console));
            }
            err
        }
    }
}

#[async_trait]
impl Guest for AgentGuest {
    async fn create_container(
        &self,
        id: &str,
        oci_spec: Vec<u8>,
        rootfs: api::Rootfs,
        stdio: api::Stdio,
        interface: Option<api::Interface>,
    ) -> Result<(), GuestError> {
        let request = api::CreateContainerRequest {
            container_id: id.to_owned(),
            oci_spec,
            rootfs: Some(rootfs).into(),
            stdio: Some(stdio).into(),
            interface: interface.into(),
            ..Default::default()
        };
        self.client.create_container(self.call(), &request).await.map_err(self.failed("CreateContainer"))?;
        Ok(())
    }

    async fn start_container(&self, id: &str, interface: Option<api::Interface>) -> Result<(), GuestError> {
        let request = api::StartContainerRequest {
            container_id: id.to_owned(),
            interface: interface.into(),
            ..Default::default()
        };
        self.client.start_container(self.call(), &request).await.map_err(self.failed("StartContainer"))?;
        Ok(())
    }

    async fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        process: Vec<u8>,
        stdio: api::Stdio,
    ) -> Result<(), GuestError> {
        let request = api::ExecProcessRequest {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            process,
            stdio: Some(stdio).into(),
            ..Default::default()
        };
        self.client.exec_process(self.call(), &request).await.map_err(self.failed("ExecProcess"))?;
        Ok(())
    }

    async fn signal_process(&self, id: &str, exec_id: Option<&str>, signal: u32, all: bool) -> Result<(), GuestError> {
        let request = api::SignalProcessRequest {
            container_id: id.to_owned(),
            exec_id: wire(exec_id),
            signal,
            all,
            ..Default::default()
        };
        self.client.signal_process(self.call(), &request).await.map_err(self.failed("SignalProcess"))?;
        Ok(())
    }

    async fn wait_process(&self, id: &str, exec_id: Option<&str>) -> Result<ProcessExit, GuestError> {
        let request =
            api::WaitProcessRequest { container_id: id.to_owned(), exec_id: wire(exec_id), ..Default::default() };
        // No deadline: a process may run for as long as it likes. The call ends when
        // it exits or when the connection does (the VM is gone).
        let exit = self
            .client
            .wait_process(context::with_timeout(0), &request)
            .await
            .map_err(classify("WaitProcess", Duration::MAX))?;
        Ok(ProcessExit { status: exit.exit_code as u32, at_unix_ns: exit.exited_at_unix_ns })
    }

    async fn pause_container(&self, id: &str) -> Result<(), GuestError> {
        let request = api::PauseContainerRequest { container_id: id.to_owned(), ..Default::default() };
        self.client.pause_container(self.call(), &request).await.map_err(self.failed("PauseContainer"))?;
        Ok(())
    }

    async fn resume_container(&self, id: &str) -> Result<(), GuestError> {
        let request = api::ResumeContainerRequest { container_id: id.to_owned(), ..Default::default() };
        self.client.resume_container(self.call(), &request).await.map_err(self.failed("ResumeContainer"))?;
        Ok(())
    }

    async fn update_container(&self, id: &str, resources: Vec<u8>) -> Result<(), GuestError> {
        let request = api::UpdateContainerRequest { container_id: id.to_owned(), resources, ..Default::default() };
        self.client.update_container(self.call(), &request).await.map_err(self.failed("UpdateContainer"))?;
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), GuestError> {
        let request = api::RemoveContainerRequest { container_id: id.to_owned(), ..Default::default() };
        self.client.remove_container(self.call(), &request).await.map_err(self.failed("RemoveContainer"))?;
        Ok(())
    }

    async fn list_processes(&self, id: &str) -> Result<Vec<u32>, GuestError> {
        let request = api::ListProcessesRequest { container_id: id.to_owned(), ..Default::default() };
        let listed = self.client.list_processes(self.call(), &request).await.map_err(self.failed("ListProcesses"))?;
        Ok(listed.pids)
    }

    async fn stats_container(&self, id: &str) -> Result<api::StatsContainerResponse, GuestError> {
        let request = api::StatsContainerRequest { container_id: id.to_owned(), ..Default::default() };
        self.client.stats_container(self.call(), &request).await.map_err(self.failed("StatsContainer"))
    }

    async fn resize_pty(&self, id: &str, exec_id: Option<&str>, width: u32, height: u32) -> Result<(), GuestError> {
        let request = api::ResizePtyRequest {
            container_id: id.to_owned(),
            exec_id: wire(exec_id),
            width,
            height,
            ..Default::default()
        };
        self.client.resize_pty(self.call(), &request).await.map_err(self.failed("ResizePty"))?;
        Ok(())
    }

    async fn close_stdin(&self, id: &str, exec_id: Option<&str>) -> Result<(), GuestError> {
        let request =
            api::CloseStdinRequest { container_id: id.to_owned(), exec_id: wire(exec_id), ..Default::default() };
        self.client.close_stdin(self.call(), &request).await.map_err(self.failed("CloseStdin"))?;
        Ok(())
    }

    async fn oom_event(&self) -> Result<Option<String>, GuestError> {
        let poll = self.timeouts.oom_poll;
        let answer = self.client.get_oom_event(deadline(poll), &api::GetOomEventRequest::new()).await;
        match answer.map_err(classify("GetOomEvent", poll)) {
            Ok(event) => Ok(Some(event.container_id)),
            // The agent's own answer when its wait for an event ran out.
            Err(GuestError::Refused { code, .. }) if code == Code::DEADLINE_EXCEEDED as i32 => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn shutdown(&self) -> Result<(), GuestError> {
        let request = api::ShutdownRequest::new();
        let timeout = self.timeouts.shutdown;
        self.client.shutdown(deadline(timeout), &request).await.map_err(classify("Shutdown", timeout))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brig_protocol::ttrpc::asynchronous::transport::Socket;
    use tokio::net::UnixStream;

    fn client_over(stream: UnixStream, timeouts: Timeouts) -> AgentGuest {
        AgentGuest::with_timeouts(AgentClient::new(ttrpc::asynchronous::Client::new(Socket::from(stream))), timeouts)
    }

    fn short() -> Timeouts {
        let short = Duration::from_millis(200);
        Timeouts { call: short, oom_poll: short, shutdown: short }
    }

    #[tokio::test]
    async fn a_silent_agent_times_out() {
        // The VM is up, but the agent reads requests and never answers.
        let (ours, _silent) = UnixStream::pair().expect("socketpair");
        let guest = client_over(ours, short());
        let err = tokio::time::timeout(Duration::from_secs(5), guest.signal_process("c", None, 15, false))
            .await
            .expect("the call's own deadline ends it")
            .expect_err("no answer");
        assert!(
            matches!(err, GuestError::Timeout { call: "SignalProcess", timeout } if timeout == short().call),
            "{err:?}"
        );
        let err = tokio::time::timeout(Duration::from_secs(5), guest.oom_event())
            .await
            .expect("the poll's deadline ends it")
            .expect_err("a client-side timeout is not the agent's 'no event'");
        assert!(matches!(err, GuestError::Timeout { call: "GetOomEvent", .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_closed_connection_is_unreachable() {
        // brig-vmm died: its end of the socket is gone.
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        drop(theirs);
        let guest = client_over(ours, Timeouts::default());
        let started = tokio::time::timeout(Duration::from_secs(5), guest.start_container("c", None)).await;
        let err = started.expect("a dead peer answers at once").expect_err("dead");
        assert!(matches!(err, GuestError::Unreachable { call: "StartContainer", .. }), "{err:?}");
        let waited = tokio::time::timeout(Duration::from_secs(5), guest.wait_process("c", Some("e"))).await;
        let err = waited.expect("Wait has no deadline, but a dead peer ends it").expect_err("dead");
        assert!(matches!(err, GuestError::Unreachable { call: "WaitProcess", .. }), "{err:?}");
    }

    #[test]
    fn agent_statuses_are_kept_and_the_rest_classified() {
        let status = ttrpc::get_status(Code::NOT_FOUND, "container c not found");
        let refused = classify("StartContainer", CALL_TIMEOUT)(ttrpc::Error::RpcStatus(status));
        assert!(matches!(refused, GuestError::Refused { code, .. } if code == Code::NOT_FOUND as i32));
        assert_eq!(refused.to_string(), "agent: container c not found");
        let timeout = classify("StartContainer", CALL_TIMEOUT)(ttrpc::Error::Others(TTRPC_DEADLINE_ELAPSED.into()));
        assert!(matches!(timeout, GuestError::Timeout { timeout: CALL_TIMEOUT, .. }));
        let closed = classify("StartContainer", CALL_TIMEOUT)(ttrpc::Error::RemoteClosed);
        assert!(matches!(closed, GuestError::Unreachable { .. }));
        assert_eq!(wire(None), "");
        assert_eq!(wire(Some("e1")), "e1");
    }

    #[test]
    fn a_long_agent_message_is_cut_on_a_character_boundary() {
        // Two- and three-byte characters: the limit falls inside one.
        let long = "é€".repeat(MAX_AGENT_MESSAGE);
        let status = ttrpc::get_status(Code::INTERNAL, long.clone());
        let GuestError::Refused { message, .. } =
            classify("CreateContainer", CALL_TIMEOUT)(ttrpc::Error::RpcStatus(status))
        else {
            panic!("refused")
        };
        assert!(message.len() <= MAX_AGENT_MESSAGE + TRUNCATED.len(), "{} bytes", message.len());
        let kept = message.strip_suffix(TRUNCATED).expect("marked as truncated");
        assert!(long.starts_with(kept) && kept.len() > MAX_AGENT_MESSAGE - 3, "{} bytes kept", kept.len());
        let short = ttrpc::get_status(Code::INTERNAL, "x".repeat(MAX_AGENT_MESSAGE));
        let GuestError::Refused { message, .. } =
            classify("StartContainer", CALL_TIMEOUT)(ttrpc::Error::RpcStatus(short))
        else {
            panic!("refused")
        };
        assert_eq!(message.len(), MAX_AGENT_MESSAGE, "a message at the limit is kept whole");
    }
}
