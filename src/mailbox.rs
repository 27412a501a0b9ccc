//! A small bounded queue with one consumer task: one per supervised process
//! and per log stream, so it must cost nothing while empty (a tokio mpsc
//! channel allocates a block of 32 slots up front; thousands of them add up).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

/// Why an item was not queued; it is handed back.
#[derive(Debug)]
pub enum SendError<T> {
    /// `capacity` items are waiting already.
    Full(T),
    /// The consumer has gone.
    Closed(T),
}

/// A bounded multi-producer, single-consumer queue.
#[derive(Debug)]
pub struct Mailbox<T> {
    queue: Mutex<VecDeque<T>>,
    ready: Notify,
    closed: AtomicBool,
    capacity: usize,
}

impl<T> Mailbox<T> {
    /// An empty mailbox holding at most `capacity` items.
    pub fn new(capacity: usize) -> Mailbox<T> {
        Mailbox {
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<T>> {
        // A poisoned queue is still a queue.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item` for the consumer.
    pub fn send(&self, item: T) -> Result<(), SendError<T>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SendError::Closed(item));
        }
        let mut queue = self.lock();
        if queue.len() >= self.capacity {
            return Err(SendError::Full(item));
        }
        queue.push_back(item);
        drop(queue);
        // Stores a permit if the consumer is not waiting yet: no wake-up is lost.
        self.ready.notify_one();
        Ok(())
    }

    /// The next item; `None` once closed and empty.
    pub async fn recv(&self) -> Option<T> {
        loop {
            if let Some(item) = self.pop() {
                return Some(item);
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            self.ready.notified().await;
        }
    }

    fn pop(&self) -> Option<T> {
        let mut queue = self.lock();
        let item = queue.pop_front();
        if item.is_some() && queue.is_empty() {
            // Idle mailboxes hold no buffer: items are rare, and a thousand
            // buffers of a few items each add up.
            *queue = VecDeque::new();
        }
        item
    }

    /// An item is queued, or the mailbox was closed.
    pub fn pending(&self) -> bool {
        self.closed.load(Ordering::Acquire) || !self.lock().is_empty()
    }

    /// Refuses further items and wakes the consumer; queued items stay.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }

    /// Drops every queued item (their senders learn it through the items,
    /// e.g. a reply channel that closes).
    pub fn clear(&self) {
        self.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_fifo_that_closes() {
        let m = Mailbox::new(2);
        assert!(m.send(1).is_ok());
        assert!(m.send(2).is_ok());
        assert!(matches!(m.send(3), Err(SendError::Full(3))));
        assert!(m.pending());
        assert_eq!(m.recv().await, Some(1));
        m.close();
        assert!(matches!(m.send(4), Err(SendError::Closed(4))));
        assert_eq!(m.recv().await, Some(2), "queued items are still delivered");
        assert_eq!(m.recv().await, None);
    }
}
