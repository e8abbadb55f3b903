//! A fault-injecting TCP proxy for tests: sits between a client and a server and, on command,
//! delays, splits, stalls, resets, half-closes or cuts the connections it carries.
//!
//! ```text
//!   client ──▶ proxy.addr() ──[c2s pump]──▶ upstream (the server)
//!          ◀──                ◀─[s2c pump]──
//! ```
//!
//! Each accepted connection gets a fresh connection to the upstream address and two pump
//! threads (one per direction) on blocking sockets. A pump reads at most [`CHUNK`] bytes,
//! applies the current [`Fault`] and writes them on: memory is bounded (one chunk per pump),
//! and a pump that cannot write stops reading, so TCP backpressure passes through.
//!
//! Faults are controlled at runtime, from any thread:
//! - [`Proxy::set_fault`]: how every chunk is forwarded from now on ([`Fault::None`],
//!   [`Fault::Delay`], [`Fault::Split`]);
//! - [`Proxy::stall`]: forward nothing, either way, for a while;
//! - [`Proxy::reset_all`]: close every connection at once, both sides, mid-stream;
//! - [`Proxy::half_close`]: end one direction of every connection (the receiver reads end of
//!   stream; the other direction keeps flowing);
//! - [`Proxy::kill_server_side`]: the server dies: the upstream connections close now (the
//!   server sees its clients vanish, bytes in transit are lost), then the client sides;
//! - [`Proxy::cut_mid_batch`]: the next chunk the server sends on each connection is forwarded
//!   only up to a random byte strictly inside it, then the connection is closed both ways (the
//!   server dies in the middle of a batch, usually in the middle of a frame);
//! - [`Proxy::silence_existing`]: the path of every open connection dies silently (a machine
//!   or route gone): from now on their bytes are dropped, either way, and nothing is closed
//!   (no FIN, no RST) until the proxy is dropped; connections accepted later flow normally;
//! - [`Proxy::set_upstream`]: later connections go to another address (a restarted server).
//!
//! Randomness (split points, cut points) comes from a seeded [`XorShift`] per pump, derived
//! from the proxy's seed, the connection's number and the direction, so a failing run can be
//! replayed with the same seed. Dropping the proxy closes everything and joins every thread.
//!
//! Closing is as abrupt as std allows: without `SO_LINGER` (unstable in std) a close sends FIN,
//! not RST; the kernel answers any later data from the peer with RST.

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most bytes a pump holds at once.
pub const CHUNK: usize = 64 << 10;
/// How often a blocked pump looks at the stop flag and the stall deadline.
const TICK: Duration = Duration::from_millis(10);

/// A tiny seeded PRNG (xorshift64*), so that failures reproduce.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        // Spread the seed (splitmix64 step); the state must not be zero.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        XorShift((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = (self.next_u64() >> 32) as u8;
        }
    }
}

/// How every chunk is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// As read, at once.
    #[default]
    None,
    /// Each chunk waits this long before it is forwarded (which also slows the stream down).
    Delay(Duration),
    /// Each chunk is written in pieces of 1..=`max_chunk` bytes at random boundaries, each its
    /// own `write()` (`TCP_NODELAY` is on, so each is its own segment), with now and then a
    /// short pause so that the receiver reads them separately.
    Split { max_chunk: usize },
}

/// Which way bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From the client to the server.
    ToServer,
    /// From the server to the client.
    ToClient,
}

/// What the proxy did, so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Client connections accepted.
    pub accepted: u64,
    /// Accepted connections whose upstream connection failed (closed at once).
    pub upstream_failures: u64,
    /// Bytes forwarded to the server.
    pub bytes_to_server: u64,
    /// Bytes forwarded to the client.
    pub bytes_to_client: u64,
    /// Connections closed by `reset_all`, `kill_server_side` or `cut_mid_batch`.
    pub killed: u64,
    /// Chunks cut short by `cut_mid_batch`.
    pub cuts: u64,
    /// `write()` calls made to forward bytes (either way).
    pub writes: u64,
    /// Connections silenced by `silence_existing`.
    pub silenced: u64,
    /// Bytes dropped on silenced connections (either way).
    pub bytes_dropped: u64,
}

/// One proxied connection: the client's socket and the server's.
struct Pair {
    n: u64,
    client: TcpStream,
    server: TcpStream,
    /// Closed by a fault or the proxy's drop: pumps stop.
    closed: AtomicBool,
    /// A direction ended by `half_close` (index: `Dir as usize`).
    ended: [AtomicBool; 2],
    /// Pumps still running.
    live: AtomicU64,
    /// `cut_mid_batch` is armed for the next server chunk.
    cut: AtomicBool,
    /// `silence_existing`: drop everything, close nothing.
    silenced: AtomicBool,
}

impl Pair {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.server.shutdown(Shutdown::Both);
        let _ = self.client.shutdown(Shutdown::Both);
    }

    fn is_done(&self) -> bool {
        self.live.load(Ordering::SeqCst) == 0
    }
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    upstream_failures: AtomicU64,
    to_server: AtomicU64,
    to_client: AtomicU64,
    killed: AtomicU64,
    cuts: AtomicU64,
    writes: AtomicU64,
    silenced: AtomicU64,
    dropped: AtomicU64,
}

struct Shared {
    seed: u64,
    upstream: Mutex<SocketAddr>,
    fault: Mutex<Fault>,
    stall_until: Mutex<Option<Instant>>,
    stop: AtomicBool,
    pairs: Mutex<Vec<Arc<Pair>>>,
    pumps: Mutex<Vec<JoinHandle<()>>>,
    counters: Counters,
}

impl Shared {
    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stalled(&self) -> bool {
        let until = *self.stall_until.lock().unwrap_or_else(|e| e.into_inner());
        until.is_some_and(|t| Instant::now() < t)
    }

    fn live_pairs(&self) -> Vec<Arc<Pair>> {
        let mut pairs = self.pairs.lock().unwrap_or_else(|e| e.into_inner());
        pairs.retain(|p| !p.is_done());
        pairs.clone()
    }
}

/// The proxy. See the [module docs](self).
pub struct Proxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// A proxy on a fresh loopback port forwarding to `upstream`, with randomness from `seed`.
    pub fn start(upstream: SocketAddr, seed: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy: bind");
        let addr = listener.local_addr().expect("proxy: local addr");
        let shared = Arc::new(Shared {
            seed,
            upstream: Mutex::new(upstream),
            fault: Mutex::new(Fault::None),
            stall_until: Mutex::new(None),
            stop: AtomicBool::new(false),
            pairs: Mutex::new(Vec::new()),
            pumps: Mutex::new(Vec::new()),
            counters: Counters::default(),
        });
        let s = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("proxy-accept".into())
            .spawn(move || accept_loop(&s, listener))
            .expect("proxy: spawn");
        Proxy {
            shared,
            addr,
            acceptor: Some(acceptor),
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted from now on go to `upstream`; open ones stay where they are.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.shared.upstream.lock().unwrap() = upstream;
    }

    /// How chunks are forwarded from now on.
    pub fn set_fault(&self, fault: Fault) {
        *self.shared.fault.lock().unwrap() = fault;
    }

    pub fn fault(&self) -> Fault {
        self.shared.fault()
    }

    /// Forwards nothing, either way, for `dur` (bytes wait in the socket buffers, then TCP
    /// backpressure holds the senders). Returns at once.
    pub fn stall(&self, dur: Duration) {
        *self.shared.stall_until.lock().unwrap() = Some(Instant::now() + dur);
    }

    /// Closes every open connection at once, both sides, whatever is in transit.
    pub fn reset_all(&self) -> usize {
        let pairs = self.shared.live_pairs();
        for p in &pairs {
            p.close();
        }
        let n = pairs.len();
        self.shared
            .counters
            .killed
            .fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Ends direction `dir` of every open connection: its receiver reads end of stream, the
    /// other direction keeps flowing.
    pub fn half_close(&self, dir: Dir) -> usize {
        let pairs = self.shared.live_pairs();
        for p in &pairs {
            p.ended[dir as usize].store(true, Ordering::SeqCst);
            let to = match dir {
                Dir::ToServer => &p.server,
                Dir::ToClient => &p.client,
            };
            let _ = to.shutdown(Shutdown::Write);
        }
        pairs.len()
    }

    /// The server dies: every upstream connection closes now, then its client side.
    pub fn kill_server_side(&self) -> usize {
        let pairs = self.shared.live_pairs();
        for p in &pairs {
            p.closed.store(true, Ordering::SeqCst);
            let _ = p.server.shutdown(Shutdown::Both);
        }
        for p in &pairs {
            let _ = p.client.shutdown(Shutdown::Both);
        }
        self.shared
            .counters
            .killed
            .fetch_add(pairs.len() as u64, Ordering::Relaxed);
        pairs.len()
    }

    /// Arms every open connection: the next chunk from the server is forwarded only up to a
    /// random byte strictly inside it, then the connection closes both ways.
    pub fn cut_mid_batch(&self) -> usize {
        let pairs = self.shared.live_pairs();
        for p in &pairs {
            p.cut.store(true, Ordering::SeqCst);
        }
        pairs.len()
    }

    /// Every open connection goes silent for good: the bytes either side sends are read and
    /// dropped, and neither side is closed, not even when the other closes its end (no FIN,
    /// no RST) — as when a route or a machine disappears. Connections accepted later flow
    /// normally. Returns how many were silenced.
    pub fn silence_existing(&self) -> usize {
        let pairs = self.shared.live_pairs();
        for p in &pairs {
            p.silenced.store(true, Ordering::SeqCst);
        }
        self.shared
            .counters
            .silenced
            .fetch_add(pairs.len() as u64, Ordering::Relaxed);
        pairs.len()
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.live_pairs().len()
    }

    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        ProxyStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            upstream_failures: c.upstream_failures.load(Ordering::Relaxed),
            bytes_to_server: c.to_server.load(Ordering::Relaxed),
            bytes_to_client: c.to_client.load(Ordering::Relaxed),
            killed: c.killed.load(Ordering::Relaxed),
            cuts: c.cuts.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            silenced: c.silenced.load(Ordering::Relaxed),
            bytes_dropped: c.dropped.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor, blocked in accept().
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        for p in self
            .shared
            .pairs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            p.close();
        }
        let pumps =
            std::mem::take(&mut *self.shared.pumps.lock().unwrap_or_else(|e| e.into_inner()));
        for t in pumps {
            let _ = t.join();
        }
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: TcpListener) {
    let mut n = 0u64;
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else {
            std::thread::sleep(TICK); // out of descriptors, say: try again later
            continue;
        };
        n += 1;
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let upstream = *shared.upstream.lock().unwrap_or_else(|e| e.into_inner());
        let server = match TcpStream::connect_timeout(&upstream, Duration::from_secs(2)) {
            Ok(s) => s,
            Err(_) => {
                shared
                    .counters
                    .upstream_failures
                    .fetch_add(1, Ordering::Relaxed);
                let _ = client.shutdown(Shutdown::Both);
                continue; // dropping `client` closes it
            }
        };
        if let Err(e) = start_pair(shared, n, client, server) {
            eprintln!("proxy: cannot start connection {n}: {e}");
        }
    }
}

fn start_pair(
    shared: &Arc<Shared>,
    n: u64,
    client: TcpStream,
    server: TcpStream,
) -> std::io::Result<()> {
    for s in [&client, &server] {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(TICK))?;
        s.set_write_timeout(Some(TICK))?;
    }
    let pair = Arc::new(Pair {
        n,
        client,
        server,
        closed: AtomicBool::new(false),
        ended: [AtomicBool::new(false), AtomicBool::new(false)],
        live: AtomicU64::new(2),
        cut: AtomicBool::new(false),
        silenced: AtomicBool::new(false),
    });
    let mut pumps = shared.pumps.lock().unwrap_or_else(|e| e.into_inner());
    pumps.retain(|t| !t.is_finished());
    for dir in [Dir::ToServer, Dir::ToClient] {
        let (s, p) = (shared.clone(), pair.clone());
        let seed = shared.seed ^ n.wrapping_mul(0x1000_0000_01b3) ^ ((dir as u64 + 1) << 56);
        let name = format!("proxy-{n}-{dir:?}");
        match std::thread::Builder::new()
            .name(name)
            .spawn(move || pump(&s, &p, dir, XorShift::new(seed)))
        {
            Ok(t) => pumps.push(t),
            Err(e) => {
                pair.close();
                pair.live.fetch_sub(1, Ordering::SeqCst);
                return Err(e);
            }
        }
    }
    drop(pumps);
    let mut pairs = shared.pairs.lock().unwrap_or_else(|e| e.into_inner());
    pairs.retain(|p| !p.is_done()); // let go of the sockets of finished connections
    pairs.push(pair);
    Ok(())
}

/// Why a pump stopped.
enum End {
    /// The source ended its stream (or `half_close` ended this direction).
    Eof,
    /// A socket failed, or a fault or the proxy closed the connection.
    Broken,
}

fn pump(shared: &Shared, pair: &Pair, dir: Dir, mut rng: XorShift) {
    let (from, to) = match dir {
        Dir::ToServer => (&pair.client, &pair.server),
        Dir::ToClient => (&pair.server, &pair.client),
    };
    let end = pump_loop(shared, pair, dir, from, to, &mut rng);
    match end {
        End::Eof => {
            let _ = to.shutdown(Shutdown::Write);
        }
        End::Broken => pair.close(),
    }
    pair.live.fetch_sub(1, Ordering::SeqCst);
}

fn pump_loop(
    shared: &Shared,
    pair: &Pair,
    dir: Dir,
    from: &TcpStream,
    to: &TcpStream,
    rng: &mut XorShift,
) -> End {
    let mut buf = vec![0u8; CHUNK];
    let counter = match dir {
        Dir::ToServer => &shared.counters.to_server,
        Dir::ToClient => &shared.counters.to_client,
    };
    loop {
        if shared.stop.load(Ordering::SeqCst) || pair.closed.load(Ordering::SeqCst) {
            return End::Broken;
        }
        if pair.ended[dir as usize].load(Ordering::SeqCst) {
            return End::Eof;
        }
        if pair.silenced.load(Ordering::SeqCst) {
            return black_hole(shared, pair, from, &mut buf);
        }
        if shared.stalled() {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let n = match (&*from).read(&mut buf) {
            Ok(0) => return End::Eof,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return End::Broken,
        };
        if pair.silenced.load(Ordering::SeqCst) {
            // Silenced while this read was under way: what it brought is lost too.
            shared
                .counters
                .dropped
                .fetch_add(n as u64, Ordering::Relaxed);
            return black_hole(shared, pair, from, &mut buf);
        }
        let mut chunk = &buf[..n];
        let mut cut_here = false;
        if dir == Dir::ToClient && pair.cut.swap(false, Ordering::SeqCst) {
            // Strictly inside the chunk: at least one byte goes, at least one stays behind.
            let keep = if n >= 2 {
                rng.range(1, n as u64 - 1)
            } else {
                0
            };
            chunk = &chunk[..keep as usize];
            cut_here = true;
        }
        let written = match shared.fault() {
            Fault::None => write_all(shared, pair, to, chunk),
            Fault::Delay(d) => {
                sleep_unless_closed(shared, pair, d);
                write_all(shared, pair, to, chunk)
            }
            Fault::Split { max_chunk } => write_split(shared, pair, to, chunk, max_chunk, rng),
        };
        counter.fetch_add(written as u64, Ordering::Relaxed);
        if cut_here {
            shared.counters.cuts.fetch_add(1, Ordering::Relaxed);
            shared.counters.killed.fetch_add(1, Ordering::Relaxed);
            return End::Broken;
        }
        if written < chunk.len() {
            if pair.ended[dir as usize].load(Ordering::SeqCst) {
                return End::Eof;
            }
            return End::Broken;
        }
    }
}

/// A silenced direction: reads and drops what comes until the proxy stops, and closes
/// nothing meanwhile, even after its source ended its stream or failed.
fn black_hole(shared: &Shared, pair: &Pair, from: &TcpStream, buf: &mut [u8]) -> End {
    let mut source_open = true;
    while !(shared.stop.load(Ordering::SeqCst) || pair.closed.load(Ordering::SeqCst)) {
        if !source_open {
            std::thread::sleep(TICK);
            continue;
        }
        match (&*from).read(buf) {
            Ok(0) => source_open = false,
            Ok(n) => {
                shared
                    .counters
                    .dropped
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => source_open = false,
        }
    }
    End::Broken
}

fn sleep_unless_closed(shared: &Shared, pair: &Pair, d: Duration) {
    let until = Instant::now() + d;
    loop {
        let now = Instant::now();
        if now >= until || shared.stop.load(Ordering::SeqCst) || pair.closed.load(Ordering::SeqCst)
        {
            return;
        }
        std::thread::sleep((until - now).min(TICK));
    }
}

/// Writes `chunk` in random pieces; returns how much was written.
fn write_split(
    shared: &Shared,
    pair: &Pair,
    to: &TcpStream,
    chunk: &[u8],
    max_chunk: usize,
    rng: &mut XorShift,
) -> usize {
    let max_chunk = max_chunk.max(1) as u64;
    let mut off = 0;
    while off < chunk.len() {
        let piece = rng.range(1, max_chunk).min((chunk.len() - off) as u64) as usize;
        let w = write_all(shared, pair, to, &chunk[off..off + piece]);
        off += w;
        if w < piece {
            break;
        }
        if rng.chance(1, 16) {
            // Let the receiver read what came so far on its own.
            std::thread::sleep(Duration::from_micros(rng.range(20, 200)));
        }
    }
    off
}

/// Writes all of `bytes` unless the connection breaks; returns how much was written. Writes
/// time out every tick, so that a pump blocked on a peer that does not read still notices
/// the proxy stopping.
fn write_all(shared: &Shared, pair: &Pair, mut to: &TcpStream, bytes: &[u8]) -> usize {
    let mut off = 0;
    while off < bytes.len() {
        match to.write(&bytes[off..]) {
            Ok(0) => return off,
            Ok(n) => {
                shared.counters.writes.fetch_add(1, Ordering::Relaxed);
                off += n;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if shared.stop.load(Ordering::SeqCst) || pair.closed.load(Ordering::SeqCst) {
                    return off;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return off,
        }
    }
    off
}
