//! Graceful shutdown bookkeeping: how many tool calls are in flight, and whether the gateway
//! is draining (then `/readyz` fails so load balancers stop sending traffic).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Counts calls in flight.
#[derive(Debug, Default)]
pub struct Drain {
    in_flight: AtomicUsize,
    idle: Notify,
    draining: AtomicBool,
}

/// Marks one call in flight until dropped.
#[derive(Debug)]
pub struct CallGuard<'a>(&'a Drain);

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Drain {
    pub fn enter(&self) -> CallGuard<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        CallGuard(self)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Starts draining and waits until no call is in flight or `grace` has passed; true
    /// when everything finished.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.draining.store(true, Ordering::SeqCst);
        tokio::time::timeout(grace, async {
            loop {
                let idle = self.idle.notified();
                if self.in_flight() == 0 {
                    return;
                }
                idle.await;
            }
        })
        .await
        .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_calls_in_flight() {
        let drain = std::sync::Arc::new(Drain::default());
        let guard_owner = drain.clone();
        let call = tokio::spawn(async move {
            let _guard = guard_owner.enter();
            tokio::time::sleep(Duration::from_millis(100)).await;
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(drain.in_flight(), 1);
        assert!(drain.drain(Duration::from_secs(5)).await);
        assert!(drain.is_draining());
        call.await.unwrap();
    }

    #[tokio::test]
    async fn drain_gives_up_after_the_grace_period() {
        let drain = Drain::default();
        let _stuck = drain.enter();
        assert!(!drain.drain(Duration::from_millis(50)).await);
    }
}
