//! Exact call deadlines with O(1) insert and removal in the common case.
//!
//! Calls are grouped by their timeout ("class": usually one, the client's `request_timeout`,
//! plus whatever `call_timeout` durations are in use). Within a class, deadlines arrive almost
//! in order (submission time + the same duration), so each class is an intrusive doubly
//! linked list over the call slots kept sorted by deadline: an insert walks back from the tail
//! past the rare later entry, a completion unlinks its slot, and the earliest deadline is the
//! smallest head. Nothing is allocated per call once the link table has grown to the number
//! of slots.

use std::time::{Duration, Instant};

const NIL: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
    /// Class index, or `NIL` when the slot is not in any list.
    class: u32,
    at: Instant,
}

struct Class {
    timeout: Duration,
    head: u32,
    tail: u32,
}

/// Deadlines of pending calls, keyed by slot index.
pub(crate) struct Deadlines {
    links: Vec<Link>,
    classes: Vec<Class>,
    /// A time before every deadline, to fill unused links.
    epoch: Instant,
}

impl Deadlines {
    pub fn new(epoch: Instant) -> Deadlines {
        Deadlines {
            links: Vec::new(),
            classes: Vec::new(),
            epoch,
        }
    }

    fn class_for(&mut self, timeout: Duration) -> u32 {
        if let Some(i) = self.classes.iter().position(|c| c.timeout == timeout) {
            return i as u32;
        }
        let fresh = Class {
            timeout,
            head: NIL,
            tail: NIL,
        };
        if let Some(i) = self.classes.iter().position(|c| c.head == NIL) {
            self.classes[i] = fresh;
            return i as u32;
        }
        self.classes.push(fresh);
        (self.classes.len() - 1) as u32
    }

    /// Adds slot `idx`, due at `at` (its submission time plus `timeout`).
    pub fn insert(&mut self, idx: u32, timeout: Duration, at: Instant) {
        let i = idx as usize;
        if self.links.len() <= i {
            let epoch = self.epoch;
            self.links.resize(
                i + 1,
                Link {
                    prev: NIL,
                    next: NIL,
                    class: NIL,
                    at: epoch,
                },
            );
        }
        debug_assert_eq!(
            self.links[i].class, NIL,
            "slot {idx} already has a deadline"
        );
        let class = self.class_for(timeout);
        // Walk back from the tail past entries due later.
        let mut after = self.classes[class as usize].tail;
        while after != NIL && self.links[after as usize].at > at {
            after = self.links[after as usize].prev;
        }
        let next = match after {
            NIL => self.classes[class as usize].head,
            a => self.links[a as usize].next,
        };
        self.links[i] = Link {
            prev: after,
            next,
            class,
            at,
        };
        match after {
            NIL => self.classes[class as usize].head = idx,
            a => self.links[a as usize].next = idx,
        }
        match next {
            NIL => self.classes[class as usize].tail = idx,
            n => self.links[n as usize].prev = idx,
        }
    }

    /// Removes slot `idx`; a slot without a deadline is left alone.
    pub fn remove(&mut self, idx: u32) {
        let Some(link) = self.links.get(idx as usize).copied() else {
            return;
        };
        if link.class == NIL {
            return;
        }
        let class = &mut self.classes[link.class as usize];
        match link.prev {
            NIL => class.head = link.next,
            p => self.links[p as usize].next = link.next,
        }
        match link.next {
            NIL => class.tail = link.prev,
            n => self.links[n as usize].prev = link.prev,
        }
        self.links[idx as usize].class = NIL;
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.classes
            .iter()
            .filter(|c| c.head != NIL)
            .map(|c| self.links[c.head as usize].at)
            .min()
    }

    /// Removes and returns a slot whose deadline is at or before `now`.
    pub fn pop_expired(&mut self, now: Instant) -> Option<u32> {
        let idx = self
            .classes
            .iter()
            .map(|c| c.head)
            .find(|&h| h != NIL && self.links[h as usize].at <= now)?;
        self.remove(idx);
        Some(idx)
    }

    /// True when no deadline is pending.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.classes.iter().all(|c| c.head == NIL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn expires_in_deadline_order_across_classes() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(t0);
        d.insert(0, ms(100), t0 + ms(100));
        d.insert(1, ms(10), t0 + ms(10));
        d.insert(2, ms(100), t0 + ms(101));
        d.insert(3, ms(10), t0 + ms(12));
        assert_eq!(d.next(), Some(t0 + ms(10)));
        assert_eq!(d.pop_expired(t0 + ms(9)), None);
        assert_eq!(d.pop_expired(t0 + ms(11)), Some(1));
        assert_eq!(d.pop_expired(t0 + ms(11)), None);
        assert_eq!(d.next(), Some(t0 + ms(12)));
        let mut fired = Vec::new();
        while let Some(i) = d.pop_expired(t0 + ms(200)) {
            fired.push(i);
        }
        fired.sort();
        assert_eq!(fired, [0, 2, 3]);
        assert!(d.is_empty());
        assert_eq!(d.next(), None);
    }

    #[test]
    fn out_of_order_insert_keeps_the_list_sorted() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(t0);
        d.insert(5, ms(50), t0 + ms(52));
        d.insert(6, ms(50), t0 + ms(50)); // submitted a moment earlier by another thread
        d.insert(7, ms(50), t0 + ms(51));
        assert_eq!(d.pop_expired(t0 + ms(60)), Some(6));
        assert_eq!(d.pop_expired(t0 + ms(60)), Some(7));
        assert_eq!(d.pop_expired(t0 + ms(60)), Some(5));
    }

    #[test]
    fn removal_from_head_middle_tail() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(t0);
        for i in 0..5u32 {
            d.insert(i, ms(10), t0 + ms(10 + i as u64));
        }
        d.remove(0);
        d.remove(2);
        d.remove(4);
        d.remove(4); // twice is harmless
        d.remove(99); // never inserted
        assert_eq!(d.next(), Some(t0 + ms(11)));
        assert_eq!(d.pop_expired(t0 + ms(100)), Some(1));
        assert_eq!(d.pop_expired(t0 + ms(100)), Some(3));
        assert!(d.is_empty());
        // A removed slot can be inserted again.
        d.insert(2, ms(1), t0 + ms(1));
        assert_eq!(d.pop_expired(t0 + ms(1)), Some(2));
    }

    #[test]
    fn empty_classes_are_reused() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(t0);
        for i in 0..100u32 {
            d.insert(i, ms(i as u64 + 1), t0 + ms(i as u64 + 1));
            d.remove(i);
        }
        assert_eq!(d.classes.len(), 1);
    }
}
