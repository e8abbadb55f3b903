//! The fastrpc compatibility profile: the wire format of Go's `valyala/fastrpc` with its `tlv`
//! request and response types, as sans-IO codecs.
//!
//! The byte-exact description is [`crate::fastrpc::wire_format`]; the bytes captured from Go
//! talking to Go, shipped in `tests/data/fastrpc/`, are replayed by `tests/fastrpc_vectors.rs`.
//!
//! # Handshake
//!
//! Each side sends one block, in clear, before TLS and compression ([`encode_hello`],
//! [`decode_hello`]):
//!
//! ```text
//! +---------------------------+------------+----------------+--------+
//! | sniff header (N B, no len)| version u8 | compression u8 | tls u8 |
//! +---------------------------+------------+----------------+--------+
//! ```
//!
//! `N` is the length of the configured sniff header ([`FastrpcSettings`], default empty). The
//! compression byte is what the sender writes with and uses this profile's numbering:
//! 0 = flate, 1 = none, 2 = snappy ([`to_fastrpc_byte`], [`from_fastrpc_byte`]). The client
//! writes first; the server checks sniff and version, closing without an answer on a mismatch.
//! An unknown compression byte completes the handshake; the receiver closes afterwards, so
//! [`FastrpcHello`] keeps the raw byte.
//!
//! # Frames
//!
//! Inside each direction's decompressed stream, all integers little-endian `u32`, no other
//! framing:
//!
//! ```text
//! request  (client -> server): id | name_len | name | value_len | value
//! response (server -> client): id | value_len | value
//! ```
//!
//! Names and values are at most [`MAX_FIELD_LEN`] (1 MiB) bytes each, inclusive. The decoders
//! ([`decode_request`], [`decode_response`]) work on a partially filled buffer, borrow from it,
//! never allocate, and refuse an oversized length field as soon as it is complete, before
//! waiting for the bytes it announces. The encoders refuse an oversized field before writing
//! anything, so that only that call fails.
//!
//! Id 0 is a call that wants no response. The client numbers the other calls 1, 2, 3, … per
//! connection, wrapping and skipping 0 and any id still outstanding ([`IdAllocator`]).

use std::fmt;
use std::sync::Arc;

use super::compress::Compression;

/// Largest name or value, in bytes, accepted or sent (inclusive): 1 MiB, Go's `tlv` limit.
pub const MAX_FIELD_LEN: u32 = 1 << 20;

/// Bytes of a frame's id, the only field before a request's `tlv` body.
pub const ID_LEN: usize = 4;

/// Bytes of a request frame's fixed fields (id, name_len, value_len).
pub const REQUEST_OVERHEAD: usize = 12;

/// Bytes of a response frame's fixed fields (id, value_len).
pub const RESPONSE_OVERHEAD: usize = 8;

/// The largest payload a fastrpc peer accepts, in the terms of [`crate::wire::conn`]: a
/// server, a request's `tlv` body (`name_len | name | value_len | value`, 8 bytes plus two
/// fields of at most [`MAX_FIELD_LEN`]); a client, a response's value.
pub const fn max_payload(to_server: bool) -> u32 {
    if to_server {
        8 + 2 * MAX_FIELD_LEN
    } else {
        MAX_FIELD_LEN
    }
}

/// One side's handshake settings. Both sides must agree on both, or the server closes.
///
/// The default is Go's: an empty sniff header and version 0.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FastrpcSettings {
    /// Bytes sent raw (no length prefix) at the start of the handshake block, and expected
    /// from the peer. Go's `SniffHeader`; empty by default.
    pub sniff: Arc<[u8]>,
    /// Protocol version byte, sent and expected. Go's `ProtocolVersion`; 0 by default.
    pub version: u8,
}

impl FastrpcSettings {
    /// Settings with this sniff header and version.
    ///
    /// ```
    /// use batchrpc::wire::fastrpc::FastrpcSettings;
    /// let s = FastrpcSettings::new(&b"abc"[..], 7);
    /// assert_eq!((&*s.sniff, s.version, s.hello_len()), (&b"abc"[..], 7, 6));
    /// ```
    pub fn new(sniff: impl Into<Arc<[u8]>>, version: u8) -> FastrpcSettings {
        FastrpcSettings {
            sniff: sniff.into(),
            version,
        }
    }

    /// Bytes in a handshake block under these settings: the sniff header's length plus 3.
    pub fn hello_len(&self) -> usize {
        self.sniff.len() + 3
    }
}

impl Default for FastrpcSettings {
    fn default() -> FastrpcSettings {
        FastrpcSettings::new(&[][..], 0)
    }
}

/// The fastrpc byte for a compression: flate = 0, none = 1, snappy = 2.
///
/// Not the native numbering of [`Compression::to_byte`]: this one holds only inside the
/// fastrpc profile.
pub fn to_fastrpc_byte(compression: Compression) -> u8 {
    match compression {
        Compression::Flate => 0,
        Compression::None => 1,
        Compression::Snappy => 2,
    }
}

/// The compression a fastrpc handshake byte names, if any (0 flate, 1 none, 2 snappy).
pub fn from_fastrpc_byte(b: u8) -> Option<Compression> {
    match b {
        0 => Some(Compression::Flate),
        1 => Some(Compression::None),
        2 => Some(Compression::Snappy),
        _ => None,
    }
}

/// A peer's decoded handshake block (its sniff header and version already checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FastrpcHello {
    /// The raw compression byte the peer writes with. An unknown value still completes the
    /// handshake (the receiver closes afterwards), so it is kept as received; see
    /// [`FastrpcHello::compression`].
    pub compression: u8,
    /// Client: TLS wanted. Server: echoes the client's wish, or false without TLS. Any nonzero
    /// byte reads as true.
    pub tls: bool,
}

impl FastrpcHello {
    /// The compression the peer writes with, or `None` for an unknown byte.
    pub fn compression(&self) -> Option<Compression> {
        from_fastrpc_byte(self.compression)
    }
}

/// Why a peer's handshake block was refused. Fatal to the connection: the server closes
/// without answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FastrpcHelloError {
    /// A byte of the sniff header differs from the configured one.
    SniffMismatch {
        /// Offset of the first wrong byte in the block.
        at: usize,
        /// The byte received there.
        got: u8,
        /// The byte the configured sniff header has there.
        expected: u8,
    },
    /// The protocol version byte differs from the configured one.
    VersionMismatch {
        /// The version received.
        got: u8,
        /// The configured version.
        expected: u8,
    },
}

impl fmt::Display for FastrpcHelloError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FastrpcHelloError::SniffMismatch { at, got, expected } => write!(
                f,
                "sniff header mismatch at byte {at}: got {got:#04x}, expected {expected:#04x}"
            ),
            FastrpcHelloError::VersionMismatch { got, expected } => {
                write!(f, "protocol version {got}, expected {expected}")
            }
        }
    }
}

impl std::error::Error for FastrpcHelloError {}

/// Appends this side's handshake block to `out`: sniff header, version, the fastrpc byte of
/// `compression` (what this side writes with) and `tls` (client: wanted; server: granted).
///
/// ```
/// use batchrpc::wire::fastrpc::{encode_hello, FastrpcSettings};
/// use batchrpc::Compression;
/// let mut out = Vec::new();
/// encode_hello(&FastrpcSettings::new(&b"abc"[..], 7), Compression::None, false, &mut out);
/// assert_eq!(out, b"abc\x07\x01\x00");
/// ```
pub fn encode_hello(
    settings: &FastrpcSettings,
    compression: Compression,
    tls: bool,
    out: &mut Vec<u8>,
) {
    out.reserve(settings.hello_len());
    out.extend_from_slice(&settings.sniff);
    out.extend_from_slice(&[settings.version, to_fastrpc_byte(compression), tls as u8]);
}

/// Decodes the peer's handshake block from the start of `buf`, which may be only partly
/// filled. The block takes [`FastrpcSettings::hello_len`] bytes.
///
/// Returns `Ok(None)` while more bytes are needed. A wrong sniff byte is refused as soon as it
/// arrives, and a wrong version as soon as the version byte does. The compression byte is not
/// checked (see [`FastrpcHello::compression`]).
///
/// ```
/// use batchrpc::wire::fastrpc::{decode_hello, FastrpcHello, FastrpcHelloError, FastrpcSettings};
/// let s = FastrpcSettings::default();
/// assert_eq!(decode_hello(&s, b"\x00\x01"), Ok(None));
/// assert_eq!(
///     decode_hello(&s, b"\x00\x01\x00"),
///     Ok(Some(FastrpcHello { compression: 1, tls: false }))
/// );
/// assert_eq!(
///     decode_hello(&s, b"\x01"),
///     Err(FastrpcHelloError::VersionMismatch { got: 1, expected: 0 })
/// );
/// ```
pub fn decode_hello(
    settings: &FastrpcSettings,
    buf: &[u8],
) -> Result<Option<FastrpcHello>, FastrpcHelloError> {
    let sniff = &settings.sniff[..];
    if let Some(at) = buf.iter().zip(sniff).position(|(got, want)| got != want) {
        return Err(FastrpcHelloError::SniffMismatch {
            at,
            got: buf[at],
            expected: sniff[at],
        });
    }
    let rest = buf.get(sniff.len()..).unwrap_or_default();
    if let Some(&got) = rest.first() {
        if got != settings.version {
            return Err(FastrpcHelloError::VersionMismatch {
                got,
                expected: settings.version,
            });
        }
    }
    match rest {
        [_, compression, tls, ..] => Ok(Some(FastrpcHello {
            compression: *compression,
            tls: *tls != 0,
        })),
        _ => Ok(None),
    }
}

/// Which length-prefixed field of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// A request's name.
    Name,
    /// A request's or response's value.
    Value,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Name => "name",
            Field::Value => "value",
        })
    }
}

/// Why a received frame could not be decoded. Fatal to the connection (Go closes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FastrpcFrameError {
    /// A length field announces more than [`MAX_FIELD_LEN`] bytes.
    TooLong {
        /// The field whose length is too large.
        field: Field,
        /// The length the frame declared.
        len: u32,
    },
}

impl fmt::Display for FastrpcFrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FastrpcFrameError::TooLong { field, len } => write!(
                f,
                "{field} length {len} exceeds the fastrpc maximum {MAX_FIELD_LEN}"
            ),
        }
    }
}

impl std::error::Error for FastrpcFrameError {}

/// A name or value too large to send: the call fails, the connection stays up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TooLarge {
    /// The field is longer than [`MAX_FIELD_LEN`].
    Field {
        /// The field that is too long.
        field: Field,
        /// Its length in bytes.
        len: usize,
    },
}

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TooLarge::Field { field, len } => write!(
                f,
                "{field} of {len} bytes exceeds the fastrpc maximum {MAX_FIELD_LEN}"
            ),
        }
    }
}

impl std::error::Error for TooLarge {}

/// A decoded request, borrowing its name and value from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastrpcRequest<'a> {
    /// Call id, echoed by the response; 0 means no response is wanted.
    pub id: u32,
    /// The `tlv` name.
    pub name: &'a [u8],
    /// The `tlv` value.
    pub value: &'a [u8],
}

/// A decoded response, borrowing its value from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastrpcResponse<'a> {
    /// The id of the request answered (0 or unknown: read and discard).
    pub id: u32,
    /// The `tlv` value.
    pub value: &'a [u8],
}

/// The little-endian `u32` at `at`, if `buf` holds it.
#[inline]
fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    match buf.get(at..at + 4)? {
        &[a, b, c, d] => Some(u32::from_le_bytes([a, b, c, d])),
        _ => None,
    }
}

/// Reads the length field at `at` and the field after it. `Ok(None)`: incomplete. The length
/// is checked as soon as its 4 bytes are there.
#[inline]
fn field_at(
    buf: &[u8],
    at: usize,
    field: Field,
) -> Result<Option<(&[u8], usize)>, FastrpcFrameError> {
    let Some(len) = u32_at(buf, at) else {
        return Ok(None);
    };
    if len > MAX_FIELD_LEN {
        return Err(FastrpcFrameError::TooLong { field, len });
    }
    let start = at + 4;
    let end = start + len as usize;
    Ok(buf.get(start..end).map(|bytes| (bytes, end)))
}

/// Decodes the request at the start of `buf`, which may be only partly filled.
///
/// Returns `Ok(None)` until a whole request is there, then the request (borrowing from `buf`)
/// and the bytes it takes. A name or value length above [`MAX_FIELD_LEN`] is refused as soon
/// as its length field is complete.
///
/// ```
/// use batchrpc::wire::fastrpc::{decode_request, encode_request};
/// let mut buf = Vec::new();
/// encode_request(&mut buf, 1, b"foo", b"bar").unwrap();
/// let (req, len) = decode_request(&buf).unwrap().unwrap();
/// assert_eq!((req.id, req.name, req.value, len), (1, &b"foo"[..], &b"bar"[..], 18));
/// assert_eq!(decode_request(&buf[..17]), Ok(None));
/// ```
pub fn decode_request(
    buf: &[u8],
) -> Result<Option<(FastrpcRequest<'_>, usize)>, FastrpcFrameError> {
    let Some(id) = u32_at(buf, 0) else {
        return Ok(None);
    };
    let Some((name, at)) = field_at(buf, 4, Field::Name)? else {
        return Ok(None);
    };
    let Some((value, end)) = field_at(buf, at, Field::Value)? else {
        return Ok(None);
    };
    Ok(Some((FastrpcRequest { id, name, value }, end)))
}

/// Splits a request's `tlv` body (what follows its id, as a server sees it in a
/// [`Profile::Fastrpc`](crate::wire::conn::Profile::Fastrpc) connection's frames) into name
/// and value; `None` unless it is exactly one valid name and value.
///
/// ```
/// use batchrpc::wire::fastrpc::{encode_request_body, split_request_body};
/// let mut body = Vec::new();
/// encode_request_body(&mut body, b"foo", b"bar").unwrap();
/// assert_eq!(split_request_body(&body), Some((&b"foo"[..], &b"bar"[..])));
/// assert_eq!(split_request_body(&body[1..]), None);
/// ```
pub fn split_request_body(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (name, at) = field_at(body, 0, Field::Name).ok()??;
    let (value, end) = field_at(body, at, Field::Value).ok()??;
    (end == body.len()).then_some((name, value))
}

/// Decodes the response at the start of `buf`, which may be only partly filled.
///
/// Returns `Ok(None)` until a whole response is there, then the response (borrowing from
/// `buf`) and the bytes it takes. A value length above [`MAX_FIELD_LEN`] is refused as soon as
/// its length field is complete.
///
/// ```
/// use batchrpc::wire::fastrpc::{decode_response, encode_response};
/// let mut buf = Vec::new();
/// encode_response(&mut buf, 2, b"re:x=yy").unwrap();
/// let (resp, len) = decode_response(&buf).unwrap().unwrap();
/// assert_eq!((resp.id, resp.value, len), (2, &b"re:x=yy"[..], 15));
/// ```
pub fn decode_response(
    buf: &[u8],
) -> Result<Option<(FastrpcResponse<'_>, usize)>, FastrpcFrameError> {
    let Some(id) = u32_at(buf, 0) else {
        return Ok(None);
    };
    let Some((value, end)) = field_at(buf, 4, Field::Value)? else {
        return Ok(None);
    };
    Ok(Some((FastrpcResponse { id, value }, end)))
}

/// The length of `bytes` as a wire length, or why it cannot be sent.
#[inline]
fn checked_len(bytes: &[u8], field: Field) -> Result<u32, TooLarge> {
    match u32::try_from(bytes.len()) {
        Ok(len) if len <= MAX_FIELD_LEN => Ok(len),
        _ => Err(TooLarge::Field {
            field,
            len: bytes.len(),
        }),
    }
}

/// Appends a request to `out`. Id 0 asks for no response.
///
/// A name or value above [`MAX_FIELD_LEN`] is refused before anything is written: `out` is
/// left as it was.
pub fn encode_request(
    out: &mut Vec<u8>,
    id: u32,
    name: &[u8],
    value: &[u8],
) -> Result<(), TooLarge> {
    check_request(name, value)?;
    out.reserve(REQUEST_OVERHEAD + name.len() + value.len());
    out.extend_from_slice(&id.to_le_bytes());
    encode_request_body(out, name, value)
}

/// Checks a request's name and value against [`MAX_FIELD_LEN`].
pub fn check_request(name: &[u8], value: &[u8]) -> Result<(), TooLarge> {
    checked_len(name, Field::Name)?;
    checked_len(value, Field::Value)?;
    Ok(())
}

/// Appends a request's `tlv` body, what follows its id: `name_len | name | value_len | value`.
/// Refused, with `out` left as it was, like [`encode_request`].
pub fn encode_request_body(out: &mut Vec<u8>, name: &[u8], value: &[u8]) -> Result<(), TooLarge> {
    let name_len = checked_len(name, Field::Name)?;
    let value_len = checked_len(value, Field::Value)?;
    out.reserve(8 + name.len() + value.len());
    out.extend_from_slice(&name_len.to_le_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(&value_len.to_le_bytes());
    out.extend_from_slice(value);
    Ok(())
}

/// Appends a response to `out`, echoing the request's `id`.
///
/// A value above [`MAX_FIELD_LEN`] is refused before anything is written: the Go client would
/// drop the connection on reading it, so the server must send something else instead.
pub fn encode_response(out: &mut Vec<u8>, id: u32, value: &[u8]) -> Result<(), TooLarge> {
    let value_len = checked_len(value, Field::Value)?;
    out.reserve(RESPONSE_OVERHEAD + value.len());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&value_len.to_le_bytes());
    out.extend_from_slice(value);
    Ok(())
}

/// Starts a response to `id` at the end of `out` whose value is written in place after it;
/// returns where it starts, for [`finish_response`].
///
/// ```
/// use batchrpc::wire::fastrpc::{begin_response, decode_response, finish_response};
/// let mut out = Vec::new();
/// let at = begin_response(&mut out, 7);
/// out.extend_from_slice(b"re:a=b");
/// finish_response(&mut out, at);
/// let (resp, _) = decode_response(&out).unwrap().unwrap();
/// assert_eq!((resp.id, resp.value), (7, &b"re:a=b"[..]));
/// ```
pub fn begin_response(out: &mut Vec<u8>, id: u32) -> usize {
    let at = out.len();
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    at
}

/// Writes the value length of the response begun at `at`: everything after its header.
///
/// The caller keeps the value within [`MAX_FIELD_LEN`].
pub fn finish_response(out: &mut [u8], at: usize) {
    let len = (out.len() - at - RESPONSE_OVERHEAD) as u32;
    out[at + ID_LEN..at + RESPONSE_OVERHEAD].copy_from_slice(&len.to_le_bytes());
}

/// Hands out a client connection's call ids: 1, 2, 3, …, wrapping from `u32::MAX` to 1, never
/// 0, and skipping ids still outstanding.
///
/// Only calls that want a response take an id from here; a no-response call is sent with id 0
/// and does not use up a number (Go's ids for call, call, send, call, call are 1, 2, 0, 3, 4).
///
/// ```
/// use batchrpc::wire::fastrpc::IdAllocator;
/// let mut ids = IdAllocator::new();
/// assert_eq!(ids.next(|_| false), 1);
/// assert_eq!(ids.next(|id| id == 2), 3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdAllocator {
    /// The id to try first next time; never 0.
    next: u32,
}

impl IdAllocator {
    /// An allocator for a new connection: the first id is 1.
    pub fn new() -> IdAllocator {
        IdAllocator { next: 1 }
    }

    /// An allocator whose next candidate is `id` (0 counts as 1).
    pub fn starting_at(id: u32) -> IdAllocator {
        IdAllocator { next: id.max(1) }
    }

    /// The next free id: the first candidate from the current position for which
    /// `is_outstanding` is false.
    ///
    /// # Panics
    /// If every id from 1 to `u32::MAX` is outstanding (which no connection can reach).
    pub fn next(&mut self, is_outstanding: impl Fn(u32) -> bool) -> u32 {
        let first = self.next;
        loop {
            let id = self.next;
            self.next = match id.wrapping_add(1) {
                0 => 1,
                n => n,
            };
            if !is_outstanding(id) {
                return id;
            }
            assert!(self.next != first, "every fastrpc call id is outstanding");
        }
    }
}

impl Default for IdAllocator {
    fn default() -> IdAllocator {
        IdAllocator::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> FastrpcSettings {
        FastrpcSettings::default()
    }

    #[test]
    fn settings_default_to_go_defaults() {
        let s = defaults();
        assert!(s.sniff.is_empty());
        assert_eq!(s.version, 0);
        assert_eq!(s.hello_len(), 3);
        assert_eq!(FastrpcSettings::new(b"abc".to_vec(), 7).hello_len(), 6);
    }

    #[test]
    fn compression_bytes_use_fastrpc_numbering() {
        assert_eq!(to_fastrpc_byte(Compression::Flate), 0);
        assert_eq!(to_fastrpc_byte(Compression::None), 1);
        assert_eq!(to_fastrpc_byte(Compression::Snappy), 2);
        for b in 0..=255u8 {
            match from_fastrpc_byte(b) {
                Some(c) => assert_eq!(to_fastrpc_byte(c), b),
                None => assert!(b > 2, "byte {b}"),
            }
        }
    }

    #[test]
    fn hello_bytes_match_the_spec_examples() {
        let mut out = vec![0xaa];
        encode_hello(&defaults(), Compression::Flate, false, &mut out);
        assert_eq!(out, [0xaa, 0, 0, 0]);
        let mut out = Vec::new();
        encode_hello(
            &FastrpcSettings::new(&b"abc"[..], 7),
            Compression::None,
            false,
            &mut out,
        );
        assert_eq!(out, [0x61, 0x62, 0x63, 0x07, 0x01, 0x00]);
        let mut out = Vec::new();
        encode_hello(&defaults(), Compression::Snappy, true, &mut out);
        assert_eq!(out, [0, 2, 1]);
    }

    #[test]
    fn hello_round_trips() {
        let settings = FastrpcSettings::new(&b"sniff"[..], 200);
        for c in [Compression::None, Compression::Flate, Compression::Snappy] {
            for tls in [false, true] {
                let mut out = Vec::new();
                encode_hello(&settings, c, tls, &mut out);
                let hello = decode_hello(&settings, &out).unwrap().unwrap();
                assert_eq!(hello.compression(), Some(c));
                assert_eq!(hello.tls, tls);
            }
        }
    }

    #[test]
    fn hello_waits_until_complete_and_ignores_what_follows() {
        let settings = FastrpcSettings::new(&b"abc"[..], 7);
        let block = b"abc\x07\x02\x01frames";
        for cut in 0..6 {
            assert_eq!(
                decode_hello(&settings, &block[..cut]),
                Ok(None),
                "cut {cut}"
            );
        }
        let want = FastrpcHello {
            compression: 2,
            tls: true,
        };
        assert_eq!(decode_hello(&settings, &block[..6]), Ok(Some(want)));
        assert_eq!(decode_hello(&settings, block), Ok(Some(want)));
    }

    #[test]
    fn sniff_mismatch_is_refused_at_the_first_wrong_byte() {
        let settings = FastrpcSettings::new(&b"abc"[..], 0);
        assert_eq!(
            decode_hello(&settings, b"x"),
            Err(FastrpcHelloError::SniffMismatch {
                at: 0,
                got: b'x',
                expected: b'a'
            })
        );
        assert_eq!(decode_hello(&settings, b"ab"), Ok(None));
        assert_eq!(
            decode_hello(&settings, b"abX"),
            Err(FastrpcHelloError::SniffMismatch {
                at: 2,
                got: b'X',
                expected: b'c'
            })
        );
        // A peer without a sniff header: its version byte shows where the sniff should be.
        assert_eq!(
            decode_hello(&settings, b"\x00\x01\x00"),
            Err(FastrpcHelloError::SniffMismatch {
                at: 0,
                got: 0,
                expected: b'a'
            })
        );
    }

    #[test]
    fn version_mismatch_is_refused_from_the_version_byte() {
        let settings = FastrpcSettings::new(&b"abc"[..], 7);
        assert_eq!(
            decode_hello(&settings, b"abc\x06"),
            Err(FastrpcHelloError::VersionMismatch {
                got: 6,
                expected: 7
            })
        );
        assert_eq!(decode_hello(&settings, b"abc\x07"), Ok(None));
    }

    #[test]
    fn unknown_compression_and_any_tls_byte_complete_the_hello() {
        let got = decode_hello(&defaults(), b"\x00\x09\x05").unwrap().unwrap();
        assert_eq!(
            got,
            FastrpcHello {
                compression: 9,
                tls: true
            }
        );
        assert_eq!(got.compression(), None);
    }

    #[test]
    fn errors_display() {
        assert_eq!(
            FastrpcHelloError::SniffMismatch {
                at: 1,
                got: 0x78,
                expected: 0x62
            }
            .to_string(),
            "sniff header mismatch at byte 1: got 0x78, expected 0x62"
        );
        assert_eq!(
            FastrpcHelloError::VersionMismatch {
                got: 1,
                expected: 0
            }
            .to_string(),
            "protocol version 1, expected 0"
        );
        assert_eq!(
            FastrpcFrameError::TooLong {
                field: Field::Name,
                len: 1048577
            }
            .to_string(),
            "name length 1048577 exceeds the fastrpc maximum 1048576"
        );
        assert_eq!(
            TooLarge::Field {
                field: Field::Value,
                len: 1048577
            }
            .to_string(),
            "value of 1048577 bytes exceeds the fastrpc maximum 1048576"
        );
    }

    #[test]
    fn request_layout_is_little_endian() {
        let mut out = Vec::new();
        encode_request(&mut out, 0x0403_0201, b"ab", b"c").unwrap();
        assert_eq!(out, [1, 2, 3, 4, 2, 0, 0, 0, b'a', b'b', 1, 0, 0, 0, b'c']);
        let mut out = Vec::new();
        encode_response(&mut out, 0x0403_0201, b"xy").unwrap();
        assert_eq!(out, [1, 2, 3, 4, 2, 0, 0, 0, b'x', b'y']);
    }

    #[test]
    fn decoders_wait_for_whole_frames_and_ignore_what_follows() {
        let mut buf = Vec::new();
        encode_request(&mut buf, 5, b"name", b"value").unwrap();
        let len = buf.len();
        for cut in 0..len {
            assert_eq!(decode_request(&buf[..cut]), Ok(None), "cut {cut}");
        }
        encode_request(&mut buf, 0, b"", b"").unwrap();
        let (req, n) = decode_request(&buf).unwrap().unwrap();
        assert_eq!(
            (req, n),
            (
                FastrpcRequest {
                    id: 5,
                    name: b"name",
                    value: b"value"
                },
                len
            )
        );
        let (req, n) = decode_request(&buf[len..]).unwrap().unwrap();
        assert_eq!((req.id, req.name, req.value, n), (0, &[][..], &[][..], 12));

        let mut buf = Vec::new();
        encode_response(&mut buf, 9, b"answer").unwrap();
        for cut in 0..buf.len() {
            assert_eq!(decode_response(&buf[..cut]), Ok(None), "cut {cut}");
        }
        buf.push(0xff);
        let (resp, n) = decode_response(&buf).unwrap().unwrap();
        assert_eq!(
            (resp, n),
            (
                FastrpcResponse {
                    id: 9,
                    value: b"answer"
                },
                14
            )
        );
    }

    #[test]
    fn oversized_lengths_are_refused_from_the_length_field_alone() {
        let too_long = (MAX_FIELD_LEN + 1).to_le_bytes();
        let mut name = vec![1, 0, 0, 0];
        name.extend_from_slice(&too_long);
        assert_eq!(
            decode_request(&name),
            Err(FastrpcFrameError::TooLong {
                field: Field::Name,
                len: 1048577
            })
        );
        let mut value = vec![1, 0, 0, 0, 1, 0, 0, 0, b'n'];
        value.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode_request(&value),
            Err(FastrpcFrameError::TooLong {
                field: Field::Value,
                len: u32::MAX
            })
        );
        let mut resp = vec![1, 0, 0, 0];
        resp.extend_from_slice(&too_long);
        assert_eq!(
            decode_response(&resp),
            Err(FastrpcFrameError::TooLong {
                field: Field::Value,
                len: 1048577
            })
        );
        // Exactly the limit is allowed: the decoder waits for the bytes.
        let mut at_limit = vec![1, 0, 0, 0];
        at_limit.extend_from_slice(&MAX_FIELD_LEN.to_le_bytes());
        assert_eq!(decode_request(&at_limit), Ok(None));
        assert_eq!(decode_response(&at_limit), Ok(None));
    }

    #[test]
    fn fields_at_the_limit_round_trip_and_above_are_refused_before_writing() {
        let max = vec![7u8; MAX_FIELD_LEN as usize];
        let over = vec![7u8; MAX_FIELD_LEN as usize + 1];
        let mut out = Vec::new();
        encode_request(&mut out, 1, &max, &max).unwrap();
        let (req, n) = decode_request(&out).unwrap().unwrap();
        assert_eq!(
            (req.name.len(), req.value.len(), n),
            (1 << 20, 1 << 20, out.len())
        );

        let mut out = vec![0xaa];
        assert_eq!(
            encode_request(&mut out, 1, &over, b""),
            Err(TooLarge::Field {
                field: Field::Name,
                len: 1048577
            })
        );
        assert_eq!(
            encode_request(&mut out, 1, b"", &over),
            Err(TooLarge::Field {
                field: Field::Value,
                len: 1048577
            })
        );
        assert_eq!(
            encode_response(&mut out, 1, &over),
            Err(TooLarge::Field {
                field: Field::Value,
                len: 1048577
            })
        );
        assert_eq!(out, [0xaa]);
        encode_response(&mut out, 1, &max).unwrap();
        assert_eq!(out.len(), 1 + 8 + (1 << 20));
    }

    /// A small deterministic generator (xorshift), so the loop needs no dependency.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn random_bytes_never_panic_the_decoders() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let settings = FastrpcSettings::new(&b"ab"[..], 3);
        let mut buf = Vec::new();
        for _ in 0..20_000 {
            buf.clear();
            let len = (xorshift(&mut state) % 40) as usize;
            for _ in 0..len {
                // Mostly small bytes, so that length fields are often small enough to complete.
                let r = xorshift(&mut state);
                buf.push(if r % 4 == 0 { r as u8 } else { (r % 6) as u8 });
            }
            if let Ok(Some((req, n))) = decode_request(&buf) {
                assert_eq!(n, REQUEST_OVERHEAD + req.name.len() + req.value.len());
                assert!(n <= buf.len());
            }
            if let Ok(Some((resp, n))) = decode_response(&buf) {
                assert_eq!(n, RESPONSE_OVERHEAD + resp.value.len());
                assert!(n <= buf.len());
            }
            let _ = decode_hello(&settings, &buf);
            let _ = decode_hello(&defaults(), &buf);
        }
    }

    #[test]
    fn ids_count_from_one() {
        let mut ids = IdAllocator::new();
        let got: Vec<u32> = (0..5).map(|_| ids.next(|_| false)).collect();
        assert_eq!(got, [1, 2, 3, 4, 5]);
        assert_eq!(IdAllocator::default(), IdAllocator::new());
        assert_eq!(IdAllocator::starting_at(0), IdAllocator::new());
    }

    #[test]
    fn ids_wrap_from_max_to_one() {
        let mut ids = IdAllocator::starting_at(u32::MAX - 1);
        let got: Vec<u32> = (0..4).map(|_| ids.next(|_| false)).collect();
        assert_eq!(got, [u32::MAX - 1, u32::MAX, 1, 2]);
    }

    #[test]
    fn ids_skip_outstanding_ones_including_across_the_wrap() {
        let mut ids = IdAllocator::new();
        let outstanding = [2u32, 3, 5];
        let got: Vec<u32> = (0..3)
            .map(|_| ids.next(|id| outstanding.contains(&id)))
            .collect();
        assert_eq!(got, [1, 4, 6]);

        let mut ids = IdAllocator::starting_at(u32::MAX);
        let outstanding = [u32::MAX, 1];
        assert_eq!(ids.next(|id| outstanding.contains(&id)), 2);
    }

    #[test]
    fn a_no_response_call_does_not_use_up_a_number() {
        // Go's 01-none sequence: call, call, send (id 0, no allocation), call, call.
        let mut ids = IdAllocator::new();
        let mut sent = Vec::new();
        for wants_response in [true, true, false, true, true] {
            sent.push(if wants_response {
                ids.next(|_| false)
            } else {
                0
            });
        }
        assert_eq!(sent, [1, 2, 0, 3, 4]);
    }
}
