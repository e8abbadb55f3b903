//! The cost of the typed layer: `add(i64, i64) -> i64` through a `Dispatcher` and a
//! `FuncClient`, next to raw calls of the same sizes (a 6-byte request, a 1-byte response).
//!
//! - `typed/path/raw`: the raw-bytes equivalent of one call's CPU work outside the network:
//!   copy the 6-byte request into a reused buffer, run a raw handler through `dyn Fn` (it
//!   writes 1 byte), read the byte back.
//! - `typed/path/typed`: the same for a typed call: encode the request (name + bincode args)
//!   into a reused buffer, `Dispatcher::handle` (split, name lookup, decode, call, encode into
//!   the response), decode the `i64` result. The difference from `raw` is the typed overhead
//!   per call.
//! - `typed/path/encode_request`, `typed/path/handle`, `typed/path/decode_result`: the three
//!   parts of `typed` alone.
//! - `typed/loopback/raw` and `typed/loopback/typed`: blocking `call`s of the same two shapes
//!   over loopback TCP (client and server in this process, two workers).
//!
//! `cargo bench --bench typed` takes about 20 s; `BENCH_QUICK=1` cuts the warm-up and
//! measurement times for a smoke run. Target: typed overhead under 150 ns per call.

mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use batchrpc::typed::codec;
use batchrpc::{Client, Dispatcher, FuncClient, HandlerError, RequestCtx, Server};
use criterion::{criterion_group, criterion_main, Criterion};

type RawHandler =
    dyn Fn(&RequestCtx, &[u8], &mut Vec<u8>) -> Result<(), HandlerError> + Send + Sync;

fn dispatcher() -> Dispatcher {
    let mut d = Dispatcher::new();
    d.add_func("add", |(a, b): (i64, i64)| -> Result<i64, String> {
        Ok(a + b)
    });
    // A few neighbours, so that the name lookup is not in a table of one.
    for name in ["sub", "mul", "Kv.get", "Kv.set", "Kv.delete", "Kv.list"] {
        d.add_func(name, |(a, b): (i64, i64)| -> Result<i64, String> {
            Ok(a - b)
        });
    }
    d
}

/// The raw handler of the same sizes: a 6-byte request in, one byte out.
fn raw_handler() -> Arc<RawHandler> {
    Arc::new(|_: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
        resp.push(req.len() as u8 + req[5]);
        Ok(())
    })
}

/// A `RequestCtx` as handlers see it.
fn request_ctx() -> RequestCtx {
    RequestCtx::new(batchrpc::Address::Tcp(([127, 0, 0, 1], 9).into()), 1)
}

fn path(c: &mut Criterion) {
    let ctx = request_ctx();
    let d = dispatcher();
    let raw = raw_handler();
    let mut group = c.benchmark_group("typed/path");

    let mut req = Vec::new();
    codec::encode_request(&mut req, "add", &(2i64, 3i64)).unwrap();
    assert_eq!(req.len(), 6);
    let raw_req = *b"foobar";
    let (mut buf, mut resp) = (Vec::with_capacity(64), Vec::with_capacity(64));

    group.bench_function("raw", |b| {
        b.iter(|| {
            buf.clear();
            buf.extend_from_slice(black_box(&raw_req));
            resp.clear();
            raw(&ctx, &buf, &mut resp).unwrap();
            black_box(resp[0])
        })
    });
    group.bench_function("typed", |b| {
        b.iter(|| {
            buf.clear();
            codec::encode_request(&mut buf, black_box("add"), &(black_box(2i64), 3i64)).unwrap();
            resp.clear();
            d.handle(&ctx, &buf, &mut resp).unwrap();
            black_box(codec::decode_value::<i64>(&resp).unwrap())
        })
    });
    group.bench_function("encode_request", |b| {
        b.iter(|| {
            buf.clear();
            codec::encode_request(&mut buf, black_box("add"), &(black_box(2i64), 3i64)).unwrap();
            black_box(buf.len())
        })
    });
    group.bench_function("handle", |b| {
        b.iter(|| {
            resp.clear();
            d.handle(&ctx, black_box(&req), &mut resp).unwrap();
            black_box(resp.len())
        })
    });
    resp.clear();
    d.handle(&ctx, &req, &mut resp).unwrap();
    assert_eq!(resp.len(), 1);
    group.bench_function("decode_result", |b| {
        b.iter(|| black_box(codec::decode_value::<i64>(black_box(&resp)).unwrap()))
    });
    group.finish();
}

fn loopback(c: &mut Criterion) {
    let mut group = c.benchmark_group("typed/loopback");

    let raw = raw_handler();
    let server = Server::builder()
        .workers(2)
        .handler(move |ctx: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| raw(ctx, req, resp))
        .bind("127.0.0.1:0")
        .expect("bind raw");
    let client = Client::builder(server.local_addr())
        .connect()
        .expect("connect raw");
    group.bench_function("raw", |b| {
        b.iter(|| black_box(client.call(black_box(b"foobar")).unwrap()[0]))
    });

    let typed = Server::builder()
        .workers(2)
        .handler(dispatcher().into_handler())
        .bind("127.0.0.1:0")
        .expect("bind typed");
    let fc = FuncClient::new(
        Client::builder(typed.local_addr())
            .connect()
            .expect("connect typed"),
    );
    group.bench_function("typed", |b| {
        b.iter(|| black_box(fc.call::<_, i64>("add", &(black_box(2i64), 3i64)).unwrap()))
    });
    group.finish();
}

/// ~2.5 s per benchmark, or ~0.4 s with `BENCH_QUICK=1`.
fn config() -> Criterion {
    support::config(Duration::from_millis(500), Duration::from_secs(2), 50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = path, loopback
}
criterion_main!(benches);
