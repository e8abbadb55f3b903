//! The sans-IO protocol: fed bytes and times, hands bytes and frames back.
//!
//! Nothing in this module touches a socket, a thread or a clock, so all of it is unit-tested,
//! property-tested and fuzzed without a network. The reactor drives it.
//!
//! - [`handshake`]: the hello exchange (magic, version, compression, TLS wish).
//! - [`frame`]: the native frame, encoder and zero-copy decoder with limits.
//! - [`compress`]: streaming codecs over a whole direction of a connection.
//! - [`conn`]: the per-connection state machine: buffers, batching, flush policy.
//! - [`liveness`]: the keepalive and idle clocks of a connection.
//! - [`tls`]: TLS (rustls, sans-IO) inside the connection, and its errors.

pub mod buffer;
pub mod compress;
pub mod conn;
mod crc32c;
pub mod fastrpc;
pub mod frame;
pub mod handshake;
pub mod liveness;
pub mod tls;

use std::fmt;

use compress::DecompressError;
use fastrpc::{FastrpcFrameError, FastrpcHelloError};
use frame::{FrameError, FrameKind};
use handshake::HandshakeError;
use liveness::LivenessError;
use tls::TlsError;

/// A violation of the protocol by the peer (or by the configuration it met). Fatal to the
/// connection it happened on, and to nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The hello exchange failed.
    Handshake(HandshakeError),
    /// A frame header was invalid.
    Frame(FrameError),
    /// The peer's compressed stream was invalid.
    Decompress(DecompressError),
    /// A frame of a kind this side never receives (a request sent to a client, a response to
    /// a server).
    UnexpectedKind(FrameKind),
    /// The stream ended inside a frame.
    Truncated,
    /// The peer closed the connection before the handshake (the hellos, and TLS's when
    /// wanted) was done: the way a peer refuses this side's hello (another sniff header,
    /// version, TLS setting, or a connection limit), or a peer that stopped on its own.
    HandshakeClosed,
    /// The TLS session failed: a certificate the other side does not accept, a fatal alert
    /// from the peer, a record that does not decrypt, ...
    Tls(TlsError),
    /// A fastrpc peer's handshake block has the wrong sniff header or version.
    FastrpcHello(FastrpcHelloError),
    /// A fastrpc frame is invalid: a name or value longer than the profile allows.
    FastrpcFrame(FastrpcFrameError),
    /// The peer went silent for longer than the connection's keepalive or idle timeout
    /// allows (see [`liveness`]).
    Liveness(LivenessError),
}

impl fmt::Display for ProtocolError {
    /// What failed, in a few words; the details are in [`source`](std::error::Error::source)
    /// (the wire error it carries), not repeated here.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::Handshake(_) => f.write_str("handshake failed"),
            ProtocolError::Frame(_) => f.write_str("invalid frame"),
            ProtocolError::Decompress(_) => f.write_str("decompression failed"),
            ProtocolError::UnexpectedKind(k) => write!(f, "unexpected frame kind {k:?}"),
            ProtocolError::Truncated => f.write_str("stream ended inside a frame"),
            ProtocolError::HandshakeClosed => f.write_str(
                "the peer closed the connection during the handshake (it refused the hello?)",
            ),
            ProtocolError::Tls(_) => f.write_str("tls failed"),
            ProtocolError::FastrpcHello(_) => f.write_str("fastrpc handshake refused"),
            ProtocolError::FastrpcFrame(_) => f.write_str("invalid fastrpc frame"),
            // Says it all: it carries no source to repeat.
            ProtocolError::Liveness(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl std::error::Error for ProtocolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProtocolError::Handshake(e) => Some(e),
            ProtocolError::Frame(e) => Some(e),
            ProtocolError::Decompress(e) => Some(e),
            ProtocolError::Tls(e) => Some(e),
            ProtocolError::FastrpcHello(e) => Some(e),
            ProtocolError::FastrpcFrame(e) => Some(e),
            _ => None,
        }
    }
}

impl From<FrameError> for ProtocolError {
    fn from(e: FrameError) -> Self {
        ProtocolError::Frame(e)
    }
}

impl From<HandshakeError> for ProtocolError {
    fn from(e: HandshakeError) -> Self {
        ProtocolError::Handshake(e)
    }
}

impl From<TlsError> for ProtocolError {
    fn from(e: TlsError) -> Self {
        ProtocolError::Tls(e)
    }
}

impl From<FastrpcHelloError> for ProtocolError {
    fn from(e: FastrpcHelloError) -> Self {
        ProtocolError::FastrpcHello(e)
    }
}

impl From<FastrpcFrameError> for ProtocolError {
    fn from(e: FastrpcFrameError) -> Self {
        ProtocolError::FastrpcFrame(e)
    }
}

impl From<LivenessError> for ProtocolError {
    fn from(e: LivenessError) -> Self {
        ProtocolError::Liveness(e)
    }
}

impl From<DecompressError> for ProtocolError {
    fn from(e: DecompressError) -> Self {
        ProtocolError::Decompress(e)
    }
}
