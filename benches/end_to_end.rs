//! fastrpc's end-to-end benchmark suite, row for row, over real loopback TCP.
//!
//! Shape (as fastrpc's `benchmarkEndToEnd`): `parallelism x cores` calls in flight, spread over
//! `cores` clients and `cores` caller threads (a window of `call_async`s per thread; blocking
//! `call` when the parallelism is 1); request `foobar` (6 bytes), response a fixed 261-byte
//! text body; the client's batch delay as named, the server's 100 us when the client's is
//! above zero. Throughput is the response body, so criterion prints MB/s like Go's rows.
//!
//! ```text
//! cargo bench --bench end_to_end                 # every row, a few minutes
//! BENCH_QUICK=1 cargo bench --bench end_to_end   # smoke run, well under two minutes
//! cargo bench --bench end_to_end -- NoDelay1000  # one row
//! ```
//!
//! The `EndToEndTLSCompress*` rows are the `EndToEndCompress*` rows over TLS (rustls with the
//! ring provider, TLS 1.3, a self-signed certificate made at start by rcgen).

mod support;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use batchrpc::{Client, Compression, RequestCtx, Server};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// The response: 261 bytes of text (compressible like a real payload, as in fastrpc's suite).
const BODY: &[u8; 261] = b"Batches of calls ride one write; the reactor reads until it would block, \
hands frames to workers, and flushes every dirty connection once per turn. This body is \
two hundred sixty-one bytes of plain text so that flate and snappy have something to do, thanks!!!!!";

const REQUEST: &[u8] = b"foobar";

/// The benchmark handlers are known to be cheap and never block, the case
/// `ServerBuilder::inline_budget` is for.
const INLINE_BUDGET: Duration = Duration::from_micros(20);

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

struct Shape {
    parallelism: usize,
    delay: Duration,
    compression: Compression,
    pipeline: bool,
    tls: bool,
}

/// Server and client TLS configurations for `localhost`, made once: a self-signed certificate
/// that the client trusts, and the ring provider installed as the process default.
#[cfg(feature = "tls")]
fn tls_configs() -> &'static (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    static CONFIGS: std::sync::OnceLock<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>)> =
        std::sync::OnceLock::new();
    CONFIGS.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("self-signed certificate");
        let cert = certified.cert.pem();
        let key = certified.signing_key.serialize_pem();
        let server =
            batchrpc::tls::server_config_from_pem_bytes(cert.as_bytes(), key.as_bytes(), None)
                .expect("server TLS config");
        let client = batchrpc::tls::client_config_from_pem_bytes(cert.as_bytes(), None)
            .expect("client TLS config");
        (server, client)
    })
}

struct Rig {
    // Fields drop in order: the clients close before the server shuts down.
    clients: Vec<Client>,
    _server: Server,
    parallelism: usize,
}

impl Rig {
    fn new(shape: &Shape) -> Rig {
        assert!(
            !shape.tls || cfg!(feature = "tls"),
            "TLS rows need the tls feature"
        );
        let server_delay = if shape.delay > Duration::ZERO {
            Duration::from_micros(100)
        } else {
            Duration::ZERO
        };
        #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
        let mut server = Server::builder()
            .compression(shape.compression)
            .max_batch_delay(server_delay)
            .pipeline(shape.pipeline)
            .max_queued_requests(shape.parallelism * cores() + 64)
            // The handler copies 261 bytes and never blocks: let it run inline when cheaper.
            .inline_budget(INLINE_BUDGET)
            .handler(|_: &RequestCtx, _req: &[u8], resp: &mut Vec<u8>| {
                resp.extend_from_slice(BODY);
                Ok(())
            });
        #[cfg(feature = "tls")]
        if shape.tls {
            server = server.tls(tls_configs().0.clone());
        }
        let server = server.bind("127.0.0.1:0").expect("bind");
        let clients = (0..cores())
            .map(|_| {
                #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
                let mut client = Client::builder(server.local_addr())
                    .compression(shape.compression)
                    .max_batch_delay(shape.delay)
                    .max_pending_requests(shape.parallelism as u32 + 16);
                #[cfg(feature = "tls")]
                if shape.tls {
                    client = client.tls(tls_configs().1.clone(), "localhost");
                }
                client.connect().expect("connect")
            })
            .collect();
        Rig {
            clients,
            _server: server,
            parallelism: shape.parallelism,
        }
    }

    /// Makes `iters` calls, `parallelism` in flight per caller thread; returns the time taken.
    fn run(&self, iters: u64) -> Duration {
        let threads = self.clients.len() as u64;
        let started = Instant::now();
        std::thread::scope(|s| {
            for (i, client) in self.clients.iter().enumerate() {
                let n = iters / threads + u64::from((i as u64) < iters % threads);
                s.spawn(move || caller(client, n, self.parallelism));
            }
        });
        started.elapsed()
    }
}

fn caller(client: &Client, calls: u64, window: usize) {
    if window == 1 {
        for _ in 0..calls {
            let resp = client.call(REQUEST).expect("call");
            assert_eq!(resp.len(), BODY.len());
        }
        return;
    }
    let mut in_flight = VecDeque::with_capacity(window);
    for _ in 0..calls {
        if in_flight.len() == window {
            let p: batchrpc::PendingCall = in_flight.pop_front().expect("window is full");
            assert_eq!(p.wait().expect("response").len(), BODY.len());
        }
        in_flight.push_back(client.call_async(REQUEST).expect("call_async"));
    }
    for p in in_flight {
        assert_eq!(p.wait().expect("response").len(), BODY.len());
    }
}

/// Short runs: the rows are many, and each is steady within a second or two.
/// `BENCH_QUICK=1` makes them shorter still, for smoke runs.
fn config() -> Criterion {
    support::config(Duration::from_secs(1), Duration::from_secs(3), 20)
}

fn end_to_end(c: &mut Criterion) {
    let ms = Duration::from_millis;
    let none = Compression::None;
    let mut rows: Vec<(String, Shape)> = Vec::new();
    for p in [1, 10, 100, 1000, 10_000] {
        let name = if p == 10_000 {
            "10K".to_string()
        } else {
            p.to_string()
        };
        rows.push((
            format!("EndToEndNoDelay{name}"),
            Shape {
                parallelism: p,
                delay: Duration::ZERO,
                compression: none,
                pipeline: false,
                tls: false,
            },
        ));
    }
    for d in [1, 2, 4, 8, 16] {
        rows.push((
            format!("EndToEndDelay{d}ms"),
            Shape {
                parallelism: 1000,
                delay: ms(d),
                compression: none,
                pipeline: false,
                tls: false,
            },
        ));
    }
    for tls in [false, true] {
        if tls && cfg!(not(feature = "tls")) {
            continue;
        }
        for (name, compression) in [
            ("None", Compression::None),
            ("Flate", Compression::Flate),
            ("Snappy", Compression::Snappy),
        ] {
            if compression.is_available() {
                let tls_name = if tls { "TLS" } else { "" };
                rows.push((
                    format!("EndToEnd{tls_name}Compress{name}"),
                    Shape {
                        parallelism: 1000,
                        delay: ms(1),
                        compression,
                        pipeline: false,
                        tls,
                    },
                ));
            }
        }
    }
    for p in [1, 10, 100, 1000] {
        rows.push((
            format!("EndToEndPipeline{p}"),
            Shape {
                parallelism: p,
                delay: Duration::ZERO,
                compression: none,
                pipeline: true,
                tls: false,
            },
        ));
    }

    let mut group = c.benchmark_group("end_to_end");
    group.throughput(Throughput::Bytes(BODY.len() as u64));
    for (name, shape) in rows {
        let rig = Rig::new(&shape);
        group.bench_function(name, |b| b.iter_custom(|iters| rig.run(iters)));
    }
    group.finish();
}

/// fastrpc's `SendNowait`: fire-and-forget requests, each caller thread with its own client
/// (at most 100 pending), to a pipelined server; timed until the server has handled them all.
fn send_nowait(c: &mut Criterion) {
    let handled = Arc::new(AtomicU64::new(0));
    let seen = handled.clone();
    let server = Server::builder()
        .pipeline(true)
        .inline_budget(INLINE_BUDGET)
        .handler(move |_: &RequestCtx, _req: &[u8], _resp: &mut Vec<u8>| {
            seen.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .bind("127.0.0.1:0")
        .expect("bind");
    let clients: Vec<Client> = (0..cores())
        .map(|_| {
            Client::builder(server.local_addr())
                .max_pending_requests(100)
                .connect()
                .expect("connect")
        })
        .collect();
    c.bench_function("SendNowait", |b| {
        b.iter_custom(|iters| {
            let target = handled.load(Ordering::Relaxed) + iters;
            let threads = clients.len() as u64;
            let started = Instant::now();
            std::thread::scope(|s| {
                for (i, client) in clients.iter().enumerate() {
                    let n = iters / threads + u64::from((i as u64) < iters % threads);
                    s.spawn(move || {
                        for _ in 0..n {
                            // At the pending limit, fastrpc's SendNowait says "not now": retry.
                            while let Err(batchrpc::Error::Overflow) = client.send(REQUEST) {
                                std::thread::yield_now();
                            }
                        }
                    });
                }
            });
            let deadline = Instant::now() + Duration::from_secs(30);
            while handled.load(Ordering::Relaxed) < target {
                assert!(
                    Instant::now() < deadline,
                    "server did not receive every request"
                );
                std::thread::yield_now();
            }
            started.elapsed()
        })
    });
}

criterion_group! {
    name = benches;
    config = config();
    targets = end_to_end, send_nowait
}
criterion_main!(benches);
