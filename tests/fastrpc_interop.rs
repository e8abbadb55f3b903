//! The fastrpc profile against fake Go peers over real loopback TCP.
//!
//! A test-side peer (plain `std::net` sockets on a thread, every read under a deadline) plays
//! the Go side of a scenario captured in `tests/data/fastrpc/`: it writes exactly the bytes Go
//! wrote and checks what ours writes back, against the captures and the rules of
//! `docs/fastrpc-wire.md`.
//!
//! - Our [`fastrpc::Server`] against a fake Go client (scenarios 01 to 06).
//! - Our [`fastrpc::Client`] against a fake Go server (scenarios 01 to 06).
//! - The handshake failures (07a, 07b, 07c, an unknown compression byte), both ways.
//! - The frame rules: stale response ids, the 1 MiB field limit both ways, handler errors.
//!
//! Compressed output of ours is compared after decompression (flate2 and snap need not write
//! Go's bytes); uncompressed output byte for byte.

mod support;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use batchrpc::fastrpc::{self, MAX_FIELD_LEN};
use batchrpc::wire::compress::{Compression, Decoder};
use batchrpc::wire::fastrpc::{decode_request, decode_response, encode_request, encode_response};
use batchrpc::wire::handshake::HandshakeError;
use batchrpc::wire::ProtocolError;
use batchrpc::{Error, HandlerError, RequestCtx};
use support::go_vectors::{decode_into, decompress, load};
use support::{bounded, wait_until};

/// The longest one test may take before it is declared hung.
const LIMIT: Duration = Duration::from_secs(10);
/// How long a fake peer waits for any one thing: a connection, bytes, the end of the stream.
const PEER_WAIT: Duration = Duration::from_secs(3);
/// Timeouts of our side in the tests where they must not be what ends the exchange: well
/// above [`PEER_WAIT`], so that a close that only comes with them is told apart.
const OUR_TIMEOUT: Duration = Duration::from_secs(6);

// ----- the captures ----------------------------------------------------------------------------

/// Bytes as spaced hex, for assertion messages that show where two streams differ.
fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// [`hex`] of at most the first 48 bytes, for messages about unexpected bytes.
fn short(bytes: &[u8]) -> String {
    match bytes.len() {
        0..=48 => hex(bytes),
        n => format!("{} ... ({n} bytes)", hex(&bytes[..48])),
    }
}

/// A captured exchange and the settings of both Go sides.
#[derive(Clone, Copy, Debug)]
struct Scenario {
    name: &'static str,
    /// What the Go client compressed its requests with.
    client: Compression,
    /// What the Go server compressed its responses with.
    server: Compression,
    sniff: &'static [u8],
    version: u8,
}

impl Scenario {
    const fn new(name: &'static str, client: Compression, server: Compression) -> Scenario {
        Scenario {
            name,
            client,
            server,
            sniff: b"",
            version: 0,
        }
    }

    fn hello_len(&self) -> usize {
        self.sniff.len() + 3
    }

    /// Whether this build has both codecs (without them the scenario is skipped).
    fn available(&self) -> bool {
        self.client.is_available() && self.server.is_available()
    }

    fn c2s(&self) -> Vec<u8> {
        load(self.name, "c2s")
    }

    fn s2c(&self) -> Vec<u8> {
        load(self.name, "s2c")
    }

    /// Go's requests, in wire order.
    fn requests(&self) -> Vec<Req> {
        self.frames("c2s", self.client, Parser::request)
    }

    /// Go's responses, in wire order.
    fn responses(&self) -> Vec<Resp> {
        self.frames("s2c", self.server, Parser::response)
    }

    /// Every frame of one direction's capture, which must end on a frame boundary.
    fn frames<T>(
        &self,
        dir: &str,
        compression: Compression,
        next: fn(&mut Parser) -> Option<T>,
    ) -> Vec<T> {
        let wire = load(self.name, dir);
        let mut inbound = Parser {
            plain: decompress(compression, &wire[self.hello_len()..]),
            ..Parser::default()
        };
        let all: Vec<T> = std::iter::from_fn(|| next(&mut inbound)).collect();
        assert!(
            inbound.leftover().is_empty(),
            "{}: {dir} ends inside a frame",
            self.name
        );
        all
    }
}

const S01: Scenario = Scenario::new("01-none", Compression::None, Compression::None);
const S02: Scenario = Scenario::new("02-flate", Compression::Flate, Compression::Flate);
const S03: Scenario = Scenario::new("03-snappy", Compression::Snappy, Compression::Snappy);
const S04: Scenario = Scenario::new(
    "04-flate-to-snappy",
    Compression::Flate,
    Compression::Snappy,
);
const S05: Scenario = Scenario {
    sniff: b"abc",
    version: 7,
    ..Scenario::new("05-sniff-version", Compression::None, Compression::None)
};
const S06: Scenario = Scenario::new("06-concurrent-none", Compression::None, Compression::None);

/// A request: id, name, value, and its frame's bytes (decompressed).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Req {
    id: u32,
    name: Vec<u8>,
    value: Vec<u8>,
    frame: Vec<u8>,
}

/// A response: id, value, and its frame's bytes (decompressed).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Resp {
    id: u32,
    value: Vec<u8>,
    frame: Vec<u8>,
}

fn request_frame(id: u32, name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_request(&mut out, id, name, value).unwrap();
    out
}

fn response_frame(id: u32, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_response(&mut out, id, value).unwrap();
    out
}

/// Go's response stream of `s` cut into the batches Go flushed (one response each in these
/// sequential scenarios), as they went over the wire, with the id each one answers.
///
/// Feeding Go's exact bytes one batch per request needs the boundaries: uncompressed, the
/// frames delimit themselves; snappy chunks carry their length (the stream identifier goes
/// with the first data chunk, as Go sends it); a flate batch ends with its sync flush
/// `00 00 ff ff`. That marker could in principle occur inside compressed data, so the cut is
/// checked: each batch, decoded in turn by one decoder, must give exactly the next whole
/// response frame of the capture.
fn go_response_batches(s: &Scenario) -> Vec<(u32, Vec<u8>)> {
    let s2c = s.s2c();
    let wire = &s2c[s.hello_len()..];
    let responses = s.responses();
    let batches: Vec<Vec<u8>> = match s.server {
        Compression::None => responses.iter().map(|r| r.frame.clone()).collect(),
        Compression::Snappy => {
            let (mut batches, mut prefix, mut at) = (Vec::new(), Vec::new(), 0);
            while at < wire.len() {
                let len = u32::from_le_bytes([wire[at + 1], wire[at + 2], wire[at + 3], 0]);
                let chunk = &wire[at..at + 4 + len as usize];
                at += chunk.len();
                prefix.extend_from_slice(chunk);
                if chunk[0] != 0xff {
                    batches.push(std::mem::take(&mut prefix));
                }
            }
            assert!(prefix.is_empty(), "{}: stream ends after a header", s.name);
            batches
        }
        other => {
            assert_eq!(other, Compression::Flate, "{}: unknown compression", s.name);
            let (mut batches, mut start) = (Vec::new(), 0);
            for end in 4..=wire.len() {
                if wire[end - 4..end] == [0, 0, 0xff, 0xff] {
                    batches.push(wire[start..end].to_vec());
                    start = end;
                }
            }
            assert_eq!(
                start,
                wire.len(),
                "{}: stream ends without a sync flush",
                s.name
            );
            batches
        }
    };
    assert_eq!(batches.len(), responses.len(), "{}: batches", s.name);
    let mut decoder = Decoder::new(s.server).unwrap();
    for (batch, resp) in batches.iter().zip(&responses) {
        let mut plain = Vec::new();
        decode_into(&mut decoder, batch, &mut plain);
        assert_eq!(
            plain, resp.frame,
            "{}: batch of response {}",
            s.name, resp.id
        );
    }
    responses.iter().map(|r| r.id).zip(batches).collect()
}

/// The handler of every capture: `re:<name>=<value>`. A call named `fail` fails instead, with
/// the text `handler failed on <value>`.
fn re_handler(
    _ctx: &RequestCtx,
    name: &[u8],
    value: &[u8],
    resp: &mut Vec<u8>,
) -> Result<(), HandlerError> {
    if name == b"fail" {
        return Err(format!("handler failed on {}", String::from_utf8_lossy(value)).into());
    }
    resp.extend_from_slice(b"re:");
    resp.extend_from_slice(name);
    resp.push(b'=');
    resp.extend_from_slice(value);
    Ok(())
}

// ----- the fake peer's side of a socket ----------------------------------------------------

/// Frames parsed from a decompressed stream.
#[derive(Default)]
struct Parser {
    plain: Vec<u8>,
    parsed: usize,
}

impl Parser {
    fn leftover(&self) -> &[u8] {
        &self.plain[self.parsed..]
    }

    fn request(&mut self) -> Option<Req> {
        let buf = &self.plain[self.parsed..];
        let (req, n) = decode_request(buf)
            .unwrap_or_else(|e| panic!("invalid request at {}: {e}", self.parsed))?;
        let req = Req {
            id: req.id,
            name: req.name.to_vec(),
            value: req.value.to_vec(),
            frame: buf[..n].to_vec(),
        };
        self.parsed += n;
        Some(req)
    }

    fn response(&mut self) -> Option<Resp> {
        let buf = &self.plain[self.parsed..];
        let (resp, n) = decode_response(buf)
            .unwrap_or_else(|e| panic!("invalid response at {}: {e}", self.parsed))?;
        let resp = Resp {
            id: resp.id,
            value: resp.value.to_vec(),
            frame: buf[..n].to_vec(),
        };
        self.parsed += n;
        Some(resp)
    }
}

/// What our side writes, as the fake peer receives it: every raw byte, and after the
/// handshake block the frames, decompressed as they come.
struct Inbound {
    stream: TcpStream,
    what: &'static str,
    /// Every byte received, in order.
    raw: Vec<u8>,
    decoder: Option<Decoder>,
    /// Bytes of `raw` handed to the decoder.
    fed: usize,
    frames: Parser,
    eof: bool,
}

impl Inbound {
    fn new(stream: &TcpStream, what: &'static str) -> Inbound {
        Inbound {
            stream: stream.try_clone().expect("clone socket"),
            what,
            raw: Vec::new(),
            decoder: None,
            fed: 0,
            frames: Parser::default(),
            eof: false,
        }
    }

    /// One read, waiting until `deadline`; false at the end of the stream (an orderly end and
    /// a reset count the same, as the spec says).
    fn read_some(&mut self, deadline: Instant) -> bool {
        if self.eof {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            self.timed_out();
        }
        self.stream.set_read_timeout(Some(left)).unwrap();
        let mut buf = [0u8; 16384];
        match self.stream.read(&mut buf) {
            Ok(0) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.raw.extend_from_slice(&buf[..n]);
                true
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                self.timed_out()
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                self.eof = true;
                false
            }
            Err(e) => panic!("{}: read failed: {e}", self.what),
        }
    }

    fn timed_out(&self) -> ! {
        panic!(
            "{}: nothing more within {PEER_WAIT:?}; received so far ({} bytes): {}",
            self.what,
            self.raw.len(),
            short(&self.raw)
        )
    }

    /// The first `n` bytes; panics if the stream ends before.
    fn first(&mut self, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + PEER_WAIT;
        while self.raw.len() < n {
            if !self.read_some(deadline) {
                panic!(
                    "{}: stream ended after {} of {n} bytes: {}",
                    self.what,
                    self.raw.len(),
                    short(&self.raw)
                );
            }
        }
        self.raw[..n].to_vec()
    }

    /// Reads the handshake block of `len` bytes; what follows is a stream in `compression`.
    fn hello(&mut self, len: usize, compression: Compression) -> Vec<u8> {
        let hello = self.first(len);
        self.fed = len;
        self.decoder = Some(Decoder::new(compression).unwrap());
        hello
    }

    /// Decompresses what has arrived.
    fn pump(&mut self) {
        let decoder = self.decoder.as_mut().expect("hello read first");
        let mut out = [0u8; 4096];
        loop {
            let (consumed, produced) = decoder
                .decode(&self.raw[self.fed..], &mut out)
                .unwrap_or_else(|e| panic!("{}: does not decompress: {e}", self.what));
            self.fed += consumed;
            self.frames.plain.extend_from_slice(&out[..produced]);
            if (consumed, produced) == (0, 0) {
                break;
            }
        }
    }

    /// The next frame, read with `parse`; `None` if the stream ends first.
    fn next<T>(&mut self, parse: impl Fn(&mut Parser) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + PEER_WAIT;
        loop {
            self.pump();
            if let Some(frame) = parse(&mut self.frames) {
                return Some(frame);
            }
            if !self.read_some(deadline) {
                return None;
            }
        }
    }

    fn request(&mut self) -> Option<Req> {
        self.next(Parser::request)
    }

    fn response(&mut self) -> Option<Resp> {
        self.next(Parser::response)
    }

    /// Reads until the peer closes; panics if it does not within [`PEER_WAIT`].
    fn until_closed(&mut self) {
        let deadline = Instant::now() + PEER_WAIT;
        while self.read_some(deadline) {}
        if self.decoder.is_some() {
            self.pump();
        }
    }

    /// After [`Inbound::until_closed`]: received bytes not part of a whole frame (none expected).
    fn assert_nothing_left(&self) {
        let unfed = &self.raw[self.fed..];
        let leftover = self.frames.leftover();
        assert!(
            unfed.is_empty() && leftover.is_empty(),
            "{}: extra bytes after the last frame: {} undecoded ({}), {} decoded ({})",
            self.what,
            unfed.len(),
            short(unfed),
            leftover.len(),
            short(leftover)
        );
    }
}

fn write_all(stream: &mut TcpStream, bytes: &[u8]) {
    stream.set_write_timeout(Some(PEER_WAIT)).unwrap();
    stream.write_all(bytes).expect("fake peer write");
}

/// How the fake Go client hands its captured bytes to the socket.
#[derive(Clone, Copy, Debug)]
enum Pace {
    /// One `write`.
    Whole,
    /// Pieces of 1 to 9 bytes (sizes from this seed), each its own segment (no Nagle) with a
    /// short pause after it, so that our side reads them cut anywhere: inside the handshake,
    /// a header, a compressed block.
    Pieces(u64),
}

fn write_paced(stream: &mut TcpStream, bytes: &[u8], pace: Pace) {
    match pace {
        Pace::Whole => write_all(stream, bytes),
        Pace::Pieces(seed) => {
            let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut rest = bytes;
            while !rest.is_empty() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let n = (1 + (x >> 40) as usize % 9).min(rest.len());
                write_all(stream, &rest[..n]);
                rest = &rest[n..];
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
}

/// A loopback listener for a fake Go server.
fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake server");
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    (listener, addr)
}

/// The next connection to `listener`, within [`PEER_WAIT`].
fn accept(listener: &TcpListener) -> TcpStream {
    let deadline = Instant::now() + PEER_WAIT;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                stream.set_nodelay(true).unwrap();
                return stream;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "fake Go server: no connection within {PEER_WAIT:?}"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("fake Go server: accept failed: {e}"),
        }
    }
}

/// A fake Go client's connection to `server`.
fn dial(server: &fastrpc::Server) -> TcpStream {
    let addr = server.local_addr().as_tcp().expect("a TCP server");
    let stream = TcpStream::connect_timeout(&addr, PEER_WAIT).expect("dial our server");
    stream.set_nodelay(true).unwrap();
    stream
}

/// The fake peer's thread. Its own reads are bounded, so joining it is too.
struct Peer<T> {
    handle: Option<JoinHandle<T>>,
}

impl<T: Send + 'static> Peer<T> {
    fn spawn(body: impl FnOnce() -> T + Send + 'static) -> Peer<T> {
        let handle = std::thread::Builder::new()
            .name("fake-go-peer".into())
            .spawn(body)
            .expect("spawn fake peer");
        Peer {
            handle: Some(handle),
        }
    }

    /// Waits for the peer and returns what it found; its panic (a failed check) is re-raised.
    fn join(mut self) -> T {
        match self.handle.take().unwrap().join() {
            Ok(out) => out,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// The value of an outcome of ours that must be `Ok`. On an error the peer has usually
    /// failed a check first (and closed the socket, which is why ours failed): its panic is
    /// the better message, so it is raised first.
    fn ok<V>(&mut self, outcome: Result<V, Error>, what: &str) -> V {
        match outcome {
            Ok(v) => v,
            Err(e) => {
                if let Some(handle) = self.handle.take() {
                    if let Err(panic) = handle.join() {
                        std::panic::resume_unwind(panic);
                    }
                }
                panic!("{what}: {e:?}")
            }
        }
    }
}

fn our_server(s: &Scenario) -> fastrpc::Server {
    fastrpc::Server::builder()
        .workers(2)
        .compression(s.server)
        .sniff_header(s.sniff)
        .protocol_version(s.version)
        .handshake_timeout(OUR_TIMEOUT)
        .handler(re_handler)
        .bind("127.0.0.1:0")
        .expect("bind our server")
}

fn client_builder(addr: SocketAddr) -> fastrpc::ClientBuilder {
    fastrpc::Client::builder(addr)
        .request_timeout(OUR_TIMEOUT)
        .handshake_timeout(OUR_TIMEOUT)
}

// ----- 1. our server, a fake Go client ---------------------------------------------------------

/// The fake Go client writes the scenario's captured requests and reads until it has as many
/// responses as Go's server sent; then it ends its side and reads to the end.
///
/// Checks: our handshake block is Go's server block; the responses, sorted by id, are Go's
/// (ids, values and decompressed frame bytes); uncompressed, our stream is Go's frames exactly
/// (in whatever order); nothing follows them (so nothing answers the id-0 request).
fn go_client_calls_our_server(s: Scenario, pace: Pace) {
    let server = our_server(&s);
    let (c2s, s2c) = (s.c2s(), s.s2c());
    let mut want = s.responses();
    want.sort_by_key(|r| r.id);

    let mut stream = dial(&server);
    write_paced(&mut stream, &c2s, pace);
    let mut inbound = Inbound::new(&stream, "our server's output");
    let hello = inbound.hello(s.hello_len(), s.server);
    assert_eq!(
        hex(&hello),
        hex(&s2c[..s.hello_len()]),
        "{} ({pace:?}): our server's handshake block vs Go's",
        s.name
    );
    let mut got = Vec::new();
    while got.len() < want.len() {
        match inbound.response() {
            Some(resp) => {
                assert_ne!(
                    resp.id,
                    0,
                    "{} ({pace:?}): a response with id 0 (no-response requests get none): {}",
                    s.name,
                    short(&resp.frame)
                );
                got.push(resp);
            }
            None => panic!(
                "{} ({pace:?}): our server closed after {} of {} responses (ids {:?})",
                s.name,
                got.len(),
                want.len(),
                got.iter().map(|r| r.id).collect::<Vec<_>>()
            ),
        }
    }
    // Our requests end here: our server has nothing more to answer and closes.
    stream.shutdown(Shutdown::Write).unwrap();
    inbound.until_closed();
    inbound.assert_nothing_left();

    got.sort_by_key(|r| r.id);
    let ids = |rs: &[Resp]| rs.iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(&got), ids(&want), "{} ({pace:?}): response ids", s.name);
    for (ours, go) in got.iter().zip(&want) {
        assert_eq!(
            hex(&ours.frame),
            hex(&go.frame),
            "{} ({pace:?}): response {} (frame decompressed: id, value_len, value)",
            s.name,
            go.id
        );
    }
    if s.server == Compression::None {
        // The frames above are the wire bytes: ours are Go's, only maybe in another order.
        assert_eq!(inbound.raw.len(), s2c.len(), "{}: bytes written", s.name);
    }
}

fn go_client_both_paces(s: Scenario) {
    if !s.available() {
        return;
    }
    bounded(LIMIT, move || {
        go_client_calls_our_server(s, Pace::Whole);
        go_client_calls_our_server(s, Pace::Pieces(0x5eed));
    });
}

#[test]
fn our_server_serves_go_client_01_none() {
    go_client_both_paces(S01);
}

#[test]
fn our_server_serves_go_client_02_flate() {
    go_client_both_paces(S02);
}

#[test]
fn our_server_serves_go_client_03_snappy() {
    go_client_both_paces(S03);
}

#[test]
fn our_server_serves_go_client_04_flate_to_snappy() {
    go_client_both_paces(S04);
}

#[test]
fn our_server_serves_go_client_05_sniff_version() {
    go_client_both_paces(S05);
}

#[test]
fn our_server_serves_go_client_06_concurrent() {
    bounded(LIMIT, || {
        // 50 requests in one batch: all 50 answered, each with its own request's value (Go's
        // response to id k answers Go's request k, so the frames are Go's too).
        assert_eq!(S06.requests().len(), 50);
        go_client_calls_our_server(S06, Pace::Whole);
    });
}

// ----- 2. our client, a fake Go server ---------------------------------------------------------

/// The fake Go server of a sequential scenario: checks our handshake block is Go's client's,
/// answers with Go's server block, then reads each request, checks it is exactly Go's (id,
/// name, value) and answers it with Go's batch for that id, byte for byte. After our client
/// is closed it reads to the end. Returns every byte our client wrote.
fn fake_go_server(s: Scenario, listener: TcpListener) -> Peer<Vec<u8>> {
    Peer::spawn(move || {
        let (c2s, s2c) = (s.c2s(), s.s2c());
        let requests = s.requests();
        let batches: HashMap<u32, Vec<u8>> = go_response_batches(&s).into_iter().collect();
        let mut stream = accept(&listener);
        drop(listener);
        let mut inbound = Inbound::new(&stream, "our client's output");
        let hello = inbound.hello(s.hello_len(), s.client);
        assert_eq!(
            hex(&hello),
            hex(&c2s[..s.hello_len()]),
            "{}: our client's handshake block vs Go's",
            s.name
        );
        write_all(&mut stream, &s2c[..s.hello_len()]);
        for want in &requests {
            let Some(got) = inbound.request() else {
                panic!("{}: our client closed before request {want:?}", s.name);
            };
            assert_eq!(
                (got.id, hex(&got.name), hex(&got.value)),
                (want.id, hex(&want.name), hex(&want.value)),
                "{}: request (id, name, value) vs Go's",
                s.name
            );
            assert_eq!(got, *want, "{}: request frame", s.name);
            if want.id != 0 {
                write_all(&mut stream, &batches[&want.id]);
            }
        }
        inbound.until_closed();
        inbound.assert_nothing_left();
        inbound.raw
    })
}

fn our_client_calls_go_server(s: Scenario) {
    if !s.available() {
        return;
    }
    bounded(LIMIT, move || {
        let (listener, addr) = listener();
        let mut peer = fake_go_server(s, listener);
        let client = client_builder(addr)
            .compression(s.client)
            .sniff_header(s.sniff)
            .protocol_version(s.version)
            .connect();
        let client = peer.ok(client, "connect");
        let responses: HashMap<u32, Vec<u8>> =
            s.responses().into_iter().map(|r| (r.id, r.value)).collect();
        // Go's calls, one after the other as Go made them: a call waits for its answer, a
        // no-response call (id 0 on the wire) for nothing.
        for req in s.requests() {
            if req.id == 0 {
                peer.ok(client.send(&req.name, &req.value), "send");
            } else {
                let value = peer.ok(client.call(&req.name, &req.value), "call");
                assert_eq!(
                    hex(&value),
                    hex(&responses[&req.id]),
                    "{}: value of call {}",
                    s.name,
                    req.id
                );
            }
        }
        let stats = client.stats();
        client.close();
        drop(client);
        let raw = peer.join();
        if s.client == Compression::None {
            assert_eq!(hex(&raw), hex(&s.c2s()), "{}: all our client wrote", s.name);
        }
        assert_eq!(stats.dials, 1, "{}: one connection", s.name);
    });
}

#[test]
fn our_client_calls_go_server_01_none() {
    our_client_calls_go_server(S01);
}

#[test]
fn our_client_calls_go_server_02_flate() {
    our_client_calls_go_server(S02);
}

#[test]
fn our_client_calls_go_server_03_snappy() {
    our_client_calls_go_server(S03);
}

#[test]
fn our_client_calls_go_server_04_flate_to_snappy() {
    our_client_calls_go_server(S04);
}

#[test]
fn our_client_calls_go_server_05_sniff_version() {
    our_client_calls_go_server(S05);
}

/// 50 calls at once: ids 1..=50 on the wire, each value once; the fake server answers all of
/// them in one write, in the order Go's server did in the capture (50 first, then 1..=49).
#[test]
fn our_client_calls_go_server_06_concurrent() {
    bounded(LIMIT, || {
        let (listener, addr) = listener();
        let order: Vec<u32> = S06.responses().iter().map(|r| r.id).collect();
        let mut peer = Peer::spawn(move || {
            let mut stream = accept(&listener);
            let mut inbound = Inbound::new(&stream, "our client's output");
            assert_eq!(inbound.hello(3, Compression::None), [0, 1, 0]);
            write_all(&mut stream, &[0, 1, 0]);
            let mut values = HashMap::new();
            for n in 1..=50u32 {
                let req = inbound.request().expect("50 requests");
                assert_eq!((req.id, &req.name[..]), (n, &b"c"[..]), "request {n}");
                values.insert(req.id, req.value);
            }
            let mut answers = Vec::new();
            for id in &order {
                let value = [&b"re:c="[..], &values[id]].concat();
                answers.extend(response_frame(*id, &value));
            }
            write_all(&mut stream, &answers);
            inbound.until_closed();
            inbound.assert_nothing_left();
            let mut sent: Vec<Vec<u8>> = values.into_values().collect();
            sent.sort();
            sent
        });
        let client = client_builder(addr).connect();
        let client = peer.ok(client, "connect");
        let pending: Vec<_> = (0..50)
            .map(|i| client.call_async(b"c", i.to_string().as_bytes()))
            .collect();
        for (i, call) in pending.into_iter().enumerate() {
            let call = peer.ok(call, "call_async");
            let value = peer.ok(call.wait(), "call");
            assert_eq!(hex(&value), hex(format!("re:c={i}").as_bytes()), "call {i}");
        }
        client.close();
        drop(client);
        let mut want: Vec<Vec<u8>> = (0..50).map(|i| i.to_string().into_bytes()).collect();
        want.sort();
        assert_eq!(peer.join(), want, "values sent");
    });
}

// ----- 3. handshake failures -------------------------------------------------------------------

/// Our server gets `c2s` from a fake client; returns every byte it wrote until it closed. The
/// close must come within [`PEER_WAIT`], well before our handshake timeout ([`OUR_TIMEOUT`]).
fn our_server_answers(server: &fastrpc::Server, c2s: &[u8]) -> Vec<u8> {
    let mut stream = dial(server);
    write_all(&mut stream, c2s);
    let mut inbound = Inbound::new(&stream, "our server's output");
    inbound.until_closed();
    inbound.raw
}

#[test]
fn handshake_07a_bad_sniff_our_server_closes_silently() {
    bounded(LIMIT, || {
        let server = fastrpc::Server::builder()
            .sniff_header(b"abc")
            .handshake_timeout(OUR_TIMEOUT)
            .handler(re_handler)
            .bind("127.0.0.1:0")
            .unwrap();
        let c2s = load("07a-bad-sniff", "c2s");
        let answer = our_server_answers(&server, &c2s);
        assert_eq!(hex(&answer), "", "our server must close without a byte");
    });
}

#[test]
fn handshake_07a_bad_sniff_our_client_fails() {
    bounded(LIMIT, || {
        let c2s = load("07a-bad-sniff", "c2s");
        let (err, written) =
            our_client_refused(|addr| client_builder(addr).sniff_header(b"xyz"), 3);
        assert_eq!(hex(&written), hex(&c2s), "our client's handshake block");
        assert_not_handshake_timeout(&err);
    });
}

/// Our client, built by `build` for the fake server's address, against a fake Go server that
/// reads `read` bytes and closes. Returns `connect()`'s error and every byte our client wrote.
fn our_client_refused(
    build: impl FnOnce(SocketAddr) -> fastrpc::ClientBuilder,
    read: usize,
) -> (Error, Vec<u8>) {
    let (listener, addr) = listener();
    let peer = Peer::spawn(move || {
        let mut stream = accept(&listener);
        drop(listener);
        // Exactly `read` bytes off the socket, as Go reads exactly its sniff header's length.
        stream.set_read_timeout(Some(PEER_WAIT)).unwrap();
        let mut seen = vec![0; read];
        stream
            .read_exact(&mut seen)
            .expect("our client's first bytes");
        // Whatever else our client sent, seen without reading it: the close then resets, as
        // a Go server's close after reading only its sniff header does.
        let mut buf = [0u8; 64];
        let deadline = Instant::now() + Duration::from_millis(200);
        let mut peeked = 0;
        stream.set_nonblocking(true).unwrap();
        while Instant::now() < deadline {
            match stream.peek(&mut buf) {
                Ok(n) if n > peeked => peeked = n,
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        seen.extend_from_slice(&buf[..peeked]);
        drop(stream);
        seen
    });
    let outcome = build(addr).connect();
    let written = peer.join();
    match outcome {
        Ok(_) => panic!("connect() succeeded against a server that closed"),
        Err(e) => (e, written),
    }
}

fn assert_not_handshake_timeout(err: &Error) {
    assert!(
        !matches!(
            err,
            Error::Protocol(ProtocolError::Handshake(HandshakeError::Timeout))
        ),
        "connect() must fail when the server closes, not at its handshake timeout: {err:?}"
    );
}

#[test]
fn handshake_07b_bad_version_our_server_closes_silently() {
    bounded(LIMIT, || {
        let server = fastrpc::Server::builder()
            .handshake_timeout(OUR_TIMEOUT)
            .handler(re_handler)
            .bind("127.0.0.1:0")
            .unwrap();
        let c2s = load("07b-bad-version", "c2s");
        let answer = our_server_answers(&server, &c2s);
        assert_eq!(hex(&answer), "", "our server must close without a byte");
    });
}

#[test]
fn handshake_07b_bad_version_our_client_fails() {
    bounded(LIMIT, || {
        let c2s = load("07b-bad-version", "c2s");
        let (err, written) = our_client_refused(|addr| client_builder(addr).protocol_version(1), 3);
        assert_eq!(hex(&written), hex(&c2s), "our client's handshake block");
        assert_not_handshake_timeout(&err);
    });
}

#[test]
fn handshake_07c_tls_refused_our_server_answers_tls_0_then_closes() {
    bounded(LIMIT, || {
        let server = fastrpc::Server::builder()
            .handshake_timeout(OUR_TIMEOUT)
            .handler(re_handler)
            .bind("127.0.0.1:0")
            .unwrap();
        let c2s = load("07c-tls-refused", "c2s");
        let s2c = load("07c-tls-refused", "s2c");
        assert_eq!(c2s, [0, 1, 1]);
        let answer = our_server_answers(&server, &c2s);
        assert_eq!(
            hex(&answer),
            hex(&s2c),
            "our server's answer, then the close"
        );
    });
}

/// A rustls client config; the handshake never gets as far as certificates.
#[cfg(feature = "tls")]
fn tls_client_config() -> std::sync::Arc<rustls::ClientConfig> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    roots.add(ca.cert.der().clone()).unwrap();
    std::sync::Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[cfg(feature = "tls")]
#[test]
fn handshake_07c_tls_refused_our_client_fails() {
    bounded(LIMIT, || {
        let c2s = load("07c-tls-refused", "c2s");
        let s2c = load("07c-tls-refused", "s2c");
        let (listener, addr) = listener();
        let peer = Peer::spawn(move || {
            let mut stream = accept(&listener);
            drop(listener);
            let mut inbound = Inbound::new(&stream, "our client's output");
            inbound.first(3);
            // Go's server without TLS: its block with tls 0, then the close.
            write_all(&mut stream, &s2c);
            stream.shutdown(Shutdown::Write).unwrap();
            // Everything our client sends until it closes: no TLS record may follow.
            inbound.until_closed();
            inbound.raw
        });
        let outcome = client_builder(addr)
            .tls(tls_client_config(), "localhost")
            .connect();
        let written = peer.join();
        assert_eq!(hex(&written), hex(&c2s), "all our client wrote");
        match outcome {
            Err(Error::Protocol(ProtocolError::Handshake(HandshakeError::TlsNotOffered))) => {}
            Err(e) => panic!("connect() failed with {e:?}, not TlsNotOffered"),
            Ok(_) => panic!("connect() succeeded although the server refused TLS"),
        }
    });
}

#[test]
fn handshake_unknown_compression_our_server_answers_then_closes() {
    bounded(LIMIT, || {
        let server = fastrpc::Server::builder()
            .handshake_timeout(OUR_TIMEOUT)
            .handler(re_handler)
            .bind("127.0.0.1:0")
            .unwrap();
        let answer = our_server_answers(&server, &[0, 7, 0]);
        assert_eq!(
            hex(&answer),
            "00 01 00",
            "our server's block, then the close"
        );
    });
}

// ----- 4. frame rules --------------------------------------------------------------------------

/// A fake Go server (no compression either way) running `script` after the handshake.
fn scripted_go_server<T: Send + 'static>(
    listener: TcpListener,
    script: impl FnOnce(&mut TcpStream, &mut Inbound) -> T + Send + 'static,
) -> Peer<T> {
    Peer::spawn(move || {
        let mut stream = accept(&listener);
        let mut inbound = Inbound::new(&stream, "our client's output");
        assert_eq!(hex(&inbound.hello(3, Compression::None)), "00 01 00");
        write_all(&mut stream, &[0, 1, 0]);
        script(&mut stream, &mut inbound)
    })
}

/// Asserts the next request is `(id, name, value)`.
fn expect_request(inbound: &mut Inbound, id: u32, name: &[u8], value: &[u8]) {
    let got = inbound.request().expect("a request");
    assert_eq!(
        hex(&got.frame),
        hex(&request_frame(id, name, value)),
        "request (id {}, name {:?})",
        got.id,
        String::from_utf8_lossy(&got.name)
    );
}

#[test]
fn our_client_discards_id_0_and_unknown_responses() {
    bounded(LIMIT, || {
        let (listener, addr) = listener();
        let mut peer = scripted_go_server(listener, |stream, inbound| {
            expect_request(inbound, 1, b"foo", b"bar");
            // Id 0 (Go's overload answer to a no-response call) and an id nobody waits for,
            // both before the real answer.
            let mut answer = response_frame(0, b"server is overloaded");
            answer.extend(response_frame(99, b"late"));
            answer.extend(response_frame(1, b"re:foo=bar"));
            write_all(stream, &answer);
            expect_request(inbound, 2, b"x", b"yy");
            write_all(stream, &response_frame(2, b"re:x=yy"));
            inbound.until_closed();
            inbound.assert_nothing_left();
        });
        let client = client_builder(addr).connect();
        let client = peer.ok(client, "connect");
        let value = peer.ok(client.call(b"foo", b"bar"), "call foo");
        assert_eq!(&*value, b"re:foo=bar");
        wait_until(PEER_WAIT, "2 stale responses counted", || {
            client.stats().errors.stale_responses >= 2
        });
        // The connection stays up: the next call goes over it.
        let value = peer.ok(client.call(b"x", b"yy"), "call x");
        assert_eq!(&*value, b"re:x=yy");
        let stats = client.stats();
        assert_eq!(stats.errors.stale_responses, 2);
        assert_eq!(stats.dials, 1, "one connection");
        client.close();
        drop(client);
        peer.join();
    });
}

#[test]
fn our_client_refuses_oversized_fields_before_writing() {
    bounded(LIMIT, || {
        let max = MAX_FIELD_LEN as usize;
        let (listener, addr) = listener();
        let mut peer = scripted_go_server(listener, move |stream, inbound| {
            expect_request(inbound, 1, b"a", b"b");
            write_all(stream, &response_frame(1, b"1"));
            // Exactly 1 MiB is allowed.
            expect_request(inbound, 2, b"max", &vec![7; max]);
            write_all(stream, &response_frame(2, b"2"));
            // The refused calls wrote nothing: the next bytes are the next call, next id.
            expect_request(inbound, 3, b"c", b"d");
            write_all(stream, &response_frame(3, b"3"));
            inbound.until_closed();
            inbound.assert_nothing_left();
            inbound.raw.len()
        });
        let client = client_builder(addr).connect();
        let client = peer.ok(client, "connect");
        assert_eq!(&*peer.ok(client.call(b"a", b"b"), "call a"), b"1");
        assert_eq!(
            &*peer.ok(client.call(b"max", &vec![7; max]), "call max"),
            b"2"
        );
        let too_long = vec![0u8; max + 1];
        let refused = [
            client.call(b"big", &too_long).map(drop),
            client.call(&too_long, b"v").map(drop),
            client.call_async(b"big", &too_long).map(drop),
            client.send(b"big", &too_long),
        ];
        for (i, outcome) in refused.into_iter().enumerate() {
            match outcome {
                Err(Error::TooLarge { len, max: limit }) => {
                    assert_eq!((len, limit), (max + 1, MAX_FIELD_LEN), "refusal {i}");
                }
                other => panic!("refusal {i}: {other:?}, not TooLarge"),
            }
        }
        assert_eq!(&*peer.ok(client.call(b"c", b"d"), "call c"), b"3");
        let stats = client.stats();
        client.close();
        drop(client);
        let total = peer.join();
        let frames = [
            request_frame(1, b"a", b"b"),
            request_frame(2, b"max", &vec![7; max]),
            request_frame(3, b"c", b"d"),
        ];
        assert_eq!(total, 3 + frames.iter().map(Vec::len).sum::<usize>());
        assert_eq!(stats.errors.too_large, 4, "refusals counted");
        assert_eq!(stats.dials, 1, "one connection");
    });
}

#[test]
fn our_client_drops_connection_on_oversized_response_and_redials() {
    bounded(LIMIT, || {
        let (listener, addr) = listener();
        let mut peer = Peer::spawn(move || {
            // First connection: the answer's value_len is 1 MiB + 1 (the header alone: the
            // length is refused as soon as it is read).
            let mut stream = accept(&listener);
            let mut inbound = Inbound::new(&stream, "our client's first connection");
            assert_eq!(hex(&inbound.hello(3, Compression::None)), "00 01 00");
            write_all(&mut stream, &[0, 1, 0]);
            expect_request(&mut inbound, 1, b"foo", b"bar");
            let mut header = 1u32.to_le_bytes().to_vec();
            header.extend((MAX_FIELD_LEN + 1).to_le_bytes());
            write_all(&mut stream, &header);
            inbound.until_closed(); // our client closes it
            inbound.assert_nothing_left();
            // Second connection: ids start again at 1.
            let mut stream = accept(&listener);
            let mut inbound = Inbound::new(&stream, "our client's second connection");
            assert_eq!(hex(&inbound.hello(3, Compression::None)), "00 01 00");
            write_all(&mut stream, &[0, 1, 0]);
            expect_request(&mut inbound, 1, b"x", b"yy");
            write_all(&mut stream, &response_frame(1, b"re:x=yy"));
            inbound.until_closed();
            inbound.assert_nothing_left();
        });
        let client = client_builder(addr)
            .reconnect_backoff(Duration::from_millis(5), Duration::from_millis(20))
            .connect();
        let client = peer.ok(client, "connect");
        match client.call(b"foo", b"bar") {
            Err(Error::ConnectionLost(_)) => {}
            other => panic!("call with an oversized answer: {other:?}, not ConnectionLost"),
        }
        wait_until(PEER_WAIT, "the redial's handshake", || {
            let stats = client.stats();
            stats.dials == 2 && stats.open_connections == 1
        });
        let value = peer.ok(client.call(b"x", b"yy"), "call after the redial");
        assert_eq!(&*value, b"re:x=yy");
        client.close();
        drop(client);
        peer.join();
    });
}

#[test]
fn our_server_closes_on_oversized_request_field() {
    bounded(LIMIT, || {
        let server = fastrpc::Server::builder()
            .workers(2)
            .handler(re_handler)
            .bind("127.0.0.1:0")
            .unwrap();
        for (n, value_too_long) in [(1, false), (2, true)] {
            let mut stream = dial(&server);
            let mut inbound = Inbound::new(&stream, "our server's output");
            let mut c2s = vec![0, 1, 0];
            c2s.extend(request_frame(1, b"foo", b"bar"));
            write_all(&mut stream, &c2s);
            assert_eq!(hex(&inbound.hello(3, Compression::None)), "00 01 00");
            let resp = inbound.response().expect("the answer to the valid request");
            assert_eq!(hex(&resp.frame), hex(&response_frame(1, b"re:foo=bar")));
            // Request 2: name_len (or, with an empty name, value_len) 1 MiB + 1.
            let mut bad = 2u32.to_le_bytes().to_vec();
            if value_too_long {
                bad.extend(0u32.to_le_bytes());
            }
            bad.extend((MAX_FIELD_LEN + 1).to_le_bytes());
            write_all(&mut stream, &bad);
            inbound.until_closed();
            inbound.assert_nothing_left();
            wait_until(PEER_WAIT, "the protocol error counted", || {
                server.stats().errors.protocol >= n
            });
            assert_eq!(server.stats().errors.protocol, n);
        }
    });
}

#[test]
fn our_server_sends_handler_error_as_value() {
    bounded(LIMIT, || {
        let server = fastrpc::Server::builder()
            .workers(2)
            .handler(re_handler)
            .bind("127.0.0.1:0")
            .unwrap();
        let mut stream = dial(&server);
        let mut inbound = Inbound::new(&stream, "our server's output");
        let mut c2s = vec![0, 1, 0];
        c2s.extend(request_frame(1, b"fail", b"purpose"));
        write_all(&mut stream, &c2s);
        assert_eq!(hex(&inbound.hello(3, Compression::None)), "00 01 00");
        let resp = inbound.response().expect("the error's answer");
        assert_eq!(
            hex(&resp.frame),
            hex(&response_frame(1, b"handler failed on purpose")),
            "a plain response, the error's text as its value"
        );
        // The connection stays up.
        write_all(&mut stream, &request_frame(2, b"x", b"yy"));
        let resp = inbound.response().expect("the next answer");
        assert_eq!(hex(&resp.frame), hex(&response_frame(2, b"re:x=yy")));
        stream.shutdown(Shutdown::Write).unwrap();
        inbound.until_closed();
        inbound.assert_nothing_left();
        wait_until(PEER_WAIT, "the handler error counted", || {
            server.stats().errors.server >= 1
        });
        assert_eq!(
            server.stats().errors.server,
            1,
            "counted as a handler error"
        );
    });
}
