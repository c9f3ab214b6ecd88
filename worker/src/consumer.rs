//! The worker's side of RabbitMQ: consume run jobs with prefetch equal to the concurrency,
//! publish each result to its gateway's reply queue with a confirm, and only then ack.
//! A worker that dies mid-run leaves the job unacked and RabbitMQ hands it to another
//! worker. After a broker restart the source reconnects by itself.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::Acker;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use shared::protocol::{RunResult, decode_job};
use shared::queue::amqp::{
    Topology, connect, header_u64, publish_confirmed, short, trace_from_headers, unavailable,
};
use shared::queue::{Delivery, JobSource, QueueError, Settle};

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

struct Consuming {
    // Held so the connection lives as long as this consumer; settle handles keep their
    // channel (and through it the connection) until their job is acknowledged.
    _connection: Connection,
    channel: Channel,
    consumer: Consumer,
}

/// Run jobs from RabbitMQ.
pub struct AmqpSource {
    url: SecretString,
    topology: Topology,
    prefetch: u16,
    shutdown: CancellationToken,
    current: Option<Consuming>,
    ready: watch::Sender<bool>,
    backoff: Duration,
}

impl std::fmt::Debug for AmqpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSource")
            .field("queue", &self.topology.jobs)
            .field("prefetch", &self.prefetch)
            .finish()
    }
}

impl AmqpSource {
    /// A source that connects on first use. The receiver says whether it is consuming.
    pub fn new(
        url: SecretString,
        topology: Topology,
        prefetch: usize,
        shutdown: CancellationToken,
    ) -> (Self, watch::Receiver<bool>) {
        let (ready, watching) = watch::channel(false);
        let source = Self {
            url,
            topology,
            prefetch: u16::try_from(prefetch).unwrap_or(u16::MAX).max(1),
            shutdown,
            current: None,
            ready,
            backoff: BACKOFF_MIN,
        };
        (source, watching)
    }

    async fn open(&self) -> Result<Consuming, lapin::Error> {
        let connection = connect(self.url.expose_secret(), "toolsmith-worker").await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        self.topology.declare(&channel).await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                self.topology.jobs.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Consuming {
            _connection: connection,
            channel,
            consumer,
        })
    }

    /// Turns a broker delivery into a job, or sends an unreadable one to the dead letters.
    async fn accept(channel: &Channel, delivery: lapin::message::Delivery) -> Option<Delivery> {
        let properties = &delivery.properties;
        let headers = properties.headers().as_ref();
        match decode_job(&delivery.data) {
            Ok(mut job) => {
                if job.trace.is_empty() {
                    job.trace = trace_from_headers(headers);
                }
                Some(Delivery {
                    attempt: header_u64(headers, "x-delivery-count").unwrap_or(0),
                    settle: Box::new(AmqpSettle {
                        channel: channel.clone(),
                        acker: delivery.acker,
                        reply_to: properties.reply_to().clone(),
                        job_id: job.job_id.clone(),
                    }),
                    job,
                })
            }
            Err(error) => {
                tracing::error!(error = %error, "rejecting a job this worker cannot read");
                let rejected = delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await;
                if let Err(error) = rejected {
                    tracing::warn!(error = %error, "could not reject an unreadable job");
                }
                None
            }
        }
    }
}

#[async_trait]
impl JobSource for AmqpSource {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            if self.shutdown.is_cancelled() {
                // Dropping the consumer cancels it: no more deliveries. Jobs in flight keep
                // their channel until they are acknowledged.
                self.current = None;
                self.ready.send_replace(false);
                return None;
            }
            if self.current.is_none() {
                let opened = tokio::select! {
                    opened = self.open() => opened,
                    () = self.shutdown.cancelled() => continue,
                };
                match opened {
                    Ok(consuming) => {
                        tracing::info!(queue = %self.topology.jobs, prefetch = self.prefetch, "consuming jobs");
                        self.current = Some(consuming);
                        self.ready.send_replace(true);
                        self.backoff = BACKOFF_MIN;
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, retry_in = ?self.backoff, "cannot reach RabbitMQ");
                        tokio::select! {
                            () = tokio::time::sleep(self.backoff) => {},
                            () = self.shutdown.cancelled() => {},
                        }
                        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            }
            let Some(consuming) = self.current.as_mut() else {
                continue;
            };
            let next = tokio::select! {
                next = consuming.consumer.next() => next,
                () = self.shutdown.cancelled() => continue,
            };
            match next {
                Some(Ok(delivery)) => {
                    if let Some(delivery) = Self::accept(&consuming.channel, delivery).await {
                        return Some(delivery);
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(error = %error, "lost the RabbitMQ connection; reconnecting");
                    self.current = None;
                    self.ready.send_replace(false);
                }
                None => {
                    tracing::warn!("the job consumer was closed; reconnecting");
                    self.current = None;
                    self.ready.send_replace(false);
                }
            }
        }
    }
}

/// Settles one delivery on the channel it came from.
struct AmqpSettle {
    channel: Channel,
    acker: Acker,
    reply_to: Option<ShortString>,
    job_id: String,
}

#[async_trait]
impl Settle for AmqpSettle {
    async fn complete(self: Box<Self>, result: &RunResult) -> Result<(), QueueError> {
        if let Some(reply_to) = &self.reply_to {
            let body = serde_json::to_vec(result)
                .map_err(|e| QueueError::Unavailable(format!("cannot encode the result: {e}")))?;
            let properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_correlation_id(short(&self.job_id));
            if let Err(error) =
                publish_confirmed(&self.channel, "", reply_to.as_str(), &body, properties).await
            {
                // Not acknowledged: the job goes back to the queue and runs again.
                let _ = self
                    .acker
                    .reject(BasicRejectOptions { requeue: true })
                    .await;
                return Err(error);
            }
        }
        self.acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn reject(self: Box<Self>, requeue: bool) -> Result<(), QueueError> {
        self.acker
            .reject(BasicRejectOptions { requeue })
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
