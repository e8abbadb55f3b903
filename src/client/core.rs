//! The client's reactor side: admitting calls, placing them on connections, matching
//! responses, deadlines, connection loss and redialing.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::deadlines::Deadlines;
use super::{ClientConfig, ClientShared, Submission};
use crate::reactor::{ConnEp, ConnRole, Core, Service};
use crate::stats::{SharedStats, C};
use crate::transport::Stream;
use crate::wire::conn::Conn;
use crate::wire::frame::FrameKind;
use crate::wire::ProtocolError;
use crate::{ConnInfo, Error};

/// Calls are not placed on a connection whose unsent bytes exceed this; they wait.
const MAX_SEND_BACKLOG: usize = 4 << 20;
/// How long a closing client keeps writing the sends it accepted before the close, for a
/// peer that does not read them.
const CLOSE_FLUSH_LIMIT: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum CallState {
    /// Not admitted, or completed.
    Idle,
    /// Admitted, waiting for a connection with room.
    Waiting,
    /// Written to connection `conn`; waiting for the response.
    InFlight,
    /// Timed out while its request was on connection `conn`: completed for the caller, but its
    /// slot (and id) stays taken until the late response arrives or the connection closes.
    Abandoned,
}

/// The reactor's view of one slot.
#[derive(Clone, Copy)]
struct CallMeta {
    /// Incremented at each admission; part of the wire id, so a late response to an earlier
    /// call in this slot is told apart.
    gen: u32,
    state: CallState,
    conn: usize,
    /// When it was admitted (`admitted_at`), in ns since `ClientCore::epoch`.
    submitted_ns: u64,
}

/// One of the client's `conns(n)` connections.
struct Link {
    token: Option<usize>,
    open: bool,
    backoff: Duration,
    redial_at: Option<Instant>,
    /// Failed before the client's first connection opened (counted in `failed_first`).
    failed_early: bool,
}

pub(crate) struct ClientCore {
    id: usize,
    shared: Arc<ClientShared>,
    cfg: Arc<ClientConfig>,
    metas: Vec<CallMeta>,
    deadlines: Deadlines,
    /// (slot, gen, a send's payload) of admitted calls and sends waiting for a connection, in
    /// order.
    waiting: VecDeque<(u32, u32, Option<Vec<u8>>)>,
    links: Vec<Link>,
    rr: usize,
    rng: u64,
    /// Links of the first dial that failed before any opened: `connect()` fails when all have.
    failed_first: usize,
    opened_once: bool,
    closing: bool,
    /// While closing: connections writing the sends accepted before the close, closed once
    /// flushed or at `drain_until`.
    draining: Vec<usize>,
    drain_until: Option<Instant>,
    /// Calls admitted and not yet completed.
    outstanding: usize,
    /// This turn's submissions, taken from the queue before they are admitted (kept for its
    /// capacity).
    admitting: Vec<Submission>,
    /// When the current batch of submissions was admitted: read after they were all taken.
    admitted_at: Instant,
    /// The origin of the calls' times in ns (`CallMeta::submitted_ns`).
    epoch: Instant,
    /// The last instant turned into ns since `epoch`, and that figure: the instants come once
    /// per turn or batch, the calls by the hundreds.
    clock: (Instant, u64),
}

impl ClientCore {
    /// A client core whose first connections are already dialed (`streams`).
    pub fn new(
        id: usize,
        core: &mut Core,
        shared: Arc<ClientShared>,
        cfg: Arc<ClientConfig>,
        streams: Vec<Stream>,
    ) -> io::Result<ClientCore> {
        let now = core.now;
        let seed =
            now.elapsed().as_nanos() as u64 ^ (Arc::as_ptr(&shared) as u64) ^ 0x9e37_79b9_7f4a_7c15;
        let mut client = ClientCore {
            id,
            shared,
            metas: Vec::new(),
            deadlines: Deadlines::new(now),
            waiting: VecDeque::new(),
            links: Vec::new(),
            rr: 0,
            rng: seed | 1,
            failed_first: 0,
            opened_once: false,
            closing: false,
            draining: Vec::new(),
            drain_until: None,
            outstanding: 0,
            admitting: Vec::new(),
            admitted_at: now,
            epoch: now,
            clock: (now, 0),
            cfg,
        };
        for stream in streams {
            let slot = client.links.len();
            client.links.push(Link {
                token: None,
                open: false,
                backoff: client.cfg.backoff_min,
                redial_at: None,
                failed_early: false,
            });
            client.shared.stats.inc(C::dials);
            client.attach(core, slot, stream, true)?;
        }
        Ok(client)
    }

    fn attach(
        &mut self,
        core: &mut Core,
        slot: usize,
        stream: Stream,
        connected: bool,
    ) -> io::Result<()> {
        if connected {
            let _ = stream.set_nodelay();
        }
        let conn = Conn::new(self.cfg.conn.clone(), core.now);
        let token = core.add_conn(stream, conn, self.id, connected, ConnRole::Client { slot })?;
        self.links[slot].token = Some(token);
        Ok(())
    }

    fn dial(&mut self, core: &mut Core, slot: usize) {
        self.links[slot].redial_at = None;
        self.shared.stats.inc(C::dials);
        let dialed = match &self.cfg.dialer {
            Some(dial) => dial().map(|s| (Stream::Custom(s), true)),
            None => Stream::dial(&self.cfg.addr).map(|s| (s, false)),
        };
        let attached = dialed.and_then(|(s, connected)| self.attach(core, slot, s, connected));
        if attached.is_err() {
            self.shared.stats.inc(C::dial_errors);
            self.schedule_redial(slot, core.now);
        }
    }

    fn schedule_redial(&mut self, slot: usize, now: Instant) {
        // Exponential backoff with ±25% jitter, so that many clients do not redial in step.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let link = &mut self.links[slot];
        let base = link.backoff;
        let jitter = (self.rng % 512) as f64 / 1024.0 + 0.75;
        link.redial_at = Some(now + base.mul_f64(jitter));
        link.backoff = (base * 2).min(self.cfg.backoff_max);
    }

    /// `t` in ns since `epoch` (0 before it), cached for a run of equal instants.
    #[inline]
    fn nanos(&mut self, t: Instant) -> u64 {
        if t != self.clock.0 {
            let ns = t.saturating_duration_since(self.epoch).as_nanos();
            self.clock = (t, u64::try_from(ns).unwrap_or(u64::MAX));
        }
        self.clock.1
    }

    #[inline]
    fn wire_id(&self, idx: u32, gen: u32) -> u32 {
        (gen << self.shared.idx_bits) | idx
    }

    /// Takes a submitted call into the reactor's books. Its deadline counts from
    /// `admitted_at`, read once per batch of submissions after they were taken (the caller
    /// reads no clock): the time the call spent in the submission queue is not counted.
    /// `inline`: the request, when it came in the submission entry rather than in the slot.
    fn admit(&mut self, core: &mut Core, idx: u32, timeout: Duration, inline: Option<&[u8]>) {
        let now = self.admitted_at;
        let gen = self.book(idx);
        match now.checked_add(timeout) {
            Some(at) if at <= now => {
                self.complete(idx, Err(Error::Timeout), now);
                return;
            }
            Some(at) => self.deadlines.insert(idx, timeout, at),
            None => {} // no deadline in this universe
        }
        if !self.waiting.is_empty() || !self.place(core, idx, inline) {
            if let Some(bytes) = inline {
                // The waiting line takes requests from the slots.
                let slot = self.shared.slots.get(idx);
                slot.data().request.extend_from_slice(bytes);
            }
            self.metas[idx as usize].state = CallState::Waiting;
            self.waiting.push_back((idx, gen, None));
        }
    }

    /// Takes a submitted send: into a connection's batch at once when one has room and
    /// nothing waits before it (its slot is free again right away, and the reactor keeps no
    /// books on it), else into the waiting line like a call, with the request timeout counted
    /// from `admitted_at`.
    fn admit_send(&mut self, core: &mut Core, idx: u32, buf: Vec<u8>) {
        if self.waiting.is_empty() && self.send_now(core, idx, &buf) {
            self.shared.slots.give_buffer(buf);
            return;
        }
        self.wait_send(idx, buf);
    }

    /// [`ClientCore::admit_send`] for a payload carried in the submission entry.
    fn admit_send_inline(&mut self, core: &mut Core, idx: u32, payload: &[u8]) {
        if !(self.waiting.is_empty() && self.send_now(core, idx, payload)) {
            let mut buf = self.shared.slots.take_buffer();
            buf.extend_from_slice(payload);
            self.wait_send(idx, buf);
        }
    }

    /// Writes a send into a connection with room and frees its slot; false when none has.
    fn send_now(&mut self, core: &mut Core, idx: u32, payload: &[u8]) -> bool {
        let Some(sent) = self.place_send(core, payload) else {
            return false;
        };
        match sent {
            Ok(()) => self.shared.stats.add_exclusive(C::calls, 1),
            Err(e) => self.shared.stats.error(&e),
        }
        self.shared.slots.release_reserved(idx);
        true
    }

    /// Puts a send in the waiting line, with the request timeout counted from `admitted_at`.
    fn wait_send(&mut self, idx: u32, buf: Vec<u8>) {
        let gen = self.book(idx);
        let timeout = self.shared.request_timeout;
        if let Some(at) = self.admitted_at.checked_add(timeout) {
            self.deadlines.insert(idx, timeout, at);
        }
        self.metas[idx as usize].state = CallState::Waiting;
        self.waiting.push_back((idx, gen, Some(buf)));
    }

    /// Opens the books on a call in slot `idx` admitted at `admitted_at`: counts it
    /// outstanding and gives it its generation (returned).
    fn book(&mut self, idx: u32) -> u32 {
        self.outstanding += 1;
        let i = idx as usize;
        if self.metas.len() <= i {
            self.metas.resize(
                i + 1,
                CallMeta {
                    gen: 0,
                    state: CallState::Idle,
                    conn: 0,
                    submitted_ns: 0,
                },
            );
        }
        let submitted_ns = self.nanos(self.admitted_at);
        let meta = &mut self.metas[i];
        meta.gen = (meta.gen + 1) & self.shared.gen_mask;
        meta.submitted_ns = submitted_ns;
        meta.gen
    }

    /// A connection with room for more requests, round robin.
    fn pick(&mut self, core: &mut Core) -> Option<usize> {
        let n = self.links.len();
        for _ in 0..n {
            self.rr = (self.rr + 1) % n;
            let link = &self.links[self.rr];
            let (true, Some(token)) = (link.open, link.token) else {
                continue;
            };
            let Some(ep) = core.conn(token) else {
                continue;
            };
            if ep.conn.send_backlog() < MAX_SEND_BACKLOG {
                return Some(token);
            }
        }
        None
    }

    /// Writes the call into a connection with room; false when none has. The request is
    /// `inline`, or else in the slot.
    fn place(&mut self, core: &mut Core, idx: u32, inline: Option<&[u8]>) -> bool {
        let Some(token) = self.pick(core) else {
            return false;
        };
        let Some(ep) = core.conn(token) else {
            return false;
        };
        let id = self.wire_id(idx, self.metas[idx as usize].gen);
        // The caller checked against the limit known then; the connection's peer has the
        // last word (a call made before any handshake completed did not know it).
        let max = ep.conn.peer_max_frame_len().unwrap_or(u32::MAX);
        let mut send = |request: &[u8]| {
            let fits = request.len() <= max as usize;
            if fits {
                ep.conn.send_frame(id, FrameKind::Request, request);
            }
            (!fits).then_some(request.len())
        };
        let refused = match inline {
            Some(request) => send(request),
            None => send(&self.shared.slots.get(idx).data().request),
        };
        if let Some(len) = refused {
            self.deadlines.remove(idx);
            self.metas[idx as usize].state = CallState::Idle;
            self.complete(idx, Err(Error::TooLarge { len, max }), core.now);
            return true;
        }
        core.mark_dirty(token);
        let meta = &mut self.metas[idx as usize];
        meta.state = CallState::InFlight;
        meta.conn = token;
        true
    }

    /// Writes a send's payload into a connection with room: `None` when none has, else
    /// whether it went (a payload above the peer's limit does not).
    fn place_send(&mut self, core: &mut Core, payload: &[u8]) -> Option<Result<(), Error>> {
        let token = self.pick(core)?;
        let ep = core.conn(token)?;
        let max = ep.conn.peer_max_frame_len().unwrap_or(u32::MAX);
        if payload.len() > max as usize {
            let len = payload.len();
            return Some(Err(Error::TooLarge { len, max }));
        }
        // No response comes, so the id means nothing (the fastrpc profile sends 0 anyway).
        ep.conn.send_frame(0, FrameKind::RequestNoReply, payload);
        core.mark_dirty(token);
        Some(Ok(()))
    }

    /// Puts a send from the waiting line into a connection's batch, which completes it; false
    /// when no connection takes it now.
    fn place_waiting_send(&mut self, core: &mut Core, idx: u32, payload: &[u8]) -> bool {
        let Some(sent) = self.place_send(core, payload) else {
            return false;
        };
        self.deadlines.remove(idx);
        self.metas[idx as usize].state = CallState::Idle;
        self.complete(idx, sent.map(|()| Vec::new()), core.now);
        true
    }

    fn place_waiting(&mut self, core: &mut Core) {
        while let Some((idx, gen, send)) = self.waiting.pop_front() {
            let meta = &self.metas[idx as usize];
            if meta.state != CallState::Waiting || meta.gen != gen {
                // Timed out meanwhile.
                if let Some(buf) = send {
                    self.shared.slots.give_buffer(buf);
                }
                continue;
            }
            let placed = match &send {
                None => self.place(core, idx, None),
                Some(buf) => self.place_waiting_send(core, idx, buf),
            };
            if !placed {
                self.waiting.push_front((idx, gen, send));
                return;
            }
            if let Some(buf) = send {
                self.shared.slots.give_buffer(buf);
            }
        }
    }

    /// Completes call `idx` (its response can no longer come) and counts it.
    fn complete(&mut self, idx: u32, outcome: Result<Vec<u8>, Error>, now: Instant) {
        self.finish(idx, outcome, now, true);
    }

    /// Completes call `idx` and counts it; `off_wire: false` keeps the slot taken because the
    /// response may still come.
    fn finish(&mut self, idx: u32, outcome: Result<Vec<u8>, Error>, now: Instant, off_wire: bool) {
        self.outstanding -= 1;
        match &outcome {
            Ok(_) => {
                let submitted = self.metas[idx as usize].submitted_ns;
                let took = self.nanos(now).saturating_sub(submitted);
                // Only this core counts calls and their time: no locked instructions.
                let stats = &self.shared.stats;
                stats.add_exclusive(C::calls, 1);
                stats.add_exclusive(C::call_time_ns, took);
            }
            Err(e) => self.shared.stats.error(e),
        }
        if self.shared.slots.complete(idx, outcome, off_wire) {
            self.shared.stats.inc(C::wakeups);
        }
    }

    /// Fails every pending call that matches `which` with `err`, and lets go of the slots of
    /// timed-out calls that match (their responses can no longer come).
    fn fail_calls(&mut self, err: &Error, now: Instant, which: impl Fn(&CallMeta) -> bool) {
        for i in 0..self.metas.len() {
            let meta = self.metas[i];
            if meta.state == CallState::Idle || !which(&meta) {
                continue;
            }
            self.metas[i].state = CallState::Idle;
            if meta.state == CallState::Abandoned {
                self.shared.slots.off_wire(i as u32);
            } else {
                self.deadlines.remove(i as u32);
                self.complete(i as u32, Err(err.clone()), now);
            }
        }
    }

    /// Closes for good: every call fails with `Error::Closed`. With the reactor at hand
    /// (`core`), the sends accepted before the close that an open connection can take are
    /// written first (they were reported done when accepted), within [`CLOSE_FLUSH_LIMIT`];
    /// then the connections close.
    fn shut(&mut self, mut core: Option<&mut Core>) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.shared.mark_closed();
        let mut batch = std::mem::take(&mut self.admitting);
        while let Some(sub) = self.shared.submit.pop() {
            batch.push(sub);
        }
        if let Some(core) = core.as_deref_mut() {
            self.write_waiting_sends(core);
        }
        let now = Instant::now();
        self.fail_calls(&Error::Closed, now, |_| true);
        self.waiting.clear();
        // In submission order: a send goes out while an open connection takes it; a call's
        // request is not written once its caller is told `Closed`.
        for sub in batch.drain(..) {
            let sent = match (&sub, core.as_deref_mut()) {
                (Submission::Send(idx, buf), Some(core)) => self.send_now(core, *idx, buf),
                (Submission::SendInline(idx, len, bytes), Some(core)) => {
                    self.send_now(core, *idx, &bytes[..usize::from(*len)])
                }
                _ => false,
            };
            if sent {
                continue;
            }
            self.shared.stats.error(&Error::Closed);
            match sub {
                Submission::Call(idx, _) | Submission::CallInline(idx, ..) => {
                    self.shared.slots.complete(idx, Err(Error::Closed), true);
                }
                Submission::Send(idx, buf) => {
                    self.shared.slots.release_reserved(idx);
                    self.shared.slots.give_buffer(buf);
                }
                Submission::SendInline(idx, ..) => self.shared.slots.release_reserved(idx),
            }
        }
        self.admitting = batch;
        self.shared.report_ready(Err(Error::Closed));
        if let Some(core) = core {
            for link in &self.links {
                let Some(token) = link.token else { continue };
                match core.conn(token) {
                    Some(ep) if ep.conn.is_open() && !ep.conn.is_flushed() => {
                        ep.conn.begin_drain();
                        self.draining.push(token);
                    }
                    _ => core.close_conn(token, None),
                }
            }
            if !self.draining.is_empty() {
                self.drain_until = Some(now + CLOSE_FLUSH_LIMIT);
            }
        }
    }

    /// Closing: puts the sends of the waiting line into open connections' batches, in order,
    /// while they take them; `shut` fails the rest with the calls.
    fn write_waiting_sends(&mut self, core: &mut Core) {
        let mut waiting = std::mem::take(&mut self.waiting);
        for (idx, gen, send) in waiting.drain(..) {
            let meta = self.metas[idx as usize];
            match send {
                Some(buf) if meta.state == CallState::Waiting && meta.gen == gen => {
                    if self.place_waiting_send(core, idx, &buf) {
                        self.shared.slots.give_buffer(buf);
                    } else {
                        self.waiting.push_back((idx, gen, Some(buf)));
                    }
                }
                other => self.waiting.push_back((idx, gen, other)),
            }
        }
    }

    /// Completes the calls whose responses the connection has decoded.
    fn take_responses(
        &mut self,
        token: usize,
        ep: &mut ConnEp,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        let idx_mask = (1u32 << self.shared.idx_bits) - 1;
        while let Some(frame) = ep.conn.poll_frame()? {
            let idx = frame.id & idx_mask;
            let gen = frame.id >> self.shared.idx_bits;
            match self.metas.get_mut(idx as usize) {
                Some(m) if m.gen == gen && m.conn == token && m.state == CallState::InFlight => {
                    m.state = CallState::Idle;
                }
                Some(m) if m.gen == gen && m.conn == token && m.state == CallState::Abandoned => {
                    // The late answer to a call that timed out: its slot is free now.
                    m.state = CallState::Idle;
                    self.shared.slots.off_wire(idx);
                    self.shared.stats.inc(C::stale_responses);
                    continue;
                }
                _ => {
                    self.shared.stats.inc(C::stale_responses);
                    continue;
                }
            }
            self.deadlines.remove(idx);
            let outcome = if frame.kind == FrameKind::Response {
                let mut buf = self.shared.slots.take_buffer();
                buf.extend_from_slice(frame.payload);
                Ok(buf)
            } else {
                Err(Error::Server(
                    String::from_utf8_lossy(frame.payload).into_owned(),
                ))
            };
            self.complete(idx, outcome, now);
        }
        Ok(())
    }
}

impl Service for ClientCore {
    fn stats(&self) -> &SharedStats {
        &self.shared.stats
    }

    fn on_open(&mut self, token: usize, ep: &mut ConnEp) -> Result<(), Error> {
        let ConnRole::Client { slot } = ep.role else {
            unreachable!("server connection given to a client");
        };
        if let Some(hook) = &self.cfg.on_connect {
            let mut info = ConnInfo::new(ep.peer.clone(), ep.id);
            info.learn_handshake(&ep.conn);
            hook(&info).map_err(Error::Refused)?;
        }
        let link = &mut self.links[slot];
        debug_assert_eq!(link.token, Some(token));
        link.open = true;
        link.backoff = self.cfg.backoff_min;
        if let Some(peer_max) = ep.conn.peer_max_frame_len() {
            self.shared
                .send_limit
                .fetch_min(peer_max, Ordering::Relaxed);
        }
        self.shared.stats.inc(C::open_connections);
        self.opened_once = true;
        self.shared.report_ready(Ok(()));
        Ok(())
    }

    fn on_frames(
        &mut self,
        token: usize,
        ep: &mut ConnEp,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        // The fastrpc profile's connections drop unmatched responses themselves.
        let discarded = ep.conn.counters().discarded;
        let taken = self.take_responses(token, ep, now);
        let stale = ep.conn.counters().discarded - discarded;
        if stale > 0 {
            self.shared.stats.add(C::stale_responses, stale);
        }
        taken
    }

    fn turn(&mut self, core: &mut Core) {
        if self.closing {
            if self.drain_until.is_some_and(|at| core.now >= at) {
                // The peer does not take what is left: close anyway.
                for token in self.draining.drain(..) {
                    core.close_conn(token, None);
                }
            }
            return;
        }
        if self.shared.is_closed() {
            self.shut(Some(core));
            return;
        }
        let now = core.now;
        for slot in 0..self.links.len() {
            if self.links[slot].redial_at.is_some_and(|at| at <= now) {
                self.dial(core, slot);
            }
        }
        if !self.shared.submit.is_empty() {
            let mut batch = std::mem::take(&mut self.admitting);
            while let Some(sub) = self.shared.submit.pop() {
                batch.push(sub);
            }
            // One clock read for the whole batch, after every entry was taken: no call's
            // deadline starts before the call was submitted (the turn's start may precede it).
            self.admitted_at = Instant::now().max(core.now);
            for sub in batch.drain(..) {
                match sub {
                    Submission::Call(idx, timeout) => self.admit(core, idx, timeout, None),
                    Submission::CallInline(idx, timeout, len, bytes) => {
                        self.admit(core, idx, timeout, Some(&bytes[..usize::from(len)]));
                    }
                    Submission::Send(idx, buf) => self.admit_send(core, idx, buf),
                    Submission::SendInline(idx, len, bytes) => {
                        self.admit_send_inline(core, idx, &bytes[..usize::from(len)]);
                    }
                }
            }
            self.admitting = batch;
        }
        self.place_waiting(core);
        while let Some(idx) = self.deadlines.pop_expired(now) {
            let meta = &mut self.metas[idx as usize];
            let on_wire = meta.state == CallState::InFlight;
            meta.state = if on_wire {
                CallState::Abandoned
            } else {
                CallState::Idle
            };
            self.finish(idx, Err(Error::Timeout), now, !on_wire);
        }
    }

    fn on_conn_closed(&mut self, core: &mut Core, token: usize, ep: ConnEp, cause: Option<Error>) {
        let ConnRole::Client { slot } = ep.role else {
            unreachable!("server connection given to a client");
        };
        let was_open = self.links[slot].open;
        self.links[slot].token = None;
        self.links[slot].open = false;
        if self.closing {
            self.draining.retain(|&t| t != token);
            if was_open {
                self.shared.stats.sub(C::open_connections, 1);
            }
            return;
        }
        let cause = Arc::new(cause.unwrap_or_else(|| {
            Error::Io(Arc::new(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by the server",
            )))
        }));
        if was_open {
            self.shared.stats.sub(C::open_connections, 1);
        } else {
            self.shared.stats.inc(C::dial_errors);
            if !self.links[slot].failed_early {
                self.links[slot].failed_early = true;
                self.failed_first += 1;
            }
            if !self.opened_once && self.failed_first == self.links.len() {
                self.shared.report_ready(Err(match &*cause {
                    Error::Io(e) => Error::Connect {
                        addr: self.cfg.addr.to_string(),
                        cause: e.clone(),
                    },
                    other => other.clone(),
                }));
                if self.cfg.stop_unless_connected {
                    self.shut(Some(core));
                    return;
                }
            }
        }
        let lost = Error::ConnectionLost(cause);
        // In-flight calls fail; timed-out ones give their slots back: no answer can come now.
        self.fail_calls(&lost, core.now, |m| {
            matches!(m.state, CallState::InFlight | CallState::Abandoned) && m.conn == token
        });
        self.schedule_redial(slot, core.now);
    }

    fn flushed(&mut self, core: &mut Core) {
        if self.closing {
            self.draining.retain(|&token| match core.conn(token) {
                Some(ep) if !ep.conn.is_flushed() => true,
                Some(_) => {
                    core.close_conn(token, None);
                    false
                }
                None => false,
            });
            return;
        }
        // The flush may have drained a backlog that held calls back, without the socket ever
        // blocking (so no write event follows): place them now; the next turn flushes them.
        if !self.closing && !self.waiting.is_empty() {
            self.place_waiting(core);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        if self.closing {
            return self.drain_until.filter(|_| !self.draining.is_empty());
        }
        let redial = self.links.iter().filter_map(|l| l.redial_at).min();
        match (self.deadlines.next(), redial) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn has_work(&self) -> bool {
        !self.closing && (!self.shared.submit.is_empty() || self.shared.is_closed())
    }

    fn is_busy(&self) -> bool {
        self.outstanding != 0
    }

    fn is_finished(&self) -> bool {
        self.closing && self.draining.is_empty()
    }
}

impl Drop for ClientCore {
    /// The reactor is going away (or the client closed): nothing pending may be left hanging.
    fn drop(&mut self) {
        self.shut(None);
    }
}
