//! The fastrpc profile's client: calls by name and value.

#[cfg(feature = "tls")]
use std::sync::Arc;
use std::time::Duration;

use crate::client::Body;
use crate::reactor::Reactor;
use crate::stats::Stats;
use crate::transport::ToAddress;
use crate::wire::conn::Profile;
use crate::wire::fastrpc::{check_request, FastrpcSettings, TooLarge, MAX_FIELD_LEN};
use crate::{Compression, ConnInfo, Error, PendingCall, Response, Result};

/// Builds a fastrpc [`Client`]. Every setting has a default; the ones not listed here are
/// those of [`crate::ClientBuilder`].
///
/// | setting | default |
/// |---|---|
/// | [`sniff_header`](Self::sniff_header) | empty (Go's default) |
/// | [`protocol_version`](Self::protocol_version) | 0 (Go's default) |
/// | [`compression`](Self::compression) | [`Compression::None`] (Go defaults to flate; each side picks its own) |
/// | [`conns`](Self::conns) | 1 |
/// | [`max_pending_requests`](Self::max_pending_requests) | 32 768 |
/// | [`request_timeout`](Self::request_timeout) | 20 s |
/// | [`max_batch_delay`](Self::max_batch_delay) | zero |
/// | [`handshake_timeout`](Self::handshake_timeout) | 3 s (Go's) |
///
/// There is no keepalive: the fastrpc profile has no ping frame. A path that dies silently
/// is noticed through the calls' deadlines only, and a server's idle timeout closes an idle
/// connection (the client redials on its next call).
#[must_use]
#[derive(Debug)]
pub struct ClientBuilder {
    inner: crate::ClientBuilder,
    settings: FastrpcSettings,
}

impl ClientBuilder {
    /// Bytes sent first in the handshake, which the server checks (Go's `SniffHeader`).
    pub fn sniff_header(mut self, sniff: &[u8]) -> Self {
        self.settings.sniff = sniff.into();
        self
    }

    /// The protocol version byte, which the server checks (Go's `ProtocolVersion`).
    pub fn protocol_version(mut self, version: u8) -> Self {
        self.settings.version = version;
        self
    }

    /// What this side compresses its requests with (Go's `CompressType`). The server picks
    /// its own for the responses.
    pub fn compression(mut self, compression: Compression) -> Self {
        self.inner = self.inner.compression(compression);
        self
    }

    /// The flate level, 0 to 9 (default 1, fast; Go writes 6).
    pub fn flate_level(mut self, level: u32) -> Self {
        self.inner = self.inner.flate_level(level);
        self
    }

    /// Connections to open and spread calls over (each numbers its own calls).
    pub fn conns(mut self, n: usize) -> Self {
        self.inner = self.inner.conns(n);
        self
    }

    /// Calls pending at once; beyond it a call fails with [`Error::Overflow`].
    pub fn max_pending_requests(mut self, n: u32) -> Self {
        self.inner = self.inner.max_pending_requests(n);
        self
    }

    /// Deadline of [`Client::call`] and [`Client::call_async`].
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.inner = self.inner.request_timeout(timeout);
        self
    }

    /// How long requests may wait to be batched (Go's `MaxBatchDelay`).
    pub fn max_batch_delay(mut self, delay: Duration) -> Self {
        self.inner = self.inner.max_batch_delay(delay);
        self
    }

    /// Time a connection has for its handshake, TLS included.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.inner = self.inner.handshake_timeout(timeout);
        self
    }

    /// Connects with TLS, as Go's `TLSConfig` does: the handshake block in clear asks for it,
    /// then a TLS handshake runs on the same socket. See [`crate::ClientBuilder::tls`].
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>, server_name: &str) -> Self {
        self.inner = self.inner.tls(config, server_name);
        self
    }

    /// Redial delays after a connection is lost: `min`, doubling up to `max`, with jitter.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.inner = self.inner.reconnect_backoff(min, max);
        self
    }

    /// Called when a connection's handshake completes; an `Err` closes it.
    pub fn on_connect<F>(mut self, hook: F) -> Self
    where
        F: Fn(&ConnInfo) -> std::result::Result<(), String> + Send + Sync + 'static,
    {
        self.inner = self.inner.on_connect(hook);
        self
    }

    /// Busy polling of the reactor's waits (see [`crate::ClientBuilder::busy_poll`]).
    pub fn busy_poll(mut self, spin: Duration) -> Self {
        self.inner = self.inner.busy_poll(spin);
        self
    }

    /// Names the reactor thread.
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.inner = self.inner.thread_name(name);
        self
    }

    /// Connects and runs the client on a reactor thread of its own; returns once the first
    /// connection's handshake has completed, or with the error that stopped it.
    pub fn connect(self) -> Result<Client> {
        let inner = self
            .inner
            .profile(Profile::Fastrpc(self.settings))
            .connect()?;
        Ok(Client { inner })
    }

    /// Connects on `reactor`, which you drive.
    pub fn connect_on(self, reactor: &mut Reactor) -> Result<Client> {
        let inner = self
            .inner
            .profile(Profile::Fastrpc(self.settings))
            .connect_on(reactor)?;
        Ok(Client { inner })
    }
}

/// A client of a fastrpc `tlv` server (Go's `fastrpc.Server`, or [`super::Server`]): cheap
/// to clone, usable from any number of threads. Every call completes exactly once, as with
/// [`crate::Client`].
///
/// ```no_run
/// # fn main() -> Result<(), batchrpc::Error> {
/// use batchrpc::fastrpc;
/// let client = fastrpc::Client::builder("127.0.0.1:7000").connect()?;
/// let value = client.call(b"name", b"value")?;
/// println!("{}", String::from_utf8_lossy(&value));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    inner: crate::Client,
}

impl Client {
    /// A builder for a client of the server at `addr`.
    pub fn builder(addr: impl ToAddress) -> ClientBuilder {
        ClientBuilder {
            inner: crate::Client::builder(addr),
            settings: FastrpcSettings::default(),
        }
    }

    /// Calls and waits for the response's value, at most the request timeout.
    pub fn call(&self, name: &[u8], value: &[u8]) -> Result<Response> {
        self.call_timeout(name, value, self.inner.timeout())
    }

    /// Calls and waits for the response's value, at most `timeout` (Go's `DoDeadline`).
    pub fn call_timeout(&self, name: &[u8], value: &[u8], timeout: Duration) -> Result<Response> {
        self.inner.call_body(self.body(name, value)?, timeout)
    }

    /// Starts a call; the response's value is taken from the returned handle.
    pub fn call_async(&self, name: &[u8], value: &[u8]) -> Result<PendingCall> {
        self.inner
            .start(self.body(name, value)?, self.inner.timeout())
    }

    /// [`Client::call_async`] with its own deadline.
    pub fn call_async_timeout(
        &self,
        name: &[u8],
        value: &[u8],
        timeout: Duration,
    ) -> Result<PendingCall> {
        self.inner.start(self.body(name, value)?, timeout)
    }

    /// Sends a call that wants no response (id 0, Go's `SendNowait`). Returns once it is
    /// queued; it goes out with the next batch.
    pub fn send(&self, name: &[u8], value: &[u8]) -> Result<()> {
        self.inner.send_body(self.body(name, value)?)
    }

    /// Calls pending (see [`crate::Client::pending_requests`]).
    pub fn pending_requests(&self) -> usize {
        self.inner.pending_requests()
    }

    /// A snapshot of the client's counters.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// Closes the client now: pending calls complete with [`Error::Closed`]; the sends
    /// accepted before the close are written first (see [`crate::Client::close`]).
    pub fn close(&self) {
        self.inner.close();
    }

    /// The call's `tlv` body, or [`Error::TooLarge`] (counted) for a field above
    /// [`MAX_FIELD_LEN`].
    fn body<'a>(&self, name: &'a [u8], value: &'a [u8]) -> Result<Body<'a>> {
        match check_request(name, value) {
            Ok(()) => Ok(Body::Tlv(name, value)),
            Err(TooLarge::Field { len, .. }) => Err(self.inner.refuse(Error::TooLarge {
                len,
                max: MAX_FIELD_LEN,
            })),
        }
    }
}
