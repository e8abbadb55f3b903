//! Pending-call slots shared by the caller threads and the reactor.
//!
//! A call occupies one slot from submission until its outcome is taken (or discarded). The
//! slot's `state` word says who still holds it:
//!
//! - `CALLER`: a [`super::PendingCall`] exists and will take the outcome (absent for `send`);
//!   a send's slot only counts it against `max_pending_requests`: its payload travels in the
//!   submission queue, and the slot's data is used only if it has to wait for a connection;
//! - `REACTOR`: the reactor has yet to complete the call (set from submission to completion);
//! - `WIRE`: the call's response may still come. Set with `REACTOR` at submission (no
//!   separate step when the request goes on a connection) and cleared with it on completion,
//!   except for a call that timed out on a connection: that one keeps it until the late
//!   response arrives or the connection closes, so that the slot, and with it the request id,
//!   is never reused while the server may still answer;
//! - `DONE`: the outcome is stored;
//! - `WAITER`: the caller is parked on this slot and must be unparked on completion.
//!
//! The reactor completes every submitted call exactly once (`REACTOR -> DONE`). Whoever clears
//! the last of `CALLER`, `REACTOR` and `WIRE` recycles the slot. Each slot has its own lock for its data,
//! only ever taken by the two parties of one call, so it is uncontended in practice.
//!
//! Response buffers come from a pool and go back to it when the caller's [`super::Response`]
//! drops, so steady-state calls allocate nothing.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread::Thread;

use crossbeam_queue::ArrayQueue;

use crate::Error;

pub(crate) const CALLER: u32 = 1;
pub(crate) const REACTOR: u32 = 2;
pub(crate) const DONE: u32 = 4;
pub(crate) const WAITER: u32 = 8;
pub(crate) const WIRE: u32 = 16;
/// The holders of a slot: it is free again when none is left.
const HOLDERS: u32 = CALLER | REACTOR | WIRE;

const SEGMENT: usize = 1024;
/// Response buffers larger than this are not kept in the pool.
const POOL_MAX_BUF: usize = 1 << 20;

/// A call's data, guarded by its slot's lock.
pub(crate) struct SlotData {
    /// The request payload (its capacity is kept across calls).
    pub request: Vec<u8>,
    /// Set by the reactor on completion.
    pub outcome: Option<Result<Vec<u8>, Error>>,
    /// The parked caller, when `WAITER` is set.
    pub waiter: Option<Thread>,
}

pub(crate) struct Slot {
    pub state: AtomicU32,
    data: Mutex<SlotData>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            state: AtomicU32::new(0),
            data: Mutex::new(SlotData {
                request: Vec::new(),
                outcome: None,
                waiter: None,
            }),
        }
    }

    /// The slot's data. A panic while it was held (there is no code that can panic there)
    /// would not leave it inconsistent, so poisoning is ignored.
    pub fn data(&self) -> MutexGuard<'_, SlotData> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A segment of fresh slots (cold: once per `SEGMENT` slots).
#[cold]
fn new_segment() -> Box<[Slot; SEGMENT]> {
    let slots: Box<[Slot]> = (0..SEGMENT).map(|_| Slot::new()).collect();
    match slots.try_into() {
        Ok(seg) => seg,
        Err(_) => unreachable!("a segment has SEGMENT slots"),
    }
}

/// The table of slots: allocated lazily in segments, bounded by `max_pending`.
pub(crate) struct Slots {
    /// Fixed-size segments: indexing one needs no bounds check.
    segments: Box<[OnceLock<Box<[Slot; SEGMENT]>>]>,
    fresh: AtomicU32,
    free: ArrayQueue<u32>,
    capacity: u32,
    buffers: ArrayQueue<Vec<u8>>,
}

impl Slots {
    pub fn new(max_pending: u32) -> Slots {
        let capacity = max_pending.max(1);
        let segments = (capacity as usize).div_ceil(SEGMENT);
        Slots {
            segments: (0..segments).map(|_| OnceLock::new()).collect(),
            fresh: AtomicU32::new(0),
            free: ArrayQueue::new(capacity as usize),
            capacity,
            buffers: ArrayQueue::new(capacity as usize),
        }
    }

    #[inline]
    pub fn get(&self, idx: u32) -> &Slot {
        let seg = self.segments[idx as usize / SEGMENT].get_or_init(new_segment);
        &seg[idx as usize % SEGMENT]
    }

    /// Takes a free slot for a new call, or `None` when `max_pending` calls are pending.
    pub fn alloc(&self, state: u32) -> Option<u32> {
        let idx = match self.free.pop() {
            Some(idx) => idx,
            None => self
                .fresh
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < self.capacity).then_some(n + 1)
                })
                .ok()?,
        };
        self.get(idx).state.store(state, Ordering::Relaxed);
        Some(idx)
    }

    /// Slots in use (pending calls, and outcomes not yet taken).
    pub fn in_use(&self) -> usize {
        self.fresh.load(Ordering::Relaxed) as usize - self.free.len()
    }

    /// Returns a slot to the free list, keeping its request buffer's capacity.
    pub fn release(&self, idx: u32) {
        let slot = self.get(idx);
        {
            let mut d = slot.data();
            d.request.clear();
            d.waiter = None;
            if let Some(Ok(buf)) = d.outcome.take() {
                self.give_buffer(buf);
            }
        }
        slot.state.store(0, Ordering::Release);
        // Cannot fail: at most `capacity` slots exist.
        let _ = self.free.push(idx);
    }

    /// Returns a slot that only counted a send (its data untouched) to the free list.
    pub fn release_reserved(&self, idx: u32) {
        self.get(idx).state.store(0, Ordering::Release);
        // Cannot fail: at most `capacity` slots exist.
        let _ = self.free.push(idx);
    }

    /// Reactor: the response of call `idx` can no longer come (it came after the call timed
    /// out, or the connection closed): the slot may be reused.
    pub fn off_wire(&self, idx: u32) {
        let prev = self.get(idx).state.fetch_and(!WIRE, Ordering::AcqRel);
        if prev & HOLDERS == WIRE {
            self.release(idx);
        }
    }

    /// Reactor: stores the outcome of call `idx` and hands it to its caller (unparking a
    /// parked one), or recycles the slot when nobody holds it any more. `off_wire` says
    /// whether the request's response can still come (false for a timeout). True when a
    /// parked caller had to be woken.
    pub fn complete(&self, idx: u32, outcome: Result<Vec<u8>, Error>, off_wire: bool) -> bool {
        let slot = self.get(idx);
        slot.data().outcome = Some(outcome);
        let clear = if off_wire { WIRE } else { 0 };
        let prev = slot
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                Some((s & !(REACTOR | clear)) | DONE)
            })
            .expect("the closure always returns Some");
        debug_assert!(prev & REACTOR != 0 && prev & DONE == 0, "completed twice");
        let holders = prev & HOLDERS & !(REACTOR | clear);
        if holders == 0 {
            self.release(idx);
        } else if prev & WAITER != 0 {
            // The lock must be let go before the unpark: the woken caller takes it first
            // thing, and would otherwise sleep on it again until the unpark's syscall returns.
            let waiter = slot.data().waiter.take();
            if let Some(t) = waiter {
                t.unpark();
                return true;
            }
        }
        false
    }

    /// A buffer for a response payload, from the pool when one is there.
    pub fn take_buffer(&self) -> Vec<u8> {
        self.buffers.pop().unwrap_or_default()
    }

    /// Gives a response buffer back to the pool.
    pub fn give_buffer(&self, mut buf: Vec<u8>) {
        if buf.capacity() != 0 && buf.capacity() <= POOL_MAX_BUF {
            buf.clear();
            let _ = self.buffers.push(buf);
        }
    }

    /// Caller: whether the call in `idx` is complete.
    pub fn is_done(&self, idx: u32) -> bool {
        self.get(idx).state.load(Ordering::Acquire) & DONE != 0
    }

    /// Caller: takes the outcome of a completed call and lets go of the slot. One lock for
    /// both: the slot's data stays locked while the caller lets go, so that when it is the
    /// last holder it clears the slot under the same lock (`release`, without relocking).
    pub fn take(&self, idx: u32) -> Result<Vec<u8>, Error> {
        let slot = self.get(idx);
        let mut d = slot.data();
        let outcome = d.outcome.take();
        let prev = slot.state.fetch_and(!(CALLER | WAITER), Ordering::AcqRel);
        if prev & HOLDERS == CALLER {
            d.request.clear();
            d.waiter = None;
            drop(d);
            slot.state.store(0, Ordering::Release);
            // Cannot fail: at most `capacity` slots exist.
            let _ = self.free.push(idx);
        }
        outcome.unwrap_or(Err(Error::Canceled))
    }

    /// Caller: spins briefly for the call in `idx` to complete; true if it did.
    pub fn spin_until_done(&self, idx: u32) -> bool {
        let slot = self.get(idx);
        for _ in 0..64 {
            if slot.state.load(Ordering::Acquire) & DONE != 0 {
                return true;
            }
            std::hint::spin_loop();
        }
        false
    }

    /// Caller: blocks until the call in `idx` completes (parking on the slot), then takes its
    /// outcome.
    pub fn wait(&self, idx: u32) -> Result<Vec<u8>, Error> {
        let slot = self.get(idx);
        loop {
            let s = slot.state.load(Ordering::Acquire);
            if s & DONE != 0 {
                return self.take(idx);
            }
            if s & WAITER == 0 {
                slot.data().waiter = Some(std::thread::current());
                let registered = slot
                    .state
                    .compare_exchange(s, s | WAITER, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                if !registered {
                    continue;
                }
            }
            std::thread::park();
        }
    }

    /// Caller: gives up on the call in `idx` (its handle dropped). The reactor will still
    /// complete it and then recycle the slot, unless it already has.
    pub fn abandon(&self, idx: u32) {
        let prev = self
            .get(idx)
            .state
            .fetch_and(!(CALLER | WAITER), Ordering::AcqRel);
        if prev & HOLDERS == CALLER {
            self.release(idx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_is_bounded_and_recycles() {
        let slots = Slots::new(3);
        let a: Vec<u32> = (0..3)
            .map(|_| slots.alloc(CALLER | REACTOR).unwrap())
            .collect();
        assert_eq!(a, [0, 1, 2]);
        assert_eq!(slots.alloc(CALLER | REACTOR), None);
        assert_eq!(slots.in_use(), 3);
        slots.complete(1, Ok(b"x".to_vec()), true);
        assert!(slots.is_done(1));
        assert_eq!(slots.take(1).unwrap(), b"x");
        assert_eq!(slots.in_use(), 2);
        assert_eq!(slots.alloc(CALLER | REACTOR), Some(1));
    }

    #[test]
    fn abandoned_call_is_recycled_by_whoever_lets_go_last() {
        let slots = Slots::new(2);
        let i = slots.alloc(CALLER | REACTOR).unwrap();
        slots.abandon(i);
        assert_eq!(slots.in_use(), 1, "reactor still holds it");
        slots.complete(i, Err(Error::Timeout), true);
        assert_eq!(slots.in_use(), 0);

        let j = slots.alloc(CALLER | REACTOR).unwrap();
        slots.complete(j, Ok(vec![1]), true);
        assert_eq!(slots.in_use(), 1, "outcome waits for the caller");
        slots.abandon(j);
        assert_eq!(slots.in_use(), 0);
    }

    #[test]
    fn send_without_caller_recycles_on_completion() {
        let slots = Slots::new(1);
        let i = slots.alloc(REACTOR).unwrap();
        slots.complete(i, Ok(Vec::new()), true);
        assert_eq!(slots.in_use(), 0);
    }

    #[test]
    fn wait_parks_until_completed_from_another_thread() {
        let slots = std::sync::Arc::new(Slots::new(1));
        let i = slots.alloc(CALLER | REACTOR).unwrap();
        let s2 = slots.clone();
        let t = std::thread::spawn(move || s2.wait(i));
        // Whether the waiter parked yet or not, completion reaches it exactly once.
        slots.complete(i, Ok(b"done".to_vec()), true);
        assert_eq!(t.join().unwrap().unwrap(), b"done");
        assert_eq!(slots.in_use(), 0);
    }

    #[test]
    fn timed_out_call_keeps_its_slot_until_its_response_cannot_come() {
        let slots = Slots::new(1);
        let i = slots.alloc(CALLER | REACTOR | WIRE).unwrap();
        slots.complete(i, Err(Error::Timeout), false);
        assert!(matches!(slots.take(i), Err(Error::Timeout)));
        assert_eq!(slots.in_use(), 1, "the id is still outstanding");
        assert_eq!(slots.alloc(CALLER | REACTOR), None);
        slots.off_wire(i);
        assert_eq!(slots.in_use(), 0);
        assert_eq!(slots.alloc(CALLER | REACTOR), Some(i));
    }

    #[test]
    fn response_buffers_are_pooled() {
        let slots = Slots::new(1);
        let mut b = slots.take_buffer();
        b.extend_from_slice(&[0; 100]);
        let cap = b.capacity();
        slots.give_buffer(b);
        let again = slots.take_buffer();
        assert_eq!((again.len(), again.capacity()), (0, cap));
    }
}
