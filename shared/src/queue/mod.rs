//! The job queue between gateways and workers, and the feed of registry change events.
//! `memory` serves embedded mode inside one process; `amqp` is RabbitMQ for the hosted shape.
//! Both sides see the same traits, so the run path is the same code in either mode.

pub mod amqp;
pub mod memory;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::model::{TenantId, ToolName};
use crate::protocol::{RunJob, RunResult};

/// Queue failures, as the gateway or worker sees them.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("no worker answered before the deadline")]
    DeadlineExceeded,
    #[error("the job queue is unavailable: {0}")]
    Unavailable(String),
    #[error(
        "the job was dead-lettered after {0} delivery attempts; its run kept killing the worker"
    )]
    DeadLettered(u64),
    #[error("the job queue is shutting down")]
    Closed,
}

/// The gateway's side: put a job on the queue and wait for its result.
#[async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Publishes `job` and waits for its result until the job's deadline.
    async fn run(&self, job: RunJob) -> Result<RunResult, QueueError>;

    /// Succeeds while jobs can be published.
    async fn ready(&self) -> Result<(), QueueError>;
}

/// The worker's side: a stream of jobs to run.
#[async_trait]
pub trait JobSource: Send + 'static {
    /// The next job, or `None` once the source is closed.
    async fn next(&mut self) -> Option<Delivery>;
}

/// How a delivery is settled once its run is over.
#[async_trait]
pub trait Settle: Send + 'static {
    /// Sends the result home, then acknowledges the job.
    async fn complete(self: Box<Self>, result: &RunResult) -> Result<(), QueueError>;

    /// Gives the job back for another worker (`requeue`) or drops it to the dead letters.
    async fn reject(self: Box<Self>, requeue: bool) -> Result<(), QueueError>;
}

/// One job handed to a worker.
pub struct Delivery {
    pub job: RunJob,
    /// How many times the job was handed out before this one.
    pub attempt: u64,
    pub settle: Box<dyn Settle>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("job_id", &self.job.job_id)
            .field("attempt", &self.attempt)
            .finish()
    }
}

/// What changed in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Created,
    Updated,
    Deleted,
}

/// A registry write, announced to every gateway replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEvent {
    pub tenant: TenantId,
    pub tool: ToolName,
    pub version: i64,
    pub kind: ChangeKind,
}

/// Announces registry writes to every replica, this one included.
#[async_trait]
pub trait ChangeBus: Send + Sync + 'static {
    async fn publish(&self, event: &ChangeEvent) -> Result<(), QueueError>;

    /// Events from every replica. A receiver that lags must assume anything changed.
    fn subscribe(&self) -> broadcast::Receiver<ChangeEvent>;
}
