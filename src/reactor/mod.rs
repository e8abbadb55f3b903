//! The reactor: one thread's worth of I/O for any number of clients and servers.
//!
//! A [`Reactor`] owns a `mio::Poll`, a slab of endpoints (listeners and connections), a timer
//! heap for connection deadlines, and one `mio::Waker`. Each [`Reactor::poll_once`] is one turn:
//!
//! 1. poll (sleeping no longer than the earliest deadline);
//! 2. accept on ready listeners; read every readable connection until it would block (mio is
//!    edge-triggered), handing decoded frames to the connection's client or server;
//! 3. let each client and server drain its queues (new calls from caller threads, finished
//!    responses from workers) and fire its deadlines;
//! 4. fire due connection timers (handshake timeouts, batch delays);
//! 5. flush every connection with output once: one `write()` per connection per turn carries
//!    everything queued during the turn.
//!
//! [`Reactor::run`] is a loop around `poll_once`; [`crate::Server::bind`] and
//! [`crate::Client::connect`] run it on a thread of their own, while `bind_on`/`connect_on`
//! attach to a reactor you drive yourself.
//!
//! # Waking
//! Other threads hand work over through lock-free queues and then call
//! [`ReactorShared::notify`], which costs one atomic load unless the reactor announced that it
//! is about to sleep; only then is the waker's syscall paid. The reactor announces, re-checks
//! its queues, and sleeps only if they are empty (the handshake is sequentially consistent on
//! both sides, so a hand-off is never missed).
//!
//! # Busy polling
//! Waking a thread whose core went idle costs tens of microseconds on virtual machines (the
//! vCPU halts and the hypervisor has to schedule it again), more than a loopback round trip.
//! A reactor whose traffic is latency-bound (its last frames came a few at a time) therefore
//! polls without sleeping, yielding the core between looks, for up to
//! [`Reactor::set_busy_poll`] after its last activity before it blocks in the kernel. A
//! reactor moving large batches spins only while its idle spells have mostly ended within
//! that time; otherwise spinning would take the core from the threads that feed it
//! ([`busy_poll`] holds the policy).
//!
//! # Callers driving a client's reactor
//! A client's own reactor (made by `connect()`) runs under a [`Driver`]: a caller about to
//! block on a call runs the turns itself while nobody else does, and hands the reactor back
//! to its thread when it leaves work behind. The turns are the same code; only the thread
//! that runs them differs. While callers drive, the reactor's thread rests: it watches for its
//! wake-up for the busy-poll time, then parks; handing the reactor back to a thread still
//! watching costs no syscall.
//!
//! # Driving it yourself
//! Call `poll_once` in your loop with the timeout you can afford (`Some(Duration::ZERO)` never
//! blocks). Spurious wake-ups are harmless. Calls made from the driving thread must not block
//! on their own completion: use [`crate::PendingCall::is_done`] / `try_wait` between turns.

mod busy_poll;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Registry, Token, Waker};
use slab::Slab;

use self::busy_poll::BusyPoll;
use crate::stats::{SharedStats, C};
use crate::transport::{Address, Listener, Stream};
use crate::wire::conn::{Conn, Counters, State};
use crate::wire::liveness::LivenessError;
use crate::wire::ProtocolError;
use crate::Error;

const WAKER: Token = Token(usize::MAX);
/// Reads per connection per turn before other connections get their turn.
const READ_BUDGET: usize = 16;
/// A connection with no traffic for this long gives its buffers back.
const IDLE_AFTER: Duration = Duration::from_secs(1);
/// The busy polling of the reactors `Client::connect` and `Server::bind` start.
pub(crate) const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(100);

/// The part of a reactor other threads hold: its waker.
pub(crate) struct ReactorShared {
    waker: Waker,
    sleeping: AtomicBool,
    /// Whether a shared reactor's own thread is polling ([`RUNNING`]) or resting, spinning
    /// ([`RESTING`]) or asleep ([`ASLEEP`]), and must be unparked to act: see [`Driver`].
    parked: AtomicU8,
    /// That thread, for reactors run by [`spawn_shared`].
    thread: OnceLock<Thread>,
}

impl ReactorShared {
    /// Wakes the reactor if it may be asleep. Call after pushing work to one of its queues.
    /// True when that took a wake-up syscall (the reactor had announced it would sleep).
    #[inline]
    pub(crate) fn notify(&self) -> bool {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::SeqCst) {
            let _ = self.waker.wake();
            return true;
        }
        self.unpark_thread()
    }

    /// Unparks the reactor's own thread if it announced it was resting. True when that took
    /// a wake-up syscall (it was asleep, not spinning).
    #[inline]
    fn unpark_thread(&self) -> bool {
        if self.parked.load(Ordering::SeqCst) != RUNNING
            && self.parked.swap(RUNNING, Ordering::SeqCst) == ASLEEP
        {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
            return true;
        }
        false
    }
}

/// [`ReactorShared::parked`]: the thread polls, or holds the role.
const RUNNING: u8 = 0;
/// The thread rests, spinning: clearing the flag is all it takes to bring it back.
const RESTING: u8 = 1;
/// The thread rests, asleep: it must be unparked too.
const ASLEEP: u8 = 2;

/// A client or server hosted by a reactor: the reactor does the I/O, the service the rest.
pub(crate) trait Service: Send {
    /// Its counters.
    fn stats(&self) -> &SharedStats;
    /// A listener of this service accepted `stream`.
    fn accept(&mut self, core: &mut Core, stream: Stream) {
        let _ = (core, stream);
    }
    /// The connection completed its handshake; an error closes it with that cause.
    fn on_open(&mut self, token: usize, ep: &mut ConnEp) -> Result<(), Error> {
        let _ = (token, ep);
        Ok(())
    }
    /// New bytes arrived at `now`: take the connection's frames (`ep.conn.poll_frame()` until
    /// `None`).
    fn on_frames(
        &mut self,
        token: usize,
        ep: &mut ConnEp,
        now: Instant,
    ) -> Result<(), ProtocolError>;
    /// Whether to read more from this connection now (false: backpressure; the service puts
    /// the token in `core.to_read` when it may read again).
    fn may_read(&mut self, token: usize, ep: &mut ConnEp) -> bool {
        let _ = (token, ep);
        true
    }
    /// Once per turn: drain queues, fire deadlines, manage connections.
    fn turn(&mut self, core: &mut Core);
    /// Once per turn, after every connection was flushed (connections closed here are reaped
    /// in the same turn).
    fn flushed(&mut self, core: &mut Core) {
        let _ = core;
    }
    /// A connection of this service is gone; `cause` is why, `None` for an orderly close.
    fn on_conn_closed(&mut self, core: &mut Core, token: usize, ep: ConnEp, cause: Option<Error>);
    /// The earliest time `turn` has something to do.
    fn next_deadline(&self) -> Option<Instant>;
    /// Work is waiting in a queue (so the reactor must not sleep).
    fn has_work(&self) -> bool;
    /// Calls are outstanding that someone must see through even though no caller may be
    /// waiting for them (so a caller that drove the reactor hands it back to its thread).
    fn is_busy(&self) -> bool {
        false
    }
    /// Done for good: the reactor drops it.
    fn is_finished(&self) -> bool;
}

/// What a connection belongs to, with the owner's per-connection state.
pub(crate) enum ConnRole {
    Server(crate::server::core::ServerConn),
    Client { slot: usize },
}

/// A connection endpoint.
pub(crate) struct ConnEp {
    pub stream: Stream,
    pub conn: Conn,
    pub service: usize,
    /// Unique per reactor, never reused: tells a connection from a later one in the same slot.
    pub id: u64,
    pub peer: Address,
    /// False while a dial is in progress.
    pub connected: bool,
    pub writable: bool,
    dirty: bool,
    reaping: bool,
    timer: Option<Instant>,
    /// The last turn that read or wrote something.
    last_active: Instant,
    /// An event said the peer closed its side (or the socket has an error): read until the
    /// end is seen, with no short-read shortcut (no later edge will announce it).
    read_closed: bool,
    seen: Counters,
    /// Why it is closing, when the reactor or the service knows better than the protocol.
    cause: Option<Error>,
    pub role: ConnRole,
}

pub(crate) struct ListenerEp {
    pub listener: Listener,
    pub service: usize,
}

/// What a token stands for. Listeners are few, so the size of the connection variant they
/// share the slab with costs nothing worth an extra indirection on every connection access.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Endpoint {
    Listener(ListenerEp),
    Conn(ConnEp),
}

/// The reactor's state that services may touch: endpoints, the flush list, timers.
pub(crate) struct Core {
    pub registry: Registry,
    pub endpoints: Slab<Endpoint>,
    /// Connections to read this turn even without a new event (budget spent, or resumed).
    pub to_read: Vec<usize>,
    dirty: Vec<usize>,
    closing: Vec<usize>,
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    pub shared: Arc<ReactorShared>,
    next_id: u64,
    /// Frames decoded so far this turn, over all connections.
    frames_this_turn: u64,
    /// When to look for idle connections holding buffers next.
    next_sweep: Instant,
    /// The time at the start of this turn's work.
    pub now: Instant,
}

impl Core {
    /// The id the next [`Core::add_conn`] will give its connection.
    pub fn next_conn_id(&self) -> u64 {
        self.next_id + 1
    }

    /// Registers a connection and returns its token.
    pub fn add_conn(
        &mut self,
        mut stream: Stream,
        conn: Conn,
        service: usize,
        connected: bool,
        role: ConnRole,
    ) -> io::Result<usize> {
        let entry = self.endpoints.vacant_entry();
        let token = entry.key();
        self.registry.register(
            stream.source(),
            Token(token),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.next_id += 1;
        let peer = if connected {
            stream.peer_addr()
        } else {
            Address::Custom(String::new())
        };
        entry.insert(Endpoint::Conn(ConnEp {
            stream,
            conn,
            service,
            id: self.next_id,
            peer,
            connected,
            writable: false,
            dirty: false,
            reaping: false,
            timer: None,
            last_active: self.now,
            read_closed: false,
            seen: Counters::default(),
            cause: None,
            role,
        }));
        self.arm(token);
        Ok(token)
    }

    /// Registers a listener and returns its token.
    pub fn add_listener(&mut self, mut listener: Listener, service: usize) -> io::Result<usize> {
        let entry = self.endpoints.vacant_entry();
        let token = entry.key();
        listener.register(&self.registry, Token(token))?;
        entry.insert(Endpoint::Listener(ListenerEp { listener, service }));
        Ok(token)
    }

    /// Deregisters and drops a listener.
    pub fn remove_listener(&mut self, token: usize) {
        if let Some(Endpoint::Listener(_)) = self.endpoints.get(token) {
            if let Endpoint::Listener(mut l) = self.endpoints.remove(token) {
                let _ = self.registry.deregister(l.listener.source());
            }
        }
    }

    /// The connection at `token`.
    #[inline]
    pub fn conn(&mut self, token: usize) -> Option<&mut ConnEp> {
        match self.endpoints.get_mut(token) {
            Some(Endpoint::Conn(ep)) if !ep.reaping => Some(ep),
            _ => None,
        }
    }

    /// Queues the connection for this turn's flush.
    #[inline]
    pub fn mark_dirty(&mut self, token: usize) {
        if let Some(Endpoint::Conn(ep)) = self.endpoints.get_mut(token) {
            mark_dirty(&mut self.dirty, token, ep);
        }
    }

    /// Closes a connection at the end of this turn (its owner is told through
    /// [`Service::on_conn_closed`]). `cause: None` closes in good order.
    pub fn close_conn(&mut self, token: usize, cause: Option<Error>) {
        if let Some(Endpoint::Conn(ep)) = self.endpoints.get_mut(token) {
            close_ep(&mut self.closing, token, ep, cause);
        }
    }

    /// Puts the connection's next protocol deadline in the timer heap.
    fn arm(&mut self, token: usize) {
        if let Some(Endpoint::Conn(ep)) = self.endpoints.get_mut(token) {
            if let Some(at) = ep.conn.next_deadline() {
                if ep.timer.is_none_or(|t| at < t) {
                    ep.timer = Some(at);
                    self.timers.push(Reverse((at, token, ep.id)));
                }
            }
        }
    }
}

#[inline]
fn mark_dirty(dirty: &mut Vec<usize>, token: usize, ep: &mut ConnEp) {
    if !ep.dirty {
        ep.dirty = true;
        dirty.push(token);
    }
}

fn close_ep(closing: &mut Vec<usize>, token: usize, ep: &mut ConnEp, cause: Option<Error>) {
    if ep.cause.is_none() {
        ep.cause = cause;
    }
    if !ep.reaping {
        ep.reaping = true;
        ep.conn.close();
        closing.push(token);
    }
}

/// An event loop hosting clients and servers.
///
/// Each [`Reactor::poll_once`] is one turn: poll (sleeping no longer than the earliest
/// deadline); accept and read every ready connection until it would block; let each client
/// and server take in the work other threads handed over (new calls, finished responses) and
/// fire its deadlines; fire connection timers (handshakes, batch delays); then flush every
/// connection with output once, so that one `write()` carries everything queued during the
/// turn. [`Reactor::run`] is a loop around `poll_once`.
///
/// # Driving it yourself
/// Call `poll_once` in your loop with the timeout you can afford (`Some(Duration::ZERO)` never
/// blocks). Other threads wake it cheaply when they hand it work: an atomic load, and a
/// syscall only if it announced it was about to sleep. Spurious wake-ups are harmless. Calls
/// made from the driving thread must not block on their own completion: check
/// [`crate::PendingCall::is_done`] (or use `try_wait`) between turns, as below.
///
/// ```no_run
/// # fn main() -> Result<(), batchrpc::Error> {
/// use std::time::Duration;
/// use batchrpc::{Client, Reactor, Server};
///
/// let mut reactor = Reactor::new()?;
/// let server = Server::builder()
///     .workers(0) // handlers run inline on this thread
///     .handler(|_ctx: &batchrpc::RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
///         resp.extend_from_slice(req);
///         Ok(())
///     })
///     .bind_on(&mut reactor, "127.0.0.1:0")?;
/// let client = Client::builder(server.local_addr()).connect_on(&mut reactor)?;
/// let pending = client.call_async(b"ping")?;
/// while !pending.is_done() {
///     reactor.poll_once(Some(Duration::from_millis(10)))?;
/// }
/// assert_eq!(&*pending.wait()?, b"ping");
/// # Ok(()) }
/// ```
pub struct Reactor {
    poll: Poll,
    events: Events,
    /// (token, readable, writable) of this turn's events.
    ready: Vec<(usize, bool, bool)>,
    /// Connections read this turn without an event (swapped with `core.to_read`).
    reading: Vec<usize>,
    /// Buffer bytes per service, summed by the idle sweep.
    buffered: Vec<u64>,
    core: Core,
    services: Slab<Box<dyn Service>>,
    /// When to poll without sleeping, and for how long.
    busy_poll: BusyPoll,
}

impl std::fmt::Debug for Reactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor")
            .field("endpoints", &self.core.endpoints.len())
            .field("services", &self.services.len())
            .finish_non_exhaustive()
    }
}

impl Reactor {
    /// A reactor with nothing attached yet.
    pub fn new() -> io::Result<Reactor> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let registry = poll.registry().try_clone()?;
        Ok(Reactor {
            poll,
            events: Events::with_capacity(1024),
            ready: Vec::with_capacity(1024),
            reading: Vec::new(),
            buffered: Vec::new(),
            core: Core {
                registry,
                endpoints: Slab::new(),
                to_read: Vec::new(),
                dirty: Vec::new(),
                closing: Vec::new(),
                timers: BinaryHeap::new(),
                shared: Arc::new(ReactorShared {
                    waker,
                    sleeping: AtomicBool::new(false),
                    parked: AtomicU8::new(RUNNING),
                    thread: OnceLock::new(),
                }),
                next_id: 0,
                frames_this_turn: 0,
                next_sweep: Instant::now() + IDLE_AFTER,
                now: Instant::now(),
            },
            services: Slab::new(),
            busy_poll: BusyPoll::new(Duration::ZERO),
        })
    }

    /// Busy polling: while its recent frames came a few at a time (at most 16 a turn), the
    /// reactor polls without sleeping for up to `spin` after its last activity, yielding the
    /// core between looks, before it blocks in the kernel; a hand-off from another thread
    /// ends the spin at once and costs that thread no wake-up syscall. After larger turns it
    /// spins (for up to `spin` from when it went idle) only while at least three in four of
    /// its recent idle spells ended within `spin`. It trades CPU (at most `spin` per idle
    /// spell) for latency where waking an idle core is slow (tens of
    /// microseconds on virtual machines). Zero (the default for a reactor you make;
    /// `connect()` and `bind()` use their builder's `busy_poll`) never spins. Waits are
    /// never longer than they would be without it: `poll_once`'s timeout and every deadline
    /// still bound them.
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// let mut reactor = batchrpc::Reactor::new()?;
    /// reactor.set_busy_poll(std::time::Duration::from_micros(100));
    /// # Ok(()) }
    /// ```
    pub fn set_busy_poll(&mut self, spin: Duration) {
        self.busy_poll = BusyPoll::new(spin);
    }

    pub(crate) fn shared(&self) -> &Arc<ReactorShared> {
        &self.core.shared
    }

    /// Attaches a service built from its id and the core (to register its endpoints).
    pub(crate) fn add_service<F>(&mut self, build: F) -> crate::Result<usize>
    where
        F: FnOnce(usize, &mut Core) -> crate::Result<Box<dyn Service>>,
    {
        let entry = self.services.vacant_entry();
        let id = entry.key();
        self.core.now = Instant::now();
        let service = build(id, &mut self.core)?;
        entry.insert(service);
        Ok(id)
    }

    /// True when no client or server is attached (all have finished).
    pub fn is_idle(&self) -> bool {
        self.services.is_empty()
    }

    /// Runs turns until every attached client and server has finished.
    pub fn run(&mut self) -> io::Result<()> {
        while !self.services.is_empty() {
            self.poll_once(None)?;
        }
        Ok(())
    }

    /// One turn: waits up to `timeout` (`None`: until something happens) for I/O, a hand-off
    /// from another thread or a deadline, then does all the work that is ready.
    pub fn poll_once(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let now = Instant::now();
        let timeout = self.sleep_budget(timeout, now);
        let active = self.wait(timeout, now)?;
        self.core.now = Instant::now();
        if active {
            let waited = timeout != Some(Duration::ZERO);
            let idle = waited.then(|| self.core.now.saturating_duration_since(now));
            self.busy_poll.note_active(self.core.now, idle);
        }

        self.ready.clear();
        for event in self.events.iter() {
            if event.token() == WAKER {
                continue;
            }
            let closed = event.is_read_closed() || event.is_error();
            if closed {
                if let Some(Endpoint::Conn(ep)) = self.core.endpoints.get_mut(event.token().0) {
                    ep.read_closed = true;
                }
            }
            let readable = event.is_readable() || closed;
            let writable = event.is_writable() || event.is_write_closed() || event.is_error();
            self.ready.push((event.token().0, readable, writable));
        }
        for i in 0..self.ready.len() {
            let (token, readable, writable) = self.ready[i];
            match self.core.endpoints.get(token) {
                Some(Endpoint::Listener(_)) => self.accept(token),
                Some(Endpoint::Conn(_)) => {
                    if writable {
                        self.on_writable(token);
                    }
                    if readable {
                        self.read(token);
                    }
                }
                None => {}
            }
        }
        std::mem::swap(&mut self.core.to_read, &mut self.reading);
        for i in 0..self.reading.len() {
            self.read(self.reading[i]);
        }
        self.reading.clear();

        for (_, service) in self.services.iter_mut() {
            service.stats().inc(C::turns);
            service.turn(&mut self.core);
        }
        self.fire_timers();
        self.busy_poll
            .note_frames(std::mem::take(&mut self.core.frames_this_turn));
        if self.core.now >= self.core.next_sweep {
            self.release_idle_buffers();
        }
        self.flush();
        for (_, service) in self.services.iter_mut() {
            service.flushed(&mut self.core);
        }
        self.reap();
        self.services.retain(|_, s| !s.is_finished());
        Ok(())
    }

    /// Waits up to `timeout` for events (into `self.events`) or a hand-off, busy-polling
    /// first when the traffic is latency-bound. True if there was either.
    fn wait(&mut self, mut timeout: Option<Duration>, now: Instant) -> io::Result<bool> {
        let mut handed = self.has_work();
        if handed {
            timeout = Some(Duration::ZERO);
        } else if timeout != Some(Duration::ZERO) && self.spin(timeout, now)? {
            return Ok(true);
        }
        if timeout != Some(Duration::ZERO) {
            self.core.shared.sleeping.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if self.has_work() {
                handed = true;
                timeout = Some(Duration::ZERO);
            }
        }
        let polled = self.poll.poll(&mut self.events, timeout);
        self.core.shared.sleeping.store(false, Ordering::Relaxed);
        match polled {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        Ok(handed || !self.events.is_empty())
    }

    /// Busy polling, when [`BusyPoll`] says so: looks for events and hand-offs without
    /// sleeping, yielding the core between looks, until one comes (true) or the spin is over
    /// (false). Other threads see the reactor awake meanwhile, so their hand-offs cost no
    /// wake-up.
    fn spin(&mut self, timeout: Option<Duration>, now: Instant) -> io::Result<bool> {
        let Some(mut end) = self.busy_poll.spin_until(now) else {
            return Ok(false);
        };
        if let Some(timeout) = timeout {
            end = end.min(now + timeout);
        }
        loop {
            match self.poll.poll(&mut self.events, Some(Duration::ZERO)) {
                Ok(()) if !self.events.is_empty() => return Ok(true),
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if Instant::now() >= end {
                return Ok(false);
            }
            std::thread::yield_now();
            if self.has_work() {
                return Ok(true);
            }
        }
    }

    fn has_work(&self) -> bool {
        !self.core.to_read.is_empty()
            || !self.core.dirty.is_empty()
            || self.services.iter().any(|(_, s)| s.has_work())
    }

    /// Work that must not wait for the next event: queued hand-offs, or calls of a client
    /// that someone has to see through (see [`Service::is_busy`]).
    fn needs_driver(&self) -> bool {
        self.has_work() || self.services.iter().any(|(_, s)| s.is_busy())
    }

    fn sleep_budget(&self, timeout: Option<Duration>, now: Instant) -> Option<Duration> {
        let until_deadline = self
            .next_deadline()
            .map(|d| d.saturating_duration_since(now));
        match (timeout, until_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The earliest time a turn has something to do without an event: a connection timer, a
    /// service deadline, or the idle sweep.
    fn next_deadline(&self) -> Option<Instant> {
        let timer = self.core.timers.peek().map(|Reverse((at, _, _))| *at);
        let service = self
            .services
            .iter()
            .filter_map(|(_, s)| s.next_deadline())
            .min();
        let deadline = match (timer, service) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Idle connections are swept only while there are connections.
        let sweep = (!self.core.endpoints.is_empty()).then_some(self.core.next_sweep);
        match (deadline, sweep) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Gives back the buffers of connections that were quiet for [`IDLE_AFTER`], so that an
    /// idle connection costs its bookkeeping and no buffer memory. Busy connections keep
    /// theirs: steady traffic allocates nothing.
    fn release_idle_buffers(&mut self) {
        let now = self.core.now;
        self.core.next_sweep = now + IDLE_AFTER;
        self.buffered.clear();
        self.buffered.resize(self.services.capacity(), 0);
        for (_, ep) in self.core.endpoints.iter_mut() {
            if let Endpoint::Conn(ep) = ep {
                if now.saturating_duration_since(ep.last_active) >= IDLE_AFTER {
                    ep.conn.release_idle_buffers();
                }
                if let Some(sum) = self.buffered.get_mut(ep.service) {
                    *sum += ep.conn.buffered_capacity() as u64;
                }
            }
        }
        for (id, service) in self.services.iter() {
            service.stats().set(C::buffered_bytes, self.buffered[id]);
        }
    }

    fn accept(&mut self, token: usize) {
        loop {
            let Some(Endpoint::Listener(l)) = self.core.endpoints.get_mut(token) else {
                return;
            };
            let service_id = l.service;
            let accepted = l.listener.accept();
            let Some(service) = self.services.get_mut(service_id) else {
                return;
            };
            match accepted {
                Ok(stream) => {
                    service.stats().inc(C::accepts);
                    service.accept(&mut self.core, stream);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // Out of descriptors or a connection reset before accept: counted; the
                    // listener stays, and the next readiness event tries again.
                    service.stats().inc(C::accept_errors);
                    return;
                }
            }
        }
    }

    fn on_writable(&mut self, token: usize) {
        let Some(Endpoint::Conn(ep)) = self.core.endpoints.get_mut(token) else {
            return;
        };
        if ep.reaping {
            return;
        }
        if !ep.connected {
            match ep.stream.connect_state() {
                Ok(true) => {
                    ep.connected = true;
                    ep.peer = ep.stream.peer_addr();
                    let _ = ep.stream.set_nodelay();
                }
                Ok(false) => return,
                Err(e) => {
                    close_ep(
                        &mut self.core.closing,
                        token,
                        ep,
                        Some(Error::Io(Arc::new(e))),
                    );
                    return;
                }
            }
        }
        ep.writable = true;
        // Write what waits now, so that services see the room this turn.
        self.flush_one(token);
    }

    fn read(&mut self, token: usize) {
        let Some(Endpoint::Conn(ep)) = self.core.endpoints.get_mut(token) else {
            return;
        };
        if ep.reaping || !ep.connected {
            return;
        }
        let Some(service) = self.services.get_mut(ep.service) else {
            return;
        };
        let mut budget = READ_BUDGET;
        // Set by a short read from a socket: the kernel buffer is empty, and new data will
        // raise a new edge, so the read that would only say "would block" is skipped.
        let mut drained = false;
        loop {
            // Hand over what is buffered first: frames a paused service left in the buffer
            // earlier, or what the last read brought.
            if ep.conn.poll_opened() {
                if let Err(e) = service.on_open(token, ep) {
                    close_ep(&mut self.core.closing, token, ep, Some(e));
                    return;
                }
            }
            if ep.conn.is_open() {
                if let Err(e) = service.on_frames(token, ep, self.core.now) {
                    close_ep(&mut self.core.closing, token, ep, Some(Error::Protocol(e)));
                    return;
                }
                let frames_in = ep.conn.counters().frames_in;
                service
                    .stats()
                    .add(C::frames_read, frames_in - ep.seen.frames_in);
                self.core.frames_this_turn += frames_in - ep.seen.frames_in;
                ep.seen.frames_in = frames_in;
            }
            // Ask the service first, even when the socket is drained: a service that stopped
            // taking frames (backpressure) registers the connection for resuming here.
            if !matches!(ep.conn.state(), State::Handshake | State::Tls | State::Open)
                || !service.may_read(token, ep)
                || drained
            {
                break;
            }
            if budget == 0 {
                self.core.to_read.push(token);
                break;
            }
            budget -= 1;
            let buf = ep.conn.recv_buf();
            let offered = buf.len();
            match ep.stream.read(buf) {
                Ok(0) => {
                    service.stats().inc(C::read_calls);
                    ep.conn.handle_eof();
                }
                Ok(n) => {
                    let stats = service.stats();
                    stats.inc(C::read_calls);
                    stats.add(C::bytes_read, n as u64);
                    ep.last_active = self.core.now;
                    ep.conn.handle_recv(n);
                    drained = n < offered && !ep.read_closed && ep.stream.edge_after_short_read();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    service.stats().inc(C::read_errors);
                    let cause = Some(Error::Io(Arc::new(e)));
                    close_ep(&mut self.core.closing, token, ep, cause);
                    return;
                }
            }
        }
        ep.conn.handle_progress(self.core.now);
        match ep.conn.state() {
            State::Closed => close_ep(&mut self.core.closing, token, ep, None),
            _ if !ep.conn.is_flushed() => mark_dirty(&mut self.core.dirty, token, ep),
            _ => {}
        }
        self.core.arm(token);
    }

    fn fire_timers(&mut self) {
        let now = self.core.now;
        while let Some(&Reverse((at, token, id))) = self.core.timers.peek() {
            if at > now {
                break;
            }
            self.core.timers.pop();
            let Some(Endpoint::Conn(ep)) = self.core.endpoints.get_mut(token) else {
                continue;
            };
            if ep.id != id || ep.timer != Some(at) || ep.reaping {
                continue;
            }
            ep.timer = None;
            ep.conn.handle_timeout(now);
            if ep.conn.state() == State::Closed {
                close_ep(&mut self.core.closing, token, ep, None);
            } else {
                mark_dirty(&mut self.core.dirty, token, ep);
            }
        }
    }

    fn flush(&mut self) {
        let mut dirty = std::mem::take(&mut self.core.dirty);
        for &token in &dirty {
            if let Some(Endpoint::Conn(ep)) = self.core.endpoints.get_mut(token) {
                ep.dirty = false;
                self.flush_one(token);
            }
        }
        dirty.clear();
        if self.core.dirty.is_empty() {
            self.core.dirty = dirty;
        }
    }

    /// Flushes a connection's batch if due and writes its output until done or blocked.
    fn flush_one(&mut self, token: usize) {
        let now = self.core.now;
        let Some(Endpoint::Conn(ep)) = self.core.endpoints.get_mut(token) else {
            return;
        };
        if ep.reaping || !ep.connected {
            return;
        }
        let Some(service) = self.services.get(ep.service) else {
            return;
        };
        let stats = service.stats();
        while let Some(bytes) = ep.conn.poll_transmit(now) {
            if !ep.writable {
                break;
            }
            match ep.stream.write(bytes) {
                Ok(n) => {
                    stats.inc(C::write_calls);
                    stats.add(C::bytes_written, n as u64);
                    ep.conn.handle_sent(n);
                    ep.last_active = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ep.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    stats.inc(C::write_errors);
                    close_ep(
                        &mut self.core.closing,
                        token,
                        ep,
                        Some(Error::Io(Arc::new(e))),
                    );
                    return;
                }
            }
        }
        let c = ep.conn.counters();
        stats.add(C::flushes, c.flushes - ep.seen.flushes);
        stats.add(C::frames_written, c.frames_out - ep.seen.frames_out);
        ep.seen.flushes = c.flushes;
        ep.seen.frames_out = c.frames_out;
        if ep.conn.state() == State::Closed {
            close_ep(&mut self.core.closing, token, ep, None);
        } else {
            self.core.arm(token);
        }
    }

    /// Removes closed connections and tells their owners.
    fn reap(&mut self) {
        while let Some(token) = self.core.closing.pop() {
            let Some(Endpoint::Conn(_)) = self.core.endpoints.get(token) else {
                continue;
            };
            let Endpoint::Conn(mut ep) = self.core.endpoints.remove(token) else {
                unreachable!("checked above");
            };
            let _ = self.core.registry.deregister(ep.stream.source());
            let cause = ep.cause.take().or_else(|| match ep.conn.close_reason() {
                Some(Err(e)) => Some(Error::Protocol(e.clone())),
                _ => None,
            });
            if let Some(service) = self.services.get_mut(ep.service) {
                match &cause {
                    Some(Error::Protocol(ProtocolError::Liveness(e))) => {
                        // A dead path is news; an idle peer let go is routine.
                        let (counter, level) = match e {
                            LivenessError::KeepaliveTimeout { .. } => {
                                (C::keepalive_timeouts, log::Level::Warn)
                            }
                            _ => (C::idle_timeouts, log::Level::Debug),
                        };
                        service.stats().inc(counter);
                        log::log!(
                            target: "batchrpc::conn",
                            level,
                            "closing the connection with {}: {e}",
                            ep.peer
                        );
                    }
                    Some(Error::Protocol(_)) => service.stats().inc(C::protocol),
                    _ => {}
                }
                service.on_conn_closed(&mut self.core, token, ep, cause);
            }
        }
    }
}

/// Runs `reactor` on a thread of its own until every service on it has finished.
pub(crate) fn spawn(mut reactor: Reactor, name: String) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(name).spawn(move || {
        // A poll error is not recoverable; dropping the reactor completes every pending call
        // of its clients with `Error::Closed` and closes every connection.
        let _ = reactor.run();
    })
}

/// How long a shared reactor's thread stays parked, while callers drive, before it looks at
/// the sockets and timers itself (connection loss, redials, idle sweeps are noticed at most
/// this late while every caller-driven turn has ended with nothing outstanding).
const HANDBACK_GRACE: Duration = Duration::from_millis(2);

/// A reactor run by a thread of its own that the threads waiting for its calls may drive
/// instead (leader/follower).
///
/// A caller about to block for a response it can only get from this reactor takes the
/// reactor's role (if nobody holds it), runs its turns until its call has completed, and hands
/// it back. The round trip then costs one wake-up of the caller (by its socket), where a hand
/// over to the reactor thread costs three (caller -> reactor, socket -> reactor, reactor ->
/// caller). The reactor code is the same; only the thread running it changes.
///
/// The role is `driving`; the reactor's lock is only ever taken by the role's holder. The
/// reactor's own thread drives while there is work and callers are not driving; once callers
/// have been driving (or wanted to), it steps aside when nothing is outstanding: it parks for
/// at most [`HANDBACK_GRACE`] (busy-polling for its unpark first, for the reactor's
/// [`Reactor::set_busy_poll`] time: unparking a spinning thread costs no syscall), then takes
/// one non-blocking look at the sockets and timers and steps aside again, until callers stop
/// coming; then it polls as usual. A caller that hands
/// back with work left (other calls outstanding, queued hand-offs, a deadline due soon) unparks
/// the thread.
pub(crate) struct Driver {
    reactor: Mutex<Option<Reactor>>,
    shared: Arc<ReactorShared>,
    driving: AtomicBool,
    /// Bumped each time a caller drove, or wanted to and found the role taken.
    activity: AtomicU64,
    /// The reactor's busy-poll time, for its thread's rests.
    busy_poll: Duration,
}

impl Driver {
    fn acquire(&self) -> bool {
        !self.driving.load(Ordering::Relaxed)
            && self
                .driving
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
    }

    fn lock(&self) -> MutexGuard<'_, Option<Reactor>> {
        // Only the role's holder locks, so this never waits; a panic inside a turn poisons it,
        // and the reactor is left as the panic left it (the thread then drops it).
        self.reactor.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Caller side: drives the reactor until `done()`, if nobody else is driving it. `None`
    /// when the role was taken (the caller should hand its work over and park), else whether
    /// handing the role back took a wake-up of the reactor's thread. `pending()` tells, after
    /// the role is given back, whether hand-offs arrived that nobody took yet.
    pub(crate) fn drive_until(
        &self,
        done: impl Fn() -> bool,
        pending: impl Fn() -> bool,
    ) -> Option<bool> {
        self.drive(None, done, pending)
    }

    /// Caller side: runs one turn that does not sleep, if nobody else is driving the reactor:
    /// queued hand-offs go out now. Returns as [`Driver::drive_until`].
    pub(crate) fn turn_now(&self, pending: impl Fn() -> bool) -> Option<bool> {
        let turned = std::cell::Cell::new(false);
        self.drive(Some(Duration::ZERO), || turned.replace(true), pending)
    }

    fn drive(
        &self,
        timeout: Option<Duration>,
        done: impl Fn() -> bool,
        pending: impl Fn() -> bool,
    ) -> Option<bool> {
        if !self.acquire() {
            self.activity.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.activity.fetch_add(1, Ordering::Relaxed);
        let role = OnPanic(self);
        let mut wake = false;
        {
            let mut guard = self.lock();
            if let Some(reactor) = guard.as_mut() {
                while !done() && !reactor.is_idle() {
                    if reactor.poll_once(timeout).is_err() {
                        // Fatal for the reactor: dropping it completes every call with
                        // `Error::Closed`; its thread then exits.
                        *guard = None;
                        break;
                    }
                }
                wake = match guard.as_ref() {
                    Some(r) => {
                        r.is_idle()
                            || r.needs_driver()
                            || r.next_deadline()
                                .is_some_and(|d| d <= Instant::now() + HANDBACK_GRACE)
                    }
                    None => true,
                };
            }
        }
        std::mem::forget(role);
        self.driving.store(false, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        Some((wake || pending()) && self.shared.unpark_thread())
    }

    /// The reactor's thread, having announced itself `parked`, waits up to `limit` for an
    /// unpark: busy-polling the flag first (for the reactor's busy-poll time: callers that
    /// drive hand back at round-trip intervals), then sleeping. While it spins, unparking it
    /// costs its callers no syscall.
    fn rest(&self, limit: Duration) {
        let parked = &self.shared.parked;
        let start = Instant::now();
        let end = start + self.busy_poll.min(limit);
        while Instant::now() < end {
            if parked.load(Ordering::Relaxed) == RUNNING {
                return;
            }
            std::thread::yield_now();
        }
        if parked
            .compare_exchange(RESTING, ASLEEP, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
        {
            std::thread::park_timeout(limit.saturating_sub(start.elapsed()));
        }
    }

    /// The reactor's own thread.
    fn run(&self) {
        let _on_panic = OnPanic(self);
        let mut seen = self.activity.load(Ordering::Relaxed);
        loop {
            if !self.acquire() {
                // A caller drives: it unparks this thread if it leaves work behind.
                self.shared.parked.store(RESTING, Ordering::SeqCst);
                fence(Ordering::SeqCst);
                if !self.acquire() {
                    self.rest(HANDBACK_GRACE);
                    self.shared.parked.store(RUNNING, Ordering::Relaxed);
                    continue;
                }
                self.shared.parked.store(RUNNING, Ordering::Relaxed);
            }
            // The role is this thread's until it steps aside.
            let mut guard = self.lock();
            let until = loop {
                let Some(reactor) = guard.as_mut() else {
                    break None;
                };
                if reactor.is_idle() {
                    break None;
                }
                let activity = self.activity.load(Ordering::Relaxed);
                if activity == seen || reactor.needs_driver() {
                    if reactor.poll_once(None).is_err() {
                        break None;
                    }
                    continue;
                }
                // Callers have been driving: look without sleeping, then step aside.
                seen = activity;
                if reactor.poll_once(Some(Duration::ZERO)).is_err() {
                    break None;
                }
                self.shared.parked.store(RESTING, Ordering::SeqCst);
                fence(Ordering::SeqCst);
                if reactor.is_idle() || reactor.needs_driver() {
                    self.shared.parked.store(RUNNING, Ordering::Relaxed);
                    continue;
                }
                let now = Instant::now();
                break Some(
                    reactor
                        .next_deadline()
                        .map_or(HANDBACK_GRACE, |d| d.saturating_duration_since(now))
                        .min(HANDBACK_GRACE),
                );
            };
            let Some(until) = until else {
                // Finished, or a poll error: dropping the reactor completes every call left.
                *guard = None;
                drop(guard);
                self.driving.store(false, Ordering::SeqCst);
                return;
            };
            drop(guard);
            self.driving.store(false, Ordering::SeqCst);
            if !until.is_zero() {
                self.rest(until);
            }
            self.shared.parked.store(RUNNING, Ordering::Relaxed);
        }
    }
}

/// Unwinding out of a turn (a panicking user hook) with the role held: the reactor is dropped,
/// as it was when it belonged to its thread alone, so that every call completes with
/// [`Error::Closed`] instead of waiting for a role nobody gives back.
struct OnPanic<'a>(&'a Driver);

impl Drop for OnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let reactor = self.0.lock().take();
            drop(reactor);
            self.0.driving.store(false, Ordering::SeqCst);
            self.0.shared.unpark_thread();
        }
    }
}

/// Runs `reactor` on a thread of its own until every service on it has finished, letting
/// waiting callers drive it in between (see [`Driver`]).
pub(crate) fn spawn_shared(
    reactor: Reactor,
    name: String,
) -> io::Result<(Arc<Driver>, std::thread::JoinHandle<()>)> {
    let shared = reactor.core.shared.clone();
    let busy_poll = reactor.busy_poll.spin();
    let driver = Arc::new(Driver {
        reactor: Mutex::new(Some(reactor)),
        shared,
        driving: AtomicBool::new(false),
        activity: AtomicU64::new(0),
        busy_poll,
    });
    let d = driver.clone();
    let handle = std::thread::Builder::new().name(name).spawn(move || {
        let _ = d.shared.thread.set(std::thread::current());
        d.run();
    })?;
    Ok((driver, handle))
}
