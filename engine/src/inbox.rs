//! A sector's bounded command inbox with one FIFO per [`CommandClass`]. The engine pushes
//! (between ticks, from `&mut Engine`), the sector's own simulate step pops. It holds at
//! most `capacity` commands per class and refuses the rest, so a flood of input costs a
//! known amount of memory and work.
//!
//! Plain ring buffers rather than a lock-free queue: every push happens on the thread
//! that owns the `Engine` (`handle_client_message` takes `&mut self`), so there is no
//! concurrent producer to synchronise with. A `VecDeque` keeps its capacity after being
//! drained, so the steady-state tick neither allocates nor frees here; it grows lazily,
//! so an idle sector costs no inbox memory.

use std::collections::VecDeque;

use crate::components::{Command, CommandClass, COMMAND_CLASSES};

/// The inbox already holds its maximum number of commands of this class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InboxFull;

pub(crate) struct Inbox {
    queues: [VecDeque<Command>; COMMAND_CLASSES],
    /// Most commands held per class.
    capacity: usize,
}

impl Inbox {
    /// Heap bytes of its queues (capacities).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.queues
            .iter()
            .map(|q| q.capacity() * std::mem::size_of::<Command>())
            .sum()
    }

    pub(crate) fn new(capacity: usize) -> Inbox {
        Inbox {
            queues: Default::default(),
            capacity,
        }
    }

    /// Queues `command` in its class, or refuses it when that class is full.
    pub(crate) fn push(&mut self, command: Command) -> Result<(), InboxFull> {
        let queue = &mut self.queues[command.class() as usize];
        if queue.len() >= self.capacity {
            return Err(InboxFull);
        }
        queue.push_back(command);
        Ok(())
    }

    /// The oldest command of `class`.
    pub(crate) fn pop(&mut self, class: CommandClass) -> Option<Command> {
        self.queues[class as usize].pop_front()
    }

    /// Commands waiting, all classes.
    pub(crate) fn len(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    /// Commands of `class` waiting.
    #[cfg(test)]
    pub(crate) fn len_of(&self, class: CommandClass) -> usize {
        self.queues[class as usize].len()
    }

    pub(crate) fn clear(&mut self) {
        self.queues.iter_mut().for_each(VecDeque::clear);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(entity_id: u64) -> Command {
        Command::Move {
            entity_id,
            account: 1,
            vx_mps: 0.0,
            vy_mps: 0.0,
        }
    }

    #[test]
    fn bounded_per_class_and_fifo() {
        let mut inbox = Inbox::new(3);
        for id in 1..=3 {
            assert_eq!(inbox.push(command(id)), Ok(()));
        }
        assert_eq!(inbox.push(command(4)), Err(InboxFull));
        // Another class has its own room.
        let attack = Command::Attack {
            entity_id: 1,
            target: 2,
        };
        assert_eq!(inbox.push(attack), Ok(()));
        assert_eq!(inbox.len(), 4);
        assert_eq!(inbox.len_of(CommandClass::Medium), 3);
        assert_eq!(inbox.pop(CommandClass::Medium), Some(command(1)));
        assert_eq!(inbox.push(command(5)), Ok(()));
        assert_eq!(inbox.pop(CommandClass::High), Some(attack));
        assert_eq!(inbox.pop(CommandClass::High), None);
        assert_eq!(inbox.pop(CommandClass::Medium), Some(command(2)));
        assert_eq!(inbox.pop(CommandClass::Medium), Some(command(3)));
        assert_eq!(inbox.pop(CommandClass::Medium), Some(command(5)));
        assert_eq!(inbox.pop(CommandClass::Medium), None);
        assert_eq!(inbox.len(), 0);
    }
}
