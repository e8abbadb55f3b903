//! The server: listeners, a handler, a worker pool, limits and graceful shutdown.

pub(crate) mod core;
mod pool;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::reactor::{self, Reactor, ReactorShared};
use crate::stats::{SharedStats, Stats};
use crate::transport::{Address, CustomListener, Listener, ToAddress};
use crate::wire::conn::{ConnConfig, Profile, Role};
use crate::{Compression, Error, Result};

/// The default [`ServerBuilder::idle_timeout`]: four default client keepalive periods.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a handler returns on failure: any error; its text reaches the caller as
/// [`Error::Server`].
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// The handler's type, as stored.
pub(crate) type HandlerFn =
    dyn Fn(&RequestCtx, &[u8], &mut Vec<u8>) -> std::result::Result<(), HandlerError> + Send + Sync;

type OnConnect = dyn Fn(&ConnInfo) -> std::result::Result<(), String> + Send + Sync;

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub(crate) peer: Address,
    pub(crate) conn_id: u64,
    /// The certificate chain the peer presented in the TLS handshake.
    #[cfg(feature = "tls")]
    pub(crate) peer_certificates: Option<Arc<[rustls::pki_types::CertificateDer<'static>]>>,
}

impl ConnInfo {
    pub(crate) fn new(peer: Address, conn_id: u64) -> ConnInfo {
        ConnInfo {
            peer,
            conn_id,
            #[cfg(feature = "tls")]
            peer_certificates: None,
        }
    }

    /// Records what the completed handshake of `conn` says about the peer (its TLS
    /// certificates).
    pub(crate) fn learn_handshake(&mut self, conn: &crate::wire::conn::Conn) {
        #[cfg(feature = "tls")]
        {
            self.peer_certificates = conn
                .tls_session()
                .and_then(|s| s.peer_certificates())
                .map(Arc::from);
        }
        #[cfg(not(feature = "tls"))]
        let _ = conn;
    }

    /// The certificate chain the peer presented during the TLS handshake, end-entity first:
    /// the client's certificate on a mutual-TLS server (verified against the client CA), the
    /// server's certificate on a client. `None` without TLS, before the handshake completed
    /// (a server's `on_connect` hook runs before it), or when the peer presented none.
    #[cfg(feature = "tls")]
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.peer_certificates.as_deref()
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> &Address {
        &self.peer
    }

    /// An id for the connection, unique within its reactor.
    pub fn conn_id(&self) -> u64 {
        self.conn_id
    }
}

/// What a handler knows about the request it is answering.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub(crate) info: Arc<ConnInfo>,
}

impl RequestCtx {
    /// A context for calling a handler outside a server, in unit tests of handlers.
    ///
    /// ```
    /// use batchrpc::{Address, RequestCtx};
    /// let ctx = RequestCtx::new("127.0.0.1:9".parse::<std::net::SocketAddr>().map(Address::Tcp).unwrap(), 7);
    /// assert_eq!(ctx.conn_id(), 7);
    /// ```
    pub fn new(peer: Address, conn_id: u64) -> RequestCtx {
        RequestCtx {
            info: Arc::new(ConnInfo::new(peer, conn_id)),
        }
    }

    /// The connection the request came on.
    pub fn conn(&self) -> &ConnInfo {
        &self.info
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> &Address {
        &self.info.peer
    }

    /// The connection's id, unique within its reactor.
    pub fn conn_id(&self) -> u64 {
        self.info.conn_id
    }

    /// The certificate chain the client presented (mutual TLS), end-entity first; see
    /// [`ConnInfo::peer_certificates`].
    #[cfg(feature = "tls")]
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.info.peer_certificates()
    }
}

/// Settings the server's reactor side reads.
pub(crate) struct ServerConfig {
    pub conn: ConnConfig,
    pub handler: Arc<HandlerFn>,
    pub pipeline: bool,
    pub max_connections: usize,
    pub max_queued_requests: usize,
    pub max_jobs: usize,
    /// Jobs estimated to take at most this long run inline (0: never).
    pub inline_budget_ns: u64,
    pub on_connect: Option<Arc<OnConnect>>,
}

/// State shared by the server handle and its reactor side.
pub(crate) struct ServerShared {
    pub stats: SharedStats,
    shutdown: AtomicBool,
    finished: Mutex<bool>,
    finished_cv: Condvar,
    reactor: Arc<ReactorShared>,
}

impl ServerShared {
    pub fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    pub fn mark_finished(&self) {
        *self.finished.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.finished_cv.notify_all();
    }

    fn is_finished(&self) -> bool {
        *self.finished.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Builds a [`Server`]. Every setting has a default; only the handler is required.
///
/// | setting | default |
/// |---|---|
/// | [`workers`](Self::workers) | available cores |
/// | [`max_batch_delay`](Self::max_batch_delay) | zero: flush at the end of each reactor turn |
/// | [`compression`](Self::compression) | [`Compression::None`] |
/// | [`pipeline`](Self::pipeline) | `false` |
/// | [`inline_budget`](Self::inline_budget) | zero: handlers always run on the workers |
/// | [`max_connections`](Self::max_connections) | 10 000 |
/// | [`max_queued_requests`](Self::max_queued_requests) | 10 000 |
/// | [`max_frame_len`](Self::max_frame_len) | 64 MiB |
/// | [`handshake_timeout`](Self::handshake_timeout) | 3 s |
/// | [`idle_timeout`](Self::idle_timeout) | 60 s without a complete frame while owed no answer |
/// | [`busy_poll`](Self::busy_poll) | 100 µs, while requests come few at a time or soon after each other |
#[cfg_attr(feature = "tls", doc = "| [`tls`](Self::tls) | none: plaintext |")]
#[cfg_attr(
    feature = "tls",
    doc = "| [`tls_required`](Self::tls_required) | `true`: with TLS configured, plaintext clients are refused |"
)]
#[must_use]
pub struct ServerBuilder {
    workers: usize,
    conn: ConnConfig,
    pipeline: bool,
    handler: Option<Arc<HandlerFn>>,
    max_connections: usize,
    max_queued_requests: usize,
    inline_budget: Duration,
    on_connect: Option<Arc<OnConnect>>,
    extra: Vec<Address>,
    custom: Vec<Box<dyn CustomListener>>,
    name: String,
    busy_poll: Duration,
    #[cfg(feature = "tls")]
    tls_required: bool,
}

impl fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("workers", &self.workers)
            .field("conn", &self.conn)
            .field("pipeline", &self.pipeline)
            .field("max_connections", &self.max_connections)
            .field("max_queued_requests", &self.max_queued_requests)
            .finish_non_exhaustive()
    }
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            conn: ConnConfig {
                idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
                ..ConnConfig::new(Role::Server)
            },
            pipeline: false,
            handler: None,
            max_connections: 10_000,
            max_queued_requests: 10_000,
            inline_budget: Duration::ZERO,
            on_connect: None,
            extra: Vec::new(),
            custom: Vec::new(),
            name: "batchrpc-server".into(),
            busy_poll: reactor::DEFAULT_BUSY_POLL,
            #[cfg(feature = "tls")]
            tls_required: true,
        }
    }
}

impl ServerBuilder {
    /// Worker threads running the handler. `0` runs handlers inline on the reactor thread:
    /// the fastest choice for handlers that take well under a microsecond and never block.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// How long responses may wait to be batched. Zero (the default) flushes at the end of
    /// every reactor turn, which already batches everything finished during the turn.
    pub fn max_batch_delay(mut self, delay: Duration) -> Self {
        self.conn.max_batch_delay = delay;
        self
    }

    /// The compression of the response stream (each direction chooses its own).
    pub fn compression(mut self, compression: Compression) -> Self {
        self.conn.compression = compression;
        self
    }

    /// The flate level, 0 to 9 (default 1, fast).
    pub fn flate_level(mut self, level: u32) -> Self {
        self.conn.flate_level = level.min(9);
        self
    }

    /// `true`: one connection's requests run one after another, in arrival order, and their
    /// responses go out in that order (fastrpc's `PipelineRequests`).
    pub fn pipeline(mut self, pipeline: bool) -> Self {
        self.pipeline = pipeline;
        self
    }

    /// The request handler: reads the request, appends the response to `resp` (empty on
    /// entry), and returns `Ok(())`, or an error whose text the caller receives as
    /// [`Error::Server`]. A panic is caught and reported the same way.
    pub fn handler<F>(mut self, handler: F) -> Self
    where
        F: Fn(&RequestCtx, &[u8], &mut Vec<u8>) -> std::result::Result<(), HandlerError>
            + Send
            + Sync
            + 'static,
    {
        self.handler = Some(Arc::new(handler));
        self
    }

    /// Handlers measured to be cheap run inline on the reactor thread, up to `budget` of
    /// estimated work per reactor turn (a job's requests times the mean handler time, measured
    /// as jobs run): below that, handing the work to a worker and back, two thread wake-ups,
    /// costs more than the work itself; above it, the workers share the load. The first jobs
    /// always go to the workers, and a handler that turns slow stops being run inline as its
    /// mean rises.
    ///
    /// Off by default (`Duration::ZERO`): a mean cannot foresee the one request that blocks,
    /// and a handler blocked on the reactor thread stalls every connection of the reactor.
    /// Turn it on (20 µs suits handlers that never block and take well under a microsecond
    /// or two) when handlers are known to be cheap: calls with few in flight then take two
    /// thread wake-ups less each.
    pub fn inline_budget(mut self, budget: Duration) -> Self {
        self.inline_budget = budget;
        self
    }

    /// Most connections at once; more are accepted and closed at once (counted in
    /// `accept_errors`).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Most requests read and not yet answered. At the limit the reactor stops reading
    /// (TCP backpressure slows the clients) instead of queueing without bound.
    pub fn max_queued_requests(mut self, n: usize) -> Self {
        self.max_queued_requests = n.max(1);
        self
    }

    /// Largest request accepted, and largest response sent (a larger response is replaced by
    /// an error response).
    pub fn max_frame_len(mut self, len: u32) -> Self {
        self.conn.max_frame_len = len;
        self
    }

    /// Time a new connection has to complete its handshake: the hello exchange and, with TLS,
    /// the whole TLS handshake. A peer that has not finished by then is closed (and counted
    /// in `accept_errors`).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.conn.handshake_timeout = timeout;
        self
    }

    /// Closes a connection whose peer delivers no complete frame for `timeout` while the
    /// server owes it no answer: requests and keepalive pings count, the bytes of an
    /// unfinished frame do not, and requests still being handled hold the clock. Such a
    /// connection is counted in [`Stats::idle_timeouts`](crate::Stats::idle_timeouts) and
    /// logged at debug (target `batchrpc::conn`). Zero turns it off.
    ///
    /// A client that ends its stream after whole frames (a half-close) gets every answer to
    /// what it sent, then the close; the idle timeout bounds how long the server waits for
    /// one that does not read them.
    ///
    /// Default 60 s: four times the clients' default
    /// [keepalive](crate::ClientBuilder::keepalive) of 15 s, so a live idle client, which
    /// pings every 15 s of quiet, is never cut off, while a peer gone silently gives its
    /// `max_connections` slot back within a minute. It also closes peers that trickle bytes
    /// after their hello (slowloris; the [handshake timeout](Self::handshake_timeout)
    /// covers the hello itself), and peers that stop reading: their answers queued, nothing
    /// more comes. Keep it well above the clients' keepalive; clients without keepalive (the
    /// fastrpc profile has none) are closed when idle that long and redial on their next
    /// call.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.conn.idle_timeout = Some(timeout).filter(|t| !t.is_zero());
        self
    }

    /// Serves TLS (rustls), on the same reactor thread: after the plaintext hello, a TLS
    /// handshake, then the (compressed, if so configured) stream of frames inside TLS.
    ///
    /// Build the config yourself, or from PEM files with [`crate::tls::server_config_from_pem`]
    /// (which also sets up mutual TLS). The crypto provider is the application's choice
    /// (ring, aws-lc-rs, ...); this crate enables none.
    ///
    /// By default every client must then use TLS ([`tls_required`](Self::tls_required)): a
    /// plaintext client is refused with [`crate::wire::handshake::HandshakeError::TlsRequired`],
    /// which it learns from the server's hello before the connection closes.
    ///
    /// Compression inside TLS: compressing secrets together with data an attacker controls in
    /// one stream leaks the secrets through the compressed size (CRIME, BREACH). Leave
    /// compression off on connections that carry both.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: std::sync::Arc<rustls::ServerConfig>) -> Self {
        self.conn.tls_server = Some(config);
        self
    }

    /// With [`tls`](Self::tls) configured: `true` (the default) refuses plaintext clients,
    /// `false` lets each client choose (TLS when its hello asks for it, plaintext otherwise).
    /// Without a TLS config the server is plaintext only, whatever this says.
    #[cfg(feature = "tls")]
    pub fn tls_required(mut self, required: bool) -> Self {
        self.tls_required = required;
        self
    }

    /// Called for each accepted connection before anything is read from it; an `Err` closes
    /// it (counted in `accept_errors`).
    pub fn on_connect<F>(mut self, hook: F) -> Self
    where
        F: Fn(&ConnInfo) -> std::result::Result<(), String> + Send + Sync + 'static,
    {
        self.on_connect = Some(Arc::new(hook));
        self
    }

    /// Also listens on `addr` (TCP `host:port`, or `unix:/path`).
    pub fn listen(mut self, addr: impl ToAddress) -> Result<Self> {
        self.extra.push(addr.to_address()?);
        Ok(self)
    }

    /// Also accepts from a custom transport.
    pub fn listener(mut self, listener: impl CustomListener) -> Self {
        self.custom.push(Box::new(listener));
        self
    }

    /// Busy polling by the reactor `bind()` starts: while requests come a few at a time (at
    /// most 16 a turn), it keeps looking at the sockets for up to `spin` after its last
    /// activity, yielding the core between looks, before it sleeps in the kernel. Waking a
    /// thread whose core went idle costs tens of microseconds on virtual machines, more than a
    /// loopback round trip: with few calls in flight at its clients this halves latency or
    /// better, for at most `spin` of CPU per idle spell. After larger turns (batches are
    /// forming) it spins, for up to `spin` from when it went idle, only while at least three
    /// in four of its recent idle spells ended within `spin`: with a few hundred calls in
    /// flight the next batch comes that soon and the spin saves a wake-up, with thousands
    /// the reactor idles longer and spinning would take the core from the threads that feed
    /// it. Zero never spins. Default 100 µs. (A reactor you drive has its own setting:
    /// [`Reactor::set_busy_poll`].)
    pub fn busy_poll(mut self, spin: Duration) -> Self {
        self.busy_poll = spin;
        self
    }

    /// Names the reactor and worker threads (default `batchrpc-server`).
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The wire profile (native unless [`crate::fastrpc`] sets another).
    pub(crate) fn profile(mut self, profile: Profile) -> Self {
        self.conn.profile = profile;
        self
    }

    /// Listens on `addr` and runs the server on a reactor thread of its own.
    pub fn bind(self, addr: impl ToAddress) -> Result<Server> {
        let mut reactor = Reactor::new()?;
        reactor.set_busy_poll(self.busy_poll);
        let name = self.name.clone();
        let mut server = self.bind_on(&mut reactor, addr)?;
        server.reactor_thread = Some(reactor::spawn(reactor, name)?);
        Ok(server)
    }

    /// Listens on `addr` and attaches the server to `reactor`, which you drive. Worker threads
    /// are still started unless [`workers`](Self::workers) is 0.
    pub fn bind_on(mut self, reactor: &mut Reactor, addr: impl ToAddress) -> Result<Server> {
        let handler = self
            .handler
            .take()
            .ok_or_else(|| Error::Config("no handler set".into()))?;
        for c in [self.conn.compression] {
            if !c.is_available() {
                return Err(Error::Config(format!("compression {c} is not compiled in")));
            }
        }
        #[cfg(feature = "tls")]
        {
            use crate::wire::handshake::TlsPolicy;
            self.conn.tls = match (&self.conn.tls_server, self.tls_required) {
                (None, _) => TlsPolicy::Off,
                (Some(_), true) => TlsPolicy::Required,
                (Some(_), false) => TlsPolicy::Optional,
            };
        }
        let mut addrs = vec![addr.to_address()?];
        addrs.append(&mut self.extra);
        let mut listeners = Vec::new();
        for a in &addrs {
            listeners.push(Listener::bind(a)?);
        }
        listeners.extend(self.custom.drain(..).map(Listener::Custom));
        let local: Vec<Address> = listeners.iter().map(Listener::local_addr).collect();

        let max_jobs = (self.workers * 64).max(64);
        let shared = Arc::new(ServerShared {
            stats: SharedStats::default(),
            shutdown: AtomicBool::new(false),
            finished: Mutex::new(false),
            finished_cv: Condvar::new(),
            reactor: reactor.shared().clone(),
        });
        let (pool, worker_threads) = match self.workers {
            0 => (None, Vec::new()),
            n => {
                let (pool, threads) = pool::Pool::start(
                    n,
                    max_jobs,
                    handler.clone(),
                    shared.clone(),
                    !self.inline_budget.is_zero(),
                    &self.name,
                )?;
                (Some(pool), threads)
            }
        };
        let cfg = Arc::new(ServerConfig {
            conn: self.conn,
            handler,
            pipeline: self.pipeline,
            max_connections: self.max_connections,
            max_queued_requests: self.max_queued_requests,
            max_jobs,
            inline_budget_ns: self.inline_budget.as_nanos().min(u128::from(u64::MAX)) as u64,
            on_connect: self.on_connect,
        });
        let shared2 = shared.clone();
        let pool2 = pool.clone();
        let added = reactor.add_service(move |id, core| {
            let mut tokens = Vec::new();
            for l in listeners {
                tokens.push(core.add_listener(l, id)?);
            }
            Ok(Box::new(core::ServerCore::new(
                id, cfg, shared2, pool2, tokens,
            )))
        });
        if let Err(e) = added {
            if let Some(pool) = pool {
                pool.stop();
            }
            for t in worker_threads {
                let _ = t.join();
            }
            return Err(e);
        }
        Ok(Server {
            shared,
            local,
            reactor_thread: None,
            worker_threads: Mutex::new(worker_threads),
        })
    }
}

/// A running server. Dropping it shuts it down gracefully (see [`Server::shutdown`]).
///
/// A connection whose client closes (the server reads end of stream) is closed at once: its
/// requests not yet answered are dropped (handlers already running finish, and their answers
/// are discarded). TCP cannot tell a half-close from a client that left, and the protocol has
/// no half-close message, so a client that wants its answers keeps writing open until it has
/// read them.
///
/// ```
/// # fn main() -> Result<(), batchrpc::Error> {
/// use batchrpc::{Client, Server};
/// let server = Server::builder()
///     .handler(|_ctx: &batchrpc::RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
///         resp.extend_from_slice(req);
///         Ok(())
///     })
///     .bind("127.0.0.1:0")?;
/// let client = Client::builder(server.local_addr()).connect()?;
/// assert_eq!(&*client.call(b"hello")?, b"hello");
/// # Ok(()) }
/// ```
pub struct Server {
    shared: Arc<ServerShared>,
    local: Vec<Address>,
    reactor_thread: Option<JoinHandle<()>>,
    worker_threads: Mutex<Vec<JoinHandle<()>>>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A builder with the defaults.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The first address the server listens on (with the port the system chose for `:0`).
    pub fn local_addr(&self) -> Address {
        self.local[0].clone()
    }

    /// Every address the server listens on.
    pub fn local_addrs(&self) -> &[Address] {
        &self.local
    }

    /// A snapshot of the server's counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats.snapshot()
    }

    /// Stops accepting, stops reading new requests, answers every request already read,
    /// flushes, closes every connection, and stops the workers.
    ///
    /// With a reactor of its own ([`ServerBuilder::bind`]) this blocks until all of that is
    /// done and the threads are joined. On a reactor you drive ([`ServerBuilder::bind_on`]) it
    /// only starts the shutdown: keep driving until [`Server::is_shut_down`].
    pub fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.reactor.notify();
        if self.reactor_thread.is_some() {
            let mut done = self
                .shared
                .finished
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            while !*done {
                done = self
                    .shared
                    .finished_cv
                    .wait(done)
                    .unwrap_or_else(|e| e.into_inner());
            }
            drop(done);
            self.join_workers();
        }
    }

    /// True once a shutdown has completed.
    pub fn is_shut_down(&self) -> bool {
        let finished = self.shared.is_finished();
        if finished {
            self.join_workers();
        }
        finished
    }

    fn join_workers(&self) {
        let threads = std::mem::take(
            &mut *self
                .worker_threads
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.reactor_thread.is_some() {
            self.shutdown();
            if let Some(t) = self.reactor_thread.take() {
                let _ = t.join();
            }
        } else {
            // On a reactor driven by the user: ask for the shutdown; the reactor finishes it
            // on its next turns. Workers exit when it completes.
            self.shared.shutdown.store(true, Ordering::Release);
            self.shared.reactor.notify();
        }
    }
}
