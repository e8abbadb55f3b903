//! Calls that fail, and how: handler errors and panics, timeouts and late responses, overflow,
//! frame limits, closing and dropping the client, canceling, and peers that are not there or
//! do not speak batchrpc.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use batchrpc::wire::frame::FrameError;
use batchrpc::wire::handshake::HandshakeError;
use batchrpc::wire::ProtocolError;
use batchrpc::{Client, Error, RequestCtx, Server};
use support::{client_of, echo_server, run, wait_until, Gate, OpenOnDrop};

const WAIT: Duration = Duration::from_secs(10);

/// A server whose handler holds requests starting with `hold` at `gate`, and echoes.
fn gated_server(gate: &Gate, workers: usize) -> Server {
    let gate = gate.clone();
    Server::builder()
        .workers(workers)
        .handler(move |_: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
            if req.starts_with(b"hold") {
                gate.wait();
            }
            resp.extend_from_slice(req);
            Ok(())
        })
        .bind("127.0.0.1:0")
        .unwrap()
}

// ----- handler errors ------------------------------------------------------------------------

#[test]
fn handler_error_reaches_the_caller_as_server_error() {
    run(|| {
        let server = Server::builder()
            .workers(1)
            .handler(|_: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
                if req == b"fail" {
                    return Err("boom".into());
                }
                resp.extend_from_slice(req);
                Ok(())
            })
            .bind("127.0.0.1:0")
            .unwrap();
        let client = client_of(&server);
        match client.call(b"fail") {
            Err(Error::Server(text)) => assert_eq!(text, "boom"),
            other => panic!("expected Server(\"boom\"), got {other:?}"),
        }
        assert_eq!(&*client.call(b"fine").unwrap(), b"fine");
        let s = client.stats();
        assert_eq!((s.calls, s.errors.server), (1, 1));
        let ss = server.stats();
        assert_eq!((ss.calls, ss.errors.server), (1, 1));
    });
}

#[test]
fn handler_panic_is_a_server_error_and_the_server_lives_on() {
    run(|| {
        let server = Server::builder()
            .workers(1) // the one worker must survive the panics
            .handler(|_: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
                if req == b"panic" {
                    panic!("kaboom-4711");
                }
                resp.extend_from_slice(req);
                Ok(())
            })
            .bind("127.0.0.1:0")
            .unwrap();
        let client = client_of(&server);
        for round in 0..3 {
            match client.call(b"panic") {
                Err(Error::Server(text)) => {
                    assert!(text.contains("kaboom-4711"), "round {round}: {text:?}")
                }
                other => panic!("expected Server(..kaboom..), got {other:?}"),
            }
            let req = format!("after-{round}");
            assert_eq!(&*client.call(req.as_bytes()).unwrap(), req.as_bytes());
        }
        // A panic in the middle of a batch fails that call only.
        let mut batch = client.batch();
        batch.add(b"a").unwrap();
        batch.add(b"panic").unwrap();
        batch.add(b"c").unwrap();
        let results = batch.call();
        assert_eq!(&results[0].as_ref().unwrap()[..], b"a");
        assert!(matches!(&results[1], Err(Error::Server(t)) if t.contains("kaboom-4711")));
        assert_eq!(&results[2].as_ref().unwrap()[..], b"c");
        assert_eq!(server.stats().errors.server, 4);
        assert_eq!(server.stats().calls, 5);
    });
}

// ----- timeouts ------------------------------------------------------------------------------

#[test]
fn timeout_then_late_response_is_discarded() {
    run(|| {
        let gate = Gate::new();
        let server = gated_server(&gate, 2);
        let _open = OpenOnDrop(gate.clone());
        let client = client_of(&server);

        let timeout = Duration::from_millis(100);
        let started = Instant::now();
        let outcome = client.call_timeout(b"hold-late", timeout);
        let took = started.elapsed();
        assert!(
            matches!(outcome, Err(Error::Timeout)),
            "expected Timeout, got {outcome:?}"
        );
        assert!(took >= timeout, "timed out early: {took:?}");
        assert!(
            took < timeout + Duration::from_secs(1),
            "timed out late: {took:?}"
        );
        assert_eq!(client.stats().errors.timeout, 1);

        // The timed-out call's slot is reused at once, while its response is still to come.
        assert_eq!(&*client.call(b"next").unwrap(), b"next");
        gate.open();
        wait_until(WAIT, "the late response to be counted stale", || {
            client.stats().errors.stale_responses == 1
        });
        for i in 0..10 {
            let req = format!("after-{i}");
            assert_eq!(&*client.call(req.as_bytes()).unwrap(), req.as_bytes());
        }
        let s = client.stats();
        assert_eq!(s.errors.stale_responses, 1);
        assert_eq!(s.errors.timeout, 1);
        assert_eq!(s.calls, 11);
        assert_eq!(client.pending_requests(), 0);
    });
}

#[test]
fn async_call_timeout_completes_the_handle() {
    run(|| {
        let gate = Gate::new();
        let server = gated_server(&gate, 1);
        let _open = OpenOnDrop(gate.clone());
        let client = client_of(&server);
        let pending = client
            .call_async_timeout(b"hold", Duration::from_millis(50))
            .unwrap();
        support::wait_done(&pending, WAIT);
        assert!(matches!(pending.wait(), Err(Error::Timeout)));
        // The request is still at the server: its slot (and id) stays reserved until the late
        // response arrives, so the id is never reused while the server may still answer it.
        assert_eq!(client.pending_requests(), 1);
        gate.open();
        wait_until(WAIT, "the late response to free the slot", || {
            client.pending_requests() == 0
        });
        assert_eq!(client.stats().errors.stale_responses, 1);
    });
}

/// Many different timeouts in flight at once: each call times out no earlier than its own
/// deadline and not much later, exactly once.
#[test]
fn many_distinct_timeouts_each_fire_on_time() {
    run(|| {
        let gate = Gate::new();
        let server = gated_server(&gate, 1);
        let _open = OpenOnDrop(gate.clone());
        let client = client_of(&server);
        // 40 calls, timeouts from 300 ms down to 105 ms (submitted longest first), plus two
        // that share a timeout.
        let mut calls: Vec<(Duration, Instant, batchrpc::PendingCall)> = (0..40u64)
            .map(|i| {
                let timeout = Duration::from_millis(300 - 5 * i);
                let p = client
                    .call_async_timeout(format!("hold-{i}").as_bytes(), timeout)
                    .unwrap();
                (timeout, Instant::now(), p)
            })
            .collect();
        for _ in 0..2 {
            let timeout = Duration::from_millis(150);
            let p = client.call_async_timeout(b"hold-same", timeout).unwrap();
            calls.push((timeout, Instant::now(), p));
        }
        let deadline = Instant::now() + WAIT;
        let mut done_at: Vec<Option<Instant>> = vec![None; calls.len()];
        while done_at.iter().any(Option::is_none) {
            assert!(Instant::now() < deadline, "timeouts did not fire");
            for (i, (_, _, p)) in calls.iter().enumerate() {
                if done_at[i].is_none() && p.is_done() {
                    done_at[i] = Some(Instant::now());
                }
            }
            std::thread::yield_now();
        }
        for ((timeout, submitted, p), at) in calls.into_iter().zip(done_at) {
            let took = at.unwrap() - submitted;
            assert!(took >= timeout, "{timeout:?} fired after {took:?}");
            assert!(
                took < timeout + Duration::from_secs(1),
                "{timeout:?}: {took:?}"
            );
            assert!(matches!(p.wait(), Err(Error::Timeout)));
        }
        assert_eq!(client.stats().errors.timeout, 42);
        // Every request is still at the server: their slots stay reserved until it answers.
        assert_eq!(client.pending_requests(), 42);
        gate.open();
        wait_until(WAIT, "the late responses to free the slots", || {
            client.pending_requests() == 0
        });
        assert_eq!(client.stats().errors.stale_responses, 42);
    });
}

/// A late response must never complete a later call, however many calls come in between.
/// With `max_pending_requests(1 << 20)` a wire id has 12 bits of generation, so if the
/// timed-out call's slot were reused, its 4096th reuse would carry the same wire id again.
#[test]
fn a_late_response_never_completes_a_call_that_reuses_its_wire_id() {
    run(|| {
        let (gate_a, gate_b) = (Gate::new(), Gate::new());
        let (ga, gb) = (gate_a.clone(), gate_b.clone());
        let server = Server::builder()
            .workers(2)
            .handler(move |_: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
                match req {
                    b"hold-a" => ga.wait(),
                    b"hold-b" => gb.wait(),
                    _ => true,
                };
                resp.extend_from_slice(req);
                Ok(())
            })
            .bind("127.0.0.1:0")
            .unwrap();
        let _open_a = OpenOnDrop(gate_a.clone());
        let _open_b = OpenOnDrop(gate_b.clone());
        let client = Client::builder(server.local_addr())
            .max_pending_requests(1 << 20)
            .connect()
            .unwrap();
        assert!(matches!(
            client.call_timeout(b"hold-a", Duration::from_millis(20)),
            Err(Error::Timeout)
        ));
        // One call at a time: each takes the slot the previous one freed.
        for i in 0..4095u32 {
            assert_eq!(&*client.call(&i.to_le_bytes()).unwrap(), &i.to_le_bytes());
        }
        let b = client.call_async(b"hold-b").unwrap();
        gate_a.open();
        wait_until(WAIT, "the late response to arrive", || {
            client.stats().errors.stale_responses == 1 || b.is_done()
        });
        assert!(
            !b.is_done(),
            "call b was completed by the late response: {:?}",
            b.wait()
        );
        gate_b.open();
        assert_eq!(&*b.wait().unwrap(), b"hold-b");
    });
}

// ----- overflow ------------------------------------------------------------------------------

#[test]
fn max_pending_requests_overflows_at_once() {
    run(|| {
        let gate = Gate::new();
        let server = gated_server(&gate, 1);
        let _open = OpenOnDrop(gate.clone());
        let client = Client::builder(server.local_addr())
            .max_pending_requests(4)
            .connect()
            .unwrap();
        let held: Vec<_> = (0..4)
            .map(|i| client.call_async(format!("hold-{i}").as_bytes()).unwrap())
            .collect();
        assert_eq!(client.pending_requests(), 4);
        let started = Instant::now();
        assert!(matches!(client.call_async(b"fifth"), Err(Error::Overflow)));
        assert!(matches!(client.call(b"fifth"), Err(Error::Overflow)));
        assert!(matches!(client.send(b"fifth"), Err(Error::Overflow)));
        assert!(matches!(client.batch().add(b"fifth"), Err(Error::Overflow)));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "overflow must not wait"
        );
        gate.open();
        for (i, p) in held.into_iter().enumerate() {
            assert_eq!(&*p.wait().unwrap(), format!("hold-{i}").as_bytes());
        }
        assert_eq!(client.pending_requests(), 0);
        assert_eq!(&*client.call(b"room again").unwrap(), b"room again");
        let s = client.stats();
        assert_eq!((s.calls, s.errors.overflow), (5, 4));
    });
}

// ----- frame limits --------------------------------------------------------------------------

#[test]
fn request_above_max_frame_len_fails_before_sending() {
    run(|| {
        let server = echo_server();
        let client = Client::builder(server.local_addr())
            .max_frame_len(1000)
            .connect()
            .unwrap();
        let written = client.stats().bytes_written;
        match client.call(&[1u8; 1001]) {
            Err(Error::TooLarge { len, max }) => assert_eq!((len, max), (1001, 1000)),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(matches!(
            client.call_async(&[1u8; 5000]),
            Err(Error::TooLarge {
                len: 5000,
                max: 1000
            })
        ));
        assert!(matches!(
            client.send(&[1u8; 1001]),
            Err(Error::TooLarge { .. })
        ));
        assert_eq!(
            client.stats().bytes_written,
            written,
            "nothing may be written"
        );
        // Exactly at the limit is fine.
        assert_eq!(&*client.call(&[2u8; 1000]).unwrap(), &[2u8; 1000][..]);
        let ss = server.stats();
        assert_eq!((ss.calls, ss.frames_read), (1, 1));
        let s = client.stats();
        assert_eq!((s.calls, s.errors.too_large), (1, 3));
        assert_eq!(client.pending_requests(), 0);
    });
}

/// The server's own limit on responses: a larger response is replaced by an error response.
#[test]
fn response_above_server_max_frame_len_becomes_server_error() {
    run(|| {
        let server = Server::builder()
            .workers(1)
            .max_frame_len(1000)
            .handler(|_: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
                let n: usize = std::str::from_utf8(req).unwrap().parse().unwrap();
                resp.resize(n, b'r');
                Ok(())
            })
            .bind("127.0.0.1:0")
            .unwrap();
        let client = client_of(&server);
        assert_eq!(client.call(b"1000").unwrap().len(), 1000);
        match client.call(b"2000") {
            Err(Error::Server(text)) => assert!(
                text.contains("2000") && text.contains("1000"),
                "message should name the sizes: {text:?}"
            ),
            other => panic!("expected Server error, got {other:?}"),
        }
        // The connection survived.
        assert_eq!(client.call(b"10").unwrap().len(), 10);
        assert_eq!(client.stats().errors.connection_lost, 0);
    });
}

/// The client's limit on responses: the caller gets `Error::Server` for that call alone.
#[test]
fn response_above_client_max_frame_len_becomes_server_error() {
    run(|| {
        let server = Server::builder()
            .workers(1)
            .handler(|_: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
                let n: usize = std::str::from_utf8(req).unwrap().parse().unwrap();
                resp.resize(n, b'r');
                Ok(())
            })
            .bind("127.0.0.1:0")
            .unwrap();
        let client = Client::builder(server.local_addr())
            .max_frame_len(1000)
            .connect()
            .unwrap();
        assert_eq!(client.call(b"1000").unwrap().len(), 1000);
        match client.call(b"2000") {
            Err(Error::Server(text)) => {
                assert_eq!(
                    text,
                    "response of 2000 bytes exceeds the frame limit of 1000"
                )
            }
            other => panic!("expected Error::Server, got {other:?}"),
        }
        assert_eq!(client.stats().errors.connection_lost, 0);
        assert_eq!(
            client.call(b"10").unwrap().len(),
            10,
            "the connection stays up"
        );
    });
}

/// A server that breaks the protocol after the hello loses its connection: the call on it
/// fails with `ConnectionLost` naming the protocol error, and the client redials.
#[test]
fn client_drops_a_connection_that_breaks_the_protocol_and_redials() {
    run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Reads the client's hello and answers with a plain hello; returns the first request
        // frame's id and payload.
        fn open_and_read_request(s: &mut TcpStream) -> (u32, Vec<u8>) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut hello = [0u8; 11];
            s.read_exact(&mut hello).unwrap();
            assert_eq!(&hello[..4], b"BRPC");
            // Version 1, no compression, no TLS, frames up to 64 KiB.
            s.write_all(b"BRPC\x01\x00\x00\x00\x00\x01\x00").unwrap();
            let mut header = [0u8; 9];
            s.read_exact(&mut header).unwrap();
            assert_eq!(header[4], 0, "a request");
            let id = u32::from_le_bytes(header[..4].try_into().unwrap());
            let len = u32::from_le_bytes(header[5..].try_into().unwrap());
            let mut payload = vec![0u8; len as usize];
            s.read_exact(&mut payload).unwrap();
            (id, payload)
        }
        fn frame(id: u32, kind: u8, payload: &[u8]) -> Vec<u8> {
            let mut f = id.to_le_bytes().to_vec();
            f.push(kind);
            f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            f.extend_from_slice(payload);
            f
        }
        let fake = std::thread::spawn(move || {
            // First connection: a response nobody asked for, then a frame of unknown kind.
            let (mut s, _) = listener.accept().unwrap();
            let (id, _) = open_and_read_request(&mut s);
            let mut bad = frame(id.wrapping_add(12345), 2, b"unasked");
            bad.extend(frame(id, 0xee, b"??"));
            s.write_all(&bad).unwrap();
            let _ = s.read(&mut [0u8; 64]); // until the client closes
                                            // Second connection: a proper echo of one call.
            let (mut s, _) = listener.accept().unwrap();
            let (id, payload) = open_and_read_request(&mut s);
            s.write_all(&frame(id, 2, &payload)).unwrap();
            let _ = s.read(&mut [0u8; 64]);
        });
        let client = Client::builder(addr)
            .reconnect_backoff(Duration::from_millis(5), Duration::from_millis(50))
            .connect()
            .unwrap();
        match client.call(b"first") {
            Err(e @ Error::ConnectionLost(_)) => assert!(
                matches!(
                    e.root_cause(),
                    Error::Protocol(ProtocolError::Frame(FrameError::UnknownKind(0xee)))
                ),
                "{e:?}"
            ),
            other => panic!("expected ConnectionLost, got {other:?}"),
        }
        assert_eq!(&*client.call(b"second").unwrap(), b"second");
        let s = client.stats();
        assert_eq!(s.dials, 2);
        assert_eq!(s.errors.protocol, 1);
        assert_eq!(s.errors.connection_lost, 1);
        assert_eq!(s.errors.stale_responses, 1);
        drop(client);
        fake.join().unwrap();
    });
}

/// A request within the client's limit but above the server's (which the server announced in
/// its hello) fails alone with `TooLarge`, before anything is written; the connection stays.
#[test]
fn request_above_server_max_frame_len_fails_alone() {
    run(|| {
        let server = support::echo_builder()
            .max_frame_len(1000)
            .bind("127.0.0.1:0")
            .unwrap();
        let client = Client::builder(server.local_addr()).connect().unwrap();
        match client.call(&[0u8; 1001]) {
            Err(Error::TooLarge {
                len: 1001,
                max: 1000,
            }) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(client.call(&[7u8; 1000]).unwrap().len(), 1000);
        let (c, s) = (client.stats(), server.stats());
        assert_eq!(
            (c.errors.too_large, c.errors.connection_lost, c.dials),
            (1, 0, 1)
        );
        assert_eq!((s.errors.protocol, s.accepts, s.calls), (0, 1, 1));
    });
}

// ----- close, drop, cancel -------------------------------------------------------------------

#[test]
fn close_fails_pending_and_later_calls_with_closed() {
    run(|| {
        let gate = Gate::new();
        let server = gated_server(&gate, 1);
        let _open = OpenOnDrop(gate.clone());
        let client = client_of(&server);
        let other_handle = client.clone();
        let held: Vec<_> = (0..3)
            .map(|i| client.call_async(format!("hold-{i}").as_bytes()).unwrap())
            .collect();
        let mut polled = client.call_async(b"hold-polled").unwrap();
        client.close();
        for p in held {
            assert!(matches!(p.wait(), Err(Error::Closed)));
        }
        support::wait_done(&polled, WAIT);
        assert!(matches!(polled.try_wait(), Some(Err(Error::Closed))));
        assert!(polled.try_wait().is_none());
        assert!(matches!(client.call(b"later"), Err(Error::Closed)));
        assert!(matches!(client.call_async(b"later"), Err(Error::Closed)));
        assert!(matches!(client.send(b"later"), Err(Error::Closed)));
        assert!(matches!(client.batch().add(b"later"), Err(Error::Closed)));
        assert!(matches!(other_handle.call(b"later"), Err(Error::Closed)));
        client.close(); // twice is harmless
        assert_eq!(client.pending_requests(), 0);
        assert_eq!(client.stats().errors.closed, 9);
        wait_until(WAIT, "the client to close its connection", || {
            client.stats().open_connections == 0
        });
    });
}

/// `close()` racing with callers on other threads: every call they made completes once,
/// with its own response or `Closed`, and they all stop.
#[test]
fn close_racing_with_callers_completes_every_call_once() {
    run(|| {
        let server = echo_server();
        let client = client_of(&server);
        let ok = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let (client, ok) = (client.clone(), ok.clone());
                std::thread::spawn(move || {
                    let (mut made, mut closed) = (0u64, 0u64);
                    for round in 0u32.. {
                        let reqs: Vec<Vec<u8>> = (0..10u32)
                            .map(|i| [t, round, i].map(u32::to_le_bytes).concat())
                            .collect();
                        let mut window = Vec::new();
                        for r in &reqs {
                            match client.call_async(r) {
                                Ok(p) => window.push((r, p)),
                                Err(Error::Closed) => closed += 1,
                                Err(e) => panic!("submission failed with {e:?}"),
                            }
                        }
                        made += window.len() as u64;
                        for (r, p) in window {
                            match p.wait() {
                                Ok(resp) => {
                                    assert!(*resp == r[..], "cross-delivery");
                                    ok.fetch_add(1, Ordering::SeqCst);
                                }
                                Err(Error::Closed) => closed += 1,
                                Err(e) => panic!("call failed with {e:?}"),
                            }
                        }
                        if closed > 0 {
                            return made;
                        }
                    }
                    unreachable!()
                })
            })
            .collect();
        wait_until(WAIT, "calls to flow", || ok.load(Ordering::SeqCst) >= 500);
        client.close();
        let made: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        let s = client.stats();
        assert_eq!(s.calls, ok.load(Ordering::SeqCst));
        assert!(made >= s.calls);
        assert_eq!(client.pending_requests(), 0);
        assert!(matches!(client.call(b"after"), Err(Error::Closed)));
    });
}

#[test]
fn dropping_the_last_client_fails_pending_calls_with_closed() {
    run(|| {
        let gate = Gate::new();
        let server = gated_server(&gate, 1);
        let _open = OpenOnDrop(gate.clone());
        let client = client_of(&server);
        let held: Vec<_> = (0..5)
            .map(|i| client.call_async(format!("hold-{i}").as_bytes()).unwrap())
            .collect();
        let clone = client.clone();
        drop(client);
        assert!(!held[0].is_done(), "a clone still holds the client open");
        drop(clone);
        for p in held {
            assert!(matches!(p.wait(), Err(Error::Closed)));
        }
        // The server sees the connection go.
        wait_until(WAIT, "the server to see the client leave", || {
            server.stats().open_connections == 0
        });
    });
}

#[test]
fn dropping_a_pending_call_cancels_it() {
    run(|| {
        let gate = Gate::new();
        let server = gated_server(&gate, 1);
        let _open = OpenOnDrop(gate.clone());
        let client = client_of(&server);
        let pending = client.call_async(b"hold-dropped").unwrap();
        drop(pending);
        // The reactor still owns the call until its response (or deadline) comes.
        assert_eq!(client.pending_requests(), 1);
        gate.open();
        wait_until(WAIT, "the canceled call's slot to be recycled", || {
            client.pending_requests() == 0
        });
        // Dropping a completed call that was never taken recycles it too.
        let done = client.call_async(b"done").unwrap();
        support::wait_done(&done, WAIT);
        assert_eq!(client.pending_requests(), 1);
        drop(done);
        assert_eq!(client.pending_requests(), 0);
        assert_eq!(&*client.call(b"still fine").unwrap(), b"still fine");
        assert_eq!(client.stats().errors.stale_responses, 0);
    });
}

// ----- peers that are not there, or not batchrpc ---------------------------------------------

#[test]
fn connect_to_nothing_is_a_connect_error_naming_the_address() {
    run(|| {
        let addr = support::free_tcp_addr();
        let started = Instant::now();
        let err = Client::builder(addr)
            .handshake_timeout(Duration::from_secs(1))
            .connect()
            .expect_err("nothing listens there");
        assert!(started.elapsed() < Duration::from_secs(3));
        match &err {
            Error::Connect { addr: a, cause } => {
                assert_eq!(a, &addr.to_string());
                assert_eq!(cause.kind(), ErrorKind::ConnectionRefused);
            }
            other => panic!("expected Connect, got {other:?}"),
        }
        let text = err.to_string();
        assert!(text.contains(&addr.to_string()), "{text}");
    });
}

#[test]
fn connect_to_a_non_batchrpc_server_fails_the_handshake() {
    run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // A polite HTTP server: reads what the client says, answers 400, and closes.
        let fake = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf);
            s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
            let _ = s.shutdown(Shutdown::Write);
            let _ = s.read(&mut buf);
        });
        let handshake_timeout = Duration::from_secs(1);
        let started = Instant::now();
        let err = Client::builder(addr)
            .handshake_timeout(handshake_timeout)
            .connect()
            .expect_err("not a batchrpc server");
        assert!(
            started.elapsed() < handshake_timeout + Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
        assert!(
            matches!(
                err,
                Error::Protocol(ProtocolError::Handshake(HandshakeError::BadMagic))
            ),
            "expected a BadMagic handshake error, got {err:?}"
        );
        fake.join().unwrap();
    });
}

#[test]
fn a_silent_server_times_the_handshake_out() {
    run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let timeout = Duration::from_millis(300);
        let started = Instant::now();
        // The kernel completes the TCP handshake from the backlog; nobody ever answers.
        let err = Client::builder(addr)
            .handshake_timeout(timeout)
            .connect()
            .expect_err("nobody answers");
        let took = started.elapsed();
        assert!(took >= timeout, "{took:?}");
        assert!(took < timeout + Duration::from_secs(1), "{took:?}");
        assert!(
            matches!(
                err,
                Error::Protocol(ProtocolError::Handshake(HandshakeError::Timeout))
            ),
            "{err:?}"
        );
        drop(listener);
    });
}

#[test]
fn server_closes_a_peer_sending_garbage_and_keeps_serving() {
    run(|| {
        let server = echo_server();
        let client = client_of(&server);
        assert_eq!(&*client.call(b"before").unwrap(), b"before");

        let addr = server.local_addr().as_tcp().unwrap();
        let mut raw = TcpStream::connect(addr).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 64];
        match raw.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("server answered garbage with {:?}", &buf[..n]),
            Err(e) => assert!(
                !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "server did not close the connection within 2 s"
            ),
        }
        wait_until(WAIT, "the server to count the bad peer", || {
            server.stats().errors.protocol == 1
        });
        let ss = server.stats();
        assert_eq!(ss.accepts, 2);
        assert_eq!(ss.accept_errors, 1);
        assert_eq!(ss.errors.protocol, 1);
        assert_eq!(ss.open_connections, 1);
        assert_eq!(&*client.call(b"after").unwrap(), b"after");
    });
}

#[test]
fn server_times_out_a_silent_peer() {
    run(|| {
        let server = support::echo_builder()
            .handshake_timeout(Duration::from_millis(200))
            .bind("127.0.0.1:0")
            .unwrap();
        let addr = server.local_addr().as_tcp().unwrap();
        // The server's clock starts at accept, which is after this.
        let started = Instant::now();
        let mut raw = TcpStream::connect(addr).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 64];
        match raw.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("server said {:?} to a silent peer", &buf[..n]),
            Err(e) => assert!(
                !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "server did not close the silent connection"
            ),
        }
        assert!(started.elapsed() >= Duration::from_millis(200));
        wait_until(WAIT, "the server to count the timeout", || {
            server.stats().open_connections == 0
        });
        let ss = server.stats();
        println!(
            "silent peer: accept_errors {} protocol {}",
            ss.accept_errors, ss.errors.protocol
        );
        assert_eq!(ss.errors.protocol, 1);
        assert_eq!(ss.accept_errors, 1);
    });
}

/// A hello with the right magic but a version or compression this side does not know: the
/// server tells such a peer nothing and closes (see `wire::handshake`).
#[test]
fn server_closes_bad_hellos_without_answering() {
    run(|| {
        let server = echo_server();
        let addr = server.local_addr().as_tcp().unwrap();
        for (n, hello) in [
            &b"BRPC\x02\x00\x00"[..],
            b"BRPC\x01\xc8\x00",
            b"BRPC\x01\x00\x07",
        ]
        .into_iter()
        .enumerate()
        {
            let mut raw = TcpStream::connect(addr).unwrap();
            raw.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            raw.write_all(hello).unwrap();
            let mut buf = [0u8; 64];
            match raw.read(&mut buf) {
                Ok(0) => {}
                Ok(k) => panic!("hello {hello:?} was answered with {:?}", &buf[..k]),
                Err(e) => assert!(
                    !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                    "hello {hello:?}: the server kept the connection open"
                ),
            }
            wait_until(WAIT, "the server to count the bad hello", || {
                server.stats().errors.protocol == n as u64 + 1
            });
        }
        let ss = server.stats();
        assert_eq!(
            (ss.accepts, ss.accept_errors, ss.open_connections),
            (3, 3, 0)
        );
    });
}

/// A call made before the handshake told the client the server's limit (a reactor driven by
/// hand, polled only afterwards) is still refused alone when it meets the connection.
#[test]
fn request_above_the_limit_learned_at_the_handshake_fails_alone() {
    run(|| {
        let mut reactor = batchrpc::Reactor::new().unwrap();
        let server = support::echo_builder()
            .workers(0)
            .max_frame_len(1000)
            .bind_on(&mut reactor, "127.0.0.1:0")
            .unwrap();
        let client = Client::builder(server.local_addr())
            .connect_on(&mut reactor)
            .unwrap();
        let big = client.call_async(&[1u8; 2000]).unwrap();
        let small = client.call_async(b"small").unwrap();
        let deadline = Instant::now() + WAIT;
        while !(big.is_done() && small.is_done()) {
            assert!(Instant::now() < deadline, "calls did not complete");
            reactor.poll_once(Some(Duration::from_millis(10))).unwrap();
        }
        assert!(matches!(
            big.wait(),
            Err(Error::TooLarge {
                len: 2000,
                max: 1000
            })
        ));
        assert_eq!(&*small.wait().unwrap(), b"small");
        let (c, s) = (client.stats(), server.stats());
        assert_eq!(
            (c.errors.too_large, c.errors.connection_lost, c.dials),
            (1, 0, 1)
        );
        assert_eq!(s.errors.protocol, 0);
    });
}
