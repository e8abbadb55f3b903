//! The worker pool: fixed threads taking jobs from a lock-free queue.
//!
//! A [`Job`] is a run of requests from one connection, copied out of the read buffer in one
//! piece per read; the worker answers all of them into one response buffer (already framed),
//! pushes the job back and wakes the reactor once. The reactor appends the response bytes to
//! the connection's batch. Jobs and their buffers are recycled, so nothing is allocated per
//! request once warm.
//!
//! Workers spin briefly when the queue runs dry, then announce they are going to sleep and
//! park; the reactor wakes only as many sleeping workers as it has pushed jobs.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Instant;

use crossbeam_queue::ArrayQueue;

use super::{ConnInfo, HandlerFn, RequestCtx, ServerShared};
use crate::stats::C;
use crate::wire::fastrpc;
use crate::wire::frame::{self, FrameKind};

/// Requests of one connection handed to a worker together.
pub(crate) struct Job {
    pub token: usize,
    pub conn_id: u64,
    pub ctx: RequestCtx,
    /// Request frames back to back, as received.
    pub requests: Vec<u8>,
    pub nreq: u32,
    /// Response frames back to back, ready for the connection's batch.
    pub responses: Vec<u8>,
    pub nresp: u64,
    /// Requests whose handler failed or panicked.
    pub failed: u32,
    /// Largest response the client accepts (from its hello).
    pub max_response: u32,
    /// Responses are framed for the fastrpc profile: no error frames, an error is the value.
    pub fastrpc: bool,
}

impl Job {
    pub fn new(token: usize, conn_id: u64, info: &Arc<ConnInfo>) -> Job {
        Job {
            token,
            conn_id,
            ctx: RequestCtx { info: info.clone() },
            requests: Vec::new(),
            nreq: 0,
            responses: Vec::new(),
            nresp: 0,
            failed: 0,
            max_response: u32::MAX,
            fastrpc: false,
        }
    }

    /// Readies a recycled job for a connection.
    pub fn reset(&mut self, token: usize, conn_id: u64, info: &Arc<ConnInfo>) {
        self.token = token;
        self.conn_id = conn_id;
        if !Arc::ptr_eq(&self.ctx.info, info) {
            self.ctx.info = info.clone();
        }
        self.requests.clear();
        self.nreq = 0;
        self.responses.clear();
        self.nresp = 0;
        self.failed = 0;
    }

    /// Appends one request.
    #[inline]
    pub fn push(&mut self, id: u32, kind: FrameKind, payload: &[u8]) {
        frame::encode(&mut self.requests, id, kind, payload);
        self.nreq += 1;
    }

    /// Runs the handler on every request, framing the answers into `responses`. A handler
    /// error or panic becomes an error response; a response above `max_response` (what the client
    /// accepts) becomes one too, rather than a frame the client would have to drop the
    /// connection for. The fastrpc profile has no error responses: there the error's text is
    /// the response's value.
    pub fn run(&mut self, handler: &HandlerFn, scratch: &mut Vec<u8>) {
        let max_len = self.max_response;
        let mut rest = &self.requests[..];
        while let Ok(Some(f)) = frame::decode(rest, u32::MAX) {
            rest = &rest[f.wire_len()..];
            scratch.clear();
            let outcome =
                panic::catch_unwind(AssertUnwindSafe(|| handler(&self.ctx, f.payload, scratch)));
            if f.kind == FrameKind::RequestNoReply {
                if !matches!(outcome, Ok(Ok(()))) {
                    self.failed += 1;
                }
                continue;
            }
            let at = if self.fastrpc {
                fastrpc::begin_response(&mut self.responses, f.id)
            } else {
                frame::begin(&mut self.responses, f.id, FrameKind::Response)
            };
            let value_at = self.responses.len();
            let failed = !matches!(outcome, Ok(Ok(()))) || scratch.len() > max_len as usize;
            if failed {
                self.failed += 1;
                if !self.fastrpc {
                    frame::set_kind(&mut self.responses, at, FrameKind::ErrorResponse);
                }
            }
            match outcome {
                Ok(Ok(())) if scratch.len() <= max_len as usize => {
                    self.responses.extend_from_slice(scratch);
                }
                Ok(Ok(())) => {
                    let text = format!(
                        "response of {} bytes exceeds the frame limit of {max_len}",
                        scratch.len()
                    );
                    self.responses.extend_from_slice(text.as_bytes());
                }
                Ok(Err(e)) => {
                    use std::io::Write;
                    let _ = write!(self.responses, "{e}");
                }
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .copied()
                        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                        .unwrap_or("(no message)");
                    self.responses.extend_from_slice(b"handler panicked: ");
                    self.responses.extend_from_slice(what.as_bytes());
                }
            }
            // Even an error's text must stay within what the client accepts.
            self.responses.truncate(value_at + max_len as usize);
            if self.fastrpc {
                fastrpc::finish_response(&mut self.responses, at);
            } else {
                frame::finish(&mut self.responses, at);
            }
            self.nresp += 1;
        }
    }
}

struct Worker {
    sleeping: AtomicBool,
    thread: OnceLock<Thread>,
}

/// Queues between one reactor and its workers.
pub(crate) struct Pool {
    /// Whether jobs are timed: only when the server may run cheap handlers inline.
    measure: bool,
    /// Mean handler time per request, in nanoseconds (a moving average over jobs); `u64::MAX`
    /// until the first job is measured.
    cost_ns: AtomicU64,
    jobs: ArrayQueue<Job>,
    done: ArrayQueue<Job>,
    workers: Box<[Worker]>,
    stop: AtomicBool,
    /// The server's shared state: its reactor's waker and its counters.
    server: Arc<ServerShared>,
}

impl Pool {
    /// Starts `n` workers running `handler`; at most `max_jobs` jobs are ever outstanding.
    pub fn start(
        n: usize,
        max_jobs: usize,
        handler: Arc<HandlerFn>,
        server: Arc<ServerShared>,
        measure: bool,
        name: &str,
    ) -> std::io::Result<(Arc<Pool>, Vec<JoinHandle<()>>)> {
        let pool = Arc::new(Pool {
            measure,
            cost_ns: AtomicU64::new(u64::MAX),
            jobs: ArrayQueue::new(max_jobs),
            done: ArrayQueue::new(max_jobs),
            workers: (0..n)
                .map(|_| Worker {
                    sleeping: AtomicBool::new(false),
                    thread: OnceLock::new(),
                })
                .collect(),
            stop: AtomicBool::new(false),
            server,
        });
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let worker_pool = pool.clone();
            let handler = handler.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-worker-{i}"))
                .spawn(move || worker_pool.work(i, &*handler));
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    pool.stop();
                    for h in handles {
                        let _ = h.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok((pool, handles))
    }

    fn work(&self, me: usize, handler: &HandlerFn) {
        let worker = &self.workers[me];
        let _ = worker.thread.set(std::thread::current());
        let mut scratch = Vec::new();
        loop {
            if let Some(mut job) = self.jobs.pop() {
                self.run_timed(&mut job, handler, &mut scratch);
                // The reactor keeps at most `max_jobs` jobs out, so there is always room; were
                // there not, waiting beats losing the answers.
                let mut finished = job;
                while let Err(back) = self.done.push(finished) {
                    finished = back;
                    self.wake_reactor();
                    std::thread::yield_now();
                }
                self.wake_reactor();
                continue;
            }
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            if self.spin_for_work() {
                continue;
            }
            worker.sleeping.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if !self.jobs.is_empty() || self.stop.load(Ordering::SeqCst) {
                worker.sleeping.store(false, Ordering::Relaxed);
                continue;
            }
            while worker.sleeping.load(Ordering::Acquire) {
                std::thread::park();
            }
        }
    }

    fn wake_reactor(&self) {
        if self.server.reactor.notify() {
            self.server.stats.inc(C::wakeups);
        }
    }

    /// Runs a job and, when the server may inline cheap handlers, folds its cost into the
    /// moving average.
    pub fn run_timed(&self, job: &mut Job, handler: &HandlerFn, scratch: &mut Vec<u8>) {
        if !self.measure {
            job.run(handler, scratch);
            return;
        }
        let started = Instant::now();
        job.run(handler, scratch);
        let per_request = started.elapsed().as_nanos() as u64 / u64::from(job.nreq.max(1));
        // Racing updates from several workers may lose a sample: harmless for an average.
        let avg = match self.cost_ns.load(Ordering::Relaxed) {
            u64::MAX => per_request,
            avg => avg - avg / 8 + per_request / 8,
        };
        self.cost_ns.store(avg, Ordering::Relaxed);
    }

    /// The mean handler time per request, once measured.
    pub fn cost_per_request(&self) -> Option<u64> {
        Some(self.cost_ns.load(Ordering::Relaxed)).filter(|&c| c != u64::MAX)
    }

    fn spin_for_work(&self) -> bool {
        for _ in 0..200 {
            if !self.jobs.is_empty() {
                return true;
            }
            std::hint::spin_loop();
        }
        false
    }

    /// Hands a job to the workers, waking one if all are asleep. Gives the job back if the
    /// queue is full (the caller bounds outstanding jobs, so that means a bug, not load).
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        self.jobs.push(job)?;
        fence(Ordering::SeqCst);
        for w in self.workers.iter() {
            if w.sleeping.load(Ordering::Relaxed) && w.sleeping.swap(false, Ordering::SeqCst) {
                if let Some(t) = w.thread.get() {
                    t.unpark();
                    self.server.stats.inc(C::wakeups);
                }
                break;
            }
        }
        Ok(())
    }

    /// A finished job, if any.
    pub fn finished(&self) -> Option<Job> {
        self.done.pop()
    }

    /// True when finished jobs wait for the reactor.
    pub fn has_finished(&self) -> bool {
        !self.done.is_empty()
    }

    /// Tells the workers to exit once the queue is empty.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.workers.iter() {
            w.sleeping.store(false, Ordering::SeqCst);
            if let Some(t) = w.thread.get() {
                t.unpark();
            }
        }
    }
}
