//! Transports: Unix sockets, a server on TCP and Unix at once, the custom transport seam
//! (dialer and listener), and a reactor driven by hand on one thread.

mod support;

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use batchrpc::transport::{CustomListener, CustomStream};
use batchrpc::{Address, Client, Reactor, RequestCtx, Server};
use mio::event::Source;
use mio::{Interest, Registry, Token};
use support::{echo_builder, run, wait_until, TempPath};

const WAIT: Duration = Duration::from_secs(10);

/// An echo server that records the peer address of every request.
fn recording_server() -> (batchrpc::ServerBuilder, Arc<Mutex<Vec<Address>>>) {
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = peers.clone();
    let builder = Server::builder().workers(2).handler(
        move |ctx: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
            seen.lock().unwrap().push(ctx.peer_addr().clone());
            resp.extend_from_slice(req);
            Ok(())
        },
    );
    (builder, peers)
}

// ----- Unix sockets --------------------------------------------------------------------------

#[test]
fn unix_socket_by_string_and_by_address() {
    run(|| {
        let path = TempPath::new("unix");
        let (builder, peers) = recording_server();
        let server = builder.bind(path.unix_addr()).unwrap();
        assert_eq!(
            server.local_addr(),
            Address::Unix(path.path().to_path_buf())
        );
        assert_eq!(server.local_addr().to_string(), path.unix_addr());

        let by_string = Client::builder(path.unix_addr()).connect().unwrap();
        let by_address = Client::builder(Address::Unix(path.path().to_path_buf()))
            .connect()
            .unwrap();
        let by_path = Client::builder(path.path()).connect().unwrap();
        for (i, c) in [&by_string, &by_address, &by_path].into_iter().enumerate() {
            for j in 0..10 {
                let req = format!("unix-{i}-{j}");
                assert_eq!(&*c.call(req.as_bytes()).unwrap(), req.as_bytes());
            }
        }
        assert_eq!(server.stats().accepts, 3);
        let peers = peers.lock().unwrap();
        assert_eq!(peers.len(), 30);
        assert!(
            peers.iter().all(|p| matches!(p, Address::Unix(_))),
            "{peers:?}"
        );
        drop(peers);

        // The server removes its socket file when it goes.
        drop((by_string, by_address, by_path));
        drop(server);
        assert!(!path.path().exists(), "socket file left behind");
    });
}

#[test]
fn connecting_to_a_missing_unix_socket_is_a_connect_error() {
    run(|| {
        let path = TempPath::new("missing");
        let err = Client::builder(path.unix_addr())
            .connect()
            .expect_err("nothing there");
        match &err {
            batchrpc::Error::Connect { addr, cause } => {
                assert_eq!(addr, &path.unix_addr());
                assert_eq!(cause.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("expected Connect, got {other:?}"),
        }
    });
}

#[test]
fn one_server_on_tcp_and_unix() {
    run(|| {
        let path = TempPath::new("both");
        let (builder, peers) = recording_server();
        let server = builder
            .listen(path.unix_addr())
            .unwrap()
            .bind("127.0.0.1:0")
            .unwrap();
        let addrs = server.local_addrs().to_vec();
        assert_eq!(addrs.len(), 2, "{addrs:?}");
        assert!(matches!(addrs[0], Address::Tcp(_)));
        assert_eq!(addrs[1], Address::Unix(path.path().to_path_buf()));
        assert_eq!(server.local_addr(), addrs[0]);

        let tcp = Client::builder(addrs[0].clone()).connect().unwrap();
        let unix = Client::builder(addrs[1].clone()).connect().unwrap();
        let pending: Vec<_> = (0..200)
            .map(|i| {
                let c = if i % 2 == 0 { &tcp } else { &unix };
                c.call_async(format!("both-{i}").as_bytes()).unwrap()
            })
            .collect();
        for (i, p) in pending.into_iter().enumerate() {
            assert_eq!(&*p.wait().unwrap(), format!("both-{i}").as_bytes());
        }
        assert_eq!((tcp.stats().calls, unix.stats().calls), (100, 100));
        let peers = peers.lock().unwrap();
        let via_tcp = peers
            .iter()
            .filter(|p| matches!(p, Address::Tcp(_)))
            .count();
        let via_unix = peers
            .iter()
            .filter(|p| matches!(p, Address::Unix(_)))
            .count();
        assert_eq!((via_tcp, via_unix), (100, 100));
        let s = server.stats();
        assert_eq!((s.accepts, s.open_connections, s.calls), (2, 2, 200));
    });
}

// ----- the custom transport seam -------------------------------------------------------------

/// Byte counters of one side of the custom transport.
#[derive(Default)]
struct PipeCounters {
    dials: AtomicU64,
    accepts: AtomicU64,
    read: AtomicU64,
    written: AtomicU64,
}

/// A custom stream: a mio Unix stream that counts what passes through it.
struct PipeStream {
    inner: mio::net::UnixStream,
    peer: &'static str,
    counters: Arc<PipeCounters>,
}

impl Source for PipeStream {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.inner.register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.inner.reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.inner.deregister(registry)
    }
}

impl Read for PipeStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counters.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Write for PipeStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.counters.written.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl CustomStream for PipeStream {
    fn peer_addr(&self) -> Address {
        Address::Custom(self.peer.into())
    }
}

/// A custom listener over a mio Unix listener.
struct PipeListener {
    inner: mio::net::UnixListener,
    counters: Arc<PipeCounters>,
}

impl Source for PipeListener {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.inner.register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.inner.reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.inner.deregister(registry)
    }
}

impl CustomListener for PipeListener {
    fn accept(&mut self) -> io::Result<Box<dyn CustomStream>> {
        let (stream, _) = self.inner.accept()?;
        self.counters.accepts.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(PipeStream {
            inner: stream,
            peer: "pipe-client",
            counters: self.counters.clone(),
        }))
    }

    fn local_addr(&self) -> Address {
        Address::Custom("pipe".into())
    }
}

/// Connects to `path` and wraps the stream (the dial completes at once on a Unix socket).
fn dial_pipe(path: &PathBuf, counters: &Arc<PipeCounters>) -> io::Result<PipeStream> {
    let s = std::os::unix::net::UnixStream::connect(path)?;
    s.set_nonblocking(true)?;
    counters.dials.fetch_add(1, Ordering::Relaxed);
    Ok(PipeStream {
        inner: mio::net::UnixStream::from_std(s),
        peer: "pipe-server",
        counters: counters.clone(),
    })
}

#[test]
fn custom_dialer_and_listener_carry_the_calls() {
    run(|| {
        let path = TempPath::new("custom");
        let server_side = Arc::new(PipeCounters::default());
        let client_side = Arc::new(PipeCounters::default());
        let listener = PipeListener {
            inner: mio::net::UnixListener::bind(path.path()).unwrap(),
            counters: server_side.clone(),
        };
        let (builder, peers) = recording_server();
        let server = builder.listener(listener).bind("127.0.0.1:0").unwrap();
        let addrs = server.local_addrs().to_vec();
        assert_eq!(addrs.len(), 2, "{addrs:?}");
        assert!(matches!(addrs[0], Address::Tcp(_)));
        assert_eq!(addrs[1], Address::Custom("pipe".into()));

        let dial_path = path.path().to_path_buf();
        let dial_counters = client_side.clone();
        let client = Client::builder(Address::Custom("pipe".into()))
            .dialer(move || dial_pipe(&dial_path, &dial_counters))
            .connect()
            .unwrap();
        for i in 0..50 {
            let req = format!("custom-{i}");
            assert_eq!(&*client.call(req.as_bytes()).unwrap(), req.as_bytes());
        }
        let big = support::random_bytes(7, 300 << 10);
        assert!(*client.call(&big).unwrap() == big[..]);

        // Everything went through the custom streams, nothing through TCP.
        assert_eq!(client_side.dials.load(Ordering::Relaxed), 1);
        assert_eq!(server_side.accepts.load(Ordering::Relaxed), 1);
        // The server's thread counts its last write after the write returns, which may be after
        // the client already holds the response: its counts catch up to what the client read.
        let client_read = client_side.read.load(Ordering::Relaxed);
        wait_until(WAIT, "the server to count its writes", || {
            server_side.written.load(Ordering::Relaxed) == client_read
                && server.stats().bytes_written == client_read
        });
        let cs = client.stats();
        let ss = server.stats();
        assert_eq!(
            cs.bytes_written,
            client_side.written.load(Ordering::Relaxed)
        );
        assert_eq!(cs.bytes_read, client_side.read.load(Ordering::Relaxed));
        assert_eq!(ss.bytes_read, server_side.read.load(Ordering::Relaxed));
        assert!(cs.bytes_written > big.len() as u64);
        assert_eq!((ss.accepts, ss.calls), (1, 51));
        let peers = peers.lock().unwrap();
        assert!(
            peers
                .iter()
                .all(|p| *p == Address::Custom("pipe-client".into())),
            "{:?}",
            peers.first()
        );
    });
}

#[test]
fn custom_dialer_failure_is_a_connect_error() {
    run(|| {
        let err = Client::builder(Address::Custom("nowhere".into()))
            .dialer(|| -> io::Result<PipeStream> { Err(io::Error::other("no pipe today")) })
            .connect()
            .expect_err("the dialer fails");
        match &err {
            batchrpc::Error::Connect { addr, cause } => {
                assert_eq!(addr, "custom:nowhere");
                assert_eq!(cause.to_string(), "no pipe today");
            }
            other => panic!("expected Connect, got {other:?}"),
        }
    });
}

// ----- driving the reactor by hand -----------------------------------------------------------

/// Drives `reactor` until `done()`; panics naming `what` if that takes longer than [`WAIT`].
fn drive_until(reactor: &mut Reactor, what: &str, mut done: impl FnMut(&Reactor) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done(reactor) {
        assert!(Instant::now() < deadline, "waited too long for {what}");
        reactor.poll_once(Some(Duration::from_millis(10))).unwrap();
    }
}

#[test]
fn manual_drive_on_one_thread() {
    run(|| {
        let me = std::thread::current().id();
        let handler_threads = Arc::new(Mutex::new(Vec::new()));
        let seen = handler_threads.clone();
        let mut reactor = Reactor::new().unwrap();
        let server = Server::builder()
            .workers(0)
            .handler(move |_: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
                seen.lock().unwrap().push(std::thread::current().id());
                resp.extend_from_slice(req);
                Ok(())
            })
            .bind_on(&mut reactor, "127.0.0.1:0")
            .unwrap();
        let client = Client::builder(server.local_addr())
            .connect_on(&mut reactor)
            .unwrap();
        assert!(!reactor.is_idle());

        let pending: Vec<_> = (0..100u32)
            .map(|i| client.call_async(format!("manual-{i}").as_bytes()).unwrap())
            .collect();
        let deadline = Instant::now() + WAIT;
        let mut turns = 0u32;
        while !pending.iter().all(|p| p.is_done()) {
            assert!(Instant::now() < deadline, "calls did not complete");
            reactor.poll_once(Some(Duration::from_millis(10))).unwrap();
            turns += 1;
        }
        println!("100 calls done in {turns} turns");
        for (i, p) in pending.into_iter().enumerate() {
            assert_eq!(&*p.wait().unwrap(), format!("manual-{i}").as_bytes());
        }
        let threads = handler_threads.lock().unwrap().clone();
        assert_eq!(threads.len(), 100);
        assert!(
            threads.iter().all(|&t| t == me),
            "handlers ran off the driving thread"
        );
        assert_eq!(client.stats().calls, 100);
        assert_eq!(server.stats().calls, 100);

        // Shut both down and drive until the reactor has nothing left.
        server.shutdown();
        drop(client);
        drive_until(&mut reactor, "the reactor to become idle", Reactor::is_idle);
        assert!(server.is_shut_down());
        assert_eq!(server.stats().open_connections, 0);
    });
}

/// Busy polling never makes a wait longer: `poll_once`'s timeout still bounds it, and hand-offs
/// from other threads (a worker's response, a call made on another thread) end it at once
/// although they skip the waker while the reactor spins.
#[test]
fn manual_drive_busy_poll_keeps_timeouts_and_sees_hand_offs() {
    run(|| {
        // Far longer than the test may take: a spin that ignored a bound would fail it.
        const SPIN: Duration = Duration::from_secs(60);
        // Each wait below takes a millisecond or so; a spin blind to hand-offs would last
        // until the reactor's next timer (its idle sweep, every second).
        const PROMPT: Duration = Duration::from_millis(500);
        let mut reactor = Reactor::new().unwrap();
        reactor.set_busy_poll(SPIN);
        let server = echo_builder()
            .workers(1)
            .bind_on(&mut reactor, "127.0.0.1:0")
            .unwrap();
        let client = Arc::new(
            Client::builder(server.local_addr())
                .connect_on(&mut reactor)
                .unwrap(),
        );

        // The worker's response is a hand-off the spinning reactor must see.
        let started = Instant::now();
        let first = client.call_async(b"first").unwrap();
        while !first.is_done() {
            reactor.poll_once(None).unwrap();
        }
        assert_eq!(&*first.wait().unwrap(), b"first");
        assert!(
            started.elapsed() < PROMPT,
            "the worker's hand-off was missed"
        );

        // Nothing to do: the timeout ends the wait, spin or not.
        let before = Instant::now();
        reactor.poll_once(Some(Duration::from_millis(20))).unwrap();
        assert!(before.elapsed() < PROMPT, "the spin outlived the timeout");

        // A call made on another thread while this one spins without a timeout: only the
        // hand-off can end the spin.
        let (tx, rx) = std::sync::mpsc::channel();
        let caller = {
            let client = client.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                tx.send(client.call_async(b"second").unwrap()).unwrap();
            })
        };
        let mut started = Instant::now();
        let second = loop {
            reactor.poll_once(None).unwrap();
            if let Ok(pending) = rx.try_recv() {
                break pending;
            }
            started = Instant::now();
        };
        caller.join().unwrap();
        while !second.is_done() {
            reactor.poll_once(None).unwrap();
        }
        assert_eq!(&*second.wait().unwrap(), b"second");
        assert!(
            started.elapsed() < PROMPT,
            "the caller's hand-off was missed"
        );
        assert_eq!(server.stats().calls, 2);
    });
}

/// `send` reports a request done once it is accepted, so `close()` writes the sends it
/// accepted before the connections close; calls pending at the close fail with `Closed`, and
/// their requests are not written.
#[test]
fn close_writes_the_sends_it_accepted_first() {
    run(|| {
        let mut reactor = Reactor::new().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let server = Server::builder()
            .workers(0)
            .handler(move |_: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
                log.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(req).into_owned());
                resp.extend_from_slice(req);
                Ok(())
            })
            .bind_on(&mut reactor, "127.0.0.1:0")
            .unwrap();
        let client = Client::builder(server.local_addr())
            .connect_on(&mut reactor)
            .unwrap();
        drive_until(&mut reactor, "the connection to open", |_| {
            client.stats().open_connections > 0
        });
        for i in 0..100 {
            client.send(format!("note-{i}").as_bytes()).unwrap();
        }
        let call = client.call_async(b"a call").unwrap();
        client.close();
        drive_until(&mut reactor, "the sends, then the close", |_| {
            seen.lock().unwrap().len() >= 100 && client.stats().open_connections == 0
        });
        let expected: Vec<String> = (0..100).map(|i| format!("note-{i}")).collect();
        assert_eq!(
            *seen.lock().unwrap(),
            expected,
            "every send, in order, and no call"
        );
        assert!(matches!(call.wait(), Err(batchrpc::Error::Closed)));
        assert!(matches!(client.send(b"late"), Err(batchrpc::Error::Closed)));
        let stats = client.stats();
        // The call, and the send refused after the close.
        assert_eq!((stats.calls, stats.errors.closed), (100, 2));
        drop(client);
        drop(server);
        drive_until(&mut reactor, "the reactor to become idle", Reactor::is_idle);
    });
}

/// Calls made before the handshake completes wait for it; nothing is lost while nobody
/// drives the reactor.
#[test]
fn manual_drive_calls_wait_for_the_driver() {
    run(|| {
        let mut reactor = Reactor::new().unwrap();
        let server = echo_builder()
            .workers(1)
            .bind_on(&mut reactor, "127.0.0.1:0")
            .unwrap();
        let client = Client::builder(server.local_addr())
            .connect_on(&mut reactor)
            .unwrap();
        let mut early = client.call_async(b"early").unwrap();
        // Nobody drives: nothing can complete.
        assert!(early.try_wait().is_none());
        client.send(b"note").unwrap();
        drive_until(&mut reactor, "the call to complete", |_| early.is_done());
        assert_eq!(&*early.try_wait().unwrap().unwrap(), b"early");
        // The worker (a thread of its own) answered; the send was handled too.
        drive_until(&mut reactor, "the send to be handled", |_| {
            server.stats().calls >= 2
        });
        assert_eq!(server.stats().calls, 2);
        drop(server); // asks for the shutdown; the driver completes it
        drop(client);
        drive_until(&mut reactor, "the reactor to become idle", Reactor::is_idle);
    });
}
