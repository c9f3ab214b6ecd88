//! The gateway's side of RabbitMQ: publishes jobs with confirms, receives results on this
//! replica's exclusive reply queue (correlated by job id; a second result is ignored),
//! fans change events out to every replica, and turns dead letters into clear errors for
//! their callers. A supervisor reconnects after a broker restart; callers in flight when
//! the connection drops get an error at once instead of waiting out their deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{broadcast, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::{
    AmqpMetrics, ORIGIN_HEADER, Topology, connect, header_str, publish_confirmed, short,
    trace_headers, unavailable,
};
use crate::protocol::{ErrorKind, RunError, RunJob, RunResult, decode_result};
use crate::queue::memory::MemoryBus;
use crate::queue::{ChangeBus, ChangeEvent, JobQueue, QueueError};
use crate::time::until;

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the job queue's depth and consumers are sampled.
const QUEUE_SAMPLE: Duration = Duration::from_secs(5);

type Waiter = oneshot::Sender<Result<RunResult, QueueError>>;

/// The live link to the broker: the confirm-mode channel jobs go out on and the queue
/// results come back to.
#[derive(Clone)]
struct Link {
    channel: Channel,
    reply_to: ShortString,
}

struct Inner {
    topology: Topology,
    metrics: AmqpMetrics,
    link: watch::Sender<Option<Link>>,
    pending: Mutex<HashMap<String, Waiter>>,
    local: MemoryBus,
    origin: String,
}

/// A gateway's connection to RabbitMQ, as its job queue and change bus.
#[derive(Clone)]
pub struct AmqpClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AmqpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpClient")
            .field("topology", &self.inner.topology)
            .field("connected", &self.inner.link.borrow().is_some())
            .finish()
    }
}

impl AmqpClient {
    /// Starts the supervisor, which connects (and reconnects) in the background until
    /// `shutdown`. Use [`AmqpClient::wait_connected`] to wait for the first connection.
    pub fn start(
        url: SecretString,
        topology: Topology,
        metrics: AmqpMetrics,
        shutdown: CancellationToken,
    ) -> Self {
        let (link, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            topology,
            metrics,
            link,
            pending: Mutex::new(HashMap::new()),
            local: MemoryBus::new(),
            origin: uuid::Uuid::new_v4().to_string(),
        });
        tokio::spawn(supervise(inner.clone(), url, shutdown));
        Self { inner }
    }

    /// Waits until connected, up to `timeout`; true when connected.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut link = self.inner.link.subscribe();
        tokio::time::timeout(timeout, link.wait_for(Option::is_some))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn current_link(&self) -> Result<Link, QueueError> {
        self.inner.link.borrow().clone().ok_or_else(|| {
            QueueError::Unavailable("not connected to RabbitMQ; reconnecting".into())
        })
    }
}

/// Removes a waiter however the wait ends.
struct PendingGuard<'a> {
    inner: &'a Inner,
    job_id: String,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.inner.lock_pending().remove(&self.job_id);
    }
}

impl Inner {
    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiter>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail_pending(&self, message: &str) {
        let waiters: Vec<Waiter> = self.lock_pending().drain().map(|(_, w)| w).collect();
        if !waiters.is_empty() {
            tracing::warn!(
                callers = waiters.len(),
                "failing callers waiting on a lost connection"
            );
        }
        for waiter in waiters {
            let _ = waiter.send(Err(QueueError::Unavailable(message.to_owned())));
        }
    }
}

#[async_trait]
impl JobQueue for AmqpClient {
    async fn run(&self, job: RunJob) -> Result<RunResult, QueueError> {
        let wait = until(job.deadline_ms);
        if wait.is_zero() {
            return Err(QueueError::DeadlineExceeded);
        }
        let link = self.current_link()?;
        let body = serde_json::to_vec(&job)
            .map_err(|e| QueueError::Unavailable(format!("cannot encode the job: {e}")))?;
        let (tx, rx) = oneshot::channel();
        self.inner.lock_pending().insert(job.job_id.clone(), tx);
        let _guard = PendingGuard {
            inner: &self.inner,
            job_id: job.job_id.clone(),
        };
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_correlation_id(short(&job.job_id))
            .with_reply_to(link.reply_to.clone())
            // The broker drops the job once nobody waits for it any more.
            .with_expiration(wait.as_millis().to_string().into())
            .with_headers(trace_headers(&job.trace));
        publish_confirmed(
            &link.channel,
            "",
            &self.inner.topology.jobs,
            &body,
            properties,
        )
        .await?;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(QueueError::Closed),
            Err(_) => Err(QueueError::DeadlineExceeded),
        }
    }

    async fn ready(&self) -> Result<(), QueueError> {
        let link = self.current_link()?;
        if link.channel.status().connected() {
            Ok(())
        } else {
            Err(QueueError::Unavailable(
                "the broker channel is closed".into(),
            ))
        }
    }
}

#[async_trait]
impl ChangeBus for AmqpClient {
    async fn publish(&self, event: &ChangeEvent) -> Result<(), QueueError> {
        // This replica hears its own events at once, broker or not.
        self.inner.local.deliver(event.clone());
        let link = self.current_link()?;
        let body = serde_json::to_vec(event)
            .map_err(|e| QueueError::Unavailable(format!("cannot encode the event: {e}")))?;
        let mut headers = FieldTable::default();
        headers.insert(
            ORIGIN_HEADER.into(),
            AMQPValue::LongString(self.inner.origin.as_str().into()),
        );
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(headers);
        publish_confirmed(
            &link.channel,
            &self.inner.topology.changes,
            "",
            &body,
            properties,
        )
        .await
    }

    fn subscribe(&self) -> broadcast::Receiver<ChangeEvent> {
        self.inner.local.subscribe()
    }
}

async fn supervise(inner: Arc<Inner>, url: SecretString, shutdown: CancellationToken) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = Instant::now();
        let ended = session(&inner, url.expose_secret(), &shutdown).await;
        inner.link.send_replace(None);
        inner.fail_pending(
            "the connection to RabbitMQ was lost while waiting for the result; \
             the run may have finished, but its result cannot be delivered",
        );
        if shutdown.is_cancelled() {
            return;
        }
        match ended {
            Ok(()) => tracing::warn!("the RabbitMQ connection closed; reconnecting"),
            Err(error) => tracing::warn!(error = %error, "RabbitMQ is unavailable; reconnecting"),
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = BACKOFF_MIN;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {},
            () = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection's life: set up, serve until the connection drops or shutdown.
async fn session(
    inner: &Arc<Inner>,
    url: &str,
    shutdown: &CancellationToken,
) -> Result<(), lapin::Error> {
    let connection = connect(url, "toolsmith-gateway").await?;
    let publish = connection.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    inner.topology.declare(&publish).await?;

    let consume = connection.create_channel().await?;
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let reply_queue = consume
        .queue_declare("".into(), exclusive, FieldTable::default())
        .await?;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    let mut replies = consume
        .basic_consume(
            reply_queue.name().clone(),
            "".into(),
            no_ack,
            FieldTable::default(),
        )
        .await?;
    let events_queue = consume
        .queue_declare("".into(), exclusive, FieldTable::default())
        .await?;
    consume
        .queue_bind(
            events_queue.name().clone(),
            inner.topology.changes.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut events = consume
        .basic_consume(
            events_queue.name().clone(),
            "".into(),
            no_ack,
            FieldTable::default(),
        )
        .await?;

    let dead_channel = connection.create_channel().await?;
    dead_channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    dead_channel
        .basic_qos(16, BasicQosOptions::default())
        .await?;
    let mut dead = dead_channel
        .basic_consume(
            inner.topology.dead.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;

    inner.link.send_replace(Some(Link {
        channel: publish,
        reply_to: reply_queue.name().clone(),
    }));
    tracing::info!(reply_queue = %reply_queue.name(), "connected to RabbitMQ");

    let mut sample = tokio::time::interval(QUEUE_SAMPLE);
    loop {
        tokio::select! {
            _ = sample.tick() => {
                let queue = inner.topology.declare_jobs(&consume).await?;
                inner.metrics.queue_messages.set(i64::from(queue.message_count()));
                inner.metrics.queue_consumers.set(i64::from(queue.consumer_count()));
            }
            reply = replies.next() => match reply {
                Some(Ok(delivery)) => handle_reply(inner, &delivery),
                Some(Err(error)) => return Err(error),
                None => return Ok(()),
            },
            event = events.next() => match event {
                Some(Ok(delivery)) => handle_event(inner, &delivery),
                Some(Err(error)) => return Err(error),
                None => return Ok(()),
            },
            letter = dead.next() => match letter {
                Some(Ok(delivery)) => handle_dead_letter(inner, &dead_channel, delivery).await,
                Some(Err(error)) => return Err(error),
                None => return Ok(()),
            },
            () = shutdown.cancelled() => {
                let _ = connection.close(200, "gateway shutting down".into()).await;
                return Ok(());
            }
        }
    }
}

fn handle_reply(inner: &Inner, delivery: &Delivery) {
    let Some(job_id) = delivery.properties.correlation_id().as_ref() else {
        tracing::debug!("ignoring a result without a correlation id");
        return;
    };
    let Some(waiter) = inner.lock_pending().remove(job_id.as_str()) else {
        // Late, or a second result after a redelivery: the caller already has one.
        tracing::debug!(job_id = %job_id, "ignoring a result nobody waits for");
        return;
    };
    let outcome = decode_result(&delivery.data)
        .map_err(|e| QueueError::Unavailable(format!("the worker's result is unreadable: {e}")));
    let _ = waiter.send(outcome);
}

fn handle_event(inner: &Inner, delivery: &Delivery) {
    let headers = delivery.properties.headers().as_ref();
    if header_str(headers, ORIGIN_HEADER).as_deref() == Some(inner.origin.as_str()) {
        return;
    }
    match serde_json::from_slice::<ChangeEvent>(&delivery.data) {
        Ok(event) => inner.local.deliver(event),
        Err(error) => tracing::warn!(error = %error, "ignoring an unreadable change event"),
    }
}

/// Tells the caller of a dead-lettered job why it failed, parks the message for operators,
/// then acknowledges it.
async fn handle_dead_letter(inner: &Inner, channel: &Channel, delivery: Delivery) {
    let headers = delivery.properties.headers().as_ref();
    let reason = header_str(headers, "x-first-death-reason").unwrap_or_else(|| "unknown".into());
    let job_id = delivery
        .properties
        .correlation_id()
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .unwrap_or_default();
    tracing::warn!(job_id = %job_id, reason = %reason, "job dead-lettered");
    inner
        .metrics
        .dead_letters
        .with_label_values(&[reason.as_str()])
        .inc();
    let error = match reason.as_str() {
        // The caller's deadline passed while the job waited: nobody is listening.
        "expired" => None,
        "delivery_limit" => Some(RunError::new(
            ErrorKind::RuntimeError,
            format!(
                "the run crashed its worker on each of {} attempts and was stopped; check the \
                 tool for code that brings down its process (for example by exhausting memory)",
                inner.topology.delivery_limit + 1
            ),
        )),
        other => Some(RunError::new(
            ErrorKind::Unavailable,
            format!("no worker could take the job ({other}); the workers may run another release"),
        )),
    };
    if let (Some(error), Some(reply_to)) = (error, delivery.properties.reply_to().as_ref()) {
        let result = RunResult::error(&job_id, error);
        if let Ok(body) = serde_json::to_vec(&result) {
            let properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_correlation_id(short(&job_id));
            if let Err(error) =
                publish_confirmed(channel, "", reply_to.as_str(), &body, properties).await
            {
                tracing::warn!(error = %error, job_id = %job_id, "could not tell the caller about a dead letter");
            }
        }
    }
    // A fresh set of properties: the job's own `expiration` would drop it from the parking lot.
    let source = &delivery.properties;
    let mut parked = BasicProperties::default().with_delivery_mode(2);
    if let Some(value) = source.content_type() {
        parked = parked.with_content_type(value.clone());
    }
    if let Some(value) = source.correlation_id() {
        parked = parked.with_correlation_id(value.clone());
    }
    if let Some(value) = source.reply_to() {
        parked = parked.with_reply_to(value.clone());
    }
    if let Some(value) = source.headers() {
        parked = parked.with_headers(value.clone());
    }
    if let Err(error) =
        publish_confirmed(channel, "", &inner.topology.parked, &delivery.data, parked).await
    {
        tracing::warn!(error = %error, job_id = %job_id, "could not park a dead letter");
    }
    if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
        tracing::warn!(error = %unavailable(error), "could not acknowledge a dead letter");
    }
}
