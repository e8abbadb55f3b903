//! batchrpc: batched RPC over a few connections, without an async runtime.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod error;
mod reactor;
mod server;
pub mod stats;
pub mod transport;
pub mod wire;

pub use client::{Batch, Client, ClientBuilder, PendingCall, Response};
pub use error::{Error, Result};
pub use reactor::Reactor;
pub use server::{ConnInfo, HandlerError, RequestCtx, Server, ServerBuilder};
pub use stats::Stats;
pub use transport::{Address, ToAddress};
pub use wire::compress::Compression;
