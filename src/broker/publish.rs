//! Publishing with confirms: a batch to the work queue, a retry to a delay queue, a dead letter
//! (decoded or raw) to the dead-letter queue; each waits for its own confirm.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Confirmation};

use super::headers::{ERROR_HEADER, KINDS_HEADER, attempt_headers};
use super::{Broker, BrokerError, EXCHANGE, within};
use crate::batch::Batch;

/// How much of a body over `broker.max_message_bytes` its dead letter keeps: enough to see
/// what it was, not another copy of what was too large.
pub const KEPT_OF_OVERSIZED: usize = 64 * 1024;

/// Where a message goes.
#[derive(Debug, Clone, Copy)]
pub enum Route<'a> {
    /// The work queue, through the `sunset` exchange.
    Work,
    /// A queue by name, through the default exchange (retry and dead-letter queues).
    Queue(&'a str),
}

impl Broker {
    /// Why `body` is dead-lettered unparsed (its size and the limit), or `None` when it is
    /// within `broker.max_message_bytes` (or that is 0).
    pub fn oversized(&self, body: &[u8]) -> Option<String> {
        let size = body.len() as u64;
        (self.max_message_bytes > 0 && size > self.max_message_bytes).then(|| {
            format!(
                "message of {size} bytes is over broker.max_message_bytes ({}); not parsed, \
                 its first {} bytes kept",
                self.max_message_bytes,
                size.min(KEPT_OF_OVERSIZED as u64)
            )
        })
    }

    /// Publishes a persistent JSON message and waits for its own confirm; a nack or a return
    /// (unroutable) is an error.
    pub async fn publish(
        &self,
        route: Route<'_>,
        body: &[u8],
        headers: FieldTable,
    ) -> Result<(), BrokerError> {
        let (exchange, routing_key) = match route {
            Route::Work => (EXCHANGE, self.names.work.as_str()),
            Route::Queue(queue) => ("", queue),
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_timestamp(now)
            .with_message_id(message_id().into())
            .with_headers(headers);
        let confirm = within("basic.publish", async {
            self.publisher
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    properties,
                )
                .await?
                .await
        })
        .await?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(BrokerError::Returned(routing_key.to_string())),
            Confirmation::Nack(_) | Confirmation::NotRequested => {
                Err(BrokerError::Nacked(routing_key.to_string()))
            }
        }
    }

    /// Publishes a batch to the work queue (attempt 1).
    pub async fn enqueue(&self, batch: &Batch) -> Result<(), BrokerError> {
        self.publish(Route::Work, &batch.encode(), attempt_headers(1))
            .await
    }

    /// Publishes a retry to delay queue `queue` (0-based) with its attempt number and, when the
    /// peer asked for a longer wait than the queue's delay, the time before which it is not sent.
    pub async fn retry(
        &self,
        batch: &Batch,
        queue: usize,
        attempt: u32,
        not_before: Option<SystemTime>,
    ) -> Result<(), BrokerError> {
        self.park(&batch.encode(), queue, attempt, not_before).await
    }

    /// Publishes a dead letter: the batch (failed recipients and `failures`) with its reason,
    /// and `kinds[i]`, why `failures[i]` failed, in [`KINDS_HEADER`].
    pub async fn dead_letter(
        &self,
        batch: &Batch,
        attempt: u32,
        reason: &str,
        kinds: &[&str],
    ) -> Result<(), BrokerError> {
        let mut headers = attempt_headers(attempt);
        headers.insert(
            ERROR_HEADER.into(),
            AMQPValue::LongString(LongString::from(reason)),
        );
        if !kinds.is_empty() {
            let kinds = kinds
                .iter()
                .map(|kind| AMQPValue::LongString(LongString::from(*kind)))
                .collect::<Vec<_>>();
            headers.insert(KINDS_HEADER.into(), AMQPValue::FieldArray(kinds.into()));
        }
        self.publish(Route::Queue(&self.names.dlq), &batch.encode(), headers)
            .await
    }

    /// Publishes an undecodable body to the dead-letter queue as it came (its first
    /// [`KEPT_OF_OVERSIZED`] bytes when it is over `broker.max_message_bytes`), with the reason.
    pub async fn dead_letter_raw(&self, body: &[u8], reason: &str) -> Result<(), BrokerError> {
        let body = if self.max_message_bytes > 0 && body.len() as u64 > self.max_message_bytes {
            &body[..body.len().min(KEPT_OF_OVERSIZED)]
        } else {
            body
        };
        let mut headers = FieldTable::default();
        headers.insert(
            ERROR_HEADER.into(),
            AMQPValue::LongString(LongString::from(reason)),
        );
        self.publish(Route::Queue(&self.names.dlq), body, headers)
            .await
    }
}

/// A new id for every message published: a redelivery keeps it, a copy published again (a
/// retry, a batch held back) gets its own, so a worker can tell "this very message again" from
/// "the same batch, published anew".
fn message_id() -> String {
    static PUBLISHED: AtomicU64 = AtomicU64::new(0);
    static PROCESS: OnceLock<u64> = OnceLock::new();
    let process = PROCESS.get_or_init(|| RandomState::new().build_hasher().finish());
    format!(
        "{process:016x}-{:x}",
        PUBLISHED.fetch_add(1, Ordering::Relaxed)
    )
}
