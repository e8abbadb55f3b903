//! A soak test: clients and a server under random load and injected faults, for a given time,
//! checking that every call completes exactly once with its own answer.
//!
//! ```sh
//! cargo run --release --example soak -- --duration 60s --seed 42
//! ```
//!
//! Several clients (each with its own compression, connection count and batch delay) call
//! through a fault-injecting proxy (`tests/support/proxy.rs`) to an echo server that answers
//! with the request reversed, so that a response delivered to the wrong call is caught. Caller
//! threads mix blocking calls, `call_async` windows, batches, fire-and-forget sends, calls
//! canceled by dropping them and calls with short deadlines; payloads are 0 B to 512 KiB,
//! random or repetitive. Meanwhile a fault thread, at random times, splits every write at
//! random byte boundaries, delays, stalls, resets, half-closes either direction, kills the
//! server side, cuts a batch in the middle, and restarts the server (gracefully, sometimes
//! after a pause, with another compression).
//!
//! It prints the calls made, completed, failed by kind, lost (made but never completed: must
//! be 0), duplicated (an answer delivered twice, or completions counted twice: must be 0),
//! misdelivered (an answer to another call: must be 0), executed twice at the server (must be
//! 0) and the peak memory (VmHWM), and exits with status 1 if any must-be-zero figure is not.
//!
//! Flags (`--help` lists them): `--duration 60s` (default; also `500ms`, `10m`, or plain
//! seconds), `--seed N` (default: from the clock; printed, so a run can be replayed),
//! `--clients N` (4), `--callers N` (3 caller threads per client), `--max-payload 512k` (the
//! largest request body), `--quiet`.
//!
//! `tests/soak.rs` runs the same engine for 10 seconds inside `cargo test`.

#[path = "../tests/support/proxy.rs"]
mod proxy;
mod support;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use batchrpc::{Client, Compression, Error, RequestCtx, Server};
use proxy::{Dir, Fault, Proxy, XorShift};

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    pub duration: Duration,
    pub seed: u64,
    pub clients: usize,
    pub callers_per_client: usize,
    /// Largest request body; 70% of calls are under 1 KiB, 25% under an eighth of this.
    pub max_payload: usize,
    /// Print a progress line every few seconds.
    pub progress: bool,
}

impl Default for SoakConfig {
    fn default() -> Self {
        SoakConfig {
            duration: Duration::from_secs(60),
            seed: 1,
            clients: 4,
            callers_per_client: 3,
            max_payload: 512 << 10,
            progress: true,
        }
    }
}

/// What happened.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    pub duration: Duration,
    pub seed: u64,
    /// Calls submitted (or attempted: a call refused at submission counts, and fails).
    pub made: u64,
    /// Answered with the expected response.
    pub ok: u64,
    /// Failed with the handler error the request asked for (op "fail").
    pub expected_errors: u64,
    /// Canceled by dropping the call handle (their outcome is not observed).
    pub canceled_by_drop: u64,
    /// Fire-and-forget sends queued.
    pub sent: u64,
    /// Failed, by error kind.
    pub failed: BTreeMap<&'static str, u64>,
    /// Made but never completed. Must be 0.
    pub lost: u64,
    /// Answers delivered a second time (to another call), plus completions the clients counted
    /// beyond the calls made. Must be 0.
    pub duplicated: u64,
    /// Answers that belong to no call made. Must be 0.
    pub misdelivered: u64,
    /// Requests the server ran twice. Must be 0.
    pub executed_twice: u64,
    /// Unexpected outcomes, described (at most a few kept).
    pub anomalies: Vec<String>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Calls after the faults stopped that must all succeed, and how many did.
    pub final_calls: (u64, u64),
    /// Client connections dialed, over all clients.
    pub dials: u64,
    /// Slots (of `max_pending_requests`) still taken in the clients once every call has
    /// completed. Should be 0: a timed-out call keeps its slot only until its late answer
    /// comes or its connection closes (`tests/robustness.rs`,
    /// `timed_out_calls_give_their_slots_back_when_the_connection_closes`). Reported, not
    /// failed on.
    pub held_slots: u64,
    /// Server connections closed for a protocol violation (truncated frames after a cut...).
    pub server_protocol_errors: u64,
    /// Peak resident memory of the process (VmHWM), KiB.
    pub peak_rss_kib: u64,
    /// Largest resident memory seen while running (VmRSS sampled), KiB.
    pub max_sampled_rss_kib: u64,
}

impl SoakReport {
    pub fn completed(&self) -> u64 {
        self.ok
            + self.expected_errors
            + self.canceled_by_drop
            + self.sent
            + self.failed.values().sum::<u64>()
    }

    /// Every must-be-zero figure is zero, every call is accounted for, and the service
    /// recovered once the faults stopped.
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.misdelivered == 0
            && self.executed_twice == 0
            && self.anomalies.is_empty()
            && self.completed() + self.lost == self.made
            && self.final_calls.0 == self.final_calls.1
    }
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.duration.as_secs_f64();
        writeln!(f, "soak: {secs:.1} s, seed {}", self.seed)?;
        writeln!(
            f,
            "  calls made       {:>10}  ({:.0}/s)",
            self.made,
            self.made as f64 / secs.max(0.001)
        )?;
        writeln!(f, "  completed        {:>10}", self.completed())?;
        writeln!(f, "    ok             {:>10}", self.ok)?;
        writeln!(
            f,
            "    handler errors {:>10}  (asked for)",
            self.expected_errors
        )?;
        writeln!(f, "    sends          {:>10}", self.sent)?;
        writeln!(
            f,
            "    canceled       {:>10}  (handle dropped)",
            self.canceled_by_drop
        )?;
        let failed: u64 = self.failed.values().sum();
        writeln!(f, "    failed         {failed:>10}")?;
        for (kind, n) in &self.failed {
            writeln!(f, "      {kind:<14} {n:>8}")?;
        }
        writeln!(f, "  lost             {:>10}  (must be 0)", self.lost)?;
        writeln!(f, "  duplicated       {:>10}  (must be 0)", self.duplicated)?;
        writeln!(
            f,
            "  misdelivered     {:>10}  (must be 0)",
            self.misdelivered
        )?;
        writeln!(
            f,
            "  executed twice   {:>10}  (must be 0)",
            self.executed_twice
        )?;
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(f, "  faults           {}", faults.join(", "))?;
        writeln!(
            f,
            "  dials {}, server protocol errors {}",
            self.dials, self.server_protocol_errors
        )?;
        writeln!(
            f,
            "  slots held after the run {:>4}  (should be 0: timed-out calls whose connection closed)",
            self.held_slots
        )?;
        writeln!(
            f,
            "  after the faults {}/{} calls ok",
            self.final_calls.1, self.final_calls.0
        )?;
        writeln!(
            f,
            "  peak memory      VmHWM {:.1} MiB (max sampled VmRSS {:.1} MiB)",
            self.peak_rss_kib as f64 / 1024.0,
            self.max_sampled_rss_kib as f64 / 1024.0
        )?;
        for a in &self.anomalies {
            writeln!(f, "  ANOMALY: {a}")?;
        }
        write!(
            f,
            "  result: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

// ----- requests and answers -----------------------------------------------------------------

/// Request layout: call id (u64 LE) | op (u8) | body. The answer is the request reversed.
const OP_ECHO: u8 = 0;
/// The handler fails with `fail <id>`.
const OP_FAIL: u8 = 1;
/// The handler sleeps (1..=20 ms, from the body's first byte) before answering.
const OP_SLOW: u8 = 2;
const HEAD: usize = 9;

fn call_id(caller: usize, seq: u64) -> u64 {
    ((caller as u64) << 40) | seq
}

fn split_id(id: u64) -> (usize, u64) {
    ((id >> 40) as usize, id & ((1 << 40) - 1))
}

fn is_reverse_of(resp: &[u8], req: &[u8]) -> bool {
    resp.len() == req.len() && resp.iter().zip(req.iter().rev()).all(|(a, b)| a == b)
}

/// The call id an answer carries (the request's id, reversed at the end), if it is long enough.
fn id_in_answer(resp: &[u8]) -> Option<u64> {
    let tail = resp.get(resp.len().checked_sub(8)?..)?;
    let mut id = [0u8; 8];
    for (i, b) in tail.iter().rev().enumerate() {
        id[i] = *b;
    }
    Some(u64::from_le_bytes(id))
}

/// A growable bitmap of call sequence numbers.
#[derive(Default)]
struct Bits(Vec<u64>);

impl Bits {
    /// Sets bit `i`; returns whether it was already set.
    fn set(&mut self, i: u64) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        if self.0.len() <= w {
            self.0.resize(w + 1, 0);
        }
        let was = self.0[w] & (1 << b) != 0;
        self.0[w] |= 1 << b;
        was
    }

    fn get(&self, i: u64) -> bool {
        self.0
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

/// One caller thread's books, shared with the server (which marks executions) and with the
/// other callers (which look up the owner of a stray answer).
#[derive(Default)]
struct Tally {
    made: AtomicU64,
    completed: Mutex<Bits>,
    executed: Mutex<Bits>,
}

struct Books {
    tallies: Vec<Tally>,
    executed_twice: AtomicU64,
    anomalies: Mutex<Vec<String>>,
}

impl Books {
    fn anomaly(&self, what: String) {
        let mut a = self.anomalies.lock().unwrap();
        if a.len() < 20 {
            a.push(what);
        }
    }
}

/// Per-caller results, summed at the end.
#[derive(Default)]
struct Outcomes {
    ok: u64,
    expected_errors: u64,
    canceled_by_drop: u64,
    sent: u64,
    failed: BTreeMap<&'static str, u64>,
    duplicated: u64,
    misdelivered: u64,
}

/// The calls a client counted: successes and failures.
fn counted_calls(s: &batchrpc::Stats) -> u64 {
    s.calls + s.errors.failed_calls()
}

// ----- the server ---------------------------------------------------------------------------

fn server_builder(books: &Arc<Books>, compression: Compression) -> batchrpc::ServerBuilder {
    let books = books.clone();
    Server::builder()
        .workers(2)
        .compression(compression)
        .handler(move |_: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
            if req.len() < HEAD {
                return Err(format!("short request of {} bytes", req.len()).into());
            }
            let id = u64::from_le_bytes(req[..8].try_into().unwrap());
            let (caller, seq) = split_id(id);
            match books.tallies.get(caller) {
                Some(t) => {
                    if t.executed.lock().unwrap().set(seq) {
                        books.executed_twice.fetch_add(1, Ordering::Relaxed);
                        books.anomaly(format!("call {caller}/{seq} executed twice"));
                    }
                }
                None => books.anomaly(format!("request with unknown caller id {id:#x}")),
            }
            match req[8] {
                OP_FAIL => return Err(format!("fail {id}").into()),
                OP_SLOW => {
                    let ms = 1 + u64::from(req.get(HEAD).copied().unwrap_or(0) % 20);
                    std::thread::sleep(Duration::from_millis(ms));
                }
                _ => {}
            }
            resp.extend(req.iter().rev());
            Ok(())
        })
}

fn random_compression(rng: &mut XorShift) -> Compression {
    let available: Vec<Compression> = [Compression::None, Compression::Flate, Compression::Snappy]
        .into_iter()
        .filter(|c| c.is_available())
        .collect();
    available[rng.below(available.len() as u64) as usize]
}

/// The server behind the proxy, restarted by the fault thread.
struct ServerSlot {
    books: Arc<Books>,
    server: Mutex<Option<Server>>,
    protocol_errors: AtomicU64,
}

impl ServerSlot {
    fn start(&self, compression: Compression) -> std::net::SocketAddr {
        let server = server_builder(&self.books, compression)
            .bind("127.0.0.1:0")
            .expect("soak: bind server");
        let addr = server.local_addr().as_tcp().expect("tcp address");
        *self.server.lock().unwrap() = Some(server);
        addr
    }

    /// Graceful shutdown: stop accepting, answer what was read, close.
    fn stop(&self) {
        let server = self.server.lock().unwrap().take();
        if let Some(server) = server {
            server.shutdown();
            self.protocol_errors
                .fetch_add(server.stats().errors.protocol, Ordering::Relaxed);
        }
    }
}

// ----- the callers --------------------------------------------------------------------------

/// Payload sources: random bytes (incompressible) and repeated text, sliced at random.
struct Pools {
    random: Vec<u8>,
    text: Vec<u8>,
    max_payload: usize,
}

const POOL: usize = 1 << 20;

impl Pools {
    fn new(seed: u64, max_payload: usize) -> Pools {
        let mut rng = XorShift::new(seed);
        let mut random = vec![0u8; POOL];
        rng.fill(&mut random);
        let text = b"batchrpc soak: the quick brown fox jumps over the lazy dog 0123456789; "
            .iter()
            .copied()
            .cycle()
            .take(POOL)
            .collect();
        Pools {
            random,
            text,
            max_payload: max_payload.clamp(1024, POOL),
        }
    }

    /// Writes a request for call `id` with operation `op` into `out`.
    fn request(&self, rng: &mut XorShift, id: u64, op: u8, out: &mut Vec<u8>) {
        let max = self.max_payload as u64;
        let len = match rng.below(100) {
            0..=69 => rng.below(1024),
            70..=94 => rng.range(1024, (max / 8).max(1024)),
            _ => rng.range(max / 8, max),
        } as usize;
        let pool = if rng.chance(1, 2) {
            &self.random
        } else {
            &self.text
        };
        let at = rng.below((POOL - len) as u64 + 1) as usize;
        out.clear();
        out.extend_from_slice(&id.to_le_bytes());
        out.push(op);
        out.extend_from_slice(&pool[at..at + len]);
    }
}

struct Caller {
    index: usize,
    client: Client,
    books: Arc<Books>,
    pools: Arc<Pools>,
    rng: XorShift,
    out: Outcomes,
    seq: u64,
}

impl Caller {
    fn tally(&self) -> &Tally {
        &self.books.tallies[self.index]
    }

    fn next_request(&mut self, op: u8, req: &mut Vec<u8>) -> u64 {
        let seq = self.seq;
        self.seq += 1;
        self.tally().made.fetch_add(1, Ordering::SeqCst);
        let id = call_id(self.index, seq);
        self.pools.request(&mut self.rng, id, op, req);
        seq
    }

    fn random_op(&mut self) -> u8 {
        match self.rng.below(100) {
            0..=3 => OP_FAIL,
            4..=7 => OP_SLOW,
            _ => OP_ECHO,
        }
    }

    /// Marks call `seq` completed (it must not have been before).
    fn complete(&mut self, seq: u64) {
        if self.tally().completed.lock().unwrap().set(seq) {
            self.out.duplicated += 1;
            self.books
                .anomaly(format!("call {}/{seq} completed twice", self.index));
        }
    }

    /// Checks and counts the outcome of call `seq` whose request was `req`.
    fn settle(&mut self, seq: u64, req: &[u8], outcome: Result<&[u8], &Error>) {
        let op = req[8];
        match outcome {
            Ok(resp) if op != OP_FAIL && is_reverse_of(resp, req) => self.out.ok += 1,
            Ok(resp) => self.stray(seq, req, resp),
            Err(Error::Server(text)) if op == OP_FAIL => {
                let id = call_id(self.index, seq);
                if *text == format!("fail {id}") {
                    self.out.expected_errors += 1;
                } else {
                    self.out.misdelivered += 1;
                    self.books.anomaly(format!(
                        "call {}/{seq} failed with another call's error: {text:?}",
                        self.index
                    ));
                }
            }
            Err(e) => {
                if matches!(e, Error::Server(_)) {
                    self.books.anomaly(format!(
                        "call {}/{seq}: unexpected {}",
                        self.index,
                        support::Chain(e)
                    ));
                }
                *self.out.failed.entry(e.kind()).or_default() += 1;
            }
        }
        self.complete(seq);
    }

    /// An answer that is not the reverse of its request: whose is it?
    fn stray(&mut self, seq: u64, req: &[u8], resp: &[u8]) {
        let owner = id_in_answer(resp).map(split_id);
        let already = owner.is_some_and(|(c, s)| {
            self.books
                .tallies
                .get(c)
                .is_some_and(|t| t.completed.lock().unwrap().get(s))
        });
        if already {
            self.out.duplicated += 1;
        } else {
            self.out.misdelivered += 1;
        }
        self.books.anomaly(format!(
            "call {}/{seq} ({} B request, op {}) got a {} B answer carrying id {owner:?}{}",
            self.index,
            req.len(),
            req[8],
            resp.len(),
            if already { " (already completed)" } else { "" }
        ));
    }

    fn run(mut self, stop: &AtomicBool) -> Outcomes {
        let mut reqs: Vec<Vec<u8>> = Vec::new();
        let mut req = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            // Keep no large buffers between calls: the memory figures are the library's (and
            // what is in flight), not this loop's.
            reqs.clear();
            if req.capacity() > 64 << 10 {
                req = Vec::new();
            }
            match self.rng.below(100) {
                0..=39 => {
                    let op = self.random_op();
                    let seq = self.next_request(op, &mut req);
                    match self.client.call(&req) {
                        Ok(resp) => self.settle(seq, &req, Ok(&resp)),
                        Err(e) => self.settle(seq, &req, Err(&e)),
                    }
                }
                40..=69 => self.window(&mut reqs),
                70..=84 => self.batch(&mut reqs),
                85..=89 => {
                    let seq = self.next_request(OP_ECHO, &mut req);
                    match self.client.send(&req) {
                        Ok(()) => {
                            self.out.sent += 1;
                            self.complete(seq);
                        }
                        Err(e) => self.settle(seq, &req, Err(&e)),
                    }
                }
                90..=94 => {
                    let op = self.random_op();
                    let seq = self.next_request(op, &mut req);
                    match self.client.call_async(&req) {
                        Ok(pending) => {
                            if self.rng.chance(1, 2) {
                                std::thread::sleep(Duration::from_micros(self.rng.below(500)));
                            }
                            drop(pending);
                            self.out.canceled_by_drop += 1;
                            self.complete(seq);
                        }
                        Err(e) => self.settle(seq, &req, Err(&e)),
                    }
                }
                _ => {
                    let seq = self.next_request(OP_SLOW, &mut req);
                    let timeout = Duration::from_millis(self.rng.range(1, 30));
                    match self.client.call_timeout(&req, timeout) {
                        Ok(resp) => self.settle(seq, &req, Ok(&resp)),
                        Err(e) => self.settle(seq, &req, Err(&e)),
                    }
                }
            }
        }
        self.out
    }

    fn window(&mut self, reqs: &mut Vec<Vec<u8>>) {
        let k = self.rng.range(1, 16) as usize;
        reqs.resize_with(k, Vec::new);
        let mut pending = Vec::with_capacity(k);
        for (i, slot) in reqs.iter_mut().enumerate() {
            let op = self.random_op();
            let mut req = std::mem::take(slot);
            let seq = self.next_request(op, &mut req);
            match self.client.call_async(&req) {
                Ok(p) => pending.push((seq, i, p)),
                Err(e) => self.settle(seq, &req, Err(&e)),
            }
            *slot = req;
        }
        // Poll some with try_wait, wait for the rest.
        if self.rng.chance(1, 3) {
            let until = Instant::now() + Duration::from_millis(5);
            while Instant::now() < until {
                let mut i = 0;
                while i < pending.len() {
                    let outcome = pending[i].2.try_wait();
                    match outcome {
                        Some(outcome) => {
                            let (seq, r, _) = pending.swap_remove(i);
                            let req = std::mem::take(&mut reqs[r]);
                            match outcome {
                                Ok(resp) => self.settle(seq, &req, Ok(&resp)),
                                Err(e) => self.settle(seq, &req, Err(&e)),
                            }
                            reqs[r] = req;
                        }
                        None => i += 1,
                    }
                }
                std::thread::yield_now();
            }
        }
        for (seq, r, p) in pending {
            let req = std::mem::take(&mut reqs[r]);
            match p.wait() {
                Ok(resp) => self.settle(seq, &req, Ok(&resp)),
                Err(e) => self.settle(seq, &req, Err(&e)),
            }
            reqs[r] = req;
        }
    }

    fn batch(&mut self, reqs: &mut Vec<Vec<u8>>) {
        let k = self.rng.range(1, 32) as usize;
        reqs.resize_with(k, Vec::new);
        let mut batch = self.client.batch();
        let mut added = Vec::with_capacity(k);
        for (i, slot) in reqs.iter_mut().enumerate() {
            let op = self.random_op();
            let mut req = std::mem::take(slot);
            let seq = self.next_request(op, &mut req);
            match batch.add(&req) {
                Ok(()) => added.push((seq, i)),
                Err(e) => self.settle(seq, &req, Err(&e)),
            }
            *slot = req;
        }
        let results = batch.call();
        for ((seq, r), outcome) in added.into_iter().zip(results) {
            let req = std::mem::take(&mut reqs[r]);
            match outcome {
                Ok(resp) => self.settle(seq, &req, Ok(&resp)),
                Err(e) => self.settle(seq, &req, Err(&e)),
            }
            reqs[r] = req;
        }
    }
}

// ----- faults -------------------------------------------------------------------------------

fn inject_faults(
    proxy: &Proxy,
    slot: &ServerSlot,
    stop: &AtomicBool,
    seed: u64,
) -> BTreeMap<&'static str, u64> {
    let mut rng = XorShift::new(seed ^ 0xfa17);
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut persistent_until: Option<Instant> = None;
    let sleep = |d: Duration| {
        let until = Instant::now() + d;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    // A quiet start, so that every client connects.
    sleep(Duration::from_millis(200));
    while !stop.load(Ordering::Relaxed) {
        sleep(Duration::from_millis(rng.range(100, 900)));
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if persistent_until.is_some_and(|t| Instant::now() >= t) {
            proxy.set_fault(Fault::None);
            persistent_until = None;
        }
        let kind = match rng.below(11) {
            0 | 1 => {
                let max_chunk = match rng.below(3) {
                    0 => rng.range(1, 16),
                    1 => rng.range(1, 512),
                    _ => rng.range(1, 8192),
                } as usize;
                proxy.set_fault(Fault::Split { max_chunk });
                persistent_until =
                    Some(Instant::now() + Duration::from_millis(rng.range(200, 1500)));
                "split"
            }
            2 => {
                proxy.set_fault(Fault::Delay(Duration::from_millis(rng.range(1, 30))));
                persistent_until =
                    Some(Instant::now() + Duration::from_millis(rng.range(200, 1500)));
                "delay"
            }
            3 => {
                proxy.stall(Duration::from_millis(rng.range(20, 600)));
                "stall"
            }
            4 => {
                proxy.reset_all();
                "reset"
            }
            5 => {
                proxy.half_close(Dir::ToClient);
                "half_close_to_client"
            }
            6 => {
                proxy.half_close(Dir::ToServer);
                "half_close_to_server"
            }
            7 => {
                proxy.kill_server_side();
                "kill_server_side"
            }
            8 => {
                proxy.cut_mid_batch();
                "cut_mid_batch"
            }
            9 => {
                slot.stop();
                let addr = slot.start(random_compression(&mut rng));
                proxy.set_upstream(addr);
                "restart"
            }
            _ => {
                slot.stop();
                sleep(Duration::from_millis(rng.range(50, 500)));
                let addr = slot.start(random_compression(&mut rng));
                proxy.set_upstream(addr);
                "restart_after_pause"
            }
        };
        *counts.entry(kind).or_default() += 1;
    }
    proxy.set_fault(Fault::None);
    counts
}

// ----- memory -------------------------------------------------------------------------------

/// A field of /proc/self/status in KiB (VmRSS, VmHWM), 0 where there is no /proc.
pub fn proc_status_kib(field: &str) -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

// ----- the run ------------------------------------------------------------------------------

/// Runs the soak and returns what happened. Never hangs: callers that do not come back within
/// the longest call deadline (plus a margin) are counted lost and left behind.
pub fn run_soak(cfg: &SoakConfig) -> SoakReport {
    let started = Instant::now();
    let mut rng = XorShift::new(cfg.seed);
    let ncallers = cfg.clients * cfg.callers_per_client;
    // One tally per caller thread, and one for the final calls.
    let books = Arc::new(Books {
        tallies: (0..=ncallers).map(|_| Tally::default()).collect(),
        executed_twice: AtomicU64::new(0),
        anomalies: Mutex::new(Vec::new()),
    });
    let slot = Arc::new(ServerSlot {
        books: books.clone(),
        server: Mutex::new(None),
        protocol_errors: AtomicU64::new(0),
    });
    let upstream = slot.start(random_compression(&mut rng));
    let proxy = Arc::new(Proxy::start(upstream, cfg.seed));
    let pools = Arc::new(Pools::new(cfg.seed, cfg.max_payload));
    let request_timeout = Duration::from_secs(3);

    let clients: Vec<Client> = (0..cfg.clients)
        .map(|_| {
            let compression = random_compression(&mut rng);
            let delay = if rng.chance(1, 3) {
                Duration::from_micros(rng.range(50, 2000))
            } else {
                Duration::ZERO
            };
            Client::builder(proxy.addr())
                .conns(rng.range(1, 3) as usize)
                .compression(compression)
                .max_batch_delay(delay)
                .max_pending_requests(256)
                .request_timeout(request_timeout)
                .reconnect_backoff(Duration::from_millis(5), Duration::from_millis(200))
                .connect()
                .expect("soak: connect")
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..ncallers)
        .map(|index| {
            let caller = Caller {
                index,
                client: clients[index % cfg.clients].clone(),
                books: books.clone(),
                pools: pools.clone(),
                rng: XorShift::new(cfg.seed ^ (index as u64 + 1).wrapping_mul(0x5851_f42d)),
                out: Outcomes::default(),
                seq: 0,
            };
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("soak-caller-{index}"))
                .spawn(move || caller.run(&stop))
                .expect("spawn caller")
        })
        .collect();
    let faults_stop = Arc::new(AtomicBool::new(false));
    let fault_thread = {
        let (proxy, slot, fstop, seed) =
            (proxy.clone(), slot.clone(), faults_stop.clone(), cfg.seed);
        std::thread::Builder::new()
            .name("soak-faults".into())
            .spawn(move || inject_faults(&proxy, &slot, &fstop, seed))
            .expect("spawn fault thread")
    };

    // Run, sampling memory.
    let mut max_rss = 0;
    let mut last_progress = Instant::now();
    while started.elapsed() < cfg.duration {
        std::thread::sleep(Duration::from_millis(50));
        max_rss = max_rss.max(proc_status_kib("VmRSS"));
        if cfg.progress && last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            let made: u64 = books
                .tallies
                .iter()
                .map(|t| t.made.load(Ordering::Relaxed))
                .sum();
            eprintln!(
                "  {:>5.1} s: {made} calls made, VmRSS {:.1} MiB",
                started.elapsed().as_secs_f64(),
                proc_status_kib("VmRSS") as f64 / 1024.0
            );
        }
    }
    let run_time = started.elapsed();

    // Stop the faults first, then the callers.
    faults_stop.store(true, Ordering::SeqCst);
    let faults = fault_thread.join().expect("fault thread");
    if slot.server.lock().unwrap().is_none() {
        proxy.set_upstream(slot.start(Compression::None));
    }
    stop.store(true, Ordering::SeqCst);
    // A caller is at most one call (or window, or batch) from its loop test: one deadline.
    let give_up = Instant::now() + request_timeout + Duration::from_secs(5);
    while callers.iter().any(|c| !c.is_finished()) && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut report = SoakReport {
        duration: run_time,
        seed: cfg.seed,
        faults,
        ..SoakReport::default()
    };
    for c in callers {
        if !c.is_finished() {
            report
                .anomalies
                .push(format!("{:?} did not come back", c.thread().name()));
            continue; // its calls count as lost below
        }
        let out = c.join().expect("caller thread");
        report.ok += out.ok;
        report.expected_errors += out.expected_errors;
        report.canceled_by_drop += out.canceled_by_drop;
        report.sent += out.sent;
        report.duplicated += out.duplicated;
        report.misdelivered += out.misdelivered;
        for (k, n) in out.failed {
            *report.failed.entry(k).or_default() += n;
        }
    }

    // The service recovers once the faults stop: every client gets answers again.
    let mut final_ok = 0;
    let mut final_made = 0;
    let mut req = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        for _ in 0..20u64 {
            let id = call_id(ncallers, final_made);
            final_made += 1;
            pools.request(&mut rng, id, OP_ECHO, &mut req);
            match client.call(&req) {
                Ok(resp) if is_reverse_of(&resp, &req) => final_ok += 1,
                other => report.anomalies.push(format!(
                    "client {i}: after the faults, a {} B call got {:?}",
                    req.len(),
                    other.map(|r| r.len())
                )),
            }
        }
    }
    report.final_calls = (final_made, final_ok);

    // Compare the clients' own books with ours: each call counted once, as a response or an
    // error. Calls canceled by dropping their handles are counted when their outcome comes:
    // wait for those (bounded by a deadline).
    let made: u64 = books.tallies[..ncallers]
        .iter()
        .map(|t| t.made.load(Ordering::SeqCst))
        .sum();
    let counted = || -> u64 {
        let total: u64 = clients.iter().map(|c| counted_calls(&c.stats())).sum();
        total - final_made // the final calls are not in `made`
    };
    let settle_by = Instant::now() + request_timeout + Duration::from_secs(2);
    while counted() < made && Instant::now() < settle_by {
        std::thread::sleep(Duration::from_millis(10));
    }
    let counted = counted();
    if counted > made {
        report.duplicated += counted - made;
    }
    if counted != made {
        report.anomalies.push(format!(
            "the clients counted {counted} completions of {made} calls"
        ));
    }
    // Every call has completed: a slot still taken is a timed-out call waiting for an answer
    // that can no longer come (see the note on `held_slots`).
    std::thread::sleep(Duration::from_millis(100));
    report.held_slots = clients.iter().map(|c| c.pending_requests() as u64).sum();
    for c in &clients {
        report.dials += c.stats().dials;
    }

    // Lost: made, never completed.
    report.made = made;
    for t in &books.tallies[..ncallers] {
        let made = t.made.load(Ordering::SeqCst);
        let done = t.completed.lock().unwrap();
        report.lost += (0..made).filter(|&s| !done.get(s)).count() as u64;
    }
    report.executed_twice = books.executed_twice.load(Ordering::SeqCst);
    report
        .anomalies
        .extend(books.anomalies.lock().unwrap().iter().cloned());

    drop(clients);
    slot.stop();
    report.server_protocol_errors = slot.protocol_errors.load(Ordering::SeqCst);
    drop(proxy);
    report.peak_rss_kib = proc_status_kib("VmHWM");
    report.max_sampled_rss_kib = max_rss.max(proc_status_kib("VmRSS"));
    report
}

// ----- command line -------------------------------------------------------------------------

/// Clients and a server under random load and injected faults, checking that every call
/// completes exactly once with its own answer. Exits with status 1 if a call was lost,
/// duplicated, misdelivered or executed twice.
#[derive(clap::Parser, Debug)]
struct Args {
    /// How long to run: 60s, 500ms, 10m, or plain seconds.
    #[arg(long, value_name = "DURATION", value_parser = support::parse_duration, default_value = "60s")]
    duration: Duration,
    /// Seed of the random choices; printed, so that a run can be replayed. [default: from the
    /// clock]
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Clients, each with its own compression, connection count and batch delay (at least 1).
    #[arg(long, value_name = "N", default_value_t = 4)]
    clients: usize,
    /// Caller threads per client (at least 1).
    #[arg(long, value_name = "N", default_value_t = 3)]
    callers: usize,
    /// The largest request body: 65536, 64k, 1m.
    #[arg(long, value_name = "SIZE", value_parser = support::parse_size, default_value = "512k")]
    max_payload: usize,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

impl Args {
    fn config(self) -> SoakConfig {
        SoakConfig {
            duration: self.duration,
            seed: self.seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            }),
            clients: self.clients.max(1),
            callers_per_client: self.callers.max(1),
            max_payload: self.max_payload,
            progress: !self.quiet,
        }
    }
}

fn main() {
    let cfg = <Args as clap::Parser>::parse().config();
    eprintln!(
        "soak: {:?}, seed {}, {} clients x {} callers",
        cfg.duration, cfg.seed, cfg.clients, cfg.callers_per_client
    );
    let report = run_soak(&cfg);
    println!("{report}");
    std::process::exit(if report.passed() { 0 } else { 1 });
}
