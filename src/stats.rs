//! Counters of a client or server, read as a [`Stats`] snapshot.
//!
//! The reactor and the caller threads bump shared atomic counters; [`crate::Client::stats`]
//! and [`crate::Server::stats`] copy them out. The figures show the batching at work:
//! [`Stats::frames_per_write`] is how many calls (or responses) one `write()` carried.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A snapshot of a client's or server's counters since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Client: calls completed with a response (including `send`s written). Server: requests
    /// handled.
    pub calls: u64,
    /// Calls or requests that ended in an error, by kind.
    pub errors: ErrorCounts,
    /// Sum of call durations (client), in nanoseconds: from the moment the reactor took the
    /// call in (read once per batch of calls, a little after their submission) to its
    /// completion.
    pub call_time_ns: u64,
    /// Bytes read from sockets.
    pub bytes_read: u64,
    /// Bytes written to sockets.
    pub bytes_written: u64,
    /// `read()` calls that returned data or end of stream.
    pub read_calls: u64,
    /// `read()` calls that failed (other than would-block).
    pub read_errors: u64,
    /// `write()` calls that wrote something.
    pub write_calls: u64,
    /// `write()` calls that failed (other than would-block).
    pub write_errors: u64,
    /// Connections dialed (client).
    pub dials: u64,
    /// Dials that failed, or whose handshake failed (client).
    pub dial_errors: u64,
    /// Connections accepted (server).
    pub accepts: u64,
    /// Accepts that failed, or were refused (limits, `on_connect`, handshake) (server).
    pub accept_errors: u64,
    /// Batches flushed: each is one contiguous chunk handed to `write()`.
    pub flushes: u64,
    /// Connections declared dead by the keepalive: nothing, not even the answer to a ping,
    /// came for two keepalive periods (client).
    pub keepalive_timeouts: u64,
    /// Connections closed by the idle timeout: no complete frame for that long while owed no
    /// answer (server).
    pub idle_timeouts: u64,
    /// Frames written (requests or responses), summed over all flushes.
    pub frames_written: u64,
    /// Frames read.
    pub frames_read: u64,
    /// Reactor turns (`poll_once` calls) of the reactor this client or server runs on.
    pub turns: u64,
    /// Thread wake-ups paid for with a syscall: the reactor woken by a caller or a worker, a
    /// worker woken for a job, a caller woken for its response. The figure to drive down:
    /// compare it with `calls`.
    pub wakeups: u64,
    /// Connections open now.
    pub open_connections: u64,
    /// Bytes of buffer memory the connections hold, as of the reactor's last idle sweep
    /// (once a second). Connections quiet for a second hold none.
    pub buffered_bytes: u64,
}

/// Errors by kind; see [`crate::Error`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ErrorCounts {
    /// [`crate::Error::Timeout`].
    pub timeout: u64,
    /// [`crate::Error::Overflow`].
    pub overflow: u64,
    /// [`crate::Error::ConnectionLost`].
    pub connection_lost: u64,
    /// [`crate::Error::Server`]: handler errors and panics.
    pub server: u64,
    /// [`crate::Error::Closed`] and [`crate::Error::Canceled`].
    pub closed: u64,
    /// Connections closed for a protocol violation (including handshake failures).
    pub protocol: u64,
    /// [`crate::Error::TooLarge`].
    pub too_large: u64,
    /// [`crate::Error::Encode`] and [`crate::Error::Decode`].
    pub codec: u64,
    /// Responses that matched no pending call (late after a timeout, or unknown), discarded.
    pub stale_responses: u64,
}

impl ErrorCounts {
    /// Calls that failed, whatever the error: every counter but `protocol` (which counts
    /// connections) and `stale_responses` (answers nobody waited for).
    pub fn failed_calls(&self) -> u64 {
        self.timeout
            + self.overflow
            + self.connection_lost
            + self.server
            + self.closed
            + self.too_large
            + self.codec
    }
}

impl Stats {
    /// Mean frames per flush: how many calls one `write()` carried.
    pub fn frames_per_write(&self) -> f64 {
        self.frames_written as f64 / self.flushes.max(1) as f64
    }

    /// Mean call duration (client).
    pub fn avg_call_time(&self) -> Duration {
        Duration::from_nanos(self.call_time_ns / self.calls.max(1))
    }
}

macro_rules! counters {
    ($($name:ident => $($field:ident).+;)*) => {
        /// One shared counter per [`Stats`] field.
        #[derive(Clone, Copy, Debug)]
        #[allow(non_camel_case_types)]
        pub(crate) enum C { $($name,)* }

        const COUNT: usize = [$(C::$name),*].len();

        impl SharedStats {
            pub(crate) fn snapshot(&self) -> Stats {
                let mut s = Stats::default();
                $( s.$($field).+ = self.get(C::$name); )*
                s
            }
        }

        impl Stats {
            /// What happened between `earlier` (a snapshot taken before) and this snapshot:
            /// counters are subtracted; the gauges (`open_connections`, `buffered_bytes`)
            /// keep their current values.
            ///
            /// ```
            /// # use batchrpc::Stats;
            /// let (before, after) = (Stats::default(), Stats::default());
            /// let during = after.since(&before);
            /// assert_eq!(during.calls, 0);
            /// ```
            pub fn since(&self, earlier: &Stats) -> Stats {
                let mut s = *self;
                $( s.$($field).+ = self.$($field).+.wrapping_sub(earlier.$($field).+); )*
                s.open_connections = self.open_connections;
                s.buffered_bytes = self.buffered_bytes;
                s
            }
        }

        /// Sums every field, gauges included: the figures of several clients (or servers)
        /// as one.
        impl std::ops::AddAssign for Stats {
            fn add_assign(&mut self, other: Stats) {
                $( self.$($field).+ = self.$($field).+.wrapping_add(other.$($field).+); )*
            }
        }
    };
}

counters! {
    calls => calls;
    call_time_ns => call_time_ns;
    bytes_read => bytes_read;
    bytes_written => bytes_written;
    read_calls => read_calls;
    read_errors => read_errors;
    write_calls => write_calls;
    write_errors => write_errors;
    dials => dials;
    dial_errors => dial_errors;
    accepts => accepts;
    accept_errors => accept_errors;
    flushes => flushes;
    keepalive_timeouts => keepalive_timeouts;
    idle_timeouts => idle_timeouts;
    frames_written => frames_written;
    frames_read => frames_read;
    turns => turns;
    wakeups => wakeups;
    open_connections => open_connections;
    buffered_bytes => buffered_bytes;
    timeout => errors.timeout;
    overflow => errors.overflow;
    connection_lost => errors.connection_lost;
    server => errors.server;
    closed => errors.closed;
    protocol => errors.protocol;
    too_large => errors.too_large;
    codec => errors.codec;
    stale_responses => errors.stale_responses;
}

/// The shared counters behind [`Stats`].
pub(crate) struct SharedStats {
    c: [AtomicU64; COUNT],
}

impl Default for SharedStats {
    fn default() -> Self {
        SharedStats {
            c: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl SharedStats {
    #[inline]
    pub(crate) fn add(&self, c: C, n: u64) {
        self.c[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn inc(&self, c: C) {
        self.add(c, 1);
    }

    /// `add` for a counter that only one thread at a time writes (one reactor's, whose
    /// state moves between threads only with a hand-off that orders it): a plain load and
    /// store, no locked instruction. Readers see every update, as with `add`.
    #[inline]
    pub(crate) fn add_exclusive(&self, c: C, n: u64) {
        let counter = &self.c[c as usize];
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    #[inline]
    pub(crate) fn set(&self, c: C, n: u64) {
        self.c[c as usize].store(n, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn sub(&self, c: C, n: u64) {
        self.c[c as usize].fetch_sub(n, Ordering::Relaxed);
    }

    fn get(&self, c: C) -> u64 {
        self.c[c as usize].load(Ordering::Relaxed)
    }

    /// Counts an error by its kind.
    pub(crate) fn error(&self, e: &crate::Error) {
        use crate::Error;
        let c = match e {
            Error::Timeout => C::timeout,
            Error::Overflow => C::overflow,
            Error::ConnectionLost(_) | Error::Connect { .. } | Error::Io(_) | Error::Refused(_) => {
                C::connection_lost
            }
            Error::Server(_) => C::server,
            Error::Protocol(_) => C::protocol,
            Error::TooLarge { .. } => C::too_large,
            Error::Canceled | Error::Closed | Error::Config(_) => C::closed,
            Error::Encode(_) | Error::Decode(_) => C::codec,
        };
        self.inc(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_subtracts_counters_and_keeps_gauges() {
        let s = SharedStats::default();
        s.add(C::calls, 5);
        s.set(C::open_connections, 2);
        let before = s.snapshot();
        s.add(C::calls, 7);
        s.inc(C::timeout);
        s.set(C::open_connections, 3);
        let during = s.snapshot().since(&before);
        assert_eq!(
            (during.calls, during.errors.timeout, during.open_connections),
            (7, 1, 3)
        );
    }

    #[test]
    fn snapshot_maps_every_counter_to_its_field() {
        let s = SharedStats::default();
        s.add(C::calls, 3);
        s.add(C::flushes, 2);
        s.add(C::frames_written, 9);
        s.inc(C::stale_responses);
        s.error(&crate::Error::Timeout);
        let snap = s.snapshot();
        assert_eq!(snap.calls, 3);
        assert_eq!(snap.errors.timeout, 1);
        assert_eq!(snap.errors.stale_responses, 1);
        assert_eq!(snap.frames_per_write(), 4.5);
    }
}
