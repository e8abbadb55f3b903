//! The native frame: a fixed 9-byte little-endian header followed by the payload.
//!
//! ```text
//! +----------------+---------+-----------------+-------------------+
//! | request id u32 | kind u8 | payload len u32 | payload (len B)   |
//! +----------------+---------+-----------------+-------------------+
//! ```
//!
//! Kinds 0-3 carry calls and their answers. Kinds 4 and 5 carry the keepalive: a client that
//! has heard nothing for its keepalive period sends a [`FrameKind::Ping`] (id 0, empty
//! payload), and the server answers it at once with a [`FrameKind::Pong`] of the same id, in
//! the same batches as everything else (see [`super::liveness`]). A connection hands neither to
//! its owner.
//!
//! [`decode`] works on a partially filled buffer: it returns `Ok(None)` until a whole frame is
//! there, hands back a payload borrowed from the buffer (no copy), and refuses a length above
//! the configured maximum as soon as the header is complete, before anything is reserved for it.

use std::fmt;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 9;

/// Default largest payload accepted or sent: 64 MiB.
pub const DEFAULT_MAX_FRAME_LEN: u32 = 64 << 20;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// A call that wants a response with the same id.
    Request = 0,
    /// A call that wants no response (fire and forget).
    RequestNoReply = 1,
    /// The handler's response to the request with the same id.
    Response = 2,
    /// The handler failed; the payload is the error text (UTF-8).
    ErrorResponse = 3,
    /// Keepalive, client to server: answer with a [`FrameKind::Pong`] of the same id. Empty
    /// payload.
    Ping = 4,
    /// Keepalive, server to client: the answer to a [`FrameKind::Ping`]. Empty payload.
    Pong = 5,
}

impl FrameKind {
    /// The kind for a wire byte, if it is one.
    pub fn from_byte(b: u8) -> Option<FrameKind> {
        Some(match b {
            0 => FrameKind::Request,
            1 => FrameKind::RequestNoReply,
            2 => FrameKind::Response,
            3 => FrameKind::ErrorResponse,
            4 => FrameKind::Ping,
            5 => FrameKind::Pong,
            _ => return None,
        })
    }

    /// True for the kinds that carry a call: [`FrameKind::Request`] and
    /// [`FrameKind::RequestNoReply`].
    pub fn is_request(self) -> bool {
        matches!(self, FrameKind::Request | FrameKind::RequestNoReply)
    }

    /// True for the kinds a client sends: the requests and [`FrameKind::Ping`].
    pub fn is_from_client(self) -> bool {
        matches!(
            self,
            FrameKind::Request | FrameKind::RequestNoReply | FrameKind::Ping
        )
    }
}

/// One decoded frame, borrowing its payload from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Request id, echoed in the response.
    pub id: u32,
    /// What the frame carries.
    pub kind: FrameKind,
    /// The payload, borrowed from the buffer it was decoded from.
    pub payload: &'a [u8],
}

impl Frame<'_> {
    /// Bytes this frame takes on the wire (header and payload).
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

/// Why a frame could not be decoded. Each is fatal to the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The kind byte is not one of [`FrameKind`].
    UnknownKind(u8),
    /// The declared payload length is above the configured maximum.
    TooLong {
        /// The length the header declared.
        len: u32,
        /// The configured maximum.
        max: u32,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::UnknownKind(k) => write!(f, "unknown frame kind {k:#04x}"),
            FrameError::TooLong { len, max } => {
                write!(f, "frame length {len} exceeds the maximum {max}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Writes a frame header into the first [`HEADER_LEN`] bytes of `out`.
///
/// # Panics
/// If `out` is shorter than [`HEADER_LEN`].
#[inline]
pub fn write_header(out: &mut [u8], id: u32, kind: FrameKind, len: u32) {
    out[0..4].copy_from_slice(&id.to_le_bytes());
    out[4] = kind as u8;
    out[5..9].copy_from_slice(&len.to_le_bytes());
}

/// Appends a whole frame (header and payload) to `out`.
///
/// The caller checks the payload against its maximum; a payload of more than `u32::MAX`
/// bytes cannot be framed and panics.
#[inline]
pub fn encode(out: &mut Vec<u8>, id: u32, kind: FrameKind, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("frame payload above u32::MAX");
    let mut header = [0u8; HEADER_LEN];
    write_header(&mut header, id, kind, len);
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
}

/// Starts a frame whose payload the caller appends next: writes a header with a zero length
/// and returns its offset, for [`finish`] once the payload is in place.
#[inline]
pub fn begin(out: &mut Vec<u8>, id: u32, kind: FrameKind) -> usize {
    let at = out.len();
    let mut header = [0u8; HEADER_LEN];
    write_header(&mut header, id, kind, 0);
    out.extend_from_slice(&header);
    at
}

/// Completes a frame started with [`begin`] at offset `at`: fills in the payload length
/// (everything appended after the header).
///
/// # Panics
/// If the payload is longer than `u32::MAX` bytes.
#[inline]
pub fn finish(out: &mut [u8], at: usize) {
    let len = out.len() - at - HEADER_LEN;
    let len = u32::try_from(len).expect("frame payload above u32::MAX");
    out[at + 5..at + 9].copy_from_slice(&len.to_le_bytes());
}

/// Rewrites the kind of a frame started with [`begin`] at offset `at`.
#[inline]
pub fn set_kind(out: &mut [u8], at: usize, kind: FrameKind) {
    out[at + 4] = kind as u8;
}

/// Decodes the frame at the start of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame, `Ok(Some(frame))` when it
/// does (the frame takes [`Frame::wire_len`] bytes), and an error as soon as the header is
/// complete and invalid: a declared length above `max_len` is refused without waiting for
/// (or reserving room for) its payload.
///
/// ```
/// use batchrpc::wire::frame::{self, FrameKind};
/// let mut buf = Vec::new();
/// frame::encode(&mut buf, 7, FrameKind::Request, b"ping");
/// let f = frame::decode(&buf, 1024).unwrap().unwrap();
/// assert_eq!((f.id, f.kind, f.payload), (7, FrameKind::Request, &b"ping"[..]));
/// assert_eq!(frame::decode(&buf[..5], 1024), Ok(None));
/// ```
#[inline]
pub fn decode(buf: &[u8], max_len: u32) -> Result<Option<Frame<'_>>, FrameError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let id = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let kind = FrameKind::from_byte(header[4]).ok_or(FrameError::UnknownKind(header[4]))?;
    let len = u32::from_le_bytes([header[5], header[6], header[7], header[8]]);
    if len > max_len {
        return Err(FrameError::TooLong { len, max: max_len });
    }
    let end = HEADER_LEN + len as usize;
    Ok(buf
        .get(HEADER_LEN..end)
        .map(|payload| Frame { id, kind, payload }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_is_little_endian() {
        let mut buf = Vec::new();
        encode(&mut buf, 0x0403_0201, FrameKind::Response, b"xyz");
        assert_eq!(buf, [1, 2, 3, 4, 2, 3, 0, 0, 0, b'x', b'y', b'z']);
    }

    #[test]
    fn decode_waits_for_whole_frame() {
        let mut buf = Vec::new();
        encode(&mut buf, 9, FrameKind::ErrorResponse, b"boom");
        for cut in 0..buf.len() {
            assert_eq!(decode(&buf[..cut], 100), Ok(None), "cut at {cut}");
        }
        let f = decode(&buf, 100).unwrap().unwrap();
        assert_eq!(
            f,
            Frame {
                id: 9,
                kind: FrameKind::ErrorResponse,
                payload: b"boom"
            }
        );
        assert_eq!(f.wire_len(), buf.len());
    }

    #[test]
    fn decode_ignores_bytes_after_the_frame() {
        let mut buf = Vec::new();
        encode(&mut buf, 1, FrameKind::Request, b"a");
        encode(&mut buf, 2, FrameKind::RequestNoReply, b"");
        let f = decode(&buf, 100).unwrap().unwrap();
        assert_eq!((f.id, f.payload), (1, &b"a"[..]));
        let g = decode(&buf[f.wire_len()..], 100).unwrap().unwrap();
        assert_eq!(
            (g.id, g.kind, g.payload.len()),
            (2, FrameKind::RequestNoReply, 0)
        );
    }

    #[test]
    fn unknown_kind_is_refused_with_header_only() {
        let buf = [0, 0, 0, 0, 6, 0, 0, 0, 0];
        assert_eq!(decode(&buf, 100), Err(FrameError::UnknownKind(6)));
        let buf = [0, 0, 0, 0, 0xff, 1, 0, 0, 0];
        assert_eq!(decode(&buf, 100), Err(FrameError::UnknownKind(0xff)));
    }

    #[test]
    fn oversized_length_is_refused_before_payload() {
        // A 4 GiB declaration: refused from the header alone.
        let buf = [1, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            decode(&buf, DEFAULT_MAX_FRAME_LEN),
            Err(FrameError::TooLong {
                len: u32::MAX,
                max: DEFAULT_MAX_FRAME_LEN
            })
        );
        let mut buf = Vec::new();
        encode(&mut buf, 1, FrameKind::Request, &[0; 11]);
        assert_eq!(
            decode(&buf, 10),
            Err(FrameError::TooLong { len: 11, max: 10 })
        );
        assert!(decode(&buf, 11).unwrap().is_some());
    }

    #[test]
    fn begin_finish_frames_a_payload_written_in_place() {
        let mut buf = vec![0xaa];
        let at = begin(&mut buf, 5, FrameKind::Response);
        buf.extend_from_slice(b"hello");
        set_kind(&mut buf, at, FrameKind::ErrorResponse);
        finish(&mut buf, at);
        let f = decode(&buf[1..], 100).unwrap().unwrap();
        assert_eq!(
            f,
            Frame {
                id: 5,
                kind: FrameKind::ErrorResponse,
                payload: b"hello"
            }
        );
    }

    #[test]
    fn kinds_round_trip_and_classify() {
        for b in 0..=255u8 {
            match FrameKind::from_byte(b) {
                Some(k) => assert_eq!(k as u8, b),
                None => assert!(b > 5),
            }
        }
        assert!(FrameKind::Ping.is_from_client());
        assert!(!FrameKind::Ping.is_request());
        assert!(!FrameKind::Pong.is_from_client());
        assert!(!FrameKind::Response.is_from_client());
        assert!(FrameKind::Request.is_request());
        assert!(FrameKind::RequestNoReply.is_request());
        assert!(!FrameKind::Response.is_request());
        assert!(!FrameKind::ErrorResponse.is_request());
    }
}
