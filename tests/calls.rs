//! Calls that succeed: every call style, payload sizes, concurrency, connections, compression,
//! batching delays and the batching statistics, over TCP and Unix sockets.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use batchrpc::{Client, Compression, Error, RequestCtx, Server, ServerBuilder};
use support::{echo_builder, run, wait_done, wait_until, TempPath};

const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
enum Net {
    Tcp,
    Unix,
}

/// A server from `builder` on a fresh loopback port or Unix socket path (kept alive by the
/// returned guard).
fn serve(net: Net, builder: ServerBuilder) -> (Server, Option<TempPath>) {
    match net {
        Net::Tcp => (builder.bind("127.0.0.1:0").expect("bind tcp"), None),
        Net::Unix => {
            let path = TempPath::new("calls");
            let server = builder.bind(path.unix_addr()).expect("bind unix");
            (server, Some(path))
        }
    }
}

fn echo_pair(net: Net) -> (Server, Client, Option<TempPath>) {
    let (server, path) = serve(net, echo_builder());
    let client = Client::builder(server.local_addr())
        .connect()
        .expect("connect");
    (server, client, path)
}

// ----- call styles -------------------------------------------------------------------------

fn call_styles(net: Net) {
    let (_server, client, _path) = echo_pair(net);

    assert_eq!(&*client.call(b"blocking").unwrap(), b"blocking");
    assert_eq!(
        &*client
            .call_timeout(b"with timeout", Duration::from_secs(5))
            .unwrap(),
        b"with timeout"
    );

    let pending = client.call_async(b"async").unwrap();
    assert_eq!(&*pending.wait().unwrap(), b"async");

    // try_wait: None until done, then Some exactly once, then None forever.
    let mut pending = client.call_async(b"polled").unwrap();
    wait_done(&pending, WAIT);
    assert!(pending.is_done());
    let first = pending
        .try_wait()
        .expect("done, so try_wait gives the outcome");
    assert_eq!(&*first.unwrap(), b"polled");
    assert!(pending.try_wait().is_none(), "second try_wait must be None");
    assert!(pending.try_wait().is_none(), "third try_wait must be None");
    drop(pending);

    let s = client.stats();
    assert_eq!(s.calls, 4);
    assert_eq!(s.errors, Default::default());
    assert_eq!(client.pending_requests(), 0);
}

#[test]
fn call_styles_tcp() {
    run(|| call_styles(Net::Tcp));
}

#[test]
fn call_styles_unix() {
    run(|| call_styles(Net::Unix));
}

#[test]
fn try_wait_before_completion_returns_none() {
    run(|| {
        let gate = support::Gate::new();
        let g = gate.clone();
        let server = Server::builder()
            .workers(1)
            .handler(move |_: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
                g.wait();
                resp.extend_from_slice(req);
                Ok(())
            })
            .bind("127.0.0.1:0")
            .unwrap();
        let _open = support::OpenOnDrop(gate.clone());
        let client = support::client_of(&server);
        let mut pending = client.call_async(b"held").unwrap();
        assert!(!pending.is_done());
        assert!(pending.try_wait().is_none());
        gate.open();
        wait_done(&pending, WAIT);
        assert_eq!(&*pending.try_wait().unwrap().unwrap(), b"held");
        assert!(pending.try_wait().is_none());
    });
}

/// After `try_wait` has handed out the outcome, the call is spent; `wait` on it must not
/// block forever nor take the outcome of another call that reuses its slot.
#[test]
fn wait_after_try_wait_neither_hangs_nor_steals() {
    run(|| {
        let (_server, client, _path) = echo_pair(Net::Tcp);
        let mut spent = client.call_async(b"first").unwrap();
        wait_done(&spent, WAIT);
        assert_eq!(&*spent.try_wait().unwrap().unwrap(), b"first");
        // The slot is free again: the next call takes it.
        let other = client.call_async(b"second").unwrap();
        wait_done(&other, WAIT);
        let stolen = support::bounded(Duration::from_secs(3), move || {
            spent.wait().map(|r| r.to_vec())
        });
        assert!(
            stolen.is_err(),
            "a spent call returned {stolen:?} (another call's response)"
        );
        assert_eq!(&*other.wait().unwrap(), b"second");
    });
}

// ----- send ----------------------------------------------------------------------------------

fn sends_arrive_once(net: Net) {
    const N: usize = 200;
    let seen = Arc::new(Mutex::new(vec![0u32; N]));
    let total = Arc::new(AtomicU64::new(0));
    let (seen2, total2) = (seen.clone(), total.clone());
    let builder = Server::builder().workers(2).handler(
        move |_: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
            if let Some(n) = req.strip_prefix(b"note:") {
                let i: usize = std::str::from_utf8(n).unwrap().parse().unwrap();
                seen2.lock().unwrap()[i] += 1;
                total2.fetch_add(1, Ordering::SeqCst);
            } else {
                resp.extend_from_slice(req);
            }
            Ok(())
        },
    );
    let (server, _path) = serve(net, builder);
    let client = Client::builder(server.local_addr()).connect().unwrap();
    for i in 0..N {
        client.send(format!("note:{i}").as_bytes()).unwrap();
    }
    wait_until(WAIT, "every send to reach the handler", || {
        total.load(Ordering::SeqCst) >= N as u64
    });
    // A round trip after the sends: a duplicate would have been read by now.
    assert_eq!(&*client.call(b"sync").unwrap(), b"sync");
    assert_eq!(total.load(Ordering::SeqCst), N as u64);
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().all(|&n| n == 1),
        "each send must be handled exactly once: {:?}",
        seen.iter()
            .enumerate()
            .filter(|(_, &n)| n != 1)
            .collect::<Vec<_>>()
    );
    // `calls` counts sends once written, plus the one call.
    assert_eq!(client.stats().calls, N as u64 + 1);
    assert_eq!(client.pending_requests(), 0);
}

/// Sends beyond `max_pending_requests`: a sender that finds every slot taken by queued sends
/// runs a reactor turn to send them (when nobody else drives) before it reports
/// `Overflow`; retried on `Overflow`, every send arrives exactly once.
#[test]
fn sends_beyond_the_pending_limit_arrive_once() {
    run(|| {
        const N: u64 = 5000;
        let total = Arc::new(AtomicU64::new(0));
        let total2 = total.clone();
        let server = Server::builder()
            .handler(move |_: &RequestCtx, _req: &[u8], _resp: &mut Vec<u8>| {
                total2.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .bind("127.0.0.1:0")
            .unwrap();
        let client = Client::builder(server.local_addr())
            .max_pending_requests(4)
            .connect()
            .unwrap();
        let mut overflows = 0u64;
        for i in 0..N {
            loop {
                match client.send(&i.to_le_bytes()) {
                    Ok(()) => break,
                    Err(Error::Overflow) => {
                        overflows += 1;
                        std::thread::yield_now();
                    }
                    Err(e) => panic!("send {i}: {e}"),
                }
            }
        }
        wait_until(WAIT, "every send to reach the handler", || {
            total.load(Ordering::SeqCst) >= N
        });
        assert_eq!(client.stats().errors.overflow, overflows);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(total.load(Ordering::SeqCst), N);
    });
}

#[test]
fn sends_arrive_exactly_once_tcp() {
    run(|| sends_arrive_once(Net::Tcp));
}

#[test]
fn sends_arrive_exactly_once_unix() {
    run(|| sends_arrive_once(Net::Unix));
}

// ----- batch ---------------------------------------------------------------------------------

fn batches(net: Net) {
    let (server, _path) = serve(net, echo_builder());
    let client = Client::builder(server.local_addr())
        .max_frame_len(1024)
        .connect()
        .unwrap();

    // Results in the order of `add`.
    let mut batch = client.batch();
    for i in 0..50 {
        batch.add(format!("item-{i}").as_bytes()).unwrap();
    }
    assert_eq!(batch.len(), 50);
    let results = batch.call();
    assert_eq!(results.len(), 50);
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(&*r.unwrap(), format!("item-{i}").as_bytes());
    }

    // An empty batch.
    let batch = client.batch();
    assert!(batch.is_empty());
    assert!(batch.call().is_empty());

    // An oversize item fails its own `add` only.
    let mut batch = client.batch().timeout(Duration::from_secs(5));
    batch.add(b"before").unwrap();
    match batch.add(&[7u8; 1025]) {
        Err(Error::TooLarge { len, max }) => assert_eq!((len, max), (1025, 1024)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    batch.add(&[8u8; 1024]).unwrap();
    assert_eq!(batch.len(), 2);
    let results = batch.call();
    assert_eq!(results.len(), 2);
    assert_eq!(&results[0].as_ref().unwrap()[..], b"before");
    assert_eq!(&results[1].as_ref().unwrap()[..], &[8u8; 1024][..]);
    drop(results);

    // A batch dropped without being called gives its slots back.
    let mut batch = client.batch();
    batch.add(b"never sent").unwrap();
    assert_eq!(client.pending_requests(), 1);
    drop(batch);
    assert_eq!(client.pending_requests(), 0);

    let s = client.stats();
    assert_eq!(s.calls, 52);
    assert_eq!(s.errors.too_large, 1);
}

#[test]
fn batch_tcp() {
    run(|| batches(Net::Tcp));
}

#[test]
fn batch_unix() {
    run(|| batches(Net::Unix));
}

// ----- payload sizes -------------------------------------------------------------------------

fn payload_sizes(net: Net) {
    let (_server, client, _path) = echo_pair(net);
    for (seed, len) in [0usize, 1, 261, 1 << 20].into_iter().enumerate() {
        let req = support::random_bytes(seed as u64, len);
        let resp = client.call(&req).unwrap();
        assert_eq!(resp.len(), len);
        assert!(*resp == req[..], "payload of {len} bytes came back changed");
    }
    // And several large ones in flight at once.
    let reqs: Vec<Vec<u8>> = (0..4)
        .map(|i| support::random_bytes(100 + i, 1 << 20))
        .collect();
    let pending: Vec<_> = reqs.iter().map(|r| client.call_async(r).unwrap()).collect();
    for (req, p) in reqs.iter().zip(pending) {
        assert!(*p.wait().unwrap() == req[..]);
    }
    assert_eq!(client.stats().calls, 8);
}

#[test]
fn payload_sizes_tcp() {
    run(|| payload_sizes(Net::Tcp));
}

#[test]
fn payload_sizes_unix() {
    run(|| payload_sizes(Net::Unix));
}

// ----- concurrency ---------------------------------------------------------------------------

fn many_threads(net: Net) {
    const THREADS: usize = 8;
    const CALLS: usize = 500;
    let (_server, client, _path) = echo_pair(net);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || {
                for i in 0..CALLS {
                    // Distinct and of varying length, so a cross-delivery cannot go unseen.
                    let mut req = format!("t{t}-c{i}-").into_bytes();
                    req.resize(req.len() + i % 40, b'a' + (i % 26) as u8);
                    let resp = client.call(&req).unwrap();
                    assert!(*resp == req[..], "thread {t} call {i} got {:?}", &*resp);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = client.stats();
    assert_eq!(s.calls, (THREADS * CALLS) as u64);
    assert_eq!(s.errors, Default::default());
    assert_eq!(client.pending_requests(), 0);
}

#[test]
fn eight_threads_no_cross_delivery_tcp() {
    run(|| many_threads(Net::Tcp));
}

#[test]
fn eight_threads_no_cross_delivery_unix() {
    run(|| many_threads(Net::Unix));
}

/// Many calls in flight from each thread at once, through `call_async`.
#[test]
fn async_windows_from_threads_match_their_requests() {
    run(|| {
        let (_server, client, _path) = echo_pair(Net::Tcp);
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let client = client.clone();
                std::thread::spawn(move || {
                    for round in 0..10u64 {
                        let reqs: Vec<Vec<u8>> = (0..100u64)
                            .map(|i| {
                                support::random_bytes(t << 32 | round << 16 | i, 8 + i as usize)
                            })
                            .collect();
                        let pending: Vec<_> =
                            reqs.iter().map(|r| client.call_async(r).unwrap()).collect();
                        for (req, p) in reqs.iter().zip(pending) {
                            assert!(*p.wait().unwrap() == req[..]);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(client.stats().calls, 4000);
        assert_eq!(client.pending_requests(), 0);
    });
}

// ----- connections ---------------------------------------------------------------------------

#[test]
fn conns_spread_calls_over_connections() {
    run(|| {
        let ids = Arc::new(Mutex::new(HashSet::new()));
        let ids2 = ids.clone();
        let server = Server::builder()
            .workers(2)
            .handler(move |ctx: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
                ids2.lock().unwrap().insert(ctx.conn_id());
                resp.extend_from_slice(req);
                Ok(())
            })
            .bind("127.0.0.1:0")
            .unwrap();
        let client = Client::builder(server.local_addr())
            .conns(3)
            .connect()
            .unwrap();
        // connect() returns once the first connection is up; wait for the other two.
        wait_until(WAIT, "three open client connections", || {
            client.stats().open_connections == 3
        });
        for i in 0..30 {
            let req = format!("spread-{i}");
            assert_eq!(&*client.call(req.as_bytes()).unwrap(), req.as_bytes());
        }
        let pending: Vec<_> = (0..300)
            .map(|i| client.call_async(format!("w{i}").as_bytes()).unwrap())
            .collect();
        for (i, p) in pending.into_iter().enumerate() {
            assert_eq!(&*p.wait().unwrap(), format!("w{i}").as_bytes());
        }
        assert_eq!(ids.lock().unwrap().len(), 3, "server saw conn ids {ids:?}");
        let s = client.stats();
        assert_eq!((s.calls, s.dials), (330, 3));
        let ss = server.stats();
        assert_eq!((ss.accepts, ss.open_connections, ss.calls), (3, 3, 330));
    });
}

// ----- compression ---------------------------------------------------------------------------

fn compression_round_trip(client_c: Compression, server_c: Compression) {
    let server = echo_builder()
        .compression(server_c)
        .bind("127.0.0.1:0")
        .unwrap();
    let client = Client::builder(server.local_addr())
        .compression(client_c)
        .connect()
        .unwrap();
    let big = support::compressible_bytes(512 << 10);
    let resp = client.call(&big).unwrap();
    assert!(
        *resp == big[..],
        "{client_c}/{server_c}: compressible payload changed"
    );
    drop(resp);
    // Compression actually happened in the direction that asked for it. What the server
    // answered is measured where it arrived: the client counts bytes before it decodes them,
    // so its count is complete when the call returns, while the server's thread may not yet
    // have added its last write. The server's own count must catch up to the same figure.
    let sent = client.stats().bytes_written;
    let answered = client.stats().bytes_read;
    wait_until(WAIT, "the server to count its writes", || {
        server.stats().bytes_written == answered
    });
    if client_c == Compression::None {
        assert!(sent > big.len() as u64, "{client_c}: sent {sent}");
    } else {
        assert!(sent < big.len() as u64 / 4, "{client_c}: sent {sent}");
    }
    if server_c == Compression::None {
        assert!(
            answered > big.len() as u64,
            "{server_c}: answered {answered}"
        );
    } else {
        assert!(
            answered < big.len() as u64 / 4,
            "{server_c}: answered {answered}"
        );
    }

    for (seed, len) in [(1u64, 0usize), (2, 1), (3, 261), (4, 300 << 10)] {
        let random = support::random_bytes(seed, len);
        assert!(*client.call(&random).unwrap() == random[..]);
    }
    // Many small calls in one stream, in flight together.
    let pending: Vec<_> = (0..500)
        .map(|i| client.call_async(format!("small-{i}").as_bytes()).unwrap())
        .collect();
    for (i, p) in pending.into_iter().enumerate() {
        assert_eq!(&*p.wait().unwrap(), format!("small-{i}").as_bytes());
    }
    let s = client.stats();
    assert_eq!(s.calls, 505);
    assert_eq!(s.errors, Default::default());
}

#[test]
#[cfg(feature = "flate")]
fn compression_flate_both_sides() {
    run(|| compression_round_trip(Compression::Flate, Compression::Flate));
}

#[test]
#[cfg(feature = "snappy")]
fn compression_snappy_both_sides() {
    run(|| compression_round_trip(Compression::Snappy, Compression::Snappy));
}

#[test]
#[cfg(all(feature = "flate", feature = "snappy"))]
fn compression_client_flate_server_snappy() {
    run(|| compression_round_trip(Compression::Flate, Compression::Snappy));
}

#[test]
#[cfg(all(feature = "flate", feature = "snappy"))]
fn compression_client_snappy_server_flate() {
    run(|| compression_round_trip(Compression::Snappy, Compression::Flate));
}

#[test]
fn compression_one_side_only() {
    run(|| {
        if Compression::Flate.is_available() {
            compression_round_trip(Compression::Flate, Compression::None);
        }
        if Compression::Snappy.is_available() {
            compression_round_trip(Compression::None, Compression::Snappy);
        }
    });
}

// ----- batching delay and statistics ---------------------------------------------------------

#[test]
fn max_batch_delay_completes_every_call() {
    run(|| {
        let server = echo_builder()
            .max_batch_delay(Duration::from_millis(2))
            .bind("127.0.0.1:0")
            .unwrap();
        let client = Client::builder(server.local_addr())
            .max_batch_delay(Duration::from_millis(2))
            .connect()
            .unwrap();
        for i in 0..20 {
            let req = format!("one-{i}");
            assert_eq!(&*client.call(req.as_bytes()).unwrap(), req.as_bytes());
        }
        let pending: Vec<_> = (0..500)
            .map(|i| client.call_async(format!("many-{i}").as_bytes()).unwrap())
            .collect();
        for (i, p) in pending.into_iter().enumerate() {
            assert_eq!(&*p.wait().unwrap(), format!("many-{i}").as_bytes());
        }
        client.send(b"last").unwrap();
        wait_until(WAIT, "the send to be written", || {
            client.stats().calls == 521
        });
        // The last sends may still be on their way to a connection.
        wait_until(WAIT, "every slot free", || client.pending_requests() == 0);
    });
}

#[test]
fn calls_in_flight_share_writes() {
    run(|| {
        let (_server, client, _path) = echo_pair(Net::Tcp);
        let pending: Vec<_> = (0..1000u32)
            .map(|i| client.call_async(&i.to_le_bytes()).unwrap())
            .collect();
        for (i, p) in (0..1000u32).zip(pending) {
            assert_eq!(&*p.wait().unwrap(), &i.to_le_bytes());
        }
        let s = client.stats();
        let per_write = s.frames_written as f64 / s.write_calls.max(1) as f64;
        println!(
            "1000 calls in flight: {} frames in {} writes ({per_write:.1} per write, {} flushes)",
            s.frames_written, s.write_calls, s.flushes
        );
        assert_eq!(s.frames_written, 1000);
        assert_eq!(s.calls, 1000);
        assert!(per_write > 10.0, "only {per_write:.1} frames per write");
        assert_eq!(client.pending_requests(), 0);
    });
}

/// Wake-ups and turns are counted. A blocking call made while nobody drives the client's
/// reactor drives it itself (no hand-off to the reactor thread, no wake-up); the first one may
/// find the reactor thread polling and hand over to it as before (up to two wake-ups).
#[test]
fn wake_ups_and_turns_are_counted() {
    run(|| {
        let server = echo_builder().bind("127.0.0.1:0").unwrap();
        let client = Client::builder(server.local_addr()).connect().unwrap();
        let before = client.stats();
        for i in 0..100u32 {
            assert_eq!(&*client.call(&i.to_le_bytes()).unwrap(), &i.to_le_bytes());
        }
        let during = client.stats().since(&before);
        assert_eq!(during.calls, 100);
        assert!(during.turns > 0);
        assert!(
            during.wakeups <= 40,
            "{} wake-ups for 100 blocking calls from one thread",
            during.wakeups
        );
        assert!(server.stats().turns > 0);
    });
}

/// Callers of one client take turns driving its reactor, hand it to each other and to its
/// thread: a mix of blocking calls, async windows, sends and timeouts from several threads all
/// complete, each with its own answer.
#[test]
fn callers_driving_one_client_in_turns_all_complete() {
    run(|| {
        let server = echo_builder().bind("127.0.0.1:0").unwrap();
        let client = Client::builder(server.local_addr()).connect().unwrap();
        std::thread::scope(|s| {
            for t in 0..6u32 {
                let client = &client;
                s.spawn(move || {
                    for i in 0..300u32 {
                        let req = [t.to_le_bytes(), i.to_le_bytes()].concat();
                        match (t + i) % 4 {
                            0 => assert_eq!(&*client.call(&req).unwrap(), &req[..]),
                            1 => {
                                let p = client.call_async(&req).unwrap();
                                let q = client.call_async(&req).unwrap();
                                assert_eq!(&*q.wait().unwrap(), &req[..]);
                                assert_eq!(&*p.wait().unwrap(), &req[..]);
                            }
                            2 => client.send(&req).unwrap(),
                            _ => {
                                let r = client.call_timeout(&req, WAIT).unwrap();
                                assert_eq!(&*r, &req[..]);
                            }
                        }
                    }
                });
            }
        });
        // The last sends may still be on their way to a connection.
        wait_until(WAIT, "every slot free", || client.pending_requests() == 0);
    });
}

/// Per calling thread, sends (small ones carried in their submission, large ones in a buffer)
/// and calls reach the wire in the order they were made: a pipelined server sees them so.
#[test]
fn sends_and_calls_keep_their_order() {
    run(|| {
        let seen = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
        let log = seen.clone();
        let server = Server::builder()
            .pipeline(true)
            .handler(move |_: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
                log.lock().unwrap().push(req.to_vec());
                resp.extend_from_slice(req);
                Ok(())
            })
            .bind("127.0.0.1:0")
            .unwrap();
        let client = Client::builder(server.local_addr())
            .max_pending_requests(64)
            .connect()
            .unwrap();
        const N: u32 = 3000;
        let mut made = Vec::new();
        let mut window = std::collections::VecDeque::new();
        for i in 0..N {
            let mut req = i.to_le_bytes().to_vec();
            if i % 3 == 1 {
                req.resize(100, b'x'); // above what a submission carries inline
            }
            loop {
                let sent = match i % 3 {
                    2 => client
                        .call_async(&req)
                        .map(|p| window.push_back((p, req.clone()))),
                    _ => client.send(&req),
                };
                match sent {
                    Ok(()) => break,
                    Err(Error::Overflow) => {
                        if let Some((p, want)) = window.pop_front() {
                            assert_eq!(&*p.wait().unwrap(), &want[..]);
                        } else {
                            std::thread::yield_now();
                        }
                    }
                    Err(e) => panic!("request {i}: {e}"),
                }
            }
            made.push(req);
            if window.len() > 20 {
                let (p, want) = window.pop_front().unwrap();
                assert_eq!(&*p.wait().unwrap(), &want[..]);
            }
        }
        for (p, want) in window {
            assert_eq!(&*p.wait().unwrap(), &want[..]);
        }
        wait_until(WAIT, "every request to reach the handler", || {
            seen.lock().unwrap().len() == N as usize
        });
        assert!(*seen.lock().unwrap() == made, "requests out of order");
        assert_eq!(client.stats().calls, u64::from(N));
    });
}
