//! Talk to Go services that speak fastrpc's `tlv` protocol, as they are: a [`Client`] that
//! calls a Go `fastrpc.Server`, a [`Server`] that Go `fastrpc.Client`s call.
//!
//! This is batchrpc's second wire profile ([`Profile::Fastrpc`]): the same reactor,
//! connection state machine, batching, compression, TLS, timeouts, reconnects and statistics
//! as the native [`crate::Client`] and [`crate::Server`], with fastrpc's handshake and frames
//! (the codecs are in [`crate::wire::fastrpc`]). A call is a name and a value; the answer is
//! a value.
//!
// The example compresses with both codecs: it runs when the build has them.
#![cfg_attr(all(feature = "flate", feature = "snappy"), doc = "```")]
#![cfg_attr(not(all(feature = "flate", feature = "snappy")), doc = "```ignore")]
//! # fn main() -> Result<(), batchrpc::Error> {
//! use batchrpc::{fastrpc, Compression};
//! let server = fastrpc::Server::builder()
//!     .compression(Compression::Snappy)
//!     .handler(|_ctx: &batchrpc::RequestCtx, name: &[u8], value: &[u8], resp: &mut Vec<u8>| {
//!         resp.extend_from_slice(b"re:");
//!         resp.extend_from_slice(name);
//!         resp.push(b'=');
//!         resp.extend_from_slice(value);
//!         Ok(())
//!     })
//!     .bind("127.0.0.1:0")?;
//! let client = fastrpc::Client::builder(server.local_addr())
//!     .compression(Compression::Flate)
//!     .connect()?;
//! assert_eq!(&*client.call(b"foo", b"bar")?, b"re:foo=bar");
//! client.send(b"log", b"no answer wanted")?;
//! # Ok(()) }
//! ```
//!
//! # How the profile maps onto Go's settings
//! | Go (`fastrpc.Client`/`Server`) | here |
//! |---|---|
//! | `SniffHeader` (default empty) | `sniff_header` |
//! | `ProtocolVersion` (default 0) | `protocol_version` |
//! | `CompressType`: 0 flate (Go's default), 1 none, 2 snappy | `compression`: [`Compression::Flate`], [`Compression::None`] (this side's default), [`Compression::Snappy`] |
//! | `TLSConfig` | `tls`; a server also serves plaintext clients unless `tls_required(true)`, as Go does |
//! | `MaxBatchDelay` | `max_batch_delay` |
//! | `Concurrency` (server) | `max_queued_requests` |
//! | `PipelineRequests` (server) | `pipeline` |
//! | `DoDeadline` / `SendNowait` | `call_timeout` (and `call`, `call_async`) / `send` |
//!
//! Each side says in its handshake what it compresses with, so the two directions may differ
//! and a client need not match the server's setting.
//!
//! # What differs from the native profile
//! - No error responses on the wire: a handler's error (or panic) becomes the response's
//!   value, its text, exactly as a Go handler writes its errors into the value. The server
//!   still counts it in [`crate::stats::ErrorCounts::server`]; the client cannot tell it from
//!   an answer.
//! - Names and values are at most [`MAX_FIELD_LEN`] (1 MiB) each. A call with a longer one
//!   fails alone with [`crate::Error::TooLarge`] before anything is written; a handler's
//!   longer answer is replaced by an error text.
//! - The client numbers the calls of each connection 1, 2, 3, … as Go does, skipping 0 and
//!   ids still outstanding (including those of timed-out calls, until their late answer comes
//!   or the connection closes); a no-response call goes out with id 0. Responses with id 0
//!   (Go's server answers a no-response call with one when it is overloaded) or an unknown
//!   id are read and dropped, counted in [`crate::stats::ErrorCounts::stale_responses`]; the
//!   connection stays up.
//!
//! [`Profile::Fastrpc`]: crate::wire::conn::Profile::Fastrpc
//! [`Compression::Flate`]: crate::Compression::Flate
//! [`Compression::None`]: crate::Compression::None
//! [`Compression::Snappy`]: crate::Compression::Snappy

mod client;
mod server;

/// The wire format this profile speaks, byte by byte (a page of documentation, no code).
#[doc = include_str!("../../docs/fastrpc-wire.md")]
pub mod wire_format {}

pub use crate::wire::fastrpc::MAX_FIELD_LEN;
pub use client::{Client, ClientBuilder};
pub use server::{Server, ServerBuilder};
