//! Streaming codecs over one direction of a connection: none, flate, snappy.
//!
//! Each side compresses everything it writes as one stream that lasts as long as the connection;
//! the handshake says which codec each direction uses. An [`Encoder`] turns each batch of plain
//! bytes into stream bytes that the peer can decode in full as soon as they arrive. A [`Decoder`]
//! turns received bytes, cut anywhere, back into plain bytes written into the caller's buffer.
//! Neither does I/O, and neither allocates per call once warm.
//!
//! # Flate
//!
//! One raw DEFLATE stream (RFC 1951: no zlib or gzip header). Every batch ends with a sync
//! flush, the empty stored block whose last four bytes are `00 00 ff ff`, so the batch decodes
//! without waiting for more. The stream is never finished: a final block means the peer ended
//! its stream, which the decoder reports as [`DecompressError::FlateStreamEnd`]. Later batches
//! may refer back up to 32 KiB into earlier ones, so one encoder and one decoder serve the
//! whole connection.
//!
//! # Snappy
//!
//! The snappy *framing* format, not raw blocks:
//!
//! ```text
//! stream identifier   ff | 06 00 00 | "sNaPpY"                       once, before the first chunk
//! data chunk          type u8 | len u24 LE | masked CRC-32C u32 LE | data
//!                     type 0x00: data is a raw snappy block, 0x01: data is stored as is;
//!                     len counts the checksum and the data; the CRC covers the uncompressed bytes
//! skippable chunk     type 0x80..=0xfe (0xfe: padding) | len u24 LE | ignored
//! ```
//!
//! A data chunk holds at most [`SNAPPY_MAX_CHUNK`] uncompressed bytes. The encoder stores a chunk
//! uncompressed unless compressing saves at least an eighth, as Go's encoder does. Types
//! `0x02..=0x7f` are reserved and refused.
//!
//! # Bounded memory
//!
//! A few kilobytes of compressed input can expand to gigabytes. The decoders never produce more
//! than the room the caller gives them:
//!
//! - flate inflates straight into the caller's `out`, at most `out.len()` bytes per call, keeping
//!   only the 32 KiB window inside;
//! - snappy refuses any chunk length field above 76494 (Go's limit) as soon as its 4-byte header
//!   arrives, and reads a compressed chunk's declared length before decompressing it: above
//!   [`SNAPPY_MAX_CHUNK`] is an error, before anything is reserved. A chunk that fits in `out` is
//!   decoded there; one that does not is decoded into a reused 64 KiB scratch buffer and handed out
//!   over the following calls, so at most one chunk is ever held
//!   ([`Decoder::pending_output`]).
//!
//! Snappy chunks are consumed whole only: the caller's read buffer must be able to hold
//! [`SNAPPY_MAX_WIRE_CHUNK`] bytes.

use std::fmt;

#[cfg(feature = "snappy")]
use super::crc32c::{crc32c, masked};

/// Compression of a connection direction's whole stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Compression {
    /// Plain bytes.
    #[default]
    None,
    /// Raw DEFLATE, sync-flushed at every batch (cargo feature `flate`).
    Flate,
    /// Snappy framing format (cargo feature `snappy`).
    Snappy,
}

impl Compression {
    /// Native wire byte: None = 0, Flate = 1, Snappy = 2.
    pub fn to_byte(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Flate => 1,
            Compression::Snappy => 2,
        }
    }

    /// The compression for a native wire byte, if it names one.
    pub fn from_byte(b: u8) -> Option<Compression> {
        Some(match b {
            0 => Compression::None,
            1 => Compression::Flate,
            2 => Compression::Snappy,
            _ => return None,
        })
    }

    /// Whether this build has the codec (its cargo feature is on). None is always available.
    pub fn is_available(self) -> bool {
        match self {
            Compression::None => true,
            Compression::Flate => cfg!(feature = "flate"),
            Compression::Snappy => cfg!(feature = "snappy"),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Flate => "flate",
            Compression::Snappy => "snappy",
        })
    }
}

/// Parses `none`, `flate` or `snappy` (any case): the names [`Compression`] displays as.
///
/// ```
/// use batchrpc::Compression;
/// assert_eq!("Snappy".parse::<Compression>().unwrap(), Compression::Snappy);
/// assert!("zstd".parse::<Compression>().is_err());
/// ```
impl std::str::FromStr for Compression {
    type Err = UnknownCompressionName;

    fn from_str(name: &str) -> Result<Compression, UnknownCompressionName> {
        [Compression::None, Compression::Flate, Compression::Snappy]
            .into_iter()
            .find(|c| name.eq_ignore_ascii_case(&c.to_string()))
            .ok_or_else(|| UnknownCompressionName(name.to_owned()))
    }
}

/// A name that is not `none`, `flate` or `snappy` (from [`Compression`]'s `FromStr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownCompressionName(pub String);

impl fmt::Display for UnknownCompressionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown compression {:?}: expected none, flate or snappy",
            self.0
        )
    }
}

impl std::error::Error for UnknownCompressionName {}

/// Default flate level: 1 (fast). Valid 0..=9.
pub const DEFAULT_FLATE_LEVEL: u32 = 1;

/// Largest uncompressed chunk of the snappy framing format.
pub const SNAPPY_MAX_CHUNK: usize = 65536;

/// Largest snappy chunk on the wire, header included: 4 + 76494 bytes.
///
/// The decoder consumes whole chunks only, so a reader must be able to hold this many received
/// bytes, or a maximal chunk would never be decoded.
pub const SNAPPY_MAX_WIRE_CHUNK: usize = 4 + MAX_CHUNK_LEN_FIELD as usize;

/// Largest chunk length field accepted: the longest raw snappy block of [`SNAPPY_MAX_CHUNK`]
/// bytes (32 + n + n/6 = 76490) plus the checksum. Go refuses more, for every chunk type.
const MAX_CHUNK_LEN_FIELD: u32 = 76494;

/// Why received bytes could not be decompressed (or a codec could not be set up).
///
/// A decoding error is fatal to the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecompressError {
    /// The build lacks this codec's cargo feature.
    Unsupported(Compression),
    /// The flate stream is corrupt (message from flate2).
    Flate(String),
    /// The flate stream ended (a final block). Peers never finish their stream, so this is an
    /// error.
    FlateStreamEnd,
    /// snappy: the stream did not start with the stream identifier chunk
    /// `ff 06 00 00 "sNaPpY"`.
    SnappyMissingIdentifier,
    /// snappy: a stream identifier chunk with wrong contents or length.
    SnappyBadIdentifier,
    /// snappy: reserved unskippable chunk type `0x02..=0x7f`.
    SnappyUnskippableChunk(u8),
    /// snappy: chunk length field above 76494, the limit for every chunk type (Go's: the
    /// longest encoding of 65536 bytes plus the 4-byte checksum).
    SnappyChunkTooLong(u32),
    /// snappy: data chunk shorter than its 4-byte checksum, or decoded length above 65536.
    SnappyBadChunk,
    /// snappy: the raw block is corrupt.
    SnappyCorrupt,
    /// snappy: CRC-32C mismatch.
    SnappyChecksum,
}

impl fmt::Display for DecompressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecompressError::Unsupported(c) => {
                write!(
                    f,
                    "{c} compression is not available in this build (cargo feature)"
                )
            }
            DecompressError::Flate(msg) => write!(f, "corrupt flate stream: {msg}"),
            DecompressError::FlateStreamEnd => {
                f.write_str("the peer ended its flate stream (final block)")
            }
            DecompressError::SnappyMissingIdentifier => {
                f.write_str("snappy stream does not start with the stream identifier")
            }
            DecompressError::SnappyBadIdentifier => f.write_str("bad snappy stream identifier"),
            DecompressError::SnappyUnskippableChunk(t) => {
                write!(f, "reserved unskippable snappy chunk type {t:#04x}")
            }
            DecompressError::SnappyChunkTooLong(n) => {
                write!(
                    f,
                    "snappy chunk length {n} is above the limit {MAX_CHUNK_LEN_FIELD}"
                )
            }
            DecompressError::SnappyBadChunk => f.write_str(
                "bad snappy data chunk (shorter than its checksum or longer than 65536 bytes)",
            ),
            DecompressError::SnappyCorrupt => f.write_str("corrupt snappy block"),
            DecompressError::SnappyChecksum => f.write_str("snappy chunk checksum mismatch"),
        }
    }
}

impl std::error::Error for DecompressError {}

#[cfg(feature = "snappy")]
mod chunk {
    /// Data chunk: a raw snappy block.
    pub const COMPRESSED: u8 = 0x00;
    /// Data chunk: the bytes as they are.
    pub const UNCOMPRESSED: u8 = 0x01;
    /// The stream identifier chunk.
    pub const IDENTIFIER: u8 = 0xff;
    /// The whole stream identifier chunk, header included.
    pub const STREAM_IDENTIFIER: [u8; 10] = *b"\xff\x06\x00\x00sNaPpY";
    /// Below this many bytes `snap` emits a single literal, which can never save an eighth.
    pub const MIN_COMPRESSIBLE: usize = 17;
}

/// Compresses what one side writes, batch by batch.
pub struct Encoder {
    codec: EncoderCodec,
}

enum EncoderCodec {
    None,
    #[cfg(feature = "flate")]
    Flate {
        /// The compressor (about 300 KiB of tables at level 1); `None` after
        /// [`Encoder::release_idle`] until the next batch.
        deflate: Option<flate2::Compress>,
        level: u32,
    },
    #[cfg(feature = "snappy")]
    Snappy {
        /// Boxed: the raw encoder carries a 2 KiB hash table inline. `None` after
        /// [`Encoder::release_idle`] until the next batch.
        raw: Option<Box<snap::raw::Encoder>>,
        /// The stream identifier has been written.
        started: bool,
    },
}

impl Encoder {
    /// An encoder for a new stream. `flate_level` is used only for Flate (clamped to 0..=9).
    ///
    /// Fails with [`DecompressError::Unsupported`] if the build lacks the codec.
    #[cfg_attr(not(feature = "flate"), allow(unused_variables))]
    pub fn new(compression: Compression, flate_level: u32) -> Result<Encoder, DecompressError> {
        let codec = match compression {
            Compression::None => EncoderCodec::None,
            #[cfg(feature = "flate")]
            Compression::Flate => EncoderCodec::Flate {
                deflate: None,
                level: flate_level.min(9),
            },
            #[cfg(feature = "snappy")]
            Compression::Snappy => EncoderCodec::Snappy {
                raw: None,
                started: false,
            },
            #[allow(unreachable_patterns)]
            _ => return Err(DecompressError::Unsupported(compression)),
        };
        Ok(Encoder { codec })
    }

    /// The compression this encoder writes.
    pub fn compression(&self) -> Compression {
        match self.codec {
            EncoderCodec::None => Compression::None,
            #[cfg(feature = "flate")]
            EncoderCodec::Flate { .. } => Compression::Flate,
            #[cfg(feature = "snappy")]
            EncoderCodec::Snappy { .. } => Compression::Snappy,
        }
    }

    /// Gives the codec's working memory back (flate's compressor, snappy's hash table); the
    /// next batch builds it again. The stream stays valid: every batch ends on a flush
    /// boundary, and a fresh compressor only emits blocks (flate) or chunks (snappy) that
    /// refer to nothing before them, which the peer's decoder reads as a continuation.
    /// Compression of the next batch cannot refer back to earlier ones, which costs a little
    /// ratio once. For connections gone quiet.
    pub fn release_idle(&mut self) {
        match &mut self.codec {
            EncoderCodec::None => {}
            #[cfg(feature = "flate")]
            EncoderCodec::Flate { deflate, .. } => *deflate = None,
            #[cfg(feature = "snappy")]
            EncoderCodec::Snappy { raw, .. } => *raw = None,
        }
    }

    /// Appends the encoding of `input` (one batch of plain stream bytes) to `out`, flushed so
    /// that the peer can decode everything written so far.
    ///
    /// - None: `input` as is.
    /// - Flate: raw deflate ending with the sync flush's `00 00 ff ff`.
    /// - Snappy: the stream identifier before the first chunk of the stream, then data chunks of
    ///   at most [`SNAPPY_MAX_CHUNK`] input bytes each.
    ///
    /// An empty `input` appends nothing.
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if input.is_empty() {
            return;
        }
        match &mut self.codec {
            EncoderCodec::None => out.extend_from_slice(input),
            #[cfg(feature = "flate")]
            EncoderCodec::Flate { deflate, level } => {
                let deflate = deflate.get_or_insert_with(|| {
                    flate2::Compress::new(flate2::Compression::new(*level), false)
                });
                flate_encode(deflate, input, out);
            }
            #[cfg(feature = "snappy")]
            EncoderCodec::Snappy { raw, started } => {
                if !*started {
                    out.extend_from_slice(&chunk::STREAM_IDENTIFIER);
                    *started = true;
                }
                let raw = raw.get_or_insert_with(|| Box::new(snap::raw::Encoder::new()));
                for data in input.chunks(SNAPPY_MAX_CHUNK) {
                    snappy_encode_chunk(raw, data, out);
                }
            }
        }
    }
}

impl fmt::Debug for Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder")
            .field("compression", &self.compression())
            .finish_non_exhaustive()
    }
}

/// Deflates `input` into `out` and sync-flushes.
///
/// Writes into a zero-filled tail of `out` sized from the input, not into `out`'s spare capacity
/// with `compress_vec`: flate2's pure-Rust backend zero-fills the whole spare capacity on every
/// call, which would cost as much as the caller's buffer instead of the batch.
#[cfg(feature = "flate")]
fn flate_encode(deflate: &mut flate2::Compress, mut input: &[u8], out: &mut Vec<u8>) {
    loop {
        // Room for the input stored as is (5 bytes per stored block of up to 64 KiB) and the
        // sync flush: one round nearly always does.
        let room = input.len() + input.len() / 1024 + 64;
        let start = out.len();
        out.resize(start + room, 0);
        let (in_before, out_before) = (deflate.total_in(), deflate.total_out());
        let status = deflate.compress(input, &mut out[start..], flate2::FlushCompress::Sync);
        let consumed = (deflate.total_in() - in_before) as usize;
        let written = (deflate.total_out() - out_before) as usize;
        out.truncate(start + written);
        input = &input[consumed..];
        // The flush is complete once all input is in and the output did not fill the room.
        if input.is_empty() && written < room {
            return;
        }
        // Deflate only fails after a finish or on a bad flush sequence, which never happens
        // here. Should it anyway, stop: the peer sees a corrupt stream and drops the connection.
        if status.is_err() {
            debug_assert!(false, "deflate failed: {status:?}");
            return;
        }
    }
}

/// Appends one data chunk for `data` (at most [`SNAPPY_MAX_CHUNK`] bytes) to `out`.
#[cfg(feature = "snappy")]
fn snappy_encode_chunk(raw: &mut snap::raw::Encoder, data: &[u8], out: &mut Vec<u8>) {
    let header_at = out.len();
    out.extend_from_slice(&[0; 8]);
    let mut kind = chunk::UNCOMPRESSED;
    if data.len() >= chunk::MIN_COMPRESSIBLE {
        let body_at = out.len();
        out.resize(body_at + snap::raw::max_compress_len(data.len()), 0);
        match raw.compress(data, &mut out[body_at..]) {
            Ok(n) if n < data.len() - data.len() / 8 => {
                out.truncate(body_at + n);
                kind = chunk::COMPRESSED;
            }
            _ => out.truncate(body_at),
        }
    }
    if kind == chunk::UNCOMPRESSED {
        out.extend_from_slice(data);
    }
    let [a, b, c, _] = ((out.len() - header_at - 4) as u32).to_le_bytes();
    out[header_at..header_at + 4].copy_from_slice(&[kind, a, b, c]);
    out[header_at + 4..header_at + 8].copy_from_slice(&masked(crc32c(data)).to_le_bytes());
}

/// Decompresses what the peer writes, incrementally, into caller-provided space.
///
/// Drive it like this: pass everything received and not yet consumed, drop `consumed` bytes
/// from the front, take `produced` bytes of `out`, and call again until a call returns
/// `(0, 0)`; then wait for more bytes. While [`Decoder::pending_output`] is above zero, call it
/// even with no new input.
///
/// ```
/// use batchrpc::wire::compress::{Compression, Decoder, Encoder};
/// # if !Compression::Snappy.is_available() { return Ok(()); }
/// let mut encoder = Encoder::new(Compression::Snappy, 1)?;
/// let mut wire = Vec::new();
/// encoder.encode(b"hello, ", &mut wire);
/// encoder.encode(b"world", &mut wire);
///
/// let mut decoder = Decoder::new(Compression::Snappy)?;
/// let (mut input, mut plain, mut out) = (&wire[..], Vec::new(), [0u8; 4]);
/// loop {
///     let (consumed, produced) = decoder.decode(input, &mut out)?;
///     input = &input[consumed..];
///     plain.extend_from_slice(&out[..produced]);
///     if (consumed, produced) == (0, 0) {
///         break; // wait for more bytes
///     }
/// }
/// assert_eq!(plain, b"hello, world");
/// # Ok::<(), batchrpc::wire::compress::DecompressError>(())
/// ```
pub struct Decoder {
    codec: DecoderCodec,
}

enum DecoderCodec {
    None,
    #[cfg(feature = "flate")]
    Flate(flate2::Decompress),
    #[cfg(feature = "snappy")]
    Snappy(SnappyDecoder),
}

impl Decoder {
    /// A decoder for a new stream.
    ///
    /// Fails with [`DecompressError::Unsupported`] if the build lacks the codec.
    pub fn new(compression: Compression) -> Result<Decoder, DecompressError> {
        let codec = match compression {
            Compression::None => DecoderCodec::None,
            #[cfg(feature = "flate")]
            Compression::Flate => DecoderCodec::Flate(flate2::Decompress::new(false)),
            #[cfg(feature = "snappy")]
            Compression::Snappy => DecoderCodec::Snappy(SnappyDecoder::default()),
            #[allow(unreachable_patterns)]
            _ => return Err(DecompressError::Unsupported(compression)),
        };
        Ok(Decoder { codec })
    }

    /// The compression this decoder reads.
    pub fn compression(&self) -> Compression {
        match self.codec {
            DecoderCodec::None => Compression::None,
            #[cfg(feature = "flate")]
            DecoderCodec::Flate(_) => Compression::Flate,
            #[cfg(feature = "snappy")]
            DecoderCodec::Snappy(_) => Compression::Snappy,
        }
    }

    /// Gives back memory the decoder holds only while a chunk is being handed out (snappy's
    /// 64 KiB chunk buffer). Flate's window (32 KiB plus its state) stays: the peer's next
    /// batch may refer back into it.
    pub fn release_idle(&mut self) {
        #[cfg(feature = "snappy")]
        if let DecoderCodec::Snappy(snappy) = &mut self.codec {
            if snappy.pos == snappy.end {
                snappy.held = Vec::new();
                snappy.pos = 0;
                snappy.end = 0;
            }
        }
    }

    /// Decodes from `input` (compressed bytes as received, cut at any byte boundary) into `out`,
    /// writing at most `out.len()` bytes.
    ///
    /// Returns `(consumed, produced)`: how many bytes of `input` were used up (drop them and pass
    /// the rest again next time, with more appended) and how many bytes of `out` were filled,
    /// from index 0. If `out` is not empty and the input holds decodable data, at least one is
    /// above zero. Snappy chunks are consumed whole only, and a chunk whose data does not fit in
    /// `out` is held inside and handed out by the following calls.
    ///
    /// An error is fatal to the stream: do not call again (it does not panic, but its output is
    /// meaningless). Bytes written to `out` by the failing call are to be ignored.
    pub fn decode(
        &mut self,
        input: &[u8],
        out: &mut [u8],
    ) -> Result<(usize, usize), DecompressError> {
        match &mut self.codec {
            DecoderCodec::None => {
                let n = input.len().min(out.len());
                out[..n].copy_from_slice(&input[..n]);
                Ok((n, n))
            }
            #[cfg(feature = "flate")]
            DecoderCodec::Flate(inflate) => flate_decode(inflate, input, out),
            #[cfg(feature = "snappy")]
            DecoderCodec::Snappy(snappy) => snappy.decode(input, out),
        }
    }

    /// Decoded bytes held inside waiting for room in `out` (snappy only; 0 otherwise).
    pub fn pending_output(&self) -> usize {
        match &self.codec {
            #[cfg(feature = "snappy")]
            DecoderCodec::Snappy(snappy) => snappy.end - snappy.pos,
            _ => 0,
        }
    }
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("compression", &self.compression())
            .field("pending_output", &self.pending_output())
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "flate")]
fn flate_decode(
    inflate: &mut flate2::Decompress,
    input: &[u8],
    out: &mut [u8],
) -> Result<(usize, usize), DecompressError> {
    let (in_before, out_before) = (inflate.total_in(), inflate.total_out());
    let status = inflate
        .decompress(input, out, flate2::FlushDecompress::None)
        .map_err(|e| DecompressError::Flate(e.to_string()))?;
    let consumed = (inflate.total_in() - in_before) as usize;
    let produced = (inflate.total_out() - out_before) as usize;
    match status {
        flate2::Status::StreamEnd => Err(DecompressError::FlateStreamEnd),
        // BufError: no progress possible (input exhausted or no room), not a failure.
        flate2::Status::Ok | flate2::Status::BufError => Ok((consumed, produced)),
    }
}

#[cfg(feature = "snappy")]
#[derive(Default)]
struct SnappyDecoder {
    /// The stream identifier chunk has been seen.
    started: bool,
    /// Holds one decoded chunk that did not fit in `out`: `held[pos..end]` is still to be
    /// handed out. Allocated (`SNAPPY_MAX_CHUNK` bytes) the first time it is needed.
    held: Vec<u8>,
    pos: usize,
    end: usize,
}

#[cfg(feature = "snappy")]
impl SnappyDecoder {
    fn decode(&mut self, input: &[u8], out: &mut [u8]) -> Result<(usize, usize), DecompressError> {
        let mut produced = self.hand_out(out);
        let mut consumed = 0;
        // Chunks are decoded only while nothing is held, so at most one chunk ever is.
        while self.pos == self.end {
            let rest = &input[consumed..];
            let Some(&[kind, a, b, c]) = rest.get(..4) else {
                break;
            };
            let len = u32::from_le_bytes([a, b, c, 0]);
            check_header(self.started, kind, len)?;
            let Some(body) = rest.get(4..4 + len as usize) else {
                break;
            };
            match kind {
                chunk::COMPRESSED | chunk::UNCOMPRESSED => {
                    if produced == out.len() {
                        break; // no room: leave the chunk for the next call
                    }
                    produced += self.data_chunk(kind, body, &mut out[produced..])?;
                }
                chunk::IDENTIFIER => {
                    if body != &chunk::STREAM_IDENTIFIER[4..] {
                        return Err(DecompressError::SnappyBadIdentifier);
                    }
                    self.started = true;
                }
                _ => {} // skippable, checked by check_header
            }
            consumed += 4 + body.len();
        }
        Ok((consumed, produced))
    }

    /// Copies held bytes into `out`; returns how many.
    fn hand_out(&mut self, out: &mut [u8]) -> usize {
        let n = (self.end - self.pos).min(out.len());
        out[..n].copy_from_slice(&self.held[self.pos..self.pos + n]);
        self.pos += n;
        n
    }

    /// Decodes a whole data chunk (`body` = checksum and data) into `room`, holding what does
    /// not fit. Returns the bytes written into `room`.
    fn data_chunk(
        &mut self,
        kind: u8,
        body: &[u8],
        room: &mut [u8],
    ) -> Result<usize, DecompressError> {
        let (crc, data) = body.split_at(4);
        let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let check = |plain: &[u8]| {
            if masked(crc32c(plain)) == crc {
                Ok(())
            } else {
                Err(DecompressError::SnappyChecksum)
            }
        };
        if kind == chunk::UNCOMPRESSED {
            check(data)?;
            let n = data.len().min(room.len());
            room[..n].copy_from_slice(&data[..n]);
            if n < data.len() {
                self.hold(data.len() - n).copy_from_slice(&data[n..]);
            }
            return Ok(n);
        }
        // An empty block has not even the length varint.
        let len = match snap::raw::decompress_len(data) {
            Ok(len) if !data.is_empty() => len,
            _ => return Err(DecompressError::SnappyCorrupt),
        };
        if len > SNAPPY_MAX_CHUNK {
            return Err(DecompressError::SnappyBadChunk);
        }
        let fits = len <= room.len();
        let dst = if fits {
            &mut room[..len]
        } else {
            self.hold(len)
        };
        // `snap::raw::Decoder` is stateless (a zero-sized placeholder): nothing to keep.
        let result = match snap::raw::Decoder::new().decompress(data, dst) {
            Ok(n) if n == len => check(dst),
            _ => Err(DecompressError::SnappyCorrupt),
        };
        if let Err(e) = result {
            (self.pos, self.end) = (0, 0);
            return Err(e);
        }
        if fits {
            return Ok(len);
        }
        Ok(self.hand_out(room))
    }

    /// Makes `n` bytes (at most [`SNAPPY_MAX_CHUNK`]) the held output, to be filled by the caller.
    fn hold(&mut self, n: usize) -> &mut [u8] {
        if self.held.is_empty() {
            self.held = vec![0; SNAPPY_MAX_CHUNK];
        }
        (self.pos, self.end) = (0, n);
        &mut self.held[..n]
    }
}

/// Checks a chunk header as soon as its 4 bytes are in, before waiting for the body.
#[cfg(feature = "snappy")]
fn check_header(started: bool, kind: u8, len: u32) -> Result<(), DecompressError> {
    if !started && kind != chunk::IDENTIFIER {
        return Err(DecompressError::SnappyMissingIdentifier);
    }
    if len > MAX_CHUNK_LEN_FIELD {
        return Err(DecompressError::SnappyChunkTooLong(len));
    }
    match kind {
        chunk::COMPRESSED if len < 4 => Err(DecompressError::SnappyBadChunk),
        chunk::UNCOMPRESSED if len < 4 || len - 4 > SNAPPY_MAX_CHUNK as u32 => {
            Err(DecompressError::SnappyBadChunk)
        }
        chunk::IDENTIFIER if len != 6 => Err(DecompressError::SnappyBadIdentifier),
        0x02..=0x7f => Err(DecompressError::SnappyUnskippableChunk(kind)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    // Without any codec, only the helpers' users are compiled out.
    #![cfg_attr(not(any(feature = "flate", feature = "snappy")), allow(dead_code))]

    use super::*;

    const ALL: [Compression; 3] = [Compression::None, Compression::Flate, Compression::Snappy];

    /// splitmix64: deterministic test data and cut points from one seed.
    struct SplitMix(u64);

    impl SplitMix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// The bytes of a vector file after the 3-byte handshake.
    fn vector(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/data/fastrpc/{name}.hex",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let hex: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        let digit = |d: u8| (d as char).to_digit(16).expect("hex digit") as u8;
        let bytes: Vec<u8> = hex
            .chunks(2)
            .map(|p| digit(p[0]) << 4 | digit(p[1]))
            .collect();
        bytes[3..].to_vec()
    }

    /// Decodes `wire` as a connection would: bytes arrive in pieces of `piece()` bytes, and each
    /// call gets an `out` of `room()` bytes; a new piece arrives only once a call makes no
    /// progress. Checks that everything is consumed and nothing is left held.
    fn decode_all(
        compression: Compression,
        wire: &[u8],
        mut piece: impl FnMut() -> usize,
        mut room: impl FnMut() -> usize,
    ) -> Result<Vec<u8>, DecompressError> {
        let mut decoder = Decoder::new(compression)?;
        let (mut start, mut arrived) = (0, 0);
        let mut plain = Vec::new();
        let mut out = vec![0u8; 1 << 17];
        loop {
            let n = room().clamp(1, out.len());
            let (consumed, produced) = decoder.decode(&wire[start..arrived], &mut out[..n])?;
            assert!(consumed <= arrived - start && produced <= n);
            assert!(decoder.pending_output() <= SNAPPY_MAX_CHUNK);
            start += consumed;
            plain.extend_from_slice(&out[..produced]);
            if (consumed, produced) == (0, 0) {
                if arrived == wire.len() {
                    break;
                }
                arrived += piece().clamp(1, wire.len() - arrived);
            }
        }
        assert_eq!(start, wire.len(), "input left undecoded");
        assert_eq!(decoder.pending_output(), 0);
        Ok(plain)
    }

    /// The error `wire` decodes to, the same whether it arrives whole or byte by byte.
    fn decode_err(compression: Compression, wire: &[u8]) -> DecompressError {
        let whole = decode_all(compression, wire, || usize::MAX, || usize::MAX).unwrap_err();
        let bytewise = decode_all(compression, wire, || 1, || 3).unwrap_err();
        assert_eq!(whole, bytewise);
        whole
    }

    fn encode_batches(compression: Compression, batches: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut encoder = Encoder::new(compression, DEFAULT_FLATE_LEVEL).unwrap();
        let mut wire = Vec::new();
        batches
            .iter()
            .map(|batch| {
                let at = wire.len();
                encoder.encode(batch, &mut wire);
                wire[at..].to_vec()
            })
            .collect()
    }

    /// The batches of `01-none`, client to server, in the order Go flushed them.
    fn none_c2s_batches() -> Vec<Vec<u8>> {
        let plain = vector("01-none.c2s");
        let mut rest = &plain[..];
        [18, 15, 14, 12, 1015]
            .iter()
            .map(|&n| {
                let (batch, tail) = rest.split_at(n);
                rest = tail;
                batch.to_vec()
            })
            .collect()
    }

    #[test]
    fn compression_bytes_and_names() {
        for c in ALL {
            assert_eq!(Compression::from_byte(c.to_byte()), Some(c));
        }
        assert_eq!(ALL.map(Compression::to_byte), [0, 1, 2]);
        assert_eq!(Compression::from_byte(3), None);
        assert_eq!(Compression::default(), Compression::None);
        assert_eq!(ALL.map(|c| c.to_string()), ["none", "flate", "snappy"]);
        assert!(Compression::None.is_available());
    }

    #[test]
    fn unavailable_codecs_are_errors_not_panics() {
        for c in ALL {
            match (Encoder::new(c, DEFAULT_FLATE_LEVEL), Decoder::new(c)) {
                (Ok(encoder), Ok(decoder)) => {
                    assert!(c.is_available());
                    assert_eq!((encoder.compression(), decoder.compression()), (c, c));
                }
                (Err(e), Err(d)) => {
                    assert!(!c.is_available());
                    assert_eq!(
                        (e, d),
                        (
                            DecompressError::Unsupported(c),
                            DecompressError::Unsupported(c)
                        )
                    );
                }
                _ => panic!("{c}: encoder and decoder disagree"),
            }
        }
    }

    #[test]
    fn codecs_move_between_threads_and_errors_read_well() {
        fn send<T: Send + Sync + 'static>() {}
        send::<Encoder>();
        send::<Decoder>();
        send::<DecompressError>();
        let e = DecompressError::SnappyChunkTooLong(76495);
        assert_eq!(
            e.to_string(),
            "snappy chunk length 76495 is above the limit 76494"
        );
        let e = DecompressError::SnappyUnskippableChunk(5);
        assert_eq!(e.to_string(), "reserved unskippable snappy chunk type 0x05");
        let e = DecompressError::Unsupported(Compression::Snappy);
        assert_eq!(
            e.to_string(),
            "snappy compression is not available in this build (cargo feature)"
        );
    }

    /// A quiet connection gives its codec memory back between batches; the stream goes on
    /// decoding with the same decoder, and the released parts come back with the next batch.
    #[test]
    #[cfg(any(feature = "flate", feature = "snappy"))]
    fn codec_memory_released_between_batches_and_the_stream_goes_on() {
        let text: Vec<u8> = b"the same words again and again, "
            .iter()
            .copied()
            .cycle()
            .take(100_000)
            .collect();
        for compression in [Compression::Flate, Compression::Snappy] {
            if !compression.is_available() {
                continue;
            }
            let mut encoder = Encoder::new(compression, 1).unwrap();
            let mut decoder = Decoder::new(compression).unwrap();
            let mut plain = Vec::new();
            let mut sizes = Vec::new();
            for batch in 0..3 {
                let mut wire = Vec::new();
                encoder.encode(&text, &mut wire);
                sizes.push(wire.len());
                // Small pieces of output, so that snappy holds a chunk between calls.
                let mut input = &wire[..];
                let mut out = [0u8; 1000];
                loop {
                    let (consumed, produced) = decoder.decode(input, &mut out).unwrap();
                    plain.extend_from_slice(&out[..produced]);
                    input = &input[consumed..];
                    if consumed == 0 && produced == 0 {
                        break;
                    }
                }
                assert_eq!(plain.len(), text.len() * (batch + 1), "{compression}");
                encoder.release_idle();
                decoder.release_idle();
                match &encoder.codec {
                    #[cfg(feature = "flate")]
                    EncoderCodec::Flate { deflate, .. } => assert!(deflate.is_none()),
                    #[cfg(feature = "snappy")]
                    EncoderCodec::Snappy { raw, .. } => assert!(raw.is_none()),
                    EncoderCodec::None => unreachable!(),
                }
                #[cfg(feature = "snappy")]
                if let DecoderCodec::Snappy(snappy) = &decoder.codec {
                    assert_eq!(snappy.held.capacity(), 0);
                }
            }
            assert!(plain.chunks(text.len()).all(|c| c == text), "{compression}");
            // Still compressed after a release: each batch on its own.
            assert!(
                sizes.iter().all(|&n| n < text.len() / 4),
                "{compression}: {sizes:?}"
            );
        }
    }

    #[test]
    fn empty_input_appends_nothing() {
        for c in ALL.into_iter().filter(|c| c.is_available()) {
            let mut encoder = Encoder::new(c, DEFAULT_FLATE_LEVEL).unwrap();
            let mut wire = Vec::new();
            encoder.encode(b"", &mut wire);
            assert!(wire.is_empty(), "{c}");
            encoder.encode(b"x", &mut wire);
            let len = wire.len();
            encoder.encode(b"", &mut wire);
            assert_eq!(wire.len(), len, "{c}");
        }
    }

    #[test]
    fn none_copies_what_fits() {
        let mut decoder = Decoder::new(Compression::None).unwrap();
        let mut out = [0u8; 4];
        assert_eq!(decoder.decode(b"abcdef", &mut out), Ok((4, 4)));
        assert_eq!(&out, b"abcd");
        assert_eq!(decoder.decode(b"ef", &mut out), Ok((2, 2)));
        assert_eq!(decoder.decode(b"", &mut out), Ok((0, 0)));
    }

    #[test]
    fn decodes_go_vectors_whatever_the_cuts() {
        let cases = [
            ("02-flate.c2s", Compression::Flate, "01-none.c2s"),
            ("02-flate.s2c", Compression::Flate, "01-none.s2c"),
            ("03-snappy.c2s", Compression::Snappy, "01-none.c2s"),
            ("03-snappy.s2c", Compression::Snappy, "01-none.s2c"),
            ("04-flate-to-snappy.c2s", Compression::Flate, "01-none.c2s"),
            ("04-flate-to-snappy.s2c", Compression::Snappy, "01-none.s2c"),
        ];
        for (name, c, plain) in cases.into_iter().filter(|case| case.1.is_available()) {
            let (wire, want) = (vector(name), vector(plain));
            for piece in [usize::MAX, 1, 2, 5, 64] {
                for room in [1 << 17, 1, 7, 13, 64, 1000] {
                    let got = decode_all(c, &wire, || piece, || room).unwrap();
                    assert!(got == want, "{name}: piece {piece}, room {room}");
                }
            }
        }
    }

    #[test]
    fn every_batch_decodes_on_arrival() {
        let batches = none_c2s_batches();
        let batches: Vec<&[u8]> = batches.iter().map(Vec::as_slice).collect();
        for c in ALL.into_iter().filter(|c| c.is_available()) {
            let mut decoder = Decoder::new(c).unwrap();
            for (batch, wire) in batches.iter().zip(encode_batches(c, &batches)) {
                let mut out = [0u8; 2048];
                let (consumed, produced) = decoder.decode(&wire, &mut out).unwrap();
                assert_eq!((consumed, &out[..produced]), (wire.len(), *batch), "{c}");
                assert_eq!(decoder.decode(&[], &mut out), Ok((0, 0)), "{c}");
            }
        }
    }

    #[cfg(feature = "snappy")]
    mod snappy {
        use super::*;

        /// A chunk with any header, for crafting bad ones.
        fn raw_chunk(kind: u8, len_field: u32, body: &[u8]) -> Vec<u8> {
            let [a, b, c, _] = len_field.to_le_bytes();
            [&[kind, a, b, c][..], body].concat()
        }

        /// A data chunk with the checksum of `crc_of` (normally the uncompressed data).
        fn data_chunk(kind: u8, crc_of: &[u8], data: &[u8]) -> Vec<u8> {
            let body = [&masked(crc32c(crc_of)).to_le_bytes()[..], data].concat();
            raw_chunk(kind, body.len() as u32, &body)
        }

        fn stream(chunks: &[&[u8]]) -> Vec<u8> {
            [&chunk::STREAM_IDENTIFIER[..]]
                .iter()
                .chain(chunks)
                .copied()
                .collect::<Vec<_>>()
                .concat()
        }

        fn decode(wire: &[u8]) -> Vec<u8> {
            decode_all(Compression::Snappy, wire, || usize::MAX, || usize::MAX).unwrap()
        }

        fn err(wire: &[u8]) -> DecompressError {
            decode_err(Compression::Snappy, wire)
        }

        #[test]
        fn encodes_go_bytes_exactly() {
            let batches = none_c2s_batches();
            let wire = encode_batches(Compression::Snappy, &[&batches[0]]).concat();
            let mut want = b"\xff\x06\x00\x00sNaPpY\x01\x16\x00\x00\xfd\x0b\x78\x69".to_vec();
            want.extend_from_slice(&batches[0]);
            assert_eq!(wire, want);
            // The small batches are stored chunks, as Go writes them: the same bytes.
            let small: Vec<&[u8]> = batches[..4].iter().map(Vec::as_slice).collect();
            let wire = encode_batches(Compression::Snappy, &small).concat();
            assert_eq!(wire, vector("03-snappy.c2s")[..wire.len()]);
        }

        #[test]
        fn compresses_when_it_saves_an_eighth() {
            let wire = encode_batches(Compression::Snappy, &[&[7u8; 1000]]).concat();
            assert_eq!(wire[10], chunk::COMPRESSED);
            assert!(wire.len() < 100);
            let mut rng = SplitMix(1);
            let noise: Vec<u8> = (0..1000).map(|_| rng.next() as u8).collect();
            let wire = encode_batches(Compression::Snappy, &[&noise]).concat();
            assert_eq!(wire[10], chunk::UNCOMPRESSED);
            assert_eq!(wire.len(), 10 + 8 + 1000);
        }

        #[test]
        fn splits_batches_into_64k_chunks() {
            let batch = vec![0u8; 2 * SNAPPY_MAX_CHUNK + 1];
            let wire = encode_batches(Compression::Snappy, &[&batch]).concat();
            let (mut at, mut sizes) = (10, Vec::new());
            while at < wire.len() {
                let len =
                    u32::from_le_bytes([wire[at + 1], wire[at + 2], wire[at + 3], 0]) as usize;
                let data = &wire[at + 8..at + 4 + len];
                sizes.push(match wire[at] {
                    chunk::COMPRESSED => snap::raw::decompress_len(data).unwrap(),
                    _ => data.len(),
                });
                at += 4 + len;
            }
            assert_eq!(sizes, [SNAPPY_MAX_CHUNK, SNAPPY_MAX_CHUNK, 1]);
        }

        #[test]
        fn holds_at_most_one_chunk_for_a_small_out() {
            let mut rng = SplitMix(2);
            let batch: Vec<u8> = (0..SNAPPY_MAX_CHUNK).map(|_| rng.next() as u8).collect();
            for kind_batch in [batch, vec![0u8; SNAPPY_MAX_CHUNK]] {
                let wire = encode_batches(Compression::Snappy, &[&kind_batch]).concat();
                let mut decoder = Decoder::new(Compression::Snappy).unwrap();
                let mut out = [0u8; 1000];
                assert_eq!(decoder.decode(&wire, &mut out), Ok((wire.len(), 1000)));
                assert_eq!(decoder.pending_output(), SNAPPY_MAX_CHUNK - 1000);
                let mut plain = out.to_vec();
                while decoder.pending_output() > 0 {
                    let (consumed, produced) = decoder.decode(&[], &mut out).unwrap();
                    assert_eq!(consumed, 0);
                    assert!(produced > 0);
                    plain.extend_from_slice(&out[..produced]);
                }
                assert!(plain == kind_batch);
            }
        }

        #[test]
        fn empty_out_takes_no_data() {
            let wire = encode_batches(Compression::Snappy, &[b"hello"]).concat();
            let mut decoder = Decoder::new(Compression::Snappy).unwrap();
            // The identifier is consumed, the data chunk waits for room.
            assert_eq!(decoder.decode(&wire, &mut []), Ok((10, 0)));
            let mut out = [0u8; 5];
            assert_eq!(
                decoder.decode(&wire[10..], &mut out),
                Ok((wire.len() - 10, 5))
            );
            assert_eq!(&out, b"hello");
        }

        #[test]
        fn skips_padding_and_skippable_chunks_and_repeated_identifiers() {
            let wire = stream(&[
                &raw_chunk(0xfe, 100, &[0; 100]),
                &data_chunk(chunk::UNCOMPRESSED, b"ab", b"ab"),
                &raw_chunk(0x80, 3, b"xyz"),
                &chunk::STREAM_IDENTIFIER,
                &raw_chunk(0xfe, 0, b""),
                &data_chunk(chunk::UNCOMPRESSED, b"", b""),
                &data_chunk(chunk::UNCOMPRESSED, b"cd", b"cd"),
                &raw_chunk(
                    0xfe,
                    MAX_CHUNK_LEN_FIELD,
                    &vec![0; SNAPPY_MAX_WIRE_CHUNK - 4],
                ),
            ]);
            assert_eq!(decode(&wire), b"abcd");
        }

        #[test]
        fn missing_or_bad_identifier() {
            let data = data_chunk(chunk::UNCOMPRESSED, b"ab", b"ab");
            assert_eq!(err(&data), DecompressError::SnappyMissingIdentifier);
            assert_eq!(
                err(&raw_chunk(0xfe, 0, b"")),
                DecompressError::SnappyMissingIdentifier
            );
            assert_eq!(
                err(b"\xff\x06\x00\x00sNaPpZ"),
                DecompressError::SnappyBadIdentifier
            );
            assert_eq!(
                err(b"\xff\x05\x00\x00sNaPp"),
                DecompressError::SnappyBadIdentifier
            );
            assert_eq!(
                err(&stream(&[&data, b"\xff\x07\x00\x00sNaPpY!"])),
                DecompressError::SnappyBadIdentifier
            );
        }

        #[test]
        fn reserved_chunk_types_are_refused() {
            for kind in [0x02, 0x05, 0x7f] {
                let wire = stream(&[&raw_chunk(kind, 1, b"x")]);
                assert_eq!(err(&wire), DecompressError::SnappyUnskippableChunk(kind));
            }
        }

        #[test]
        fn length_field_above_76494_is_refused_from_the_header() {
            for kind in [
                chunk::COMPRESSED,
                chunk::UNCOMPRESSED,
                0xfe,
                0x80,
                chunk::IDENTIFIER,
                0x05,
            ] {
                let wire = stream(&[&raw_chunk(kind, 76495, b"")]);
                assert_eq!(
                    err(&wire),
                    DecompressError::SnappyChunkTooLong(76495),
                    "type {kind}"
                );
            }
            let wire = stream(&[&raw_chunk(chunk::UNCOMPRESSED, 0xff_ffff, b"")]);
            assert_eq!(err(&wire), DecompressError::SnappyChunkTooLong(0xff_ffff));
        }

        #[test]
        fn bad_data_chunks() {
            for kind in [chunk::COMPRESSED, chunk::UNCOMPRESSED] {
                let wire = stream(&[&raw_chunk(kind, 3, b"abc")]);
                assert_eq!(err(&wire), DecompressError::SnappyBadChunk);
            }
            // Stored data longer than 65536 bytes: refused from the header alone.
            let wire = stream(&[&raw_chunk(chunk::UNCOMPRESSED, 4 + 65537, b"")]);
            assert_eq!(err(&wire), DecompressError::SnappyBadChunk);
            // A block claiming 1 GiB (uvarint 2^30), or 65537 bytes: refused before decoding.
            for claim in [&b"\x80\x80\x80\x80\x04"[..], b"\x81\x80\x04"] {
                let block = [claim, b"\x00\x00"].concat();
                let wire = stream(&[&data_chunk(chunk::COMPRESSED, b"", &block)]);
                assert_eq!(err(&wire), DecompressError::SnappyBadChunk);
            }
        }

        #[test]
        fn corrupt_blocks() {
            let blocks: [&[u8]; 5] = [
                b"",                         // not even the length varint
                b"\x80\x80\x80\x80\x80\x80", // a length varint that never ends
                b"\x05\x24abcdefghij",       // a 10-byte literal in a 5-byte block
                b"\x0a\x24abc",              // a literal cut short
                b"\x08\x01\x09",             // a copy reaching back before the start
            ];
            for block in blocks {
                let wire = stream(&[&data_chunk(chunk::COMPRESSED, b"", block)]);
                assert_eq!(err(&wire), DecompressError::SnappyCorrupt, "{block:x?}");
            }
        }

        #[test]
        fn checksum_mismatch() {
            let wire = stream(&[&data_chunk(chunk::UNCOMPRESSED, b"ab", b"ac")]);
            assert_eq!(err(&wire), DecompressError::SnappyChecksum);
            // A compressed chunk, decoded straight into `out` and through the held buffer.
            let mut wire = encode_batches(Compression::Snappy, &[&[9u8; 5000]]).concat();
            assert_eq!(wire[10], chunk::COMPRESSED);
            wire[14] ^= 1;
            assert_eq!(err(&wire), DecompressError::SnappyChecksum);
            let mut decoder = Decoder::new(Compression::Snappy).unwrap();
            assert_eq!(
                decoder.decode(&wire, &mut [0; 10]),
                Err(DecompressError::SnappyChecksum)
            );
            assert_eq!(decoder.pending_output(), 0);
        }

        #[test]
        fn bomb_is_handed_out_in_bounded_pieces() {
            let zeros = vec![0u8; 4 << 20];
            let wire = encode_batches(Compression::Snappy, &[&zeros]).concat();
            assert!(wire.len() < zeros.len() / 20);
            let plain = decode_all(Compression::Snappy, &wire, || 1 << 12, || 1 << 10).unwrap();
            assert!(plain == zeros);
        }
    }

    #[cfg(feature = "flate")]
    mod flate {
        use super::*;
        use flate2::{Compress, FlushCompress};

        #[test]
        fn every_batch_ends_with_a_sync_flush() {
            let batches = none_c2s_batches();
            let batches: Vec<&[u8]> = batches.iter().map(Vec::as_slice).collect();
            for level in 0..=9 {
                let mut encoder = Encoder::new(Compression::Flate, level).unwrap();
                let mut wire = Vec::new();
                for batch in &batches {
                    encoder.encode(batch, &mut wire);
                    assert!(wire.ends_with(&[0, 0, 0xff, 0xff]), "level {level}");
                }
                let got = decode_all(Compression::Flate, &wire, || 3, || 100).unwrap();
                assert_eq!(got, batches.concat());
            }
        }

        #[test]
        fn a_finished_stream_is_an_error() {
            let mut deflate = Compress::new(flate2::Compression::new(6), false);
            let mut wire = Vec::with_capacity(64);
            deflate
                .compress_vec(b"hello", &mut wire, FlushCompress::Finish)
                .unwrap();
            assert_eq!(
                decode_err(Compression::Flate, &wire),
                DecompressError::FlateStreamEnd
            );
        }

        #[test]
        fn garbage_is_an_error() {
            let garbage: [&[u8]; 3] = [
                b"\xff\xff\xff\xff",                     // block type 3 (reserved)
                b"\x00\x05\x00\x00\x00hello",            // stored block, LEN and NLEN disagree
                b"\x04\x00\x00\x00\x00\x00\x00\x00\x00", // dynamic block, all code lengths 0
            ];
            for wire in garbage {
                assert!(
                    matches!(
                        decode_err(Compression::Flate, wire),
                        DecompressError::Flate(_)
                    ),
                    "{wire:x?}"
                );
            }
        }

        #[test]
        fn bomb_is_inflated_in_bounded_steps() {
            let zeros = vec![0u8; 10 << 20];
            let wire = encode_batches(Compression::Flate, &[&zeros]).concat();
            assert!(wire.len() < 64 << 10, "{} bytes", wire.len());
            let mut decoder = Decoder::new(Compression::Flate).unwrap();
            let mut out = vec![1u8; 64 << 10];
            let (mut start, mut total, mut calls) = (0, 0, 0);
            loop {
                let (consumed, produced) = decoder.decode(&wire[start..], &mut out).unwrap();
                assert!(out[..produced].iter().all(|&b| b == 0));
                (start, total, calls) = (start + consumed, total + produced, calls + 1);
                if (consumed, produced) == (0, 0) {
                    break;
                }
            }
            assert_eq!((start, total), (wire.len(), zeros.len()));
            assert!(calls > zeros.len() / out.len());
        }
    }

    #[cfg(any(feature = "flate", feature = "snappy"))]
    mod roundtrip {
        use super::*;
        use proptest::prelude::*;

        /// One batch: length, content kind, seed.
        fn specs() -> impl Strategy<Value = Vec<(usize, u8, u64)>> {
            let len = prop_oneof![3 => 0..64usize, 2 => 0..5000usize, 1 => 0..200_000usize];
            prop::collection::vec((len, 0..4u8, any::<u64>()), 1..8)
        }

        fn batch(len: usize, kind: u8, seed: u64) -> Vec<u8> {
            let mut rng = SplitMix(seed);
            match kind {
                // Noise: nothing to gain.
                0 => (0..len).map(|_| rng.next() as u8).collect(),
                // Sixteen symbols: entropy coding gains, matching hardly.
                1 => (0..len).map(|_| b'a' + rng.below(16) as u8).collect(),
                // A short pattern over and over, now and then altered: matching gains.
                2 => {
                    let pattern: Vec<u8> =
                        (0..1 + rng.below(64)).map(|_| rng.next() as u8).collect();
                    let mut data: Vec<u8> = pattern.iter().copied().cycle().take(len).collect();
                    for _ in 0..len / 500 {
                        data[rng.below(len)] = rng.next() as u8;
                    }
                    data
                }
                _ => vec![0; len],
            }
        }

        /// Mostly large, sometimes tiny.
        fn cut(rng: &mut SplitMix) -> usize {
            match rng.below(4) {
                0 => 1 + rng.below(16),
                _ => 1 + rng.below(100_000),
            }
        }

        fn roundtrip(
            c: Compression,
            level: u32,
            specs: &[(usize, u8, u64)],
            seed: u64,
        ) -> Result<(), TestCaseError> {
            let mut encoder = Encoder::new(c, level).unwrap();
            let mut decoder = Decoder::new(c).unwrap();
            let (mut plain, mut wire) = (Vec::new(), Vec::new());
            let mut out = vec![0u8; 1 << 16];
            for &(len, kind, batch_seed) in specs {
                let batch = batch(len, kind, batch_seed);
                let at = wire.len();
                encoder.encode(&batch, &mut wire);
                if c == Compression::Flate && !batch.is_empty() {
                    prop_assert!(wire.ends_with(&[0, 0, 0xff, 0xff]));
                }
                // The peer decodes the whole batch as soon as its bytes are in.
                let (mut start, mut got) = (at, Vec::new());
                loop {
                    let (consumed, produced) = decoder.decode(&wire[start..], &mut out).unwrap();
                    start += consumed;
                    got.extend_from_slice(&out[..produced]);
                    if (consumed, produced) == (0, 0) {
                        break;
                    }
                }
                prop_assert_eq!(start, wire.len());
                prop_assert!(
                    got == batch,
                    "batch of {} bytes decoded to {}",
                    batch.len(),
                    got.len()
                );
                plain.extend_from_slice(&batch);
            }
            // The whole stream again, cut anywhere, into any room.
            let (mut pieces, mut rooms) = (SplitMix(seed), SplitMix(!seed));
            let got = decode_all(c, &wire, || cut(&mut pieces), || cut(&mut rooms)).unwrap();
            prop_assert!(
                got == plain,
                "{} bytes decoded to {}",
                plain.len(),
                got.len()
            );
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            #[test]
            fn none(specs in specs(), seed in any::<u64>()) {
                roundtrip(Compression::None, 0, &specs, seed)?;
            }

            #[cfg(feature = "flate")]
            #[test]
            fn flate(specs in specs(), level in 0..12u32, seed in any::<u64>()) {
                roundtrip(Compression::Flate, level, &specs, seed)?;
            }

            #[cfg(feature = "snappy")]
            #[test]
            fn snappy(specs in specs(), seed in any::<u64>()) {
                roundtrip(Compression::Snappy, 0, &specs, seed)?;
            }
        }
    }
}
