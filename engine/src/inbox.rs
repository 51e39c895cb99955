//! A sector's bounded, lock-free command inbox: any thread may push, the sector's own
//! simulate step pops. It is not a general queue: it holds at most `capacity` commands
//! and refuses the rest, so a flood of input costs a known amount of memory and work.
//!
//! Built on crossbeam's `SegQueue` plus an atomic length rather than `ArrayQueue`:
//! `ArrayQueue` allocates its full capacity up front, which for thousands of sectors
//! times `inbox_commands_max` would reserve memory that idle sectors never use. The
//! `SegQueue` allocates a 31-slot block per 31 queued commands and frees it when drained.

use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_queue::SegQueue;

use crate::components::Command;

/// The inbox already holds its maximum number of commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InboxFull;

pub(crate) struct Inbox {
    queue: SegQueue<Command>,
    /// Commands pushed and not yet popped; never above `capacity` once a push returns.
    len: AtomicUsize,
    capacity: usize,
}

impl Inbox {
    pub(crate) fn new(capacity: usize) -> Inbox {
        Inbox {
            queue: SegQueue::new(),
            len: AtomicUsize::new(0),
            capacity,
        }
    }

    /// Queues `command`, or refuses it when the inbox is full.
    pub(crate) fn push(&self, command: Command) -> Result<(), InboxFull> {
        // Reserve a slot first so concurrent pushers can never overshoot the capacity.
        if self.len.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.len.fetch_sub(1, Ordering::AcqRel);
            return Err(InboxFull);
        }
        self.queue.push(command);
        Ok(())
    }

    pub(crate) fn pop(&self) -> Option<Command> {
        let command = self.queue.pop()?;
        self.len.fetch_sub(1, Ordering::AcqRel);
        Some(command)
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(entity_id: u64) -> Command {
        Command::Move {
            entity_id,
            vx_mps: 0.0,
            vy_mps: 0.0,
        }
    }

    #[test]
    fn bounded_and_fifo() {
        let inbox = Inbox::new(3);
        for id in 1..=3 {
            assert_eq!(inbox.push(command(id)), Ok(()));
        }
        assert_eq!(inbox.push(command(4)), Err(InboxFull));
        assert_eq!(inbox.len(), 3);
        assert_eq!(inbox.pop(), Some(command(1)));
        assert_eq!(inbox.push(command(5)), Ok(()));
        assert_eq!(inbox.pop(), Some(command(2)));
        assert_eq!(inbox.pop(), Some(command(3)));
        assert_eq!(inbox.pop(), Some(command(5)));
        assert_eq!(inbox.pop(), None);
        assert_eq!(inbox.len(), 0);
    }

    #[test]
    fn concurrent_pushers_never_overshoot() {
        let inbox = Inbox::new(100);
        std::thread::scope(|scope| {
            for t in 0..4u64 {
                let inbox = &inbox;
                scope.spawn(move || {
                    for i in 0..1000 {
                        let _ = inbox.push(command(t * 1000 + i));
                    }
                });
            }
        });
        assert_eq!(inbox.len(), 100);
        let mut popped = 0;
        while inbox.pop().is_some() {
            popped += 1;
        }
        assert_eq!(popped, 100);
    }
}
