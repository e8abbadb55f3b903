//! Batched, multiplexed RPC over a few connections, without an async runtime.
//!
//! batchrpc does what Go's gorpc and fastrpc do: many concurrent calls share a few TCP (or
//! Unix) connections, requests and responses are packed into batches so that one `write()`
//! carries hundreds of calls, and each direction's stream may be compressed as a whole. One
//! hand-written [mio] reactor thread does all the I/O; handlers run on a fixed pool of worker
//! threads fed through lock-free queues. There is no `async`, no Tokio, and you may drive the
//! reactor from your own event loop.
//!
//! # Quick start
//!
//! ```
//! use std::time::Duration;
//! use batchrpc::{Client, RequestCtx, Server};
//!
//! # fn main() -> Result<(), batchrpc::Error> {
//! let server = Server::builder()
//!     .handler(|_ctx: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
//!         resp.extend_from_slice(req);
//!         Ok(()) // Err(e) reaches the caller as Error::Server(e.to_string())
//!     })
//!     .bind("127.0.0.1:0")?;
//!
//! let client = Client::builder(server.local_addr()).connect()?;
//! let resp = client.call(b"foobar")?; // blocking; `resp` derefs to [u8]
//! assert_eq!(&*resp, b"foobar");
//! let resp = client.call_timeout(b"x", Duration::from_millis(100))?;
//! client.send(b"fire and forget")?; // no response
//! let pending = client.call_async(b"later")?; // wait(), try_wait(), is_done(); drop = cancel
//! assert_eq!(&*pending.wait()?, b"later");
//! # drop(resp);
//! server.shutdown(); // stop accepting, finish what was read, flush, close
//! # Ok(()) }
//! ```
//!
//! # Calls
//!
//! A [`Client`] is a cheap-to-clone handle usable from any number of threads. Its calls are
//! [`Client::call`] (blocking), [`Client::call_timeout`], [`Client::call_async`] (a
//! [`PendingCall`]), [`Client::send`] (no response) and [`Client::batch`] (many calls handed
//! over together). Every call completes exactly once: with its [`Response`], or with an
//! [`Error`] that says why not. Calls never hang: each has a deadline (the client's
//! `request_timeout`, 20 s by default, or the one given), enforced by a timer on the reactor.
//!
//! # Errors
//!
//! [`Error`] separates what concerns one call ([`Error::Timeout`], [`Error::Overflow`],
//! [`Error::Server`], [`Error::TooLarge`], [`Error::Canceled`]) from what concerns a connection
//! (the calls it carried fail with [`Error::ConnectionLost`], whose cause is an [`Error::Io`],
//! [`Error::Protocol`] or [`Error::Refused`]) and from what concerns the whole client
//! ([`Error::Closed`]). A lost connection is redialed with exponential backoff and jitter;
//! calls made meanwhile wait for it within their deadlines.
//!
//! # Batching
//!
//! Outgoing frames collect in a per-connection buffer and are flushed once per reactor turn:
//! everything the callers (or the workers) produced while the reactor was busy goes out in one
//! `write()`. With [`ClientBuilder::max_batch_delay`] / [`ServerBuilder::max_batch_delay`]
//! above zero, a batch also waits up to that long for more frames (or until 64 KiB), which
//! trades latency for fewer, larger writes. [`Stats::frames_per_write`] shows the effect.
//!
//! # Compression
//!
//! Each side compresses what it writes with [`Compression::None`], [`Compression::Flate`]
//! (raw deflate, sync-flushed per batch; cargo feature `flate`) or [`Compression::Snappy`]
//! (snappy framing format; cargo feature `snappy`). The whole stream is one compression
//! context, so repeated content across calls compresses well. Decompression is bounded: a
//! peer cannot make a connection hold more than one maximum-size frame of decompressed data.
//!
#![cfg_attr(
    feature = "tls",
    doc = r#"
# TLS

With the `tls` cargo feature (on by default), [`ServerBuilder::tls`] and
[`ClientBuilder::tls`] take rustls configurations; [`tls`] builds them from PEM files
(certificate chain, private key, CA roots, client certificates for mutual TLS). rustls runs
sans-IO inside each connection, on the same reactor thread: after the plaintext hello, which
says that TLS is wanted, comes the TLS handshake, then the (compressed, if so configured)
stream of frames. Batching holds: one flush becomes as few TLS records as the 16 KiB record
limit allows, in one `write()`. The crypto provider is the application's choice: install
one as the process default (for example rustls's `ring` feature and
`rustls::crypto::ring::default_provider().install_default()`).

A TLS server refuses plaintext clients unless [`ServerBuilder::tls_required`] is `false`.
Every mismatch fails that connection alone, within the handshake timeout, and
`connect()` says why: [`wire::handshake::HandshakeError::TlsRequired`] or
[`TlsNotOffered`](wire::handshake::HandshakeError::TlsNotOffered) when one side wants TLS
and the other does not, [`wire::ProtocolError::Tls`] (see [`tls::TlsErrorKind`]) for a
certificate for another name, from an unknown CA, expired, or a client certificate missing
or refused by a mutual-TLS server. Handlers see the client's certificate through
[`RequestCtx::peer_certificates`].

**Compression and secrets.** Compressing secrets together with data an attacker controls
in one TLS stream leaks the secrets through the compressed length (the CRIME and BREACH
attacks). Turn compression off on connections that carry both.

`examples/tls.rs` runs a server and a client with generated certificates, or with PEM files.

"#
)]
#![cfg_attr(
    feature = "typed",
    doc = r#"
# Typed calls

With the `typed` cargo feature (on by default; it brings in serde and bincode 2),
[`Dispatcher`] serves named functions of serde types (encoded with bincode 2, or another
[`typed::Format`]); [`FuncClient`] calls them with no copy of the server's registrations.
Unknown names, undecodable arguments and the functions' own errors reach the caller as
[`Error::Server`] with distinct texts. See [`typed`].

```
# fn main() -> Result<(), batchrpc::Error> {
use batchrpc::{Client, Dispatcher, FuncClient, Server};
let mut d = Dispatcher::new();
d.add_func("add", |(a, b): (i64, i64)| -> Result<i64, String> { Ok(a + b) });
let server = Server::builder().handler(d.into_handler()).bind("127.0.0.1:0")?;
let fc = FuncClient::new(Client::builder(server.local_addr()).connect()?);
let sum: i64 = fc.call("add", &(2i64, 3i64))?;
assert_eq!(sum, 5);
# Ok(()) }
```

"#
)]
//! # Talking to Go's fastrpc
//!
//! [`fastrpc::Client`] calls Go `fastrpc.Server`s that speak `tlv` messages, and
//! [`fastrpc::Server`] answers Go `fastrpc.Client`s, byte for byte: a second wire profile on
//! the same reactor, with the same batching, compression, TLS, deadlines and statistics. A
//! call is a name and a value; the answer is a value. See [`fastrpc`].
//!
//! # Statistics
//!
//! [`Client::stats`] and [`Server::stats`] return [`Stats`]: calls and errors by kind, bytes
//! and syscalls, batches flushed and frames per write, reactor turns and thread wake-ups
//! (the costs batching exists to cut), open connections and their buffer memory.
//! [`Stats::since`] gives what happened between two snapshots.
//!
//! # Limits
//!
//! Everything is bounded: pending calls per client (`max_pending_requests`, then
//! [`Error::Overflow`]), queued requests per server (`max_queued_requests`, then the reactor
//! stops reading: backpressure), frame size (`max_frame_len`, 64 MiB), handshake time (3 s),
//! connections (`max_connections`), silence: a client pings a connection that has received
//! nothing for its keepalive period ([`ClientBuilder::keepalive`], 15 s) and drops it as dead
//! after as long again without a byte (its calls fail with [`Error::ConnectionLost`], and it
//! redials), and a server closes a connection that delivered no complete frame for its idle
//! timeout ([`ServerBuilder::idle_timeout`], 60 s) while owed no answer. A peer that breaks
//! the protocol loses its connection and is counted in [`Stats`]; nothing else is affected.
//! A client that half-closes (ends its stream after whole frames) gets every answer, then the
//! close.
//!
//! # Threads, and driving the reactor yourself
//!
//! [`ServerBuilder::bind`] and [`ClientBuilder::connect`] each run a [`Reactor`] on a thread of
//! its own. [`ServerBuilder::bind_on`] and [`ClientBuilder::connect_on`] attach to a reactor
//! you drive with [`Reactor::poll_once`] instead; one reactor can host many clients and
//! servers. With `workers(0)` a server runs its handlers inline on the reactor thread.
//!
//! A client made by `connect()` lends its reactor to its callers: a thread about to block in
//! [`Client::call`] or [`PendingCall::wait`] while nobody drives the reactor runs the reactor's
//! turns itself until its call completes, then hands it back (leader/follower). The reactor
//! code and its guarantees are the same; only the thread changes, and a blocking round trip
//! saves the two thread wake-ups of handing the call to the reactor thread and back. The
//! reactor thread takes over whenever a caller leaves work behind.
//!
//! While traffic is light (frames come a few at a time), or heavier but with the next frames
//! mostly coming within 100 µs, the reactors of `connect()` and `bind()` poll for up to
//! 100 µs before they sleep, yielding the core between looks: waking a thread whose core went
//! idle costs more than a loopback round trip on virtual machines. See
//! [`ClientBuilder::busy_poll`] and [`ServerBuilder::busy_poll`] for the trade (set them to
//! zero to never spin), and [`Reactor::set_busy_poll`] for a reactor you drive.
//!
//! ```
//! use std::time::Duration;
//! use batchrpc::{Client, Reactor, RequestCtx, Server};
//!
//! # fn main() -> Result<(), batchrpc::Error> {
//! let mut reactor = Reactor::new()?;
//! let server = Server::builder()
//!     .workers(0)
//!     .handler(|_: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
//!         resp.extend_from_slice(req);
//!         Ok(())
//!     })
//!     .bind_on(&mut reactor, "127.0.0.1:0")?;
//! let client = Client::builder(server.local_addr()).connect_on(&mut reactor)?;
//! let pending = client.call_async(b"ping")?;
//! while !pending.is_done() {
//!     reactor.poll_once(Some(Duration::from_millis(10)))?;
//! }
//! assert_eq!(&*pending.wait()?, b"ping");
//! # Ok(()) }
//! ```
//!
//! # Transports
//!
//! TCP (with `TCP_NODELAY`) is the default; addresses of the form `"unix:/path"` use Unix
//! sockets; [`ClientBuilder::dialer`] and [`ServerBuilder::listener`] plug in any mio source
//! ([`transport::CustomStream`], [`transport::CustomListener`]). `on_connect` hooks on both
//! sides can refuse a peer before any call flows.
//!
//! # Layers
//!
//! - [`wire`]: the sans-IO protocol (hello, frames, codecs, the connection state machine). It
//!   never touches a socket, a thread or a clock, so it is unit-tested and fuzzed on its own.
//! - [`Reactor`]: the only place that does I/O.
//! - [`Server`], [`Client`]: the handles, their reactor sides, the worker pool.
//! - [`fastrpc`]: the same client and server speaking Go's fastrpc wire format.
//!
//! [mio]: https://docs.rs/mio
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod error;
pub mod fastrpc;
mod reactor;
mod server;
pub mod stats;
#[cfg(feature = "tls")]
pub mod tls;
pub mod transport;
#[cfg(feature = "typed")]
pub mod typed;
pub mod wire;

pub use client::{Batch, Client, ClientBuilder, PendingCall, Response};
pub use error::{Error, Result};
pub use reactor::Reactor;
pub use server::{ConnInfo, HandlerError, RequestCtx, Server, ServerBuilder};
pub use stats::Stats;
pub use transport::{Address, ToAddress};
#[cfg(feature = "typed")]
pub use typed::{Dispatcher, FuncClient};
pub use wire::compress::Compression;

/// The README's Rust code blocks, compiled as doctests that must not warn.
#[cfg(doctest)]
#[doc(test(attr(deny(warnings))))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
