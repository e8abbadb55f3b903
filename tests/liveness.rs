//! Dead peers and idle ones, over real sockets: the client's keepalive finds a path that died
//! silently and redials, the server's idle timeout reaps silent and trickling peers but never
//! a live idle client, and a client that half-closes gets every answer, then the close.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use batchrpc::wire::frame::{self, FrameKind};
use batchrpc::wire::handshake::{Hello, HELLO_LEN};
use batchrpc::wire::liveness::LivenessError;
use batchrpc::wire::ProtocolError;
use batchrpc::{Client, Compression, Error, RequestCtx, Server};
use support::proxy::Proxy;
use support::{echo_builder, run, wait_until};

const KEEPALIVE: Duration = Duration::from_millis(200);
const IDLE: Duration = Duration::from_millis(500);
/// Room for scheduling noise on a loaded machine, on top of the bound under test.
const SLACK: Duration = Duration::from_millis(1500);

/// An error and its causes, as a log line would print them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text += &format!(": {c}");
        cause = c.source();
    }
    text
}

fn is_keepalive_loss(e: &Error) -> bool {
    match e {
        Error::ConnectionLost(cause) => matches!(
            &**cause,
            Error::Protocol(ProtocolError::Liveness(LivenessError::KeepaliveTimeout { silent }))
                if *silent == 2 * KEEPALIVE
        ),
        _ => false,
    }
}

#[test]
fn a_path_that_dies_silently_is_found_by_the_keepalive_and_reaped_by_the_idle_timeout() {
    run(|| {
        let server = echo_builder()
            .idle_timeout(IDLE)
            .bind("127.0.0.1:0")
            .unwrap();
        let proxy = Proxy::start(server.local_addr().as_tcp().unwrap(), 14);
        let client = Client::builder(proxy.addr())
            .keepalive(KEEPALIVE)
            .request_timeout(Duration::from_secs(20))
            .connect()
            .unwrap();
        assert_eq!(&*client.call(b"before").unwrap(), b"before");
        // Neither side hears from the other after this: the client's last byte and the
        // server's last frame came before it.
        let answered = Instant::now();
        assert_eq!(proxy.silence_existing(), 1);
        let lost: Vec<_> = (0..3)
            .map(|i| client.call_async(format!("lost {i}").as_bytes()).unwrap())
            .collect();
        for pending in lost {
            let err = pending.wait().unwrap_err();
            assert!(is_keepalive_loss(&err), "{err}");
            assert_eq!(
                chain(&err),
                "connection lost: protocol error: keepalive timeout: no data from the peer \
                 for 400ms, a ping unanswered"
            );
        }
        let failed = answered.elapsed();
        assert!(
            failed < 2 * KEEPALIVE + SLACK,
            "dead path found after {failed:?}"
        );
        // A fresh connection (the proxy passes new ones) takes the next call.
        assert_eq!(&*client.call(b"after").unwrap(), b"after");
        let recovered = answered.elapsed();
        assert!(
            recovered < 3 * KEEPALIVE + SLACK,
            "recovered after {recovered:?}"
        );
        // The server reaps the silent connection at its idle timeout.
        wait_until(
            (IDLE + SLACK).saturating_sub(answered.elapsed()),
            "the server to reap the silent connection",
            || server.stats().idle_timeouts == 1,
        );
        println!(
            "silent path: calls failed {failed:?}, a call succeeded again {recovered:?}, \
             the server reaped it {:?} after the last answer",
            answered.elapsed()
        );
        let c = client.stats();
        assert_eq!(
            (c.keepalive_timeouts, c.dials, c.errors.connection_lost),
            (1, 2, 3)
        );
        assert_eq!(c.errors.protocol, 0);
        let s = server.stats();
        assert_eq!((s.idle_timeouts, s.accepts, s.errors.protocol), (1, 2, 0));
        assert_eq!(s.open_connections, 1, "the new connection stays");
        let p = proxy.stats();
        assert_eq!((p.accepted, p.silenced), (2, 1));
        assert!(p.bytes_dropped > 0, "the lost calls went into the void");
    });
}

#[test]
fn a_live_idle_client_with_keepalive_is_never_cut_off() {
    run(|| {
        let server = echo_builder()
            .idle_timeout(IDLE)
            .bind("127.0.0.1:0")
            .unwrap();
        let client = Client::builder(server.local_addr().as_tcp().unwrap())
            .keepalive(KEEPALIVE)
            .connect()
            .unwrap();
        assert_eq!(&*client.call(b"first").unwrap(), b"first");
        // Idle on purpose, for four idle timeouts.
        std::thread::sleep(4 * IDLE);
        for i in 0..3u8 {
            assert_eq!(&*client.call(&[i]).unwrap(), &[i]);
        }
        let c = client.stats();
        assert_eq!(
            (c.dials, c.keepalive_timeouts, c.errors.connection_lost),
            (1, 0, 0)
        );
        let s = server.stats();
        assert_eq!((s.accepts, s.idle_timeouts, s.calls), (1, 0, 4));
        println!(
            "live idle client: {} frames read by the server, 4 of them calls",
            s.frames_read
        );
        // Four idle timeouts passed without a cut: pings came in between.
        assert!(s.frames_read >= 4 + 3, "{} frames read", s.frames_read);
    });
}

/// A raw connection past the hello exchange with a plaintext, uncompressed server.
fn raw_open(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&Hello::new(Compression::None, false).encode())
        .unwrap();
    let mut answer = [0; HELLO_LEN];
    s.read_exact(&mut answer).unwrap();
    s
}

#[test]
fn a_peer_trickling_bytes_after_its_hello_is_closed_at_the_idle_timeout() {
    run(|| {
        let server = echo_builder()
            .idle_timeout(IDLE)
            .bind("127.0.0.1:0")
            .unwrap();
        let mut s = raw_open(server.local_addr().as_tcp().unwrap());
        let opened = Instant::now();
        let mut request = Vec::new();
        frame::encode(&mut request, 1, FrameKind::Request, &[7; 100]);
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut sent = 0;
        let closed_after = loop {
            assert!(
                sent < request.len(),
                "the whole frame went out: not slow enough"
            );
            if s.write_all(&request[sent..sent + 1]).is_err() {
                break opened.elapsed();
            }
            sent += 1;
            match s.read(&mut [0; 16]) {
                Ok(0) => break opened.elapsed(),
                Ok(n) => panic!("{n} bytes answered to an unfinished frame"),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break opened.elapsed(), // reset
            }
        };
        println!("slowloris: {sent} bytes sent, closed {closed_after:?} after the hello");
        assert!(
            closed_after >= IDLE - Duration::from_millis(50),
            "closed after {closed_after:?}"
        );
        assert!(closed_after < IDLE + SLACK, "closed after {closed_after:?}");
        wait_until(SLACK, "the close to be counted", || {
            server.stats().idle_timeouts == 1
        });
        let stats = server.stats();
        assert_eq!(
            (stats.calls, stats.accept_errors, stats.errors.protocol),
            (0, 0, 0)
        );
        wait_until(SLACK, "the connection to be gone", || {
            server.stats().open_connections == 0
        });
    });
}

/// Reads frames from `s` until end of stream (panics on a timeout or a reset).
fn read_to_end_of_stream(s: &mut TcpStream) -> Vec<(u32, FrameKind, Vec<u8>)> {
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes)
        .expect("answers, then end of stream");
    let mut frames = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let f = frame::decode(rest, u32::MAX)
            .unwrap()
            .expect("the stream ends at a frame boundary");
        frames.push((f.id, f.kind, f.payload.to_vec()));
        rest = &rest[f.wire_len()..];
    }
    frames
}

#[test]
fn a_half_closed_client_gets_every_answer_then_the_close() {
    run(|| {
        const N: u32 = 100;
        let server = Server::builder()
            .workers(2)
            .idle_timeout(IDLE)
            .handler(|_: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
                // Slow enough that most answers are computed after the end of stream.
                std::thread::sleep(Duration::from_millis(2));
                resp.extend_from_slice(req);
                Ok(())
            })
            .bind("127.0.0.1:0")
            .unwrap();
        let mut s = raw_open(server.local_addr().as_tcp().unwrap());
        let mut requests = Vec::new();
        for id in 0..N {
            frame::encode(
                &mut requests,
                id,
                FrameKind::Request,
                format!("request {id}").as_bytes(),
            );
        }
        // And one that wants no answer.
        frame::encode(
            &mut requests,
            0,
            FrameKind::RequestNoReply,
            b"fire and forget",
        );
        s.write_all(&requests).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut frames = read_to_end_of_stream(&mut s);
        frames.sort_by_key(|f| f.0);
        let expected: Vec<_> = (0..N)
            .map(|id| {
                (
                    id,
                    FrameKind::Response,
                    format!("request {id}").into_bytes(),
                )
            })
            .collect();
        assert_eq!(frames, expected);
        let stats = server.stats();
        assert_eq!(
            (stats.calls, stats.idle_timeouts, stats.errors.protocol),
            (u64::from(N) + 1, 0, 0)
        );
        wait_until(SLACK, "the connection to be gone", || {
            server.stats().open_connections == 0
        });
    });
}

#[test]
fn a_half_closed_client_that_never_reads_is_closed_at_the_idle_timeout() {
    run(|| {
        let server = Server::builder()
            .workers(2)
            .idle_timeout(IDLE)
            .handler(|_: &RequestCtx, _: &[u8], resp: &mut Vec<u8>| {
                resp.resize(64 << 10, b'x');
                Ok(())
            })
            .bind("127.0.0.1:0")
            .unwrap();
        let mut s = raw_open(server.local_addr().as_tcp().unwrap());
        let mut requests = Vec::new();
        for id in 0..400 {
            frame::encode(&mut requests, id, FrameKind::Request, b"big");
        }
        s.write_all(&requests).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let start = Instant::now();
        // 25 MiB of answers, far more than the socket buffers hold: the server cannot finish.
        wait_until(
            IDLE + SLACK,
            "the idle timeout to close the connection",
            || server.stats().idle_timeouts == 1,
        );
        let closed = start.elapsed();
        println!("half-closed peer that never reads: closed {closed:?} after its end of stream");
        assert!(closed >= IDLE - Duration::from_millis(50), "{closed:?}");
        wait_until(SLACK, "the connection to be gone", || {
            server.stats().open_connections == 0
        });
        drop(s);
    });
}
