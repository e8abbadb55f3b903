//! A byte buffer with a read cursor, for bytes that arrive in pieces.
//!
//! The storage is zero-initialised once and reused, so a socket can read straight into the free
//! tail (`&mut [u8]`) without `unsafe` and without zeroing again on every read. Consumed bytes
//! are reclaimed by moving the unconsumed rest to the front only when room is needed.

/// Unconsumed bytes `data[start..end]`, free room `data[end..]`.
#[derive(Debug, Default)]
pub struct RecvBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl RecvBuf {
    /// An empty buffer; no memory is taken until the first [`RecvBuf::spare`].
    pub fn new() -> RecvBuf {
        RecvBuf::default()
    }

    /// The bytes received and not yet consumed.
    #[inline]
    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// How many bytes are received and not yet consumed.
    #[inline]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// True when nothing is waiting to be consumed.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Marks `n` bytes at the front as consumed.
    #[inline]
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Free room of at least `min` bytes (and all the room there is) to receive into, moving the
    /// unconsumed bytes to the front or growing the storage as needed.
    pub fn spare(&mut self, min: usize) -> &mut [u8] {
        if self.data.len() - self.end < min {
            if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.data.len() - self.end < min {
                let want = (self.end + min).next_power_of_two();
                self.data.resize(want, 0);
            }
        }
        &mut self.data[self.end..]
    }

    /// Records that `n` bytes were written at the front of the last [`RecvBuf::spare`].
    #[inline]
    pub fn commit(&mut self, n: usize) {
        debug_assert!(self.end + n <= self.data.len());
        self.end += n;
    }

    /// Appends bytes (a copy), for moving leftovers between buffers.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        let room = self.spare(bytes.len());
        room[..bytes.len()].copy_from_slice(bytes);
        self.commit(bytes.len());
    }

    /// Bytes of storage held.
    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    /// Gives the storage back when nothing is waiting, keeping at most `keep` bytes.
    pub fn shrink_idle(&mut self, keep: usize) {
        if self.is_empty() && self.data.len() > keep {
            self.data = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_consume_compact_grow() {
        let mut b = RecvBuf::new();
        assert_eq!(b.capacity(), 0);
        let room = b.spare(4);
        assert!(room.len() >= 4);
        room[..4].copy_from_slice(b"abcd");
        b.commit(4);
        assert_eq!(b.filled(), b"abcd");
        b.consume(3);
        assert_eq!(b.filled(), b"d");
        let cap = b.capacity();
        // Needing all the room moves "d" to the front instead of growing.
        let room = b.spare(cap - 1);
        assert_eq!(room.len(), cap - 1);
        room[0] = b'e';
        b.commit(1);
        assert_eq!(b.filled(), b"de");
        assert_eq!(b.capacity(), cap);
        b.extend_from_slice(&[b'f'; 100]);
        assert_eq!(b.len(), 102);
        assert!(b.capacity() >= 102);
        b.consume(102);
        assert!(b.is_empty());
        b.shrink_idle(8);
        assert_eq!(b.capacity(), 0);
    }

    #[test]
    fn shrink_keeps_waiting_bytes() {
        let mut b = RecvBuf::new();
        b.extend_from_slice(&[1; 1000]);
        b.shrink_idle(8);
        assert_eq!(b.len(), 1000);
    }
}
