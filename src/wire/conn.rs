//! The per-connection state machine the reactor drives.
//!
//! A [`Conn`] owns one connection's buffers and protocol state, and nothing else: no socket, no
//! thread, no clock. Bytes and times are handed in, frames and bytes handed out.
//!
//! ```text
//!                hello exchanged,             TLS handshake done,
//!                TLS agreed                   peer's hello repeated inside TLS
//!   Handshake ────────────────────▶ Tls ─────────────────────────────────┐
//!       │  │                         │                                    ▼
//!       │  └─ hello exchanged, no TLS ────────────────────────────────▶ Open ───▶ Draining
//!       │                            │                  owner: begin_drain() │        │
//!       │ bad hello / timeout        │ TLS error / timeout                   │        │ flushed,
//!       │ / end of stream            │ / end of stream                       │        │ then owner:
//!       ▼                            ▼                 protocol error, end   ▼        ▼ close()
//!     Closed ◀───────────────────────┴───────────────── of stream ─────── Closed ◀── Closed
//! ```
//!
//! A server whose client ends its stream after whole frames half-closes: `Open -> Draining`
//! once every frame was delivered, and its owner closes it after answering them. Once open, the
//! keepalive and idle clocks of [`super::liveness`] run (pings and pongs are answered and
//! absorbed here, never handed to the owner); a peer silent for too long closes the
//! connection with [`ProtocolError::Liveness`].
//!
//! A side that must tell its peer why it gives up does so before closing: a server that
//! refuses a client's TLS wish answers with its hello first, and a TLS failure during the TLS
//! handshake sends rustls's alert first (`Handshake`/`Tls -> Draining -> Closed`, the
//! [`Conn::close_reason`] already set). The handshake deadline covers the hello exchange and
//! the whole TLS handshake.
//!
//! # TLS
//! When the hellos agree on TLS, a rustls connection (cargo feature `tls`) sits between the
//! socket bytes and the stream of frames, sans-IO: what the owner reads into
//! [`Conn::recv_buf`] after the hello are TLS records, handed to rustls; the plaintext it
//! yields is the peer's (possibly compressed) stream. Each flush encodes the batch (compressing
//! it if configured), writes it to rustls in one piece, and appends the resulting records to the
//! output: one contiguous chunk, as few records as the 16 KiB record limit allows, one
//! `write()`. See [`super::tls`] for the handshake on the wire.
//!
//! # Methods, by kind
//! - getters: [`Conn::state`], [`Conn::peer_hello`], [`Conn::send_backlog`], [`Conn::counters`], ...
//! - inputs (`handle_*`): [`Conn::recv_buf`] + [`Conn::handle_recv`] for bytes read from the
//!   peer, [`Conn::handle_eof`], [`Conn::handle_sent`], [`Conn::handle_timeout`],
//!   [`Conn::handle_progress`].
//! - mutators: [`Conn::send_frame`], [`Conn::queue_encoded`], [`Conn::begin_drain`],
//!   [`Conn::close`].
//! - outputs (`poll_*`): [`Conn::poll_frame`] for decoded frames, [`Conn::poll_transmit`] for
//!   bytes to write, [`Conn::next_deadline`] for when to call [`Conn::handle_timeout`].
//!
//! # Call order, one reactor turn
//! 1. While the socket is readable and the state is `Handshake`, `Tls` or `Open`:
//!    `recv_buf()`, read into it, `handle_recv(n)`; on end of stream `handle_eof()`. Then drain
//!    `poll_frame()` until it yields `None`, and `handle_progress(now)`, which stamps what
//!    arrived with the time of the read for the keepalive and idle clocks. (During
//!    `Handshake` and `Tls`, `handle_recv` also queues the handshake's answers;
//!    `poll_opened()` says when the connection opened.)
//! 2. Queue outgoing frames with `send_frame`/`queue_encoded` (any time).
//! 3. At the end of the turn: `poll_transmit(now)`; write what it returns, report the amount with
//!    `handle_sent(n)`, and repeat until it returns `None` or the socket would block.
//! 4. Sleep no later than `next_deadline()`; when it passes, `handle_timeout(now)`.
//!
//! # Batching
//! Outgoing frames collect in a plain buffer. [`Conn::poll_transmit`] flushes them — compresses
//! the whole batch as one unit (and encrypts it, with TLS) and appends it to the output, as one
//! contiguous chunk for one `write()` — when the batch delay is zero, when the batch reaches
//! the size threshold, or when the delay armed by the batch's first frame has passed.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
#[cfg(feature = "tls")]
use std::io::{Read, Write};
#[cfg(feature = "tls")]
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::buffer::RecvBuf;
use super::compress::{self, Compression, Decoder, Encoder};
use super::fastrpc::{self, FastrpcSettings, IdAllocator};
use super::frame::{self, Frame, FrameKind};
use super::handshake::{self, Hello, TlsPolicy, HELLO_LEN};
use super::liveness::{Due, Liveness};
use super::tls::{TlsError, TlsErrorKind};
use super::ProtocolError;

/// Which end of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Dialed out; speaks first; sends requests, receives responses.
    Client,
    /// Accepted; answers the hello; receives requests, sends responses.
    Server,
}

/// The wire format a connection speaks: its handshake and its frames. Both ends must speak
/// the same one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Profile {
    /// batchrpc's own: the 11-byte hello ([`handshake`]), repeated inside TLS, and 9-byte
    /// frame headers ([`frame`]) with error responses.
    #[default]
    Native,
    /// Go's fastrpc with `tlv` messages ([`fastrpc`]): the sniff/version/compression/tls block
    /// in clear (not repeated inside TLS), requests `id | payload`, responses
    /// `id | value_len | value`, no error frames (an error is the value's text).
    ///
    /// What the owner sees stays the same: a server gets each request's `tlv` payload
    /// (`name_len | name | value_len | value`) as a [`FrameKind::Request`] frame
    /// ([`FrameKind::RequestNoReply`] for id 0), and a client sends that payload with
    /// [`Conn::send_frame`] under its own ids and gets each response's value back under the
    /// same id. The connection numbers the calls on the wire itself (1, 2, 3, … skipping 0
    /// and any id still outstanding) and reads and discards responses with id 0 or an unknown
    /// id ([`Counters::discarded`]).
    Fastrpc(FastrpcSettings),
}

/// Settings of one connection.
#[derive(Debug, Clone)]
pub struct ConnConfig {
    /// Client or server.
    pub role: Role,
    /// The wire format. Default: [`Profile::Native`].
    pub profile: Profile,
    /// What this side compresses its stream with. Default: none.
    pub compression: Compression,
    /// Flate level 0..=9. Default: [`compress::DEFAULT_FLATE_LEVEL`] (1, fast).
    pub flate_level: u32,
    /// Largest payload accepted from the peer. Default: [`frame::DEFAULT_MAX_FRAME_LEN`].
    /// [`Profile::Fastrpc`] has its own fixed limits ([`fastrpc::MAX_FIELD_LEN`] per name
    /// and value) and ignores this.
    pub max_frame_len: u32,
    /// How long a batch may wait for more frames, counted from the first
    /// [`Conn::poll_transmit`] that sees it (the end of the turn that queued its first frame).
    /// Default: zero (flush at the end of the turn).
    pub max_batch_delay: Duration,
    /// A batch this large (bytes, before compression) flushes at once. Default: 64 KiB.
    pub flush_threshold: usize,
    /// Time allowed for the hello exchange and the TLS handshake. Default: 3 s.
    pub handshake_timeout: Duration,
    /// Client, [`Profile::Native`]: after this long with nothing received, send a
    /// [`FrameKind::Ping`]; after as long again, close with a keepalive timeout (see
    /// [`super::liveness`]). Ignored by a server and by the fastrpc profile (it has no ping).
    /// Default: none (the client builder sets its own default).
    pub keepalive: Option<Duration>,
    /// Close the connection when the peer delivers no complete frame for this long while it
    /// is owed no answer (see [`super::liveness`]). Default: none (the server builder sets its
    /// own default).
    pub idle_timeout: Option<Duration>,
    /// What the hello says about TLS. Server: what to do about it (`Off` without a
    /// `tls_server` configuration). Client: `Off` for plaintext, anything else to ask for TLS
    /// (which then needs `tls_client`). With TLS agreed and no configuration, the connection
    /// fails with [`TlsErrorKind::NotConfigured`].
    pub tls: TlsPolicy,
    /// Client: the rustls configuration, and the name the server's certificate must be valid
    /// for. Used when the hellos agree on TLS. Default: none.
    #[cfg(feature = "tls")]
    pub tls_client: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    /// Server: the rustls configuration. Used when the hellos agree on TLS. Default: none.
    #[cfg(feature = "tls")]
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
}

impl ConnConfig {
    /// The defaults for `role`.
    pub fn new(role: Role) -> ConnConfig {
        ConnConfig {
            role,
            profile: Profile::Native,
            compression: Compression::None,
            flate_level: compress::DEFAULT_FLATE_LEVEL,
            max_frame_len: frame::DEFAULT_MAX_FRAME_LEN,
            max_batch_delay: Duration::ZERO,
            flush_threshold: 64 << 10,
            handshake_timeout: Duration::from_secs(3),
            keepalive: None,
            idle_timeout: None,
            tls: TlsPolicy::Off,
            #[cfg(feature = "tls")]
            tls_client: None,
            #[cfg(feature = "tls")]
            tls_server: None,
        }
    }
}

/// A connection's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Exchanging hellos.
    Handshake,
    /// The hellos agreed on TLS: the TLS handshake runs, then each side repeats its hello
    /// inside TLS. Frames do not flow yet.
    Tls,
    /// Frames flow both ways.
    Open,
    /// No more frames are read; queued ones are still flushed.
    Draining,
    /// Finished; see [`Conn::close_reason`].
    Closed,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Handshake => "handshake",
            State::Tls => "tls handshake",
            State::Open => "open",
            State::Draining => "draining",
            State::Closed => "closed",
        })
    }
}

/// Running totals of one connection, for the owner's statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames decoded from the peer.
    pub frames_in: u64,
    /// Frames flushed to the peer (counted when their batch is flushed).
    pub frames_out: u64,
    /// Batches flushed (each is one contiguous chunk of output).
    pub flushes: u64,
    /// Responses read and dropped because no call of this connection waits for their id
    /// (fastrpc profile: id 0, or an id never sent or already answered). Native clients
    /// receive such frames through [`Conn::poll_frame`] and judge them themselves.
    pub discarded: u64,
}

/// Smallest free room offered to a read; grows while reads fill it.
const MIN_RECV: usize = 4 << 10;
const MAX_RECV: usize = 256 << 10;
/// Room for one step of decompression.
const DECODE_STEP: usize = 64 << 10;

/// One connection's protocol state and buffers. See the [module docs](self).
pub struct Conn {
    cfg: ConnConfig,
    state: State,
    /// The hello, then the peer's (possibly compressed) stream: as received without TLS, as
    /// decrypted with it.
    raw: RecvBuf,
    /// The peer's stream after decompression; unused when the peer does not compress.
    plain: RecvBuf,
    decoder: Option<Decoder>,
    encoder: Option<Encoder>,
    peer: Option<Hello>,
    tls: bool,
    /// TLS records as received, not yet taken by rustls (empty between reads).
    #[cfg(feature = "tls")]
    tls_in: RecvBuf,
    /// The rustls connection, once the hellos agreed on TLS.
    #[cfg(feature = "tls")]
    session: Option<Box<rustls::Connection>>,
    /// A compressed batch on its way into rustls (TLS with compression only).
    #[cfg(feature = "tls")]
    sealed: Vec<u8>,
    /// TLS: this side's hello has been repeated inside TLS (native profile only).
    #[cfg(feature = "tls")]
    hello_repeated: bool,
    /// Fastrpc client: the wire ids of the calls waiting for a response.
    call_ids: Option<Box<CallIds>>,
    recv_hint: usize,
    /// Bytes of the frame last returned by `poll_frame`, consumed on the next call.
    returned: usize,
    eof: bool,
    /// Frames queued for the next flush, uncompressed.
    pending: Vec<u8>,
    pending_frames: u64,
    batch_deadline: Option<Instant>,
    /// Encoded bytes for the socket; `out[out_pos..]` is not yet written.
    out: Vec<u8>,
    out_pos: usize,
    handshake_deadline: Option<Instant>,
    /// The keepalive and idle clocks, running once open.
    liveness: Liveness,
    /// Set when the connection closes once its output is written.
    close_after_flush: bool,
    close_reason: Option<Result<(), ProtocolError>>,
    opened: bool,
    /// The handshake completed (the connection has been open).
    handshake_complete: bool,
    counters: Counters,
}

/// Where a decoded frame is in the peer's stream.
struct Framed {
    id: u32,
    kind: FrameKind,
    /// Offset of the payload.
    start: usize,
    /// Bytes the whole frame takes.
    len: usize,
}

impl Framed {
    fn new(id: u32, kind: FrameKind, start: usize, len: usize) -> Framed {
        Framed {
            id,
            kind,
            start,
            len,
        }
    }
}

/// The peer's decoded hello.
struct PeerHello {
    hello: Hello,
    /// Bytes it took.
    len: usize,
    /// An error that closes the connection once the exchange is complete: a fastrpc server
    /// answers even a client whose compression it cannot decode.
    deferred: Result<(), handshake::HandshakeError>,
}

/// Fastrpc client: which wire id stands for which of the owner's ids, for the calls of one
/// connection that wait for a response (including timed-out ones whose answer may still come:
/// their ids are not reused until it does or the connection closes).
#[derive(Default)]
struct CallIds {
    next: IdAllocator,
    outstanding: HashMap<u32, u32, BuildHasherDefault<IdHasher>>,
}

impl CallIds {
    /// A wire id for the owner's call `id`.
    fn insert(&mut self, id: u32) -> u32 {
        let outstanding = &self.outstanding;
        let wire_id = self.next.next(|w| outstanding.contains_key(&w));
        self.outstanding.insert(wire_id, id);
        wire_id
    }

    /// The owner's id for a response's wire id, which is no longer outstanding; `None` for id
    /// 0 or an id not outstanding.
    fn take(&mut self, wire_id: u32) -> Option<u32> {
        self.outstanding.remove(&wire_id)
    }
}

/// Hashes the `u32` keys of [`CallIds`] with one multiplication (Fibonacci hashing): the keys
/// are sequential, not chosen by the peer (an unknown id is only looked up, never stored).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u32(u32::from(b) ^ (self.0 as u32).rotate_left(8));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("role", &self.cfg.role)
            .field("state", &self.state)
            .field("peer", &self.peer)
            .field("tls", &self.tls)
            .field("pending", &self.pending.len())
            .field("unsent", &(self.out.len() - self.out_pos))
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// A new connection at `now`. A client queues its hello at once.
    pub fn new(cfg: ConnConfig, now: Instant) -> Conn {
        let mut conn = Conn {
            state: State::Handshake,
            raw: RecvBuf::new(),
            plain: RecvBuf::new(),
            decoder: None,
            encoder: None,
            peer: None,
            tls: false,
            #[cfg(feature = "tls")]
            tls_in: RecvBuf::new(),
            #[cfg(feature = "tls")]
            session: None,
            #[cfg(feature = "tls")]
            sealed: Vec::new(),
            #[cfg(feature = "tls")]
            hello_repeated: false,
            call_ids: None,
            recv_hint: MIN_RECV,
            returned: 0,
            eof: false,
            pending: Vec::new(),
            pending_frames: 0,
            batch_deadline: None,
            out: Vec::new(),
            out_pos: 0,
            handshake_deadline: Some(now + cfg.handshake_timeout),
            liveness: Liveness::new(
                match (cfg.role, &cfg.profile) {
                    (Role::Client, Profile::Native) => cfg.keepalive,
                    _ => None,
                },
                cfg.idle_timeout,
            ),
            close_after_flush: false,
            close_reason: None,
            opened: false,
            handshake_complete: false,
            counters: Counters::default(),
            cfg,
        };
        if conn.cfg.role == Role::Client {
            let wants_tls = conn.cfg.tls != TlsPolicy::Off;
            conn.write_hello(wants_tls);
            if matches!(conn.cfg.profile, Profile::Fastrpc(_)) {
                conn.call_ids = Some(Box::default());
            }
        }
        conn
    }

    // ----- getters -----

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// True while frames flow both ways.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// True once the handshake (the hello exchange, and TLS when agreed) has completed: the
    /// connection has been [`State::Open`], whatever its state now.
    pub fn handshake_complete(&self) -> bool {
        self.handshake_complete
    }

    /// The configuration this connection was made with.
    pub fn config(&self) -> &ConnConfig {
        &self.cfg
    }

    /// The peer's hello, once received.
    pub fn peer_hello(&self) -> Option<&Hello> {
        self.peer.as_ref()
    }

    /// The largest payload the peer accepts (from its hello), once known.
    pub fn peer_max_frame_len(&self) -> Option<u32> {
        self.peer.map(|h| h.max_frame_len)
    }

    /// Whether the hello exchange agreed on TLS.
    pub fn tls_agreed(&self) -> bool {
        self.tls
    }

    /// The rustls connection, once the hellos agreed on TLS: the peer's certificates
    /// (`peer_certificates()`), the negotiated protocol version and cipher suite, ...
    #[cfg(feature = "tls")]
    pub fn tls_session(&self) -> Option<&rustls::Connection> {
        self.session.as_deref()
    }

    /// Why the connection closed: `Ok(())` for an orderly end, or the protocol error. `None`
    /// until [`State::Closed`] (or until a refusal that closes once written is decided).
    pub fn close_reason(&self) -> Option<&Result<(), ProtocolError>> {
        self.close_reason.as_ref()
    }

    /// Bytes queued or encoded but not yet written: the owner stops producing when this is
    /// large (write backpressure).
    pub fn send_backlog(&self) -> usize {
        self.pending.len() + self.out.len() - self.out_pos
    }

    /// True when nothing is queued or waiting to be written.
    pub fn is_flushed(&self) -> bool {
        self.send_backlog() == 0
    }

    /// Running totals.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Bytes of buffer memory held (not counting rustls's own buffers).
    pub fn buffered_capacity(&self) -> usize {
        let ids = self.call_ids.as_ref().map_or(0, |ids| {
            ids.outstanding.capacity() * std::mem::size_of::<(u32, u32)>()
        });
        let held = self.raw.capacity()
            + self.plain.capacity()
            + self.pending.capacity()
            + self.out.capacity()
            + ids;
        #[cfg(feature = "tls")]
        let held = held + self.tls_in.capacity() + self.sealed.capacity();
        held
    }

    /// True once, right after the handshake completes: the owner's cue to start sending.
    pub fn poll_opened(&mut self) -> bool {
        std::mem::take(&mut self.opened)
    }

    // ----- inputs -----

    /// Free room to read the peer's bytes into; report how many arrived with
    /// [`Conn::handle_recv`].
    pub fn recv_buf(&mut self) -> &mut [u8] {
        let hint = self.recv_hint;
        self.socket_buf().spare(hint)
    }

    /// `n` bytes were read into the slice last returned by [`Conn::recv_buf`].
    pub fn handle_recv(&mut self, n: usize) {
        let buf = self.socket_buf();
        let offered = buf.spare(0).len();
        buf.commit(n);
        if n == offered && self.recv_hint < MAX_RECV {
            self.recv_hint *= 2;
        }
        self.liveness.on_bytes();
        match self.state {
            State::Handshake => self.read_hello(),
            #[cfg(feature = "tls")]
            State::Tls | State::Open => self.read_tls(),
            _ => {}
        }
    }

    /// The peer closed its side. Frames already received are still delivered by
    /// [`Conn::poll_frame`]; then the connection closes, with [`ProtocolError::Truncated`] if
    /// the stream ended inside a frame, or [`ProtocolError::HandshakeClosed`] if it ended
    /// before the handshake (the hellos and the TLS handshake) was done: what a side sees when
    /// the other refuses its hello by closing.
    ///
    /// A server whose client ended its stream at a frame boundary half-closes instead: once
    /// every frame was delivered it goes [`State::Draining`] (reading no more, flushing what
    /// is queued at once), so that its owner can answer the requests it read, flush, and then
    /// [`Conn::close`]. The idle timeout, if set, still runs meanwhile.
    ///
    /// With TLS, an end of stream without TLS's `close_notify` is taken like a plaintext one:
    /// frames delimit themselves, so a stream that ends at a frame boundary ends cleanly.
    pub fn handle_eof(&mut self) {
        self.eof = true;
        if matches!(self.state, State::Handshake | State::Tls) {
            self.fail(ProtocolError::HandshakeClosed);
        }
    }

    /// `n` bytes of what [`Conn::poll_transmit`] returned were written.
    pub fn handle_sent(&mut self, n: usize) {
        self.out_pos += n;
        debug_assert!(self.out_pos <= self.out.len());
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            // Frames queued after a refusal are never sent (see `flush_due`).
            if self.close_after_flush {
                self.set_state(State::Closed);
            }
        }
    }

    /// Time has reached `now`: a handshake (hello exchange and TLS, or a refusal's answer)
    /// past its deadline fails; a keepalive ping is queued, or the connection closes for a
    /// keepalive or idle timeout (see [`super::liveness`]); a due batch is flushed by the next
    /// [`Conn::poll_transmit`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(deadline) = self.handshake_deadline {
            if now >= deadline && self.state != State::Closed {
                self.fail(ProtocolError::Handshake(handshake::HandshakeError::Timeout));
            }
        }
        if !matches!(self.state, State::Open | State::Draining) {
            return;
        }
        match self.liveness.poll_due(now) {
            Some(Due::Ping) if self.state == State::Open => {
                frame::encode(&mut self.pending, 0, FrameKind::Ping, &[]);
                self.pending_frames += 1;
            }
            Some(Due::Close(e)) => {
                self.fail(ProtocolError::Liveness(e));
            }
            _ => {}
        }
    }

    /// The owner read from the connection (or took its frames) at `now`: what arrived since
    /// the last call restarts the keepalive and idle clocks from `now`. Call it after each
    /// read; [`Conn::poll_transmit`] and [`Conn::handle_timeout`] do the same for what
    /// happened before them.
    #[inline]
    pub fn handle_progress(&mut self, now: Instant) {
        self.liveness.stamp(now);
    }

    // ----- mutators -----

    /// Queues one frame for the next flush.
    ///
    /// The caller has checked the payload against the peer's limit; frames queued before the
    /// handshake completes go out after it.
    ///
    /// With [`Profile::Fastrpc`], a request's payload is its `tlv` body and `id` is the
    /// owner's: the connection sends it under a wire id of its own (0 for
    /// [`FrameKind::RequestNoReply`]) and answers it under `id` again. An error response goes
    /// out as a plain response whose value is the payload: fastrpc has no error frames.
    pub fn send_frame(&mut self, id: u32, kind: FrameKind, payload: &[u8]) {
        if matches!(kind, FrameKind::Response | FrameKind::ErrorResponse) {
            self.liveness.on_answers(1);
        }
        match self.cfg.profile {
            Profile::Native => frame::encode(&mut self.pending, id, kind, payload),
            Profile::Fastrpc(_) => {
                let wire_id = match (kind, self.call_ids.as_deref_mut()) {
                    (FrameKind::RequestNoReply, _) => 0,
                    (FrameKind::Request, Some(ids)) => ids.insert(id),
                    _ => id,
                };
                self.pending.extend_from_slice(&wire_id.to_le_bytes());
                if !kind.is_request() {
                    self.pending
                        .extend_from_slice(&(payload.len() as u32).to_le_bytes());
                }
                self.pending.extend_from_slice(payload);
            }
        }
        self.pending_frames += 1;
    }

    /// Queues `frames` frames already encoded back to back in `bytes` (a server: the answers
    /// to as many requests).
    pub fn queue_encoded(&mut self, bytes: &[u8], frames: u64) {
        if self.cfg.role == Role::Server {
            self.liveness.on_answers(frames);
        }
        self.pending.extend_from_slice(bytes);
        self.pending_frames += frames;
    }

    /// Stops reading frames; queued output is still flushed, at once rather than at the batch
    /// delay. The owner calls [`Conn::close`] when it has nothing left to send.
    ///
    /// Before the handshake has completed, queued frames are dropped: with reading stopped the
    /// handshake cannot complete, and frames never go out before it.
    pub fn begin_drain(&mut self) {
        match self.state {
            State::Open => self.set_state(State::Draining),
            State::Handshake | State::Tls => {
                self.pending.clear();
                self.pending_frames = 0;
                self.batch_deadline = None;
                self.set_state(State::Draining);
            }
            State::Draining | State::Closed => {}
        }
    }

    /// Closes now; unwritten output is dropped.
    pub fn close(&mut self) {
        if self.state != State::Closed {
            self.close_reason.get_or_insert(Ok(()));
            self.set_state(State::Closed);
        }
    }

    /// Gives buffer memory back while the connection is quiet.
    pub fn release_idle_buffers(&mut self) {
        if self.returned == 0 {
            self.raw.shrink_idle(0);
            self.plain.shrink_idle(0);
        }
        if self.pending.is_empty() {
            self.pending = Vec::new();
        }
        if self.out.is_empty() {
            self.out = Vec::new();
        }
        if let Some(ids) = self.call_ids.as_deref_mut() {
            if ids.outstanding.is_empty() {
                ids.outstanding.shrink_to_fit();
            }
        }
        if let Some(encoder) = self.encoder.as_mut() {
            encoder.release_idle();
        }
        if let Some(decoder) = self.decoder.as_mut() {
            decoder.release_idle();
        }
        #[cfg(feature = "tls")]
        {
            self.tls_in.shrink_idle(0);
            self.sealed = Vec::new();
        }
    }

    // ----- outputs -----

    /// The next frame from the peer, borrowed from the read buffer until the next call.
    ///
    /// `Ok(None)` means no whole frame is buffered (or the connection is not open). An error
    /// closes the connection; it is returned once and kept as the [`Conn::close_reason`].
    pub fn poll_frame(&mut self) -> Result<Option<Frame<'_>>, ProtocolError> {
        let returned = std::mem::take(&mut self.returned);
        let compressed = self.decoder.is_some();
        self.stream_mut(compressed).consume(returned);
        if self.state != State::Open {
            return Ok(None);
        }
        loop {
            let Framed {
                id,
                kind,
                start,
                len,
            } = match self.decode_frame(compressed) {
                Ok(Some(header)) => header,
                Ok(None) if compressed && self.decompress_step()? => continue,
                Ok(None) => return self.at_end_of_input(compressed).map(|()| None),
                Err(e) => return Err(self.fail(e)),
            };
            if kind.is_from_client() != (self.cfg.role == Role::Server) {
                return Err(self.fail(ProtocolError::UnexpectedKind(kind)));
            }
            self.counters.frames_in += 1;
            let owes_answer = kind == FrameKind::Request && self.cfg.role == Role::Server;
            self.liveness.on_frame(owes_answer);
            if matches!(kind, FrameKind::Ping | FrameKind::Pong) {
                // Keepalive: a ping is answered at once, in the next batch; neither is the
                // owner's business.
                if kind == FrameKind::Ping {
                    frame::encode(&mut self.pending, id, FrameKind::Pong, &[]);
                    self.pending_frames += 1;
                }
                self.stream_mut(compressed).consume(len);
                continue;
            }
            let id = match self.call_ids.as_deref_mut() {
                None => id,
                Some(ids) => match ids.take(id) {
                    Some(id) => id,
                    None => {
                        // Id 0 (a Go server's overload answer to a no-response call) or a
                        // call this connection no longer waits for: read past it.
                        self.counters.discarded += 1;
                        self.stream_mut(compressed).consume(len);
                        continue;
                    }
                },
            };
            self.returned = len;
            let payload = &self.stream(compressed).filled()[start..len];
            return Ok(Some(Frame { id, kind, payload }));
        }
    }

    /// Bytes to write to the socket, flushing the batch first if it is due at `now`.
    ///
    /// Write them, report the count with [`Conn::handle_sent`], and call again until `None`
    /// (or the socket would block: then call again when it is writable).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<&[u8]> {
        self.liveness.stamp(now);
        if self.flush_due(now) {
            self.flush();
        }
        (self.out_pos < self.out.len() && self.state != State::Closed)
            .then(|| &self.out[self.out_pos..])
    }

    /// The earliest time [`Conn::handle_timeout`] or [`Conn::poll_transmit`] has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let handshake = match self.state {
            State::Closed => None,
            _ => self.handshake_deadline,
        };
        let batch = match self.state {
            State::Open if !self.pending.is_empty() => self.batch_deadline,
            _ => None,
        };
        let liveness = match self.state {
            State::Open | State::Draining => self.liveness.next_deadline(),
            _ => None,
        };
        [handshake, batch, liveness].into_iter().flatten().min()
    }

    // ----- internals -----

    /// The next frame in the peer's stream, if a whole one is buffered.
    fn decode_frame(&self, compressed: bool) -> Result<Option<Framed>, ProtocolError> {
        let buf = self.stream(compressed).filled();
        Ok(match (&self.cfg.profile, self.cfg.role) {
            (Profile::Native, _) => frame::decode(buf, self.cfg.max_frame_len)?
                .map(|f| Framed::new(f.id, f.kind, frame::HEADER_LEN, f.wire_len())),
            (Profile::Fastrpc(_), Role::Server) => {
                fastrpc::decode_request(buf)?.map(|(req, len)| {
                    let kind = match req.id {
                        0 => FrameKind::RequestNoReply,
                        _ => FrameKind::Request,
                    };
                    Framed::new(req.id, kind, fastrpc::ID_LEN, len)
                })
            }
            (Profile::Fastrpc(_), Role::Client) => {
                fastrpc::decode_response(buf)?.map(|(resp, len)| {
                    Framed::new(
                        resp.id,
                        FrameKind::Response,
                        fastrpc::RESPONSE_OVERHEAD,
                        len,
                    )
                })
            }
        })
    }

    fn set_state(&mut self, state: State) {
        if self.state != state {
            self.state = state;
        }
    }

    /// Closes with `err` and hands it back for returning.
    fn fail(&mut self, err: ProtocolError) -> ProtocolError {
        self.close_reason = Some(Err(err.clone()));
        self.set_state(State::Closed);
        err
    }

    /// Closes with `err` once the output already queued (a refusal, an alert) is written.
    fn fail_after_flush(&mut self, err: ProtocolError) {
        if self.out_pos == self.out.len() {
            self.fail(err);
            return;
        }
        self.close_reason = Some(Err(err));
        self.pending.clear();
        self.pending_frames = 0;
        self.close_after_flush = true;
        self.set_state(State::Draining);
    }

    /// The buffer the socket reads into: TLS records once TLS runs, else `raw`.
    fn socket_buf(&mut self) -> &mut RecvBuf {
        #[cfg(feature = "tls")]
        if self.session.is_some() {
            return &mut self.tls_in;
        }
        &mut self.raw
    }

    /// The buffer frames are decoded from: `plain` when the peer compresses, else `raw`.
    fn stream(&self, compressed: bool) -> &RecvBuf {
        if compressed {
            &self.plain
        } else {
            &self.raw
        }
    }

    fn stream_mut(&mut self, compressed: bool) -> &mut RecvBuf {
        if compressed {
            &mut self.plain
        } else {
            &mut self.raw
        }
    }

    /// Decompresses some of `raw` into `plain`. False when no progress is possible.
    ///
    /// Each step writes at most [`DECODE_STEP`] bytes, or what the frame being assembled still
    /// needs when that is more (its header has passed the length check), so decompressed memory
    /// stays bounded by the frame limit whatever the compression ratio.
    fn decompress_step(&mut self) -> Result<bool, ProtocolError> {
        // Even with no input left, a decoder may hold output back for want of room.
        let Some(decoder) = self.decoder.as_mut() else {
            return Ok(false);
        };
        let waiting = self.plain.filled();
        // (A fastrpc frame is assembled in steps of DECODE_STEP: at most 2 MiB, 32 steps.)
        let header = match self.cfg.profile {
            Profile::Native => waiting.get(5..frame::HEADER_LEN),
            Profile::Fastrpc(_) => None,
        };
        let need = match header {
            Some(len) => {
                let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
                (frame::HEADER_LEN + len).saturating_sub(waiting.len())
            }
            None => 0,
        };
        let room = self.plain.spare(DECODE_STEP);
        let room_len = room.len().min(DECODE_STEP.max(need));
        match decoder.decode(self.raw.filled(), &mut room[..room_len]) {
            Ok((consumed, produced)) => {
                self.raw.consume(consumed);
                self.plain.commit(produced);
                Ok(consumed > 0 || produced > 0)
            }
            Err(e) => Err(self.fail(ProtocolError::Decompress(e))),
        }
    }

    /// No whole frame is buffered: after end of stream that closes the connection.
    fn at_end_of_input(&mut self, compressed: bool) -> Result<(), ProtocolError> {
        if !self.eof {
            return Ok(());
        }
        let leftover = if compressed {
            !self.plain.is_empty()
                || !self.raw.is_empty()
                || self
                    .decoder
                    .as_ref()
                    .is_some_and(|d| d.pending_output() > 0)
        } else {
            !self.raw.is_empty()
        };
        if leftover {
            return Err(self.fail(ProtocolError::Truncated));
        }
        if self.cfg.role == Role::Server && self.handshake_complete {
            // Half-close: the owner answers what it read, then closes.
            self.set_state(State::Draining);
        } else {
            self.close();
        }
        Ok(())
    }

    fn read_hello(&mut self) {
        let PeerHello {
            hello,
            len,
            deferred,
        } = match self.decode_hello() {
            Ok(Some(decoded)) => decoded,
            Ok(None) => return,
            Err(e) => {
                self.fail(e);
                return;
            }
        };
        self.raw.consume(len);
        self.peer = Some(hello);
        let agreed = match self.cfg.role {
            Role::Server => {
                let agreed = handshake::negotiate(self.cfg.tls, hello.tls);
                // The answer says what this server does about TLS, so a refused client learns why.
                let tls_byte = match agreed {
                    Ok(tls) => tls,
                    Err(_) => self.cfg.tls == TlsPolicy::Required,
                };
                self.write_hello(tls_byte);
                agreed
            }
            Role::Client => handshake::accept_server_tls(self.cfg.tls != TlsPolicy::Off, hello.tls),
        };
        match deferred.and(agreed) {
            Ok(true) => self.start_tls(),
            Ok(false) => self.open(hello),
            Err(e) if self.cfg.role == Role::Server => {
                self.fail_after_flush(ProtocolError::Handshake(e));
            }
            Err(e) => {
                self.fail(ProtocolError::Handshake(e));
            }
        }
    }

    /// The peer's hello, if all of it is at the start of `raw`.
    ///
    /// A fastrpc block is told as a native [`Hello`] whose frame limit is what the fastrpc
    /// peer accepts (see [`fastrpc::max_payload`]).
    fn decode_hello(&self) -> Result<Option<PeerHello>, ProtocolError> {
        let settings = match &self.cfg.profile {
            Profile::Native => {
                let hello = handshake::decode(self.raw.filled())?;
                return Ok(hello.map(|hello| PeerHello {
                    hello,
                    len: HELLO_LEN,
                    deferred: Ok(()),
                }));
            }
            Profile::Fastrpc(settings) => settings,
        };
        let Some(theirs) = fastrpc::decode_hello(settings, self.raw.filled())? else {
            return Ok(None);
        };
        let compression = match theirs.compression() {
            Some(c) if c.is_available() => Ok(c),
            Some(c) => Err(handshake::HandshakeError::CompressionUnavailable(c)),
            None => Err(handshake::HandshakeError::UnknownCompression(
                theirs.compression,
            )),
        };
        // A client's peer is a server, which takes requests.
        let to_server = self.cfg.role == Role::Client;
        let hello = Hello::new(compression.unwrap_or(Compression::None), theirs.tls)
            .with_max_frame_len(fastrpc::max_payload(to_server));
        Ok(Some(PeerHello {
            hello,
            len: settings.hello_len(),
            deferred: compression.map(drop),
        }))
    }

    /// Queues this side's hello: a client's says whether it wants TLS, a server's answer
    /// whether TLS runs (or, refusing, what it requires).
    fn write_hello(&mut self, tls: bool) {
        match &self.cfg.profile {
            Profile::Native => {
                let hello = Hello::new(self.cfg.compression, tls)
                    .with_max_frame_len(self.cfg.max_frame_len);
                self.out.extend_from_slice(&hello.encode());
            }
            Profile::Fastrpc(settings) => {
                fastrpc::encode_hello(settings, self.cfg.compression, tls, &mut self.out);
            }
        }
    }

    fn open(&mut self, peer: Hello) {
        self.handshake_deadline = None;
        // Codec availability was checked when the hello was decoded and when the owner built
        // the config, so neither constructor can fail here.
        if peer.compression != Compression::None {
            self.decoder = Decoder::new(peer.compression).ok();
        }
        if self.cfg.compression != Compression::None {
            self.encoder = Encoder::new(self.cfg.compression, self.cfg.flate_level).ok();
        }
        self.opened = true;
        self.handshake_complete = true;
        self.liveness.start();
        self.set_state(State::Open);
    }

    /// The hellos agreed on TLS: starts the TLS handshake (state `Tls`).
    fn start_tls(&mut self) {
        self.tls = true;
        #[cfg(feature = "tls")]
        {
            let session: Option<Result<rustls::Connection, rustls::Error>> =
                match self.cfg.role {
                    Role::Client => self.cfg.tls_client.as_ref().map(|(config, name)| {
                        rustls::ClientConnection::new(config.clone(), name.clone()).map(Into::into)
                    }),
                    Role::Server => self.cfg.tls_server.as_ref().map(|config| {
                        rustls::ServerConnection::new(config.clone()).map(Into::into)
                    }),
                };
            match session {
                Some(Ok(session)) => {
                    self.session = Some(Box::new(session));
                    self.set_state(State::Tls);
                    // Whatever followed the hello in the same read is TLS already.
                    if !self.raw.is_empty() {
                        self.tls_in.extend_from_slice(self.raw.filled());
                        let n = self.raw.len();
                        self.raw.consume(n);
                    }
                    self.read_tls(); // also queues the client's first TLS message
                }
                Some(Err(e)) => {
                    self.fail(ProtocolError::Tls(TlsError::from(&e)));
                }
                None => self.fail_after_flush(ProtocolError::Tls(TlsError::new(
                    TlsErrorKind::NotConfigured,
                    "",
                ))),
            }
        }
        #[cfg(not(feature = "tls"))]
        self.fail_after_flush(ProtocolError::Tls(TlsError::new(
            TlsErrorKind::NotConfigured,
            "this build has no TLS (cargo feature `tls`)",
        )));
    }

    /// Hands the TLS records received to rustls, moves the plaintext it yields to `raw`, queues
    /// what rustls has to send, and moves the TLS handshake along.
    #[cfg(feature = "tls")]
    fn read_tls(&mut self) {
        let Some(session) = self.session.as_deref_mut() else {
            return;
        };
        let mut failed = None;
        while !self.tls_in.is_empty() {
            // rustls takes at most about one record per call: loop until it has everything.
            let mut records = self.tls_in.filled();
            let taken = match session.read_tls(&mut records) {
                Ok(n) => n,
                Err(e) => {
                    failed = Some(TlsError::new(TlsErrorKind::Protocol, e.to_string()));
                    break;
                }
            };
            self.tls_in.consume(taken);
            let io = match session.process_new_packets() {
                Ok(io) => io,
                Err(e) => {
                    failed = Some(TlsError::from(&e));
                    break;
                }
            };
            let n = io.plaintext_bytes_to_read();
            if n > 0 {
                let room = &mut self.raw.spare(n)[..n];
                if let Err(e) = session.reader().read_exact(room) {
                    failed = Some(TlsError::new(TlsErrorKind::Protocol, e.to_string()));
                    break;
                }
                self.raw.commit(n);
            }
            if io.peer_has_closed() {
                // close_notify: the peer's stream ends here; anything after it is ignored.
                self.eof = true;
                let rest = self.tls_in.len();
                self.tls_in.consume(rest);
                break;
            }
            if taken == 0 {
                break;
            }
        }
        // Handshake messages, and the alert that goes with an error.
        self.write_tls_out();
        match failed {
            // During the TLS handshake the peer learns why from the alert, so it is written
            // before closing. Once open, the connection closes at once.
            Some(e) if self.state == State::Tls => self.fail_after_flush(ProtocolError::Tls(e)),
            Some(e) => {
                self.fail(ProtocolError::Tls(e));
            }
            None if self.state == State::Tls => self.advance_tls(),
            None => {}
        }
    }

    /// During `Tls`: once this side's TLS handshake is done, repeats the hello inside TLS; once
    /// the peer's repeated hello is in and matches, opens.
    #[cfg(feature = "tls")]
    fn advance_tls(&mut self) {
        let (Some(session), Some(peer)) = (self.session.as_deref_mut(), self.peer) else {
            return;
        };
        if session.is_handshaking() {
            if self.eof {
                self.fail(ProtocolError::HandshakeClosed);
            }
            return;
        }
        if matches!(self.cfg.profile, Profile::Fastrpc(_)) {
            // Go's fastrpc does not repeat its handshake block inside TLS.
            self.open(peer);
            return;
        }
        if !self.hello_repeated {
            self.hello_repeated = true;
            let own =
                Hello::new(self.cfg.compression, true).with_max_frame_len(self.cfg.max_frame_len);
            // rustls accepts it whole: far below its buffer limit, and the handshake is done.
            let _ = session.writer().write_all(&own.encode());
            self.write_tls_out();
        }
        if self.raw.len() < HELLO_LEN {
            if self.eof {
                self.fail(ProtocolError::HandshakeClosed);
            }
            return;
        }
        let repeated = handshake::decode(&self.raw.filled()[..HELLO_LEN]);
        if repeated != Ok(Some(peer)) {
            self.fail(ProtocolError::Tls(TlsError::new(
                TlsErrorKind::HelloMismatch,
                "",
            )));
            return;
        }
        self.raw.consume(HELLO_LEN);
        self.open(peer);
    }

    /// Appends what rustls has to send (records, alerts) to the output.
    #[cfg(feature = "tls")]
    fn write_tls_out(&mut self) {
        let Some(session) = self.session.as_deref_mut() else {
            return;
        };
        if self.out_pos > 0 && self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        while session.wants_write() {
            match session.write_tls(&mut self.out) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    fn flush_due(&mut self, now: Instant) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        match self.state {
            State::Open => {}
            // Frames go out only after the handshake, and never after a refusal.
            State::Draining => return self.handshake_complete && !self.close_after_flush,
            State::Handshake | State::Tls | State::Closed => return false,
        }
        if self.cfg.max_batch_delay.is_zero() || self.pending.len() >= self.cfg.flush_threshold {
            return true;
        }
        match self.batch_deadline {
            Some(deadline) => now >= deadline,
            None => {
                self.batch_deadline = Some(now + self.cfg.max_batch_delay);
                false
            }
        }
    }

    /// Turns the queued frames into one contiguous chunk of output.
    fn flush(&mut self) {
        if self.out_pos > 0 && self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        #[cfg(feature = "tls")]
        let sealed = self.seal_batch();
        #[cfg(not(feature = "tls"))]
        let sealed = false;
        if !sealed {
            match &mut self.encoder {
                None if self.out.is_empty() => std::mem::swap(&mut self.out, &mut self.pending),
                None => self.out.extend_from_slice(&self.pending),
                Some(encoder) => encoder.encode(&self.pending, &mut self.out),
            }
        }
        self.pending.clear();
        self.counters.frames_out += std::mem::take(&mut self.pending_frames);
        self.counters.flushes += 1;
        self.batch_deadline = None;
    }

    /// With TLS: compresses the batch if configured, writes it into rustls in one piece, and
    /// appends the records to the output. False without TLS.
    ///
    /// rustls cuts what it is given into records of at most 16 KiB of plaintext; it takes up
    /// to its buffer limit (64 KiB, four full records) per write, and the records are moved
    /// to the output after each, so a large batch never sits in memory twice over.
    #[cfg(feature = "tls")]
    fn seal_batch(&mut self) -> bool {
        let Some(session) = self.session.as_deref_mut() else {
            return false;
        };
        let mut rest: &[u8] = match &mut self.encoder {
            Some(encoder) => {
                self.sealed.clear();
                encoder.encode(&self.pending, &mut self.sealed);
                &self.sealed
            }
            None => &self.pending,
        };
        while !rest.is_empty() {
            // Fails only after a TLS error, and the connection is closed by then.
            let n = session.writer().write(rest).unwrap_or(0);
            rest = &rest[n..];
            while session.wants_write() {
                match session.write_tls(&mut self.out) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            if n == 0 {
                break;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    //! Every transition of [`Conn`], driven through a client and a server wired together in
    //! memory. Time is an `Instant` advanced by hand: no sockets, no sleeps, no threads.
    //!
    //! Tests that involve a compressed stream loop over every compression this build has, so
    //! they cover flate and snappy as soon as those codecs are compiled in.

    use super::*;
    use crate::wire::frame::{FrameError, HEADER_LEN};
    use crate::wire::handshake::HandshakeError;

    const ALL: [Compression; 3] = [Compression::None, Compression::Flate, Compression::Snappy];
    const NO_LIMIT: usize = usize::MAX;

    /// The compressions this build can run.
    fn compressions() -> impl Iterator<Item = Compression> + Clone {
        ALL.into_iter().filter(|c| c.is_available())
    }

    fn config(role: Role, compression: Compression) -> ConnConfig {
        ConnConfig {
            compression,
            ..ConnConfig::new(role)
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A frame copied out of a connection.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Got {
        id: u32,
        kind: FrameKind,
        payload: Vec<u8>,
    }

    fn got(id: u32, kind: FrameKind, payload: &[u8]) -> Got {
        Got {
            id,
            kind,
            payload: payload.to_vec(),
        }
    }

    /// Hands `bytes` to `conn` as a socket would: into `recv_buf()`, at most `piece` per read.
    fn feed(conn: &mut Conn, mut bytes: &[u8], piece: usize) {
        while !bytes.is_empty() {
            let room = conn.recv_buf();
            let n = room.len().min(piece).min(bytes.len());
            room[..n].copy_from_slice(&bytes[..n]);
            conn.handle_recv(n);
            bytes = &bytes[n..];
        }
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

    /// Every frame `conn` can decode now, then how decoding stopped: `Ok(())` when no whole
    /// frame is left, or the error (returned once).
    fn receive(conn: &mut Conn) -> (Vec<Got>, Result<(), ProtocolError>) {
        let mut frames = Vec::new();
        loop {
            match conn.poll_frame() {
                Ok(Some(f)) => frames.push(got(f.id, f.kind, f.payload)),
                Ok(None) => return (frames, Ok(())),
                Err(e) => return (frames, Err(e)),
            }
        }
    }

    fn receive_ok(conn: &mut Conn) -> Vec<Got> {
        let (frames, end) = receive(conn);
        assert_eq!(end, Ok(()), "after {} frames", frames.len());
        frames
    }

    /// Deterministic bytes that no codec can shrink much.
    fn noise(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    fn closed_with(err: ProtocolError) -> Option<Result<(), ProtocolError>> {
        Some(Err(err))
    }

    /// A client and a server joined back to back, and the simulated clock.
    struct Pair {
        client: Conn,
        server: Conn,
        now: Instant,
    }

    impl Pair {
        fn new(client: ConnConfig, server: ConnConfig) -> Pair {
            let now = Instant::now();
            Pair {
                client: Conn::new(client, now),
                server: Conn::new(server, now),
                now,
            }
        }

        /// A pair past the hello exchange, with both `poll_opened` cues consumed.
        fn open(client: ConnConfig, server: ConnConfig) -> Pair {
            let mut pair = Pair::new(client, server);
            pair.client_to_server(NO_LIMIT);
            pair.server_to_client(NO_LIMIT);
            assert_eq!(
                (pair.client.state(), pair.server.state()),
                (State::Open, State::Open)
            );
            assert!(pair.client.poll_opened());
            assert!(pair.server.poll_opened());
            pair
        }

        /// Moves what the client writes now into the server, in reads of at most `piece`.
        fn client_to_server(&mut self, piece: usize) -> Vec<u8> {
            let bytes = transmit(&mut self.client, self.now);
            feed(&mut self.server, &bytes, piece);
            bytes
        }

        /// Moves what the server writes now into the client, in reads of at most `piece`.
        fn server_to_client(&mut self, piece: usize) -> Vec<u8> {
            let bytes = transmit(&mut self.server, self.now);
            feed(&mut self.client, &bytes, piece);
            bytes
        }
    }

    // ----- handshake -----

    #[test]
    fn client_queues_its_hello_at_creation() {
        let now = Instant::now();
        let wire_bytes = [
            (Compression::None, 0),
            (Compression::Flate, 1),
            (Compression::Snappy, 2),
        ];
        for (compression, byte) in wire_bytes {
            if !compression.is_available() {
                continue;
            }
            for (tls, tls_byte) in [
                (TlsPolicy::Off, 0),
                (TlsPolicy::Optional, 1),
                (TlsPolicy::Required, 1),
            ] {
                let mut client = Conn::new(
                    ConnConfig {
                        tls,
                        ..config(Role::Client, compression)
                    },
                    now,
                );
                assert_eq!(client.state(), State::Handshake);
                assert_eq!(client.send_backlog(), HELLO_LEN);
                let expected = [b'B', b'R', b'P', b'C', 1, byte, tls_byte, 0, 0, 0, 4];
                assert_eq!(client.poll_transmit(now), Some(&expected[..]));
            }
        }
    }

    #[test]
    fn server_waits_for_the_whole_client_hello_before_answering() {
        let now = Instant::now();
        let mut server = Conn::new(config(Role::Server, Compression::None), now);
        assert_eq!(server.poll_transmit(now), None);
        let hello = *b"BRPC\x01\x00\x00\x00\x00\x00\x04";
        for (i, &b) in hello.iter().enumerate().take(HELLO_LEN - 1) {
            feed(&mut server, &[b], 1);
            assert_eq!(server.state(), State::Handshake, "after {} bytes", i + 1);
            assert_eq!(server.poll_transmit(now), None);
            assert!(!server.poll_opened());
        }
        feed(&mut server, &hello[HELLO_LEN - 1..], 1);
        assert_eq!(server.state(), State::Open);
        assert_eq!(
            server.peer_hello(),
            Some(&Hello::new(Compression::None, false))
        );
        assert_eq!(
            server.poll_transmit(now),
            Some(&b"BRPC\x01\x00\x00\x00\x00\x00\x04"[..])
        );
        assert!(server.poll_opened());
        assert!(!server.poll_opened());
    }

    #[test]
    fn hello_exchange_opens_both_sides_once_in_every_compression_pair() {
        for cc in compressions() {
            for sc in compressions() {
                let mut p = Pair::new(config(Role::Client, cc), config(Role::Server, sc));
                let deadline = p.now + Duration::from_secs(3);
                assert_eq!(p.client.next_deadline(), Some(deadline));
                assert_eq!(p.server.next_deadline(), Some(deadline));

                assert_eq!(p.client_to_server(NO_LIMIT), Hello::new(cc, false).encode());
                assert_eq!(p.server.state(), State::Open);
                assert_eq!(p.client.state(), State::Handshake);
                assert!(p.server.poll_opened());
                assert!(!p.server.poll_opened());
                assert!(!p.client.poll_opened());

                assert_eq!(p.server_to_client(NO_LIMIT), Hello::new(sc, false).encode());
                assert_eq!(p.client.state(), State::Open);
                assert!(p.client.poll_opened());
                assert!(!p.client.poll_opened());

                assert_eq!(p.server.peer_hello(), Some(&Hello::new(cc, false)));
                assert_eq!(p.client.peer_hello(), Some(&Hello::new(sc, false)));
                for conn in [&p.client, &p.server] {
                    assert!(conn.is_open());
                    assert!(!conn.tls_agreed());
                    assert_eq!(conn.next_deadline(), None);
                    assert_eq!(conn.close_reason(), None);
                    assert_eq!(conn.counters(), Counters::default());
                    assert!(conn.is_flushed());
                }
            }
        }
    }

    #[test]
    fn each_hello_carries_its_senders_frame_limit() {
        let mut p = Pair::new(
            ConnConfig {
                max_frame_len: 1000,
                ..config(Role::Client, Compression::None)
            },
            ConnConfig {
                max_frame_len: 0x0102_0304,
                ..config(Role::Server, Compression::None)
            },
        );
        assert_eq!(p.server.peer_max_frame_len(), None);
        assert_eq!(p.client_to_server(NO_LIMIT)[7..], 1000u32.to_le_bytes());
        assert_eq!(p.server.peer_max_frame_len(), Some(1000));
        assert_eq!(p.client.peer_max_frame_len(), None);
        assert_eq!(p.server_to_client(NO_LIMIT)[7..], [4, 3, 2, 1]);
        assert_eq!(p.client.peer_max_frame_len(), Some(0x0102_0304));
    }

    #[test]
    fn frames_queued_during_the_handshake_go_out_after_it() {
        for c in compressions() {
            let mut p = Pair::new(
                config(Role::Client, c),
                config(Role::Server, Compression::None),
            );
            p.client.send_frame(1, FrameKind::Request, b"early");
            p.client.send_frame(2, FrameKind::RequestNoReply, b"");
            assert_eq!(
                p.client_to_server(NO_LIMIT).len(),
                HELLO_LEN,
                "only the hello before the answer"
            );
            assert_eq!(transmit(&mut p.client, p.now), b"");
            assert_eq!(p.client.send_backlog(), 2 * HEADER_LEN + 5);
            assert_eq!(p.client.counters().flushes, 0);

            p.server_to_client(NO_LIMIT);
            p.client_to_server(NO_LIMIT);
            assert_eq!(
                receive_ok(&mut p.server),
                [
                    got(1, FrameKind::Request, b"early"),
                    got(2, FrameKind::RequestNoReply, b"")
                ]
            );
            assert_eq!(
                p.client.counters(),
                Counters {
                    frames_in: 0,
                    frames_out: 2,
                    flushes: 1,
                    discarded: 0,
                }
            );
            assert_eq!(
                p.server.counters(),
                Counters {
                    frames_in: 2,
                    frames_out: 0,
                    flushes: 0,
                    discarded: 0,
                }
            );
        }
    }

    #[test]
    fn garbage_hello_is_refused_without_an_answer() {
        use HandshakeError::*;
        let cases: [(&[u8], HandshakeError); 8] = [
            (b"X", BadMagic),
            (b"BRX", BadMagic),
            (b"GET / HTTP/1.1\r\n\r\n", BadMagic),
            (b"\x16\x03\x01\x02\x00\x01\x00", BadMagic), // a TLS ClientHello
            (b"BRPC\x02", UnsupportedVersion(2)),
            (b"BRPC\x00\x00\x00", UnsupportedVersion(0)),
            (b"BRPC\x01\x07\x00", UnknownCompression(7)),
            (b"BRPC\x01\x00\x02", BadTlsFlag(2)),
        ];
        for (bytes, err) in cases {
            let now = Instant::now();
            let mut server = Conn::new(config(Role::Server, Compression::None), now);
            feed(&mut server, bytes, NO_LIMIT);
            assert_eq!(server.state(), State::Closed, "{bytes:?}");
            assert_eq!(
                server.close_reason(),
                closed_with(ProtocolError::Handshake(err)).as_ref()
            );
            assert_eq!(server.poll_transmit(now), None, "told nothing");
            assert_eq!(server.next_deadline(), None);
            assert_eq!(server.peer_hello(), None);
            assert!(!server.poll_opened());
        }
    }

    #[test]
    fn client_refuses_a_garbage_answer() {
        let cases: [(&[u8], HandshakeError); 3] = [
            (b"HTTP/1.1 400 Bad Request\r\n", HandshakeError::BadMagic),
            (b"BRPC\x09", HandshakeError::UnsupportedVersion(9)),
            (b"BRPC\x01\x00\x07", HandshakeError::BadTlsFlag(7)),
        ];
        for (bytes, err) in cases {
            let mut p = Pair::new(
                config(Role::Client, Compression::None),
                ConnConfig::new(Role::Server),
            );
            transmit(&mut p.client, p.now);
            feed(&mut p.client, bytes, NO_LIMIT);
            assert_eq!(p.client.state(), State::Closed);
            assert_eq!(
                p.client.close_reason(),
                closed_with(ProtocolError::Handshake(err)).as_ref()
            );
            assert!(!p.client.poll_opened());
        }
    }

    #[test]
    fn hello_naming_a_codec_this_build_lacks_is_refused() {
        for c in ALL {
            let now = Instant::now();
            let mut server = Conn::new(config(Role::Server, Compression::None), now);
            feed(&mut server, &Hello::new(c, false).encode(), NO_LIMIT);
            if c.is_available() {
                assert_eq!(server.state(), State::Open, "{c}");
            } else {
                let err = ProtocolError::Handshake(HandshakeError::CompressionUnavailable(c));
                assert_eq!(server.state(), State::Closed, "{c}");
                assert_eq!(server.close_reason(), closed_with(err).as_ref());
                assert_eq!(server.poll_transmit(now), None);
            }
        }
    }

    #[test]
    fn tls_required_server_answers_then_closes_and_the_client_learns_why() {
        let server_cfg = ConnConfig {
            tls: TlsPolicy::Required,
            ..config(Role::Server, Compression::None)
        };
        let mut p = Pair::new(config(Role::Client, Compression::None), server_cfg);
        let reason = closed_with(ProtocolError::Handshake(HandshakeError::TlsRequired));

        p.client_to_server(NO_LIMIT);
        assert_eq!(p.server.state(), State::Draining);
        assert_eq!(p.server.close_reason(), reason.as_ref());
        assert!(!p.server.poll_opened());
        let answer = b"BRPC\x01\x00\x01\x00\x00\x00\x04";
        assert_eq!(p.server.poll_transmit(p.now), Some(&answer[..]));
        p.server.handle_sent(3);
        assert_eq!(
            p.server.state(),
            State::Draining,
            "closes only once the answer is written"
        );
        assert_eq!(p.server.poll_transmit(p.now), Some(&answer[3..]));
        p.server.handle_sent(answer.len() - 3);
        assert_eq!(p.server.state(), State::Closed);
        assert_eq!(p.server.close_reason(), reason.as_ref());
        assert_eq!(p.server.poll_transmit(p.now), None);
        assert_eq!(p.server.next_deadline(), None);

        feed(&mut p.client, answer, NO_LIMIT);
        assert_eq!(p.client.state(), State::Closed);
        assert_eq!(p.client.close_reason(), reason.as_ref());
        assert!(!p.client.poll_opened());
    }

    #[test]
    fn tls_not_offered_refuses_a_client_that_asks_for_it() {
        let client_cfg = ConnConfig {
            tls: TlsPolicy::Optional,
            ..config(Role::Client, Compression::None)
        };
        let mut p = Pair::new(client_cfg, config(Role::Server, Compression::None));
        let reason = closed_with(ProtocolError::Handshake(HandshakeError::TlsNotOffered));

        assert_eq!(
            p.client_to_server(NO_LIMIT),
            b"BRPC\x01\x00\x01\x00\x00\x00\x04"
        );
        assert_eq!(p.server.state(), State::Draining);
        assert_eq!(
            p.server_to_client(NO_LIMIT),
            b"BRPC\x01\x00\x00\x00\x00\x00\x04"
        );
        assert_eq!(p.server.state(), State::Closed);
        assert_eq!(p.server.close_reason(), reason.as_ref());
        assert_eq!(p.client.state(), State::Closed);
        assert_eq!(p.client.close_reason(), reason.as_ref());
    }

    #[test]
    fn tls_is_agreed_when_asked_for_and_offered() {
        use TlsPolicy::*;
        // (client, server) -> TLS on this connection
        for (client_tls, server_tls, agreed) in [
            (Off, Off, false),
            (Off, Optional, false),
            (Optional, Optional, true),
            (Required, Optional, true),
            (Optional, Required, true),
        ] {
            let mut p = Pair::new(
                with_tls(ConnConfig {
                    tls: client_tls,
                    ..config(Role::Client, Compression::None)
                }),
                with_tls(ConnConfig {
                    tls: server_tls,
                    ..config(Role::Server, Compression::None)
                }),
            );
            p.client_to_server(NO_LIMIT);
            assert_eq!(
                p.server_to_client(NO_LIMIT),
                [b'B', b'R', b'P', b'C', 1, 0, agreed as u8, 0, 0, 0, 4]
            );
            assert_eq!(
                (p.client.tls_agreed(), p.server.tls_agreed()),
                (agreed, agreed)
            );
            let states = match (agreed, cfg!(feature = "tls")) {
                (false, _) => (State::Open, State::Open),
                (true, true) => (State::Tls, State::Tls),
                (true, false) => (State::Closed, State::Closed),
            };
            assert_eq!((p.client.state(), p.server.state()), states);
            if agreed && !cfg!(feature = "tls") {
                let err = ProtocolError::Tls(crate::wire::tls::TlsError::new(
                    crate::wire::tls::TlsErrorKind::NotConfigured,
                    "this build has no TLS (cargo feature `tls`)",
                ));
                assert_eq!(p.client.close_reason(), closed_with(err).as_ref());
            }
        }
    }

    /// Without the `tls` feature there is nothing to add.
    #[cfg(not(feature = "tls"))]
    fn with_tls(cfg: ConnConfig) -> ConnConfig {
        cfg
    }

    #[test]
    fn handshake_times_out_at_its_deadline_and_not_before() {
        for role in [Role::Client, Role::Server] {
            for received in [&b""[..], b"BRPC\x01"] {
                let t0 = Instant::now();
                let cfg = ConnConfig {
                    handshake_timeout: ms(250),
                    ..config(role, Compression::None)
                };
                let mut conn = Conn::new(cfg, t0);
                feed(&mut conn, received, NO_LIMIT);
                let deadline = t0 + ms(250);
                assert_eq!(conn.next_deadline(), Some(deadline));
                conn.handle_timeout(deadline - Duration::from_nanos(1));
                assert_eq!(conn.state(), State::Handshake);
                assert_eq!(conn.close_reason(), None);
                conn.handle_timeout(deadline);
                assert_eq!(conn.state(), State::Closed);
                let err = ProtocolError::Handshake(HandshakeError::Timeout);
                assert_eq!(conn.close_reason(), closed_with(err).as_ref());
                assert_eq!(conn.next_deadline(), None);
                assert_eq!(conn.poll_transmit(deadline), None);
            }
        }
    }

    #[test]
    fn unwritten_refusal_times_out_at_the_handshake_deadline() {
        let server_cfg = ConnConfig {
            tls: TlsPolicy::Required,
            ..config(Role::Server, Compression::None)
        };
        let mut p = Pair::new(config(Role::Client, Compression::None), server_cfg);
        p.client_to_server(NO_LIMIT);
        assert_eq!(p.server.state(), State::Draining);
        let deadline = p.now + Duration::from_secs(3);
        assert_eq!(p.server.next_deadline(), Some(deadline));
        p.server.handle_timeout(deadline);
        assert_eq!(p.server.state(), State::Closed);
        let err = ProtocolError::Handshake(HandshakeError::Timeout);
        assert_eq!(p.server.close_reason(), closed_with(err).as_ref());
    }

    #[test]
    fn open_connection_has_no_handshake_deadline() {
        let mut p = Pair::open(
            config(Role::Client, Compression::None),
            config(Role::Server, Compression::None),
        );
        let later = p.now + Duration::from_secs(3600);
        p.client.handle_timeout(later);
        p.server.handle_timeout(later);
        assert_eq!(
            (p.client.state(), p.server.state()),
            (State::Open, State::Open)
        );
    }

    #[test]
    fn end_of_stream_inside_the_hello_closes_the_handshake() {
        let hello = Hello::new(Compression::None, false).encode();
        for role in [Role::Client, Role::Server] {
            for cut in 0..HELLO_LEN {
                let now = Instant::now();
                let mut conn = Conn::new(config(role, Compression::None), now);
                feed(&mut conn, &hello[..cut], NO_LIMIT);
                conn.handle_eof();
                assert_eq!(conn.state(), State::Closed, "{role:?} cut at {cut}");
                assert_eq!(
                    conn.close_reason(),
                    closed_with(ProtocolError::HandshakeClosed).as_ref()
                );
                assert_eq!(conn.poll_transmit(now), None);
            }
        }
    }

    // ----- open -----

    #[test]
    fn requests_and_responses_round_trip_in_every_compression_pair() {
        use FrameKind::*;
        let big = noise(100_000, 1);
        for cc in compressions() {
            for sc in compressions() {
                let mut p = Pair::open(config(Role::Client, cc), config(Role::Server, sc));
                p.client.send_frame(1, Request, b"foobar");
                p.client.send_frame(2, RequestNoReply, b"");
                p.client.send_frame(u32::MAX, Request, &big);
                p.client_to_server(NO_LIMIT);
                assert_eq!(
                    receive_ok(&mut p.server),
                    [
                        got(1, Request, b"foobar"),
                        got(2, RequestNoReply, b""),
                        got(u32::MAX, Request, &big)
                    ],
                    "{cc} -> {sc}"
                );
                p.server.send_frame(1, Response, &[0x5a; 261]);
                p.server.send_frame(u32::MAX, ErrorResponse, b"boom");
                p.server_to_client(NO_LIMIT);
                assert_eq!(
                    receive_ok(&mut p.client),
                    [
                        got(1, Response, &[0x5a; 261]),
                        got(u32::MAX, ErrorResponse, b"boom")
                    ]
                );
                assert_eq!(
                    p.client.counters(),
                    Counters {
                        frames_in: 2,
                        frames_out: 3,
                        flushes: 1,
                        discarded: 0,
                    }
                );
                assert_eq!(
                    p.server.counters(),
                    Counters {
                        frames_in: 3,
                        frames_out: 2,
                        flushes: 1,
                        discarded: 0,
                    }
                );
                assert_eq!(
                    (p.client.state(), p.server.state()),
                    (State::Open, State::Open)
                );
            }
        }
    }

    #[test]
    fn each_side_refuses_frames_of_the_other_direction() {
        use FrameKind::*;
        for c in compressions() {
            for kind in [Response, ErrorResponse] {
                let mut p = Pair::open(config(Role::Client, c), config(Role::Server, c));
                p.client.send_frame(1, Request, b"fine");
                p.client.send_frame(2, kind, b"wrong way");
                p.client.send_frame(3, Request, b"never seen");
                p.client_to_server(NO_LIMIT);
                let (frames, end) = receive(&mut p.server);
                assert_eq!(frames, [got(1, Request, b"fine")]);
                assert_eq!(end, Err(ProtocolError::UnexpectedKind(kind)));
                assert_eq!(p.server.state(), State::Closed);
                assert_eq!(
                    p.server.close_reason(),
                    closed_with(ProtocolError::UnexpectedKind(kind)).as_ref()
                );
                assert_eq!(
                    p.server.poll_frame(),
                    Ok(None),
                    "the error is returned once"
                );
            }
            for kind in [Request, RequestNoReply] {
                let mut p = Pair::open(config(Role::Client, c), config(Role::Server, c));
                p.server.send_frame(1, Response, b"fine");
                p.server.send_frame(2, kind, b"wrong way");
                p.server_to_client(NO_LIMIT);
                let (frames, end) = receive(&mut p.client);
                assert_eq!(frames, [got(1, Response, b"fine")]);
                assert_eq!(end, Err(ProtocolError::UnexpectedKind(kind)));
                assert_eq!(p.client.state(), State::Closed);
                assert_eq!(
                    p.client.close_reason(),
                    closed_with(ProtocolError::UnexpectedKind(kind)).as_ref()
                );
            }
        }
    }

    #[test]
    fn frame_above_the_limit_closes_the_connection() {
        for c in compressions() {
            let server_cfg = ConnConfig {
                max_frame_len: 10,
                ..config(Role::Server, Compression::None)
            };
            let mut p = Pair::open(config(Role::Client, c), server_cfg);
            p.client.send_frame(1, FrameKind::Request, &[7; 10]);
            p.client.send_frame(2, FrameKind::Request, &[7; 11]);
            p.client_to_server(NO_LIMIT);
            let (frames, end) = receive(&mut p.server);
            let err = ProtocolError::Frame(FrameError::TooLong { len: 11, max: 10 });
            assert_eq!(frames, [got(1, FrameKind::Request, &[7; 10])], "{c}");
            assert_eq!(end, Err(err.clone()));
            assert_eq!(p.server.state(), State::Closed);
            assert_eq!(p.server.close_reason(), closed_with(err).as_ref());
        }
    }

    #[test]
    fn unknown_frame_kind_closes_the_connection() {
        for c in compressions() {
            let mut p = Pair::open(
                config(Role::Client, c),
                config(Role::Server, Compression::None),
            );
            p.client.queue_encoded(&[1, 0, 0, 0, 9, 0, 0, 0, 0], 1);
            p.client_to_server(NO_LIMIT);
            let (frames, end) = receive(&mut p.server);
            assert_eq!(frames, []);
            assert_eq!(end, Err(ProtocolError::Frame(FrameError::UnknownKind(9))));
            assert_eq!(p.server.state(), State::Closed);
        }
    }

    #[test]
    fn a_declared_length_reserves_nothing_before_its_bytes_arrive() {
        for c in compressions() {
            let mut p = Pair::open(
                config(Role::Client, c),
                config(Role::Server, Compression::None),
            );
            // A header declaring 60 MiB (under the 64 MiB default limit), and no payload yet.
            let mut header = [0; HEADER_LEN];
            frame::write_header(&mut header, 1, FrameKind::Request, 60 << 20);
            p.client.queue_encoded(&header, 1);
            p.client_to_server(NO_LIMIT);
            assert_eq!(receive_ok(&mut p.server), []);
            assert!(
                p.server.buffered_capacity() <= 2 * (MIN_RECV + DECODE_STEP),
                "{c}: {} bytes held",
                p.server.buffered_capacity()
            );
        }
    }

    #[test]
    fn frames_split_into_one_byte_reads_arrive_whole() {
        use FrameKind::*;
        let sent = [
            got(1, Request, b""),
            got(2, Request, b"split"),
            got(3, RequestNoReply, &noise(3000, 2)),
        ];
        for c in compressions() {
            let mut p = Pair::open(
                config(Role::Client, c),
                config(Role::Server, Compression::None),
            );
            for f in &sent {
                p.client.send_frame(f.id, f.kind, &f.payload);
            }
            let bytes = transmit(&mut p.client, p.now);
            let mut frames = Vec::new();
            for (i, b) in bytes.iter().enumerate() {
                feed(&mut p.server, &[*b], 1);
                frames.extend(receive_ok(&mut p.server));
                if c == Compression::None {
                    // Each frame is delivered by the read that completes it, not before.
                    let ends = [HEADER_LEN, 2 * HEADER_LEN + 5, bytes.len()];
                    let complete = ends.iter().filter(|&&end| end <= i + 1).count();
                    assert_eq!(frames.len(), complete, "after {} bytes", i + 1);
                }
            }
            assert_eq!(frames, sent, "{c}");
        }
    }

    #[test]
    fn end_of_stream_at_a_frame_boundary_half_closes_a_server() {
        for c in compressions() {
            let mut p = Pair::open(
                config(Role::Client, c),
                config(Role::Server, Compression::None),
            );
            p.client.send_frame(1, FrameKind::Request, b"a");
            p.client.send_frame(2, FrameKind::Request, b"bc");
            p.client_to_server(NO_LIMIT);
            p.server.handle_eof();
            assert_eq!(
                p.server.state(),
                State::Open,
                "buffered frames are still delivered"
            );
            let (frames, end) = receive(&mut p.server);
            assert_eq!(
                frames,
                [
                    got(1, FrameKind::Request, b"a"),
                    got(2, FrameKind::Request, b"bc")
                ]
            );
            assert_eq!(end, Ok(()));
            // Half-closed: reads no more, still answers, at once; the owner closes after.
            assert_eq!(p.server.state(), State::Draining, "{c}");
            assert_eq!(p.server.close_reason(), None);
            p.server.send_frame(1, FrameKind::Response, b"A");
            p.server.send_frame(2, FrameKind::Response, b"BC");
            p.server_to_client(NO_LIMIT);
            assert!(p.server.is_flushed());
            assert_eq!(
                receive_ok(&mut p.client),
                [
                    got(1, FrameKind::Response, b"A"),
                    got(2, FrameKind::Response, b"BC")
                ]
            );
            p.server.close();
            assert_eq!(p.server.close_reason(), Some(&Ok(())));
        }
        // A client whose server ends its stream closes at once.
        let mut p = Pair::open(
            config(Role::Client, Compression::None),
            config(Role::Server, Compression::None),
        );
        p.client.handle_eof();
        assert_eq!(p.client.poll_frame(), Ok(None));
        assert_eq!(p.client.state(), State::Closed);
        assert_eq!(p.client.close_reason(), Some(&Ok(())));
    }

    #[test]
    fn end_of_stream_inside_a_frame_is_truncation() {
        // Uncompressed: every cut inside the second frame.
        let mut p = Pair::open(
            config(Role::Client, Compression::None),
            config(Role::Server, Compression::None),
        );
        p.client.send_frame(1, FrameKind::Request, b"whole");
        p.client.send_frame(2, FrameKind::Request, b"cut short");
        let bytes = transmit(&mut p.client, p.now);
        let first = HEADER_LEN + 5;
        for cut in first + 1..bytes.len() {
            let mut server = Conn::new(config(Role::Server, Compression::None), p.now);
            feed(
                &mut server,
                &Hello::new(Compression::None, false).encode(),
                NO_LIMIT,
            );
            feed(&mut server, &bytes[..cut], NO_LIMIT);
            server.handle_eof();
            let (frames, end) = receive(&mut server);
            assert_eq!(
                frames,
                [got(1, FrameKind::Request, b"whole")],
                "cut at {cut}"
            );
            assert_eq!(end, Err(ProtocolError::Truncated));
            assert_eq!(
                server.close_reason(),
                closed_with(ProtocolError::Truncated).as_ref()
            );
        }
        // Each compression: the stream cut in the middle of a large frame's batch.
        for c in compressions() {
            let mut p = Pair::open(
                config(Role::Client, c),
                config(Role::Server, Compression::None),
            );
            p.client.send_frame(1, FrameKind::Request, b"whole");
            p.client_to_server(NO_LIMIT);
            p.client
                .send_frame(2, FrameKind::Request, &noise(20_000, 3));
            let batch = transmit(&mut p.client, p.now);
            feed(&mut p.server, &batch[..batch.len() / 2], NO_LIMIT);
            p.server.handle_eof();
            let (frames, end) = receive(&mut p.server);
            assert_eq!(frames, [got(1, FrameKind::Request, b"whole")], "{c}");
            assert_eq!(end, Err(ProtocolError::Truncated), "{c}");
        }
    }

    // ----- batching and flushing -----

    #[test]
    fn frames_of_one_turn_leave_in_one_flush() {
        const N: u32 = 100;
        for c in compressions() {
            let mut p = Pair::open(config(Role::Client, c), config(Role::Server, c));
            let mut plain = Vec::new();
            for id in 0..N {
                let payload = id.to_le_bytes().repeat(id as usize % 7);
                p.client.send_frame(id, FrameKind::Request, &payload);
                frame::encode(&mut plain, id, FrameKind::Request, &payload);
            }
            assert_eq!(p.client.send_backlog(), plain.len());
            assert_eq!(
                p.client.counters().flushes,
                0,
                "nothing flushes before poll_transmit"
            );

            let chunk = p.client.poll_transmit(p.now).expect("a flush").to_vec();
            p.client.handle_sent(chunk.len());
            assert_eq!(p.client.poll_transmit(p.now), None, "one contiguous chunk");
            assert!(p.client.is_flushed());
            assert_eq!(
                p.client.counters(),
                Counters {
                    frames_in: 0,
                    frames_out: N as u64,
                    flushes: 1,
                    discarded: 0,
                }
            );
            if c == Compression::None {
                assert_eq!(chunk, plain);
            }
            feed(&mut p.server, &chunk, NO_LIMIT);
            let frames = receive_ok(&mut p.server);
            assert_eq!(frames.len(), N as usize, "{c}");
            for (id, f) in (0..N).zip(&frames) {
                assert_eq!(
                    (f.id, &f.payload),
                    (id, &id.to_le_bytes().repeat(id as usize % 7))
                );
            }
        }
    }

    #[test]
    fn batch_delay_holds_frames_until_the_deadline_armed_by_the_first_poll() {
        let delay = ms(1);
        for c in compressions() {
            let client_cfg = ConnConfig {
                max_batch_delay: delay,
                ..config(Role::Client, c)
            };
            let mut p = Pair::open(client_cfg, config(Role::Server, c));
            let t0 = p.now;
            p.client.send_frame(1, FrameKind::Request, b"one");

            let first_poll = t0 + Duration::from_micros(300);
            assert_eq!(p.client.poll_transmit(first_poll), None);
            let deadline = first_poll + delay;
            assert_eq!(p.client.next_deadline(), Some(deadline));

            // More frames join the batch without moving its deadline.
            p.client.send_frame(2, FrameKind::Request, b"two");
            assert_eq!(
                p.client
                    .poll_transmit(first_poll + Duration::from_micros(500)),
                None
            );
            assert_eq!(p.client.next_deadline(), Some(deadline));
            assert_eq!(
                p.client.poll_transmit(deadline - Duration::from_nanos(1)),
                None
            );
            assert_eq!(p.client.counters().flushes, 0);

            p.now = deadline;
            p.client_to_server(NO_LIMIT);
            assert_eq!(
                p.client.counters(),
                Counters {
                    frames_in: 0,
                    frames_out: 2,
                    flushes: 1,
                    discarded: 0,
                }
            );
            assert_eq!(p.client.next_deadline(), None);
            assert_eq!(
                receive_ok(&mut p.server),
                [
                    got(1, FrameKind::Request, b"one"),
                    got(2, FrameKind::Request, b"two")
                ]
            );

            // The next batch arms a new deadline from its own first poll.
            p.client.send_frame(3, FrameKind::Request, b"three");
            let later = deadline + ms(5);
            assert_eq!(p.client.poll_transmit(later), None);
            assert_eq!(p.client.next_deadline(), Some(later + delay));
        }
    }

    #[test]
    fn reaching_the_flush_threshold_flushes_at_once() {
        for c in compressions() {
            let client_cfg = ConnConfig {
                max_batch_delay: Duration::from_secs(1),
                flush_threshold: 100,
                ..config(Role::Client, c)
            };
            let mut p = Pair::open(client_cfg, config(Role::Server, c));
            p.client.send_frame(1, FrameKind::Request, &[1; 90]); // 99 bytes queued
            assert_eq!(p.client.poll_transmit(p.now), None);
            p.client.send_frame(2, FrameKind::Request, b""); // 108 bytes queued
            assert!(
                p.client.poll_transmit(p.now).is_some(),
                "same instant, no timer"
            );
            p.client_to_server(NO_LIMIT);
            assert_eq!(p.client.counters().flushes, 1);
            assert_eq!(p.client.next_deadline(), None);
            assert_eq!(receive_ok(&mut p.server).len(), 2);

            // Exactly the threshold is enough.
            p.client.send_frame(3, FrameKind::Request, &[3; 91]); // 100 bytes queued
            assert!(p.client.poll_transmit(p.now).is_some());
            assert_eq!(p.client.counters().flushes, 2);
        }
    }

    #[test]
    fn partial_writes_keep_the_byte_order() {
        for c in compressions() {
            let mut p = Pair::open(config(Role::Client, c), config(Role::Server, c));
            let mut expected = Vec::new();
            let mut written = Vec::new();
            for round in 0..20u32 {
                for k in 0..3 {
                    let id = round * 3 + k;
                    let payload = noise((id as usize * 37) % 300, id);
                    p.client.send_frame(id, FrameKind::Request, &payload);
                    expected.push(got(id, FrameKind::Request, &payload));
                }
                // The socket takes at most 50 bytes per write.
                let bytes = p.client.poll_transmit(p.now).expect("flushed at once");
                let unsent = bytes.len();
                let n = unsent.min(50);
                written.extend_from_slice(&bytes[..n]);
                assert_eq!(p.client.send_backlog(), unsent);
                p.client.handle_sent(n);
                assert_eq!(p.client.send_backlog(), unsent - n);
            }
            written.extend(transmit(&mut p.client, p.now));
            assert_eq!(p.client.counters().flushes, 20);
            feed(&mut p.server, &written, NO_LIMIT);
            assert_eq!(receive_ok(&mut p.server), expected, "{c}");
        }
    }

    #[test]
    fn draining_flushes_at_once_whatever_the_delay_and_reads_no_more() {
        for c in compressions() {
            let client_cfg = ConnConfig {
                max_batch_delay: Duration::from_secs(1),
                ..config(Role::Client, c)
            };
            let mut p = Pair::open(client_cfg, config(Role::Server, c));
            p.client.send_frame(1, FrameKind::Request, b"last");
            p.client.begin_drain();
            assert_eq!(p.client.state(), State::Draining);
            assert_eq!(p.client.next_deadline(), None);
            p.client_to_server(NO_LIMIT);
            assert!(p.client.is_flushed());
            assert_eq!(p.client.counters().flushes, 1);
            assert_eq!(p.client.state(), State::Draining, "the owner closes");
            assert_eq!(
                receive_ok(&mut p.server),
                [got(1, FrameKind::Request, b"last")]
            );

            p.server.send_frame(1, FrameKind::Response, b"ignored");
            p.server_to_client(NO_LIMIT);
            assert_eq!(p.client.poll_frame(), Ok(None));
            assert_eq!(p.client.counters().frames_in, 0);

            p.client.close();
            assert_eq!(p.client.state(), State::Closed);
            assert_eq!(p.client.close_reason(), Some(&Ok(())));
        }
    }

    #[test]
    fn close_drops_unwritten_output_and_ends_cleanly() {
        let mut p = Pair::open(
            config(Role::Client, Compression::None),
            config(Role::Server, Compression::None),
        );
        p.server.send_frame(1, FrameKind::Request, b"in flight");
        p.server_to_client(NO_LIMIT);
        p.client.send_frame(1, FrameKind::Request, b"never sent");
        p.client.close();
        assert_eq!(p.client.state(), State::Closed);
        assert_eq!(p.client.close_reason(), Some(&Ok(())));
        assert_eq!(p.client.poll_transmit(p.now), None);
        assert_eq!(p.client.poll_frame(), Ok(None));
        assert_eq!(p.client.next_deadline(), None);

        // During the handshake too.
        let now = Instant::now();
        let mut client = Conn::new(config(Role::Client, Compression::None), now);
        client.close();
        assert_eq!(client.close_reason(), Some(&Ok(())));
        assert_eq!(client.poll_transmit(now), None);
        assert_eq!(client.next_deadline(), None);

        // An error already recorded is kept.
        let mut server = Conn::new(config(Role::Server, Compression::None), now);
        feed(&mut server, b"nope", NO_LIMIT);
        server.close();
        let err = ProtocolError::Handshake(HandshakeError::BadMagic);
        assert_eq!(server.close_reason(), closed_with(err).as_ref());
    }

    #[test]
    fn idle_connections_give_their_buffers_back() {
        for c in compressions() {
            let mut p = Pair::open(config(Role::Client, c), config(Role::Server, c));
            for round in 0..2 {
                p.client
                    .send_frame(round, FrameKind::Request, &noise(10_000, round));
                p.client_to_server(NO_LIMIT);
                assert_eq!(receive_ok(&mut p.server).len(), 1);
                p.server
                    .send_frame(round, FrameKind::Response, &noise(20_000, round));
                p.server_to_client(NO_LIMIT);
                assert_eq!(receive_ok(&mut p.client).len(), 1);
                assert!(p.client.buffered_capacity() > 0);
                assert!(p.server.buffered_capacity() > 0);
                p.client.release_idle_buffers();
                p.server.release_idle_buffers();
                assert_eq!(p.client.buffered_capacity(), 0, "{c} round {round}");
                assert_eq!(p.server.buffered_capacity(), 0, "{c} round {round}");
            }
        }
    }

    #[test]
    fn release_keeps_a_partly_received_frame_and_unsent_output() {
        let mut p = Pair::open(
            config(Role::Client, Compression::None),
            config(Role::Server, Compression::None),
        );
        p.client
            .send_frame(7, FrameKind::Request, b"half here, half later");
        let bytes = transmit(&mut p.client, p.now);
        feed(&mut p.server, &bytes[..15], NO_LIMIT);
        assert_eq!(receive_ok(&mut p.server), []);
        p.server.release_idle_buffers();
        assert!(p.server.buffered_capacity() >= 15);
        feed(&mut p.server, &bytes[15..], NO_LIMIT);
        assert_eq!(
            receive_ok(&mut p.server),
            [got(7, FrameKind::Request, b"half here, half later")]
        );

        p.server.send_frame(7, FrameKind::Response, b"unsent");
        let unsent = p.server.poll_transmit(p.now).expect("flushed").len();
        p.server.release_idle_buffers();
        assert_eq!(p.server.send_backlog(), unsent);
        assert_eq!(
            p.server.poll_transmit(p.now),
            Some(&frame_bytes(7, FrameKind::Response, b"unsent")[..])
        );
    }

    fn frame_bytes(id: u32, kind: FrameKind, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame::encode(&mut out, id, kind, payload);
        out
    }

    #[test]
    fn draining_during_the_handshake_sends_no_frame_before_the_hello_exchange() {
        for c in compressions() {
            let mut p = Pair::new(
                config(Role::Client, c),
                config(Role::Server, Compression::None),
            );
            p.client.send_frame(1, FrameKind::Request, b"queued early");
            p.client.begin_drain();
            // `send_frame`: "frames queued before the handshake completes go out after it".
            assert_eq!(
                transmit(&mut p.client, p.now),
                Hello::new(c, false).encode(),
                "{c}"
            );
            assert!(
                p.client.is_flushed(),
                "the frames are dropped: they can never go out"
            );
            assert_eq!(p.client.state(), State::Draining);
        }
    }

    /// Regression: the flate decoder can hold inflated bytes back in its window when `out` is
    /// full; they must be asked for even once the raw input is used up.
    #[test]
    fn inflated_bytes_held_by_the_flate_decoder_are_delivered() {
        if !Compression::Flate.is_available() {
            return;
        }
        let mut p = Pair::open(
            config(Role::Client, Compression::Flate),
            config(Role::Server, Compression::None),
        );
        // A first batch of 10 plain bytes moves the inflater's 32 KiB window off its boundary...
        p.client.send_frame(0, FrameKind::Request, &[7]);
        p.client_to_server(NO_LIMIT);
        assert_eq!(
            receive_ok(&mut p.server),
            [got(0, FrameKind::Request, &[7])]
        );
        // ...so that inflating this 65 585-byte batch into 64 KiB of room ends with all input
        // consumed and the last frame's bytes still inside the inflater.
        let batch: Vec<Got> = (1..=65)
            .map(|id| got(id, FrameKind::Request, &[id as u8 % 3; 1000]))
            .collect();
        for f in &batch {
            p.client.send_frame(f.id, f.kind, &f.payload);
        }
        p.client_to_server(NO_LIMIT);
        let before_eof = receive_ok(&mut p.server);
        p.server.handle_eof();
        let (after_eof, end) = receive(&mut p.server);
        assert_eq!(
            (before_eof.len(), after_eof.len(), end),
            (65, 0, Ok(())),
            "frames delivered before and after the end of stream, and how it ended"
        );
        assert_eq!(before_eof, batch);
    }

    // ----- fastrpc profile -----

    fn fastrpc(role: Role, compression: Compression, sniff: &[u8], version: u8) -> ConnConfig {
        ConnConfig {
            profile: Profile::Fastrpc(FastrpcSettings::new(sniff, version)),
            ..config(role, compression)
        }
    }

    /// A request's `tlv` body.
    fn tlv(name: &[u8], value: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        fastrpc::encode_request_body(&mut body, name, value).unwrap();
        body
    }

    #[test]
    fn fastrpc_hellos_are_go_handshake_blocks() {
        let mut p = Pair::new(
            fastrpc(Role::Client, Compression::None, b"abc", 7),
            fastrpc(Role::Server, Compression::None, b"abc", 7),
        );
        assert_eq!(p.client_to_server(1), b"abc\x07\x01\x00");
        assert_eq!(p.server_to_client(1), b"abc\x07\x01\x00");
        assert_eq!(
            (p.client.state(), p.server.state()),
            (State::Open, State::Open)
        );
        assert!(p.client.poll_opened() && p.server.poll_opened());
        // What each side may send the other: a request's body, a response's value.
        assert_eq!(
            (p.client.peer_max_frame_len(), p.server.peer_max_frame_len()),
            (
                Some(8 + 2 * fastrpc::MAX_FIELD_LEN),
                Some(fastrpc::MAX_FIELD_LEN)
            )
        );
        for c in compressions() {
            let mut p = Pair::new(
                fastrpc(Role::Client, c, b"", 0),
                fastrpc(Role::Server, Compression::None, b"", 0),
            );
            assert_eq!(
                p.client_to_server(NO_LIMIT),
                [0, fastrpc::to_fastrpc_byte(c), 0]
            );
            assert_eq!(p.server_to_client(NO_LIMIT), [0, 1, 0]);
            assert_eq!(p.server.peer_hello().map(|h| h.compression), Some(c));
        }
    }

    #[test]
    fn fastrpc_client_numbers_calls_on_the_wire_and_maps_answers_back() {
        let mut p = Pair::open(
            fastrpc(Role::Client, Compression::None, b"", 0),
            fastrpc(Role::Server, Compression::None, b"", 0),
        );
        p.client
            .send_frame(1000, FrameKind::Request, &tlv(b"foo", b"bar"));
        p.client
            .send_frame(2000, FrameKind::Request, &tlv(b"x", b"yy"));
        p.client
            .send_frame(3000, FrameKind::RequestNoReply, &tlv(b"n", b"w"));
        p.client
            .send_frame(4000, FrameKind::Request, &tlv(b"", b""));
        let wire = p.client_to_server(5);
        // Byte for byte what Go's client sends for these calls (vectors/01-none).
        let mut go = Vec::new();
        for (id, name, value) in [
            (1, &b"foo"[..], &b"bar"[..]),
            (2, b"x", b"yy"),
            (0, b"n", b"w"),
            (3, b"", b""),
        ] {
            fastrpc::encode_request(&mut go, id, name, value).unwrap();
        }
        assert_eq!(wire, go);
        assert_eq!(
            receive_ok(&mut p.server),
            [
                got(1, FrameKind::Request, &tlv(b"foo", b"bar")),
                got(2, FrameKind::Request, &tlv(b"x", b"yy")),
                got(0, FrameKind::RequestNoReply, &tlv(b"n", b"w")),
                got(3, FrameKind::Request, &tlv(b"", b"")),
            ]
        );
        // Answers in any order; an error response is a plain value on this profile.
        p.server.send_frame(3, FrameKind::Response, b"re:=");
        p.server.send_frame(1, FrameKind::ErrorResponse, b"boom");
        p.server.send_frame(2, FrameKind::Response, b"re:x=yy");
        let wire = p.server_to_client(3);
        let mut go = Vec::new();
        fastrpc::encode_response(&mut go, 3, b"re:=").unwrap();
        fastrpc::encode_response(&mut go, 1, b"boom").unwrap();
        fastrpc::encode_response(&mut go, 2, b"re:x=yy").unwrap();
        assert_eq!(wire, go);
        assert_eq!(
            receive_ok(&mut p.client),
            [
                got(4000, FrameKind::Response, b"re:="),
                got(1000, FrameKind::Response, b"boom"),
                got(2000, FrameKind::Response, b"re:x=yy"),
            ]
        );
        // The next call takes the next number: ids are not reused soon after their answer.
        p.client
            .send_frame(1000, FrameKind::Request, &tlv(b"a", b"b"));
        p.client_to_server(NO_LIMIT);
        assert_eq!(receive_ok(&mut p.server)[0].id, 4);
    }

    #[test]
    fn fastrpc_client_reads_past_answers_nobody_waits_for() {
        let mut p = Pair::open(
            fastrpc(Role::Client, Compression::None, b"", 0),
            fastrpc(Role::Server, Compression::None, b"", 0),
        );
        p.client.send_frame(7, FrameKind::Request, &tlv(b"a", b""));
        p.client_to_server(NO_LIMIT);
        assert_eq!(receive_ok(&mut p.server).len(), 1);
        // Go's overload answer to a no-response call (id 0), an id never sent, the answer,
        // and a second answer to the same id.
        for id in [0, 99, 1, 1] {
            p.server.send_frame(id, FrameKind::Response, b"v");
        }
        p.server_to_client(NO_LIMIT);
        assert_eq!(
            receive_ok(&mut p.client),
            [got(7, FrameKind::Response, b"v")]
        );
        assert_eq!(p.client.counters().discarded, 3);
        assert_eq!(p.client.counters().frames_in, 4);
        assert_eq!(p.client.state(), State::Open);
    }

    #[test]
    fn fastrpc_quiet_client_gives_its_id_map_back() {
        let mut p = Pair::open(
            fastrpc(Role::Client, Compression::None, b"", 0),
            fastrpc(Role::Server, Compression::None, b"", 0),
        );
        for id in 0..1000 {
            p.client.send_frame(id, FrameKind::Request, &tlv(b"", b""));
        }
        p.client_to_server(NO_LIMIT);
        for r in receive_ok(&mut p.server) {
            p.server.send_frame(r.id, FrameKind::Response, b"");
        }
        p.server_to_client(NO_LIMIT);
        assert_eq!(receive_ok(&mut p.client).len(), 1000);
        assert!(p.client.buffered_capacity() >= 1000 * 8);
        p.client.release_idle_buffers();
        assert_eq!(p.client.buffered_capacity(), 0);
    }

    #[test]
    fn fastrpc_every_compression_pair_carries_frames_both_ways() {
        for cc in compressions() {
            for sc in compressions() {
                let mut p = Pair::open(
                    fastrpc(Role::Client, cc, b"", 0),
                    fastrpc(Role::Server, sc, b"", 0),
                );
                let big = noise(200_000, 3);
                for i in 0..3u32 {
                    p.client.send_frame(
                        i,
                        FrameKind::Request,
                        &tlv(b"name", &big[..i as usize * 1000]),
                    );
                }
                p.client_to_server(1000);
                let requests = receive_ok(&mut p.server);
                assert_eq!(requests.len(), 3, "{cc}->{sc}");
                for (i, r) in requests.iter().enumerate() {
                    let (name, value) = fastrpc::split_request_body(&r.payload).unwrap();
                    assert_eq!(
                        (r.id, name, value),
                        (i as u32 + 1, &b"name"[..], &big[..i * 1000])
                    );
                    p.server.send_frame(r.id, FrameKind::Response, value);
                }
                p.server.send_frame(9, FrameKind::Response, &big); // discarded, whatever its size
                p.server_to_client(777);
                let answers = receive_ok(&mut p.client);
                let ids: Vec<u32> = answers.iter().map(|a| a.id).collect();
                assert_eq!(ids, [0, 1, 2], "{cc}->{sc}");
                assert_eq!(answers[2].payload, &big[..2000]);
                assert_eq!(p.client.counters().discarded, 1);
            }
        }
    }

    #[test]
    fn fastrpc_handshake_refusals() {
        // A wrong sniff header or version: the server closes without answering.
        for (client, err) in [
            (
                fastrpc(Role::Client, Compression::None, b"xyz", 0),
                ProtocolError::FastrpcHello(fastrpc::FastrpcHelloError::SniffMismatch {
                    at: 0,
                    got: b'x',
                    expected: b'a',
                }),
            ),
            (
                fastrpc(Role::Client, Compression::None, b"abc", 1),
                ProtocolError::FastrpcHello(fastrpc::FastrpcHelloError::VersionMismatch {
                    got: 1,
                    expected: 0,
                }),
            ),
        ] {
            let mut p = Pair::new(client, fastrpc(Role::Server, Compression::None, b"abc", 0));
            p.client_to_server(NO_LIMIT);
            assert_eq!(p.server.state(), State::Closed);
            assert_eq!(p.server.close_reason(), closed_with(err).as_ref());
            assert_eq!(transmit(&mut p.server, p.now), b"");
        }
        // An unknown compression: the server answers, then closes.
        let now = Instant::now();
        let mut server = Conn::new(fastrpc(Role::Server, Compression::None, b"", 0), now);
        feed(&mut server, &[0, 7, 0], NO_LIMIT);
        assert_eq!(transmit(&mut server, now), [0, 1, 0]);
        assert_eq!(server.state(), State::Closed);
        let err = ProtocolError::Handshake(HandshakeError::UnknownCompression(7));
        assert_eq!(server.close_reason(), closed_with(err).as_ref());
        // A client that wants TLS from a server without it: the server answers tls = 0 and
        // closes (vectors/07c); the client learns why from the answer.
        let mut p = Pair::new(
            ConnConfig {
                tls: TlsPolicy::Required,
                ..fastrpc(Role::Client, Compression::None, b"", 0)
            },
            fastrpc(Role::Server, Compression::None, b"", 0),
        );
        assert_eq!(p.client_to_server(NO_LIMIT), [0, 1, 1]);
        assert_eq!(p.server_to_client(NO_LIMIT), [0, 1, 0]);
        assert_eq!(p.server.state(), State::Closed);
        let err = ProtocolError::Handshake(HandshakeError::TlsNotOffered);
        assert_eq!(p.client.close_reason(), closed_with(err).as_ref());
    }

    #[test]
    fn fastrpc_oversized_length_fields_close_before_the_bytes_arrive() {
        let too_long = fastrpc::MAX_FIELD_LEN + 1;
        let mut p = Pair::open(
            fastrpc(Role::Client, Compression::None, b"", 0),
            fastrpc(Role::Server, Compression::None, b"", 0),
        );
        p.client.send_frame(1, FrameKind::Request, &tlv(b"a", b""));
        p.client_to_server(NO_LIMIT);
        receive_ok(&mut p.server);
        let mut header = 1u32.to_le_bytes().to_vec();
        header.extend_from_slice(&too_long.to_le_bytes());
        feed(&mut p.client, &header, NO_LIMIT);
        let err = ProtocolError::FastrpcFrame(fastrpc::FastrpcFrameError::TooLong {
            field: fastrpc::Field::Value,
            len: too_long,
        });
        assert_eq!(receive(&mut p.client), (vec![], Err(err)));
        assert_eq!(p.client.state(), State::Closed);

        let now = Instant::now();
        let mut server = Conn::new(fastrpc(Role::Server, Compression::None, b"", 0), now);
        let mut bytes = vec![0, 1, 0];
        bytes.extend_from_slice(&5u32.to_le_bytes());
        bytes.extend_from_slice(&too_long.to_le_bytes());
        feed(&mut server, &bytes, NO_LIMIT);
        let err = ProtocolError::FastrpcFrame(fastrpc::FastrpcFrameError::TooLong {
            field: fastrpc::Field::Name,
            len: too_long,
        });
        assert_eq!(receive(&mut server), (vec![], Err(err)));
    }

    #[cfg(feature = "tls")]
    use tls_cases::with_tls;

    /// TLS inside the state machine: real rustls sessions (ring provider) with certificates made
    /// by rcgen, bytes moved by hand, time simulated.
    #[cfg(feature = "tls")]
    mod tls_cases {
        use std::sync::{Arc, OnceLock};

        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
        use rustls::server::WebPkiClientVerifier;
        use rustls::{ClientConfig, RootCertStore, ServerConfig};

        use super::*;
        use crate::wire::tls::{TlsError, TlsErrorKind};

        /// A CA, a server certificate for `localhost` and a client certificate it signed, and a
        /// second, unrelated CA.
        struct Pki {
            ca: CertificateDer<'static>,
            other_ca: CertificateDer<'static>,
            server: (CertificateDer<'static>, PrivateKeyDer<'static>),
            client: (CertificateDer<'static>, PrivateKeyDer<'static>),
        }

        fn new_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::DigitalSignature,
            ];
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap()
        }

        fn leaf(
            ca: &rcgen::Issuer<'_, rcgen::KeyPair>,
            name: &str,
        ) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec![name.to_string()])
                .unwrap()
                .signed_by(&key, ca)
                .unwrap();
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            (cert.der().clone(), key)
        }

        fn pki() -> &'static Pki {
            static PKI: OnceLock<Pki> = OnceLock::new();
            PKI.get_or_init(|| {
                let ca = new_ca("batchrpc unit test CA");
                let other = new_ca("someone else's CA");
                Pki {
                    ca: ca.der().clone(),
                    other_ca: other.der().clone(),
                    server: leaf(&ca, "localhost"),
                    client: leaf(&ca, "client.localhost"),
                }
            })
        }

        fn provider() -> Arc<rustls::crypto::CryptoProvider> {
            Arc::new(rustls::crypto::ring::default_provider())
        }

        fn roots(ca: &CertificateDer<'static>) -> Arc<RootCertStore> {
            let mut roots = RootCertStore::empty();
            roots.add(ca.clone()).unwrap();
            Arc::new(roots)
        }

        /// A server config; with `mtls`, client certificates signed by the test CA are required.
        pub(super) fn server_tls(mtls: bool) -> Arc<ServerConfig> {
            let pki = pki();
            let builder = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap();
            let builder = if mtls {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(roots(&pki.ca), provider())
                        .build()
                        .unwrap();
                builder.with_client_cert_verifier(verifier)
            } else {
                builder.with_no_client_auth()
            };
            let (cert, key) = &pki.server;
            Arc::new(
                builder
                    .with_single_cert(vec![cert.clone()], key.clone_key())
                    .unwrap(),
            )
        }

        /// A client config trusting `ca`, with the test client certificate if `identity`.
        fn client_tls(ca: &CertificateDer<'static>, identity: bool) -> Arc<ClientConfig> {
            let builder = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots(ca));
            Arc::new(if identity {
                let (cert, key) = &pki().client;
                builder
                    .with_client_auth_cert(vec![cert.clone()], key.clone_key())
                    .unwrap()
            } else {
                builder.with_no_client_auth()
            })
        }

        fn name(s: &str) -> ServerName<'static> {
            ServerName::try_from(s.to_string()).unwrap()
        }

        /// `cfg` with this side's TLS configuration (the policy is left as it is).
        pub(in super::super) fn with_tls(mut cfg: ConnConfig) -> ConnConfig {
            match cfg.role {
                Role::Client => {
                    cfg.tls_client = Some((client_tls(&pki().ca, false), name("localhost")))
                }
                Role::Server => cfg.tls_server = Some(server_tls(false)),
            }
            cfg
        }

        fn tls_config(role: Role, c: Compression) -> ConnConfig {
            let tls = match role {
                Role::Client => TlsPolicy::Required,
                Role::Server => TlsPolicy::Required,
            };
            with_tls(ConnConfig {
                tls,
                ..config(role, c)
            })
        }

        fn tls_err(kind: TlsErrorKind) -> impl Fn(&Conn) -> bool {
            move |conn: &Conn| matches!(conn.close_reason(), Some(Err(ProtocolError::Tls(e))) if e.kind() == kind)
        }

        impl Pair {
            /// Moves bytes both ways, in reads of at most `piece`, until neither side has
            /// anything to send.
            fn pump(&mut self, piece: usize) {
                for _ in 0..100 {
                    let a = self.client_to_server(piece).len();
                    let b = self.server_to_client(piece).len();
                    if a == 0 && b == 0 {
                        return;
                    }
                }
                panic!("the pair kept talking");
            }

            fn open_tls(client: ConnConfig, server: ConnConfig) -> Pair {
                let mut pair = Pair::new(client, server);
                pair.pump(NO_LIMIT);
                assert_eq!(
                    (pair.client.state(), pair.server.state()),
                    (State::Open, State::Open)
                );
                assert!(pair.client.poll_opened());
                assert!(pair.server.poll_opened());
                pair
            }
        }

        /// Parses `bytes` as whole TLS records: (content type, length) of each.
        fn records(mut bytes: &[u8]) -> Vec<(u8, usize)> {
            let mut out = Vec::new();
            while !bytes.is_empty() {
                assert!(bytes.len() >= 5, "a record header cut short");
                let (kind, version) = (bytes[0], u16::from_be_bytes([bytes[1], bytes[2]]));
                let len = u16::from_be_bytes([bytes[3], bytes[4]]) as usize;
                // TLS 1.2's version, or 1.0's in the first ClientHello for compatibility.
                assert!(
                    matches!(version, 0x0301 | 0x0303),
                    "record version {version:#x}"
                );
                assert!(bytes.len() >= 5 + len, "a record cut short");
                out.push((kind, len));
                bytes = &bytes[5 + len..];
            }
            out
        }

        #[test]
        fn hello_then_tls_then_open_with_the_deadline_kept_throughout() {
            let mut p = Pair::new(
                tls_config(Role::Client, Compression::None),
                tls_config(Role::Server, Compression::None),
            );
            let deadline = p.now + Duration::from_secs(3);
            // The client's hello asks for TLS; nothing else goes before the answer.
            assert_eq!(
                p.client_to_server(NO_LIMIT),
                Hello::new(Compression::None, true).encode()
            );
            assert_eq!(p.server.state(), State::Tls);
            assert!(p.server.tls_agreed());
            assert!(p.server.tls_session().is_some());
            // The answer says TLS; the client starts TLS at once.
            assert_eq!(
                p.server_to_client(NO_LIMIT),
                Hello::new(Compression::None, true).encode()
            );
            assert_eq!(p.client.state(), State::Tls);
            let client_hello = transmit(&mut p.client, p.now);
            assert_eq!(records(&client_hello)[0].0, 0x16, "a TLS handshake record");
            feed(&mut p.server, &client_hello, NO_LIMIT);
            for conn in [&p.client, &p.server] {
                assert_eq!(conn.next_deadline(), Some(deadline), "{}", conn.state());
                assert!(!conn.handshake_complete());
            }
            assert_eq!(State::Tls.to_string(), "tls handshake");

            p.pump(NO_LIMIT);
            for conn in [&mut p.client, &mut p.server] {
                assert_eq!(conn.state(), State::Open);
                assert!(conn.poll_opened());
                assert!(!conn.poll_opened());
                assert!(conn.handshake_complete());
                assert_eq!(conn.next_deadline(), None);
                assert_eq!(conn.close_reason(), None);
                assert!(!conn.tls_session().unwrap().is_handshaking());
            }
            // The server saw the client's hello, and the other way round.
            assert_eq!(
                p.server.peer_hello(),
                Some(&Hello::new(Compression::None, true))
            );
            let server_certs = p.client.tls_session().unwrap().peer_certificates().unwrap();
            assert_eq!(server_certs[0], pki().server.0);
            assert!(p
                .server
                .tls_session()
                .unwrap()
                .peer_certificates()
                .is_none());
        }

        #[test]
        fn frames_cross_tls_in_every_compression_pair_and_in_small_reads() {
            use FrameKind::*;
            let big = noise(100_000, 5);
            for cc in compressions() {
                for sc in compressions() {
                    for piece in [NO_LIMIT, 7] {
                        let mut p =
                            Pair::new(tls_config(Role::Client, cc), tls_config(Role::Server, sc));
                        p.pump(piece);
                        assert_eq!(
                            (p.client.state(), p.server.state()),
                            (State::Open, State::Open)
                        );
                        p.client.send_frame(1, Request, b"foobar");
                        p.client.send_frame(2, RequestNoReply, b"");
                        p.client.send_frame(3, Request, &big);
                        p.client_to_server(piece);
                        assert_eq!(
                            receive_ok(&mut p.server),
                            [
                                got(1, Request, b"foobar"),
                                got(2, RequestNoReply, b""),
                                got(3, Request, &big)
                            ],
                            "{cc} -> {sc}, reads of {piece}"
                        );
                        for round in 0..3u32 {
                            p.server.send_frame(round, Response, &[0x5a; 261]);
                            p.server.send_frame(round + 100, ErrorResponse, b"boom");
                            p.server_to_client(piece);
                            assert_eq!(
                                receive_ok(&mut p.client),
                                [
                                    got(round, Response, &[0x5a; 261]),
                                    got(round + 100, ErrorResponse, b"boom")
                                ]
                            );
                        }
                        assert_eq!(p.client.counters().flushes, 1);
                        assert_eq!(p.server.counters().flushes, 3);
                    }
                }
            }
        }

        #[test]
        fn one_flush_is_one_chunk_of_as_few_records_as_the_record_limit_allows() {
            for c in compressions() {
                for (frames, size) in [(1usize, 10usize), (100, 1_000), (300, 1_000), (3, 70_000)] {
                    let mut p =
                        Pair::open_tls(tls_config(Role::Client, c), tls_config(Role::Server, c));
                    let mut batch = Vec::new();
                    for id in 0..frames as u32 {
                        let payload = noise(size, id);
                        p.client.send_frame(id, FrameKind::Request, &payload);
                        frame::encode(&mut batch, id, FrameKind::Request, &payload);
                    }
                    let chunk = p.client.poll_transmit(p.now).expect("a flush").to_vec();
                    p.client.handle_sent(chunk.len());
                    assert_eq!(p.client.poll_transmit(p.now), None, "one contiguous chunk");
                    assert_eq!(p.client.counters().flushes, 1);
                    let recs = records(&chunk);
                    assert!(
                        recs.iter().all(|&(kind, _)| kind == 0x17),
                        "application data only"
                    );
                    if c == Compression::None {
                        // TLS 1.3: 16 KiB of plaintext per record, plus its type byte and tag.
                        let expected = batch.len().div_ceil(16 << 10);
                        assert_eq!(
                            recs.len(),
                            expected,
                            "{frames} x {size}: {} bytes",
                            batch.len()
                        );
                        let sealed: usize = recs.iter().map(|&(_, len)| len - 17).sum();
                        assert_eq!(sealed, batch.len());
                    } else {
                        assert!(recs.len() <= batch.len().div_ceil(16 << 10), "{c}");
                    }
                    feed(&mut p.server, &chunk, NO_LIMIT);
                    assert_eq!(receive_ok(&mut p.server).len(), frames, "{c}");
                }
            }
        }

        #[test]
        fn frames_queued_before_open_wait_for_the_tls_handshake() {
            for c in compressions() {
                let mut p = Pair::new(tls_config(Role::Client, c), tls_config(Role::Server, c));
                p.client.send_frame(1, FrameKind::Request, b"early");
                p.client_to_server(NO_LIMIT);
                p.server_to_client(NO_LIMIT);
                assert_eq!(p.client.state(), State::Tls);
                let client_hello = transmit(&mut p.client, p.now);
                assert_eq!(p.client.counters().flushes, 0, "nothing flushed during TLS");
                assert!(records(&client_hello).iter().all(|&(kind, _)| kind == 0x16));
                feed(&mut p.server, &client_hello, NO_LIMIT);
                p.pump(NO_LIMIT);
                assert_eq!(
                    receive_ok(&mut p.server),
                    [got(1, FrameKind::Request, b"early")],
                    "{c}"
                );
                assert_eq!(p.client.counters().flushes, 1);
            }
        }

        #[test]
        fn tls_records_in_the_same_read_as_the_hello_are_taken() {
            // A client whose hello and first TLS message reach the server in one read.
            let mut p = Pair::new(
                tls_config(Role::Client, Compression::None),
                tls_config(Role::Server, Compression::None),
            );
            let hello = p.client_to_server(NO_LIMIT);
            p.server_to_client(NO_LIMIT);
            let client_hello = transmit(&mut p.client, p.now);
            let mut server = Conn::new(tls_config(Role::Server, Compression::None), p.now);
            feed(
                &mut server,
                &[hello.as_slice(), &client_hello].concat(),
                NO_LIMIT,
            );
            assert_eq!(server.state(), State::Tls);
            let answer = transmit(&mut server, p.now);
            assert_eq!(
                answer[..HELLO_LEN],
                Hello::new(Compression::None, true).encode()
            );
            assert_eq!(
                records(&answer[HELLO_LEN..])[0].0,
                0x16,
                "the server's TLS flight follows"
            );
        }

        #[test]
        fn a_certificate_for_another_name_fails_both_sides_and_the_alert_goes_first() {
            let client_cfg = ConnConfig {
                tls_client: Some((client_tls(&pki().ca, false), name("other.example"))),
                ..tls_config(Role::Client, Compression::None)
            };
            let mut p = Pair::new(client_cfg, tls_config(Role::Server, Compression::None));
            p.client_to_server(NO_LIMIT);
            p.server_to_client(NO_LIMIT);
            p.client_to_server(NO_LIMIT); // ClientHello
            let flight = transmit(&mut p.server, p.now);
            feed(&mut p.client, &flight, NO_LIMIT);
            // The client refused the certificate, and says so before closing.
            assert_eq!(p.client.state(), State::Draining);
            assert!(
                tls_err(TlsErrorKind::NotValidForName)(&p.client),
                "{:?}",
                p.client.close_reason()
            );
            let alert = transmit(&mut p.client, p.now);
            assert!(!alert.is_empty());
            assert_eq!(p.client.state(), State::Closed);
            assert!(tls_err(TlsErrorKind::NotValidForName)(&p.client));
            assert!(!p.client.poll_opened());
            feed(&mut p.server, &alert, NO_LIMIT);
            assert_eq!(p.server.state(), State::Closed);
            assert!(
                tls_err(TlsErrorKind::Refused)(&p.server),
                "{:?}",
                p.server.close_reason()
            );
            assert!(!p.server.poll_opened());
            let Some(Err(ProtocolError::Tls(e))) = p.client.close_reason() else {
                unreachable!()
            };
            assert!(e.to_string().contains("not valid for"), "{e}");
        }

        #[test]
        fn an_unknown_ca_fails_both_sides() {
            let client_cfg = ConnConfig {
                tls_client: Some((client_tls(&pki().other_ca, false), name("localhost"))),
                ..tls_config(Role::Client, Compression::Snappy)
            };
            let mut p = Pair::new(client_cfg, tls_config(Role::Server, Compression::None));
            p.pump(NO_LIMIT);
            assert_eq!(
                (p.client.state(), p.server.state()),
                (State::Closed, State::Closed)
            );
            assert!(
                tls_err(TlsErrorKind::UnknownIssuer)(&p.client),
                "{:?}",
                p.client.close_reason()
            );
            assert!(
                tls_err(TlsErrorKind::Refused)(&p.server),
                "{:?}",
                p.server.close_reason()
            );
            let Some(Err(ProtocolError::Tls(e))) = p.server.close_reason() else {
                unreachable!()
            };
            assert!(e.to_string().contains("UnknownCA"), "{e}");
        }

        #[test]
        fn mutual_tls_needs_the_client_certificate_and_the_client_learns_before_opening() {
            for (identity, ca) in [(true, &pki().ca), (false, &pki().ca)] {
                let client_cfg = ConnConfig {
                    tls_client: Some((client_tls(ca, identity), name("localhost"))),
                    ..tls_config(Role::Client, Compression::None)
                };
                let server_cfg = ConnConfig {
                    tls_server: Some(server_tls(true)),
                    ..tls_config(Role::Server, Compression::None)
                };
                let mut p = Pair::new(client_cfg, server_cfg);
                p.pump(NO_LIMIT);
                if identity {
                    assert_eq!(
                        (p.client.state(), p.server.state()),
                        (State::Open, State::Open)
                    );
                    let certs = p.server.tls_session().unwrap().peer_certificates().unwrap();
                    assert_eq!(certs[0], pki().client.0);
                } else {
                    // With TLS 1.3 the client's own handshake completed; it still never opened.
                    assert_eq!(
                        (p.client.state(), p.server.state()),
                        (State::Closed, State::Closed)
                    );
                    assert!(!p.client.handshake_complete() && !p.client.poll_opened());
                    assert!(
                        tls_err(TlsErrorKind::NoCertificate)(&p.server),
                        "{:?}",
                        p.server.close_reason()
                    );
                    assert!(
                        tls_err(TlsErrorKind::Refused)(&p.client),
                        "{:?}",
                        p.client.close_reason()
                    );
                }
            }
        }

        #[test]
        fn a_hello_altered_in_transit_is_caught_inside_tls() {
            let mut p = Pair::new(
                tls_config(Role::Client, Compression::None),
                tls_config(Role::Server, Compression::None),
            );
            // An attacker lowers the client's frame limit on the way.
            let mut hello = transmit(&mut p.client, p.now);
            hello[7..].copy_from_slice(&1000u32.to_le_bytes());
            feed(&mut p.server, &hello, NO_LIMIT);
            p.pump(NO_LIMIT);
            assert_eq!(p.server.state(), State::Closed);
            assert!(
                tls_err(TlsErrorKind::HelloMismatch)(&p.server),
                "{:?}",
                p.server.close_reason()
            );
            assert!(!p.server.handshake_complete());
        }

        #[test]
        fn garbage_instead_of_tls_records_fails_with_a_tls_error() {
            let mut p = Pair::new(
                tls_config(Role::Client, Compression::None),
                tls_config(Role::Server, Compression::None),
            );
            p.client_to_server(NO_LIMIT);
            feed(
                &mut p.server,
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                NO_LIMIT,
            );
            assert!(
                tls_err(TlsErrorKind::Protocol)(&p.server),
                "{:?}",
                p.server.close_reason()
            );
            // The hello answer and the alert are written; then it closes.
            assert_eq!(p.server.state(), State::Draining);
            let out = transmit(&mut p.server, p.now);
            assert_eq!(
                out[..HELLO_LEN],
                Hello::new(Compression::None, true).encode()
            );
            assert_eq!(records(&out[HELLO_LEN..]), [(0x15, 2)], "one alert");
            assert_eq!(p.server.state(), State::Closed);
        }

        #[test]
        fn the_tls_handshake_times_out_at_the_handshake_deadline() {
            let mut p = Pair::new(
                ConnConfig {
                    handshake_timeout: ms(250),
                    ..tls_config(Role::Client, Compression::None)
                },
                tls_config(Role::Server, Compression::None),
            );
            p.client_to_server(NO_LIMIT);
            p.server_to_client(NO_LIMIT);
            // The ClientHello is lost: the server never answers.
            transmit(&mut p.client, p.now);
            assert_eq!(p.client.state(), State::Tls);
            let deadline = p.now + ms(250);
            assert_eq!(p.client.next_deadline(), Some(deadline));
            p.client.handle_timeout(deadline - Duration::from_nanos(1));
            assert_eq!(p.client.state(), State::Tls);
            p.client.handle_timeout(deadline);
            let err = ProtocolError::Handshake(HandshakeError::Timeout);
            assert_eq!(p.client.close_reason(), closed_with(err).as_ref());
        }

        #[test]
        fn end_of_stream_during_tls_closes_the_handshake_and_after_it_ends_at_frame_boundaries() {
            let mut p = Pair::new(
                tls_config(Role::Client, Compression::None),
                tls_config(Role::Server, Compression::None),
            );
            p.client_to_server(NO_LIMIT);
            p.server.handle_eof();
            assert_eq!(
                p.server.close_reason(),
                closed_with(ProtocolError::HandshakeClosed).as_ref()
            );

            for c in compressions() {
                let mut p =
                    Pair::open_tls(tls_config(Role::Client, c), tls_config(Role::Server, c));
                p.client.send_frame(1, FrameKind::Request, b"whole");
                p.client_to_server(NO_LIMIT);
                p.server.handle_eof();
                assert_eq!(
                    receive(&mut p.server),
                    (vec![got(1, FrameKind::Request, b"whole")], Ok(()))
                );
                assert_eq!(p.server.state(), State::Draining, "{c}: half-closed");

                let mut p =
                    Pair::open_tls(tls_config(Role::Client, c), tls_config(Role::Server, c));
                p.client.send_frame(1, FrameKind::Request, b"whole");
                p.client_to_server(NO_LIMIT);
                p.client
                    .send_frame(2, FrameKind::Request, &noise(40_000, 1));
                let bytes = transmit(&mut p.client, p.now);
                feed(&mut p.server, &bytes[..bytes.len() / 2], NO_LIMIT);
                p.server.handle_eof();
                let (frames, end) = receive(&mut p.server);
                assert_eq!(frames, [got(1, FrameKind::Request, b"whole")], "{c}");
                assert_eq!(end, Err(ProtocolError::Truncated), "{c}");
            }
        }

        #[test]
        fn close_notify_ends_the_stream_after_the_frames_before_it() {
            for c in compressions() {
                let mut p =
                    Pair::open_tls(tls_config(Role::Client, c), tls_config(Role::Server, c));
                p.server.send_frame(1, FrameKind::Response, b"last words");
                let mut bytes = transmit(&mut p.server, p.now);
                let session = p.server.session.as_deref_mut().unwrap();
                session.send_close_notify();
                let mut alert = Vec::new();
                session.write_tls(&mut alert).unwrap();
                assert_eq!(records(&alert).len(), 1);
                // Anything after close_notify is ignored.
                bytes.extend_from_slice(&alert);
                bytes.extend_from_slice(b"trailing garbage");
                feed(&mut p.client, &bytes, NO_LIMIT);
                let (frames, end) = receive(&mut p.client);
                assert_eq!(frames, [got(1, FrameKind::Response, b"last words")], "{c}");
                assert_eq!(end, Ok(()));
                assert_eq!(p.client.state(), State::Closed);
                assert_eq!(p.client.close_reason(), Some(&Ok(())));
            }
        }

        #[test]
        fn a_peer_that_requires_no_tls_config_here_fails_clearly() {
            // TLS agreed, but the server was given no rustls configuration.
            let server_cfg = ConnConfig {
                tls: TlsPolicy::Required,
                ..config(Role::Server, Compression::None)
            };
            let mut p = Pair::new(tls_config(Role::Client, Compression::None), server_cfg);
            p.client_to_server(NO_LIMIT);
            assert!(tls_err(TlsErrorKind::NotConfigured)(&p.server));
            let err = TlsError::new(TlsErrorKind::NotConfigured, "");
            assert_eq!(
                err.to_string(),
                "TLS was agreed but this side has no TLS configuration"
            );
        }

        #[test]
        fn idle_tls_connections_give_their_buffers_back() {
            for c in compressions() {
                let mut p =
                    Pair::open_tls(tls_config(Role::Client, c), tls_config(Role::Server, c));
                p.client
                    .send_frame(1, FrameKind::Request, &noise(30_000, 1));
                p.client_to_server(NO_LIMIT);
                assert_eq!(receive_ok(&mut p.server).len(), 1);
                p.server
                    .send_frame(1, FrameKind::Response, &noise(30_000, 2));
                p.server_to_client(NO_LIMIT);
                assert_eq!(receive_ok(&mut p.client).len(), 1);
                for conn in [&mut p.client, &mut p.server] {
                    assert!(conn.buffered_capacity() > 0);
                    conn.release_idle_buffers();
                    assert_eq!(conn.buffered_capacity(), 0, "{c}");
                }
            }
        }

        #[test]
        fn fastrpc_tls_follows_the_blocks_in_clear_without_repeating_them() {
            for c in compressions() {
                let fast = |role| ConnConfig {
                    profile: Profile::Fastrpc(FastrpcSettings::default()),
                    ..tls_config(role, c)
                };
                let mut p = Pair::new(fast(Role::Client), fast(Role::Server));
                let byte = fastrpc::to_fastrpc_byte(c);
                // The blocks in clear, then the client's TLS handshake at once.
                assert_eq!(p.client_to_server(NO_LIMIT), [0, byte, 1]);
                assert_eq!(p.server_to_client(NO_LIMIT), [0, byte, 1]);
                let client_hello = p.client_to_server(NO_LIMIT);
                assert_eq!(records(&client_hello)[0].0, 22, "a TLS handshake record");
                p.pump(NO_LIMIT);
                assert_eq!(
                    (p.client.state(), p.server.state()),
                    (State::Open, State::Open)
                );
                p.client
                    .send_frame(5, FrameKind::Request, &super::tlv(b"k", b"v"));
                p.client_to_server(NO_LIMIT);
                let requests = receive_ok(&mut p.server);
                assert_eq!(
                    requests,
                    [got(1, FrameKind::Request, &super::tlv(b"k", b"v"))]
                );
                p.server.send_frame(1, FrameKind::Response, b"re:k=v");
                p.server_to_client(NO_LIMIT);
                assert_eq!(
                    receive_ok(&mut p.client),
                    [got(5, FrameKind::Response, b"re:k=v")]
                );
            }
        }
    }
}
