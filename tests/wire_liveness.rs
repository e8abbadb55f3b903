//! The keepalive and idle clocks of the sans-IO connection, with time passed in: pings go out
//! after a quiet period and are answered at once, a silent server fails the keepalive after two
//! periods, and the idle timeout counts whole frames and waits for the answers it owes.

use std::time::{Duration, Instant};

use batchrpc::wire::conn::{Conn, ConnConfig, Profile, Role, State};
use batchrpc::wire::fastrpc::FastrpcSettings;
use batchrpc::wire::frame::{self, FrameKind};
use batchrpc::wire::liveness::LivenessError;
use batchrpc::wire::ProtocolError;
use batchrpc::Compression;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Everything `conn` has to write at `now`, reported as written.
fn transmit(conn: &mut Conn, now: Instant) -> Vec<u8> {
    let mut written = Vec::new();
    while let Some(bytes) = conn.poll_transmit(now) {
        written.extend_from_slice(bytes);
        let n = bytes.len();
        conn.handle_sent(n);
    }
    written
}

fn feed(conn: &mut Conn, mut bytes: &[u8]) {
    while !bytes.is_empty() && conn.state() != State::Closed {
        let room = conn.recv_buf();
        let n = room.len().min(bytes.len());
        room[..n].copy_from_slice(&bytes[..n]);
        conn.handle_recv(n);
        bytes = &bytes[n..];
    }
}

/// The frames `conn` hands its owner now (ids and kinds).
fn receive(conn: &mut Conn) -> Vec<(u32, FrameKind)> {
    let mut frames = Vec::new();
    while let Some(f) = conn.poll_frame().expect("no protocol error") {
        frames.push((f.id, f.kind));
    }
    frames
}

fn frame_bytes(id: u32, kind: FrameKind) -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode(&mut out, id, kind, b"");
    out
}

struct Pair {
    client: Conn,
    server: Conn,
    now: Instant,
}

impl Pair {
    /// A pair past the hello exchange at `now`, its clocks started.
    fn open(client: ConnConfig, server: ConnConfig) -> Pair {
        let now = Instant::now();
        let mut p = Pair {
            client: Conn::new(client, now),
            server: Conn::new(server, now),
            now,
        };
        p.client_to_server();
        p.server_to_client();
        assert_eq!(
            (p.client.state(), p.server.state()),
            (State::Open, State::Open)
        );
        p.client.handle_progress(now);
        p.server.handle_progress(now);
        p
    }

    fn client_to_server(&mut self) -> Vec<u8> {
        let bytes = transmit(&mut self.client, self.now);
        feed(&mut self.server, &bytes);
        bytes
    }

    fn server_to_client(&mut self) -> Vec<u8> {
        let bytes = transmit(&mut self.server, self.now);
        feed(&mut self.client, &bytes);
        bytes
    }
}

fn client(compression: Compression) -> ConnConfig {
    ConnConfig {
        compression,
        keepalive: Some(ms(100)),
        ..ConnConfig::new(Role::Client)
    }
}

fn server(compression: Compression) -> ConnConfig {
    ConnConfig {
        compression,
        keepalive: Some(ms(50)), // a server never pings
        idle_timeout: Some(ms(300)),
        ..ConnConfig::new(Role::Server)
    }
}

fn compressions() -> impl Iterator<Item = Compression> {
    [Compression::None, Compression::Flate, Compression::Snappy]
        .into_iter()
        .filter(|c| c.is_available())
}

#[test]
fn keepalive_pings_are_answered_at_once_and_kept_from_the_owners() {
    for c in compressions() {
        let mut p = Pair::open(client(c), server(c));
        let t0 = p.now;
        assert_eq!(p.client.next_deadline(), Some(t0 + ms(100)), "{c}");
        assert_eq!(p.server.next_deadline(), Some(t0 + ms(300)), "{c}");
        p.client.handle_timeout(t0 + ms(99));
        assert!(p.client.is_flushed(), "{c}: no ping before the period");
        p.now = t0 + ms(100);
        p.client.handle_timeout(p.now);
        let ping = p.client_to_server();
        if c == Compression::None {
            assert_eq!(ping, frame_bytes(0, FrameKind::Ping));
        }
        assert_eq!(receive(&mut p.server), [], "{c}: not the owner's business");
        p.server.handle_progress(p.now);
        assert_eq!(p.server.next_deadline(), Some(p.now + ms(300)), "{c}");
        let pong = p.server_to_client();
        if c == Compression::None {
            assert_eq!(pong, frame_bytes(0, FrameKind::Pong));
        }
        assert_eq!(receive(&mut p.client), [], "{c}");
        p.client.handle_progress(p.now);
        assert_eq!(p.client.next_deadline(), Some(p.now + ms(100)), "{c}");
        assert_eq!(p.client.counters().frames_in, 1);
        assert_eq!(p.server.counters().frames_in, 1);
        assert_eq!(
            (p.client.state(), p.server.state()),
            (State::Open, State::Open)
        );
    }
}

#[test]
fn a_silent_server_fails_the_keepalive_after_two_periods() {
    let mut p = Pair::open(client(Compression::None), server(Compression::None));
    let t0 = p.now;
    p.client.handle_timeout(t0 + ms(100));
    assert!(!p.client.is_flushed(), "ping queued");
    transmit(&mut p.client, t0 + ms(100)); // lost on the way
    assert_eq!(p.client.next_deadline(), Some(t0 + ms(200)));
    p.client.handle_timeout(t0 + ms(199));
    assert_eq!(p.client.state(), State::Open);
    p.client.handle_timeout(t0 + ms(200));
    assert_eq!(p.client.state(), State::Closed);
    assert_eq!(
        p.client.close_reason(),
        Some(&Err(ProtocolError::Liveness(
            LivenessError::KeepaliveTimeout { silent: ms(200) }
        )))
    );
}

#[test]
fn the_idle_timeout_counts_whole_frames_and_waits_for_the_answers() {
    let mut p = Pair::open(client(Compression::None), server(Compression::None));
    let t0 = p.now;
    // A request: the clock waits while it is owed an answer.
    p.client.send_frame(1, FrameKind::Request, b"q");
    p.client_to_server();
    assert_eq!(receive(&mut p.server), [(1, FrameKind::Request)]);
    p.server.handle_progress(t0 + ms(10));
    assert_eq!(p.server.next_deadline(), None);
    p.server.handle_timeout(t0 + ms(5_000));
    assert_eq!(p.server.state(), State::Open);
    p.server.send_frame(1, FrameKind::Response, b"a");
    transmit(&mut p.server, t0 + ms(5_000));
    assert_eq!(p.server.next_deadline(), Some(t0 + ms(5_300)));
    // A trickle of bytes that never makes a frame does not count.
    let mut request = Vec::new();
    frame::encode(&mut request, 2, FrameKind::Request, b"slow");
    feed(&mut p.server, &request[..5]);
    p.server.handle_progress(t0 + ms(5_200));
    assert_eq!(receive(&mut p.server), []);
    assert_eq!(p.server.next_deadline(), Some(t0 + ms(5_300)));
    p.server.handle_timeout(t0 + ms(5_299));
    assert_eq!(p.server.state(), State::Open);
    p.server.handle_timeout(t0 + ms(5_300));
    assert_eq!(
        p.server.close_reason(),
        Some(&Err(ProtocolError::Liveness(LivenessError::IdleTimeout {
            idle: ms(300)
        })))
    );
}

#[test]
fn a_client_that_pings_is_never_idle_at_the_server() {
    let mut p = Pair::open(client(Compression::None), server(Compression::None));
    for _ in 0..20 {
        // Each quiet period: a ping, its pong; the server's idle clock restarts each time.
        p.now += ms(100);
        p.client.handle_timeout(p.now);
        p.server.handle_timeout(p.now);
        p.client_to_server();
        assert_eq!(receive(&mut p.server), []);
        p.server.handle_progress(p.now);
        p.server_to_client();
        assert_eq!(receive(&mut p.client), []);
        p.client.handle_progress(p.now);
    }
    assert_eq!(
        (p.client.state(), p.server.state()),
        (State::Open, State::Open)
    );
    assert_eq!(p.server.counters().frames_in, 20);
}

#[test]
fn fastrpc_clients_never_ping_and_its_servers_keep_the_idle_timeout() {
    let fastrpc = |role| ConnConfig {
        keepalive: Some(ms(100)),
        idle_timeout: (role == Role::Server).then_some(ms(300)),
        profile: Profile::Fastrpc(FastrpcSettings::default()),
        ..ConnConfig::new(role)
    };
    let mut p = Pair::open(fastrpc(Role::Client), fastrpc(Role::Server));
    assert_eq!(p.client.next_deadline(), None);
    p.client.handle_timeout(p.now + ms(1_000));
    assert!(p.client.is_flushed());
    assert_eq!(p.client.state(), State::Open);
    assert_eq!(p.server.next_deadline(), Some(p.now + ms(300)));
    p.server.handle_timeout(p.now + ms(300));
    assert_eq!(
        p.server.close_reason(),
        Some(&Err(ProtocolError::Liveness(LivenessError::IdleTimeout {
            idle: ms(300)
        })))
    );
}
