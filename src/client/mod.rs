//! The client: a cloneable handle for blocking, asynchronous, fire-and-forget and batched
//! calls over `conns(n)` multiplexed connections.

mod core;
mod deadlines;
mod slots;

use std::fmt;
use std::io;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use crate::reactor::{self, Driver, Reactor, ReactorShared};
use crate::stats::{SharedStats, Stats, C};
use crate::transport::{Address, CustomStream, Stream, ToAddress};
use crate::wire::conn::{ConnConfig, Profile, Role};
use crate::{Compression, ConnInfo, Error, Result};
use slots::{Slots, CALLER, REACTOR, WIRE};

type Dialer = dyn Fn() -> io::Result<Box<dyn CustomStream>> + Send + Sync;
type OnConnect = dyn Fn(&ConnInfo) -> std::result::Result<(), String> + Send + Sync;

/// Settings the client's reactor side reads.
pub(crate) struct ClientConfig {
    pub addr: Address,
    pub conn: ConnConfig,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub dialer: Option<Arc<Dialer>>,
    pub on_connect: Option<Arc<OnConnect>>,
    /// `connect()` waits for the first connection: if every first dial fails, the client
    /// stops rather than redialing for a handle that is about to be dropped.
    pub stop_unless_connected: bool,
}

/// State shared by the client handles, their pending calls and the reactor side.
pub(crate) struct ClientShared {
    pub slots: Slots,
    pub submit: ArrayQueue<Submission>,
    pub stats: SharedStats,
    pub idx_bits: u32,
    pub gen_mask: u32,
    reactor: Arc<ReactorShared>,
    closed: AtomicBool,
    /// Callers between their check of `closed` and their push (see `enqueue`).
    entering: AtomicUsize,
    request_timeout: Duration,
    /// Largest request sent: this side's limit, lowered to the server's once known.
    pub send_limit: AtomicU32,
    ready: Mutex<Option<Result<()>>>,
    ready_cv: Condvar,
    /// The client's own reactor, which waiting callers may drive (`connect()` only).
    driver: OnceLock<Arc<Driver>>,
}

impl ClientShared {
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Reactor side, closing: no new call gets in after this returns, and every call that got
    /// in is in the submission queue.
    pub fn mark_closed(&self) {
        self.closed.store(true, Ordering::SeqCst);
        while self.entering.load(Ordering::SeqCst) != 0 {
            std::thread::yield_now();
        }
    }

    /// Reports the outcome of the first connection attempt to `connect()` (first report wins).
    pub fn report_ready(&self, outcome: Result<()>) {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        if ready.is_none() {
            *ready = Some(outcome);
            self.ready_cv.notify_all();
        }
    }

    /// Puts a call or a send in the submission queue, unless the client is closed.
    fn enqueue(&self, sub: Submission) -> Result<()> {
        self.entering.fetch_add(1, Ordering::SeqCst);
        if self.closed.load(Ordering::SeqCst) {
            self.entering.fetch_sub(1, Ordering::SeqCst);
            match sub {
                Submission::Call(idx, _) | Submission::CallInline(idx, ..) => {
                    self.slots.release(idx)
                }
                Submission::Send(idx, buf) => {
                    self.slots.release_reserved(idx);
                    self.slots.give_buffer(buf);
                }
                Submission::SendInline(idx, ..) => self.slots.release_reserved(idx),
            }
            self.stats.error(&Error::Closed);
            return Err(Error::Closed);
        }
        // Cannot fail: every entry holds one of the slots, and the queue has room for all.
        let _ = self.submit.push(sub);
        self.entering.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }

    /// Checks a request against the size limit and the client's state before it takes a slot.
    #[inline]
    fn admissible(&self, req: &Body<'_>) -> Result<()> {
        let max = self.send_limit.load(Ordering::Relaxed);
        if req.len() > max as usize {
            let e = Error::TooLarge {
                len: req.len(),
                max,
            };
            self.stats.error(&e);
            return Err(e);
        }
        if self.is_closed() {
            self.stats.error(&Error::Closed);
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Takes a slot for a call or a send, or fails with `Overflow`.
    #[inline]
    fn alloc(&self, state: u32) -> Result<u32> {
        match self.slots.alloc(state).or_else(|| self.make_room(state)) {
            Some(idx) => Ok(idx),
            None => {
                self.stats.error(&Error::Overflow);
                Err(Error::Overflow)
            }
        }
    }

    /// Takes a slot and writes the request into it (not yet submitted).
    fn prepare(&self, req: Body<'_>, state: u32) -> Result<u32> {
        self.admissible(&req)?;
        let idx = self.alloc(state)?;
        req.write_to(&mut self.slots.get(idx).data().request);
        Ok(idx)
    }

    /// Takes a slot for a call and makes its submission entry (not yet submitted): a request
    /// of at most [`CALL_INLINE`] bytes rides in the entry, else it is written into the slot.
    fn stage(&self, req: Body<'_>, timeout: Duration, state: u32) -> Result<(u32, Submission)> {
        if let Body::Bytes(bytes) = req {
            if bytes.len() <= CALL_INLINE {
                self.admissible(&req)?;
                let idx = self.alloc(state)?;
                let mut inline = [0; CALL_INLINE];
                inline[..bytes.len()].copy_from_slice(bytes);
                let sub = Submission::CallInline(idx, timeout, bytes.len() as u8, inline);
                return Ok((idx, sub));
            }
        }
        let idx = self.prepare(req, state)?;
        Ok((idx, Submission::Call(idx, timeout)))
    }

    fn submit(&self, req: Body<'_>, timeout: Duration, state: u32) -> Result<u32> {
        let (idx, sub) = self.stage(req, timeout, state)?;
        self.enqueue(sub)?;
        self.notify();
        Ok(idx)
    }

    /// Submits a request that wants no response. It holds a slot (so that sends count against
    /// `max_pending_requests` like calls) but uses none of the slot's data: the payload travels
    /// through the submission queue in a pooled buffer, and the reactor frees the slot as soon
    /// as the frame is in a connection's batch. No lock, no clock read, no deadline.
    fn send(&self, req: Body<'_>) -> Result<()> {
        self.admissible(&req)?;
        let idx = self.alloc(REACTOR)?;
        let sub = match req {
            Body::Bytes(bytes) if bytes.len() <= SEND_INLINE => {
                let mut inline = [0; SEND_INLINE];
                inline[..bytes.len()].copy_from_slice(bytes);
                Submission::SendInline(idx, bytes.len() as u8, inline)
            }
            _ => {
                let mut buf = self.slots.take_buffer();
                req.write_to(&mut buf);
                Submission::Send(idx, buf)
            }
        };
        // Without `enqueue`'s fence against closing: nobody waits for a send's outcome, so a
        // send that races with `close` and lands after the reactor's last look at the queue
        // only ends as one that got in before would: not written (its buffer is freed with the
        // queue). A send made after `close` returned fails with `Closed` above.
        let _ = self.submit.push(sub);
        self.notify();
        Ok(())
    }

    /// Every slot is taken. If some are held by calls still in the submission queue (sends
    /// above all, which free theirs as soon as they are in a connection's batch) and nobody
    /// drives the reactor, runs one turn that does not sleep to send them, then tries again.
    #[cold]
    fn make_room(&self, state: u32) -> Option<u32> {
        let driver = self.driver.get()?;
        if self.submit.is_empty() {
            return None;
        }
        let woke = driver.turn_now(|| !self.submit.is_empty() || self.is_closed())?;
        if woke {
            self.stats.inc(C::wakeups);
        }
        self.slots.alloc(state)
    }

    /// Tells the reactor that work waits in the submission queue.
    fn notify(&self) {
        if self.reactor.notify() {
            self.stats.inc(C::wakeups);
        }
    }

    /// Blocks until call `idx` completes and takes its outcome. If the client's reactor is
    /// free, this thread drives it until then (see [`Driver`]): no hand-off to the reactor
    /// thread and back. Otherwise it parks on the call's slot; `notified` says whether the
    /// reactor was already told about the call's submission.
    fn wait(&self, idx: u32, notified: bool) -> std::result::Result<Vec<u8>, Error> {
        if self.slots.is_done(idx) {
            return self.slots.take(idx);
        }
        if let Some(driver) = self.driver.get() {
            let done = || self.slots.is_done(idx);
            let pending = || !self.submit.is_empty() || self.is_closed();
            if let Some(woke) = driver.drive_until(done, pending) {
                if woke {
                    self.stats.inc(C::wakeups);
                }
                if self.slots.is_done(idx) {
                    return self.slots.take(idx);
                }
            }
        }
        // Someone else drives: the response may be a moment away.
        if self.slots.spin_until_done(idx) {
            return self.slots.take(idx);
        }
        if !notified {
            self.notify();
        }
        self.slots.wait(idx)
    }
}

/// An entry of the submission queue: what callers hand to the reactor, in the order they
/// made them.
pub(crate) enum Submission {
    /// A call prepared in slot `idx`, with its timeout (carried here so that the reactor need
    /// not lock the slot to learn it).
    Call(u32, Duration),
    /// A call in slot `idx` with its timeout and a request of at most [`CALL_INLINE`] bytes,
    /// carried in the entry itself: neither the caller nor the reactor locks the slot for it.
    CallInline(u32, Duration, u8, [u8; CALL_INLINE]),
    /// A send holding slot `idx` (only for the count), with its payload.
    Send(u32, Vec<u8>),
    /// A send of at most [`SEND_INLINE`] bytes, carried in the entry itself: no buffer to take
    /// from the pool and give back.
    SendInline(u32, u8, [u8; SEND_INLINE]),
}

/// The largest call request carried inside its submission entry (with the timeout beside it,
/// the entry stays 32 bytes).
const CALL_INLINE: usize = 8;

/// The largest send carried inside its submission entry (the entry is as large as with a
/// buffer: 32 bytes).
const SEND_INLINE: usize = 24;

/// The default [`ClientBuilder::keepalive`] period.
pub(crate) const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(15);

/// What a call sends.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Body<'a> {
    /// The request, as it is.
    Bytes(&'a [u8]),
    /// The fastrpc profile's `tlv` body, name and value each checked against
    /// [`crate::wire::fastrpc::MAX_FIELD_LEN`] by the caller.
    Tlv(&'a [u8], &'a [u8]),
}

impl Body<'_> {
    fn len(&self) -> usize {
        match self {
            Body::Bytes(req) => req.len(),
            Body::Tlv(name, value) => 8 + name.len() + value.len(),
        }
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            Body::Bytes(req) => out.extend_from_slice(req),
            Body::Tlv(name, value) => {
                // The fields were checked: this writes.
                let _ = crate::wire::fastrpc::encode_request_body(out, name, value);
            }
        }
    }
}

/// Builds a [`Client`]. Every setting has a default.
///
/// | setting | default |
/// |---|---|
/// | [`conns`](Self::conns) | 1 |
/// | [`max_pending_requests`](Self::max_pending_requests) | 32 768 |
/// | [`request_timeout`](Self::request_timeout) | 20 s |
/// | [`max_batch_delay`](Self::max_batch_delay) | zero: flush at the end of each reactor turn |
/// | [`compression`](Self::compression) | [`Compression::None`] |
/// | [`max_frame_len`](Self::max_frame_len) | 64 MiB |
/// | [`handshake_timeout`](Self::handshake_timeout) | 3 s (also bounds `connect()`'s dial) |
/// | [`keepalive`](Self::keepalive) | 15 s: a ping after 15 s with nothing received, dead after 15 s more (native profile) |
/// | [`reconnect_backoff`](Self::reconnect_backoff) | 20 ms doubling up to 2 s, ±25% jitter |
/// | [`busy_poll`](Self::busy_poll) | 100 µs |
#[cfg_attr(feature = "tls", doc = "| [`tls`](Self::tls) | none: plaintext |")]
#[must_use]
pub struct ClientBuilder {
    addr: io::Result<Address>,
    conns: usize,
    max_pending: u32,
    request_timeout: Duration,
    conn: ConnConfig,
    backoff: (Duration, Duration),
    dialer: Option<Arc<Dialer>>,
    on_connect: Option<Arc<OnConnect>>,
    name: String,
    busy_poll: Duration,
    #[cfg(feature = "tls")]
    tls: Option<(Arc<rustls::ClientConfig>, String)>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("addr", &self.addr)
            .field("conns", &self.conns)
            .field("max_pending", &self.max_pending)
            .field("request_timeout", &self.request_timeout)
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// Connections to open to the server; calls are spread over them (default 1).
    pub fn conns(mut self, n: usize) -> Self {
        self.conns = n.max(1);
        self
    }

    /// Most calls pending at once; one more fails at once with [`Error::Overflow`]. (When
    /// some of the slots are held by calls still queued for the reactor, sends above all, and
    /// nobody is driving the client's reactor, the caller first runs one reactor turn that
    /// does not sleep to send them, and takes a slot they freed.)
    pub fn max_pending_requests(mut self, n: u32) -> Self {
        self.max_pending = n.clamp(1, 1 << 24);
        self
    }

    /// The deadline of calls made without an explicit timeout.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long requests may wait to be batched. Zero (the default) flushes at the end of
    /// every reactor turn, which already batches all calls made during the turn.
    pub fn max_batch_delay(mut self, delay: Duration) -> Self {
        self.conn.max_batch_delay = delay;
        self
    }

    /// The compression of the request stream.
    pub fn compression(mut self, compression: Compression) -> Self {
        self.conn.compression = compression;
        self
    }

    /// The flate level, 0 to 9 (default 1, fast).
    pub fn flate_level(mut self, level: u32) -> Self {
        self.conn.flate_level = level.min(9);
        self
    }

    /// Largest request sent (a larger one fails with [`Error::TooLarge`] before anything is
    /// written) and largest response accepted.
    pub fn max_frame_len(mut self, len: u32) -> Self {
        self.conn.max_frame_len = len;
        self
    }

    /// Time a connection has to complete its handshake: the hello exchange and, with TLS, the
    /// whole TLS handshake.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.conn.handshake_timeout = timeout;
        self
    }

    /// Keepalive (native profile): when a connection has received nothing for `period`, the
    /// client sends a ping, which the server answers at once; if nothing at all arrives within
    /// another `period`, the connection is taken for dead, the calls it carried fail with
    /// [`Error::ConnectionLost`] whose cause is a keepalive timeout
    /// ([`ProtocolError::Liveness`](crate::wire::ProtocolError::Liveness)), it is counted in
    /// [`Stats::keepalive_timeouts`](crate::Stats::keepalive_timeouts), logged at warn
    /// (target `batchrpc::conn`), and it is redialed with the usual backoff. Zero turns
    /// keepalive off.
    ///
    /// Default 15 s. Without it, a path that dies silently (a machine or route gone, no FIN
    /// or RST) is noticed only when the kernel gives up on unacknowledged data, about 15
    /// minutes with Linux defaults, and an idle connection is never noticed at all. 15 s is
    /// the interval of Go's `net.Dialer` TCP keepalive; gRPC's keepalive waits 20 s for the
    /// answer to a ping by default, and grpc-go pings no more often than every 10 s. With it, a dead connection is found within two periods (30 s) of its last byte,
    /// for one 9-byte ping and one 9-byte pong per quiet period and connection. Any received
    /// byte counts, so a busy connection never pings, and a large response still arriving
    /// keeps its connection alive.
    ///
    /// Idle connections stay open: the pings are what keeps them under the server's
    /// [idle timeout](crate::ServerBuilder::idle_timeout) (60 s by default, four periods).
    /// Keep the period well below the servers' idle timeout.
    ///
    /// A server that reads and answers nothing for two periods — one whose request queue
    /// stays full that long, say — is taken for dead too. The fastrpc profile has no ping
    /// frame: there keepalive does not apply (the server's idle timeout still does).
    pub fn keepalive(mut self, period: Duration) -> Self {
        self.conn.keepalive = Some(period).filter(|p| !p.is_zero());
        self
    }

    /// Connects with TLS (rustls), verifying that the server's certificate is valid for
    /// `server_name` (a DNS name or an IP address). Every connection of the client asks for
    /// TLS in its hello and fails if the server does not offer it.
    ///
    /// Build the config yourself, or from PEM files with [`crate::tls::client_config_from_pem`]
    /// (which also loads a client certificate for mutual TLS). The crypto provider is the
    /// application's choice; this crate enables none.
    ///
    /// `connect()` reports why a TLS connection failed: [`Error::Protocol`] holding
    /// [`crate::wire::handshake::HandshakeError::TlsNotOffered`] against a plaintext server,
    /// or [`crate::wire::ProtocolError::Tls`] for a certificate this side refused (wrong name,
    /// unknown CA, expired) or for the server's refusal of this side (for example, no or a
    /// wrong client certificate on a mutual-TLS server). An invalid `server_name` fails
    /// `connect()` with [`Error::Config`].
    ///
    /// Compression inside TLS: compressing secrets together with data an attacker controls in
    /// one stream leaks the secrets through the compressed size (CRIME, BREACH). Leave
    /// compression off on connections that carry both.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>, server_name: &str) -> Self {
        self.tls = Some((config, server_name.to_owned()));
        self
    }

    /// Redial delays after a connection is lost: `min`, doubling up to `max`, each with ±25%
    /// jitter.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = (min, max.max(min));
        self
    }

    /// Dials through a custom transport instead of the address. Redials run inside a reactor
    /// turn: on the reactor thread, or on a caller's thread while it drives the reactor (see
    /// the crate's "Threads" section); the dialer must not make calls on this client.
    pub fn dialer<F, S>(mut self, dial: F) -> Self
    where
        F: Fn() -> io::Result<S> + Send + Sync + 'static,
        S: CustomStream,
    {
        self.dialer = Some(Arc::new(move || {
            dial().map(|s| Box::new(s) as Box<dyn CustomStream>)
        }));
        self
    }

    /// Called when a connection's handshake completes, before any call is sent on it; an
    /// `Err` closes it (and it is redialed after the backoff). It runs inside a reactor turn,
    /// on whichever thread drives the client's reactor (its own thread, or a caller's while it
    /// waits): it must not make calls on this client.
    pub fn on_connect<F>(mut self, hook: F) -> Self
    where
        F: Fn(&ConnInfo) -> std::result::Result<(), String> + Send + Sync + 'static,
    {
        self.on_connect = Some(Arc::new(hook));
        self
    }

    /// Busy polling by the reactor `connect()` starts. Waking a thread whose core went idle
    /// costs tens of microseconds on virtual machines, more than a loopback round trip, so
    /// before sleeping:
    /// - a reactor turn whose recent frames came a few at a time (at most 16 a turn) keeps
    ///   looking at the sockets for up to `spin` after its last activity, whichever thread
    ///   runs it (the reactor's own, or a caller driving it); after a larger turn it looks
    ///   for up to `spin` only while at least three in four of its recent idle spells ended
    ///   within `spin` (the responses come back that soon);
    /// - the reactor's thread, resting while callers drive, watches for its wake-up for up to
    ///   `spin` before it parks, so that handing the reactor back costs callers no syscall.
    ///
    /// Both yield the core between looks, and cost at most `spin` of CPU per idle spell.
    /// Same run on a 2-vCPU VM, against no spinning: `EndToEndNoDelay1` takes a third of the
    /// time, `EndToEndNoDelay10` half; spinning after larger turns when idle spells are short
    /// makes the 100-in-flight rows 1.3-1.8x faster. Zero never spins. Default 100 µs. (A
    /// reactor you drive has its own setting: [`Reactor::set_busy_poll`].)
    pub fn busy_poll(mut self, spin: Duration) -> Self {
        self.busy_poll = spin;
        self
    }

    /// Names the reactor thread (default `batchrpc-client`).
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The wire profile (native unless [`crate::fastrpc`] sets another).
    pub(crate) fn profile(mut self, profile: Profile) -> Self {
        self.conn.profile = profile;
        self
    }

    /// Connects and runs the client on a reactor thread of its own. Returns once the first
    /// connection has completed its handshake, or with the error that stopped it (for example
    /// [`Error::Connect`] naming the address and the cause).
    pub fn connect(self) -> Result<Client> {
        let mut reactor = Reactor::new()?;
        reactor.set_busy_poll(self.busy_poll);
        let name = self.name.clone();
        let wait = self.conn.handshake_timeout;
        let client = self.attach(&mut reactor, true)?;
        let (driver, thread) = reactor::spawn_shared(reactor, name)?;
        let _ = client.shared().driver.set(driver);
        *client
            .inner
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(thread);
        client.wait_ready(wait)?;
        Ok(client)
    }

    /// Connects on `reactor`, which you drive. The dial happens now (its errors are returned);
    /// the handshake completes as the reactor turns.
    pub fn connect_on(self, reactor: &mut Reactor) -> Result<Client> {
        self.attach(reactor, false)
    }

    fn attach(self, reactor: &mut Reactor, stop_unless_connected: bool) -> Result<Client> {
        let addr = self.addr.map_err(Error::from)?;
        for c in [self.conn.compression] {
            if !c.is_available() {
                return Err(Error::Config(format!("compression {c} is not compiled in")));
            }
        }
        #[cfg(feature = "tls")]
        let mut conn_cfg = self.conn;
        #[cfg(not(feature = "tls"))]
        let conn_cfg = self.conn;
        #[cfg(feature = "tls")]
        if let Some((config, name)) = self.tls {
            let name = rustls::pki_types::ServerName::try_from(name.as_str())
                .map_err(|e| Error::Config(format!("invalid TLS server name {name:?}: {e}")))?
                .to_owned();
            conn_cfg.tls = crate::wire::handshake::TlsPolicy::Required;
            conn_cfg.tls_client = Some((config, name));
        }
        let cfg = Arc::new(ClientConfig {
            addr: addr.clone(),
            conn: conn_cfg,
            backoff_min: self.backoff.0,
            backoff_max: self.backoff.1,
            dialer: self.dialer,
            on_connect: self.on_connect,
            stop_unless_connected,
        });
        let mut streams = Vec::with_capacity(self.conns);
        for _ in 0..self.conns {
            streams.push(dial_now(&cfg).map_err(|cause| Error::Connect {
                addr: addr.to_string(),
                cause: Arc::new(cause),
            })?);
        }
        let idx_bits = (32 - (self.max_pending - 1).leading_zeros()).max(1);
        let shared = Arc::new(ClientShared {
            slots: Slots::new(self.max_pending),
            submit: ArrayQueue::new(self.max_pending as usize),
            stats: SharedStats::default(),
            idx_bits,
            gen_mask: u32::MAX >> idx_bits,
            reactor: reactor.shared().clone(),
            closed: AtomicBool::new(false),
            entering: AtomicUsize::new(0),
            request_timeout: self.request_timeout,
            send_limit: AtomicU32::new(cfg.conn.max_frame_len),
            ready: Mutex::new(None),
            ready_cv: Condvar::new(),
            driver: OnceLock::new(),
        });
        let shared2 = shared.clone();
        reactor.add_service(move |id, core| {
            let client = core::ClientCore::new(id, core, shared2, cfg, streams)?;
            Ok(Box::new(client))
        })?;
        Ok(Client {
            inner: Arc::new(ClientInner {
                shared,
                thread: Mutex::new(None),
            }),
        })
    }
}

/// Dials synchronously (bounded by the handshake timeout), for `connect()`'s clear errors.
fn dial_now(cfg: &ClientConfig) -> io::Result<Stream> {
    if let Some(dial) = &cfg.dialer {
        return dial().map(Stream::Custom);
    }
    match &cfg.addr {
        Address::Tcp(a) => {
            let s = std::net::TcpStream::connect_timeout(a, cfg.conn.handshake_timeout)?;
            s.set_nonblocking(true)?;
            Ok(Stream::Tcp(mio::net::TcpStream::from_std(s)))
        }
        #[cfg(unix)]
        Address::Unix(p) => {
            let s = std::os::unix::net::UnixStream::connect(p)?;
            s.set_nonblocking(true)?;
            Ok(Stream::Unix(mio::net::UnixStream::from_std(s)))
        }
        other => Stream::dial(other),
    }
}

struct ClientInner {
    shared: Arc<ClientShared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.reactor.notify();
        if let Some(t) = self
            .thread
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

/// A handle to a connected client: cheap to clone, usable from any number of threads.
///
/// Every call completes exactly once: with its response, or an [`Error`] saying why not.
/// Dropping the last handle closes the client; calls still pending complete with
/// [`Error::Closed`].
///
/// ```
/// # fn main() -> Result<(), batchrpc::Error> {
/// # use batchrpc::{Client, Server};
/// # let server = Server::builder()
/// #     .handler(|_: &batchrpc::RequestCtx, req: &[u8], resp: &mut Vec<u8>| { resp.extend_from_slice(req); Ok(()) })
/// #     .bind("127.0.0.1:0")?;
/// let client = Client::builder(server.local_addr()).connect()?;
/// let resp = client.call(b"blocking")?;
/// assert_eq!(&*resp, b"blocking");
/// let pending = client.call_async(b"async")?;
/// client.send(b"fire and forget")?;
/// assert_eq!(&*pending.wait()?, b"async");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("pending", &self.pending_requests())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A builder for a client of the server at `addr` (`"host:port"`, `"unix:/path"`, a
    /// `SocketAddr` or an [`Address`]).
    pub fn builder(addr: impl ToAddress) -> ClientBuilder {
        ClientBuilder {
            addr: addr.to_address(),
            conns: 1,
            max_pending: 32_768,
            request_timeout: Duration::from_secs(20),
            conn: ConnConfig {
                keepalive: Some(DEFAULT_KEEPALIVE),
                ..ConnConfig::new(Role::Client)
            },
            backoff: (Duration::from_millis(20), Duration::from_secs(2)),
            dialer: None,
            on_connect: None,
            name: "batchrpc-client".into(),
            busy_poll: reactor::DEFAULT_BUSY_POLL,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    fn shared(&self) -> &Arc<ClientShared> {
        &self.inner.shared
    }

    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let shared = self.shared();
        let deadline = Instant::now() + timeout + Duration::from_millis(500);
        let mut ready = shared.ready.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(outcome) = &*ready {
                return outcome.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Protocol(
                    crate::wire::handshake::HandshakeError::Timeout.into(),
                ));
            }
            ready = shared
                .ready_cv
                .wait_timeout(ready, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Calls and waits for the response, at most the request timeout.
    ///
    /// If nobody is driving the client's reactor, this thread drives it until the response is
    /// in (see the crate's "Threads" section): no wake-up of the reactor thread.
    pub fn call(&self, req: &[u8]) -> Result<Response> {
        self.call_timeout(req, self.shared().request_timeout)
    }

    /// Calls and waits for the response, at most `timeout`.
    pub fn call_timeout(&self, req: &[u8], timeout: Duration) -> Result<Response> {
        self.call_body(Body::Bytes(req), timeout)
    }

    /// Makes a call and waits for its outcome, driving the reactor if nobody does.
    pub(crate) fn call_body(&self, req: Body<'_>, timeout: Duration) -> Result<Response> {
        let shared = self.shared();
        let (idx, sub) = shared.stage(req, timeout, CALLER | REACTOR | WIRE)?;
        shared.enqueue(sub)?;
        // Told by `wait` only if it cannot drive the reactor itself.
        let outcome = shared.wait(idx, false);
        outcome.map(|buf| Response {
            buf,
            shared: Some(shared.clone()),
        })
    }

    /// Starts a call; the response is taken from the returned handle. Dropping the handle
    /// cancels the call (its response, if one comes, is discarded).
    pub fn call_async(&self, req: &[u8]) -> Result<PendingCall> {
        self.call_async_timeout(req, self.shared().request_timeout)
    }

    /// [`Client::call_async`] with its own deadline.
    pub fn call_async_timeout(&self, req: &[u8], timeout: Duration) -> Result<PendingCall> {
        self.start(Body::Bytes(req), timeout)
    }

    /// The request timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.shared().request_timeout
    }

    /// Counts a call refused before it was submitted, and hands its error back.
    pub(crate) fn refuse(&self, e: Error) -> Error {
        self.shared().stats.error(&e);
        e
    }

    /// Submits a call; its outcome is taken from the handle.
    pub(crate) fn start(&self, req: Body<'_>, timeout: Duration) -> Result<PendingCall> {
        let shared = self.shared();
        let idx = shared.submit(req, timeout, CALLER | REACTOR | WIRE)?;
        Ok(PendingCall {
            shared: Some(shared.clone()),
            idx,
            taken: false,
        })
    }

    /// Sends a request that wants no response (fire and forget). Returns once the request is
    /// queued; it is written with the next batch.
    pub fn send(&self, req: &[u8]) -> Result<()> {
        self.send_body(Body::Bytes(req))
    }

    /// Submits a call that wants no response.
    pub(crate) fn send_body(&self, req: Body<'_>) -> Result<()> {
        self.shared().send(req)
    }

    /// A batch: add calls, then submit them together and wait for all.
    pub fn batch(&self) -> Batch {
        Batch {
            shared: self.shared().clone(),
            calls: Vec::new(),
            timeout: self.shared().request_timeout,
        }
    }

    /// Calls that hold one of the `max_pending_requests` slots: submitted and not yet
    /// completed, completed and not yet taken, or timed out while the server may still answer
    /// (such a call keeps its slot, and so its request id, until the late response arrives or
    /// its connection closes: an id is never reused while it is outstanding).
    pub fn pending_requests(&self) -> usize {
        self.shared().slots.in_use()
    }

    /// A snapshot of the client's counters.
    pub fn stats(&self) -> Stats {
        self.shared().stats.snapshot()
    }

    /// Closes the client now: pending calls complete with [`Error::Closed`] (their requests
    /// are not written if they were not yet), later calls fail with `Closed`, and the
    /// connections close once the sends accepted before the close are written (a `send`
    /// reports success on acceptance): at most a second later, for a server that does not
    /// read them. Every clone of the handle is closed; dropping the last one closes too.
    pub fn close(&self) {
        let shared = self.shared();
        shared.closed.store(true, Ordering::SeqCst);
        shared.reactor.notify();
    }
}

/// A call in flight. [`wait`](Self::wait) for it, poll it with [`try_wait`](Self::try_wait),
/// or drop it to cancel.
pub struct PendingCall {
    /// Always there, until `wait` hands it on to the [`Response`].
    shared: Option<Arc<ClientShared>>,
    idx: u32,
    taken: bool,
}

impl fmt::Debug for PendingCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingCall")
            .field("done", &self.is_done())
            .finish()
    }
}

impl PendingCall {
    fn shared(&self) -> &ClientShared {
        self.shared
            .as_deref()
            .expect("taken only by `wait`, which consumes the call")
    }

    /// True once the call has completed (`wait` will not block).
    pub fn is_done(&self) -> bool {
        self.taken || self.shared().slots.is_done(self.idx)
    }

    /// Blocks until the call completes, and returns its outcome. If
    /// [`try_wait`](Self::try_wait) already returned the outcome, returns
    /// [`Error::Canceled`] at once. Like [`Client::call`], drives the client's reactor while
    /// it waits if nobody else does.
    pub fn wait(mut self) -> Result<Response> {
        if self.taken {
            return Err(Error::Canceled);
        }
        self.taken = true;
        let outcome = self.shared().wait(self.idx, true);
        // The handle's reference to the client goes on to the response: no count to bump.
        let shared = self.shared.take();
        outcome.map(|buf| Response { buf, shared })
    }

    /// The outcome if the call has completed, without blocking. Returns `Some` once; after
    /// that the call is spent: `try_wait` returns `None` and `wait` [`Error::Canceled`].
    pub fn try_wait(&mut self) -> Option<Result<Response>> {
        if self.taken || !self.shared().slots.is_done(self.idx) {
            return None;
        }
        self.taken = true;
        let outcome = self.shared().slots.take(self.idx);
        Some(outcome.map(|buf| Response {
            buf,
            shared: self.shared.clone(),
        }))
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        if !self.taken {
            self.shared().slots.abandon(self.idx);
        }
    }
}

/// A response payload. Derefs to `[u8]`; its buffer goes back to the client's pool when
/// dropped (or keep it with [`Response::into_vec`]).
pub struct Response {
    buf: Vec<u8>,
    shared: Option<Arc<ClientShared>>,
}

impl Response {
    /// The payload as an owned vector (taken out of the pool).
    pub fn into_vec(mut self) -> Vec<u8> {
        self.shared = None;
        std::mem::take(&mut self.buf)
    }
}

impl Deref for Response {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl AsRef<[u8]> for Response {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Response").field(&self.buf).finish()
    }
}

impl PartialEq<[u8]> for Response {
    fn eq(&self, other: &[u8]) -> bool {
        self.buf == other
    }
}

impl Drop for Response {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.slots.give_buffer(std::mem::take(&mut self.buf));
        }
    }
}

/// Calls submitted together and waited for together (gorpc's `Batch`): one hand-off to the
/// reactor for all of them.
///
/// ```
/// # fn main() -> Result<(), batchrpc::Error> {
/// # use batchrpc::{Client, Server};
/// # let server = Server::builder()
/// #     .handler(|_: &batchrpc::RequestCtx, req: &[u8], resp: &mut Vec<u8>| { resp.extend_from_slice(req); Ok(()) })
/// #     .bind("127.0.0.1:0")?;
/// # let client = Client::builder(server.local_addr()).connect()?;
/// let mut batch = client.batch();
/// batch.add(b"one")?;
/// batch.add(b"two")?;
/// let results = batch.call();
/// assert_eq!(results[1].as_deref().unwrap(), b"two");
/// # Ok(()) }
/// ```
pub struct Batch {
    shared: Arc<ClientShared>,
    calls: Vec<u32>,
    timeout: Duration,
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("calls", &self.calls.len())
            .finish()
    }
}

impl Batch {
    /// The deadline of every call in the batch (default: the client's request timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Adds a call. Fails at once, for this call only, with [`Error::TooLarge`],
    /// [`Error::Overflow`] or [`Error::Closed`].
    pub fn add(&mut self, req: &[u8]) -> Result<()> {
        let idx = self
            .shared
            .prepare(Body::Bytes(req), CALLER | REACTOR | WIRE)?;
        self.calls.push(idx);
        Ok(())
    }

    /// Calls added so far.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// True when no call was added.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Submits every call and waits for all; the results are in the order of `add`.
    pub fn call(mut self) -> Vec<Result<Response>> {
        let calls = std::mem::take(&mut self.calls);
        let mut submitted = Vec::with_capacity(calls.len());
        for &idx in &calls {
            submitted.push(self.shared.enqueue(Submission::Call(idx, self.timeout)));
        }
        let mut notified = false;
        calls
            .into_iter()
            .zip(submitted)
            .map(|(idx, ok)| {
                ok?;
                let outcome = self.shared.wait(idx, notified);
                notified = true;
                outcome.map(|buf| Response {
                    buf,
                    shared: Some(self.shared.clone()),
                })
            })
            .collect()
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        for &idx in &self.calls {
            self.shared.slots.release(idx);
        }
    }
}
