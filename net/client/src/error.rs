//! Why a request failed.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use dynacore_proto::reply::{ReplyError, ServerError};
use dynacore_proto::{ErrorCode, Version};

/// Why a request failed.
#[derive(Debug)]
pub enum ClientError {
    /// No seed or node could be reached (nothing was sent).
    Connect {
        /// The address tried last.
        addr: SocketAddr,
        /// What happened.
        source: io::Error,
    },
    /// The connection broke while the request was in flight (a write's outcome is unknown).
    Io(io::Error),
    /// No answer within the deadline (a write's outcome is unknown).
    Timeout,
    /// Refused before sending: the key, value or quorum is out of range.
    InvalidArgument(String),
    /// The conditional write's version is not the current one.
    ConditionFailed {
        /// The current version.
        current: Version,
    },
    /// The server answered with an error.
    Server {
        /// What kind.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
        /// Replicas that acknowledged (for [`ErrorCode::Unavailable`]).
        acks: u8,
        /// Replicas that were required.
        required: u8,
    },
    /// The server's answer could not be understood.
    Protocol(String),
    /// The connection to that server already queues as much as it may (the server is not
    /// keeping up, or not reading): the request was not sent.
    Overloaded(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect { addr, source } => {
                write!(f, "cannot connect to {addr}: {source}")
            }
            ClientError::Io(e) => write!(f, "connection failed: {e}"),
            ClientError::Timeout => f.write_str("no answer within the deadline"),
            ClientError::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            ClientError::ConditionFailed { current } => {
                write!(f, "condition failed: the current version is {current}")
            }
            ClientError::Server { code, message, .. } => write!(f, "{code:?}: {message}"),
            ClientError::Protocol(m) => write!(f, "protocol error: {m}"),
            ClientError::Overloaded(m) => write!(f, "not sent: {m}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Connect { source, .. } | ClientError::Io(source) => Some(source),
            _ => None,
        }
    }
}

impl From<ReplyError> for ClientError {
    fn from(e: ReplyError) -> Self {
        match e {
            ReplyError::Malformed(m) => ClientError::Protocol(m),
            ReplyError::Server(ServerError {
                code: ErrorCode::ConditionFailed,
                current_version: Some(current),
                ..
            }) => ClientError::ConditionFailed {
                current: Version(current),
            },
            ReplyError::Server(s) => ClientError::Server {
                code: s.code,
                message: s.message,
                acks: s.acks,
                required: s.required,
            },
        }
    }
}

impl From<dynacore_proto::api::VersionHexError> for ClientError {
    fn from(e: dynacore_proto::api::VersionHexError) -> Self {
        ClientError::InvalidArgument(e.to_string())
    }
}

impl From<dynacore_proto::connection::SendError> for ClientError {
    fn from(e: dynacore_proto::connection::SendError) -> Self {
        match e {
            dynacore_proto::connection::SendError::TooLarge { .. } => {
                ClientError::InvalidArgument(e.to_string())
            }
            dynacore_proto::connection::SendError::Overloaded { .. } => {
                ClientError::Overloaded(e.to_string())
            }
        }
    }
}

impl ClientError {
    /// The request was never sent (no connection could be made, or its queue was full), so
    /// sending it elsewhere is safe even for a write.
    #[must_use]
    pub fn is_not_sent(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. } | ClientError::Overloaded(_)
        )
    }

    pub(crate) fn broken(why: &'static str) -> ClientError {
        ClientError::Io(io::Error::new(io::ErrorKind::ConnectionReset, why))
    }
}
