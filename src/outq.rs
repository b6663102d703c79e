//! OutQueue: the bytes waiting to be written to one socket.
//!
//! A queue holds shared, reference-counted buffers (`Chunk`, an `Rc<Bytes>`): a broadcast frame
//! is built once and the same buffer is pushed on every subscriber's queue, so a delivery costs a
//! non-atomic refcount and, at flush time, one iovec. Queuing never writes; the reactor flushes
//! each dirty queue once per turn with one vectored write (redis `networking.c`: queue now, write
//! before the next poll).
//!
//! An empty queue owns no heap memory once `release_memory` has run, so idle sockets stay cheap.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

use bytes::Bytes;
use smallvec::SmallVec;

/// Most buffers handed to one `writev`: Linux's IOV_MAX. A client behind by a burst holds
/// hundreds of ~100-byte frames; with a cap of 64 a 200-event burst took 4 writes per socket
/// where one fits in the send buffer, and the syscalls are where fan-out time goes.
const MAX_IOVECS: usize = 1024;

/// One queued buffer. The reactor is one thread, so a broadcast frame is shared through a
/// plain `Rc`: a delivery costs a non-atomic increment and 8 bytes of queue, where a `Bytes`
/// handle costs an atomic increment (and decrement) and 32 bytes. With 10,000 clients behind
/// by a 200-event burst that is 2M handles: 16 MB instead of 64 MB.
pub type Chunk = Rc<Bytes>;

/// What a buffer queued for one connection alone costs beyond its bytes: the `Rc` box
/// (counts and the `Bytes` handle, 48 bytes) and the allocator's share of its data. A pong or
/// a notice is a few bytes of payload and costs this much more: a flood of them is charged
/// for what it holds, not for its payload.
const PRIVATE_BUFFER_OVERHEAD: u32 = 64;

#[derive(Debug, Default)]
pub struct OutQueue {
    bufs: VecDeque<Chunk>,
    /// Bytes of `bufs[0]` already written (less than one buffer).
    front_written: u32,
    /// Overhead of the private buffers pushed since the queue was last empty. Charged until
    /// the queue empties (a buffer's sharing can change while it waits, so it is not
    /// credited back one by one): an overcount for a client that drains slowly, never an
    /// undercount.
    private_overhead: u32,
    /// Bytes queued and not yet written, over all buffers.
    queued_bytes: usize,
}

impl OutQueue {
    pub fn push(&mut self, buf: impl Into<Chunk>) {
        let buf = buf.into();
        if buf.is_empty() {
            return;
        }
        self.queued_bytes += buf.len();
        if Rc::strong_count(&buf) == 1 {
            self.private_overhead = self
                .private_overhead
                .saturating_add(PRIVATE_BUFFER_OVERHEAD);
        }
        self.bufs.push_back(buf);
    }

    pub fn is_empty(&self) -> bool {
        self.queued_bytes == 0
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// What the queue costs in memory: its bytes (a shared frame counts in full for each
    /// client holding it), a handle for each buffer (a client far behind holds thousands of
    /// small shared frames; the handles are its real cost then), and the overhead of the
    /// buffers it holds alone.
    pub fn memory_bytes(&self) -> usize {
        self.queued_bytes
            + self.bufs.len() * std::mem::size_of::<Chunk>()
            + self.private_overhead as usize
    }

    /// True while the front buffer is partly on the wire: dropping it would cut a frame in two.
    pub fn is_mid_buffer(&self) -> bool {
        self.front_written > 0
    }

    /// Drops everything not yet started, keeping a partly written front buffer so the stream
    /// stays well-framed. Used before a close frame is queued for a client that stopped reading.
    pub fn discard_unstarted(&mut self) {
        let keep = usize::from(self.front_written > 0);
        while self.bufs.len() > keep {
            let dropped = self.bufs.pop_back().expect("bug: len checked");
            self.queued_bytes -= dropped.len();
        }
        if self.bufs.is_empty() {
            self.private_overhead = 0;
        }
    }

    /// One vectored write of the queued buffers. Returns the bytes written; `Ok(0)` only when
    /// the queue was empty. `WouldBlock` and other errors are the caller's to interpret.
    pub fn write_to(&mut self, sink: &mut impl Write) -> io::Result<usize> {
        if self.is_empty() {
            return Ok(0);
        }
        if self.bufs.len() == 1 {
            // The common case (one event since the last flush): a plain write, no iovec array.
            let written = sink.write(&self.bufs[0][self.front_written as usize..])?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.consume(written);
            return Ok(written);
        }
        // Inline storage is left uninitialised until pushed: no 16 KiB zero-fill per write.
        let mut slices: SmallVec<[IoSlice<'_>; MAX_IOVECS]> = SmallVec::new();
        let mut bufs = self.bufs.iter().take(MAX_IOVECS);
        if let Some(front) = bufs.next() {
            slices.push(IoSlice::new(&front[self.front_written as usize..]));
        }
        slices.extend(bufs.map(|buf| IoSlice::new(buf)));
        let written = sink.write_vectored(&slices)?;
        drop(slices); // ends the borrow of `bufs` before `consume` changes them
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.consume(written);
        Ok(written)
    }

    fn consume(&mut self, mut written: usize) {
        self.queued_bytes -= written;
        while written > 0 {
            let front_left = self.bufs[0].len() - self.front_written as usize;
            if written >= front_left {
                written -= front_left;
                self.bufs.pop_front();
                self.front_written = 0;
            } else {
                // Less than the front buffer, whose length fits: frames are at most the
                // message and body caps.
                self.front_written += written as u32;
                written = 0;
            }
        }
        if self.bufs.is_empty() {
            self.private_overhead = 0;
        }
    }

    /// Frees the ring's allocation if the queue is empty (called for idle sockets).
    pub fn release_memory(&mut self) {
        if self.bufs.is_empty() && self.bufs.capacity() > 0 {
            self.bufs = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that accepts at most `limit` bytes per call, like a nearly full socket.
    struct Trickle {
        out: Vec<u8>,
        limit: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.limit);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut total = 0;
            for b in bufs {
                let n = self.write(&b[..b.len().min(self.limit - total)])?;
                total += n;
                if total == self.limit {
                    break;
                }
            }
            Ok(total)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn should_write_everything_in_order_through_partial_writes() {
        for limit in 1..12 {
            let mut q = OutQueue::default();
            q.push(Bytes::from_static(b"hello "));
            q.push(Bytes::from_static(b""));
            q.push(Bytes::from_static(b"wide "));
            q.push(Bytes::from_static(b"world"));
            let mut sink = Trickle { out: vec![], limit };
            while !q.is_empty() {
                q.write_to(&mut sink).unwrap();
            }
            assert_eq!(sink.out, b"hello wide world", "limit {limit}");
            assert_eq!(q.queued_bytes(), 0);
        }
    }

    #[test]
    fn should_keep_a_partly_written_buffer_when_discarding() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"abcdef"));
        q.push(Bytes::from_static(b"ghi"));
        let mut sink = Trickle {
            out: vec![],
            limit: 2,
        };
        q.write_to(&mut sink).unwrap();
        assert!(q.is_mid_buffer());
        q.discard_unstarted();
        assert_eq!(q.queued_bytes(), 4);
        while !q.is_empty() {
            q.write_to(&mut sink).unwrap();
        }
        assert_eq!(sink.out, b"abcdef");
    }

    #[test]
    fn should_charge_private_buffers_their_overhead_until_empty() {
        let shared = Rc::new(Bytes::from_static(b"frame"));
        let mut q = OutQueue::default();
        q.push(shared.clone());
        assert_eq!(
            q.memory_bytes(),
            5 + 8,
            "a shared frame costs its bytes and a handle"
        );
        q.push(Bytes::from_static(b"po"));
        assert_eq!(q.memory_bytes(), 5 + 8 + 2 + 8 + 64);
        let mut sink = Vec::new();
        while !q.is_empty() {
            q.write_to(&mut sink).unwrap();
        }
        assert_eq!(q.memory_bytes(), 0);
    }

    #[test]
    fn should_free_memory_once_empty() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"x"));
        q.write_to(&mut Vec::new()).unwrap();
        q.release_memory();
        assert_eq!(q.bufs.capacity(), 0);
    }
}
