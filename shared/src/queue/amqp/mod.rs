//! RabbitMQ for the hosted shape. This module holds what gateways and workers agree on: the
//! settings, the topology (names and arguments of every exchange and queue), connecting,
//! confirmed publishing and message headers. `client` is the gateway's side.
//!
//! Topology for a namespace `ns` (default `toolsmith`):
//! - `ns.jobs`: durable quorum queue of run jobs, with a delivery limit and a dead-letter
//!   exchange, consumed by workers;
//! - `ns.dlx` → `ns.dead`: dead letters, consumed by gateways, which tell the caller and
//!   move the message to `ns.dead.parked` for operators (kept 7 days, newest 10,000);
//! - `ns.changes`: fanout of registry change events, one exclusive queue per gateway;
//! - one exclusive, auto-deleted reply queue per gateway connection.

mod client;

use std::collections::BTreeMap;

use clap::Args;
use lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use secrecy::SecretString;

use super::QueueError;

pub use client::AmqpClient;

/// How long parked dead letters are kept.
const PARKED_TTL_MS: i32 = 7 * 24 * 3600 * 1000;
const PARKED_MAX: i32 = 10_000;

/// Header naming the gateway replica that published a change event.
pub const ORIGIN_HEADER: &str = "x-toolsmith-origin";

/// What the gateway's broker client reports.
#[derive(Debug, Clone)]
pub struct AmqpMetrics {
    /// Dead-lettered jobs by reason (`delivery_limit`, `expired`, `rejected`).
    pub dead_letters: prometheus::IntCounterVec,
    /// Jobs waiting in the queue (sampled every few seconds).
    pub queue_messages: prometheus::IntGauge,
    /// Workers consuming from the queue (sampled every few seconds).
    pub queue_consumers: prometheus::IntGauge,
}

impl AmqpMetrics {
    pub fn register(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            dead_letters: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "toolsmith_dead_letters_total",
                    "Jobs dead-lettered, by reason: delivery_limit (the run kept killing its worker), expired (nobody waited any more), rejected (no worker could read it).",
                ),
                &["reason"],
            )?,
            queue_messages: prometheus::IntGauge::new(
                "toolsmith_queue_messages",
                "Run jobs waiting in the job queue, sampled by each gateway every 5 s.",
            )?,
            queue_consumers: prometheus::IntGauge::new(
                "toolsmith_queue_consumers",
                "Workers consuming from the job queue, sampled by each gateway every 5 s.",
            )?,
        };
        registry.register(Box::new(metrics.dead_letters.clone()))?;
        registry.register(Box::new(metrics.queue_messages.clone()))?;
        registry.register(Box::new(metrics.queue_consumers.clone()))?;
        Ok(metrics)
    }
}

/// Broker settings shared by both binaries.
#[derive(Debug, Clone, Args)]
pub struct AmqpArgs {
    /// Prefix of every exchange and queue name, so deployments can share a vhost.
    #[arg(
        long,
        env = "TOOLSMITH_AMQP_NAMESPACE",
        default_value = "toolsmith",
        global = true
    )]
    pub amqp_namespace: String,

    /// How often a job may be handed out again after its worker died (RabbitMQ's
    /// `x-delivery-limit`); past it the job is dead-lettered and its caller told.
    /// Every gateway and worker of a deployment must use the same value.
    #[arg(
        long,
        env = "TOOLSMITH_DELIVERY_LIMIT",
        default_value_t = 2,
        global = true
    )]
    pub delivery_limit: u32,
}

/// Parses a secret from a flag or environment value.
pub fn parse_secret(value: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(value.to_owned()))
}

/// Names of everything one deployment declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub jobs: String,
    pub dead_letter_exchange: String,
    pub dead: String,
    pub parked: String,
    pub changes: String,
    pub delivery_limit: u32,
}

impl Topology {
    pub fn new(args: &AmqpArgs) -> Self {
        let ns = &args.amqp_namespace;
        Self {
            jobs: format!("{ns}.jobs"),
            dead_letter_exchange: format!("{ns}.dlx"),
            dead: format!("{ns}.dead"),
            parked: format!("{ns}.dead.parked"),
            changes: format!("{ns}.changes"),
            delivery_limit: args.delivery_limit,
        }
    }

    /// Declares the job queue (idempotent); the answer carries its depth and consumers.
    pub async fn declare_jobs(&self, channel: &Channel) -> Result<lapin::Queue, lapin::Error> {
        let mut jobs = FieldTable::default();
        jobs.insert("x-queue-type".into(), string("quorum"));
        jobs.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(i32::try_from(self.delivery_limit).unwrap_or(i32::MAX)),
        );
        jobs.insert(
            "x-dead-letter-exchange".into(),
            string(&self.dead_letter_exchange),
        );
        channel
            .queue_declare(
                self.jobs.as_str().into(),
                QueueDeclareOptions::durable(),
                jobs,
            )
            .await
    }

    /// Declares every durable exchange and queue (idempotent).
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let durable = QueueDeclareOptions::durable();
        channel
            .exchange_declare(
                self.dead_letter_exchange.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.changes.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await?;

        self.declare_jobs(channel).await?;

        channel
            .queue_declare(self.dead.as_str().into(), durable, FieldTable::default())
            .await?;
        channel
            .queue_bind(
                self.dead.as_str().into(),
                self.dead_letter_exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        let mut parked = FieldTable::default();
        parked.insert("x-message-ttl".into(), AMQPValue::LongInt(PARKED_TTL_MS));
        parked.insert("x-max-length".into(), AMQPValue::LongInt(PARKED_MAX));
        channel
            .queue_declare(self.parked.as_str().into(), durable, parked)
            .await?;
        Ok(())
    }
}

/// Opens a connection named for the management UI.
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, properties).await
}

/// Publishes and waits for the broker's confirm.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), QueueError> {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .map_err(unavailable)?
        .await
        .map_err(unavailable)?;
    match confirm {
        Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
        Confirmation::Nack(_) => Err(QueueError::Unavailable(
            "the broker refused the message".into(),
        )),
    }
}

/// A lapin failure as the callers see it.
pub fn unavailable(error: lapin::Error) -> QueueError {
    QueueError::Unavailable(format!("broker: {error}"))
}

/// W3C trace context as AMQP headers.
pub fn trace_headers(trace: &BTreeMap<String, String>) -> FieldTable {
    let mut headers = FieldTable::default();
    for (key, value) in trace {
        headers.insert(key.as_str().into(), string(value));
    }
    headers
}

/// A header's value as text.
pub fn header_str(headers: Option<&FieldTable>, key: &str) -> Option<String> {
    match headers?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// A header's value as a number.
pub fn header_u64(headers: Option<&FieldTable>, key: &str) -> Option<u64> {
    match headers?.inner().get(key)? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        _ => None,
    }
}

/// Trace context from AMQP headers.
pub fn trace_from_headers(headers: Option<&FieldTable>) -> BTreeMap<String, String> {
    ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|key| header_str(headers, key).map(|value| (key.to_owned(), value)))
        .collect()
}

fn string(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

/// A short string property, truncated to AMQP's 255-byte limit.
pub fn short(value: &str) -> ShortString {
    let mut end = value.len().min(255);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_namespaced() {
        let topology = Topology::new(&AmqpArgs {
            amqp_namespace: "t1".into(),
            delivery_limit: 2,
        });
        assert_eq!(topology.jobs, "t1.jobs");
        assert_eq!(topology.dead, "t1.dead");
        assert_eq!(topology.parked, "t1.dead.parked");
        assert_eq!(topology.changes, "t1.changes");
    }

    #[test]
    fn headers_round_trip_trace_context() {
        let mut trace = BTreeMap::new();
        trace.insert("traceparent".to_owned(), "00-abc-def-01".to_owned());
        let headers = trace_headers(&trace);
        assert_eq!(trace_from_headers(Some(&headers)), trace);
        assert_eq!(header_u64(Some(&headers), "traceparent"), None);
    }
}
