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
///
/// Its text ([`Display`](fmt::Display)) says what failed, without repeating the cause it also
/// returns as [`source`](std::error::Error::source): [`Error::ConnectionLost`] prints
/// `connection lost`, [`Error::Io`] `i/o error`, [`Error::Protocol`] `protocol error`,
/// [`Error::Connect`] `cannot connect to <addr>`, and their causes follow in the source chain.
/// Print the chain to see everything (`connection lost: protocol error: tls failed: ...`):
///
/// ```
/// use std::error::Error as _;
/// use std::sync::Arc;
///
/// fn chain(e: &dyn std::error::Error) -> String {
///     let mut text = e.to_string();
///     let mut cause = e.source();
///     while let Some(c) = cause {
///         text = format!("{text}: {c}");
///         cause = c.source();
///     }
///     text
/// }
///
/// let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
/// let e = batchrpc::Error::ConnectionLost(Arc::new(batchrpc::Error::from(io)));
/// assert_eq!(e.to_string(), "connection lost");
/// assert_eq!(chain(&e), "connection lost: i/o error: reset by peer");
/// ```
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
            Error::ConnectionLost(_) => f.write_str("connection lost"),
            Error::Server(text) => write!(f, "server error: {text}"),
            Error::Canceled => f.write_str("call canceled"),
            Error::Closed => f.write_str("closed"),
            Error::Io(_) => f.write_str("i/o error"),
            Error::Protocol(_) => f.write_str("protocol error"),
            Error::Connect { addr, .. } => write!(f, "cannot connect to {addr}"),
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

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;
    use crate::wire::compress::{Compression, DecompressError};
    use crate::wire::fastrpc::{FastrpcFrameError, FastrpcHelloError, Field};
    use crate::wire::frame::FrameError;
    use crate::wire::handshake::HandshakeError;
    use crate::wire::liveness::LivenessError;
    use crate::wire::tls::{TlsError, TlsErrorKind};

    /// One of every protocol error, each with a cause where it has one.
    fn every_protocol_error() -> Vec<ProtocolError> {
        let all = vec![
            ProtocolError::Handshake(HandshakeError::UnsupportedVersion(9)),
            ProtocolError::Frame(FrameError::TooLong { len: 10, max: 5 }),
            ProtocolError::Decompress(DecompressError::Unsupported(Compression::Snappy)),
            ProtocolError::UnexpectedKind(crate::wire::frame::FrameKind::Request),
            ProtocolError::Truncated,
            ProtocolError::HandshakeClosed,
            ProtocolError::Tls(TlsError::new(TlsErrorKind::Refused, "fatal alert")),
            ProtocolError::FastrpcHello(FastrpcHelloError::VersionMismatch {
                got: 1,
                expected: 2,
            }),
            ProtocolError::FastrpcFrame(FastrpcFrameError::TooLong {
                field: Field::Name,
                len: 1 << 30,
            }),
            ProtocolError::Liveness(LivenessError::KeepaliveTimeout {
                silent: std::time::Duration::from_secs(30),
            }),
        ];
        // Fails to compile when a variant is added: add it above too.
        for e in &all {
            match e {
                ProtocolError::Handshake(_)
                | ProtocolError::Frame(_)
                | ProtocolError::Decompress(_)
                | ProtocolError::UnexpectedKind(_)
                | ProtocolError::Truncated
                | ProtocolError::HandshakeClosed
                | ProtocolError::Tls(_)
                | ProtocolError::FastrpcHello(_)
                | ProtocolError::FastrpcFrame(_)
                | ProtocolError::Liveness(_) => {}
            }
        }
        all
    }

    /// One of every error, each protocol error once, and lost connections of every cause.
    fn every_error() -> Vec<Error> {
        let io = || Arc::new(io::Error::new(io::ErrorKind::ConnectionRefused, "refused"));
        let mut all = vec![
            Error::Timeout,
            Error::Overflow,
            Error::Server("no such key".into()),
            Error::Canceled,
            Error::Closed,
            Error::Io(io()),
            Error::Connect {
                addr: "127.0.0.1:1".into(),
                cause: io(),
            },
            Error::Refused("wrong server".into()),
            Error::TooLarge { len: 10, max: 5 },
            Error::Config("max_frame_len is 0".into()),
            Error::Encode("cannot encode arguments".into()),
            Error::Decode("cannot decode the result".into()),
        ];
        all.extend(every_protocol_error().into_iter().map(Error::Protocol));
        let lost: Vec<Error> = all
            .iter()
            .map(|cause| Error::ConnectionLost(Arc::new(cause.clone())))
            .collect();
        all.extend(lost);
        for e in &all {
            match e {
                Error::Timeout
                | Error::Overflow
                | Error::ConnectionLost(_)
                | Error::Server(_)
                | Error::Canceled
                | Error::Closed
                | Error::Io(_)
                | Error::Protocol(_)
                | Error::Connect { .. }
                | Error::Refused(_)
                | Error::TooLarge { .. }
                | Error::Config(_)
                | Error::Encode(_)
                | Error::Decode(_) => {}
            }
        }
        all
    }

    #[test]
    fn no_text_repeats_its_source() {
        let mut links = 0;
        for e in every_error() {
            let mut cur: &dyn std::error::Error = &e;
            while let Some(source) = cur.source() {
                let (text, inner) = (cur.to_string(), source.to_string());
                assert!(!inner.is_empty(), "{e:?}");
                assert!(
                    !text.contains(&inner),
                    "{text:?} repeats its source {inner:?} ({e:?})"
                );
                links += 1;
                cur = source;
            }
        }
        // Alone: Io and Connect (1 link each), the 10 protocol errors (1 each), 6 of which
        // carry a wire error (1 more): 18. Under ConnectionLost: the same 18, plus one link
        // to each of the 22 errors.
        assert_eq!(links, 18 + 18 + 22);
    }

    #[test]
    fn the_chain_says_everything_once() {
        let e = Error::ConnectionLost(Arc::new(Error::Protocol(ProtocolError::Tls(
            TlsError::new(TlsErrorKind::Refused, "fatal alert"),
        ))));
        let mut texts = vec![e.to_string()];
        let mut cur = e.source();
        while let Some(c) = cur {
            texts.push(c.to_string());
            cur = c.source();
        }
        assert_eq!(
            texts,
            [
                "connection lost",
                "protocol error",
                "tls failed",
                "the peer refused the TLS session: fatal alert"
            ]
        );
    }
}
