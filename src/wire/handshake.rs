//! The hello each side sends before anything else.
//!
//! ```text
//! +------------+------------+----------------+--------+-------------------+
//! | magic BRPC | version u8 | compression u8 | tls u8 | max frame len u32 |
//! +------------+------------+----------------+--------+-------------------+
//! ```
//!
//! The client speaks first. The server reads the client's hello, checks it, and answers with its
//! own: a peer that sends garbage (wrong magic, unknown version or compression) is told nothing
//! and closed. The one disagreement the server does answer is TLS, so that the client can say
//! why it failed: the server's `tls` byte tells whether it will run TLS on this connection, and
//! the server closes after sending it when the two sides disagree ([`negotiate`]).
//!
//! The `compression` byte is what the sender will write with; each direction has its own. The
//! max frame length (little-endian) is the largest payload the sender accepts, so that the
//! peer refuses an oversized request or response for that call alone instead of sending a
//! frame that would cost the whole connection.

use std::fmt;

use super::compress::Compression;
use super::frame::DEFAULT_MAX_FRAME_LEN;

/// The four bytes every hello starts with.
pub const MAGIC: [u8; 4] = *b"BRPC";

/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;

/// Bytes in a hello.
pub const HELLO_LEN: usize = 11;

/// One side's hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version.
    pub version: u8,
    /// The compression the sender writes its stream with.
    pub compression: Compression,
    /// Client: TLS wanted. Server: TLS will run on this connection.
    pub tls: bool,
    /// The largest frame payload the sender accepts.
    pub max_frame_len: u32,
}

impl Hello {
    /// A hello of this crate's version, accepting frames up to the default limit.
    pub fn new(compression: Compression, tls: bool) -> Hello {
        Hello {
            version: VERSION,
            compression,
            tls,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
        }
    }

    /// The same hello, accepting frames up to `max_frame_len`.
    pub fn with_max_frame_len(self, max_frame_len: u32) -> Hello {
        Hello {
            max_frame_len,
            ..self
        }
    }

    /// The hello's bytes.
    ///
    /// ```
    /// use batchrpc::wire::handshake::Hello;
    /// use batchrpc::Compression;
    /// let hello = Hello::new(Compression::Snappy, true).with_max_frame_len(0x0102_0304);
    /// assert_eq!(hello.encode(), *b"BRPC\x01\x02\x01\x04\x03\x02\x01");
    /// ```
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let [a, b, c, d] = MAGIC;
        let [e, f, g, h] = self.max_frame_len.to_le_bytes();
        [
            a,
            b,
            c,
            d,
            self.version,
            self.compression.to_byte(),
            self.tls as u8,
            e,
            f,
            g,
            h,
        ]
    }
}

/// Why a handshake failed. Each is fatal to the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer's first bytes are not `BRPC`: not a batchrpc peer.
    BadMagic,
    /// The peer speaks another protocol version.
    UnsupportedVersion(u8),
    /// The compression byte names no known compression.
    UnknownCompression(u8),
    /// The peer compresses with a codec this build was compiled without.
    CompressionUnavailable(Compression),
    /// The peer's tls byte is neither 0 nor 1.
    BadTlsFlag(u8),
    /// Client side: the client wants TLS and the server does not offer it.
    TlsNotOffered,
    /// The server requires TLS and the client did not ask for it.
    TlsRequired,
    /// The hello did not arrive in time.
    Timeout,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::BadMagic => f.write_str("peer is not a batchrpc endpoint (bad magic)"),
            HandshakeError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "peer speaks protocol version {v}, this side speaks {VERSION}"
                )
            }
            HandshakeError::UnknownCompression(c) => write!(f, "unknown compression byte {c}"),
            HandshakeError::CompressionUnavailable(c) => {
                write!(
                    f,
                    "peer compresses with {c}, which this build lacks (cargo feature)"
                )
            }
            HandshakeError::BadTlsFlag(b) => write!(f, "bad tls flag {b}"),
            HandshakeError::TlsNotOffered => {
                f.write_str("TLS wanted but the server does not offer encrypted connections")
            }
            HandshakeError::TlsRequired => {
                f.write_str("the server requires TLS and the client connected in plaintext")
            }
            HandshakeError::Timeout => f.write_str("handshake timed out"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Decodes a hello from the start of `buf`, which may be only partly filled.
///
/// Returns `Ok(None)` while more bytes are needed. Garbage is refused as early as it shows:
/// a wrong first byte of the magic is an error before the rest arrives.
///
/// ```
/// use batchrpc::wire::handshake::{decode, Hello, HandshakeError};
/// use batchrpc::Compression;
/// let bytes = Hello::new(Compression::None, false).encode();
/// assert_eq!(decode(&bytes[..3]), Ok(None));
/// assert_eq!(decode(&bytes), Ok(Some(Hello::new(Compression::None, false))));
/// assert_eq!(decode(b"GET / HTTP/1.1"), Err(HandshakeError::BadMagic));
/// ```
pub fn decode(buf: &[u8]) -> Result<Option<Hello>, HandshakeError> {
    let magic_seen = buf.len().min(MAGIC.len());
    if buf[..magic_seen] != MAGIC[..magic_seen] {
        return Err(HandshakeError::BadMagic);
    }
    if let Some(&version) = buf.get(4) {
        if version != VERSION {
            return Err(HandshakeError::UnsupportedVersion(version));
        }
    }
    let compression = match buf.get(5) {
        Some(&b) => {
            let c = Compression::from_byte(b).ok_or(HandshakeError::UnknownCompression(b))?;
            if !c.is_available() {
                return Err(HandshakeError::CompressionUnavailable(c));
            }
            c
        }
        None => return Ok(None),
    };
    let tls = match buf.get(6) {
        Some(0) => false,
        Some(1) => true,
        Some(&b) => return Err(HandshakeError::BadTlsFlag(b)),
        None => return Ok(None),
    };
    let Some(&[a, b, c, d]) = buf.get(7..HELLO_LEN) else {
        return Ok(None);
    };
    let max_frame_len = u32::from_le_bytes([a, b, c, d]);
    Ok(Some(Hello {
        version: VERSION,
        compression,
        tls,
        max_frame_len,
    }))
}

/// What a server does about TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsPolicy {
    /// No TLS: clients that ask for it are refused.
    #[default]
    Off,
    /// Clients choose: TLS when they ask for it, plaintext otherwise.
    Optional,
    /// TLS only: plaintext clients are refused.
    Required,
}

/// Server side: given the client's hello, whether TLS runs on this connection, or why the
/// connection is refused. Either way the server answers with its hello (its `tls` byte is the
/// decision, or on refusal what it would have required) before closing.
///
/// ```
/// use batchrpc::wire::handshake::{negotiate, HandshakeError, TlsPolicy};
/// assert_eq!(negotiate(TlsPolicy::Optional, true), Ok(true));
/// assert_eq!(negotiate(TlsPolicy::Required, false), Err(HandshakeError::TlsRequired));
/// assert_eq!(negotiate(TlsPolicy::Off, true), Err(HandshakeError::TlsNotOffered));
/// ```
pub fn negotiate(policy: TlsPolicy, client_wants_tls: bool) -> Result<bool, HandshakeError> {
    match (policy, client_wants_tls) {
        (TlsPolicy::Off, false) | (TlsPolicy::Optional, false) => Ok(false),
        (TlsPolicy::Optional, true) | (TlsPolicy::Required, true) => Ok(true),
        (TlsPolicy::Off, true) => Err(HandshakeError::TlsNotOffered),
        (TlsPolicy::Required, false) => Err(HandshakeError::TlsRequired),
    }
}

/// Client side: given what the client asked for and the server's answer, whether TLS runs.
pub fn accept_server_tls(client_wants_tls: bool, server_tls: bool) -> Result<bool, HandshakeError> {
    match (client_wants_tls, server_tls) {
        (true, true) => Ok(true),
        (false, false) => Ok(false),
        (true, false) => Err(HandshakeError::TlsNotOffered),
        (false, true) => Err(HandshakeError::TlsRequired),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_field() {
        for compression in [Compression::None, Compression::Flate, Compression::Snappy] {
            if !compression.is_available() {
                continue;
            }
            for tls in [false, true] {
                let hello = Hello::new(compression, tls);
                assert_eq!(decode(&hello.encode()), Ok(Some(hello)));
            }
        }
    }

    #[test]
    fn carries_the_frame_limit() {
        let hello = Hello::new(Compression::None, false).with_max_frame_len(1000);
        let bytes = hello.encode();
        assert_eq!(&bytes[7..], &1000u32.to_le_bytes());
        assert_eq!(decode(&bytes), Ok(Some(hello)));
        assert_eq!(
            Hello::new(Compression::None, false).max_frame_len,
            DEFAULT_MAX_FRAME_LEN
        );
    }

    #[test]
    fn needs_more_until_complete() {
        let bytes = Hello::new(Compression::None, true).encode();
        for cut in 0..HELLO_LEN {
            assert_eq!(decode(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn garbage_is_refused_from_the_first_wrong_byte() {
        assert_eq!(decode(b"X"), Err(HandshakeError::BadMagic));
        assert_eq!(decode(b"BRX"), Err(HandshakeError::BadMagic));
        assert_eq!(
            decode(b"\x16\x03\x01\x02\x00"),
            Err(HandshakeError::BadMagic)
        );
    }

    #[test]
    fn each_field_error_is_typed() {
        assert_eq!(
            decode(b"BRPC\x02"),
            Err(HandshakeError::UnsupportedVersion(2))
        );
        assert_eq!(
            decode(b"BRPC\x00\x00\x00"),
            Err(HandshakeError::UnsupportedVersion(0))
        );
        assert_eq!(
            decode(b"BRPC\x01\x07\x00"),
            Err(HandshakeError::UnknownCompression(7))
        );
        assert_eq!(
            decode(b"BRPC\x01\x00\x02"),
            Err(HandshakeError::BadTlsFlag(2))
        );
    }

    #[test]
    fn unavailable_compression_is_refused() {
        for c in [Compression::Flate, Compression::Snappy] {
            let got = decode(&Hello::new(c, false).encode());
            if c.is_available() {
                assert!(got.is_ok());
            } else {
                assert_eq!(got, Err(HandshakeError::CompressionUnavailable(c)));
            }
        }
    }

    #[test]
    fn tls_negotiation_table() {
        use TlsPolicy::*;
        assert_eq!(negotiate(Off, false), Ok(false));
        assert_eq!(negotiate(Off, true), Err(HandshakeError::TlsNotOffered));
        assert_eq!(negotiate(Optional, false), Ok(false));
        assert_eq!(negotiate(Optional, true), Ok(true));
        assert_eq!(negotiate(Required, false), Err(HandshakeError::TlsRequired));
        assert_eq!(negotiate(Required, true), Ok(true));
        assert_eq!(accept_server_tls(false, false), Ok(false));
        assert_eq!(accept_server_tls(true, true), Ok(true));
        assert_eq!(
            accept_server_tls(true, false),
            Err(HandshakeError::TlsNotOffered)
        );
        assert_eq!(
            accept_server_tls(false, true),
            Err(HandshakeError::TlsRequired)
        );
    }
}
