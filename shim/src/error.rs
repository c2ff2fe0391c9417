//! The shim's errors and the ttrpc status codes containerd gets for them
//! (containerd turns codes into its errdefs: NotFound, AlreadyExists, …).

use containerd_shim_protos::ttrpc::{self, Code};

use crate::guest::GuestError;

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("{0} is not supported by brig")]
    Unimplemented(String),
    #[error("{what}")]
    Io { what: String, source: std::io::Error },
    /// The VM cannot serve the request (brig-vmm is gone or going).
    #[error("{0}")]
    Unavailable(String),
    /// Something the VM should have done in time did not happen.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A call to the guest agent failed.
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error("{0}")]
    Internal(String),
}

impl ShimError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ShimError {
        let what = what.into();
        move |source| ShimError::Io { what, source }
    }

    /// The error and its sources as one line.
    pub fn chain(&self) -> String {
        chain(self)
    }
}

/// Any error and its sources as one line.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        let code = match &e {
            ShimError::NotFound(_) => Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            ShimError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            ShimError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            ShimError::Unimplemented(_) => Code::UNIMPLEMENTED,
            ShimError::Unavailable(_) => Code::UNAVAILABLE,
            ShimError::DeadlineExceeded(_) => Code::DEADLINE_EXCEEDED,
            ShimError::Guest(GuestError::Refused { code, .. }) => {
                use containerd_shim_protos::protobuf::Enum;
                Code::from_i32(*code).unwrap_or(Code::UNKNOWN)
            }
            ShimError::Guest(GuestError::Timeout { .. }) => Code::DEADLINE_EXCEEDED,
            ShimError::Guest(GuestError::Unreachable { .. }) => Code::UNAVAILABLE,
            ShimError::Io { .. } | ShimError::Internal(_) => Code::INTERNAL,
        };
        let message = e.chain();
        log::warn!("request failed ({code:?}): {message}");
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn status_of(e: ShimError) -> ttrpc::Status {
        let ttrpc::Error::RpcStatus(status) = ttrpc::Error::from(e) else { panic!("a status") };
        status
    }

    #[test]
    fn agent_codes_pass_through_and_ours_map() {
        let refused = GuestError::Refused {
            code: brig_protocol::ttrpc::Code::NOT_FOUND as i32,
            message: "container x not found".into(),
        };
        let status = status_of(refused.into());
        assert_eq!(status.code(), Code::NOT_FOUND);
        assert_eq!(status.message, "agent: container x not found");
        let status = status_of(ShimError::Unimplemented("checkpoint".into()));
        assert_eq!(status.code(), Code::UNIMPLEMENTED);
        assert_eq!(status.message, "checkpoint is not supported by brig");
    }

    #[test]
    fn a_dead_vmm_is_unavailable_and_a_silent_agent_a_deadline() {
        let gone =
            GuestError::Unreachable { call: "StartContainer", source: brig_protocol::ttrpc::Error::RemoteClosed };
        let status = status_of(gone.into());
        assert_eq!(status.code(), Code::UNAVAILABLE);
        assert!(status.message.starts_with("the guest agent is unreachable (StartContainer): "), "{}", status.message);
        let slow = GuestError::Timeout { call: "SignalProcess", timeout: Duration::from_secs(60) };
        let status = status_of(slow.into());
        assert_eq!(status.code(), Code::DEADLINE_EXCEEDED);
        assert_eq!(status.message, "the guest agent did not answer SignalProcess within 60s");
        assert_eq!(status_of(ShimError::Unavailable("vm gone".into())).code(), Code::UNAVAILABLE);
        assert_eq!(status_of(ShimError::DeadlineExceeded("no agent".into())).code(), Code::DEADLINE_EXCEEDED);
    }

    #[test]
    fn an_unknown_agent_code_is_unknown() {
        let odd = GuestError::Refused { code: 99, message: "odd".into() };
        assert_eq!(status_of(odd.into()).code(), Code::UNKNOWN);
    }
}
