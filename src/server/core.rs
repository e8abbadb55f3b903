//! The server's reactor side: accepting, turning frames into jobs, returning responses,
//! backpressure and graceful shutdown.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::pool::{Job, Pool};
use super::{ConnInfo, ServerConfig, ServerShared};
use crate::reactor::{ConnEp, ConnRole, Core, Service};
use crate::stats::{SharedStats, C};
use crate::transport::Stream;
use crate::wire::conn::{Conn, Profile, State};
use crate::wire::ProtocolError;
use crate::Error;

/// Most requests in one job: a large read is split so that several workers share it.
const JOB_MAX_REQUESTS: u32 = 64;
/// A connection whose unsent responses exceed this is not read from until they drain.
const MAX_SEND_BACKLOG: usize = 4 << 20;

/// The server's state for one connection.
pub(crate) struct ServerConn {
    info: Arc<ConnInfo>,
    /// Requests read but not yet handed to a worker.
    job: Option<Job>,
    /// Jobs of this connection at the workers.
    in_flight: u32,
    /// Reading paused (backpressure); the token is in `ServerCore::paused`.
    paused: bool,
    /// `job` waits for a free job slot; the token is in `ServerCore::awaiting_worker`.
    awaiting_worker: bool,
}

pub(crate) struct ServerCore {
    id: usize,
    cfg: Arc<ServerConfig>,
    shared: Arc<ServerShared>,
    pool: Option<Arc<Pool>>,
    listeners: Vec<usize>,
    /// Recycled jobs.
    spare: Vec<Job>,
    /// Jobs at the workers.
    jobs_out: usize,
    /// Requests read and not yet answered.
    queued: usize,
    paused: Vec<usize>,
    /// Connections whose requests wait for a job slot, in order.
    awaiting_worker: VecDeque<usize>,
    conns: usize,
    /// For handlers run inline.
    scratch: Vec<u8>,
    /// What is left this turn of the budget for running cheap jobs inline.
    inline_left_ns: u64,
    draining: bool,
    finished: bool,
    /// (token, id) of connections whose client ended its stream: closed once their requests
    /// are answered and the answers written.
    half_closed: Vec<(usize, u64)>,
}

impl ServerCore {
    pub fn new(
        id: usize,
        cfg: Arc<ServerConfig>,
        shared: Arc<ServerShared>,
        pool: Option<Arc<Pool>>,
        listeners: Vec<usize>,
    ) -> ServerCore {
        ServerCore {
            id,
            cfg,
            shared,
            pool,
            listeners,
            spare: Vec::new(),
            jobs_out: 0,
            queued: 0,
            paused: Vec::new(),
            awaiting_worker: VecDeque::new(),
            conns: 0,
            scratch: Vec::new(),
            inline_left_ns: 0,
            draining: false,
            finished: false,
            half_closed: Vec::new(),
        }
    }

    fn take_job(&mut self, token: usize, conn_id: u64, info: &Arc<ConnInfo>) -> Job {
        match self.spare.pop() {
            Some(mut job) => {
                job.reset(token, conn_id, info);
                job
            }
            None => Job::new(token, conn_id, info),
        }
    }

    /// Hands the connection's accumulated requests to a worker, or runs them inline when the
    /// server has no workers. Jobs out never exceed `max_jobs` (the capacity of the pool's
    /// queues): without a free slot the requests stay with the connection, which waits in
    /// `awaiting_worker` and is served as jobs come back.
    fn dispatch(&mut self, token: usize, sc: &mut ServerConn, conn: &mut Conn) {
        if sc.job.is_none() {
            return;
        }
        let Some(pool) = self.pool.clone() else {
            self.run_here(sc, conn, None);
            return;
        };
        // Jobs whose handlers are known to take less in all than a hand-off to a worker and
        // back (two thread wake-ups) run here, up to the budget per reactor turn; beyond it the
        // workers share the load. A pipelined connection's jobs stay in order: inline only when
        // none of its jobs is at a worker.
        let nreq = sc.job.as_ref().map_or(0, |j| u64::from(j.nreq));
        let in_order = !self.cfg.pipeline || sc.in_flight == 0;
        let cost = pool.cost_per_request().map(|c| c.saturating_mul(nreq));
        if let Some(cost) = cost.filter(|&c| c <= self.inline_left_ns && in_order) {
            self.inline_left_ns -= cost;
            self.run_here(sc, conn, Some(&pool));
            return;
        }
        if self.jobs_out < self.cfg.max_jobs {
            match pool.submit(sc.job.take().expect("checked above")) {
                Ok(()) => {
                    sc.in_flight += 1;
                    self.jobs_out += 1;
                    return;
                }
                Err(job) => sc.job = Some(job), // not reached: the queue holds `max_jobs`
            }
        }
        if !sc.awaiting_worker {
            sc.awaiting_worker = true;
            self.awaiting_worker.push_back(token);
        }
    }

    /// Runs the connection's accumulated requests on the reactor thread and queues the answers
    /// (timed by `pool`, when there is one, to keep its cost estimate current).
    fn run_here(&mut self, sc: &mut ServerConn, conn: &mut Conn, pool: Option<&Pool>) {
        let Some(mut job) = sc.job.take() else {
            return;
        };
        match pool {
            Some(pool) => pool.run_timed(&mut job, &*self.cfg.handler, &mut self.scratch),
            None => job.run(&*self.cfg.handler, &mut self.scratch),
        }
        self.answer(&mut job, conn);
        self.spare.push(job);
    }

    /// Dispatches the requests of connections that waited for a job slot.
    fn dispatch_awaiting(&mut self, core: &mut Core) {
        while self.jobs_out < self.cfg.max_jobs {
            let Some(token) = self.awaiting_worker.pop_front() else {
                return;
            };
            let Some(ep) = core.conn(token) else {
                continue;
            };
            let ConnRole::Server(sc) = &mut ep.role else {
                continue;
            };
            if !sc.awaiting_worker {
                continue; // a later connection in the same slot
            }
            sc.awaiting_worker = false;
            // In pipeline mode a connection's next job waits for its previous one.
            if !self.cfg.pipeline || sc.in_flight == 0 {
                self.dispatch(token, sc, &mut ep.conn);
            }
        }
    }

    /// Queues a finished job's responses on its connection and counts it.
    fn answer(&mut self, job: &mut Job, conn: &mut Conn) {
        conn.queue_encoded(&job.responses, job.nresp);
        self.account(job);
    }

    fn account(&mut self, job: &Job) {
        self.queued -= job.nreq as usize;
        let stats = &self.shared.stats;
        stats.add(C::calls, u64::from(job.nreq - job.failed));
        stats.add(C::server, u64::from(job.failed));
    }

    fn may_take_more(&self) -> bool {
        self.queued < self.cfg.max_queued_requests && self.jobs_out < self.cfg.max_jobs
    }

    fn return_finished_jobs(&mut self, core: &mut Core) {
        let Some(pool) = self.pool.clone() else {
            return;
        };
        while let Some(mut job) = pool.finished() {
            self.jobs_out -= 1;
            match core.conn(job.token) {
                Some(ep) if ep.id == job.conn_id => {
                    let ConnRole::Server(sc) = &mut ep.role else {
                        unreachable!("server job on a client connection");
                    };
                    sc.in_flight -= 1;
                    ep.conn.queue_encoded(&job.responses, job.nresp);
                    self.account(&job);
                    // Pipeline mode: the requests that arrived meanwhile go next, in order.
                    if sc.in_flight == 0 && sc.job.is_some() {
                        self.dispatch(job.token, sc, &mut ep.conn);
                    }
                    core.mark_dirty(job.token);
                }
                // The connection is gone: its answers have nobody to go to.
                _ => self.account(&job),
            }
            job.requests.clear();
            self.spare.push(job);
        }
        self.dispatch_awaiting(core);
    }

    /// Reads again from paused connections once the server has room and their responses have
    /// drained (the reactor writes on writability before services take their turn).
    fn resume_paused(&mut self, core: &mut Core) {
        if self.paused.is_empty() || !self.may_take_more() {
            return;
        }
        let mut i = 0;
        while i < self.paused.len() {
            let token = self.paused[i];
            match core.conn(token) {
                Some(ep) if ep.conn.send_backlog() >= MAX_SEND_BACKLOG / 2 => i += 1,
                Some(ep) => {
                    if let ConnRole::Server(sc) = &mut ep.role {
                        sc.paused = false;
                    }
                    core.to_read.push(token);
                    self.paused.swap_remove(i);
                }
                None => {
                    self.paused.swap_remove(i);
                }
            }
        }
    }

    fn begin_shutdown(&mut self, core: &mut Core) {
        self.draining = true;
        for token in self.listeners.drain(..) {
            core.remove_listener(token);
        }
        let id = self.id;
        for (_, ep) in core.endpoints.iter_mut() {
            if let crate::reactor::Endpoint::Conn(ep) = ep {
                if ep.service == id {
                    ep.conn.begin_drain();
                }
            }
        }
    }

    /// While draining: closes connections with nothing left to answer or write; finishes
    /// when none remain.
    fn close_drained(&mut self, core: &mut Core) {
        let id = self.id;
        let mut done = Vec::new();
        for (token, ep) in core.endpoints.iter_mut() {
            let crate::reactor::Endpoint::Conn(ep) = ep else {
                continue;
            };
            if ep.service != id {
                continue;
            }
            let ConnRole::Server(sc) = &ep.role else {
                continue;
            };
            if sc.in_flight == 0 && sc.job.is_none() && ep.conn.is_flushed() {
                done.push(token);
            }
        }
        for token in done {
            core.close_conn(token, None);
        }
        self.finish_if_drained();
    }

    /// Closes the half-closed connections that have nothing left to answer or write. One
    /// whose peer does not read its answers is closed by its idle timeout (or at shutdown).
    fn close_half_closed(&mut self, core: &mut Core) {
        self.half_closed.retain(|&(token, id)| {
            let Some(ep) = core.conn(token).filter(|ep| ep.id == id) else {
                return false;
            };
            let ConnRole::Server(sc) = &ep.role else {
                return false;
            };
            if sc.in_flight == 0 && sc.job.is_none() && ep.conn.is_flushed() {
                core.close_conn(token, None);
                return false;
            }
            true
        });
    }

    /// Ends a shutdown once no connection and no job is left. Checked whenever either count
    /// drops, so the reactor never has to wake up just to look.
    fn finish_if_drained(&mut self) {
        if self.draining && !self.finished && self.conns == 0 && self.jobs_out == 0 {
            self.finished = true;
            if let Some(pool) = &self.pool {
                pool.stop();
            }
            self.shared.mark_finished();
        }
    }
}

impl Service for ServerCore {
    fn stats(&self) -> &SharedStats {
        &self.shared.stats
    }

    fn accept(&mut self, core: &mut Core, stream: Stream) {
        if self.draining || self.conns >= self.cfg.max_connections {
            self.shared.stats.inc(C::accept_errors);
            return; // dropping the stream closes it
        }
        let _ = stream.set_nodelay();
        let info = Arc::new(ConnInfo::new(stream.peer_addr(), core.next_conn_id()));
        if let Some(hook) = &self.cfg.on_connect {
            if hook(&info).is_err() {
                self.shared.stats.inc(C::accept_errors);
                return;
            }
        }
        let conn = Conn::new(self.cfg.conn.clone(), core.now);
        let sc = ServerConn {
            info,
            job: None,
            in_flight: 0,
            paused: false,
            awaiting_worker: false,
        };
        match core.add_conn(stream, conn, self.id, true, ConnRole::Server(sc)) {
            Ok(_) => {
                self.conns += 1;
                self.shared.stats.inc(C::open_connections);
            }
            Err(_) => self.shared.stats.inc(C::accept_errors),
        }
    }

    fn on_open(&mut self, _token: usize, ep: &mut ConnEp) -> Result<(), Error> {
        // The handshake is done: record the client's TLS identity for the handlers. No job
        // holds the info yet (frames come after this).
        if let ConnRole::Server(sc) = &mut ep.role {
            if let Some(info) = Arc::get_mut(&mut sc.info) {
                info.learn_handshake(&ep.conn);
            }
        }
        Ok(())
    }

    fn on_frames(
        &mut self,
        token: usize,
        ep: &mut ConnEp,
        _now: Instant,
    ) -> Result<(), ProtocolError> {
        let ConnRole::Server(sc) = &mut ep.role else {
            unreachable!("client connection given to a server");
        };
        let pipeline = self.cfg.pipeline;
        let conn_id = ep.id;
        // Responses above what the client accepts become error responses (see `Job::run`).
        let fastrpc = matches!(self.cfg.conn.profile, Profile::Fastrpc(_));
        let max_response = ep
            .conn
            .peer_max_frame_len()
            .unwrap_or(0)
            .min(self.cfg.conn.max_frame_len);
        // Take frames only while under the queue limit; the rest wait in the connection's
        // buffer (and reading pauses, see `may_read`) until answers free room. A job answered
        // inline frees room at once: then take more, since no event will come for frames that
        // are already buffered.
        loop {
            let mut exhausted = false;
            while self.queued < self.cfg.max_queued_requests {
                let Some(frame) = ep.conn.poll_frame()? else {
                    exhausted = true;
                    break;
                };
                if sc.job.is_none() {
                    let mut job = self.take_job(token, conn_id, &sc.info);
                    job.max_response = max_response;
                    job.fastrpc = fastrpc;
                    sc.job = Some(job);
                }
                let job = sc.job.as_mut().expect("just set");
                job.push(frame.id, frame.kind, frame.payload);
                self.queued += 1;
                if !pipeline && job.nreq >= JOB_MAX_REQUESTS && self.jobs_out < self.cfg.max_jobs {
                    self.dispatch(token, sc, &mut ep.conn);
                }
            }
            if sc.job.is_some() && (!pipeline || sc.in_flight == 0) {
                self.dispatch(token, sc, &mut ep.conn);
            }
            if exhausted || self.queued >= self.cfg.max_queued_requests {
                break;
            }
        }
        if ep.conn.state() == State::Draining && !self.draining {
            // The client ended its stream after whole frames (half-close): answer what it
            // sent, write it, then close (see `close_half_closed`).
            self.half_closed.push((token, conn_id));
        }
        Ok(())
    }

    fn may_read(&mut self, token: usize, ep: &mut ConnEp) -> bool {
        if self.may_take_more() && ep.conn.send_backlog() < MAX_SEND_BACKLOG {
            return true;
        }
        if let ConnRole::Server(sc) = &mut ep.role {
            if !sc.paused {
                sc.paused = true;
                self.paused.push(token);
            }
        }
        false
    }

    fn turn(&mut self, core: &mut Core) {
        self.inline_left_ns = self.cfg.inline_budget_ns;
        if !self.draining && self.shared.shutdown_requested() {
            self.begin_shutdown(core);
        }
        self.return_finished_jobs(core);
        self.resume_paused(core);
    }

    fn flushed(&mut self, core: &mut Core) {
        if self.draining {
            self.close_drained(core);
        } else if !self.half_closed.is_empty() {
            self.close_half_closed(core);
        }
    }

    fn on_conn_closed(
        &mut self,
        _core: &mut Core,
        _token: usize,
        ep: ConnEp,
        cause: Option<Error>,
    ) {
        self.conns -= 1;
        self.shared.stats.sub(C::open_connections, 1);
        if let ConnRole::Server(sc) = ep.role {
            if let Some(job) = sc.job {
                self.queued -= job.nreq as usize;
                self.spare.push(job);
            }
        }
        if let Some(Error::Protocol(_)) = cause {
            if !ep.conn.handshake_complete() {
                self.shared.stats.inc(C::accept_errors);
            }
        }
        self.finish_if_drained();
    }

    fn next_deadline(&self) -> Option<Instant> {
        None
    }

    fn has_work(&self) -> bool {
        self.pool.as_ref().is_some_and(|p| p.has_finished())
            || (!self.draining && self.shared.shutdown_requested())
    }

    fn is_finished(&self) -> bool {
        self.finished
    }
}

impl Drop for ServerCore {
    /// However the reactor lets go of the server (finished, or dropped), the workers stop and
    /// a waiting `shutdown()` returns.
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.stop();
        }
        self.shared.mark_finished();
    }
}
