//! The in-process queue of embedded mode: a bounded channel from the gateway to the worker
//! pool in the same process, and a broadcast channel for change events.

use async_trait::async_trait;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{ChangeBus, ChangeEvent, Delivery, JobQueue, JobSource, QueueError, Settle};
use crate::protocol::{RunJob, RunResult};
use crate::time::until;

/// Creates the two ends of an in-process queue holding at most `capacity` waiting jobs.
pub fn channel(capacity: usize) -> (MemoryQueue, MemorySource) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (MemoryQueue { tx }, MemorySource { rx })
}

/// The gateway's end of the in-process queue.
#[derive(Debug, Clone)]
pub struct MemoryQueue {
    tx: mpsc::Sender<Delivery>,
}

/// The worker pool's end of the in-process queue.
#[derive(Debug)]
pub struct MemorySource {
    rx: mpsc::Receiver<Delivery>,
}

struct Reply(oneshot::Sender<RunResult>);

#[async_trait]
impl Settle for Reply {
    async fn complete(self: Box<Self>, result: &RunResult) -> Result<(), QueueError> {
        // The caller may have given up; then nobody is left to tell.
        let _ = self.0.send(result.clone());
        Ok(())
    }

    async fn reject(self: Box<Self>, _requeue: bool) -> Result<(), QueueError> {
        // Dropping the sender tells the waiting caller the job is gone.
        Ok(())
    }
}

#[async_trait]
impl JobQueue for MemoryQueue {
    async fn run(&self, job: RunJob) -> Result<RunResult, QueueError> {
        let wait = until(job.deadline_ms);
        let (reply, result) = oneshot::channel();
        let delivery = Delivery {
            job,
            attempt: 0,
            settle: Box::new(Reply(reply)),
        };
        self.tx
            .send_timeout(delivery, wait)
            .await
            .map_err(|error| match error {
                mpsc::error::SendTimeoutError::Timeout(_) => QueueError::DeadlineExceeded,
                mpsc::error::SendTimeoutError::Closed(_) => QueueError::Closed,
            })?;
        match tokio::time::timeout(wait, result).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err(QueueError::Unavailable(
                "the worker gave the job up without a result".into(),
            )),
            Err(_) => Err(QueueError::DeadlineExceeded),
        }
    }

    async fn ready(&self) -> Result<(), QueueError> {
        if self.tx.is_closed() {
            Err(QueueError::Closed)
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl JobSource for MemorySource {
    async fn next(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }
}

/// Change events within one process.
#[derive(Debug, Clone)]
pub struct MemoryBus {
    tx: broadcast::Sender<ChangeEvent>,
}

impl MemoryBus {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(1024);
        Self { tx }
    }

    /// Hands an event to every local subscriber (used by buses that receive from elsewhere).
    pub fn deliver(&self, event: ChangeEvent) {
        // No subscribers is fine: nobody is listening yet.
        let _ = self.tx.send(event);
    }
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl ChangeBus for MemoryBus {
    async fn publish(&self, event: &ChangeEvent) -> Result<(), QueueError> {
        self.deliver(event.clone());
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<ChangeEvent> {
        self.tx.subscribe()
    }
}
