//! The liveness clocks of one open connection: the client's keepalive and the server's idle
//! timeout. Sans-IO like the rest of [`super`]: events are noted without a time, and the owner
//! stamps them with the time it read or wrote ([`Liveness::stamp`]), so that a busy connection
//! costs one branch per event and no clock read.
//!
//! # Keepalive (a client of the native profile)
//! ```text
//!            nothing received for `keepalive`:        nothing received for another
//!            queue a ping                             `keepalive`: the connection is dead
//!   Quiet ────────────────────────────────▶ Pinged ───────────────────────────────▶ (closed)
//!     ▲                                        │
//!     └──────── any byte received ─────────────┘
//! ```
//! Any byte counts, not just whole frames: a large response still arriving keeps the
//! connection alive. The server answers a ping with a pong at once, so a peer that is there
//! answers within a round trip; one that says nothing for two periods is taken for gone (a
//! path that died without a FIN or RST, a machine that vanished).
//!
//! # Idle timeout (a server)
//! A connection that delivers no complete frame (requests and pings count, bytes of an
//! unfinished frame do not) for `idle_timeout` while the server owes it no answer is closed.
//! Requests being handled hold the clock: a slow handler is the server's doing, not the
//! peer's; the clock restarts when their answers are queued.

use std::fmt;
use std::time::{Duration, Instant};

/// A connection that went silent for longer than its clocks allow. Closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LivenessError {
    /// Client: the peer sent nothing, not even the answer to a ping, for `silent`.
    KeepaliveTimeout {
        /// How long nothing came (two keepalive periods).
        silent: Duration,
    },
    /// Server: the peer delivered no complete frame for `idle` while owed no answer.
    IdleTimeout {
        /// The idle timeout.
        idle: Duration,
    },
}

impl fmt::Display for LivenessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LivenessError::KeepaliveTimeout { silent } => write!(
                f,
                "keepalive timeout: no data from the peer for {silent:?}, a ping unanswered"
            ),
            LivenessError::IdleTimeout { idle } => {
                write!(f, "idle timeout: no frame from the peer for {idle:?}")
            }
        }
    }
}

impl std::error::Error for LivenessError {}

/// What a passed deadline asks of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Send a ping (keepalive).
    Ping,
    /// Close with this error.
    Close(LivenessError),
}

/// Where the clocks are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    /// Not watching: the connection has not opened, or neither clock is configured.
    Off,
    /// Opened; the clocks start at the next stamp.
    Starting,
    /// Bytes last arrived at `bytes_at`, a frame (or an answer queued) at `frame_at`.
    Quiet {
        bytes_at: Instant,
        frame_at: Instant,
    },
    /// As `Quiet`, and a ping went out at `sent` that nothing has followed yet.
    Pinged {
        bytes_at: Instant,
        frame_at: Instant,
        sent: Instant,
    },
}

/// The keepalive and idle clocks of one connection. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Liveness {
    keepalive: Option<Duration>,
    idle_timeout: Option<Duration>,
    watch: Watch,
    /// Requests delivered that the owner has not answered yet.
    owed: u64,
    /// Since the last stamp: bytes arrived.
    heard_bytes: bool,
    /// Since the last stamp: a frame arrived, or answers were queued.
    heard_frame: bool,
}

impl Liveness {
    /// Clocks with these periods (`None` or zero: off), not yet running.
    pub fn new(keepalive: Option<Duration>, idle_timeout: Option<Duration>) -> Liveness {
        Liveness {
            keepalive: keepalive.filter(|d| !d.is_zero()),
            idle_timeout: idle_timeout.filter(|d| !d.is_zero()),
            watch: Watch::Off,
            owed: 0,
            heard_bytes: false,
            heard_frame: false,
        }
    }

    /// The connection opened: the clocks start at the next [`Liveness::stamp`].
    pub fn start(&mut self) {
        if self.keepalive.is_some() || self.idle_timeout.is_some() {
            self.watch = Watch::Starting;
        }
    }

    /// Bytes arrived from the peer.
    #[inline]
    pub fn on_bytes(&mut self) {
        self.heard_bytes = true;
    }

    /// A complete frame arrived from the peer; `owes_answer` when it is a request the owner
    /// must answer.
    #[inline]
    pub fn on_frame(&mut self, owes_answer: bool) {
        self.heard_frame = true;
        self.owed += u64::from(owes_answer);
    }

    /// The owner queued `n` answers.
    #[inline]
    pub fn on_answers(&mut self, n: u64) {
        if n > 0 {
            self.heard_frame = true;
            self.owed = self.owed.saturating_sub(n);
        }
    }

    /// Stamps the events noted since the last stamp with `now`.
    #[inline]
    pub fn stamp(&mut self, now: Instant) {
        if self.watch == Watch::Starting {
            self.watch = Watch::Quiet {
                bytes_at: now,
                frame_at: now,
            };
        }
        if !(self.heard_bytes || self.heard_frame) {
            return;
        }
        let (bytes, frame) = (
            std::mem::take(&mut self.heard_bytes),
            std::mem::take(&mut self.heard_frame),
        );
        self.watch = match self.watch {
            w @ (Watch::Off | Watch::Starting) => w,
            // Any byte answers a ping; answers queued by the owner do not.
            Watch::Quiet { frame_at, .. } | Watch::Pinged { frame_at, .. } if bytes => {
                Watch::Quiet {
                    bytes_at: now,
                    frame_at: if frame { now } else { frame_at },
                }
            }
            Watch::Quiet { bytes_at, .. } => Watch::Quiet {
                bytes_at,
                frame_at: now,
            },
            Watch::Pinged { bytes_at, sent, .. } => Watch::Pinged {
                bytes_at,
                frame_at: now,
                sent,
            },
        };
    }

    /// The earliest time [`Liveness::poll_due`] has something to say.
    pub fn next_deadline(&self) -> Option<Instant> {
        let (keepalive, frame_at) = match self.watch {
            Watch::Off | Watch::Starting => return None,
            Watch::Quiet { bytes_at, frame_at } => (self.keepalive.map(|k| bytes_at + k), frame_at),
            Watch::Pinged { sent, frame_at, .. } => (self.keepalive.map(|k| sent + k), frame_at),
        };
        let idle = match (self.idle_timeout, self.owed) {
            (Some(idle), 0) => Some(frame_at + idle),
            _ => None,
        };
        match (keepalive, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time has reached `now`: what is due, if anything. Stamps pending events first.
    pub fn poll_due(&mut self, now: Instant) -> Option<Due> {
        self.stamp(now);
        let frame_at = match self.watch {
            Watch::Off | Watch::Starting => return None,
            Watch::Quiet { frame_at, .. } | Watch::Pinged { frame_at, .. } => frame_at,
        };
        if let (Some(idle), 0) = (self.idle_timeout, self.owed) {
            if now >= frame_at + idle {
                self.watch = Watch::Off;
                return Some(Due::Close(LivenessError::IdleTimeout { idle }));
            }
        }
        let keepalive = self.keepalive?;
        match self.watch {
            Watch::Quiet { bytes_at, frame_at } if now >= bytes_at + keepalive => {
                self.watch = Watch::Pinged {
                    bytes_at,
                    frame_at,
                    sent: now,
                };
                Some(Due::Ping)
            }
            Watch::Pinged { sent, .. } if now >= sent + keepalive => {
                self.watch = Watch::Off;
                Some(Due::Close(LivenessError::KeepaliveTimeout {
                    silent: keepalive * 2,
                }))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn off_until_started_and_without_periods() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Some(ms(100)), Some(ms(300)));
        assert_eq!(l.next_deadline(), None);
        assert_eq!(l.poll_due(t0 + ms(1000)), None);
        let mut none = Liveness::new(None, Some(Duration::ZERO));
        none.start();
        none.stamp(t0);
        assert_eq!(none.next_deadline(), None);
        assert_eq!(none.poll_due(t0 + ms(10_000)), None);
    }

    #[test]
    fn keepalive_pings_after_a_quiet_period_and_dies_after_another() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Some(ms(100)), None);
        l.start();
        l.stamp(t0);
        assert_eq!(l.next_deadline(), Some(t0 + ms(100)));
        assert_eq!(l.poll_due(t0 + ms(99)), None);
        assert_eq!(l.poll_due(t0 + ms(100)), Some(Due::Ping));
        assert_eq!(l.next_deadline(), Some(t0 + ms(200)));
        assert_eq!(l.poll_due(t0 + ms(199)), None);
        assert_eq!(
            l.poll_due(t0 + ms(200)),
            Some(Due::Close(LivenessError::KeepaliveTimeout {
                silent: ms(200)
            }))
        );
        assert_eq!(l.next_deadline(), None);
        assert_eq!(l.poll_due(t0 + ms(500)), None);
    }

    #[test]
    fn any_byte_answers_a_ping_and_restarts_the_period() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Some(ms(100)), None);
        l.start();
        l.stamp(t0);
        assert_eq!(l.poll_due(t0 + ms(100)), Some(Due::Ping));
        l.on_bytes(); // part of a large frame
        l.stamp(t0 + ms(150));
        assert_eq!(l.next_deadline(), Some(t0 + ms(250)));
        assert_eq!(l.poll_due(t0 + ms(200)), None);
        assert_eq!(l.poll_due(t0 + ms(250)), Some(Due::Ping));
        // Events not stamped yet count at the time of the check.
        l.on_bytes();
        assert_eq!(l.poll_due(t0 + ms(350)), None);
        assert_eq!(l.next_deadline(), Some(t0 + ms(450)));
    }

    #[test]
    fn queued_answers_do_not_answer_a_ping() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Some(ms(100)), None);
        l.start();
        l.stamp(t0);
        assert_eq!(l.poll_due(t0 + ms(100)), Some(Due::Ping));
        l.on_answers(3);
        l.stamp(t0 + ms(150));
        assert!(matches!(
            l.poll_due(t0 + ms(200)),
            Some(Due::Close(LivenessError::KeepaliveTimeout { .. }))
        ));
    }

    #[test]
    fn idle_timeout_counts_frames_not_bytes() {
        let t0 = Instant::now();
        let mut l = Liveness::new(None, Some(ms(300)));
        l.start();
        l.stamp(t0);
        assert_eq!(l.next_deadline(), Some(t0 + ms(300)));
        l.on_bytes(); // a slowloris byte
        l.stamp(t0 + ms(200));
        assert_eq!(l.next_deadline(), Some(t0 + ms(300)));
        l.on_frame(false); // a ping or a send
        l.stamp(t0 + ms(250));
        assert_eq!(l.next_deadline(), Some(t0 + ms(550)));
        assert_eq!(l.poll_due(t0 + ms(549)), None);
        assert_eq!(
            l.poll_due(t0 + ms(550)),
            Some(Due::Close(LivenessError::IdleTimeout { idle: ms(300) }))
        );
    }

    #[test]
    fn requests_being_handled_hold_the_idle_clock() {
        let t0 = Instant::now();
        let mut l = Liveness::new(None, Some(ms(300)));
        l.start();
        l.stamp(t0);
        l.on_frame(true);
        l.on_frame(true);
        l.stamp(t0 + ms(10));
        assert_eq!(l.next_deadline(), None);
        assert_eq!(l.poll_due(t0 + ms(5_000)), None);
        l.on_answers(1);
        l.stamp(t0 + ms(6_000));
        assert_eq!(l.next_deadline(), None, "one answer still owed");
        l.on_answers(1);
        l.stamp(t0 + ms(7_000));
        assert_eq!(l.next_deadline(), Some(t0 + ms(7_300)));
        assert!(matches!(
            l.poll_due(t0 + ms(7_300)),
            Some(Due::Close(LivenessError::IdleTimeout { .. }))
        ));
    }

    #[test]
    fn errors_say_what_went_silent_and_for_how_long() {
        let k = LivenessError::KeepaliveTimeout { silent: ms(400) };
        assert_eq!(
            k.to_string(),
            "keepalive timeout: no data from the peer for 400ms, a ping unanswered"
        );
        let i = LivenessError::IdleTimeout {
            idle: Duration::from_secs(60),
        };
        assert_eq!(
            i.to_string(),
            "idle timeout: no frame from the peer for 60s"
        );
    }
}
