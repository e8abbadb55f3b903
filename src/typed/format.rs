//! [`Format`]: how the typed layer turns serde values into bytes and back.
//!
//! [`Dispatcher`](super::Dispatcher) and [`FuncClient`](super::FuncClient) never name an
//! encoding: they call [`Format::encode`] for the arguments and results they send and
//! [`Format::decode`] for those they receive. [`Bincode`] (bincode 2, standard configuration)
//! is the default; another serde format plugs in as a type implementing [`Format`], given to
//! [`Dispatcher::with_format`](super::Dispatcher::with_format) and
//! [`FuncClient::with_format`](super::FuncClient::with_format). Both sides of a connection
//! must use the same format: nothing on the wire says which one a request uses.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::{self, CodecError};

/// An encoding of serde values: arguments and results of typed calls.
///
/// A format is a type, usually a unit struct, with two functions. `encode` appends to a
/// buffer that the layer reuses from call to call (so a format that writes straight into it
/// keeps typed calls of small values allocation-free), and `decode` reads a value that must
/// fill all of its input (left-over bytes mean the two sides disagree on the type). A server
/// decodes what any peer sends, so `decode` must bound what a length prefix may make it
/// allocate (see [`codec::decode_value`] for how [`Bincode`] does it).
///
/// The texts of [`Error`](Self::Error) reach the caller inside
/// [`Error::Server`](crate::Error::Server), [`Error::Encode`](crate::Error::Encode) or
/// [`Error::Decode`](crate::Error::Decode): they should say what is wrong in a few words.
///
/// A format on postcard (not a dependency of this crate) would read:
///
/// ```ignore
/// struct Postcard;
///
/// impl batchrpc::typed::Format for Postcard {
///     type Error = postcard::Error;
///
///     fn encode<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), Self::Error> {
///         postcard::to_io(value, out).map(|_| ())
///     }
///
///     fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Self::Error> {
///         match postcard::take_from_bytes(bytes)? {
///             (value, []) => Ok(value),
///             _ => Err(postcard::Error::DeserializeUnexpectedEnd),
///         }
///     }
/// }
///
/// let dispatcher = batchrpc::Dispatcher::<Postcard>::with_format();
/// let fc = batchrpc::FuncClient::<Postcard>::with_format(client);
/// ```
///
/// A runnable example, bincode 2 with its fixed-width integers instead of varints:
///
/// ```
/// use batchrpc::typed::Format;
/// use batchrpc::{Client, Dispatcher, FuncClient, Server};
///
/// struct FixedInt;
///
/// impl Format for FixedInt {
///     type Error = String;
///
///     fn encode<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), String> {
///         let config = bincode::config::standard().with_fixed_int_encoding();
///         let bytes = bincode::serde::encode_to_vec(value, config).map_err(|e| e.to_string())?;
///         out.extend_from_slice(&bytes);
///         Ok(())
///     }
///
///     fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
///         let config = bincode::config::standard()
///             .with_fixed_int_encoding()
///             .with_limit::<65536>();
///         match bincode::serde::decode_from_slice(bytes, config).map_err(|e| e.to_string())? {
///             (value, n) if n == bytes.len() => Ok(value),
///             _ => Err("left-over bytes".into()),
///         }
///     }
/// }
///
/// # fn main() -> Result<(), batchrpc::Error> {
/// let mut d = Dispatcher::<FixedInt>::with_format();
/// d.add_func("add", |(a, b): (u32, u32)| Ok::<_, String>(a + b));
/// let server = Server::builder().handler(d.into_handler()).bind("127.0.0.1:0")?;
/// let fc = FuncClient::<FixedInt>::with_format(Client::builder(server.local_addr()).connect()?);
/// assert_eq!(fc.call::<_, u32>("add", &(2u32, 3u32))?, 5);
///
/// let mut args = Vec::new();
/// FixedInt::encode(&mut args, &(2u32, 3u32)).unwrap();
/// assert_eq!(args.len(), 8); // 4 bytes each; Bincode's varints take 1 byte each
/// # Ok(()) }
/// ```
pub trait Format: 'static {
    /// Why a value did not encode or decode.
    type Error: fmt::Display;

    /// Appends `value`, encoded, to `out`. On error, `out` may hold part of the value after
    /// its original contents (the layer discards it).
    fn encode<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), Self::Error>;

    /// Decodes a `T` that fills all of `bytes`, bounding what the input may make it allocate.
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Self::Error>;
}

/// The default [`Format`]: bincode 2 with [`bincode::config::standard`] (little-endian,
/// variable-length integers), decoding with bounded claims. See [`codec`] for the details;
/// it is [`codec::encode_value`] and [`codec::decode_value`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bincode;

impl Format for Bincode {
    type Error = CodecError;

    #[inline]
    fn encode<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), CodecError> {
        codec::encode_value(out, value)
    }

    #[inline]
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        codec::decode_value(bytes)
    }
}
