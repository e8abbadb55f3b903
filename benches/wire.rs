//! Micro-benchmarks of the sans-IO core: frames per second through the frame codec, each
//! stream compression, and a whole `Conn` pair.
//!
//! Every benchmark handles one batch of 1000 frames per iteration and reports elements (frames)
//! per second; divide the time per iteration by 1000 for nanoseconds per frame. Payloads are the
//! shapes of the end-to-end suite: a 6-byte request (`foobar`) and a 261-byte response body.
//!
//! - `wire/encode/<compression>/<payload>`: `frame::encode` x1000 into a reused buffer, then
//!   `Encoder::encode` of the batch.
//! - `wire/decode/<compression>/<payload>`: `Decoder::decode` of one encoded batch, then the
//!   `frame::decode` loop over the plain bytes.
//! - `wire/conn/<compression>/<payload>`: client `send_frame` x1000, `poll_transmit`, server
//!   `recv_buf`/`handle_recv`, `poll_frame` x1000; the client compresses with `<compression>`.
//!
//! `cargo bench --bench wire` takes about a minute; `BENCH_QUICK=1` cuts the warm-up and
//! measurement times for a smoke run. Target: `wire/decode/none/6B` under 20 ns per frame.

mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use batchrpc::wire::compress::{Decoder, Encoder, DEFAULT_FLATE_LEVEL};
use batchrpc::wire::conn::{Conn, ConnConfig, Role};
use batchrpc::wire::frame::{self, FrameKind, DEFAULT_MAX_FRAME_LEN};
use batchrpc::Compression;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Frames per batch, and per iteration of every benchmark.
const FRAMES: u32 = 1000;

fn compressions() -> impl Iterator<Item = (Compression, &'static str)> {
    [
        (Compression::None, "none"),
        (Compression::Flate, "flate"),
        (Compression::Snappy, "snappy"),
    ]
    .into_iter()
    .filter(|(c, _)| c.is_available())
}

/// The payload shapes: the 6-byte request and the 261-byte response of the end-to-end suite.
fn payloads() -> [(&'static str, Vec<u8>); 2] {
    let text =
        b"batchrpc response body: many concurrent calls multiplexed over a few connections, \
                 packed into batches so that one write carries hundreds of calls. ";
    let body: Vec<u8> = text.iter().copied().cycle().take(261).collect();
    [("6B", b"foobar".to_vec()), ("261B", body)]
}

/// One batch of `FRAMES` frames carrying `payload`, as plain stream bytes.
fn plain_batch(plain: &mut Vec<u8>, payload: &[u8]) {
    plain.clear();
    for id in 0..FRAMES {
        frame::encode(plain, id, FrameKind::Response, payload);
    }
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire/encode");
    group.throughput(Throughput::Elements(FRAMES.into()));
    for (compression, name) in compressions() {
        for (size, payload) in payloads() {
            let mut encoder = Encoder::new(compression, DEFAULT_FLATE_LEVEL).unwrap();
            let (mut plain, mut wire) = (Vec::new(), Vec::new());
            group.bench_function(format!("{name}/{size}"), |b| {
                b.iter(|| {
                    plain_batch(&mut plain, black_box(&payload));
                    wire.clear();
                    encoder.encode(&plain, &mut wire);
                    black_box(wire.len())
                })
            });
        }
    }
    group.finish();
}

/// Decodes all of `input` into `out` (which has room for all of it); returns the plain length.
fn decompress(decoder: &mut Decoder, mut input: &[u8], out: &mut [u8]) -> usize {
    let mut filled = 0;
    loop {
        let (consumed, produced) = decoder.decode(input, &mut out[filled..]).unwrap();
        input = &input[consumed..];
        filled += produced;
        if (consumed, produced) == (0, 0) {
            return filled;
        }
    }
}

/// Walks the frames of `plain`; returns how many there were and their payload bytes.
fn walk_frames(mut plain: &[u8]) -> (u32, usize) {
    let (mut frames, mut bytes) = (0, 0);
    while let Some(f) = frame::decode(plain, DEFAULT_MAX_FRAME_LEN).unwrap() {
        frames += 1;
        bytes += f.payload.len();
        plain = &plain[f.wire_len()..];
    }
    (frames, bytes)
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire/decode");
    group.throughput(Throughput::Elements(FRAMES.into()));
    for (compression, name) in compressions() {
        for (size, payload) in payloads() {
            let mut plain = Vec::new();
            plain_batch(&mut plain, &payload);
            // Measure a steady-state batch: the second of its stream (no snappy stream
            // identifier; flate may refer back into the first). Decoding the same batch again
            // and again is exact, since the batch before it always holds the same bytes.
            let mut encoder = Encoder::new(compression, DEFAULT_FLATE_LEVEL).unwrap();
            let (mut first, mut batch) = (Vec::new(), Vec::new());
            encoder.encode(&plain, &mut first);
            encoder.encode(&plain, &mut batch);
            let mut decoder = Decoder::new(compression).unwrap();
            let mut out = vec![0; plain.len() + (64 << 10)];
            for wire in [&first, &batch] {
                let n = decompress(&mut decoder, wire, &mut out);
                assert_eq!(&out[..n], plain, "{name}/{size}: batch decodes back");
            }
            assert_eq!(
                walk_frames(&plain),
                (FRAMES, FRAMES as usize * payload.len())
            );

            group.bench_function(format!("{name}/{size}"), |b| {
                b.iter(|| {
                    let n = decompress(&mut decoder, black_box(&batch), &mut out);
                    black_box(walk_frames(&out[..n]))
                })
            });
        }
    }
    group.finish();
}

/// An open client/server pair, the client compressing with `compression`.
fn open_pair(compression: Compression, now: Instant) -> (Conn, Conn) {
    let mut client = Conn::new(
        ConnConfig {
            compression,
            ..ConnConfig::new(Role::Client)
        },
        now,
    );
    let mut server = Conn::new(ConnConfig::new(Role::Server), now);
    transfer(&mut client, &mut server, now);
    transfer(&mut server, &mut client, now);
    assert!(client.is_open() && server.is_open());
    (client, server)
}

/// Moves everything `from` writes into `to`, as big reads as `to` offers, draining frames
/// after each read; returns the frames `to` decoded.
fn transfer(from: &mut Conn, to: &mut Conn, now: Instant) -> u32 {
    let mut frames = 0;
    while let Some(bytes) = from.poll_transmit(now) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let room = to.recv_buf();
            let n = room.len().min(rest.len());
            room[..n].copy_from_slice(&rest[..n]);
            to.handle_recv(n);
            rest = &rest[n..];
            while let Some(f) = to.poll_frame().unwrap() {
                black_box(f.payload);
                frames += 1;
            }
        }
        let written = bytes.len();
        from.handle_sent(written);
    }
    frames
}

fn conn(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire/conn");
    group.throughput(Throughput::Elements(FRAMES.into()));
    let now = Instant::now();
    for (compression, name) in compressions() {
        for (size, payload) in payloads() {
            let (mut client, mut server) = open_pair(compression, now);
            group.bench_function(format!("{name}/{size}"), |b| {
                b.iter(|| {
                    for id in 0..FRAMES {
                        client.send_frame(id, FrameKind::Request, black_box(&payload));
                    }
                    let frames = transfer(&mut client, &mut server, now);
                    debug_assert_eq!(frames, FRAMES);
                    frames
                })
            });
            // A frame short means the pair lost one: the figure would be wrong.
            for id in 0..FRAMES {
                client.send_frame(id, FrameKind::Request, &payload);
            }
            assert_eq!(
                transfer(&mut client, &mut server, now),
                FRAMES,
                "{name}/{size}"
            );
        }
    }
    group.finish();
}

/// Short runs: ~2.5 s per benchmark, or ~0.4 s with `BENCH_QUICK=1`.
fn config() -> Criterion {
    support::config(Duration::from_millis(500), Duration::from_secs(2), 50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = encode, decode, conn
}
criterion_main!(benches);
