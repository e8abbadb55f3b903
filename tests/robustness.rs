//! batchrpc's promises on its worst day: faults on the wire (through the fault proxy of
//! `tests/support/proxy.rs`), hostile peers, floods, overload, shutdown under load and a client
//! dropped with calls in flight. Every test is bounded in time and exact in outcome: each call
//! completes once, with its own answer or an error of an expected kind.
//!
//! The answers are the requests reversed, and every request is unique, so an answer delivered
//! to the wrong call is caught.

mod support;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[cfg(any(feature = "flate", feature = "snappy"))]
use batchrpc::wire::compress::Encoder;
use batchrpc::wire::frame::{self, FrameKind};
use batchrpc::wire::handshake::{Hello, HELLO_LEN};
use batchrpc::{Client, Compression, Error, RequestCtx, Server, ServerBuilder};
use support::proxy::{Dir, Fault, Proxy, XorShift};
use support::{run, wait_until, Gate, OpenOnDrop};

const WAIT: Duration = Duration::from_secs(10);

// ----- helpers -------------------------------------------------------------------------------

/// Tests that measure the process's memory, or use a lot of it, run one at a time.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// The answer to every request: the request reversed. A request starting with `fail` gets
/// a handler error naming it instead.
fn reverse(_: &RequestCtx, req: &[u8], resp: &mut Vec<u8>) -> Result<(), batchrpc::HandlerError> {
    if req.starts_with(b"fail") {
        return Err(format!("failed {}", req.len()).into());
    }
    resp.extend(req.iter().rev());
    Ok(())
}

fn reversed(req: &[u8]) -> Vec<u8> {
    req.iter().rev().copied().collect()
}

fn reverse_builder() -> ServerBuilder {
    Server::builder().workers(2).handler(reverse)
}

fn tcp(server: &Server) -> SocketAddr {
    server.local_addr().as_tcp().expect("a TCP server")
}

/// A request unique to (`who`, `seq`), `len` bytes after its 8-byte tag.
fn tagged(who: u32, seq: u32, len: usize, rng: &mut XorShift) -> Vec<u8> {
    let mut req = Vec::with_capacity(8 + len);
    req.extend_from_slice(&who.to_le_bytes());
    req.extend_from_slice(&seq.to_le_bytes());
    let at = req.len();
    req.resize(at + len, 0);
    rng.fill(&mut req[at..]);
    req
}

/// A field of /proc/self/status in KiB (`VmRSS`, `VmHWM`); 0 without /proc.
fn proc_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Threads of this process whose name starts with `prefix` (names are cut at 15 bytes).
fn threads_named(prefix: &str) -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end().starts_with(prefix))
        .count()
}

/// Samples the process's resident memory every millisecond; `finish` returns the growth of
/// the peak over the level at `start`, in bytes.
struct RssPeak {
    base: u64,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RssPeak {
    fn start() -> RssPeak {
        let base = proc_kib("VmRSS");
        let peak = Arc::new(AtomicU64::new(base));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(proc_kib("VmRSS"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        RssPeak {
            base,
            peak,
            stop,
            thread: Some(thread),
        }
    }

    fn growth(&self) -> u64 {
        self.peak.load(Ordering::Relaxed).saturating_sub(self.base) * 1024
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.growth()
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A well-behaved client calling the server in a loop while a test attacks it: it must keep
/// full service (every call answered correctly, none failing).
struct Bystander {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(u64, Vec<String>, Duration)>,
}

impl Bystander {
    fn start(addr: SocketAddr) -> Bystander {
        let client = Client::builder(addr)
            .request_timeout(Duration::from_secs(5))
            .connect()
            .expect("bystander connects");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut rng = XorShift::new(0xb7);
            let (mut ok, mut failures, mut slowest) = (0u64, Vec::new(), Duration::ZERO);
            let mut seq = 0;
            while !s.load(Ordering::Relaxed) || ok == 0 {
                seq += 1;
                let len = rng.below(2000) as usize;
                let req = tagged(0xb7, seq, len, &mut rng);
                let started = Instant::now();
                match client.call(&req) {
                    Ok(resp) if *resp == reversed(&req)[..] => ok += 1,
                    Ok(resp) => {
                        failures.push(format!("call {seq}: wrong answer of {}", resp.len()))
                    }
                    Err(e) => failures.push(format!("call {seq}: {e}")),
                }
                slowest = slowest.max(started.elapsed());
                std::thread::sleep(Duration::from_millis(2));
            }
            (ok, failures, slowest)
        });
        Bystander { stop, thread }
    }

    /// Stops the bystander and asserts that it had full service.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let (ok, failures, slowest) = self.thread.join().expect("bystander thread");
        println!("bystander: {ok} calls, slowest {slowest:?}");
        assert!(
            failures.is_empty(),
            "the bystander lost service: {failures:?}"
        );
        assert!(ok > 0);
        ok
    }
}

/// Reads until the peer closes (end of stream or reset); returns what came and when the
/// close was seen. Panics if the connection is still open after `limit`.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Instant) {
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 64 << 10];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, Instant::now()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                assert!(
                    Instant::now() < deadline,
                    "the server kept the connection open for {limit:?} (received {} B)",
                    got.len()
                );
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return (got, Instant::now()), // reset: closed too
        }
    }
}

/// Writes what it can of `bytes` (the server may close in the middle); returns how much.
fn write_what_you_can(s: &mut TcpStream, bytes: &[u8]) -> usize {
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut off = 0;
    while off < bytes.len() {
        match s.write(&bytes[off..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => off += n,
        }
    }
    off
}

fn hello(compression: Compression) -> [u8; HELLO_LEN] {
    Hello::new(compression, false).encode()
}

fn header(id: u32, kind: FrameKind, len: u32) -> [u8; frame::HEADER_LEN] {
    let mut h = [0u8; frame::HEADER_LEN];
    frame::write_header(&mut h, id, kind, len);
    h
}

/// Counts the outcomes of calls, checking every answer.
#[derive(Default, Debug, Clone)]
struct Tally {
    made: u64,
    ok: u64,
    failed: HashMap<&'static str, u64>,
}

impl Tally {
    fn settle(&mut self, req: &[u8], outcome: Result<batchrpc::Response, Error>) {
        match outcome {
            Ok(resp) => {
                assert!(
                    *resp == reversed(req)[..],
                    "an answer of {} B was delivered to the wrong call ({} B request)",
                    resp.len(),
                    req.len()
                );
                self.ok += 1;
            }
            Err(e) => *self.failed.entry(e.kind()).or_default() += 1,
        }
    }

    fn merge(&mut self, other: &Tally) {
        self.made += other.made;
        self.ok += other.ok;
        for (k, n) in &other.failed {
            *self.failed.entry(k).or_default() += n;
        }
    }

    fn failed(&self) -> u64 {
        self.failed.values().sum()
    }

    fn only_failed_with(&self, kinds: &[&str]) -> bool {
        self.failed.keys().all(|k| kinds.contains(k))
    }
}

/// Caller threads keeping windows of `call_async` calls in flight on `client` until `stop`.
fn load(
    client: &Client,
    threads: u32,
    window: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<JoinHandle<Tally>> {
    (0..threads)
        .map(|t| {
            let (client, stop) = (client.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rng = XorShift::new(u64::from(t) + 100);
                let mut tally = Tally::default();
                let mut seq = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let mut pending = Vec::with_capacity(window);
                    for _ in 0..window {
                        seq += 1;
                        let len = if rng.chance(1, 20) {
                            rng.range(2000, 40_000)
                        } else {
                            rng.below(1500)
                        } as usize;
                        let req = tagged(t, seq, len, &mut rng);
                        tally.made += 1;
                        match client.call_async(&req) {
                            Ok(p) => pending.push((req, p)),
                            Err(e) => tally.settle(&req, Err(e)),
                        }
                    }
                    for (req, p) in pending {
                        tally.settle(&req, p.wait());
                    }
                }
                tally
            })
        })
        .collect()
}

fn join_all(threads: Vec<JoinHandle<Tally>>) -> Tally {
    let mut total = Tally::default();
    for t in threads {
        total.merge(&t.join().expect("caller thread"));
    }
    total
}

// ----- faults on the wire --------------------------------------------------------------------

/// The server goes away again and again under load, in four ways: graceful restart, killed
/// (the proxy drops both sides at once), dying in the middle of a batch (the proxy forwards part
/// of a chunk of answers, then closes), and a reset followed by an outage. Every call returns
/// once, with its own answer or `ConnectionLost`; none hangs; the client redials with backoff
/// (a bounded number of dials during an outage) and serves again after each restart.
#[test]
fn server_restarted_repeatedly_under_load_every_call_completes_once() {
    run(|| {
        let server = reverse_builder().bind("127.0.0.1:0").unwrap();
        let proxy = Proxy::start(tcp(&server), 0x5eed_0001);
        let mut server = Some(server);
        let client = Client::builder(proxy.addr())
            .conns(2)
            .request_timeout(Duration::from_secs(8))
            .reconnect_backoff(Duration::from_millis(5), Duration::from_millis(50))
            .connect()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let callers = load(&client, 3, 8, &stop);
        let progress = |since: u64, what: &str| {
            wait_until(WAIT, what, || client.stats().calls >= since + 30);
        };
        let mut answered_by_servers = 0;
        for round in 0..8 {
            progress(client.stats().calls, "calls to flow before the fault");
            match round % 4 {
                0 => {
                    // Graceful: what the server read is answered, then it closes.
                    let old = server.take().unwrap();
                    old.shutdown();
                    answered_by_servers += old.stats().calls;
                    let new = reverse_builder().bind("127.0.0.1:0").unwrap();
                    proxy.set_upstream(tcp(&new));
                    server = Some(new);
                }
                1 => {
                    proxy.kill_server_side();
                }
                2 => {
                    let cuts = proxy.stats().cuts;
                    proxy.cut_mid_batch();
                    wait_until(WAIT, "a batch to be cut", || proxy.stats().cuts > cuts);
                }
                _ => {
                    // An outage: nothing listens for 300 ms; the client redials with backoff.
                    let old = server.take().unwrap();
                    proxy.reset_all();
                    old.shutdown();
                    answered_by_servers += old.stats().calls;
                    let refused_before = proxy.stats().upstream_failures;
                    std::thread::sleep(Duration::from_millis(300));
                    let refused = proxy.stats().upstream_failures - refused_before;
                    // 2 connections, backoff 5 ms doubling to 50 ms (±25%): about 10 dials
                    // each in 300 ms; without backoff it would be thousands.
                    assert!(refused <= 40, "{refused} dials in a 300 ms outage");
                    let new = reverse_builder().bind("127.0.0.1:0").unwrap();
                    proxy.set_upstream(tcp(&new));
                    server = Some(new);
                }
            }
        }
        progress(client.stats().calls, "calls to flow after the last fault");
        stop.store(true, Ordering::SeqCst);
        let total = join_all(callers);
        let last = server.take().unwrap();
        let s = client.stats();
        println!(
            "restarts: {} made, {} ok, failed {:?}; dials {}; proxy {:?}",
            total.made,
            total.ok,
            total.failed,
            s.dials,
            proxy.stats()
        );
        assert_eq!(
            total.ok + total.failed(),
            total.made,
            "a call did not return"
        );
        assert!(
            total.only_failed_with(&["connection_lost"]),
            "{:?}",
            total.failed
        );
        assert!(
            total.failed() > 0,
            "the faults cost no call: did they happen?"
        );
        // The client's own books agree: each call counted once.
        assert_eq!(s.calls, total.ok);
        assert_eq!(s.errors.failed_calls(), total.failed());
        assert_eq!(client.pending_requests(), 0);
        assert!(s.dials >= 8, "the client redialed {} times", s.dials);
        // Every answer came from a server, and no request ran twice (nothing is resent):
        // answers received <= requests handled <= calls made.
        answered_by_servers += {
            drop(client);
            last.shutdown();
            last.stats().calls
        };
        assert!(total.ok <= answered_by_servers && answered_by_servers <= total.made);
    });
}

/// A deterministic workload: single calls, batches and windows of async calls, with handler
/// errors mixed in; `big` adds a few requests of 4 to 20 KB to the short ones. Returns every
/// outcome in order.
fn workload(client: &Client, seed: u64, big: bool) -> Vec<Result<Vec<u8>, String>> {
    let mut rng = XorShift::new(seed);
    let mut out = Vec::new();
    let mut seq = 0u32;
    let mut next = |rng: &mut XorShift| {
        seq += 1;
        let len = if !big {
            rng.below(100)
        } else if rng.chance(1, 25) {
            rng.range(4000, 20_000)
        } else {
            rng.below(600)
        } as usize;
        let mut req = tagged(7, seq, len, rng);
        if rng.chance(1, 10) {
            req[..4].copy_from_slice(b"fail");
        }
        req
    };
    let result = |r: Result<batchrpc::Response, Error>| match r {
        Ok(resp) => Ok(resp.to_vec()),
        Err(e) => Err(e.to_string()),
    };
    for _ in 0..30 {
        match rng.below(3) {
            0 => {
                let req = next(&mut rng);
                out.push(result(client.call(&req)));
            }
            1 => {
                let mut batch = client.batch();
                for _ in 0..rng.range(1, 12) {
                    batch.add(&next(&mut rng)).unwrap();
                }
                out.extend(batch.call().into_iter().map(result));
            }
            _ => {
                let pending: Vec<_> = (0..rng.range(1, 10))
                    .map(|_| client.call_async(&next(&mut rng)).unwrap())
                    .collect();
                out.extend(pending.into_iter().map(|p| result(p.wait())));
            }
        }
    }
    out
}

/// Every write split at random byte boundaries (both directions, each piece its own write):
/// the results are those of the clean run, in every compression pair, on one connection that
/// never breaks.
#[test]
fn random_splits_of_every_write_give_the_clean_runs_results() {
    run(|| {
        let pairs = [
            (Compression::None, Compression::None, 1),
            (Compression::None, Compression::None, 13),
            (Compression::Flate, Compression::Snappy, 7),
            (Compression::Snappy, Compression::Flate, 300),
        ];
        let available =
            |&(c, s, _): &(Compression, Compression, _)| c.is_available() && s.is_available();
        for (n, (client_c, server_c, max_chunk)) in pairs.into_iter().filter(available).enumerate()
        {
            let server = reverse_builder()
                .compression(server_c)
                .bind("127.0.0.1:0")
                .unwrap();
            let seed = 0x5b1 + n as u64;
            let clean = Client::builder(server.local_addr())
                .compression(client_c)
                .connect()
                .unwrap();
            let expected = workload(&clean, seed, max_chunk > 1);
            let proxy = Proxy::start(tcp(&server), seed);
            proxy.set_fault(Fault::Split { max_chunk });
            let split = Client::builder(proxy.addr())
                .compression(client_c)
                .request_timeout(Duration::from_secs(20))
                .connect()
                .unwrap();
            let got = workload(&split, seed, max_chunk > 1);
            let ps = proxy.stats();
            let bytes = ps.bytes_to_server + ps.bytes_to_client;
            println!(
                "{client_c}/{server_c} in pieces of at most {max_chunk}: {} calls, {bytes} B in {} writes",
                got.len(),
                ps.writes
            );
            assert_eq!(got.len(), expected.len());
            for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                assert!(
                    g == e,
                    "{client_c}/{server_c}: outcome {i} differs: {g:?} vs {e:?}"
                );
            }
            assert!(
                expected.iter().any(Result::is_err),
                "handler errors are part of it"
            );
            assert!(
                ps.writes as usize >= bytes as usize / max_chunk,
                "the proxy did not split"
            );
            let s = split.stats();
            assert_eq!(
                (s.dials, s.errors.connection_lost, s.errors.protocol),
                (1, 0, 0)
            );
            assert_eq!(server.stats().errors.protocol, 0);
        }
    });
}

/// Delays on every chunk and stalls of the whole stream slow calls down and lose nothing.
#[test]
fn delays_and_stalls_slow_calls_down_and_lose_nothing() {
    run(|| {
        let server = reverse_builder().bind("127.0.0.1:0").unwrap();
        let proxy = Proxy::start(tcp(&server), 0xde1a);
        let client = Client::builder(proxy.addr())
            .request_timeout(Duration::from_secs(10))
            .connect()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let callers = load(&client, 2, 6, &stop);
        let calls = || client.stats().calls;
        wait_until(WAIT, "calls to flow", || calls() >= 50);
        proxy.set_fault(Fault::Delay(Duration::from_millis(15)));
        let before = calls();
        wait_until(WAIT, "calls through the delay", || calls() >= before + 30);
        proxy.set_fault(Fault::None);
        for _ in 0..3 {
            // A pump already blocked in read() when the stall begins forwards that one chunk:
            // let it land, then check that nothing moves in the middle of the stall.
            proxy.stall(Duration::from_millis(450));
            std::thread::sleep(Duration::from_millis(150));
            let before = calls();
            std::thread::sleep(Duration::from_millis(150));
            assert_eq!(calls(), before, "calls went through a stall");
            wait_until(WAIT, "calls after the stall", || calls() >= before + 30);
        }
        stop.store(true, Ordering::SeqCst);
        let total = join_all(callers);
        assert_eq!(total.failed(), 0, "{:?}", total.failed);
        assert_eq!(total.ok, total.made);
        assert_eq!(client.stats().dials, 1);
    });
}

/// Either direction of the connection ends while calls are in flight (the client or the
/// server reads end of stream): when the client reads it, the calls fail with
/// `ConnectionLost`; when the server does, it answers every request it read, then closes
/// (half-close); none hangs, and the client redials and serves again.
#[test]
fn half_closed_connections_fail_their_calls_and_the_client_redials() {
    run(|| {
        // Held calls take 300 ms: the half-close comes while they are at the workers.
        let server = Server::builder()
            .workers(8)
            .inline_budget(Duration::ZERO)
            .handler(|ctx: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
                if req.starts_with(b"hold") {
                    std::thread::sleep(Duration::from_millis(300));
                }
                reverse(ctx, req, resp)
            })
            .bind("127.0.0.1:0")
            .unwrap();
        let proxy = Proxy::start(tcp(&server), 0x4a1f);
        let client = Client::builder(proxy.addr())
            .reconnect_backoff(Duration::from_millis(5), Duration::from_millis(50))
            .request_timeout(Duration::from_secs(8))
            .connect()
            .unwrap();
        let mut lost = 0;
        for (round, dir) in [Dir::ToClient, Dir::ToServer, Dir::ToClient, Dir::ToServer]
            .into_iter()
            .enumerate()
        {
            let read_before = server.stats().frames_read;
            let held: Vec<_> = (0..5)
                .map(|i| {
                    let req = format!("hold-{round}-{i}");
                    (req.clone(), client.call_async(req.as_bytes()).unwrap())
                })
                .collect();
            wait_until(WAIT, "the held requests to reach the server", || {
                server.stats().frames_read >= read_before + 5
            });
            // A server that read end of stream answers what it read before it closes: the
            // previous round's connection may still be finishing.
            wait_until(WAIT, "the previous connection to close", || {
                proxy.open_connections() == 1
            });
            assert_eq!(proxy.half_close(dir), 1);
            for (req, p) in held {
                match p.wait() {
                    Ok(resp) if dir == Dir::ToServer => {
                        assert_eq!(&*resp, reversed(req.as_bytes()).as_slice())
                    }
                    // A server reading end of stream answers what it read (half-close).
                    Err(Error::ConnectionLost(_)) if dir == Dir::ToClient => lost += 1,
                    other => panic!("{dir:?}: {req}: unexpected {other:?}"),
                }
            }
            // Serves again, on a new connection. (A half-closed server closes once it has
            // answered: the client may hear of that after the answers; wait for the redial.)
            wait_until(WAIT, "the client to redial", || {
                client.stats().dials >= 2 + round as u64
            });
            let req = format!("after-{round}");
            assert_eq!(
                &*client.call(req.as_bytes()).unwrap(),
                reversed(req.as_bytes()).as_slice()
            );
        }
        let s = client.stats();
        println!(
            "half-close: {lost} of 20 held calls lost, {} answered",
            s.calls - 4
        );
        assert_eq!(
            lost, 10,
            "the client-side half-closes lose all theirs, no other"
        );
        assert_eq!(s.errors.connection_lost, lost);
        assert_eq!(s.calls + lost, 24);
        assert_eq!(s.dials, 5);
        assert_eq!(client.pending_requests(), 0);
    });
}

/// A call that timed out keeps its slot (and so its wire id) while the server may still
/// answer; when its connection closes, no answer can come any more, and the slot must be
/// given back (`Client::pending_requests` documents it). Otherwise every connection loss
/// leaks the slots of its timed-out calls, until the client overflows for good.
#[test]
fn timed_out_calls_give_their_slots_back_when_the_connection_closes() {
    run(|| {
        let gate = Gate::new();
        let g = gate.clone();
        let server = Server::builder()
            .workers(1)
            .inline_budget(Duration::ZERO)
            .handler(move |ctx: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
                if req.starts_with(b"hold") {
                    g.wait();
                }
                reverse(ctx, req, resp)
            })
            .bind("127.0.0.1:0")
            .unwrap();
        let _open = OpenOnDrop(gate.clone());
        let proxy = Proxy::start(tcp(&server), 0x7107);
        let client = Client::builder(proxy.addr())
            .max_pending_requests(4)
            .reconnect_backoff(Duration::from_millis(5), Duration::from_millis(50))
            .connect()
            .unwrap();
        for i in 0..4 {
            let req = format!("hold-{i}");
            let r = client.call_timeout(req.as_bytes(), Duration::from_millis(50));
            assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
        }
        assert_eq!(
            client.pending_requests(),
            4,
            "the server may still answer them"
        );
        proxy.reset_all();
        wait_until(WAIT, "the client to see its connection go", || {
            client.stats().errors.connection_lost + client.stats().dial_errors > 0
                || client.stats().dials > 1
        });
        // Nothing can answer them now: their slots must be free again.
        wait_until(
            Duration::from_secs(3),
            "the timed-out calls' slots to be freed",
            || client.pending_requests() == 0,
        );
        gate.open();
        assert_eq!(&*client.call(b"next").unwrap(), b"txen");
    });
}

// ----- hostile peers -------------------------------------------------------------------------

/// Garbage instead of a hello, from 20 peers at once: each is closed without a word and
/// counted, while a well-behaved client keeps full service.
#[test]
fn garbage_before_the_hello_is_refused_while_others_keep_full_service() {
    run(|| {
        let server = reverse_builder().bind("127.0.0.1:0").unwrap();
        let addr = tcp(&server);
        let bystander = Bystander::start(addr);
        let mut rng = XorShift::new(0x9a5b);
        let mut peers: Vec<TcpStream> = (0..20)
            .map(|i| {
                let mut junk = vec![0u8; rng.range(1, 300) as usize];
                rng.fill(&mut junk);
                if junk[0] == b'B' {
                    junk[0] = b'X';
                }
                if i == 0 {
                    junk = b"GET / HTTP/1.1\r\nHost: batchrpc\r\n\r\n".to_vec();
                }
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(&junk).unwrap();
                s
            })
            .collect();
        for s in &mut peers {
            let (got, _) = read_until_closed(s, Duration::from_secs(3));
            assert!(got.is_empty(), "the server answered garbage with {got:?}");
        }
        wait_until(WAIT, "the server to count the 20 peers", || {
            server.stats().errors.protocol == 20
        });
        let s = server.stats();
        bystander.finish();
        assert_eq!(
            (s.accepts, s.accept_errors, s.open_connections),
            (21, 20, 1)
        );
    });
}

/// What the server must do with `stream` (after a valid hello): walk it with the frame decoder.
/// Returns whether the connection ends with a protocol error.
fn ends_in_protocol_error(mut stream: &[u8], max: u32) -> bool {
    loop {
        match frame::decode(stream, max) {
            Err(_) => return true,
            Ok(None) => return !stream.is_empty(), // truncated inside a frame
            Ok(Some(f)) if !f.kind.is_request() => return true,
            Ok(Some(f)) => stream = &stream[f.wire_len()..],
        }
    }
}

/// Garbage after a valid hello (random bytes, valid frames then a bad one, valid frames then
/// a truncated one), then end of stream: each connection closes; the protocol errors counted
/// are exactly those the frame decoder predicts; others keep full service.
#[test]
fn garbage_after_the_hello_closes_the_connection_as_the_decoder_predicts() {
    run(|| {
        const MAX: u32 = 1 << 20;
        let server = reverse_builder()
            .max_frame_len(MAX)
            .bind("127.0.0.1:0")
            .unwrap();
        let addr = tcp(&server);
        let bystander = Bystander::start(addr);
        let mut rng = XorShift::new(0x6a7b);
        let mut expected_errors = 0;
        for i in 0..24u32 {
            let mut stream = Vec::new();
            // Some valid requests first, then the damage.
            for id in 0..rng.below(4) as u32 {
                frame::encode(
                    &mut stream,
                    id,
                    FrameKind::Request,
                    format!("ok-{i}-{id}").as_bytes(),
                );
            }
            match i % 4 {
                0 => {
                    let mut junk = vec![0u8; rng.range(1, 200) as usize];
                    rng.fill(&mut junk);
                    stream.extend_from_slice(&junk);
                }
                1 => stream.extend_from_slice(&header(1, FrameKind::Response, 0)),
                2 => {
                    let mut h = header(1, FrameKind::Request, 100);
                    h[4] = 0x7f; // unknown kind
                    stream.extend_from_slice(&h);
                }
                _ => {
                    frame::encode(&mut stream, 9, FrameKind::Request, b"cut short");
                    stream.truncate(stream.len() - rng.range(1, 12) as usize);
                }
            }
            let protocol_error = ends_in_protocol_error(&stream, MAX);
            expected_errors += u64::from(protocol_error);
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&hello(Compression::None)).unwrap();
            write_what_you_can(&mut s, &stream);
            let _ = s.shutdown(Shutdown::Write);

            let (got, _) = read_until_closed(&mut s, Duration::from_secs(3));
            if !got.is_empty() {
                assert!(got.len() >= HELLO_LEN && got[..4] == *b"BRPC", "{got:?}");
            }
        }
        println!(
            "garbage after the hello: {expected_errors} of 24 streams end in a protocol error"
        );
        assert!(expected_errors >= 18, "the garbage should mostly be fatal");
        wait_until(WAIT, "the server to close every garbage connection", || {
            server.stats().open_connections == 1
        });
        let s = server.stats();
        bystander.finish();
        assert_eq!(s.errors.protocol, expected_errors);
        assert_eq!(s.accept_errors, 0, "every garbage peer completed its hello");
    });
}

/// A hello cut short: followed by end of stream, closed at once (long before the handshake
/// timeout of 10 s); left open, closed at the handshake timeout (500 ms). Never answered
/// either way; counted; others keep full service.
#[test]
fn a_truncated_hello_is_closed_at_once_or_at_the_handshake_timeout() {
    run(|| {
        let cuts = [1, 4, 5, 7, HELLO_LEN - 1];
        let full = hello(Compression::None);
        // Ended: the server sees end of stream inside the hello.
        let patient = reverse_builder()
            .handshake_timeout(Duration::from_secs(10))
            .bind("127.0.0.1:0")
            .unwrap();
        let bystander = Bystander::start(tcp(&patient));
        for cut in cuts {
            let mut s = TcpStream::connect(tcp(&patient)).unwrap();
            s.write_all(&full[..cut]).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let started = Instant::now();
            let (got, closed) = read_until_closed(&mut s, Duration::from_secs(5));
            assert!(got.is_empty(), "{got:?}");
            assert!(closed - started < Duration::from_secs(5), "cut {cut}");
        }
        wait_until(WAIT, "the server to count them", || {
            patient.stats().errors.protocol == cuts.len() as u64
        });
        // Left open: closed at the handshake timeout, all five together.
        let timeout = Duration::from_millis(500);
        let strict = reverse_builder()
            .handshake_timeout(timeout)
            .bind("127.0.0.1:0")
            .unwrap();
        let started = Instant::now();
        let mut open: Vec<TcpStream> = cuts
            .iter()
            .map(|&cut| {
                let mut s = TcpStream::connect(tcp(&strict)).unwrap();
                s.write_all(&full[..cut]).unwrap();
                s
            })
            .collect();
        let connected = started.elapsed();
        for (s, cut) in open.iter_mut().zip(cuts) {
            let (got, closed) = read_until_closed(s, Duration::from_secs(5));
            assert!(got.is_empty(), "{got:?}");
            let took = closed - started;
            assert!(took >= timeout, "cut {cut}: closed after {took:?}");
            assert!(
                took < timeout + connected + Duration::from_secs(2),
                "cut {cut}: {took:?}"
            );
        }
        wait_until(WAIT, "the server to count them", || {
            strict.stats().errors.protocol == cuts.len() as u64
        });
        let s = patient.stats();
        bystander.finish();
        assert_eq!((s.accepts, s.accept_errors, s.open_connections), (6, 5, 1));
        let s = strict.stats();
        assert_eq!((s.accepts, s.accept_errors, s.open_connections), (5, 5, 0));
    });
}

/// 40 peers that never finish their handshake (20 silent, 20 sending one byte of the hello
/// every 100 ms, slowloris style) are all closed at the handshake timeout; meanwhile a
/// well-behaved client keeps full service.
#[test]
fn peers_that_never_finish_the_handshake_are_closed_at_the_timeout() {
    run(|| {
        let timeout = Duration::from_millis(400);
        let server = reverse_builder()
            .handshake_timeout(timeout)
            .bind("127.0.0.1:0")
            .unwrap();
        let addr = tcp(&server);
        let bystander = Bystander::start(addr);
        let full = hello(Compression::None);
        let started = Instant::now();
        let mut peers: Vec<(TcpStream, Option<Instant>)> = (0..40)
            .map(|_| {
                let s = TcpStream::connect(addr).unwrap();
                s.set_nonblocking(true).unwrap();
                (s, None)
            })
            .collect();
        let connected = started.elapsed();
        let mut sent = 0;
        let mut buf = [0u8; 64];
        while peers.iter().any(|(_, closed)| closed.is_none()) {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "peers left open"
            );
            if started.elapsed() >= Duration::from_millis(100 * sent as u64) && sent < HELLO_LEN {
                for (s, closed) in peers.iter_mut().skip(20) {
                    if closed.is_none() {
                        let _ = s.write(&full[sent..sent + 1]);
                    }
                }
                sent += 1;
            }
            for (s, closed) in &mut peers {
                if closed.is_some() {
                    continue;
                }
                match s.read(&mut buf) {
                    Ok(0) => *closed = Some(Instant::now()),
                    Ok(n) => panic!("a peer in its handshake was answered with {:?}", &buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => *closed = Some(Instant::now()),
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        for (_, closed) in &peers {
            let took = closed.unwrap() - started;
            assert!(took >= timeout, "closed after {took:?}");
            assert!(
                took < timeout + connected + Duration::from_secs(1),
                "closed after {took:?}"
            );
        }
        assert!(sent < HELLO_LEN, "the slow peers must not have finished");
        wait_until(WAIT, "the server to count them", || {
            server.stats().errors.protocol == 40
        });
        let s = server.stats();
        bystander.finish();
        assert_eq!(
            (s.accepts, s.accept_errors, s.open_connections),
            (41, 40, 1)
        );
    });
}

/// A frame header declaring 4 GiB (and one byte over the limit) closes the connection before
/// anything is reserved for it; a frame of exactly the limit is served.
#[test]
fn a_frame_length_of_4_gib_is_refused_before_any_allocation() {
    run(|| {
        let _heavy = heavy();
        const MAX: u32 = 1 << 20;
        let server = reverse_builder()
            .max_frame_len(MAX)
            .bind("127.0.0.1:0")
            .unwrap();
        let addr = tcp(&server);
        let bystander = Bystander::start(addr);
        let rss = RssPeak::start();
        for len in [u32::MAX, MAX + 1] {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&hello(Compression::None)).unwrap();
            s.write_all(&header(1, FrameKind::Request, len)).unwrap();
            s.write_all(&[0u8; 1000]).unwrap(); // some of the promised payload
            let (got, _) = read_until_closed(&mut s, Duration::from_secs(5));
            // The server's hello, or nothing if the close came as a reset (the rest of the
            // payload unread): never an answer.
            assert!(got.is_empty() || got.len() == HELLO_LEN, "{got:?}");
        }
        let grew = rss.finish();
        // Exactly the limit is fine.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&hello(Compression::None)).unwrap();
        let mut rng = XorShift::new(4);
        let mut payload = vec![0u8; MAX as usize];
        rng.fill(&mut payload);
        let mut req = header(3, FrameKind::Request, MAX).to_vec();
        req.extend_from_slice(&payload);
        s.write_all(&req).unwrap();
        let mut answer = vec![0u8; HELLO_LEN + frame::HEADER_LEN + MAX as usize];
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.read_exact(&mut answer).unwrap();
        let f = frame::decode(&answer[HELLO_LEN..], MAX).unwrap().unwrap();
        assert_eq!((f.id, f.kind), (3, FrameKind::Response));
        assert!(f.payload == reversed(&payload).as_slice());
        drop(s);
        wait_until(WAIT, "the server to count the two refusals", || {
            server.stats().errors.protocol == 2 && server.stats().open_connections == 1
        });
        bystander.finish();
        println!("4 GiB header: resident memory grew by {} KiB", grew >> 10);
        assert!(
            grew < 64 << 20,
            "the server reserved memory for a refused frame: {grew} B"
        );
        assert_eq!(server.stats().accept_errors, 0);
    });
}

/// `parts` copies of a compressed run of zeros: each copy is flushed and self-contained, so
/// they concatenate into a valid stream that inflates to `parts * run` bytes.
#[cfg(any(feature = "flate", feature = "snappy"))]
fn compressed_zeros(compression: Compression, run: usize, parts: usize) -> Vec<u8> {
    let mut one = Vec::new();
    Encoder::new(compression, 9)
        .unwrap()
        .encode(&vec![0u8; run], &mut one);
    if compression == Compression::Snappy {
        // Without the stream identifier, which opened the stream already.
        assert_eq!(&one[..10], b"\xff\x06\x00\x00sNaPpY");
        one.drain(..10);
    }
    one.repeat(parts)
}

/// A compression bomb whose first frame declares 4 GiB: a small flate (or snappy) stream that
/// would inflate to 256 MiB (32 MiB). The server refuses the header as soon as it is inflated
/// and closes, without inflating the rest; others keep full service.
#[test]
#[cfg(all(feature = "flate", feature = "snappy"))]
fn a_compression_bomb_declaring_a_huge_frame_is_refused_before_inflating() {
    run(|| {
        let _heavy = heavy();
        let server = reverse_builder()
            .max_frame_len(1 << 20)
            .bind("127.0.0.1:0")
            .unwrap();
        let addr = tcp(&server);
        let bystander = Bystander::start(addr);
        for (n, (c, run, parts)) in [
            (Compression::Flate, 1 << 20, 256),
            (Compression::Snappy, 64 << 10, 512),
        ]
        .into_iter()
        .enumerate()
        {
            let mut bomb = Vec::new();
            let mut enc = Encoder::new(c, 1).unwrap();
            enc.encode(&header(1, FrameKind::Request, u32::MAX), &mut bomb);
            bomb.extend_from_slice(&compressed_zeros(c, run, parts));
            println!(
                "{c} bomb: {} B inflating to {} MiB",
                bomb.len(),
                (run * parts) >> 20
            );
            let rss = RssPeak::start();
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&hello(c)).unwrap();
            let writer = {
                let mut s = s.try_clone().unwrap();
                std::thread::spawn(move || write_what_you_can(&mut s, &bomb))
            };
            let (got, _) = read_until_closed(&mut s, Duration::from_secs(5));
            let written = writer.join().unwrap();
            let grew = rss.finish();
            println!(
                "{c} bomb: {written} B written before the close, resident memory +{} KiB",
                grew >> 10
            );
            assert!(got.is_empty() || got.len() == HELLO_LEN, "{got:?}");
            assert!(grew < 48 << 20, "{c}: resident memory grew by {grew} B");
            wait_until(WAIT, "the server to count the bomb", || {
                server.stats().errors.protocol == n as u64 + 1
            });
        }
        let s = server.stats();
        bystander.finish();
        assert_eq!((s.accept_errors, s.open_connections), (0, 1));
    });
}

/// A compression bomb within the limits, from a peer that never reads: 64 frames of exactly
/// `max_frame_len` (1 MiB) of zeros, 70 KiB of flate. What the server may hold for it is bounded
/// by its limits: the frame being read (1 MiB, plus a read step), the answers it queues until
/// its send backlog reaches 4 MiB (where it stops reading), plus the answers of the
/// `max_queued_requests` (8) requests already at the workers then: 1 + 4 + 8 MiB, and at most
/// twice that as buffer capacity (vectors grow by doubling): 28 MiB. So it stops reading long
/// before the 64 MiB; others keep full service; when the peer goes, so does its connection.
#[test]
#[cfg(feature = "flate")]
fn a_compression_bomb_within_the_limits_costs_at_most_its_bounded_buffers() {
    run(|| {
        let _heavy = heavy();
        const MAX: usize = 1 << 20;
        let big = Arc::new(AtomicU64::new(0));
        let seen = big.clone();
        let server = Server::builder()
            .workers(2)
            .max_frame_len(MAX as u32)
            .max_queued_requests(8)
            .handler(move |ctx: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
                if req.len() == MAX {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                reverse(ctx, req, resp)
            })
            .bind("127.0.0.1:0")
            .unwrap();
        let addr = tcp(&server);
        let bystander = Bystander::start(addr);
        let zeros = compressed_zeros(Compression::Flate, MAX, 1);
        let mut bomb = Vec::new();
        for id in 0..128 {
            // Each piece is flushed and self-contained, so fresh encoders concatenate.
            let mut enc = Encoder::new(Compression::Flate, 1).unwrap();
            enc.encode(&header(id, FrameKind::Request, MAX as u32), &mut bomb);
            bomb.extend_from_slice(&zeros);
        }
        println!("bomb: {} B inflating to 128 MiB of requests", bomb.len());
        let rss = RssPeak::start();
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&hello(Compression::Flate)).unwrap();
        let written = write_what_you_can(&mut s, &bomb);
        assert_eq!(written, bomb.len());
        // The server answers until its backlog to the peer is full, then stops reading.
        let (mut last, mut still) = (u64::MAX, 0);
        let give_up = Instant::now() + WAIT;
        while still < 3 {
            assert!(Instant::now() < give_up, "the server never stopped reading");
            std::thread::sleep(Duration::from_millis(200));
            let handled = big.load(Ordering::SeqCst);
            still = if handled == last { still + 1 } else { 0 };
            last = handled;
        }
        // Let the once-a-second sweep see the buffers.
        std::thread::sleep(Duration::from_millis(1100));
        let s_stats = server.stats();
        let grew = rss.finish();
        let handled = big.load(Ordering::SeqCst);
        println!(
            "bomb: the server handled {handled} frames of 128 and stopped; buffers {} KiB, resident memory +{} KiB",
            s_stats.buffered_bytes >> 10,
            grew >> 10
        );
        // What stops it: the answers nobody reads fill the kernel's buffers (the peer's
        // receive buffer alone grows to `tcp_rmem`'s maximum, 32 MiB on these machines), then
        // its send backlog, then `max_queued_requests`.
        assert!(handled < 64, "the server kept reading the bomb");
        assert!(
            s_stats.buffered_bytes <= 28 << 20,
            "{} B buffered",
            s_stats.buffered_bytes
        );
        drop(s);
        wait_until(WAIT, "the server to drop the bomber", || {
            server.stats().open_connections == 1
        });
        bystander.finish();
        assert_eq!(server.stats().accept_errors, 0);
    });
}

// ----- floods and overload -------------------------------------------------------------------

/// The soft limit on open files (`ulimit -n`), from /proc/self/limits.
fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))?
                .split_whitespace()
                .nth(3)?
                .parse()
                .ok()
        })
        .unwrap_or(1024)
}

/// A flood of 2,000 idle connections (each sends a valid hello, then nothing) at a server
/// that takes 1,000: the first 1,000 (the bystander's included) are served, the rest closed at
/// once and counted; the idle ones hold no buffers once the sweep has seen them quiet; the
/// bystander keeps full service; once the flood leaves, new clients get in again.
///
/// The flood needs about 1.5 file descriptors per connection in this process (its own sockets
/// and the server's). With a soft `ulimit -n` below ~3,300 the count is scaled down to fit
/// (and printed); the server's limit stays half of it.
#[test]
fn a_flood_of_idle_connections_is_capped_and_service_continues() {
    run(|| {
        let _heavy = heavy();
        let limit = open_files_limit();
        let flood = 2000
            .min((limit.saturating_sub(300) * 2 / 3) as usize)
            .max(20);
        let max_conns = flood / 2;
        println!("open files limit {limit}: a flood of {flood} at a server taking {max_conns}");
        let server = reverse_builder()
            .max_connections(max_conns)
            .handshake_timeout(Duration::from_secs(20))
            .bind("127.0.0.1:0")
            .unwrap();
        let addr = tcp(&server);
        let bystander = Bystander::start(addr);
        let rss = RssPeak::start();
        let hello = hello(Compression::None);
        let mut peers = Vec::with_capacity(flood);
        for _ in 0..flood {
            let mut s = TcpStream::connect(addr).unwrap();
            let _ = s.write_all(&hello); // a refused one may be closed already
            peers.push(s);
        }
        wait_until(WAIT, "the server to take in the flood", || {
            server.stats().accepts == flood as u64 + 1
        });
        // Accepted peers got the server's hello and nothing else; the others were closed.
        let (mut served, mut closed) = (0, 0);
        let mut buf = [0u8; 64];
        for s in &mut peers {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            match s.read(&mut buf) {
                Ok(HELLO_LEN) if buf[..4] == *b"BRPC" => served += 1,
                Ok(0) => closed += 1,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => closed += 1,
                other => panic!("a flood peer got {other:?}"),
            }
        }
        assert_eq!(
            served,
            max_conns - 1,
            "the bystander holds one of the places"
        );
        assert_eq!(closed, flood - served);
        let s = server.stats();
        assert_eq!(s.open_connections, max_conns as u64);
        assert_eq!(s.accept_errors, closed as u64);
        // At the limit, a new client is refused; the bystander is not affected.
        let refused = Client::builder(addr)
            .handshake_timeout(Duration::from_secs(2))
            .reconnect_backoff(Duration::from_secs(60), Duration::from_secs(60))
            .connect();
        assert!(refused.is_err(), "over the limit");
        // Idle connections give their buffers back (the sweep runs once a second); only the
        // busy bystander's may be left.
        wait_until(
            WAIT,
            "the idle connections to give their buffers back",
            || server.stats().buffered_bytes <= 512 << 10,
        );
        let grew = rss.finish();
        println!(
            "flood: {served} idle peers held, {closed} closed; resident memory +{} KiB ({} B per connection, both ends)",
            grew >> 10,
            grew / flood as u64
        );
        drop(peers);
        wait_until(WAIT, "the flood to leave", || {
            server.stats().open_connections == 1
        });
        let again = Client::builder(addr).connect().unwrap();
        assert_eq!(&*again.call(b"in again").unwrap(), b"niaga ni");
        bystander.finish();
    });
}

/// Handlers far slower than the arrival rate (2 workers, 5 ms each: 400 calls/s) under four
/// threads of calls and fire-and-forget sends, which alone hold no slot once written. The
/// server takes no more than `max_queued_requests` (32) requests off its connections and stops
/// reading: its connection buffers stay under 1 MiB per connection; the clients' own limits
/// then bite, and callers see `Timeout` and `Overflow` at once instead of queues growing. Every
/// call still completes exactly once, and service resumes when the load stops.
#[test]
fn slow_handlers_apply_backpressure_with_bounded_memory() {
    run(|| {
        let _heavy = heavy();
        const QUEUED: u64 = 32;
        const PENDING: u32 = 300;
        // Slow while the load lasts; then the backlog drains at full speed.
        let slow = Arc::new(AtomicBool::new(true));
        let is_slow = slow.clone();
        let server = Server::builder()
            .workers(2)
            .max_queued_requests(QUEUED as usize)
            .handler(move |ctx: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
                if is_slow.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                reverse(ctx, req, resp)
            })
            .bind("127.0.0.1:0")
            .unwrap();
        let clients: Vec<Client> = (0..2)
            .map(|_| {
                Client::builder(server.local_addr())
                    .max_pending_requests(PENDING)
                    .request_timeout(Duration::from_millis(300))
                    .connect()
                    .unwrap()
            })
            .collect();
        let rss = RssPeak::start();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let mut callers = Vec::new();
        for (t, client) in clients.iter().enumerate() {
            callers.extend(load(client, 1, 64, &stop));
            let (client, stop, sent) = (client.clone(), stop.clone(), sent.clone());
            callers.push(std::thread::spawn(move || {
                let mut rng = XorShift::new(t as u64);
                let mut tally = Tally::default();
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let req = tagged(50 + t as u32, seq, 8 << 10, &mut rng);
                    tally.made += 1;
                    match client.send(&req) {
                        Ok(()) => {
                            tally.ok += 1;
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            *tally.failed.entry(e.kind()).or_default() += 1;
                            std::thread::sleep(Duration::from_micros(200));
                        }
                    }
                }
                tally
            }));
        }
        // Watch the server's queue and buffers for 2.5 s (the sweep refreshes the buffer
        // figure every second).
        let (mut max_queued, mut max_buffered, mut max_pending) = (0, 0, 0);
        let until = Instant::now() + Duration::from_millis(2500);
        while Instant::now() < until {
            let s = server.stats();
            let queued = s.frames_read.saturating_sub(s.calls + s.errors.server);
            max_queued = max_queued.max(queued);
            max_buffered = max_buffered.max(s.buffered_bytes);
            for c in &clients {
                max_pending = max_pending.max(c.pending_requests());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::SeqCst);
        let total = join_all(callers);
        let grew = rss.finish();
        let ss = server.stats();
        println!(
            "backpressure: {} made, {} ok ({} sends), failed {:?}; server handled {}, queued at most {max_queued}, buffered at most {} KiB; clients pending at most {max_pending}; resident memory +{} KiB",
            total.made,
            total.ok,
            sent.load(Ordering::Relaxed),
            total.failed,
            ss.calls,
            max_buffered >> 10,
            grew >> 10
        );
        assert_eq!(total.ok + total.failed(), total.made);
        assert!(
            total.only_failed_with(&["timeout", "overflow"]),
            "{:?}",
            total.failed
        );
        assert!(total.failed["timeout"] > 0 && total.failed["overflow"] > 0);
        // A snapshot reads `calls` before `frames_read`: allow a job's worth of skew.
        assert!(
            max_queued <= QUEUED + 64,
            "the server queued {max_queued} requests"
        );
        assert!(max_pending <= PENDING as usize);
        assert!(
            max_buffered <= 2 << 20,
            "the server buffered {max_buffered} B"
        );
        // The server handled no more than the load it was offered, at its own pace.
        assert!(ss.calls <= total.made);
        // Service resumes: the backlog drains and calls are answered again.
        slow.store(false, Ordering::Relaxed);
        for c in &clients {
            wait_until(WAIT, "the backlog to drain", || c.pending_requests() == 0);
            let r = c.call_timeout(b"calm", WAIT);
            if r.is_err() {
                for _ in 0..3 {
                    eprintln!("DEBUG server {:?}", server.stats());
                    eprintln!(
                        "DEBUG client {:?} pending {}",
                        c.stats(),
                        c.pending_requests()
                    );
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            assert_eq!(&*r.unwrap(), b"mlac");
        }
    });
}

// ----- shutdown and drop under load ----------------------------------------------------------

/// `shutdown()` in the middle of heavy load from three clients: it returns, every request the
/// server read was answered and the answer delivered (the clients' successes are exactly the
/// server's handled requests), the rest fail with `ConnectionLost` or `Timeout`, nothing
/// hangs, and the server's reactor and worker threads are gone.
#[test]
fn shutdown_under_load_answers_what_it_read_and_joins_its_threads() {
    run(|| {
        let server = reverse_builder()
            .workers(3)
            .thread_name("rb-shutdown")
            .bind("127.0.0.1:0")
            .unwrap();
        // A thread names itself once it runs.
        wait_until(WAIT, "a reactor and three workers", || {
            threads_named("rb-shutdown") == 4
        });
        let clients: Vec<Client> = [Compression::None, Compression::Flate, Compression::Snappy]
            .into_iter()
            .filter(|c| c.is_available())
            .map(|c| {
                Client::builder(server.local_addr())
                    .compression(c)
                    .request_timeout(Duration::from_secs(1))
                    .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
                    .connect()
                    .unwrap()
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let callers: Vec<_> = clients.iter().flat_map(|c| load(c, 2, 16, &stop)).collect();
        wait_until(WAIT, "load", || server.stats().calls >= 500);
        let started = Instant::now();
        server.shutdown();
        let took = started.elapsed();
        let handled = server.stats().calls;
        assert_eq!(server.stats().open_connections, 0);
        // The workers are joined by shutdown() (a joined thread can linger in /proc/self/task
        // for a moment while the kernel reaps it); the reactor thread ends by itself right
        // after (it is joined when the server is dropped).
        wait_until(
            Duration::from_secs(2),
            "the joined workers to be gone",
            || threads_named("rb-shutdown-wor") == 0,
        );
        wait_until(Duration::from_secs(2), "the reactor thread to end", || {
            threads_named("rb-shutdown") == 0
        });
        stop.store(true, Ordering::SeqCst);
        let total = join_all(callers);
        println!(
            "shutdown took {took:?}: server handled {handled}; callers {} made, {} ok, failed {:?}",
            total.made, total.ok, total.failed
        );
        assert_eq!(total.ok + total.failed(), total.made);
        // Every request the server read was answered and its answer written before the
        // close; an answer is missing only where its caller had already timed out (1 s).
        let timed_out = total.failed.get("timeout").copied().unwrap_or(0);
        assert!(
            total.ok <= handled && handled <= total.ok + timed_out,
            "handled {handled}, answered {}, timed out {timed_out}",
            total.ok
        );
        assert!(
            total.only_failed_with(&["connection_lost", "timeout"]),
            "{:?}",
            total.failed
        );
        for c in &clients {
            assert!(matches!(
                c.call_timeout(b"after", Duration::from_millis(100)),
                Err(Error::Timeout | Error::ConnectionLost(_))
            ));
        }
        // The clients' own books: every call counted once (the `after` calls included).
        let counted: u64 = clients
            .iter()
            .map(|c| {
                let s = c.stats();
                s.calls + s.errors.failed_calls()
            })
            .sum();
        assert_eq!(counted, total.made + clients.len() as u64);
    });
}

/// The last `Client` handle dropped while calls are in flight in every form (waited on by
/// other threads, polled with `try_wait`, inside a blocking `Batch::call`, already answered
/// but not yet taken): every one completes, with its answer if it had one, otherwise with
/// `Closed` (or `Canceled`); the client's reactor thread is joined by the drop.
#[test]
fn dropping_the_client_with_calls_in_flight_completes_every_call() {
    run(|| {
        let gate = Gate::new();
        let g = gate.clone();
        let server = Server::builder()
            .workers(2)
            // Held handlers block: keep them off the reactor (see the inline-execution test).
            .inline_budget(Duration::ZERO)
            .handler(move |ctx: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
                if req.starts_with(b"hold") {
                    g.wait();
                }
                reverse(ctx, req, resp)
            })
            .bind("127.0.0.1:0")
            .unwrap();
        let _open = OpenOnDrop(gate.clone());
        let client = Client::builder(server.local_addr())
            .conns(2)
            .thread_name("rb-dropped")
            .connect()
            .unwrap();
        wait_until(WAIT, "the reactor thread to run", || {
            threads_named("rb-dropped") == 1
        });
        // Answered, never taken.
        let answered: Vec<_> = (0..10)
            .map(|i| {
                let req = format!("quick-{i}");
                (req.clone(), client.call_async(req.as_bytes()).unwrap())
            })
            .collect();
        for (_, p) in &answered {
            support::wait_done(p, WAIT);
        }
        // Held at the server, waited on by other threads.
        let waiters: Vec<_> = (0..4)
            .map(|t| {
                let calls: Vec<_> = (0..10)
                    .map(|i| {
                        client
                            .call_async(format!("hold-{t}-{i}").as_bytes())
                            .unwrap()
                    })
                    .collect();
                std::thread::spawn(move || calls.into_iter().map(|p| p.wait()).collect::<Vec<_>>())
            })
            .collect();
        // Held, polled.
        let mut polled: Vec<_> = (0..5)
            .map(|i| {
                client
                    .call_async(format!("hold-polled-{i}").as_bytes())
                    .unwrap()
            })
            .collect();
        // Blocking batches on other threads (quick calls and held ones mixed).
        let batches: Vec<_> = (0..2)
            .map(|t| {
                let mut batch = client.batch();
                for i in 0..6 {
                    let req = if i % 2 == 0 {
                        format!("hold-batch-{t}-{i}")
                    } else {
                        format!("quick-batch-{t}-{i}")
                    };
                    batch.add(req.as_bytes()).unwrap();
                }
                std::thread::spawn(move || batch.call())
            })
            .collect();
        wait_until(WAIT, "every held call to reach the server", || {
            server.stats().frames_read >= 10 + 40 + 5 + 12
        });
        drop(client);
        // The drop joins the reactor thread; a joined thread can linger in /proc/self/task for
        // a moment while the kernel reaps it.
        wait_until(
            Duration::from_secs(2),
            "the joined reactor thread to be gone",
            || threads_named("rb-dropped") == 0,
        );
        for (req, p) in answered {
            assert_eq!(&*p.wait().unwrap(), reversed(req.as_bytes()).as_slice());
        }
        let mut closed = 0;
        for w in waiters {
            for outcome in w.join().unwrap() {
                assert!(
                    matches!(outcome, Err(Error::Closed | Error::Canceled)),
                    "{outcome:?}"
                );
                closed += 1;
            }
        }
        for p in &mut polled {
            wait_until(WAIT, "a polled call to complete", || p.is_done());
            assert!(matches!(
                p.try_wait(),
                Some(Err(Error::Closed | Error::Canceled))
            ));
        }
        for (t, b) in batches.into_iter().enumerate() {
            for (i, outcome) in b.join().unwrap().into_iter().enumerate() {
                if i % 2 == 0 {
                    assert!(
                        matches!(outcome, Err(Error::Closed | Error::Canceled)),
                        "{outcome:?}"
                    );
                    closed += 1;
                } else {
                    // Answered before the drop (the quick ones are not held), or closed.
                    match outcome {
                        Ok(resp) => assert_eq!(
                            &*resp,
                            reversed(format!("quick-batch-{t}-{i}").as_bytes()).as_slice()
                        ),
                        Err(e) => assert!(matches!(e, Error::Closed | Error::Canceled), "{e:?}"),
                    }
                }
            }
        }
        assert_eq!(closed, 40 + 6);
        gate.open();
        wait_until(WAIT, "the server to see the client go", || {
            server.stats().open_connections == 0
        });
    });
}

/// More fire-and-forget sends than the client's send backlog holds (4 MiB), then a call:
/// the calls beyond the backlog wait for room, and must be written as soon as there is room,
/// even when the final flush of a reactor turn empties the backlog without the socket ever
/// saying "would block" (no writable event will come then). A burst takes about 120 ms here
/// in a debug build; a call left waiting until the reactor's next wake-up (the once-a-second
/// sweep) takes a second more.
#[test]
fn calls_waiting_for_backlog_room_are_sent_when_the_backlog_drains() {
    run(|| {
        let server = reverse_builder().bind("127.0.0.1:0").unwrap();
        let client = Client::builder(server.local_addr())
            .request_timeout(Duration::from_secs(20))
            .connect()
            .unwrap();
        let payload = vec![7u8; 256 << 10];
        for round in 0..10 {
            for _ in 0..40 {
                client.send(&payload).unwrap(); // 10 MiB: beyond the 4 MiB backlog
            }
            let req = format!("after the burst {round}");
            let started = Instant::now();
            let answer = client.call_timeout(req.as_bytes(), Duration::from_secs(10));
            let took = started.elapsed();
            assert!(
                matches!(&answer, Ok(a) if **a == reversed(req.as_bytes())[..]),
                "round {round}: {answer:?} after {took:?}"
            );
            println!("round {round}: the call after the burst took {took:?}");
            assert!(
                took < Duration::from_millis(600),
                "round {round}: took {took:?}"
            );
        }
    });
}

/// A burst of requests larger than `max_queued_requests`, all in one read, at a server whose
/// handler is cheap: the server takes the first `max_queued_requests` frames, and must come
/// back for the rest of its buffer once they are answered (by a worker, or inline on the
/// reactor: `workers(0)`, or a cheap handler run inline within the turn's budget), although
/// the socket has nothing more to read and will raise no event.
#[test]
fn a_burst_beyond_max_queued_requests_is_served_in_full() {
    run(|| {
        for workers in [0, 2] {
            let server = reverse_builder()
                .workers(workers)
                .max_queued_requests(8)
                .bind("127.0.0.1:0")
                .unwrap();
            let client = Client::builder(server.local_addr())
                .request_timeout(Duration::from_secs(2))
                .connect()
                .unwrap();
            // Warm up: the server learns what the handler costs.
            for i in 0..2000u32 {
                client.call(&i.to_le_bytes()).unwrap();
            }
            for round in 0..20u32 {
                let mut batch = client.batch();
                for i in 0..100u32 {
                    batch
                        .add(&[round.to_le_bytes(), i.to_le_bytes()].concat())
                        .unwrap();
                }
                let started = Instant::now();
                for (i, r) in batch.call().into_iter().enumerate() {
                    let req = [round.to_le_bytes(), (i as u32).to_le_bytes()].concat();
                    match r {
                        Ok(resp) => assert_eq!(&*resp, reversed(&req).as_slice()),
                        Err(e) => panic!(
                            "workers({workers}), round {round}, call {i}: {e:?} after {:?}",
                            started.elapsed()
                        ),
                    }
                }
            }
        }
    });
}

/// A handler that is cheap almost always but now and then blocks (a cache miss, a lock, a slow
/// disk): a blocking request must hold one worker, not the reactor that serves every
/// connection. Another client's calls keep being answered meanwhile, at their usual pace.
#[test]
fn a_handler_that_sometimes_blocks_does_not_stall_other_connections() {
    run(|| {
        let server = Server::builder()
            .workers(4)
            .handler(|ctx: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
                if req.starts_with(b"slow") {
                    std::thread::sleep(Duration::from_millis(500));
                }
                reverse(ctx, req, resp)
            })
            .bind("127.0.0.1:0")
            .unwrap();
        let a = Client::builder(server.local_addr()).connect().unwrap();
        let b = Client::builder(server.local_addr()).connect().unwrap();
        // The server learns that the handler is cheap.
        for i in 0..2000u32 {
            a.call(&i.to_le_bytes()).unwrap();
        }
        for round in 0..5 {
            let slow = a.call_async(b"slow").unwrap();
            std::thread::sleep(Duration::from_millis(20)); // the slow one is being handled
            let started = Instant::now();
            let req = format!("quick-{round}");
            assert_eq!(
                &*b.call(req.as_bytes()).unwrap(),
                reversed(req.as_bytes()).as_slice()
            );
            let took = started.elapsed();
            assert!(
                took < Duration::from_millis(250),
                "round {round}: another connection's call waited {took:?} for a slow request"
            );
            assert_eq!(&*slow.wait().unwrap(), b"wols");
        }
    });
}
