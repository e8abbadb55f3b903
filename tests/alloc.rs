//! The hot path allocates nothing per call once warm: `call_async` + `wait` with the raw-bytes
//! API (and with the fastrpc profile), and `send`, client and server in this process, counted
//! by a global allocator that tallies every allocation made by any thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use batchrpc::{Client, Compression, RequestCtx, Server};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const BODY: [u8; 261] = [b'x'; 261];

/// The counter is process-wide: the tests take turns, so that one does not count the other's
/// allocations.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `rounds` rounds of `window` calls in flight; returns allocations per call.
fn allocs_per_call(client: &Client, window: usize, rounds: usize) -> f64 {
    let mut pending = Vec::with_capacity(window);
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..rounds {
        for _ in 0..window {
            pending.push(client.call_async(b"foobar").expect("call_async"));
        }
        for p in pending.drain(..) {
            let resp = p.wait().expect("response");
            assert_eq!(resp.len(), BODY.len());
        }
    }
    (ALLOCS.load(Ordering::Relaxed) - before) as f64 / (window * rounds) as f64
}

fn check(compression: Compression, workers: usize) {
    let server = Server::builder()
        .workers(workers)
        .compression(compression)
        .handler(|_: &RequestCtx, _req: &[u8], resp: &mut Vec<u8>| {
            resp.extend_from_slice(&BODY);
            Ok(())
        })
        .bind("127.0.0.1:0")
        .expect("bind");
    let client = Client::builder(server.local_addr())
        .compression(compression)
        .connect()
        .expect("connect");
    for window in [1, 100] {
        // Warm up: buffers, slots, pools and queues reach their working sizes.
        allocs_per_call(&client, window, 1000 / window + 20);
        // Window 1 is a round trip per call: fewer of them keep the test quick.
        let calls = if window == 1 { 2_000 } else { 20_000 };
        let per_call = allocs_per_call(&client, window, calls / window);
        println!(
            "{compression} workers={workers} window={window}: {per_call:.4} allocations per call"
        );
        // A small amortised constant is allowed (a buffer regrowing now and then).
        assert!(
            per_call < 0.01,
            "{per_call} allocations per call ({compression}, window {window})"
        );
    }
}

#[test]
fn steady_state_calls_do_not_allocate() {
    let _turn = one_at_a_time();
    // The counter sees allocations (a positive control, so the test can fail).
    let before = ALLOCS.load(Ordering::Relaxed);
    let v: Vec<u8> = std::hint::black_box(Vec::with_capacity(10));
    assert!(ALLOCS.load(Ordering::Relaxed) > before);
    drop(v);

    check(Compression::None, 2);
    check(Compression::None, 0);
    if Compression::Snappy.is_available() {
        check(Compression::Snappy, 2);
    }
    if Compression::Flate.is_available() {
        check(Compression::Flate, 2);
    }
}

/// Sends `n` fire-and-forget requests (retrying on `Overflow`) and waits until the server has
/// handled them all; returns allocations per send.
fn allocs_per_send(client: &Client, handled: &AtomicU64, n: u64) -> f64 {
    let target = handled.load(Ordering::SeqCst) + n;
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..n {
        loop {
            match client.send(b"foobar") {
                Ok(()) => break,
                Err(batchrpc::Error::Overflow) => std::thread::yield_now(),
                Err(e) => panic!("send: {e}"),
            }
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while handled.load(Ordering::SeqCst) < target {
        assert!(std::time::Instant::now() < deadline, "sends did not arrive");
        std::thread::yield_now();
    }
    (ALLOCS.load(Ordering::Relaxed) - before) as f64 / n as f64
}

#[test]
fn steady_state_sends_do_not_allocate() {
    let _turn = one_at_a_time();
    for workers in [2, 0] {
        let handled = std::sync::Arc::new(AtomicU64::new(0));
        let seen = handled.clone();
        let server = Server::builder()
            .workers(workers)
            .pipeline(true)
            .handler(move |_: &RequestCtx, _req: &[u8], _resp: &mut Vec<u8>| {
                seen.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .bind("127.0.0.1:0")
            .expect("bind");
        let client = Client::builder(server.local_addr())
            .max_pending_requests(100)
            .connect()
            .expect("connect");
        // Warm up: buffers, slots, pools and queues reach their working sizes.
        allocs_per_send(&client, &handled, 5_000);
        let per_send = allocs_per_send(&client, &handled, 50_000);
        println!("workers={workers}: {per_send:.4} allocations per send");
        assert!(
            per_send < 0.01,
            "{per_send} allocations per send (workers {workers})"
        );
    }
}

/// The fastrpc profile's hot path allocates nothing per call either: the client's per
/// connection id map and the server's `tlv` handler wrapper reuse what they have.
#[test]
fn steady_state_fastrpc_calls_do_not_allocate() {
    use batchrpc::fastrpc;
    let _turn = one_at_a_time();
    let server = fastrpc::Server::builder()
        .workers(2)
        .handler(
            |_: &RequestCtx, _name: &[u8], _value: &[u8], resp: &mut Vec<u8>| {
                resp.extend_from_slice(&BODY);
                Ok(())
            },
        )
        .bind("127.0.0.1:0")
        .expect("bind");
    let client = fastrpc::Client::builder(server.local_addr())
        .connect()
        .expect("connect");
    let run = |window: usize, rounds: usize| {
        let mut pending = Vec::with_capacity(window);
        let before = ALLOCS.load(Ordering::Relaxed);
        for _ in 0..rounds {
            for _ in 0..window {
                pending.push(client.call_async(b"foo", b"bar").expect("call_async"));
            }
            for p in pending.drain(..) {
                assert_eq!(p.wait().expect("response").len(), BODY.len());
            }
        }
        (ALLOCS.load(Ordering::Relaxed) - before) as f64 / (window * rounds) as f64
    };
    for window in [1, 100] {
        run(window, 1000 / window + 20);
        let calls = if window == 1 { 2_000 } else { 20_000 };
        let per_call = run(window, calls / window);
        println!("fastrpc window={window}: {per_call:.4} allocations per call");
        assert!(per_call < 0.01, "{per_call} allocations per fastrpc call");
    }
}
