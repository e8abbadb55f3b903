//! The crate's error type.

use std::fmt;
use std::io;
use std::sync::Arc;

use crate::wire::ProtocolError;

/// Everything that can go wrong with a call, a connection or a configuration.
///
/// Errors split by blast radius:
/// - one call: [`Error::Timeout`], [`Error::Overflow`], [`Error::Server`], [`Error::Canceled`],
///   [`Error::TooLarge`], [`Error::Encode`], [`Error::Decode`];
/// - one connection (the calls it carried fail with [`Error::ConnectionLost`] holding one of
///   these as the cause): [`Error::Io`], [`Error::Protocol`], [`Error::Connect`],
///   [`Error::Refused`];
/// - the whole client or server: [`Error::Closed`], [`Error::Config`].
///
/// `Error` is cheap to clone (causes are shared), so one connection loss can complete many
/// calls.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The call's deadline passed before its response arrived. A response that arrives later
    /// is discarded.
    Timeout,
    /// The client already has its maximum of pending calls (`max_pending_requests`).
    Overflow,
    /// The connection carrying the call went down before the response came; the cause.
    ConnectionLost(Arc<Error>),
    /// The server's handler returned an error, or panicked; its text.
    Server(String),
    /// The call was canceled before it completed.
    Canceled,
    /// The client or server is closed (or closing).
    Closed,
    /// An I/O error on a connection or listener.
    Io(Arc<io::Error>),
    /// The peer broke the protocol (or the handshake found the two sides incompatible).
    Protocol(ProtocolError),
    /// Connecting to `addr` failed.
    Connect {
        /// The address dialed.
        addr: String,
        /// Why it failed.
        cause: Arc<io::Error>,
    },
    /// An `on_connect` hook refused the peer; its reason.
    Refused(String),
    /// The request is larger than the largest frame the peer accepts.
    TooLarge {
        /// The request's length.
        len: usize,
        /// The limit.
        max: u32,
    },
    /// The builder's settings are inconsistent; what is wrong.
    Config(String),
    /// A value could not be encoded on this side (typed calls: the arguments); the call was
    /// not sent.
    Encode(String),
    /// A response could not be decoded on this side (typed calls: the result as the type
    /// asked for).
    Decode(String),
}

impl Error {
    /// True for [`Error::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout)
    }

    /// A short, stable name of the variant, for logs and metrics labels: `"timeout"`,
    /// `"overflow"`, `"connection_lost"`, `"server"`, `"canceled"`, `"closed"`, `"io"`,
    /// `"protocol"`, `"connect"`, `"refused"`, `"too_large"`, `"config"`, `"encode"`,
    /// `"decode"`.
    ///
    /// ```
    /// assert_eq!(batchrpc::Error::Timeout.kind(), "timeout");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Timeout => "timeout",
            Error::Overflow => "overflow",
            Error::ConnectionLost(_) => "connection_lost",
            Error::Server(_) => "server",
            Error::Canceled => "canceled",
            Error::Closed => "closed",
            Error::Io(_) => "io",
            Error::Protocol(_) => "protocol",
            Error::Connect { .. } => "connect",
            Error::Refused(_) => "refused",
            Error::TooLarge { .. } => "too_large",
            Error::Config(_) => "config",
            Error::Encode(_) => "encode",
            Error::Decode(_) => "decode",
        }
    }

    /// The cause of a lost connection, following [`Error::ConnectionLost`] once.
    pub fn root_cause(&self) -> &Error {
        match self {
            Error::ConnectionLost(cause) => cause,
            other => other,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Timeout => f.write_str("call timed out"),
            Error::Overflow => f.write_str("too many pending requests"),
            Error::ConnectionLost(cause) => write!(f, "connection lost: {cause}"),
            Error::Server(text) => write!(f, "server error: {text}"),
            Error::Canceled => f.write_str("call canceled"),
            Error::Closed => f.write_str("closed"),
            Error::Io(e) => write!(f, "i/o error: {e}"),
            Error::Protocol(e) => write!(f, "protocol error: {e}"),
            Error::Connect { addr, cause } => write!(f, "cannot connect to {addr}: {cause}"),
            Error::Refused(why) => write!(f, "connection refused by on_connect: {why}"),
            Error::TooLarge { len, max } => {
                write!(
                    f,
                    "request of {len} bytes exceeds the frame limit of {max} bytes"
                )
            }
            Error::Config(what) => write!(f, "invalid configuration: {what}"),
            Error::Encode(what) | Error::Decode(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::ConnectionLost(cause) => Some(&**cause),
            Error::Io(e) => Some(&**e),
            Error::Connect { cause, .. } => Some(&**cause),
            Error::Protocol(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(Arc::new(e))
    }
}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Self {
        Error::Protocol(e)
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
