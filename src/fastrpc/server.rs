//! The fastrpc profile's server: a handler of name and value.

#[cfg(feature = "tls")]
use std::sync::Arc;
use std::time::Duration;

use crate::reactor::Reactor;
use crate::stats::Stats;
use crate::transport::{Address, ToAddress};
use crate::wire::conn::Profile;
use crate::wire::fastrpc::{split_request_body, FastrpcSettings};
use crate::{Compression, ConnInfo, HandlerError, RequestCtx, Result};

/// Builds a fastrpc [`Server`]. Every setting has a default; only the handler is required.
/// The settings not listed here are those of [`crate::ServerBuilder`].
///
/// | setting | default |
/// |---|---|
/// | [`sniff_header`](Self::sniff_header) | empty (Go's default) |
/// | [`protocol_version`](Self::protocol_version) | 0 (Go's default) |
/// | [`compression`](Self::compression) | [`Compression::None`] (Go defaults to flate; each side picks its own) |
/// | [`workers`](Self::workers) | available cores |
/// | [`max_batch_delay`](Self::max_batch_delay) | zero |
/// | [`pipeline`](Self::pipeline) | `false` |
/// | [`max_connections`](Self::max_connections) | 10 000 |
/// | [`max_queued_requests`](Self::max_queued_requests) | 10 000 (Go's `Concurrency` is 10 000 too) |
/// | [`handshake_timeout`](Self::handshake_timeout) | 3 s (Go's) |
/// | [`idle_timeout`](Self::idle_timeout) | 60 s without a complete request while owed no answer |
#[cfg_attr(
    feature = "tls",
    doc = "| [`tls_required`](Self::tls_required) | `false`: with TLS configured, plaintext clients are still served, as Go does |"
)]
#[must_use]
#[derive(Debug)]
pub struct ServerBuilder {
    inner: crate::ServerBuilder,
    settings: FastrpcSettings,
}

impl ServerBuilder {
    /// Bytes a client must send first in its handshake (Go's `SniffHeader`); a client that
    /// sends others is closed without an answer.
    pub fn sniff_header(mut self, sniff: &[u8]) -> Self {
        self.settings.sniff = sniff.into();
        self
    }

    /// The protocol version a client must send (Go's `ProtocolVersion`).
    pub fn protocol_version(mut self, version: u8) -> Self {
        self.settings.version = version;
        self
    }

    /// What this side compresses its responses with (Go's `CompressType`).
    pub fn compression(mut self, compression: Compression) -> Self {
        self.inner = self.inner.compression(compression);
        self
    }

    /// The flate level, 0 to 9 (default 1, fast; Go writes 6).
    pub fn flate_level(mut self, level: u32) -> Self {
        self.inner = self.inner.flate_level(level);
        self
    }

    /// Worker threads running the handler (see [`crate::ServerBuilder::workers`]).
    pub fn workers(mut self, n: usize) -> Self {
        self.inner = self.inner.workers(n);
        self
    }

    /// How long responses may wait to be batched (Go's `MaxBatchDelay`).
    pub fn max_batch_delay(mut self, delay: Duration) -> Self {
        self.inner = self.inner.max_batch_delay(delay);
        self
    }

    /// Answers each connection's requests one at a time, in order (Go's `PipelineRequests`).
    pub fn pipeline(mut self, pipeline: bool) -> Self {
        self.inner = self.inner.pipeline(pipeline);
        self
    }

    /// The handler: reads the call's name and value, appends the response's value to `resp`
    /// (empty on entry) and returns `Ok(())`. An error or a panic is answered with its text
    /// as the value: fastrpc has no error responses.
    pub fn handler<F>(mut self, handler: F) -> Self
    where
        F: Fn(&RequestCtx, &[u8], &[u8], &mut Vec<u8>) -> std::result::Result<(), HandlerError>
            + Send
            + Sync
            + 'static,
    {
        self.inner = self.inner.handler(move |ctx, body, resp| {
            // The connection decoded and checked the body before handing it over.
            match split_request_body(body) {
                Some((name, value)) => handler(ctx, name, value, resp),
                None => Err("malformed tlv request".into()),
            }
        });
        self
    }

    /// Runs cheap handlers on the reactor thread (see [`crate::ServerBuilder::inline_budget`]).
    pub fn inline_budget(mut self, budget: Duration) -> Self {
        self.inner = self.inner.inline_budget(budget);
        self
    }

    /// Connections open at once; more are refused.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.inner = self.inner.max_connections(n);
        self
    }

    /// Requests read and not yet answered, over all connections; beyond it reading pauses.
    pub fn max_queued_requests(mut self, n: usize) -> Self {
        self.inner = self.inner.max_queued_requests(n);
        self
    }

    /// Time a connection has for its handshake, TLS included.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.inner = self.inner.handshake_timeout(timeout);
        self
    }

    /// Closes a connection that delivers no complete request for `timeout` while owed no
    /// answer (see [`crate::ServerBuilder::idle_timeout`]); zero turns it off. Default 60 s.
    /// fastrpc clients have no keepalive ping, so an idle client is closed after that long
    /// and redials on its next call; a call made just as the close happens fails with
    /// [`crate::Error::ConnectionLost`]. Turn it off (or raise it) for clients that idle long
    /// and cannot afford that, if peers that vanish silently are not a concern.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.inner = self.inner.idle_timeout(timeout);
        self
    }

    /// Serves TLS to the clients that ask for it in their handshake (Go's `TLSConfig`).
    /// Plaintext clients are still served unless [`tls_required`](Self::tls_required).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.inner = self.inner.tls(config);
        self
    }

    /// With [`tls`](Self::tls): `true` closes plaintext clients after the handshake block
    /// (stricter than Go, which has no such switch). Default `false`.
    #[cfg(feature = "tls")]
    pub fn tls_required(mut self, required: bool) -> Self {
        self.inner = self.inner.tls_required(required);
        self
    }

    /// Called for each accepted connection before anything is read; an `Err` closes it.
    pub fn on_connect<F>(mut self, hook: F) -> Self
    where
        F: Fn(&ConnInfo) -> std::result::Result<(), String> + Send + Sync + 'static,
    {
        self.inner = self.inner.on_connect(hook);
        self
    }

    /// Also listens on `addr`.
    pub fn listen(mut self, addr: impl ToAddress) -> Result<Self> {
        self.inner = self.inner.listen(addr)?;
        Ok(self)
    }

    /// Busy polling of the reactor's waits (see [`crate::ServerBuilder::busy_poll`]).
    pub fn busy_poll(mut self, spin: Duration) -> Self {
        self.inner = self.inner.busy_poll(spin);
        self
    }

    /// Names the reactor and worker threads.
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.inner = self.inner.thread_name(name);
        self
    }

    /// Listens on `addr` and runs the server on a reactor thread of its own.
    pub fn bind(self, addr: impl ToAddress) -> Result<Server> {
        let inner = self
            .inner
            .profile(Profile::Fastrpc(self.settings))
            .bind(addr)?;
        Ok(Server { inner })
    }

    /// Listens on `addr` on `reactor`, which you drive.
    pub fn bind_on(self, reactor: &mut Reactor, addr: impl ToAddress) -> Result<Server> {
        let inner = self
            .inner
            .profile(Profile::Fastrpc(self.settings))
            .bind_on(reactor, addr)?;
        Ok(Server { inner })
    }
}

/// A running fastrpc `tlv` server, for Go's `fastrpc.Client` and [`super::Client`]. Dropping
/// it shuts it down gracefully, as [`crate::Server`].
#[derive(Debug)]
pub struct Server {
    inner: crate::Server,
}

impl Server {
    /// A builder with the defaults.
    pub fn builder() -> ServerBuilder {
        #[cfg(feature = "tls")]
        let inner = crate::Server::builder().tls_required(false);
        #[cfg(not(feature = "tls"))]
        let inner = crate::Server::builder();
        ServerBuilder {
            inner,
            settings: FastrpcSettings::default(),
        }
    }

    /// The first address the server listens on.
    pub fn local_addr(&self) -> Address {
        self.inner.local_addr()
    }

    /// Every address the server listens on.
    pub fn local_addrs(&self) -> &[Address] {
        self.inner.local_addrs()
    }

    /// A snapshot of the server's counters.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// Shuts down gracefully (see [`crate::Server::shutdown`]).
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    /// True once a shutdown has completed.
    pub fn is_shut_down(&self) -> bool {
        self.inner.is_shut_down()
    }
}
