//! A process's published status: one writer (its actor), any number of
//! readers and waiters. The subset of `tokio::sync::watch` that minder uses,
//! with the same meaning, for less memory: tokio's channel carries eight
//! `Notify` slots to spread wake-ups over, about 650 bytes a channel with a
//! status in it; this one carries one, and a thousand processes have a
//! thousand of them.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use tokio::sync::Notify;

/// The channel's sender is gone (the actor has ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// Bit 0 of the state: the sender is gone. The version is counted above it.
const CLOSED: u64 = 1;
const STEP: u64 = 2;

struct Shared<T> {
    value: RwLock<T>,
    /// `version * STEP | CLOSED`.
    state: AtomicU64,
    changed: Notify,
}

impl<T> Shared<T> {
    fn read(&self) -> Ref<'_, T> {
        // A poisoned lock only means a panic elsewhere while writing; the value is whole.
        Ref(self.value.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The writing end; dropping it closes the channel.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// A reading end; remembers the version it has seen.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    seen: u64,
}

/// A borrowed value; holds a read lock, so keep it short.
pub struct Ref<'a, T>(RwLockReadGuard<'a, T>);

impl<T> Deref for Ref<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// A channel holding `init`.
pub fn channel<T>(init: T) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        value: RwLock::new(init),
        state: AtomicU64::new(0),
        changed: Notify::new(),
    });
    let receiver = Receiver {
        shared: Arc::clone(&shared),
        seen: 0,
    };
    (Sender { shared }, receiver)
}

impl<T> Sender<T> {
    /// Publishes `value`, returning the previous one, and wakes every waiter.
    pub fn send_replace(&self, value: T) -> T {
        let previous = {
            let mut current = self.shared.value.write().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *current, value)
        };
        self.shared.state.fetch_add(STEP, Ordering::AcqRel);
        self.shared.changed.notify_waiters();
        previous
    }

    /// The current value.
    #[cfg(test)]
    pub fn borrow(&self) -> Ref<'_, T> {
        self.shared.read()
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.shared.state.fetch_or(CLOSED, Ordering::AcqRel);
        self.shared.changed.notify_waiters();
    }
}

impl<T> Receiver<T> {
    /// The current value, without marking it seen.
    pub fn borrow(&self) -> Ref<'_, T> {
        self.shared.read()
    }

    /// The current value, marking it seen.
    pub fn borrow_and_update(&mut self) -> Ref<'_, T> {
        // The version first: a value sent meanwhile is seen now and counts
        // as unseen for the next `changed`, never the other way round.
        self.seen = self.shared.state.load(Ordering::Acquire) / STEP;
        self.shared.read()
    }

    /// Whether a value this receiver has not seen was sent; `Err` once the
    /// sender is gone.
    pub fn has_changed(&self) -> Result<bool, Closed> {
        let state = self.shared.state.load(Ordering::Acquire);
        if state & CLOSED != 0 {
            return Err(Closed);
        }
        Ok(state / STEP != self.seen)
    }

    /// Waits for a value this receiver has not seen (returning at once if
    /// there is one) and marks it seen; `Err` once the sender is gone and
    /// every value has been seen.
    pub async fn changed(&mut self) -> Result<(), Closed> {
        loop {
            // Registered before the check: a send in between still wakes it.
            let notified = self.shared.changed.notified();
            let state = self.shared.state.load(Ordering::Acquire);
            if state / STEP != self.seen {
                self.seen = state / STEP;
                return Ok(());
            }
            if state & CLOSED != 0 {
                return Err(Closed);
            }
            notified.await;
        }
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        Receiver {
            shared: Arc::clone(&self.shared),
            seen: self.seen,
        }
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn receivers_see_every_change_and_then_the_close() {
        let (tx, mut rx) = channel(0);
        let mut other = rx.clone();
        assert_eq!(rx.has_changed(), Ok(false));
        assert_eq!(tx.send_replace(1), 0);
        assert_eq!(rx.has_changed(), Ok(true));
        assert_eq!(
            rx.changed().await,
            Ok(()),
            "an unseen value returns at once"
        );
        assert_eq!(*rx.borrow(), 1);
        assert_eq!(rx.has_changed(), Ok(false));

        let waiter = tokio::spawn(async move {
            let mut seen = Vec::new();
            while other.changed().await.is_ok() {
                seen.push(*other.borrow_and_update());
            }
            seen
        });
        tokio::task::yield_now().await;
        tx.send_replace(2);
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.send_replace(3);
        assert_eq!(*tx.borrow(), 3);
        drop(tx);
        assert_eq!(rx.has_changed(), Err(Closed));
        assert_eq!(
            rx.changed().await,
            Ok(()),
            "the last value before the close"
        );
        assert_eq!(rx.changed().await, Err(Closed));
        let seen = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter ends once the sender is gone")
            .expect("the waiter did not panic");
        assert_eq!(seen.last(), Some(&3));
    }
}
