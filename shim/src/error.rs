//! The shim's errors and the ttrpc status codes containerd gets for them
//! (containerd turns codes into its errdefs: NotFound, AlreadyExists, …).

use containerd_shim_protos::ttrpc::{self, Code};

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
    /// An error the guest agent answered with (its code is passed on).
    #[error("agent: {message}")]
    Agent { code: i32, message: String },
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
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    }
}

impl From<brig_protocol::ttrpc::Error> for ShimError {
    fn from(e: brig_protocol::ttrpc::Error) -> Self {
        match e {
            brig_protocol::ttrpc::Error::RpcStatus(status) => {
                ShimError::Agent { code: status.code.value(), message: status.message }
            }
            other => ShimError::Agent { code: Code::UNAVAILABLE as i32, message: other.to_string() },
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        let code = match &e {
            ShimError::NotFound(_) => Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            ShimError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            ShimError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            ShimError::Unimplemented(_) => Code::UNIMPLEMENTED,
            ShimError::Agent { code, .. } => {
                use containerd_shim_protos::protobuf::Enum;
                Code::from_i32(*code).unwrap_or(Code::UNKNOWN)
            }
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

    #[test]
    fn agent_codes_pass_through_and_ours_map() {
        let agent = brig_protocol::ttrpc::Error::RpcStatus(brig_protocol::ttrpc::get_status(
            brig_protocol::ttrpc::Code::NOT_FOUND,
            "container x not found",
        ));
        let converted: ttrpc::Error = ShimError::from(agent).into();
        let ttrpc::Error::RpcStatus(status) = converted else { panic!("a status") };
        assert_eq!(status.code(), Code::NOT_FOUND);
        assert!(status.message.contains("container x not found"));
        let ttrpc::Error::RpcStatus(status) = ttrpc::Error::from(ShimError::Unimplemented("checkpoint".into())) else {
            panic!("a status")
        };
        assert_eq!(status.code(), Code::UNIMPLEMENTED);
        assert_eq!(status.message, "checkpoint is not supported by brig");
    }
}
