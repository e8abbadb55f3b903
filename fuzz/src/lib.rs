//! Drivers shared by the fuzz targets in `fuzz_targets/`.
//!
//! Each feeds arbitrary bytes to one decoder of `batchrpc::wire` and panics when an invariant
//! breaks; libFuzzer records a panic as a crash. The first input byte is a "knobs" byte where a
//! target needs choices (read size, output room, compression), so that the fuzzer explores them
//! along with the data.

use std::time::Instant;

use batchrpc::wire::compress::{Decoder, Encoder, DEFAULT_FLATE_LEVEL, SNAPPY_MAX_CHUNK};
use batchrpc::wire::conn::{Conn, ConnConfig, Profile, Role, State};
use batchrpc::wire::fastrpc;
use batchrpc::wire::frame::{self, Frame, FrameError, FrameKind, HEADER_LEN};
use batchrpc::wire::handshake::{self, Hello, HELLO_LEN};
use batchrpc::wire::ProtocolError;
use batchrpc::Compression;

/// Sizes a knob can pick: input pieces, output room, reads.
const SIZES: [usize; 8] = [1, 2, 7, 64, 255, 4096, 65_536, 131_072];

/// `handshake::decode` accepts exactly the hellos it encodes, and never panics.
pub fn handshake_decode(data: &[u8]) {
    match handshake::decode(data) {
        Ok(Some(hello)) => {
            assert_eq!(hello.encode()[..], data[..HELLO_LEN]);
            assert!(hello.compression.is_available());
        }
        Ok(None) => {
            assert!(data.len() < HELLO_LEN);
            assert!(b"BRPC\x01".starts_with(&data[..data.len().min(5)]));
        }
        Err(_) => {}
    }
}

/// Walks `data` as a stream of frames under a limit chosen by the first four bytes, checking
/// each answer of `frame::decode` against the header it read.
pub fn frame_decode(data: &[u8]) {
    let Some((max, mut rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let max = u32::from_le_bytes(*max);
    loop {
        match frame::decode(rest, max) {
            Ok(Some(f)) => {
                assert!(f.payload.len() <= max as usize);
                assert_eq!(f.payload, &rest[HEADER_LEN..f.wire_len()]);
                rest = &rest[f.wire_len()..];
            }
            Ok(None) => {
                if let Some(header) = rest.get(..HEADER_LEN) {
                    let len = u32::from_le_bytes(header[5..9].try_into().unwrap());
                    assert!(len <= max && rest.len() < HEADER_LEN + len as usize);
                }
                return;
            }
            Err(FrameError::UnknownKind(k)) => {
                assert_eq!(FrameKind::from_byte(k), None);
                return;
            }
            Err(FrameError::TooLong { len, max: m }) => {
                assert!(len > max && m == max);
                return;
            }
            Err(e) => panic!("unexpected frame error {e:?}"),
        }
    }
}

/// Feeds a fresh `compression` decoder the bytes after the knobs byte, arriving in pieces,
/// with a fixed output room per call. Knobs: bits 0-2 the piece size, bits 3-5 the room, bit 6
/// (snappy) a valid stream identifier first, so the fuzzer starts inside the chunk parser.
pub fn decompress(compression: Compression, data: &[u8]) {
    let Ok(mut decoder) = Decoder::new(compression) else {
        return;
    };
    let Some((&knobs, rest)) = data.split_first() else {
        return;
    };
    let piece = SIZES[usize::from(knobs & 7)];
    let room = SIZES[usize::from(knobs >> 3 & 7)];
    let mut input = Vec::with_capacity(rest.len() + 10);
    if compression == Compression::Snappy && knobs & 0x40 != 0 {
        input.extend_from_slice(b"\xff\x06\x00\x00sNaPpY");
    }
    input.extend_from_slice(rest);

    let mut out = vec![0u8; room];
    let (mut start, mut arrived) = (0, 0);
    loop {
        let Ok((consumed, produced)) = decoder.decode(&input[start..arrived], &mut out) else {
            return;
        };
        assert!(
            consumed <= arrived - start,
            "consumed {consumed} of {}",
            arrived - start
        );
        assert!(produced <= room, "produced {produced} into {room}");
        assert!(decoder.pending_output() <= SNAPPY_MAX_CHUNK);
        start += consumed;
        if (consumed, produced) == (0, 0) {
            if arrived == input.len() {
                return;
            }
            arrived = input.len().min(arrived + piece);
        }
    }
}

/// Largest frame the fuzzed server accepts.
pub const MAX_FRAME: u32 = 1 << 20;

/// Buffer memory the server may hold between reads whatever it is sent (see the derivation at
/// `MEMORY_BOUND` in `tests/wire_props.rs`): 2 MiB of received bytes, 2 MiB of decompressed
/// bytes, and its hello.
pub const MEMORY_BOUND: usize = (4 << 20) + 64;

/// A frame as the server delivered it.
#[derive(Debug, PartialEq, Eq)]
struct Delivered {
    id: u32,
    kind: FrameKind,
    payload: Vec<u8>,
}

/// A server `Conn` that receives a valid hello, then arbitrary bytes.
///
/// Knobs: bits 0-1 the compression the hello announces (0 none, 1 flate, 2 snappy, 3 none),
/// bits 2-3 the mode, bits 4-6 the read size, bit 7 end of stream after the input.
///
/// - Raw mode (0, 3): the bytes after the knobs are the (compressed) stream: garbage for the
///   decompressor and the frame decoder.
/// - Plain mode (1): they are a plain stream, compressed properly by this driver in batches of
///   1000 bytes.
/// - Frames mode (2): each 5 bytes describe one frame and where batches start
///   ([`described_batches`]), compressed properly: long valid streams, which the fuzzer finds
///   at once.
///
/// In plain and frames modes, with end of stream, the server must deliver exactly the frames
/// `frame::decode` finds in the plain stream, and close for the same reason: a differential
/// check of decompression and reassembly.
///
/// Always: no panic, only requests within the limit delivered, nothing sent but the hello,
/// buffers under [`MEMORY_BOUND`], and end of stream closes.
pub fn conn_server(data: &[u8]) {
    let Some((&knobs, rest)) = data.split_first() else {
        return;
    };
    let compression = match knobs & 3 {
        1 => Compression::Flate,
        2 => Compression::Snappy,
        _ => Compression::None,
    };
    if !compression.is_available() {
        return;
    }
    let read = SIZES[usize::from(knobs >> 4 & 7)];
    let eof = knobs & 0x80 != 0;
    let mode = knobs >> 2 & 3;
    let batches: Vec<Vec<u8>> = match mode {
        1 => rest.chunks(1000).map(<[u8]>::to_vec).collect(),
        2 => described_batches(rest),
        _ => Vec::new(),
    };
    let plain_mode = matches!(mode, 1 | 2);
    let plain = batches.concat();

    // What the peer writes: the hello, then the stream; in plain and frames modes one write
    // per batch, as a peer's flushes. A read never spans two writes, as when each write
    // arrives before the reader wakes up.
    let mut writes = vec![Hello::new(compression, false).encode().to_vec()];
    if plain_mode {
        let mut encoder = Encoder::new(compression, DEFAULT_FLATE_LEVEL).unwrap();
        writes.extend(batches.iter().map(|batch| {
            let mut wire = Vec::new();
            encoder.encode(batch, &mut wire);
            wire
        }));
    } else {
        writes.push(rest.to_vec());
    }

    let now = Instant::now();
    let cfg = ConnConfig {
        max_frame_len: MAX_FRAME,
        ..ConnConfig::new(Role::Server)
    };
    let mut server = Conn::new(cfg, now);
    let mut delivered = Vec::new();
    let mut end = Ok(());
    for (i, write) in writes.iter().enumerate() {
        let mut rest = &write[..];
        while !rest.is_empty() && matches!(server.state(), State::Handshake | State::Open) {
            let room = server.recv_buf();
            let n = room.len().min(read).min(rest.len());
            room[..n].copy_from_slice(&rest[..n]);
            server.handle_recv(n);
            rest = &rest[n..];
            if i > 0 || rest.is_empty() {
                assert_ne!(server.state(), State::Handshake, "a valid hello came");
                let hello = Hello::new(Compression::None, false).with_max_frame_len(MAX_FRAME);
                // The hello, then the answers to any pings.
                let out = server.poll_transmit(now).expect("the hello");
                assert_eq!(&out[..HELLO_LEN], &hello.encode()[..]);
            }
            drain(
                &mut server,
                &mut delivered,
                &mut end,
                MEMORY_BOUND,
                native_request,
            );
        }
    }
    if !eof {
        return;
    }
    server.handle_eof();
    drain(
        &mut server,
        &mut delivered,
        &mut end,
        MEMORY_BOUND,
        native_request,
    );
    if end.is_ok() {
        // After whole frames, a server half-closes: its owner answers, then closes.
        assert_eq!(server.state(), State::Draining, "end of stream half-closes");
        assert_eq!(server.close_reason(), None);
    } else {
        assert_eq!(server.state(), State::Closed, "a bad stream closes");
        assert_eq!(server.close_reason(), Some(&end));
    }
    if plain_mode {
        let (expected, expected_end) = frames_in(&plain);
        assert_eq!(delivered.len(), expected.len(), "frames delivered");
        assert!(delivered == expected, "frames differ");
        assert_eq!(end, expected_end);
    }
}

/// Most plain bytes [`described_batches`] makes, so that each run stays fast.
const MAX_DESCRIBED: usize = 96 << 10;

/// Batches of plain frames, one frame per 5 bytes `[a, b, c, d, e]` of `data` (its id is its
/// index), until they total [`MAX_DESCRIBED`] bytes:
/// - kind: `a` bit 7 clear: request; else bit 6 clear: request without reply; else response
///   (which a server refuses);
/// - payload length: `u16(b, c) * ((a & 0x1f) + 1)`, up to 2 MiB; above [`MAX_FRAME`], which
///   the server refuses from the header alone, only the header and 16 bytes are sent; past
///   the [`MAX_DESCRIBED`] budget, the payload is cut short there; either way nothing follows;
/// - payload: `d` repeated (compressible), or noise seeded by `a..=d` when `a` bit 5 is set;
/// - `e` bit 0: the frame starts a new batch.
pub fn described_batches(data: &[u8]) -> Vec<Vec<u8>> {
    let mut batches: Vec<Vec<u8>> = Vec::new();
    let mut total = 0;
    for (id, spec) in (0..).zip(data.chunks_exact(5)) {
        let &[a, b, c, d, e] = spec else {
            unreachable!("chunks of 5")
        };
        if e & 1 != 0 || batches.is_empty() {
            batches.push(Vec::new());
        }
        let batch = batches.last_mut().unwrap();
        let kind = match (a & 0x80 != 0, a & 0x40 != 0) {
            (false, _) => FrameKind::Request,
            (true, false) => FrameKind::RequestNoReply,
            (true, true) => FrameKind::Response,
        };
        let len = usize::from(u16::from_le_bytes([b, c])) * (usize::from(a & 0x1f) + 1);
        let mut header = [0; HEADER_LEN];
        frame::write_header(&mut header, id, kind, len as u32);
        batch.extend_from_slice(&header);
        // Above the limit, the header alone is refused: a few payload bytes are enough.
        let budget = if len > MAX_FRAME as usize {
            16
        } else {
            MAX_DESCRIBED.saturating_sub(total)
        };
        let sent = len.min(budget);
        if a & 0x20 == 0 {
            batch.resize(batch.len() + sent, d);
        } else {
            let mut x = u32::from_le_bytes([a, b, c, d]) | 1;
            batch.extend((0..sent).map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            }));
        }
        total += HEADER_LEN + sent;
        if sent < len {
            break;
        }
    }
    batches
}

/// Decodes every frame `conn` has, checking each with `check`, records how decoding ended, and
/// checks that its buffers stay under `memory`.
fn drain(
    conn: &mut Conn,
    delivered: &mut Vec<Delivered>,
    end: &mut Result<(), ProtocolError>,
    memory: usize,
    check: impl Fn(&Frame<'_>),
) {
    loop {
        match conn.poll_frame() {
            Ok(Some(f)) => {
                check(&f);
                delivered.push(Delivered {
                    id: f.id,
                    kind: f.kind,
                    payload: f.payload.to_vec(),
                });
            }
            Ok(None) => break,
            Err(e) => {
                *end = Err(e);
                break;
            }
        }
    }
    assert!(
        conn.buffered_capacity() <= memory,
        "{} bytes buffered",
        conn.buffered_capacity()
    );
}

/// The checks of a native server's frames.
fn native_request(f: &Frame<'_>) {
    assert!(f.payload.len() <= MAX_FRAME as usize);
    assert!(f.kind.is_request(), "a server never delivers {:?}", f.kind);
}

/// What a server must make of a plain stream that then ends: its frames, and how it closes.
fn frames_in(mut plain: &[u8]) -> (Vec<Delivered>, Result<(), ProtocolError>) {
    let mut frames = Vec::new();
    loop {
        match frame::decode(plain, MAX_FRAME) {
            Ok(Some(f)) if !f.kind.is_from_client() => {
                return (frames, Err(ProtocolError::UnexpectedKind(f.kind)));
            }
            // A ping is answered, not delivered.
            Ok(Some(f)) if f.kind == FrameKind::Ping => plain = &plain[f.wire_len()..],
            Ok(Some(f)) => {
                frames.push(Delivered {
                    id: f.id,
                    kind: f.kind,
                    payload: f.payload.to_vec(),
                });
                plain = &plain[f.wire_len()..];
            }
            Ok(None) if plain.is_empty() => return (frames, Ok(())),
            Ok(None) => return (frames, Err(ProtocolError::Truncated)),
            Err(e) => return (frames, Err(ProtocolError::Frame(e))),
        }
    }
}

/// Buffer memory a fastrpc connection may hold between reads whatever it is sent: the
/// [`MEMORY_BOUND`] reasoning with the profile's largest request (two 1 MiB fields).
pub const FASTRPC_MEMORY_BOUND: usize = 4 * (12 + 2 * fastrpc::MAX_FIELD_LEN as usize) + 64;

/// Calls the fuzzed fastrpc client has outstanding (wire ids 1 to this), owner ids from 1000.
const FASTRPC_CALLS: u32 = 16;

/// A `Conn` of the fastrpc profile, server or client, that receives a valid handshake block,
/// then arbitrary bytes.
///
/// Knobs: bit 0 the role (0 server, 1 client), bits 1-2 the compression the block announces
/// (0 none, 1 flate, 2 snappy, 3 none), bits 3-5 the read size, bit 6 the mode, bit 7 end of
/// stream after the input.
///
/// - Raw mode (bit 6 clear): the bytes after the knobs are the (compressed) stream.
/// - Plain mode (bit 6 set): they are a plain stream, compressed properly by this driver in
///   batches of 1000 bytes; with end of stream, what the connection delivers must be exactly
///   what the codec's decoder (`decode_request`, `decode_response`) finds in it: a server
///   delivers every request (id 0 as a request without reply) with its `tlv` body; a client,
///   which has [`FASTRPC_CALLS`] calls outstanding, delivers the first answer to each of them
///   under the caller's id and drops (counts) every other one.
///
/// Always: no panic, only frames of the role's direction within the limits, nothing sent but
/// the handshake block (and the client's requests), buffers under [`FASTRPC_MEMORY_BOUND`],
/// and end of stream closes.
pub fn conn_fastrpc(data: &[u8]) {
    let Some((&knobs, rest)) = data.split_first() else {
        return;
    };
    let role = if knobs & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let compression = match knobs >> 1 & 3 {
        1 => Compression::Flate,
        2 => Compression::Snappy,
        _ => Compression::None,
    };
    if !compression.is_available() {
        return;
    }
    let read = SIZES[usize::from(knobs >> 3 & 7)];
    let plain_mode = knobs & 0x40 != 0;
    let eof = knobs & 0x80 != 0;

    let mut writes = vec![vec![0, fastrpc::to_fastrpc_byte(compression), 0]];
    if plain_mode {
        let mut encoder = Encoder::new(compression, DEFAULT_FLATE_LEVEL).unwrap();
        writes.extend(rest.chunks(1000).map(|batch| {
            let mut wire = Vec::new();
            encoder.encode(batch, &mut wire);
            wire
        }));
    } else {
        writes.push(rest.to_vec());
    }

    let now = Instant::now();
    let cfg = ConnConfig {
        profile: Profile::Fastrpc(fastrpc::FastrpcSettings::default()),
        ..ConnConfig::new(role)
    };
    let mut conn = Conn::new(cfg, now);
    if role == Role::Client {
        assert_eq!(conn.poll_transmit(now), Some(&[0u8, 1, 0][..]));
        conn.handle_sent(3);
        for i in 0..FASTRPC_CALLS {
            conn.send_frame(1000 + i, FrameKind::Request, b"\0\0\0\0\0\0\0\0");
        }
    }
    let mut delivered = Vec::new();
    let mut end = Ok(());
    for (i, write) in writes.iter().enumerate() {
        let mut rest = &write[..];
        while !rest.is_empty() && matches!(conn.state(), State::Handshake | State::Open) {
            let room = conn.recv_buf();
            let n = room.len().min(read).min(rest.len());
            room[..n].copy_from_slice(&rest[..n]);
            conn.handle_recv(n);
            rest = &rest[n..];
            if i > 0 || rest.is_empty() {
                assert_ne!(conn.state(), State::Handshake, "a valid block came");
            }
            if role == Role::Server {
                if let Some(out) = conn.poll_transmit(now) {
                    assert_eq!(out, &[0u8, 1, 0][..], "a server sends only its block");
                    conn.handle_sent(3);
                }
            }
            drain(
                &mut conn,
                &mut delivered,
                &mut end,
                FASTRPC_MEMORY_BOUND,
                fastrpc_frame(role == Role::Server),
            );
        }
    }
    if !eof {
        return;
    }
    conn.handle_eof();
    drain(
        &mut conn,
        &mut delivered,
        &mut end,
        FASTRPC_MEMORY_BOUND,
        fastrpc_frame(role == Role::Server),
    );
    if role == Role::Server && end.is_ok() {
        // After whole frames, a server half-closes: its owner answers, then closes.
        assert_eq!(conn.state(), State::Draining, "end of stream half-closes");
        assert_eq!(conn.close_reason(), None);
    } else {
        assert_eq!(conn.state(), State::Closed, "end of stream closes");
        assert_eq!(conn.close_reason(), Some(&end));
    }
    if plain_mode {
        let (expected, expected_end, discarded) = fastrpc_frames_in(role, rest);
        assert_eq!(delivered.len(), expected.len(), "frames delivered");
        assert!(delivered == expected, "frames differ");
        assert_eq!(end, expected_end);
        assert_eq!(conn.counters().discarded, discarded);
    }
}

/// The checks of a fastrpc connection's frames: a server's are requests with a `tlv` body (id 0
/// exactly when no reply is wanted), a client's answers to its own calls under their ids.
fn fastrpc_frame(server: bool) -> impl Fn(&Frame<'_>) {
    move |f| {
        assert_eq!(f.kind.is_request(), server, "{:?}", f.kind);
        if server {
            assert!(fastrpc::split_request_body(f.payload).is_some());
            assert_eq!(f.kind == FrameKind::RequestNoReply, f.id == 0);
        } else {
            assert!(f.payload.len() <= fastrpc::MAX_FIELD_LEN as usize);
            assert!((1000..1000 + FASTRPC_CALLS).contains(&f.id));
        }
    }
}

/// What a fastrpc connection of `role` must make of a plain stream that then ends: the frames
/// it delivers, how it closes, and (client) how many answers it drops.
fn fastrpc_frames_in(
    role: Role,
    mut plain: &[u8],
) -> (Vec<Delivered>, Result<(), ProtocolError>, u64) {
    let mut frames = Vec::new();
    let mut outstanding: Vec<bool> = vec![true; FASTRPC_CALLS as usize];
    let mut discarded = 0;
    loop {
        let decoded = match role {
            Role::Server => fastrpc::decode_request(plain).map(|r| {
                r.map(|(req, len)| {
                    let kind = match req.id {
                        0 => FrameKind::RequestNoReply,
                        _ => FrameKind::Request,
                    };
                    (req.id, kind, fastrpc::ID_LEN, len)
                })
            }),
            Role::Client => fastrpc::decode_response(plain).map(|r| {
                r.map(|(resp, len)| {
                    (
                        resp.id,
                        FrameKind::Response,
                        fastrpc::RESPONSE_OVERHEAD,
                        len,
                    )
                })
            }),
        };
        match decoded {
            Ok(Some((id, kind, start, len))) => {
                let payload = plain[start..len].to_vec();
                plain = &plain[len..];
                if role == Role::Server {
                    frames.push(Delivered { id, kind, payload });
                    continue;
                }
                let slot = (id as usize).wrapping_sub(1);
                match outstanding.get_mut(slot) {
                    Some(waiting) if *waiting => {
                        *waiting = false;
                        frames.push(Delivered {
                            id: 1000 + slot as u32,
                            kind,
                            payload,
                        });
                    }
                    _ => discarded += 1,
                }
            }
            Ok(None) if plain.is_empty() => return (frames, Ok(()), discarded),
            Ok(None) => return (frames, Err(ProtocolError::Truncated), discarded),
            Err(e) => return (frames, Err(ProtocolError::FastrpcFrame(e)), discarded),
        }
    }
}
