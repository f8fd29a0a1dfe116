//! A one-shot channel whose receiver is a future: how wgpu's callbacks (a buffer mapped, the
//! queue's work done) become awaitable without an async runtime. In the browser the callback
//! fires from the event loop and wakes the awaiting task; natively it fires inside
//! `Device::poll`, which the caller runs before awaiting.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

struct Slot<T> {
    value: Option<T>,
    waker: Option<Waker>,
    /// The sender is gone: no value will come after `value`.
    closed: bool,
}

type Shared<T> = Arc<Mutex<Slot<T>>>;

fn lock<T>(shared: &Shared<T>) -> MutexGuard<'_, Slot<T>> {
    // A panic while holding the lock leaves the slot consistent (plain field writes).
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// The sending half: `send` once, from the callback.
pub struct Sender<T>(Shared<T>);

/// The receiving half: a future of `Some(value)`, or `None` if the sender was dropped
/// without sending (wgpu dropped the callback, e.g. the device was lost).
pub struct Receiver<T>(Shared<T>);

pub fn oneshot<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Mutex::new(Slot {
        value: None,
        waker: None,
        closed: false,
    }));
    (Sender(shared.clone()), Receiver(shared))
}

impl<T> Sender<T> {
    pub fn send(self, value: T) {
        lock(&self.0).value = Some(value);
        // Drop wakes the receiver.
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut slot = lock(&self.0);
            slot.closed = true;
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Receiver<T> {
    /// The value if it has arrived, without waiting.
    pub fn try_recv(&mut self) -> Option<T> {
        lock(&self.0).value.take()
    }
}

impl<T> Future for Receiver<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut slot = lock(&self.0);
        if let Some(v) = slot.value.take() {
            return Poll::Ready(Some(v));
        }
        if slot.closed {
            return Poll::Ready(None);
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::oneshot;

    #[test]
    fn a_sent_value_arrives_and_a_dropped_sender_gives_none() {
        let (tx, rx) = oneshot();
        tx.send(7);
        assert_eq!(pollster::block_on(rx), Some(7));
        let (tx, rx) = oneshot::<u32>();
        drop(tx);
        assert_eq!(pollster::block_on(rx), None);
    }

    #[test]
    fn a_value_sent_from_another_thread_wakes_the_receiver() {
        let (tx, rx) = oneshot();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            tx.send("mapped");
        });
        assert_eq!(pollster::block_on(rx), Some("mapped"));
        t.join().expect("sender thread");
    }
}
