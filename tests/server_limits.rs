//! Server settings and limits: max_connections, pipeline, max_queued_requests, workers(0),
//! graceful shutdown and drop, and on_connect hooks on both sides.

mod support;

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use batchrpc::wire::frame::{self, FrameKind};
use batchrpc::wire::handshake::{Hello, HELLO_LEN};
use batchrpc::wire::ProtocolError;
use batchrpc::{Address, Client, Compression, Error, RequestCtx, Server};
use support::{client_of, echo_builder, run, wait_until, Gate, Occupancy, OpenOnDrop};

const WAIT: Duration = Duration::from_secs(10);

/// How a client refused by the server (limit, hook) sees it: the server accepts and closes
/// the socket before the hellos are exchanged. Depending on whether the client's hello was
/// already in the server's socket when it closed, the client reads end of stream inside the
/// handshake (`Protocol(HandshakeClosed)`) or a reset (`Connect` with `ConnectionReset`).
fn assert_refused_by_server(err: &Error) {
    match err {
        Error::Protocol(ProtocolError::HandshakeClosed) => {}
        Error::Connect { cause, .. } if cause.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected the server to close the handshake, got {other:?}"),
    }
}

/// Waits until nothing accepts connections on `addr` any more (a shutdown has begun).
fn wait_until_refused(addr: SocketAddr) {
    wait_until(WAIT, "the listener to close", || {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Err(e) => e.kind() == ErrorKind::ConnectionRefused,
            Ok(_probe) => false, // accepted by the server before it closed the listener
        }
    });
}

// ----- max_connections -----------------------------------------------------------------------

#[test]
fn max_connections_refuses_the_third_client() {
    run(|| {
        let server = echo_builder()
            .max_connections(2)
            .bind("127.0.0.1:0")
            .unwrap();
        let first = client_of(&server);
        let second = client_of(&server);
        wait_until(WAIT, "two connections at the server", || {
            server.stats().open_connections == 2
        });
        let started = Instant::now();
        let third = Client::builder(server.local_addr())
            .handshake_timeout(Duration::from_secs(2))
            // No redial (counted by the server) before the failed connect() drops the client.
            .reconnect_backoff(Duration::from_secs(60), Duration::from_secs(60))
            .connect();
        let err = third.expect_err("a third connection is over the limit");
        println!("third client: {err:?} after {:?}", started.elapsed());
        assert_refused_by_server(&err);
        assert!(started.elapsed() < Duration::from_secs(2));

        let s = server.stats();
        assert_eq!((s.accepts, s.accept_errors, s.open_connections), (3, 1, 2));
        assert_eq!(&*first.call(b"one").unwrap(), b"one");
        assert_eq!(&*second.call(b"two").unwrap(), b"two");

        // Room again once one leaves.
        drop(first);
        wait_until(WAIT, "the server to see the first client leave", || {
            server.stats().open_connections == 1
        });
        let third = client_of(&server);
        assert_eq!(&*third.call(b"three").unwrap(), b"three");
    });
}

/// A client with three connections to a server that takes two: two work, so connect()
/// succeeds and every call is answered on them (the third link keeps being refused).
#[test]
fn connect_succeeds_when_some_of_its_connections_are_refused() {
    run(|| {
        let server = echo_builder()
            .max_connections(2)
            .bind("127.0.0.1:0")
            .unwrap();
        let client = Client::builder(server.local_addr())
            .conns(3)
            .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
            .connect()
            .expect("two of three connections are accepted");
        for i in 0..30 {
            let req = format!("call-{i}");
            assert_eq!(&*client.call(req.as_bytes()).unwrap(), req.as_bytes());
        }
        assert_eq!(server.stats().open_connections, 2);
        assert!(server.stats().accept_errors >= 1);
    });
}

/// Jobs of a connection that closed while its requests were at the workers: their answers
/// must not go to a new connection that took the old one's place (same reactor slot, same
/// wire ids). The old peer is a raw socket that breaks the protocol once its requests are at
/// the workers, so that the server closes it at once (an end of stream would not do: the
/// server answers a half-closed peer before it closes).
#[test]
fn answers_for_a_closed_connection_never_reach_its_successor() {
    run(|| {
        let gate = Gate::new();
        let occupancy = Occupancy::default();
        let (g, occ) = (gate.clone(), occupancy.clone());
        let server = Server::builder()
            .workers(2)
            .handler(move |_: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
                if req.starts_with(b"old") {
                    occ.enter();
                    g.wait();
                    occ.exit();
                }
                resp.extend_from_slice(req);
                Ok(())
            })
            .bind("127.0.0.1:0")
            .unwrap();
        let _open = OpenOnDrop(gate.clone());
        // A client with 4 call slots numbers its first calls 4, 5, 6 (generation 1 above two
        // bits of slot index): the old peer uses those ids.
        let addr = server.local_addr().as_tcp().unwrap();
        let mut old = TcpStream::connect(addr).unwrap();
        old.write_all(&Hello::new(Compression::None, false).encode())
            .unwrap();
        let mut answer = [0; HELLO_LEN];
        old.read_exact(&mut answer).unwrap();
        let mut requests = Vec::new();
        for (i, id) in (4..7).enumerate() {
            frame::encode(
                &mut requests,
                id,
                FrameKind::Request,
                format!("old-{i}").as_bytes(),
            );
        }
        old.write_all(&requests).unwrap();
        wait_until(WAIT, "the handler to hold an old call", || {
            occupancy.current() >= 1
        });
        wait_until(WAIT, "the server to read the old calls", || {
            server.stats().frames_read == 3
        });
        // An unknown frame kind: the server closes the connection at once.
        old.write_all(&[0, 0, 0, 0, 0xee, 0, 0, 0, 0]).unwrap();
        wait_until(WAIT, "the server to close the old connection", || {
            server.stats().open_connections == 0
        });
        assert_eq!(server.stats().errors.protocol, 1);
        // The new client's first calls have the same wire ids the old peer's had.
        let new = Client::builder(addr)
            .max_pending_requests(4)
            .connect()
            .unwrap();
        let pending: Vec<_> = (0..3)
            .map(|i| new.call_async(format!("new-{i}").as_bytes()).unwrap())
            .collect();
        gate.open();
        wait_until(WAIT, "the old calls to finish at the server", || {
            occupancy.entered() == 3 && occupancy.current() == 0
        });
        for (i, p) in pending.into_iter().enumerate() {
            assert_eq!(&*p.wait().unwrap(), format!("new-{i}").as_bytes());
        }
        for i in 0..20 {
            let req = format!("more-{i}");
            assert_eq!(&*new.call(req.as_bytes()).unwrap(), req.as_bytes());
        }
        assert_eq!(new.stats().errors.stale_responses, 0);
        assert_eq!(new.stats().calls, 23);
        drop(old);
    });
}

// ----- pipeline ------------------------------------------------------------------------------

#[test]
fn pipeline_runs_one_connections_requests_serially_in_order() {
    run(|| {
        const N: u32 = 1000;
        let in_handler = Arc::new(AtomicBool::new(false));
        let overlaps = Arc::new(AtomicU64::new(0));
        let order = Arc::new(Mutex::new(Vec::with_capacity(N as usize)));
        let (busy, overlap, seen) = (in_handler.clone(), overlaps.clone(), order.clone());
        let server = Server::builder()
            .workers(4) // room for concurrency, which pipeline mode must not use
            .pipeline(true)
            .handler(move |_: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
                if busy.swap(true, Ordering::SeqCst) {
                    overlap.fetch_add(1, Ordering::SeqCst);
                }
                let n = u32::from_le_bytes(req.try_into().unwrap());
                seen.lock().unwrap().push(n);
                if n % 100 == 0 {
                    std::thread::yield_now(); // widen the window for an overlap
                }
                resp.extend_from_slice(req);
                busy.store(false, Ordering::SeqCst);
                Ok(())
            })
            .bind("127.0.0.1:0")
            .unwrap();
        let client = client_of(&server);
        let pending: Vec<_> = (0..N)
            .map(|i| client.call_async(&i.to_le_bytes()).unwrap())
            .collect();

        // Responses arrive in request order: the completed calls always form a prefix.
        let check_prefix = |pending: &[batchrpc::PendingCall]| {
            if let Some(last_done) = pending.iter().rposition(|p| p.is_done()) {
                let gap = pending[..last_done].iter().position(|p| !p.is_done());
                assert_eq!(
                    gap, None,
                    "call {last_done} completed before an earlier one"
                );
            }
        };
        let deadline = Instant::now() + WAIT;
        while !pending.iter().all(|p| p.is_done()) {
            check_prefix(&pending);
            assert!(
                Instant::now() < deadline,
                "pipelined calls did not complete"
            );
            std::thread::yield_now();
        }
        for (i, p) in (0..N).zip(pending) {
            assert_eq!(&*p.wait().unwrap(), &i.to_le_bytes());
        }
        assert_eq!(
            overlaps.load(Ordering::SeqCst),
            0,
            "handler ran concurrently"
        );
        assert_eq!(*order.lock().unwrap(), (0..N).collect::<Vec<_>>());
        assert_eq!(server.stats().calls, u64::from(N));
    });
}

// ----- max_queued_requests -------------------------------------------------------------------

#[test]
fn max_queued_requests_bounds_the_work_at_the_handler() {
    run(|| {
        const WORKERS: u64 = 2;
        const CALLS: usize = 100;
        let gate = Gate::new();
        let occupancy = Occupancy::default();
        let (g, occ) = (gate.clone(), occupancy.clone());
        let server = Server::builder()
            .workers(WORKERS as usize)
            .max_queued_requests(10)
            .handler(move |_: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
                occ.enter();
                g.wait();
                occ.exit();
                resp.extend_from_slice(req);
                Ok(())
            })
            .bind("127.0.0.1:0")
            .unwrap();
        let _open = OpenOnDrop(gate.clone());
        let client = client_of(&server);
        // 16 KiB each, so that the requests need many reads.
        let reqs: Vec<Vec<u8>> = (0..CALLS as u64)
            .map(|i| support::random_bytes(i, 16 << 10))
            .collect();
        let pending: Vec<_> = reqs.iter().map(|r| client.call_async(r).unwrap()).collect();
        wait_until(WAIT, "the handler to hold a request", || {
            occupancy.current() >= 1
        });
        let read_while_blocked = server.stats().frames_read;
        println!(
            "handler blocked: {} inside, {} requests read by the server",
            occupancy.current(),
            read_while_blocked
        );
        assert!(occupancy.current() <= WORKERS);
        gate.open();
        for (req, p) in reqs.iter().zip(pending) {
            assert!(*p.wait().unwrap() == req[..]);
        }
        assert!(occupancy.max() <= WORKERS, "max inside {}", occupancy.max());
        assert_eq!(occupancy.entered(), CALLS as u64);
        assert_eq!(server.stats().calls, CALLS as u64);
        assert_eq!(client.pending_requests(), 0);
    });
}

/// With the handler blocked, the server takes no more than `max_queued_requests` requests off
/// the connection, even when one read brings many more.
#[test]
fn max_queued_requests_stops_reading_at_the_limit() {
    run(|| {
        let gate = Gate::new();
        let occupancy = Occupancy::default();
        let (g, occ) = (gate.clone(), occupancy.clone());
        let server = Server::builder()
            .workers(1)
            .max_queued_requests(10)
            .handler(move |_: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
                occ.enter();
                g.wait();
                occ.exit();
                resp.extend_from_slice(req);
                Ok(())
            })
            .bind("127.0.0.1:0")
            .unwrap();
        let _open = OpenOnDrop(gate.clone());
        let client = client_of(&server);
        let pending: Vec<_> = (0..100u32)
            .map(|i| client.call_async(&i.to_le_bytes()).unwrap())
            .collect();
        wait_until(WAIT, "the handler to hold a request", || {
            occupancy.current() == 1
        });
        wait_until(WAIT, "the client to write every request", || {
            client.stats().frames_written == 100
        });
        // A negative check: give a server that would read past its limit the time to do so.
        std::thread::sleep(Duration::from_millis(200));
        let read = server.stats().frames_read;
        gate.open();
        for p in pending {
            p.wait().unwrap();
        }
        assert!(
            read <= 10,
            "the server read {read} requests with a limit of 10"
        );
    });
}

// ----- workers(0) ----------------------------------------------------------------------------

fn handler_thread_name(builder: batchrpc::ServerBuilder) -> String {
    let name = Arc::new(Mutex::new(None));
    let n = name.clone();
    let server = builder
        .handler(move |_: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
            *n.lock().unwrap() = std::thread::current().name().map(str::to_owned);
            resp.extend_from_slice(req);
            Ok(())
        })
        .bind("127.0.0.1:0")
        .unwrap();
    let client = client_of(&server);
    assert_eq!(&*client.call(b"who").unwrap(), b"who");
    let got = name
        .lock()
        .unwrap()
        .clone()
        .expect("handler threads are named");
    got
}

#[test]
fn workers_zero_runs_handlers_on_the_reactor_thread() {
    run(|| {
        assert_eq!(
            handler_thread_name(Server::builder().workers(0)),
            "batchrpc-server"
        );
        assert_eq!(
            handler_thread_name(Server::builder().workers(0).thread_name("my-reactor")),
            "my-reactor"
        );
        let worker = handler_thread_name(Server::builder().workers(1));
        assert_eq!(worker, "batchrpc-server-worker-0");
    });
}

#[test]
fn workers_zero_serves_many_calls() {
    run(|| {
        let server = echo_builder().workers(0).bind("127.0.0.1:0").unwrap();
        let client = client_of(&server);
        let pending: Vec<_> = (0..1000u32)
            .map(|i| client.call_async(&i.to_le_bytes()).unwrap())
            .collect();
        for (i, p) in (0..1000u32).zip(pending) {
            assert_eq!(&*p.wait().unwrap(), &i.to_le_bytes());
        }
        assert_eq!(server.stats().calls, 1000);
    });
}

// ----- shutdown ------------------------------------------------------------------------------

#[test]
fn shutdown_with_calls_in_flight_completes_each_call_once() {
    run(|| {
        const N: usize = 200;
        let server = Server::builder()
            .workers(2)
            .handler(|_: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
                std::thread::sleep(Duration::from_millis(1));
                resp.extend_from_slice(req);
                Ok(())
            })
            .bind("127.0.0.1:0")
            .unwrap();
        let client = Client::builder(server.local_addr())
            .request_timeout(Duration::from_secs(10))
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(100))
            .connect()
            .unwrap();
        let pending: Vec<_> = (0..N)
            .map(|i| client.call_async(format!("c{i}").as_bytes()).unwrap())
            .collect();
        wait_until(WAIT, "the server to start on the calls", || {
            server.stats().frames_read >= 1
        });
        server.shutdown();
        assert_eq!(server.stats().open_connections, 0);
        let handled = server.stats().calls;

        let (mut ok, mut failed) = (0u64, 0u64);
        for (i, p) in pending.into_iter().enumerate() {
            match p.wait() {
                Ok(resp) => {
                    assert_eq!(&*resp, format!("c{i}").as_bytes());
                    ok += 1;
                }
                Err(Error::ConnectionLost(_) | Error::Closed) => failed += 1,
                Err(e) => panic!("call {i}: unexpected {e:?}"),
            }
        }
        println!("shutdown: {ok} answered, {failed} failed, server handled {handled}");
        assert_eq!(ok + failed, N as u64);
        assert_eq!(ok, handled, "every request the server read is answered");
        assert_eq!(client.stats().calls, ok);
        assert_eq!(client.pending_requests(), 0);
        // Nothing listens any more.
        let addr = server.local_addr().as_tcp().unwrap();
        let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        assert_eq!(
            refused.map_err(|e| e.kind()).err(),
            Some(ErrorKind::ConnectionRefused)
        );
        server.shutdown(); // twice is harmless
    });
}

/// Shutdown with an idle client connected. The handshake timeout is long, so that no stale
/// handshake timer wakes the server's reactor by chance while it shuts down.
#[test]
fn shutdown_with_an_idle_client_connected_returns_promptly() {
    run(|| {
        let server = echo_builder()
            .handshake_timeout(Duration::from_secs(60))
            .bind("127.0.0.1:0")
            .unwrap();
        let client = client_of(&server);
        assert_eq!(&*client.call(b"x").unwrap(), b"x");
        let started = Instant::now();
        let server = support::bounded(Duration::from_secs(5), move || {
            server.shutdown();
            server
        });
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(server.stats().open_connections, 0);
        drop(client);
    });
}

/// As above, with a request at a worker when the shutdown starts: its response is flushed,
/// then the connection must close and the shutdown complete without any further event (the
/// long handshake timeout keeps stale timers from waking the reactor by chance).
#[test]
fn shutdown_with_a_request_at_a_worker_returns_promptly() {
    run(|| {
        let gate = Gate::new();
        let occupancy = Occupancy::default();
        let (g, occ) = (gate.clone(), occupancy.clone());
        let server = Server::builder()
            .workers(1)
            .handshake_timeout(Duration::from_secs(60))
            .handler(move |_: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
                occ.enter();
                g.wait();
                occ.exit();
                resp.extend_from_slice(req);
                Ok(())
            })
            .bind("127.0.0.1:0")
            .unwrap();
        let _open = OpenOnDrop(gate.clone());
        let client = client_of(&server);
        let held = client.call_async(b"held").unwrap();
        wait_until(WAIT, "the handler to hold the call", || {
            occupancy.current() == 1
        });
        let addr = server.local_addr().as_tcp().unwrap();
        let stopping = std::thread::spawn(move || {
            server.shutdown();
            server
        });
        wait_until_refused(addr);
        let addr_closed = Instant::now();
        gate.open();
        assert_eq!(&*held.wait().unwrap(), b"held");
        wait_until(Duration::from_secs(5), "the shutdown to complete", || {
            stopping.is_finished()
        });
        assert!(addr_closed.elapsed() < Duration::from_secs(5));
        let server = stopping.join().unwrap();
        assert_eq!(server.stats().open_connections, 0);
        assert_eq!(server.stats().calls, 1);
    });
}

#[test]
fn dropping_the_server_shuts_it_down_gracefully() {
    run(|| {
        let gate = Gate::new();
        let occupancy = Occupancy::default();
        let (g, occ) = (gate.clone(), occupancy.clone());
        let server = Server::builder()
            .workers(1)
            .handler(move |_: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
                occ.enter();
                g.wait();
                occ.exit();
                resp.extend_from_slice(req);
                Ok(())
            })
            .bind("127.0.0.1:0")
            .unwrap();
        let _open = OpenOnDrop(gate.clone());
        let addr = server.local_addr().as_tcp().unwrap();
        let client = client_of(&server);
        let held = client.call_async(b"held").unwrap();
        wait_until(WAIT, "the handler to hold the call", || {
            occupancy.current() == 1
        });
        let dropping = std::thread::spawn(move || drop(server));
        // The drop waits for the handler; the listener is gone at once.
        wait_until_refused(addr);
        assert!(!dropping.is_finished());
        gate.open();
        assert_eq!(&*held.wait().unwrap(), b"held");
        dropping.join().unwrap();
        assert_eq!(occupancy.entered(), 1);
    });
}

// ----- on_connect hooks ----------------------------------------------------------------------

#[test]
fn server_on_connect_err_refuses_the_client() {
    run(|| {
        let peers = Arc::new(Mutex::new(Vec::new()));
        let seen = peers.clone();
        let server = echo_builder()
            .on_connect(move |info| {
                seen.lock().unwrap().push(info.peer_addr().clone());
                Err("not you".into())
            })
            .bind("127.0.0.1:0")
            .unwrap();
        let err = Client::builder(server.local_addr())
            .handshake_timeout(Duration::from_secs(2))
            // No redial (counted by the server) before the failed connect() drops the client.
            .reconnect_backoff(Duration::from_secs(60), Duration::from_secs(60))
            .connect()
            .expect_err("the hook refuses everyone");
        println!("refused by the server's on_connect: {err:?}");
        assert_refused_by_server(&err);
        let peers = peers.lock().unwrap();
        assert_eq!(peers.len(), 1);
        assert!(
            matches!(&peers[0], Address::Tcp(a) if a.ip().is_loopback()),
            "{peers:?}"
        );
        let s = server.stats();
        assert_eq!((s.accepts, s.accept_errors, s.open_connections), (1, 1, 0));
    });
}

#[test]
fn server_on_connect_ok_sees_each_connection() {
    run(|| {
        let ids = Arc::new(Mutex::new(HashSet::new()));
        let (seen, in_handler) = (ids.clone(), ids.clone());
        let server = Server::builder()
            .workers(1)
            .on_connect(move |info| {
                seen.lock().unwrap().insert(info.conn_id());
                Ok(())
            })
            .handler(move |ctx: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
                assert!(in_handler.lock().unwrap().contains(&ctx.conn_id()));
                resp.extend_from_slice(req);
                Ok(())
            })
            .bind("127.0.0.1:0")
            .unwrap();
        let a = client_of(&server);
        let b = client_of(&server);
        assert_eq!(&*a.call(b"a").unwrap(), b"a");
        assert_eq!(&*b.call(b"b").unwrap(), b"b");
        assert_eq!(ids.lock().unwrap().len(), 2);
    });
}

#[test]
fn client_on_connect_err_fails_connect_with_refused() {
    run(|| {
        let server = support::echo_server();
        let expected_peer = server.local_addr();
        let peers = Arc::new(Mutex::new(Vec::new()));
        let seen = peers.clone();
        let started = Instant::now();
        let err = Client::builder(server.local_addr())
            .on_connect(move |info| {
                seen.lock().unwrap().push(info.peer_addr().clone());
                Err("wrong server".into())
            })
            .connect()
            .expect_err("the hook refuses");
        assert!(started.elapsed() < Duration::from_secs(3));
        match &err {
            Error::Refused(reason) => assert_eq!(reason, "wrong server"),
            other => panic!("expected Refused, got {other:?}"),
        }
        assert!(err.to_string().contains("wrong server"));
        assert_eq!(peers.lock().unwrap().first(), Some(&expected_peer));
        // The server saw a connection come and go, without a protocol error.
        wait_until(WAIT, "the server to see the refused client leave", || {
            server.stats().open_connections == 0
        });
        assert_eq!(server.stats().errors.protocol, 0);
    });
}

/// Buffers grow with traffic and are given back once a connection has been quiet for a
/// second, on both sides (`Stats::buffered_bytes` is refreshed by the once-a-second sweep).
#[test]
fn idle_connections_give_their_buffers_back() {
    run(|| {
        let server = echo_builder().bind("127.0.0.1:0").unwrap();
        let client = client_of(&server);
        let big = vec![7u8; 200_000];
        // Keep the connection busy across a sweep, so that it is seen holding buffers.
        let busy_until = Instant::now() + Duration::from_millis(2500);
        let mut seen_busy = (false, false);
        while Instant::now() < busy_until {
            assert_eq!(client.call(&big).unwrap().len(), big.len());
            seen_busy.0 |= server.stats().buffered_bytes > 0;
            seen_busy.1 |= client.stats().buffered_bytes > 0;
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(seen_busy, (true, true), "busy connections hold buffers");
        wait_until(
            WAIT,
            "the quiet connections to give their buffers back",
            || server.stats().buffered_bytes == 0 && client.stats().buffered_bytes == 0,
        );
        // And the connection still works, growing its buffers again.
        assert_eq!(client.call(&big).unwrap().len(), big.len());
    });
}
