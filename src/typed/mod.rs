//! Typed calls: named functions with serde arguments and results, encoded with bincode.
//!
//! This module needs the cargo feature `typed` (on by default), which brings in serde and
//! bincode 2; build with `default-features = false` (and the other features you want) for the
//! raw-bytes library alone.
//!
//! The server registers functions in a [`Dispatcher`] and serves them through one handler;
//! the client wraps its [`Client`](crate::Client) in a [`FuncClient`] and calls them by name.
//! There is no reflection and no registration on the client side: a call names its function,
//! passes any `Serialize` value and asks for any `DeserializeOwned` type back (gorpc needed
//! the client to register the server's types; here the types are the contract).
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use batchrpc::{Client, Dispatcher, Error, FuncClient, Server};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct Point { x: i32, y: i32 }
//!
//! # fn main() -> Result<(), Error> {
//! let mut d = Dispatcher::new();
//! d.add_func("add", |(a, b): (i64, i64)| -> Result<i64, String> { Ok(a + b) });
//! d.add_func("mirror", |p: Point| Ok::<_, String>(Point { x: p.y, y: p.x }));
//! let server = Server::builder().handler(d.into_handler()).bind("127.0.0.1:0")?;
//!
//! let fc = FuncClient::new(Client::builder(server.local_addr()).connect()?);
//! let sum: i64 = fc.call("add", &(2i64, 3i64))?;
//! assert_eq!(sum, 5);
//! let p: Point = fc.call("mirror", &Point { x: 1, y: 2 })?;
//! assert_eq!(p, Point { x: 2, y: 1 });
//! // Unknown names, bad arguments and the functions' errors come back as Error::Server.
//! let err = fc.call::<_, ()>("nope", &()).unwrap_err();
//! assert!(matches!(err, Error::Server(msg) if msg == r#"unknown function "nope""#));
//! # Ok(()) }
//! ```
//!
//! # Formats, and bincode's status
//!
//! The dispatcher and the function client encode through the [`Format`] trait: two
//! functions, `encode` (a serde value, appended to a `Vec<u8>`) and `decode` (a value from a
//! `&[u8]` it must fill). The default, [`Bincode`], is bincode 2 with its standard
//! configuration. bincode 2 carries an "unmaintained" advisory,
//! [RUSTSEC-2025-0141](https://rustsec.org/advisories/RUSTSEC-2025-0141), and the bincode 3.0.0
//! published on crates.io does not compile, so there is no newer bincode to move to yet. To use
//! another serde format (postcard, say, or a later bincode), implement [`Format`] for a type
//! of your own and build both sides with it: [`Dispatcher::with_format`] and
//! [`FuncClient::with_format`]; [`Format`]'s docs show one. Nothing else changes; the request
//! layout around the arguments stays the same.
//!
//! # Functions and services
//!
//! A function takes one argument value (a tuple for several, `()` for none) and returns
//! `Result<Resp, E>` where `E: Display`: [`Dispatcher::add_func`]. Functions that want the
//! caller's address or connection id take the [`RequestCtx`](crate::RequestCtx) too:
//! [`Dispatcher::add_func_ctx`]. [`Dispatcher::add_service`] registers `"Service.method"`
//! names over a shared state, much like gorpc's `AddService`.
//!
//! # Request layout
//!
//! One byte of name length (1 to 255), the name, then the bincode-encoded arguments; the
//! response is the bincode-encoded result. `add(2i64, 3i64)` is 6 bytes on the wire and its
//! result 1 byte. Details in [`codec`].
//!
//! # Errors
//!
//! The server answers these as error responses, which the caller receives as
//! [`Error::Server`](crate::Error::Server) with exactly this text (`"x"` is the name as a Rust
//! string literal, with escapes):
//!
//! | case | text |
//! |---|---|
//! | no function of that name | `unknown function "x"` |
//! | arguments too large | `cannot decode arguments of "x": <n> bytes exceed the limit of <max> bytes` |
//! | arguments do not decode as the function's type | `cannot decode arguments of "x": <why>` |
//! | the function returned `Err(e)` | `e.to_string()`, unchanged |
//! | the function panicked | `handler panicked: <panic message>` (caught by the server) |
//! | the result does not encode | `cannot encode the result of "x": <why>` |
//! | the request does not follow the layout | `malformed request: <why>` |
//!
//! On the client side, [`FuncClient`] returns what [`Client`](crate::Client) returns
//! (timeouts, overflow, lost connections...) unchanged, plus two errors of its own, both
//! local to the call:
//!
//! | case | error | text |
//! |---|---|---|
//! | arguments do not encode, or the name is empty or over 255 bytes | [`Error::Encode`](crate::Error::Encode) | `cannot encode arguments of "x": <why>` |
//! | the result does not decode as the type asked for | [`Error::Decode`](crate::Error::Decode) | `cannot decode the result as <type>: <why>` |
//!
//! # Limits
//!
//! The server refuses arguments above [`Dispatcher::set_max_args_len`] (16 MiB by default)
//! before decoding them, and every decode caps what a length prefix may claim (see
//! [`codec::decode_value`]), so a 10-byte request cannot make the server allocate gigabytes.
//! Results are bounded by the frame limits of the server and the client.
//!
//! # Costs
//!
//! A call encodes into a reused per-thread buffer and decodes the result straight from the
//! response buffer, which goes back to the client's pool; the server looks the name up
//! without allocating and encodes the result straight into the response. So a typed call of
//! small values allocates only what the result type itself holds (a `String` result
//! allocates its string; an `i64` result nothing).
//!
//! # What bincode cannot carry
//!
//! (This section is about the default format.)
//!
//! bincode is not self-describing: both sides must agree on the types exactly (a mismatch is
//! usually caught as a decode error, but not always: an `i32` and a `u32` encode alike).
//! Adding a field to a struct changes its encoding, so version by function name
//! (`"Kv.get2"`) when a type changes. Serde features that need a self-describing format
//! (`#[serde(untagged)]`, internally tagged enums, `#[serde(flatten)]`,
//! `skip_serializing_if`) do not work.

pub mod codec;
mod dispatcher;
mod format;
mod func_client;

pub use dispatcher::{Dispatcher, Service, DEFAULT_MAX_ARGS_LEN};
pub use format::{Bincode, Format};
pub use func_client::{FuncBatch, FuncBatchCall, FuncBatchResults, FuncClient, FuncPending};
