//! The server goes away and comes back on the same address: calls in flight fail with
//! `ConnectionLost`, calls made meanwhile wait for the redial (or time out), and under load
//! every call still completes exactly once with its own response.

mod support;

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use batchrpc::{Client, Error, RequestCtx, Server, ServerBuilder};
use support::{bind_retrying, echo_builder, free_tcp_addr, run, wait_until, Gate, OpenOnDrop};

const WAIT: Duration = Duration::from_secs(10);

/// Waits until nothing accepts connections on `addr` any more (the listener is closed).
fn wait_until_refused(addr: SocketAddr) {
    wait_until(WAIT, "the old listener to close", || {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Err(e) => e.kind() == ErrorKind::ConnectionRefused,
            Ok(_probe) => false, // accepted by the old server; dropped at once
        }
    });
}

fn reconnecting_client(addr: SocketAddr) -> Client {
    Client::builder(addr)
        .reconnect_backoff(Duration::from_millis(5), Duration::from_millis(50))
        .request_timeout(Duration::from_secs(10))
        .connect()
        .unwrap()
}

#[test]
fn calls_in_flight_at_loss_fail_and_calls_made_while_down_succeed_after_restart() {
    run(|| {
        let addr = free_tcp_addr();
        let gate = Gate::new();
        let inside = support::Occupancy::default();
        let (g, occ) = (gate.clone(), inside.clone());
        let held_server = move || -> ServerBuilder {
            let (g, occ) = (g.clone(), occ.clone());
            Server::builder().workers(1).handler(
                move |_: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
                    if req.starts_with(b"hold") {
                        occ.enter();
                        g.wait();
                        occ.exit();
                    }
                    resp.extend_from_slice(req);
                    Ok(())
                },
            )
        };
        let server = bind_retrying(addr, &held_server);
        let _open = OpenOnDrop(gate.clone());
        let client = reconnecting_client(addr);

        // `held` is being handled when the shutdown starts: it is answered.
        let held = client.call_async(b"hold-1").unwrap();
        wait_until(WAIT, "the handler to hold the call", || {
            inside.entered() == 1
        });
        let stopping = std::thread::spawn(move || {
            server.shutdown();
            server
        });
        wait_until_refused(addr);
        // `late` reaches the draining connection, which reads nothing more: it is lost.
        let late = client.call_async(b"late").unwrap();
        wait_until(WAIT, "the late request to be written", || {
            client.stats().frames_written == 2
        });
        gate.open();
        assert_eq!(&*held.wait().unwrap(), b"hold-1");
        match late.wait() {
            Err(e @ Error::ConnectionLost(_)) => match e.root_cause() {
                Error::Io(io) => assert!(
                    matches!(
                        io.kind(),
                        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
                    ),
                    "{e:?}"
                ),
                other => panic!("lost for an unexpected cause: {other:?}"),
            },
            other => panic!("expected ConnectionLost, got {other:?}"),
        }
        let old = stopping.join().unwrap();
        assert_eq!(old.stats().open_connections, 0);
        assert_eq!(old.stats().calls, 1);
        drop(old);

        // While nothing listens: a call whose deadline outlives the restart waits for it.
        let waiting = client
            .call_async_timeout(b"while down", Duration::from_secs(10))
            .unwrap();
        wait_until(WAIT, "a failed redial", || client.stats().dial_errors >= 1);
        assert!(!waiting.is_done());
        let server = bind_retrying(addr, echo_builder);
        assert_eq!(&*waiting.wait().unwrap(), b"while down");
        assert_eq!(&*client.call(b"after").unwrap(), b"after");

        let s = client.stats();
        assert!(s.dials >= 2, "dials {}", s.dials);
        assert_eq!(s.errors.connection_lost, 1);
        assert_eq!(s.calls, 3);
        assert_eq!(client.pending_requests(), 0);
        assert_eq!(server.stats().calls, 2);
    });
}

#[test]
fn a_call_whose_deadline_passes_while_disconnected_times_out() {
    run(|| {
        let addr = free_tcp_addr();
        let server = bind_retrying(addr, echo_builder);
        let client = reconnecting_client(addr);
        assert_eq!(&*client.call(b"up").unwrap(), b"up");
        drop(server);
        wait_until(WAIT, "the client to see the connection go", || {
            client.stats().open_connections == 0
        });

        let timeout = Duration::from_millis(200);
        let started = Instant::now();
        let outcome = client.call_timeout(b"nobody there", timeout);
        let took = started.elapsed();
        assert!(
            matches!(outcome, Err(Error::Timeout)),
            "expected Timeout, got {outcome:?}"
        );
        assert!(took >= timeout, "{took:?}");
        assert!(took < timeout + Duration::from_secs(1), "{took:?}");

        // A send while disconnected waits for a connection too; then it goes out.
        let server = bind_retrying(addr, echo_builder);
        assert_eq!(&*client.call(b"back").unwrap(), b"back");
        let s = client.stats();
        assert_eq!((s.calls, s.errors.timeout), (2, 1));
        assert!(s.dials >= 2);
        drop(client);
        drop(server);
    });
}

/// What the load thread saw.
#[derive(Default, Debug)]
struct Tally {
    made: u64,
    ok: u64,
    lost: u64,
    timeout: u64,
    /// Responses that were not the call's own request.
    mismatched: Vec<(u64, Vec<u8>)>,
    /// Errors of any other kind.
    unexpected: Vec<String>,
    /// Completions per call number (each must be exactly 1).
    completions: HashMap<u64, u32>,
}

#[test]
fn three_restarts_under_load_every_call_completes_once_with_its_own_response() {
    run(|| {
        let addr = free_tcp_addr();
        let mut server = bind_retrying(addr, echo_builder);
        let client = Client::builder(addr)
            .reconnect_backoff(Duration::from_millis(5), Duration::from_millis(50))
            .request_timeout(Duration::from_secs(8))
            .connect()
            .unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let ok_so_far = Arc::new(AtomicU64::new(0));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let load = {
            let (client, stop, ok_so_far, tally) = (
                client.clone(),
                stop.clone(),
                ok_so_far.clone(),
                tally.clone(),
            );
            std::thread::spawn(move || {
                let mut seq = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let window: Vec<_> = (0..8)
                        .map(|_| {
                            seq += 1;
                            let req = format!("call-{seq}-{}", "x".repeat((seq % 50) as usize));
                            let p = client.call_async(req.as_bytes()).unwrap();
                            (seq, req, p)
                        })
                        .collect();
                    let mut t = tally.lock().unwrap();
                    for (n, req, p) in window {
                        t.made += 1;
                        *t.completions.entry(n).or_default() += 1;
                        match p.wait() {
                            Ok(resp) if *resp == *req.as_bytes() => {
                                t.ok += 1;
                                ok_so_far.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(resp) => t.mismatched.push((n, resp.to_vec())),
                            Err(Error::ConnectionLost(_)) => t.lost += 1,
                            Err(Error::Timeout) => t.timeout += 1,
                            Err(e) => t.unexpected.push(format!("{e:?}")),
                        }
                    }
                    drop(t);
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };

        for round in 0..3 {
            let before = ok_so_far.load(Ordering::SeqCst);
            wait_until(WAIT, "calls to succeed on the current server", || {
                ok_so_far.load(Ordering::SeqCst) >= before + 50
            });
            println!("round {round}: restarting after {} good calls", before + 50);
            drop(server);
            server = bind_retrying(addr, echo_builder);
        }
        let before = ok_so_far.load(Ordering::SeqCst);
        wait_until(WAIT, "calls to succeed after the last restart", || {
            ok_so_far.load(Ordering::SeqCst) >= before + 50
        });
        stop.store(true, Ordering::SeqCst);
        load.join().unwrap();

        let t = tally.lock().unwrap();
        println!(
            "made {} ok {} lost {} timeout {}",
            t.made, t.ok, t.lost, t.timeout
        );
        assert!(
            t.mismatched.is_empty(),
            "cross-delivered: {:?}",
            t.mismatched
        );
        assert!(
            t.unexpected.is_empty(),
            "unexpected errors: {:?}",
            t.unexpected
        );
        assert_eq!(t.made, t.ok + t.lost + t.timeout);
        assert_eq!(t.completions.len() as u64, t.made);
        assert!(t.completions.values().all(|&n| n == 1));
        let s = client.stats();
        assert!(s.dials >= 4, "dials {}", s.dials);
        assert_eq!(s.calls, t.ok);
        assert_eq!(s.errors.connection_lost, t.lost);
        assert_eq!(s.errors.timeout, t.timeout);
        assert_eq!(client.pending_requests(), 0);
    });
}
