//! [`FuncClient`]: typed calls of named functions over a [`Client`].

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec;
use super::{Bincode, Format};
use crate::{Batch, Client, Error, PendingCall, Response, Result};

/// The per-thread request buffer is given back to the allocator when a call leaves it larger
/// than this, so that one large call does not pin memory for the thread's lifetime.
const KEEP_BUFFER: usize = 64 << 10;

thread_local! {
    static REQUEST: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Encodes `name(args)` into this thread's request buffer and hands it to `f`.
#[inline]
fn with_request<F, A, T>(name: &str, args: &A, f: impl FnOnce(&[u8]) -> Result<T>) -> Result<T>
where
    F: Format,
    A: Serialize + ?Sized,
{
    let encode = |buf: &mut Vec<u8>| {
        buf.clear();
        codec::push_name(buf, name).map_err(|e| encode_error(name, e))?;
        F::encode(buf, args).map_err(|e| encode_error(name, e))
    };
    let mut f = Some(f);
    let reused = REQUEST.try_with(|cell| {
        // Busy only if `args`' own Serialize makes a call on this thread.
        let mut buf = cell.try_borrow_mut().ok()?;
        let f = f.take()?;
        let out = encode(&mut buf).and_then(|()| f(&buf));
        if buf.capacity() > KEEP_BUFFER {
            *buf = Vec::new();
        }
        Some(out)
    });
    if let Ok(Some(out)) = reused {
        return out;
    }
    // No thread-local buffer (busy, or the thread is exiting): a buffer of our own.
    let f = f
        .take()
        .expect("the callback runs only with the thread-local buffer");
    let mut buf = Vec::new();
    encode(&mut buf)?;
    f(&buf)
}

fn encode_error(name: &str, e: impl fmt::Display) -> Error {
    let text = format!("cannot encode arguments of {name:?}: {e}");
    Error::Encode(text)
}

/// Decodes a result, or says why it cannot be.
#[inline]
fn decode<F: Format, R: DeserializeOwned>(resp: &Response) -> Result<R> {
    F::decode(resp).map_err(|e| {
        let text = format!(
            "cannot decode the result as {}: {e}",
            std::any::type_name::<R>()
        );
        Error::Decode(text)
    })
}

/// Typed calls of the functions of a [`Dispatcher`](super::Dispatcher): arguments and results
/// are serde types, encoded by the [`Format`] `F`: [`Bincode`] unless the client was made by
/// [`with_format`](Self::with_format), which must name the dispatcher's format.
///
/// The client needs no list of the server's functions: each call names its function and says
/// (by inference or turbofish) which type it expects back. A cheap-to-clone handle, usable
/// from any number of threads, like the [`Client`] it wraps.
///
/// Errors: everything [`Client`] returns, unchanged (the server's refusals and the
/// functions' own errors arrive as [`Error::Server`]); plus [`Error::Encode`] when the
/// arguments cannot be encoded (or the
/// name is empty or longer than 255 bytes), and of kind
/// [`Error::Decode`] when the result does not decode as the type
/// asked for. Both are local to the call. See the [module docs](super#errors).
///
/// ```
/// use batchrpc::{Client, Dispatcher, Error, FuncClient, Server};
///
/// # fn main() -> Result<(), Error> {
/// let mut d = Dispatcher::new();
/// d.add_func("add", |(a, b): (i64, i64)| -> Result<i64, String> { Ok(a + b) });
/// let server = Server::builder().handler(d.into_handler()).bind("127.0.0.1:0")?;
///
/// let fc = FuncClient::new(Client::builder(server.local_addr()).connect()?);
/// let sum: i64 = fc.call("add", &(2i64, 3i64))?;
/// assert_eq!(sum, 5);
/// let err = fc.call::<_, i64>("nope", &()).unwrap_err();
/// assert!(matches!(err, Error::Server(msg) if msg == r#"unknown function "nope""#));
/// # Ok(()) }
/// ```
pub struct FuncClient<F = Bincode> {
    client: Client,
    _format: PhantomData<fn() -> F>,
}

impl<F> Clone for FuncClient<F> {
    fn clone(&self) -> Self {
        FuncClient {
            client: self.client.clone(),
            _format: PhantomData,
        }
    }
}

impl<F> fmt::Debug for FuncClient<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FuncClient")
            .field("client", &self.client)
            .finish()
    }
}

impl From<Client> for FuncClient {
    fn from(client: Client) -> Self {
        FuncClient::new(client)
    }
}

impl FuncClient {
    /// Typed calls over `client`, encoded with [`Bincode`]. The raw API stays usable through
    /// [`client`](Self::client).
    pub fn new(client: Client) -> FuncClient {
        FuncClient::with_format(client)
    }
}

impl<F: Format> FuncClient<F> {
    /// Typed calls over `client`, encoded with the [`Format`] `F` (the server's
    /// [`Dispatcher`](super::Dispatcher) must use the same one).
    ///
    /// ```
    /// # fn main() -> Result<(), batchrpc::Error> {
    /// # let server = batchrpc::Server::builder()
    /// #     .handler(batchrpc::Dispatcher::new().into_handler())
    /// #     .bind("127.0.0.1:0")?;
    /// use batchrpc::typed::Bincode;
    /// let client = batchrpc::Client::builder(server.local_addr()).connect()?;
    /// let fc = batchrpc::FuncClient::<Bincode>::with_format(client);
    /// # Ok(()) }
    /// ```
    pub fn with_format(client: Client) -> FuncClient<F> {
        FuncClient {
            client,
            _format: PhantomData,
        }
    }

    /// The underlying client (stats, raw calls, `close`).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Calls `name(args)` and waits for its result, at most the client's request timeout.
    ///
    /// `args` is one value: a tuple for several arguments, `&()` for none. `R` is the result
    /// type, usually inferred.
    ///
    /// ```
    /// # use batchrpc::{Client, Dispatcher, FuncClient, Server};
    /// # fn main() -> Result<(), batchrpc::Error> {
    /// # let mut d = Dispatcher::new();
    /// # d.add_func("concat", |(a, b): (String, String)| Ok::<_, String>(a + &b));
    /// # let server = Server::builder().handler(d.into_handler()).bind("127.0.0.1:0")?;
    /// # let fc = FuncClient::new(Client::builder(server.local_addr()).connect()?);
    /// let s: String = fc.call("concat", &("foo", "bar"))?;
    /// assert_eq!(s, "foobar");
    /// # Ok(()) }
    /// ```
    pub fn call<A, R>(&self, name: &str, args: &A) -> Result<R>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let pending = with_request::<F, _, _>(name, args, |req| self.client.call_async(req))?;
        decode::<F, R>(&pending.wait()?)
    }

    /// [`call`](Self::call) with its own deadline; past it, [`Error::Timeout`].
    pub fn call_timeout<A, R>(&self, name: &str, args: &A, timeout: Duration) -> Result<R>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let pending = with_request::<F, _, _>(name, args, |req| {
            self.client.call_async_timeout(req, timeout)
        })?;
        decode::<F, R>(&pending.wait()?)
    }

    /// Starts `name(args)`; take the result from the returned handle. Dropping the handle
    /// cancels the call.
    ///
    /// ```
    /// # use batchrpc::{Client, Dispatcher, FuncClient, Server};
    /// # fn main() -> Result<(), batchrpc::Error> {
    /// # let mut d = Dispatcher::new();
    /// # d.add_func("square", |x: u64| Ok::<_, String>(x * x));
    /// # let server = Server::builder().handler(d.into_handler()).bind("127.0.0.1:0")?;
    /// # let fc = FuncClient::new(Client::builder(server.local_addr()).connect()?);
    /// let calls: Vec<_> = (0..10u64)
    ///     .map(|x| fc.call_async::<_, u64>("square", &x))
    ///     .collect::<Result<_, _>>()?;
    /// let squares: Vec<u64> = calls.into_iter().map(|c| c.wait()).collect::<Result<_, _>>()?;
    /// assert_eq!(squares[9], 81);
    /// # Ok(()) }
    /// ```
    pub fn call_async<A, R>(&self, name: &str, args: &A) -> Result<FuncPending<R, F>>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let inner = with_request::<F, _, _>(name, args, |req| self.client.call_async(req))?;
        Ok(FuncPending::new(inner))
    }

    /// [`call_async`](Self::call_async) with its own deadline.
    pub fn call_async_timeout<A, R>(
        &self,
        name: &str,
        args: &A,
        timeout: Duration,
    ) -> Result<FuncPending<R, F>>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let inner = with_request::<F, _, _>(name, args, |req| {
            self.client.call_async_timeout(req, timeout)
        })?;
        Ok(FuncPending::new(inner))
    }

    /// Calls `name(args)` without waiting for, or getting, a result (fire and forget). The
    /// function's errors are not reported.
    ///
    /// ```
    /// # use batchrpc::{Client, Dispatcher, FuncClient, Server};
    /// # fn main() -> Result<(), batchrpc::Error> {
    /// # let mut d = Dispatcher::new();
    /// # d.add_func("log", |line: String| Ok::<_, String>(()));
    /// # let server = Server::builder().handler(d.into_handler()).bind("127.0.0.1:0")?;
    /// # let fc = FuncClient::new(Client::builder(server.local_addr()).connect()?);
    /// fc.send("log", "started")?;
    /// # Ok(()) }
    /// ```
    pub fn send<A>(&self, name: &str, args: &A) -> Result<()>
    where
        A: Serialize + ?Sized,
    {
        with_request::<F, _, _>(name, args, |req| self.client.send(req))
    }

    /// A batch of typed calls, submitted together and waited for together.
    ///
    /// ```
    /// # use batchrpc::{Client, Dispatcher, FuncClient, Server};
    /// # fn main() -> Result<(), batchrpc::Error> {
    /// # let mut d = Dispatcher::new();
    /// # d.add_func("add", |(a, b): (i64, i64)| Ok::<_, String>(a + b));
    /// # d.add_func("upper", |s: String| Ok::<_, String>(s.to_uppercase()));
    /// # let server = Server::builder().handler(d.into_handler()).bind("127.0.0.1:0")?;
    /// # let fc = FuncClient::new(Client::builder(server.local_addr()).connect()?);
    /// let mut batch = fc.batch();
    /// let sum = batch.add::<_, i64>("add", &(1i64, 2i64))?;
    /// let loud = batch.add::<_, String>("upper", "hi")?;
    /// let results = batch.call();
    /// assert_eq!(results.get(sum)?, 3);
    /// assert_eq!(results.get(loud)?, "HI");
    /// # Ok(()) }
    /// ```
    pub fn batch(&self) -> FuncBatch<F> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        FuncBatch {
            batch: self.client.batch(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            _format: PhantomData,
        }
    }
}

/// A typed call in flight: [`wait`](Self::wait) for its result, poll it with
/// [`try_wait`](Self::try_wait), or drop it to cancel.
pub struct FuncPending<R, F = Bincode> {
    inner: PendingCall,
    _result: PhantomData<fn() -> (R, F)>,
}

impl<R, F> fmt::Debug for FuncPending<R, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FuncPending")
            .field("result", &std::any::type_name::<R>())
            .field("done", &self.inner.is_done())
            .finish()
    }
}

impl<R: DeserializeOwned, F: Format> FuncPending<R, F> {
    fn new(inner: PendingCall) -> Self {
        FuncPending {
            inner,
            _result: PhantomData,
        }
    }

    /// True once the call has completed (`wait` will not block).
    pub fn is_done(&self) -> bool {
        self.inner.is_done()
    }

    /// Blocks until the call completes; its decoded result.
    pub fn wait(self) -> Result<R> {
        decode::<F, R>(&self.inner.wait()?)
    }

    /// The result if the call has completed, without blocking. Returns `Some` once; after
    /// that the call is spent, as with [`PendingCall::try_wait`].
    pub fn try_wait(&mut self) -> Option<Result<R>> {
        self.inner
            .try_wait()
            .map(|outcome| outcome.and_then(|resp| decode::<F, R>(&resp)))
    }
}

/// Typed calls submitted together: see [`FuncClient::batch`].
///
/// [`add`](Self::add) returns a [`FuncBatchCall`] naming the result type; after
/// [`call`](Self::call), it picks its result out of the [`FuncBatchResults`].
pub struct FuncBatch<F = Bincode> {
    batch: Batch,
    id: u64,
    _format: PhantomData<fn() -> F>,
}

impl<F> fmt::Debug for FuncBatch<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FuncBatch")
            .field("calls", &self.batch.len())
            .finish()
    }
}

impl<F: Format> FuncBatch<F> {
    /// The deadline of every call in the batch (default: the client's request timeout).
    pub fn timeout(self, timeout: Duration) -> Self {
        FuncBatch {
            batch: self.batch.timeout(timeout),
            id: self.id,
            _format: PhantomData,
        }
    }

    /// Adds the call `name(args)`, whose result will be decoded as `R`. Fails at once, for
    /// this call only, if the arguments cannot be encoded, or with what
    /// [`Batch::add`] fails with ([`Error::TooLarge`], [`Error::Overflow`], [`Error::Closed`]).
    pub fn add<A, R>(&mut self, name: &str, args: &A) -> Result<FuncBatchCall<R>>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let index = self.batch.len();
        with_request::<F, _, _>(name, args, |req| self.batch.add(req))?;
        Ok(FuncBatchCall {
            batch: self.id,
            index,
            _result: PhantomData,
        })
    }

    /// Calls added so far.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    /// True when no call was added.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// Submits every call and waits for all of them.
    pub fn call(self) -> FuncBatchResults<F> {
        FuncBatchResults {
            batch: self.id,
            results: self.batch.call(),
            _format: PhantomData,
        }
    }
}

/// One call of a [`FuncBatch`], and the type of its result: give it to
/// [`FuncBatchResults::get`].
pub struct FuncBatchCall<R> {
    batch: u64,
    index: usize,
    _result: PhantomData<fn() -> R>,
}

impl<R> Clone for FuncBatchCall<R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for FuncBatchCall<R> {}

impl<R> fmt::Debug for FuncBatchCall<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FuncBatchCall")
            .field("index", &self.index)
            .field("result", &std::any::type_name::<R>())
            .finish()
    }
}

impl<R> FuncBatchCall<R> {
    /// The call's position in its batch (0 for the first `add` that succeeded).
    pub fn index(&self) -> usize {
        self.index
    }
}

/// The outcomes of a [`FuncBatch`], each decoded on demand by [`get`](Self::get).
pub struct FuncBatchResults<F = Bincode> {
    batch: u64,
    results: Vec<Result<Response>>,
    _format: PhantomData<fn() -> F>,
}

impl<F> fmt::Debug for FuncBatchResults<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FuncBatchResults")
            .field("calls", &self.results.len())
            .finish()
    }
}

impl<F: Format> FuncBatchResults<F> {
    /// The result of `call`, decoded as its type. May be asked for more than once.
    ///
    /// # Panics
    ///
    /// If `call` was added to another batch.
    pub fn get<R: DeserializeOwned>(&self, call: FuncBatchCall<R>) -> Result<R> {
        assert_eq!(
            call.batch, self.batch,
            "a FuncBatchCall was used with the results of another batch"
        );
        match &self.results[call.index] {
            Ok(resp) => decode::<F, R>(resp),
            Err(e) => Err(e.clone()),
        }
    }

    /// How many calls the batch held.
    pub fn len(&self) -> usize {
        self.results.len()
    }

    /// True for the results of an empty batch.
    pub fn is_empty(&self) -> bool {
        self.results.is_empty()
    }
}
