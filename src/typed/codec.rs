//! The typed layer's byte layout: requests (function name + arguments) and values, in the
//! default [`Format`](super::Format), [`Bincode`](super::Bincode).
//!
//! [`Dispatcher`](super::Dispatcher) and [`FuncClient`](super::FuncClient) use these functions;
//! they are public so that typed requests can be built or served elsewhere (a peer in another
//! language, a handler that serves some names itself, a benchmark).
//!
//! # Request
//!
//! ```text
//! +----------+----------------------+--------------------------------------+
//! | len: u8  | name: len bytes      | arguments: the format's encoding     |
//! +----------+----------------------+--------------------------------------+
//! ```
//!
//! - `len` is the length of the name in bytes, 1 to [`MAX_NAME_LEN`] (255). `0` is reserved
//!   for a future extension; a server answers it as a malformed request.
//! - `name` is the function's UTF-8 name, e.g. `add` or `Kv.get`.
//! - `arguments` is the argument value (one value; several arguments travel as a tuple)
//!   encoded by the [`Format`](super::Format) of the dispatcher and the client. With the
//!   default, [`Bincode`](super::Bincode), that is bincode 2's serde support with
//!   [`bincode::config::standard`]: little-endian, variable-length integers, no padding.
//!   `()` encodes to nothing.
//!
//! So `add(2i64, 3i64)` is the 6 bytes `03 'a' 'd' 'd' 04 06` (zigzag varints).
//!
//! # Response
//!
//! A successful call's response payload is the result value alone, encoded the same way. A
//! failed call is the frame layer's error response, whose text the client reports as
//! [`Error::Server`](crate::Error::Server).
//!
//! # Decoding limits
//!
//! [`decode_value`] must consume its whole input (left-over bytes mean the two sides disagree
//! on the type, and are an error). It also caps what bincode may claim while decoding, so a
//! hostile length prefix (a string "of 2^60 bytes" in a 10-byte request) fails before
//! anything is allocated for it. The cap is sixteen times the input length, rounded up to
//! 64 KiB, 4 MiB, 256 MiB or 64 GiB: bincode counts the decoded size of every primitive
//! (at most 16 bytes, for a `u128`, per byte of input) and the length of every string, so no
//! well-formed value of that input length ever reaches the cap.

use std::fmt;

use bincode::config::{self, Config};
use bincode::enc::write::Writer;
use bincode::error::{DecodeError, EncodeError};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The longest function name, in bytes (its length travels in one byte).
pub const MAX_NAME_LEN: usize = 255;

/// The bincode configuration of every value: [`bincode::config::standard`].
const CONFIG: config::Configuration = config::standard();

/// Appends a request for `name(args)` to `out`: the layout in the [module docs](self).
///
/// On error, `out` is left as it was.
///
/// ```
/// use batchrpc::typed::codec;
/// let mut req = Vec::new();
/// codec::encode_request(&mut req, "add", &(2i64, 3i64)).unwrap();
/// assert_eq!(req, [3, b'a', b'd', b'd', 4, 6]);
/// let (name, args) = codec::split_request(&req).unwrap();
/// assert_eq!(name, b"add");
/// assert_eq!(codec::decode_value::<(i64, i64)>(args).unwrap(), (2, 3));
/// ```
pub fn encode_request<A>(out: &mut Vec<u8>, name: &str, args: &A) -> Result<(), CodecError>
where
    A: Serialize + ?Sized,
{
    let start = out.len();
    push_name(out, name)?;
    encode_value(out, args).inspect_err(|_| out.truncate(start))
}

/// Appends the name part of a request (length byte and name): the start of the layout in the
/// [module docs](self), whatever the [`Format`](super::Format) of the arguments that follow.
///
/// Fails, leaving `out` as it was, if `name` is empty or longer than [`MAX_NAME_LEN`].
///
/// ```
/// let mut req = Vec::new();
/// batchrpc::typed::codec::push_name(&mut req, "add").unwrap();
/// assert_eq!(req, b"\x03add");
/// assert!(batchrpc::typed::codec::push_name(&mut req, "").is_err());
/// ```
#[inline]
pub fn push_name(out: &mut Vec<u8>, name: &str) -> Result<(), CodecError> {
    let len = name.len();
    if len == 0 || len > MAX_NAME_LEN {
        return Err(CodecError(Kind::NameLen(len)));
    }
    out.push(len as u8);
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

/// Splits a request into the function name and the encoded arguments, without copying.
///
/// ```
/// use batchrpc::typed::codec::{split_request, MalformedRequest};
/// assert_eq!(split_request(b"\x03addxy").unwrap(), (&b"add"[..], &b"xy"[..]));
/// assert_eq!(split_request(b"").unwrap_err(), MalformedRequest::Empty);
/// assert_eq!(split_request(b"\x00").unwrap_err(), MalformedRequest::ReservedNameLength);
/// assert_eq!(
///     split_request(b"\x05ad").unwrap_err(),
///     MalformedRequest::TruncatedName { len: 5, available: 2 }
/// );
/// ```
pub fn split_request(req: &[u8]) -> Result<(&[u8], &[u8]), MalformedRequest> {
    let (&len, rest) = req.split_first().ok_or(MalformedRequest::Empty)?;
    let len = len as usize;
    if len == 0 {
        return Err(MalformedRequest::ReservedNameLength);
    }
    if rest.len() < len {
        return Err(MalformedRequest::TruncatedName {
            len,
            available: rest.len(),
        });
    }
    Ok(rest.split_at(len))
}

/// Appends `value`, bincode-encoded, to `out` (no intermediate buffer).
///
/// On error, `out` may hold part of the value after its original contents.
///
/// ```
/// let mut out = vec![0xAA];
/// batchrpc::typed::codec::encode_value(&mut out, "hi").unwrap();
/// assert_eq!(out, [0xAA, 2, b'h', b'i']);
/// ```
#[inline]
pub fn encode_value<T>(out: &mut Vec<u8>, value: &T) -> Result<(), CodecError>
where
    T: Serialize + ?Sized,
{
    bincode::serde::encode_into_writer(value, VecWriter(out), CONFIG)
        .map_err(|e| CodecError(Kind::Encode(e)))
}

/// Decodes a `T` that must fill all of `bytes`, with the bounded claims described in the
/// [module docs](self).
///
/// ```
/// use batchrpc::typed::codec::decode_value;
/// assert_eq!(decode_value::<String>(&[2, b'h', b'i']).unwrap(), "hi");
/// // Left-over bytes: the types do not match.
/// assert!(decode_value::<u8>(&[1, 2]).is_err());
/// // A string claiming 2^60 bytes fails without allocating them.
/// let hostile = [0xFD, 0, 0, 0, 0, 0, 0, 0, 0x10];
/// assert!(decode_value::<String>(&hostile).is_err());
/// ```
#[inline]
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let n = bytes.len();
    let decoded = if n <= 4 << 10 {
        decode_limited(bytes, CONFIG.with_limit::<{ 64 << 10 }>())
    } else if n <= 256 << 10 {
        decode_limited(bytes, CONFIG.with_limit::<{ 4 << 20 }>())
    } else if n <= 16 << 20 {
        decode_limited(bytes, CONFIG.with_limit::<{ 256 << 20 }>())
    } else {
        decode_limited(bytes, CONFIG.with_limit::<TOP_LIMIT>())
    };
    match decoded {
        Ok((value, used)) if used == n => Ok(value),
        Ok((_, used)) => Err(CodecError(Kind::Trailing(n - used))),
        Err(e) => Err(CodecError(Kind::Decode(e))),
    }
}

/// The claim cap of inputs above 16 MiB: 16 x the largest frame (saturating on 32 bits).
const TOP_LIMIT: usize = (u32::MAX as usize).saturating_mul(16);

#[inline]
fn decode_limited<T: DeserializeOwned, C: Config>(
    bytes: &[u8],
    config: C,
) -> Result<(T, usize), DecodeError> {
    bincode::serde::decode_from_slice(bytes, config)
}

/// bincode's writer over a `Vec` (appends; never fails).
struct VecWriter<'a>(&'a mut Vec<u8>);

impl Writer for VecWriter<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// A request that does not follow the layout: see [`split_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MalformedRequest {
    /// The request is empty.
    Empty,
    /// The name length is 0, which is reserved.
    ReservedNameLength,
    /// The name length says `len` bytes, but only `available` follow.
    TruncatedName {
        /// The name length announced.
        len: usize,
        /// The bytes after the length byte.
        available: usize,
    },
}

impl fmt::Display for MalformedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MalformedRequest::Empty => f.write_str("empty request"),
            MalformedRequest::ReservedNameLength => f.write_str("name length 0 is reserved"),
            MalformedRequest::TruncatedName { len, available } => {
                write!(f, "name length {len} but only {available} bytes follow")
            }
        }
    }
}

impl std::error::Error for MalformedRequest {}

/// A value that could not be encoded or decoded.
///
/// Its text says what went wrong in a sentence, from the underlying bincode error if any
/// (so it has no [`source`](std::error::Error::source) that would say it again).
pub struct CodecError(Kind);

enum Kind {
    Encode(EncodeError),
    Decode(DecodeError),
    Trailing(usize),
    NameLen(usize),
}

impl CodecError {
    /// True if a value failed to decode (as opposed to encode).
    pub fn is_decode(&self) -> bool {
        matches!(self.0, Kind::Decode(_) | Kind::Trailing(_))
    }
}

impl fmt::Debug for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Encode(e) => f.debug_tuple("Encode").field(e).finish(),
            Kind::Decode(e) => f.debug_tuple("Decode").field(e).finish(),
            Kind::Trailing(n) => f.debug_tuple("Trailing").field(n).finish(),
            Kind::NameLen(n) => f.debug_tuple("NameLen").field(n).finish(),
        }
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Trailing(n) => write!(
                f,
                "{n} bytes left over after the value (the types on the two sides differ)"
            ),
            Kind::NameLen(0) => f.write_str("the function name is empty"),
            Kind::NameLen(n) => write!(
                f,
                "the function name is {n} bytes long, more than {MAX_NAME_LEN}"
            ),
            Kind::Encode(EncodeError::OtherString(s)) => f.write_str(s),
            Kind::Encode(EncodeError::Other(s)) => f.write_str(s),
            Kind::Encode(e) => write!(f, "{e:?}"),
            Kind::Decode(e) => match e {
                DecodeError::UnexpectedEnd { additional } => {
                    write!(f, "the input is {additional} bytes too short")
                }
                DecodeError::LimitExceeded => {
                    f.write_str("a length prefix claims more than the input can hold")
                }
                DecodeError::Utf8 { inner } => write!(f, "invalid UTF-8 in a string: {inner}"),
                DecodeError::InvalidBooleanValue(b) => write!(f, "invalid bool value {b}"),
                DecodeError::InvalidCharEncoding(b) => write!(f, "invalid char encoding {b:?}"),
                DecodeError::OtherString(s) => f.write_str(s),
                DecodeError::Other(s) => f.write_str(s),
                DecodeError::Serde(e) => write!(
                    f,
                    "bincode cannot decode this type ({e:?}): self-describing serde features \
                     (untagged or internally tagged enums, flatten) are not supported"
                ),
                other => write!(f, "{other:?}"),
            },
        }
    }
}

/// Its text says all there is to say: no [`source`](std::error::Error::source).
impl std::error::Error for CodecError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let mut out = vec![9];
        encode_request(&mut out, "Kv.get", "k").unwrap();
        assert_eq!(out, b"\x09\x06Kv.get\x01k");
        let (name, args) = split_request(&out[1..]).unwrap();
        assert_eq!(name, b"Kv.get");
        assert_eq!(decode_value::<String>(args).unwrap(), "k");
    }

    #[test]
    fn bad_names_leave_the_buffer_alone() {
        let mut out = vec![1, 2];
        let long = "x".repeat(MAX_NAME_LEN + 1);
        let e = encode_request(&mut out, &long, &()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the function name is 256 bytes long, more than 255"
        );
        let e = encode_request(&mut out, "", &()).unwrap_err();
        assert_eq!(e.to_string(), "the function name is empty");
        assert_eq!(out, [1, 2]);
        encode_request(&mut out, &long[..MAX_NAME_LEN], &()).unwrap();
        assert_eq!(out.len(), 2 + 1 + MAX_NAME_LEN);
    }

    #[test]
    fn hostile_lengths_fail_in_every_class() {
        // A string claiming 2^40 bytes, padded to land in each size class.
        for pad in [0usize, 5 << 10, 300 << 10, 17 << 20] {
            let mut bytes = vec![0xFD, 0, 0, 0, 0, 0, 1, 0, 0];
            bytes.resize(bytes.len() + pad, b'a');
            let e = decode_value::<String>(&bytes).unwrap_err();
            assert!(e.is_decode());
            assert_eq!(
                e.to_string(),
                "a length prefix claims more than the input can hold",
                "pad {pad}"
            );
        }
    }

    #[test]
    fn dense_values_stay_under_the_claim_cap() {
        // u128 zeros: 1 byte of input each, 16 bytes claimed each: the worst ratio.
        let v = vec![0u128; 3000];
        let mut out = Vec::new();
        encode_value(&mut out, &v).unwrap();
        assert!(out.len() <= 4 << 10);
        assert_eq!(decode_value::<Vec<u128>>(&out).unwrap(), v);
    }

    #[test]
    fn values_round_trip_in_every_size_class() {
        for len in [0, 4 << 10, (4 << 10) + 1, 300 << 10, 17 << 20] {
            let value = "\u{e9}".repeat(len / 2);
            let mut out = Vec::new();
            encode_value(&mut out, &value).unwrap();
            assert_eq!(decode_value::<String>(&out).unwrap(), value, "len {len}");
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let e = decode_value::<u8>(&[1, 2, 3]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "2 bytes left over after the value (the types on the two sides differ)"
        );
    }
}
