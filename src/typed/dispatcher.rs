//! [`Dispatcher`]: named, typed functions behind one server handler.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::{self, MAX_NAME_LEN};
use super::{Bincode, Format};
use crate::{HandlerError, RequestCtx};

/// A registered function, type-erased: decodes the arguments, runs, encodes the result.
type Func =
    dyn Fn(&RequestCtx, &str, &[u8], &mut Vec<u8>) -> Result<(), HandlerError> + Send + Sync;

struct Entry {
    name: Box<str>,
    func: Box<Func>,
}

/// The default of [`Dispatcher::set_max_args_len`]: 16 MiB.
pub const DEFAULT_MAX_ARGS_LEN: usize = 16 << 20;

/// Named functions with typed (serde) arguments and results, served through one handler.
///
/// Register functions with [`add_func`](Self::add_func) (or [`add_func_ctx`](Self::add_func_ctx)
/// for functions that want the [`RequestCtx`]), group them with
/// [`add_service`](Self::add_service), then pass [`into_handler`](Self::into_handler) to
/// [`ServerBuilder::handler`](crate::ServerBuilder::handler). Callers use a
/// [`FuncClient`](super::FuncClient), which needs no copy of these registrations: it sends the
/// name and the encoded arguments, and decodes whatever type it asks for.
///
/// What reaches the caller as [`Error::Server`](crate::Error::Server) is listed in the
/// [module docs](super#errors): unknown names, undecodable or oversized arguments, the
/// function's own errors and panics each have a text of their own.
///
/// ```
/// use batchrpc::{Client, Dispatcher, FuncClient, Server};
///
/// # fn main() -> Result<(), batchrpc::Error> {
/// let mut d = Dispatcher::new();
/// d.add_func("add", |(a, b): (i64, i64)| -> Result<i64, String> { Ok(a + b) });
/// d.add_func("div", |(a, b): (i64, i64)| {
///     a.checked_div(b).ok_or_else(|| format!("cannot divide {a} by {b}"))
/// });
/// let server = Server::builder().handler(d.into_handler()).bind("127.0.0.1:0")?;
///
/// let fc = FuncClient::new(Client::builder(server.local_addr()).connect()?);
/// let sum: i64 = fc.call("add", &(2i64, 3i64))?;
/// assert_eq!(sum, 5);
/// let err = fc.call::<_, i64>("div", &(1i64, 0i64)).unwrap_err();
/// assert!(matches!(err, batchrpc::Error::Server(msg) if msg == "cannot divide 1 by 0"));
/// # Ok(()) }
/// ```
///
/// Arguments and results are encoded by the [`Format`] `F`, [`Bincode`] unless the dispatcher
/// was made by [`with_format`](Self::with_format).
pub struct Dispatcher<F = Bincode> {
    funcs: HashMap<Box<[u8]>, Entry, BuildHasherDefault<NameHasher>>,
    max_args_len: usize,
    _format: PhantomData<fn() -> F>,
}

impl Default for Dispatcher {
    fn default() -> Self {
        Dispatcher::new()
    }
}

impl<F: Format> fmt::Debug for Dispatcher<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.names().collect();
        names.sort_unstable();
        f.debug_struct("Dispatcher")
            .field("funcs", &names)
            .field("max_args_len", &self.max_args_len)
            .finish()
    }
}

impl Dispatcher {
    /// An empty dispatcher encoding with [`Bincode`]; arguments are capped at
    /// [`DEFAULT_MAX_ARGS_LEN`] (16 MiB).
    pub fn new() -> Dispatcher {
        Dispatcher::with_format()
    }
}

impl<F: Format> Dispatcher<F> {
    /// An empty dispatcher encoding with the [`Format`] `F`, for clients made by
    /// [`FuncClient::with_format`](super::FuncClient::with_format) with the same `F`;
    /// arguments are capped at [`DEFAULT_MAX_ARGS_LEN`] (16 MiB).
    ///
    /// ```
    /// use batchrpc::typed::Bincode;
    /// let d = batchrpc::Dispatcher::<Bincode>::with_format();
    /// assert!(d.is_empty());
    /// ```
    pub fn with_format() -> Dispatcher<F> {
        Dispatcher {
            funcs: HashMap::default(),
            max_args_len: DEFAULT_MAX_ARGS_LEN,
            _format: PhantomData,
        }
    }

    /// Registers `f` under `name`.
    ///
    /// `f` takes one argument value (use a tuple for several, `()` for none) and returns the
    /// result or an error whose text ([`Display`](fmt::Display)) the caller receives as
    /// [`Error::Server`](crate::Error::Server).
    ///
    /// # Panics
    ///
    /// If `name` is empty, longer than [`MAX_NAME_LEN`] (255) bytes, or already registered.
    ///
    /// ```
    /// let mut d = batchrpc::Dispatcher::new();
    /// d.add_func("ping", |(): ()| Ok::<_, std::convert::Infallible>("pong"))
    ///     .add_func("len", |s: String| Ok::<_, String>(s.len() as u64));
    /// assert!(d.contains("ping") && d.contains("len"));
    /// ```
    pub fn add_func<Req, Resp, E, Fun>(&mut self, name: &str, f: Fun) -> &mut Self
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        E: fmt::Display,
        Fun: Fn(Req) -> Result<Resp, E> + Send + Sync + 'static,
    {
        self.insert(
            name,
            Box::new(move |_ctx, name, args, resp| run::<F, _, _, _>(name, args, resp, &f)),
        )
    }

    /// Registers `f` under `name`, like [`add_func`](Self::add_func), for a function that also
    /// wants to know who called: the [`RequestCtx`] (peer address, connection id).
    ///
    /// # Panics
    ///
    /// As [`add_func`](Self::add_func).
    ///
    /// ```
    /// use batchrpc::RequestCtx;
    /// let mut d = batchrpc::Dispatcher::new();
    /// d.add_func_ctx("whoami", |ctx: &RequestCtx, (): ()| {
    ///     Ok::<_, String>(ctx.peer_addr().to_string())
    /// });
    /// ```
    pub fn add_func_ctx<Req, Resp, E, Fun>(&mut self, name: &str, f: Fun) -> &mut Self
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        E: fmt::Display,
        Fun: Fn(&RequestCtx, Req) -> Result<Resp, E> + Send + Sync + 'static,
    {
        self.insert(
            name,
            Box::new(move |ctx, name, args, resp| {
                run::<F, _, _, _>(name, args, resp, |req| f(ctx, req))
            }),
        )
    }

    /// Starts a service: functions registered through the returned [`Service`] are named
    /// `"<service>.<method>"` and may share `state`.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    ///
    /// struct Counter(AtomicU64);
    /// impl Counter {
    ///     fn add(&self, n: u64) -> Result<u64, String> {
    ///         Ok(self.0.fetch_add(n, Ordering::Relaxed) + n)
    ///     }
    ///     fn get(&self, (): ()) -> Result<u64, String> {
    ///         Ok(self.0.load(Ordering::Relaxed))
    ///     }
    /// }
    ///
    /// let mut d = batchrpc::Dispatcher::new();
    /// d.add_service("Counter", Arc::new(Counter(AtomicU64::new(0))))
    ///     .method("add", Counter::add)
    ///     .method("get", Counter::get)
    ///     .func("version", |(): ()| Ok::<_, String>(1u32));
    /// let mut names: Vec<&str> = d.names().collect();
    /// names.sort();
    /// assert_eq!(names, ["Counter.add", "Counter.get", "Counter.version"]);
    /// ```
    pub fn add_service<S>(&mut self, service: &str, state: Arc<S>) -> Service<'_, S, F>
    where
        S: Send + Sync + 'static,
    {
        Service {
            dispatcher: self,
            prefix: format!("{service}."),
            state,
        }
    }

    /// Caps the encoded arguments of one call (default [`DEFAULT_MAX_ARGS_LEN`], 16 MiB).
    /// Larger arguments are refused before any decoding, with the text
    /// `cannot decode arguments of "<name>": <n> bytes exceed the limit of <max> bytes`.
    ///
    /// ```
    /// let mut d = batchrpc::Dispatcher::new();
    /// d.set_max_args_len(64 << 10);
    /// assert_eq!(d.max_args_len(), 64 << 10);
    /// ```
    pub fn set_max_args_len(&mut self, len: usize) -> &mut Self {
        self.max_args_len = len;
        self
    }

    /// The cap on the encoded arguments of one call.
    pub fn max_args_len(&self) -> usize {
        self.max_args_len
    }

    /// True if a function is registered under `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.funcs.contains_key(name.as_bytes())
    }

    /// The registered names, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.funcs.values().map(|e| &*e.name)
    }

    /// How many functions are registered.
    pub fn len(&self) -> usize {
        self.funcs.len()
    }

    /// True if no function is registered.
    pub fn is_empty(&self) -> bool {
        self.funcs.is_empty()
    }

    /// Serves one whole request ([layout](super::codec)): what the handler from
    /// [`into_handler`](Self::into_handler) does. Use it to share one dispatcher between
    /// servers (`Arc<Dispatcher>`), or inside a handler of your own that does more.
    ///
    /// The result is appended to `resp`; on `Err`, `resp` holds nothing meaningful.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use batchrpc::{Dispatcher, RequestCtx, Server};
    ///
    /// # fn main() -> Result<(), batchrpc::Error> {
    /// let mut d = Dispatcher::new();
    /// d.add_func("neg", |x: i32| Ok::<_, String>(-x));
    /// let d = Arc::new(d);
    /// let servers = ["127.0.0.1:0", "127.0.0.1:0"].map(|addr| {
    ///     let d = d.clone();
    ///     Server::builder()
    ///         .handler(move |ctx: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
    ///             d.handle(ctx, req, resp)
    ///         })
    ///         .bind(addr)
    /// });
    /// # for s in servers { s?; }
    /// # Ok(()) }
    /// ```
    pub fn handle(
        &self,
        ctx: &RequestCtx,
        req: &[u8],
        resp: &mut Vec<u8>,
    ) -> Result<(), HandlerError> {
        match codec::split_request(req) {
            Ok((name, args)) => self.dispatch(ctx, name, args, resp),
            Err(e) => Err(format!("malformed request: {e}").into()),
        }
    }

    /// Runs the function `name` on the encoded `args`, appending the encoded result to
    /// `resp`: [`handle`](Self::handle) without the request layout, for transports that carry
    /// the name apart (such as fastrpc's name + value requests).
    pub fn dispatch(
        &self,
        ctx: &RequestCtx,
        name: &[u8],
        args: &[u8],
        resp: &mut Vec<u8>,
    ) -> Result<(), HandlerError> {
        let Some(entry) = self.funcs.get(name) else {
            return Err(format!("unknown function {:?}", String::from_utf8_lossy(name)).into());
        };
        if args.len() > self.max_args_len {
            return Err(format!(
                "cannot decode arguments of {:?}: {} bytes exceed the limit of {} bytes",
                entry.name,
                args.len(),
                self.max_args_len
            )
            .into());
        }
        (entry.func)(ctx, &entry.name, args, resp)
    }

    /// The server handler: pass it to [`ServerBuilder::handler`](crate::ServerBuilder::handler).
    ///
    /// ```
    /// # fn main() -> Result<(), batchrpc::Error> {
    /// let mut d = batchrpc::Dispatcher::new();
    /// d.add_func("echo", |s: String| Ok::<_, String>(s));
    /// let server = batchrpc::Server::builder()
    ///     .handler(d.into_handler())
    ///     .bind("127.0.0.1:0")?;
    /// # Ok(()) }
    /// ```
    pub fn into_handler(
        self,
    ) -> impl Fn(&RequestCtx, &[u8], &mut Vec<u8>) -> Result<(), HandlerError> + Send + Sync + 'static
    {
        move |ctx: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| self.handle(ctx, req, resp)
    }

    fn insert(&mut self, name: &str, func: Box<Func>) -> &mut Self {
        assert!(
            !name.is_empty() && name.len() <= MAX_NAME_LEN,
            "function name {name:?} must be 1 to {MAX_NAME_LEN} bytes long"
        );
        let key: Box<[u8]> = name.as_bytes().into();
        assert!(
            !self.funcs.contains_key(&key),
            "function {name:?} is already registered"
        );
        self.funcs.insert(
            key,
            Entry {
                name: name.into(),
                func,
            },
        );
        self
    }
}

/// A fast hash of function names (FxHash's mixing, eight bytes at a time).
///
/// Not keyed, and needs not be: the table is built from the registered names only and never
/// grows after that, so however a caller picks the names it looks up, it cannot lengthen the
/// probe sequences (the flooding that keyed hashes defend against needs inserts).
#[derive(Default)]
struct NameHasher(u64);

impl NameHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for NameHasher {
    #[inline]
    fn write(&mut self, mut bytes: &[u8]) {
        while let Some((word, rest)) = bytes.split_first_chunk::<8>() {
            self.mix(u64::from_le_bytes(*word));
            bytes = rest;
        }
        if !bytes.is_empty() {
            let mut last = [0u8; 8];
            last[..bytes.len()].copy_from_slice(bytes);
            self.mix(u64::from_le_bytes(last));
        }
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Decodes, calls, encodes: the body of every registered function.
#[inline]
fn run<F, Req, Resp, E>(
    name: &str,
    args: &[u8],
    resp: &mut Vec<u8>,
    f: impl FnOnce(Req) -> Result<Resp, E>,
) -> Result<(), HandlerError>
where
    F: Format,
    Req: DeserializeOwned,
    Resp: Serialize,
    E: fmt::Display,
{
    let req: Req =
        F::decode(args).map_err(|e| format!("cannot decode arguments of {name:?}: {e}"))?;
    match f(req) {
        Ok(value) => F::encode(resp, &value).map_err(|e| {
            resp.clear();
            format!("cannot encode the result of {name:?}: {e}").into()
        }),
        Err(e) => Err(e.to_string().into()),
    }
}

/// Registers the methods of one service: see [`Dispatcher::add_service`].
///
/// Each method is registered as `"<service>.<name>"`, and receives the service's shared state
/// first. Registration happens at each call; the `Service` itself may be dropped at any time.
///
/// # Panics
///
/// Every method panics like [`Dispatcher::add_func`] if the full name is empty, longer than
/// 255 bytes, or already registered.
pub struct Service<'d, S, F = Bincode> {
    dispatcher: &'d mut Dispatcher<F>,
    prefix: String,
    state: Arc<S>,
}

impl<S, F> fmt::Debug for Service<'_, S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl<S: Send + Sync + 'static, F: Format> Service<'_, S, F> {
    /// Registers `"<service>.<name>"`, calling `f` with the service's state and the arguments.
    ///
    /// ```
    /// use std::sync::Arc;
    /// struct Greeter { greeting: String }
    /// let mut d = batchrpc::Dispatcher::new();
    /// d.add_service("Greeter", Arc::new(Greeter { greeting: "hello".into() }))
    ///     .method("greet", |g: &Greeter, who: String| {
    ///         Ok::<_, String>(format!("{}, {who}", g.greeting))
    ///     });
    /// assert!(d.contains("Greeter.greet"));
    /// ```
    pub fn method<Req, Resp, E, Fun>(self, name: &str, f: Fun) -> Self
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        E: fmt::Display,
        Fun: Fn(&S, Req) -> Result<Resp, E> + Send + Sync + 'static,
    {
        let state = self.state.clone();
        self.dispatcher
            .add_func(&self.full(name), move |req| f(&state, req));
        self
    }

    /// [`method`](Self::method) for a function that also receives the [`RequestCtx`].
    ///
    /// ```
    /// use std::sync::Arc;
    /// use batchrpc::RequestCtx;
    /// struct Sessions;
    /// let mut d = batchrpc::Dispatcher::new();
    /// d.add_service("Sessions", Arc::new(Sessions))
    ///     .method_ctx("conn", |_: &Sessions, ctx: &RequestCtx, (): ()| {
    ///         Ok::<_, String>(ctx.conn_id())
    ///     });
    /// ```
    pub fn method_ctx<Req, Resp, E, Fun>(self, name: &str, f: Fun) -> Self
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        E: fmt::Display,
        Fun: Fn(&S, &RequestCtx, Req) -> Result<Resp, E> + Send + Sync + 'static,
    {
        let state = self.state.clone();
        self.dispatcher
            .add_func_ctx(&self.full(name), move |ctx: &RequestCtx, req| {
                f(&state, ctx, req)
            });
        self
    }

    /// Registers `"<service>.<name>"` for a function that does not use the state.
    ///
    /// ```
    /// use std::sync::Arc;
    /// let mut d = batchrpc::Dispatcher::new();
    /// d.add_service("Math", Arc::new(()))
    ///     .func("square", |x: f64| Ok::<_, String>(x * x));
    /// assert!(d.contains("Math.square"));
    /// ```
    pub fn func<Req, Resp, E, Fun>(self, name: &str, f: Fun) -> Self
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        E: fmt::Display,
        Fun: Fn(Req) -> Result<Resp, E> + Send + Sync + 'static,
    {
        self.dispatcher.add_func(&self.full(name), f);
        self
    }

    fn full(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}
