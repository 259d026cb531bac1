//! Transfer slots with a waiting room. PXE firmware handles an error reply badly (most end
//! the boot attempt), so in a boot storm a request beyond the cap waits, first come first
//! served, for a slot instead of being told "busy". The wait is bounded twice: by length
//! (beyond it: "busy") and by time, kept well under the firmware's RRQ retransmission
//! timeout (EDK2 PXE: 4 s), so the client is still listening when its transfer starts. A
//! request whose wait runs out is dropped without an answer: to the firmware that looks
//! like a lost datagram, and it sends its RRQ again, which queues afresh. Repeats of a
//! request still waiting (same client address and port) are dropped, not queued twice.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Requests that may wait for a slot, by default (`--tftp-queue`): a 500-machine storm
/// fits twice over.
pub const DEFAULT_QUEUE: usize = 1024;
/// How long a request waits at most, by default (`--tftp-queue-wait-ms`).
pub const DEFAULT_QUEUE_WAIT: Duration = Duration::from_millis(2000);

/// What to do with a read request.
pub enum Admit {
    /// A slot was free: start now.
    Now(OwnedSemaphorePermit),
    /// No slot: wait with [`Slots::wait`].
    Wait,
    /// The same client port is already waiting: drop this repeat.
    Duplicate,
    /// No slot and the waiting room is full: answer "busy".
    Busy,
}

pub struct Slots {
    /// Tokio's semaphore hands freed permits to waiters in the order they asked, and a
    /// `try_acquire` never takes one ahead of them: the waiting room is a FIFO.
    sem: Arc<Semaphore>,
    waiting: Mutex<HashSet<SocketAddr>>,
    queue: usize,
    max_wait: Duration,
}

impl Slots {
    pub fn new(transfers: usize, queue: usize, max_wait: Duration) -> Arc<Slots> {
        Arc::new(Slots {
            sem: Arc::new(Semaphore::new(transfers.max(1))),
            waiting: Mutex::new(HashSet::new()),
            queue,
            max_wait,
        })
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashSet<SocketAddr>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides about a request from `peer`. After `Wait`, the caller must call
    /// [`Slots::wait`] for `peer` (it takes the peer out of the waiting room again).
    pub fn admit(&self, peer: SocketAddr) -> Admit {
        let mut waiting = self.waiting();
        if waiting.contains(&peer) {
            return Admit::Duplicate;
        }
        if let Ok(permit) = self.sem.clone().try_acquire_owned() {
            return Admit::Now(permit);
        }
        if waiting.len() >= self.queue {
            return Admit::Busy;
        }
        waiting.insert(peer);
        Admit::Wait
    }

    /// Waits for a slot for `peer`; `None` when the wait ran out.
    pub async fn wait(&self, peer: SocketAddr) -> Option<OwnedSemaphorePermit> {
        let got = tokio::time::timeout(self.max_wait, self.sem.clone().acquire_owned()).await;
        self.waiting().remove(&peer);
        got.ok().and_then(Result::ok)
    }

    /// Requests waiting now.
    pub fn waiting_now(&self) -> usize {
        self.waiting().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[tokio::test]
    async fn waiters_get_freed_slots_in_order_and_repeats_are_dropped() {
        let slots = Slots::new(1, 2, Duration::from_secs(3600));
        let Admit::Now(first) = slots.admit(peer(1)) else {
            panic!("a free slot")
        };
        assert!(matches!(slots.admit(peer(2)), Admit::Wait));
        assert!(matches!(slots.admit(peer(2)), Admit::Duplicate));
        assert!(matches!(slots.admit(peer(3)), Admit::Wait));
        assert!(matches!(slots.admit(peer(4)), Admit::Busy));
        assert_eq!(slots.waiting_now(), 2);
        let (s2, s3) = (slots.clone(), slots.clone());
        // One thread: each yield lets the task just spawned run up to its wait, so peer 2
        // is in the semaphore's queue before peer 3.
        let second = tokio::spawn(async move { s2.wait(peer(2)).await });
        tokio::task::yield_now().await;
        let third = tokio::spawn(async move { s3.wait(peer(3)).await });
        tokio::task::yield_now().await;
        drop(first);
        let p2 = second.await.unwrap().expect("peer 2 gets the freed slot");
        assert!(!third.is_finished());
        drop(p2);
        assert!(third.await.unwrap().is_some());
        assert_eq!(slots.waiting_now(), 0);
        // A new request from the port that just left the waiting room is accepted again.
        assert!(matches!(slots.admit(peer(2)), Admit::Now(_)));
    }

    #[tokio::test]
    async fn a_wait_runs_out_when_no_slot_frees() {
        let slots = Slots::new(1, 4, Duration::from_millis(20));
        let Admit::Now(_held) = slots.admit(peer(1)) else {
            panic!("a free slot")
        };
        assert!(matches!(slots.admit(peer(2)), Admit::Wait));
        assert!(slots.wait(peer(2)).await.is_none());
        assert_eq!(slots.waiting_now(), 0);
        // Its retransmitted request queues afresh.
        assert!(matches!(slots.admit(peer(2)), Admit::Wait));
    }
}
