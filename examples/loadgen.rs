//! A load generator: drives a batchrpc server (an in-process one, or a remote one with
//! `--addr`) at a given shape, shows a live progress line, and ends with a summary table of
//! throughput, latency percentiles and the per-call costs the client statistics show.
//!
//! ```text
//! cargo run --release --example loadgen -- --help
//! cargo run --release --example loadgen -- --in-flight 1000 --duration 5s
//! cargo run --release --example loadgen -- --in-flight 1000 --compression snappy --delay 1ms
//! cargo run --release --example loadgen -- --addr 10.0.0.7:7000 --response-size 261 --calls 1000000
//! cargo run --release --example loadgen -- --serve 0.0.0.0:7000   # the server half of the above
//! ```
//!
//! `BENCHMARKING.md` explains every row of the table and how to get figures worth quoting.
//!
//! Every caller thread keeps `--in-flight` calls outstanding (a window of `call_async`s;
//! blocking `call` when it is 1), replacing each completed call with a new one. A call's
//! latency is measured by its caller from submission to the moment it takes the response.
//! Calls submitted during the warm-up are made but not counted; the stats counters are
//! snapshotted when the warm-up ends and when the run ends, and the table shows the difference.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use batchrpc::{Client, Compression, Error, RequestCtx, Response, Server, Stats};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;

mod support;

/// The in-process server's response text, cycled to `--response-size` bytes. At the default
/// 261 bytes it is the body `benches/end_to_end.rs` uses, so the figures compare.
const BODY: &[u8; 261] = b"Batches of calls ride one write; the reactor reads until it would block, \
hands frames to workers, and flushes every dirty connection once per turn. This body is \
two hundred sixty-one bytes of plain text so that flate and snappy have something to do, thanks!!!!!";

/// The request text, cycled to `--payload` bytes (`foobar` at the default 6).
const REQUEST: &[u8] = b"foobar";

/// Drive a batchrpc server and report calls/s, latency percentiles and per-call costs.
///
/// Without --addr, an in-process echo-like server is started on 127.0.0.1:0; it answers
/// every request with --response-size bytes of text. Durations: 500us, 1ms, 2s, 1m30s (ns,
/// us, ms, s, m, h); a number alone is seconds.
#[derive(Parser, Debug)]
#[command(name = "loadgen", version)]
struct Args {
    /// Remote server address (host:port or unix:/path). Default: start an in-process server.
    #[arg(long, value_name = "ADDR")]
    addr: Option<String>,

    /// Response size in bytes. In-process server: what it answers (default 261). Remote
    /// server: if given, every response's length is checked against it.
    #[arg(long, value_name = "BYTES")]
    response_size: Option<usize>,

    /// Only run the in-process server, on this address (for example 0.0.0.0:7000), for
    /// loadgens elsewhere to --addr; prints its request rate each second. Runs for
    /// --duration if given, else until killed.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["addr", "calls"])]
    serve: Option<String>,

    /// In-process server: worker threads (0 = handlers run on the reactor). [default: cores]
    #[arg(long, value_name = "N")]
    server_workers: Option<usize>,

    /// In-process server: run its (cheap, never blocking) handler inline on the reactor when a
    /// turn's estimated handler work is within this budget (ServerBuilder::inline_budget).
    #[arg(long, value_name = "DURATION", value_parser = support::parse_duration, default_value = "0")]
    server_inline_budget: Duration,

    /// In-process server: its batch delay. [default: 100us if --delay > 0, else 0]
    #[arg(long, value_name = "DURATION", value_parser = support::parse_duration)]
    server_delay: Option<Duration>,

    /// In-process server: run one connection's requests serially, in order (fastrpc's
    /// PipelineRequests).
    #[arg(long)]
    pipeline: bool,

    /// Separate Client instances (each with its own reactor thread). [default: cores]
    #[arg(long, value_name = "N")]
    clients: Option<usize>,

    /// Connections per client.
    #[arg(long, value_name = "N", default_value_t = 1)]
    conns: usize,

    /// Caller threads; thread i uses clients i, i+threads, ... in turn. [default: --clients]
    #[arg(long, value_name = "N")]
    threads: Option<usize>,

    /// Calls kept in flight per caller thread (1 = blocking `call`).
    #[arg(long, value_name = "N", default_value_t = 100)]
    in_flight: usize,

    /// Request size in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 6)]
    payload: usize,

    /// Compression of both directions (the in-process server uses it too).
    #[arg(long, value_enum, default_value_t = Comp::None)]
    compression: Comp,

    /// Client batch delay.
    #[arg(long, value_name = "DURATION", value_parser = support::parse_duration, default_value = "0")]
    delay: Duration,

    /// Busy polling of the clients' and the in-process server's reactors before they sleep
    /// (ClientBuilder::busy_poll, ServerBuilder::busy_poll; 0 = never spin).
    #[arg(long, value_name = "DURATION", value_parser = support::parse_duration, default_value = "100us")]
    busy_poll: Duration,

    /// How long to measure, after the warm-up. [default: 10s unless --calls is given]
    #[arg(long, value_name = "DURATION", value_parser = support::parse_duration, conflicts_with = "calls")]
    duration: Option<Duration>,

    /// Calls to make after the warm-up, instead of a duration.
    #[arg(long, value_name = "N")]
    calls: Option<u64>,

    /// Deadline of each call.
    #[arg(long, value_name = "DURATION", value_parser = support::parse_duration, default_value = "5s")]
    timeout: Duration,

    /// Time spent calling before the measurement starts (excluded from every figure).
    #[arg(long, value_name = "DURATION", value_parser = support::parse_duration, default_value = "1s")]
    warmup: Duration,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Comp {
    None,
    Flate,
    Snappy,
}

impl From<Comp> for Compression {
    fn from(c: Comp) -> Compression {
        match c {
            Comp::None => Compression::None,
            Comp::Flate => Compression::Flate,
            Comp::Snappy => Compression::Snappy,
        }
    }
}

/// Error kinds as counted and reported: the library's names (`Error::kind`), then
/// `mismatch`, a response of the wrong length or content.
const KINDS: [&str; 16] = [
    "timeout",
    "overflow",
    "connection_lost",
    "server",
    "canceled",
    "closed",
    "io",
    "protocol",
    "connect",
    "refused",
    "too_large",
    "config",
    "encode",
    "decode",
    "mismatch",
    "other",
];
const MISMATCH: usize = 14;

fn kind_of(e: &Error) -> usize {
    let kind = e.kind();
    KINDS
        .iter()
        .position(|&k| k == kind)
        .unwrap_or(KINDS.len() - 1)
}

type Counts = [u64; KINDS.len()];

fn format_errors(counts: &Counts) -> String {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return "0".into();
    }
    let mut s = format!("{total} (");
    let mut first = true;
    for (name, &n) in KINDS.iter().zip(counts) {
        if n > 0 {
            if !first {
                s.push_str(", ");
            }
            first = false;
            let _ = write!(s, "{name} {n}");
        }
    }
    s.push(')');
    s
}

/// What a response must look like.
#[derive(Clone)]
enum Expect {
    /// Exactly these bytes (the in-process server).
    Body(Arc<[u8]>),
    /// This length (a remote server, with `--response-size`).
    Len(usize),
    /// Anything (a remote server).
    Any,
}

impl Expect {
    fn check(&self, resp: &[u8]) -> bool {
        match self {
            Expect::Body(b) => resp == &**b,
            Expect::Len(n) => resp.len() == *n,
            Expect::Any => true,
        }
    }
}

/// Per-thread counters the progress line reads, 128-byte aligned so that threads do not
/// share cache lines.
#[repr(align(128))]
#[derive(Default)]
struct Progress {
    /// Calls completed (with a response or an error), warm-up included.
    done: AtomicU64,
    errors: [AtomicU64; KINDS.len()],
}

/// When a caller thread stops submitting.
#[derive(Clone, Copy)]
enum Stop {
    /// Calls submitted at or after this instant are not made.
    At(Instant),
    /// After this many measured calls (warm-up calls are extra).
    After(u64),
}

/// What one caller thread measured (calls submitted after the warm-up only).
struct Outcome {
    hist: Histogram<u64>,
    ok: u64,
    errors: Counts,
    warmup_errors: Counts,
    response_bytes: u64,
    last_completion: Option<Instant>,
}

struct Caller<'a> {
    clients: Vec<&'a Client>,
    next_client: usize,
    request: &'a [u8],
    expect: &'a Expect,
    timeout: Duration,
    measure_from: Instant,
    stop: Stop,
    progress: &'a Progress,
    done: u64,
    submitted_measured: u64,
    out: Outcome,
}

impl Caller<'_> {
    fn may_submit(&self, now: Instant) -> bool {
        match self.stop {
            Stop::At(end) => now < end,
            Stop::After(n) => now < self.measure_from || self.submitted_measured < n,
        }
    }

    fn note_submitted(&mut self, at: Instant) {
        if at >= self.measure_from {
            self.submitted_measured += 1;
        }
    }

    fn client(&mut self) -> &Client {
        let c = self.clients[self.next_client];
        self.next_client += 1;
        if self.next_client == self.clients.len() {
            self.next_client = 0;
        }
        c
    }

    /// Records one completed (or failed) call submitted at `submitted`.
    fn complete(&mut self, outcome: &Result<Response, Error>, submitted: Instant, now: Instant) {
        let measured = submitted >= self.measure_from;
        let kind = match outcome {
            Ok(resp) if self.expect.check(resp) => {
                if measured {
                    self.out.ok += 1;
                    self.out.response_bytes += resp.len() as u64;
                    let ns = now.duration_since(submitted).as_nanos();
                    self.out
                        .hist
                        .saturating_record(u64::try_from(ns).unwrap_or(u64::MAX).max(1));
                }
                None
            }
            Ok(_) => Some(MISMATCH),
            Err(e) => Some(kind_of(e)),
        };
        if let Some(k) = kind {
            if measured {
                self.out.errors[k] += 1;
            } else {
                self.out.warmup_errors[k] += 1;
            }
            self.progress.errors[k].fetch_add(1, Ordering::Relaxed);
        }
        if measured {
            self.out.last_completion = Some(now);
        }
        self.done += 1;
        self.progress.done.store(self.done, Ordering::Relaxed);
    }

    /// A call that could not even be submitted (overflow, closed, too large).
    fn refused(&mut self, e: Error, at: Instant) {
        let overflow = matches!(e, Error::Overflow);
        self.note_submitted(at);
        self.complete(&Err(e), at, at);
        if overflow {
            // Timed-out calls still hold their slots; give the reactor a moment.
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    fn run_blocking(mut self) -> Outcome {
        let mut now = Instant::now();
        while self.may_submit(now) {
            let submitted = now;
            self.note_submitted(submitted);
            let (request, timeout) = (self.request, self.timeout);
            let result = self.client().call_timeout(request, timeout);
            now = Instant::now();
            self.complete(&result, submitted, now);
        }
        self.out
    }

    fn run_window(mut self, window: usize) -> Outcome {
        let mut queue: VecDeque<(batchrpc::PendingCall, Instant)> = VecDeque::with_capacity(window);
        // The completion time of the last call doubles as the submission time of the next:
        // one clock read per call in the steady state.
        let mut now = Instant::now();
        loop {
            let mut fresh = true;
            while queue.len() < window {
                if !fresh {
                    now = Instant::now();
                }
                fresh = false;
                if !self.may_submit(now) {
                    break;
                }
                let (request, timeout) = (self.request, self.timeout);
                match self.client().call_async_timeout(request, timeout) {
                    Ok(p) => {
                        self.note_submitted(now);
                        queue.push_back((p, now));
                    }
                    Err(e) => self.refused(e, now),
                }
            }
            let Some((pending, submitted)) = queue.pop_front() else {
                break;
            };
            let result = pending.wait();
            now = Instant::now();
            self.complete(&result, submitted, now);
        }
        self.out
    }
}

/// Process-wide CPU time and context switches, from /proc (Linux); `None` elsewhere.
#[derive(Clone, Copy)]
struct Os {
    cpu: Duration,
    ctx_switches: u64,
}

fn os_sample() -> Option<Os> {
    // utime and stime are fields 14 and 15, in clock ticks (USER_HZ, 100 on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let mut ctx_switches = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                ctx_switches += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    Some(Os {
        cpu: Duration::from_millis(ticks * 10),
        ctx_switches,
    })
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn cycled(pattern: &[u8], len: usize) -> Vec<u8> {
    pattern.iter().copied().cycle().take(len).collect()
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn show_duration(d: Duration) -> String {
    if d.is_zero() {
        "0".into()
    } else if d < Duration::from_millis(1) {
        format!("{}us", d.as_micros())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("loadgen: {}", support::Chain(&e));
        std::process::exit(1);
    }
}

/// The in-process server's batch delay: as given, else the benchmarks' rule.
fn server_delay(args: &Args) -> Duration {
    args.server_delay.unwrap_or(if args.delay > Duration::ZERO {
        Duration::from_micros(100)
    } else {
        Duration::ZERO
    })
}

/// Starts the in-process server on `bind`; returns it and the body it answers with. With
/// `payload`, a request of another length gets an error response.
fn start_server(
    args: &Args,
    bind: &str,
    payload: Option<usize>,
    max_queued: usize,
) -> Result<(Server, Arc<[u8]>), Error> {
    let body: Arc<[u8]> = cycled(BODY, args.response_size.unwrap_or(BODY.len())).into();
    let mut builder = Server::builder()
        .compression(args.compression.into())
        .max_batch_delay(server_delay(args))
        .pipeline(args.pipeline)
        .inline_budget(args.server_inline_budget)
        .busy_poll(args.busy_poll)
        .max_queued_requests(max_queued);
    if let Some(w) = args.server_workers {
        builder = builder.workers(w);
    }
    let handler_body = body.clone();
    let server = builder
        .handler(move |_: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
            if let Some(want) = payload.filter(|&n| n != req.len()) {
                return Err(format!("request of {} bytes, expected {want}", req.len()).into());
            }
            resp.extend_from_slice(&handler_body);
            Ok(())
        })
        .bind(bind)?;
    Ok((server, body))
}

/// `--serve`: the in-process server alone, reporting once a second.
fn serve(args: &Args, bind: &str) -> Result<(), Error> {
    let (server, body) = start_server(args, bind, None, 10_000)?;
    println!(
        "batchrpc loadgen: serving on {} (workers {}, delay {}, pipeline {}, compression {}, \
         response {} B)",
        server.local_addr(),
        args.server_workers
            .map_or_else(|| format!("{} (cores)", cores()), |w| w.to_string()),
        show_duration(server_delay(args)),
        if args.pipeline { "on" } else { "off" },
        Compression::from(args.compression),
        body.len(),
    );
    let started = Instant::now();
    let mut last = (server.stats(), started);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = Instant::now();
        let s = server.stats();
        let secs = now.duration_since(last.1).as_secs_f64();
        let flow = s.since(&last.0);
        eprintln!(
            "{:6.1}s  {:>12} requests/s  {:>14} requests  {} connections  {:.1} frames/write  \
             errors {}",
            now.duration_since(started).as_secs_f64(),
            thousands(((s.calls - last.0.calls) as f64 / secs) as u64),
            thousands(s.calls),
            s.open_connections,
            flow.frames_written as f64 / flow.flushes.max(1) as f64,
            s.errors.server + s.errors.protocol + s.errors.timeout,
        );
        last = (s, now);
        if args
            .duration
            .is_some_and(|d| now.duration_since(started) >= d)
        {
            break;
        }
    }
    server.shutdown();
    Ok(())
}

fn run(args: Args) -> Result<(), Error> {
    if let Some(bind) = &args.serve {
        return serve(&args, bind);
    }
    let n_clients = args.clients.unwrap_or_else(cores).max(1);
    let n_threads = args.threads.unwrap_or(n_clients).max(1);
    let window = args.in_flight.max(1);
    let compression: Compression = args.compression.into();
    let request = cycled(REQUEST, args.payload);
    let threads_per_client = n_threads.div_ceil(n_clients);
    // Room for the window plus calls that timed out but still hold their slot.
    let max_pending = (threads_per_client * window * 2 + 64).min(1 << 24) as u32;

    // The server: in-process, or remote.
    let (server, addr, expect) = match &args.addr {
        Some(addr) => {
            let expect = args.response_size.map_or(Expect::Any, Expect::Len);
            (None, addr.clone(), expect)
        }
        None => {
            let max_queued = (n_threads * window + 64).max(10_000);
            let (server, body) =
                start_server(&args, "127.0.0.1:0", Some(args.payload), max_queued)?;
            let addr = server.local_addr().to_string();
            (Some(server), addr, Expect::Body(body))
        }
    };

    let clients: Vec<Client> = (0..n_clients)
        .map(|_| {
            Client::builder(addr.as_str())
                .conns(args.conns)
                .compression(compression)
                .max_batch_delay(args.delay)
                .busy_poll(args.busy_poll)
                .request_timeout(args.timeout)
                .max_pending_requests(max_pending)
                .connect()
        })
        .collect::<Result<_, _>>()?;

    // The shape, resolved, as the table's heading.
    let server_desc = match (&server, &args.addr) {
        (Some(_), _) => format!(
            "in-process server (workers {}, delay {}, pipeline {}, response {} B)",
            args.server_workers
                .map_or_else(|| format!("{} (cores)", cores()), |w| w.to_string()),
            show_duration(server_delay(&args)),
            if args.pipeline { "on" } else { "off" },
            args.response_size.unwrap_or(BODY.len()),
        ),
        (None, Some(a)) => format!("remote server {a}"),
        (None, None) => unreachable!(),
    };
    let duration = match (args.calls, args.duration) {
        (Some(_), _) => None,
        (None, d) => Some(d.unwrap_or(Duration::from_secs(10))),
    };
    println!("batchrpc loadgen: {server_desc}");
    println!(
        "  {n_clients} clients x {} conns, {n_threads} caller threads x {window} in flight, \
         request {} B, compression {}, client delay {}, busy poll {}, timeout {}, warm-up {}, {}",
        args.conns,
        args.payload,
        compression,
        show_duration(args.delay),
        show_duration(args.busy_poll),
        show_duration(args.timeout),
        show_duration(args.warmup),
        match (args.calls, duration) {
            (Some(n), _) => format!("{} calls", thousands(n)),
            (None, Some(d)) => format!("duration {}", show_duration(d)),
            (None, None) => unreachable!(),
        }
    );
    let _ = std::io::stdout().flush();

    let progress: Vec<Progress> = (0..n_threads).map(|_| Progress::default()).collect();
    let started = Instant::now();
    let measure_from = started + args.warmup;
    let stop_at = duration.map(|d| measure_from + d);
    let (tx, rx) = mpsc::channel::<Outcome>();

    let (outcomes, before, after) = std::thread::scope(|s| {
        for (i, progress) in progress.iter().enumerate() {
            // Thread i calls through client i % clients; with fewer threads than clients,
            // through clients i, i + threads, ... in turn.
            let mine: Vec<&Client> = if n_threads >= n_clients {
                vec![&clients[i % n_clients]]
            } else {
                clients.iter().skip(i).step_by(n_threads).collect()
            };
            let stop = match (stop_at, args.calls) {
                (Some(end), _) => Stop::At(end),
                (None, Some(n)) => {
                    Stop::After(n / n_threads as u64 + u64::from((i as u64) < n % n_threads as u64))
                }
                (None, None) => unreachable!(),
            };
            let caller = Caller {
                clients: mine,
                next_client: 0,
                request: &request,
                expect: &expect,
                timeout: args.timeout,
                measure_from,
                stop,
                progress,
                done: 0,
                submitted_measured: 0,
                out: Outcome {
                    hist: Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
                        .expect("histogram bounds"),
                    ok: 0,
                    errors: Counts::default(),
                    warmup_errors: Counts::default(),
                    response_bytes: 0,
                    last_completion: None,
                },
            };
            let tx = tx.clone();
            std::thread::Builder::new()
                .name(format!("loadgen-{i}"))
                .spawn_scoped(s, move || {
                    let out = if window == 1 {
                        caller.run_blocking()
                    } else {
                        caller.run_window(window)
                    };
                    let _ = tx.send(out);
                })
                .expect("spawn a caller thread");
        }
        drop(tx);
        monitor(
            &rx,
            n_threads,
            &progress,
            &clients,
            server.as_ref(),
            started,
            measure_from,
            stop_at,
            args.timeout,
        )
    });

    report(&outcomes, &before, &after, measure_from);

    // Close cleanly, but never hang the tool on it.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(10));
        eprintln!("loadgen: shutdown took over 10 s; exiting anyway");
        std::process::exit(3);
    });
    drop(clients);
    if let Some(server) = server {
        server.shutdown();
    }
    Ok(())
}

/// Counters snapshotted at the start and at the end of the measured window.
struct Snapshot {
    clients: Vec<Stats>,
    server: Option<Stats>,
    os: Option<Os>,
}

fn snapshot(clients: &[Client], server: Option<&Server>) -> Snapshot {
    Snapshot {
        clients: clients.iter().map(Client::stats).collect(),
        server: server.map(Server::stats),
        os: os_sample(),
    }
}

/// Prints the progress line once a second until every caller is done; takes the counter
/// snapshots when the warm-up ends and at the end. Exits the process if calls stop
/// completing for longer than the call timeout allows.
#[allow(clippy::too_many_arguments)]
fn monitor(
    rx: &mpsc::Receiver<Outcome>,
    n_threads: usize,
    progress: &[Progress],
    clients: &[Client],
    server: Option<&Server>,
    started: Instant,
    measure_from: Instant,
    stop_at: Option<Instant>,
    timeout: Duration,
) -> (Vec<Outcome>, Snapshot, Snapshot) {
    let tty = std::io::stderr().is_terminal();
    let total = || -> (u64, Counts) {
        let mut errors = Counts::default();
        let mut done = 0;
        for p in progress {
            done += p.done.load(Ordering::Relaxed);
            for (e, c) in errors.iter_mut().zip(&p.errors) {
                *e += c.load(Ordering::Relaxed);
            }
        }
        (done, errors)
    };
    let stall_limit = timeout + Duration::from_secs(5);
    let mut outcomes = Vec::with_capacity(n_threads);
    let mut before: Option<Snapshot> = None;
    let mut next_tick = started + Duration::from_secs(1);
    let (mut last_done, mut last_tick) = (0u64, started);
    let mut last_change = started;
    while outcomes.len() < n_threads {
        let wake = if before.is_none() {
            next_tick.min(measure_from)
        } else {
            next_tick
        };
        match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(out) => outcomes.push(out),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let now = Instant::now();
        if before.is_none() && now >= measure_from {
            before = Some(snapshot(clients, server));
        }
        if now >= next_tick {
            let (done, errors) = total();
            let rate = (done - last_done) as f64 / now.duration_since(last_tick).as_secs_f64();
            if done != last_done {
                last_change = now;
            }
            let phase = if now < measure_from {
                " [warm-up]"
            } else if stop_at.is_some_and(|end| now >= end) {
                " [draining]"
            } else {
                ""
            };
            let line = format!(
                "{:6.1}s  {:>12} calls/s  {:>14} calls  errors {}{phase}",
                now.duration_since(started).as_secs_f64(),
                thousands(rate as u64),
                thousands(done),
                format_errors(&errors),
            );
            if tty {
                eprint!("\r{line}\x1b[K");
            } else {
                eprintln!("{line}");
            }
            (last_done, last_tick) = (done, now);
            next_tick += Duration::from_secs(1);
            if next_tick < now {
                next_tick = now + Duration::from_secs(1);
            }
            let overdue = stop_at.is_some_and(|end| now > end + stall_limit);
            if now.duration_since(last_change) > stall_limit || overdue {
                eprintln!(
                    "\nloadgen: calls stopped completing (every call should end within its \
                     {} timeout); exiting",
                    show_duration(timeout)
                );
                std::process::exit(2);
            }
        }
    }
    if tty {
        eprintln!();
    }
    let after = snapshot(clients, server);
    let before = before.unwrap_or_else(|| snapshot(clients, server));
    (outcomes, before, after)
}

fn report(outcomes: &[Outcome], before: &Snapshot, after: &Snapshot, measure_from: Instant) {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).expect("bounds");
    let mut ok = 0;
    let mut errors = Counts::default();
    let mut warmup_errors = Counts::default();
    let mut response_bytes = 0;
    let mut last = measure_from;
    for o in outcomes {
        hist.add(&o.hist).expect("same bounds");
        ok += o.ok;
        response_bytes += o.response_bytes;
        for (a, b) in errors.iter_mut().zip(&o.errors) {
            *a += b;
        }
        for (a, b) in warmup_errors.iter_mut().zip(&o.warmup_errors) {
            *a += b;
        }
        if let Some(t) = o.last_completion {
            last = last.max(t);
        }
    }
    let n_errors: u64 = errors.iter().sum();
    let calls = ok + n_errors;
    let secs = last.duration_since(measure_from).as_secs_f64().max(1e-9);
    let mut client = Stats::default();
    for (b, a) in before.clients.iter().zip(&after.clients) {
        client += a.since(b);
    }
    let per = |x: u64| x as f64 / calls.max(1) as f64;
    let us = |ns: u64| format!("{:.1} us", ns as f64 / 1e3);

    let mut rows: Vec<(&str, String)> = vec![
        ("calls", thousands(calls)),
        ("errors", format_errors(&errors)),
        ("duration", format!("{secs:.3} s")),
        (
            if n_errors == 0 {
                "calls/s"
            } else {
                "calls/s (ok only)"
            },
            thousands((ok as f64 / secs) as u64),
        ),
        (
            "MB/s (responses)",
            format!("{:.1}", response_bytes as f64 / secs / 1e6),
        ),
        ("latency p50", us(hist.value_at_quantile(0.50))),
        ("latency p90", us(hist.value_at_quantile(0.90))),
        ("latency p99", us(hist.value_at_quantile(0.99))),
        ("latency p99.9", us(hist.value_at_quantile(0.999))),
        ("latency max", us(hist.max())),
        ("latency mean", format!("{:.1} us", hist.mean() / 1e3)),
        (
            "client bytes written/call",
            format!("{:.1}", per(client.bytes_written)),
        ),
        (
            "client bytes read/call",
            format!("{:.1}", per(client.bytes_read)),
        ),
        (
            "client write syscalls/call",
            format!("{:.4}", per(client.write_calls)),
        ),
        (
            "client read syscalls/call",
            format!("{:.4}", per(client.read_calls)),
        ),
        (
            "client frames/write",
            format!(
                "{:.1}",
                client.frames_written as f64 / client.flushes.max(1) as f64
            ),
        ),
        (
            "client wake-ups/call",
            format!("{:.4}", per(client.wakeups)),
        ),
    ];
    if let (Some(b), Some(a)) = (&before.server, &after.server) {
        let s = a.since(b);
        rows.push((
            "server frames/write",
            format!("{:.1}", s.frames_written as f64 / s.flushes.max(1) as f64),
        ));
        rows.push((
            "server write syscalls/call",
            format!("{:.4}", per(s.write_calls)),
        ));
        rows.push((
            "server read syscalls/call",
            format!("{:.4}", per(s.read_calls)),
        ));
        rows.push(("server wake-ups/call", format!("{:.4}", per(s.wakeups))));
    }
    if let (Some(b), Some(a)) = (before.os, after.os) {
        let cpu = a.cpu.saturating_sub(b.cpu);
        rows.push((
            "process CPU/call",
            format!(
                "{:.2} us ({:.2} cores busy)",
                cpu.as_secs_f64() * 1e6 / calls.max(1) as f64,
                cpu.as_secs_f64() / secs
            ),
        ));
        rows.push((
            "context switches/call",
            format!("{:.4}", per(a.ctx_switches.saturating_sub(b.ctx_switches))),
        ));
    }
    let warm: u64 = warmup_errors.iter().sum();
    if warm > 0 {
        rows.push(("errors during warm-up", format_errors(&warmup_errors)));
    }
    if client.errors.stale_responses > 0 {
        rows.push((
            "late responses dropped",
            thousands(client.errors.stale_responses),
        ));
    }
    if client.errors.protocol > 0 {
        rows.push((
            "connections lost to protocol errors",
            thousands(client.errors.protocol),
        ));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(out);
    for (k, v) in rows {
        let _ = writeln!(out, "  {k:<width$}  {v}");
    }
    if before.os.is_some() {
        let _ = writeln!(
            out,
            "  (read syscalls: reads that returned data; CPU and context switches: this whole \
             process{})",
            if before.server.is_some() {
                ", in-process server included"
            } else {
                ""
            }
        );
    }
    print!("{out}");
    let _ = std::io::stdout().flush();
}
