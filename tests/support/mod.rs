//! Helpers shared by the integration tests: servers, bounded waits, temp socket paths,
//! payloads and a gate that holds handlers until the test lets them go.
//!
//! Every wait here is bounded: a test that would hang panics with a message instead.

// Each test file uses its own subset of these helpers.
#![allow(dead_code)]

pub mod go_vectors;
pub mod proxy;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use batchrpc::{Client, RequestCtx, Server, ServerBuilder};

/// The longest any single test body may take before it is declared hung.
pub const TEST_LIMIT: Duration = Duration::from_secs(30);

/// Runs `body` on a thread of its own and returns its result; panics if it takes longer than
/// `limit` (the body's thread is left behind, the test fails instead of hanging). A panic in
/// the body is re-raised here with its own message.
pub fn bounded<T, F>(limit: Duration, body: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("test-body".into())
        .spawn(move || {
            let out = body();
            let _ = tx.send(());
            out
        })
        .expect("spawn test body");
    match rx.recv_timeout(limit) {
        // Finished (or panicked: the sender was dropped during unwinding).
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Ok(out) => out,
            Err(panic) => std::panic::resume_unwind(panic),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("test body did not finish within {limit:?}: it hangs")
        }
    }
}

/// [`bounded`] with the default [`TEST_LIMIT`].
pub fn run<T, F>(body: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    bounded(TEST_LIMIT, body)
}

/// Polls `cond` until it holds; panics naming `what` if it still does not after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits for a call handle to report completion, without taking its outcome.
pub fn wait_done(pending: &batchrpc::PendingCall, limit: Duration) {
    wait_until(limit, "a pending call to complete", || pending.is_done());
}

/// The echo handler: the response is the request.
pub fn echo(
    _ctx: &RequestCtx,
    req: &[u8],
    resp: &mut Vec<u8>,
) -> Result<(), batchrpc::HandlerError> {
    resp.extend_from_slice(req);
    Ok(())
}

/// A server builder with the echo handler and two workers.
pub fn echo_builder() -> ServerBuilder {
    Server::builder().workers(2).handler(echo)
}

/// An echo server on a fresh loopback port.
pub fn echo_server() -> Server {
    echo_builder()
        .bind("127.0.0.1:0")
        .expect("bind echo server")
}

/// A client of `server`'s first address, with default settings.
pub fn client_of(server: &Server) -> Client {
    Client::builder(server.local_addr())
        .connect()
        .expect("connect to test server")
}

/// A loopback address whose port was free a moment ago (bound to `:0`, then released), for
/// tests that must bind the same address again later.
pub fn free_tcp_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind :0");
    l.local_addr().expect("local addr")
}

/// Binds `builder()` on `addr`, retrying for a few seconds while the address is still in use
/// (a previous server on it may be finishing).
pub fn bind_retrying(addr: SocketAddr, builder: impl Fn() -> ServerBuilder) -> Server {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match builder().bind(addr) {
            Ok(server) => return server,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("cannot bind {addr} again: {e}"),
        }
    }
}

/// A unique path for a Unix socket in the temp dir, removed when dropped.
pub struct TempPath(PathBuf);

impl TempPath {
    pub fn new(tag: &str) -> TempPath {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("brpc-{}-{tag}-{n}-{nanos}.sock", std::process::id());
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_file(&path);
        TempPath(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `unix:<path>`, the string form of the address.
    pub fn unix_addr(&self) -> String {
        format!("unix:{}", self.0.display())
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `len` deterministic pseudo-random bytes (incompressible), different for each `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// `len` bytes of repetitive text (compresses well).
pub fn compressible_bytes(len: usize) -> Vec<u8> {
    b"the quick brown fox jumps over the lazy dog; "
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

/// A gate handlers wait at until the test opens it. Waits are bounded (10 s) so that a
/// failing test cannot leave a handler (and so a server shutdown) blocked forever.
#[derive(Clone, Default)]
pub struct Gate {
    inner: Arc<(Mutex<bool>, Condvar)>,
}

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Blocks until the gate is open (at most 10 s); returns whether it opened.
    pub fn wait(&self) -> bool {
        let (lock, cv) = &*self.inner;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut open = lock.lock().unwrap();
        while !*open {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            open = cv.wait_timeout(open, left).unwrap().0;
        }
        true
    }

    pub fn open(&self) {
        let (lock, cv) = &*self.inner;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }
}

/// Opens the gate when dropped, so that a test failing half-way still lets its handlers (and
/// its server's shutdown) finish.
pub struct OpenOnDrop(pub Gate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// Counts handler entries and exits, and remembers the most that were inside at once.
#[derive(Clone, Default)]
pub struct Occupancy {
    inner: Arc<(AtomicU64, AtomicU64, AtomicU64)>,
}

impl Occupancy {
    pub fn enter(&self) {
        let (now, max, entered) = &*self.inner;
        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
        max.fetch_max(n, Ordering::SeqCst);
        entered.fetch_add(1, Ordering::SeqCst);
    }

    pub fn exit(&self) {
        self.inner.0.fetch_sub(1, Ordering::SeqCst);
    }

    /// Inside now.
    pub fn current(&self) -> u64 {
        self.inner.0.load(Ordering::SeqCst)
    }

    /// The most inside at once.
    pub fn max(&self) -> u64 {
        self.inner.1.load(Ordering::SeqCst)
    }

    /// Entries so far.
    pub fn entered(&self) -> u64 {
        self.inner.2.load(Ordering::SeqCst)
    }
}

/// An error and its causes, as `error: cause: cause of the cause` (each text says its own
/// part only, so the chain reads once).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
