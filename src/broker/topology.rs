//! Queue names derived from `broker.queue`, and their idempotent declaration.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

/// The direct exchange batches are published to.
pub const EXCHANGE: &str = "sunset";

/// Deliveries of one batch before the broker itself dead-letters it: a net for messages that
/// crash or stall every worker that takes them (poison messages).
pub const DELIVERY_LIMIT: i64 = 10;

/// Every queue of one sunset deployment, named from `broker.queue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueNames {
    /// The work queue, e.g. `sunset.batches`; also the routing key on [`EXCHANGE`].
    pub work: String,
    /// `<work>.retry.<N>` with its delay in milliseconds, N from 1.
    pub retry: Vec<(String, u64)>,
    /// `<work>.dlq`.
    pub dlq: String,
}

impl QueueNames {
    /// Names for work queue `queue` and one delay queue per retry delay.
    pub fn new(queue: &str, retry_delays_ms: &[u64]) -> QueueNames {
        QueueNames {
            work: queue.to_string(),
            retry: retry_delays_ms
                .iter()
                .enumerate()
                .map(|(i, delay)| (format!("{queue}.retry.{}", i + 1), *delay))
                .collect(),
            dlq: format!("{queue}.dlq"),
        }
    }

    /// Every queue name: work, retries, dead letters.
    pub fn all(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.work.as_str())
            .chain(self.retry.iter().map(|(name, _)| name.as_str()))
            .chain(std::iter::once(self.dlq.as_str()))
    }
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in entries {
        table.insert((*key).into(), value.clone());
    }
    table
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Declares the exchange and every queue; declaring what exists with the same arguments is a
/// no-op, so every command calls it.
pub async fn declare(channel: &Channel, names: &QueueNames) -> lapin::Result<()> {
    let durable = QueueDeclareOptions::durable();
    channel
        .exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let quorum = ("x-queue-type", text("quorum"));
    channel
        .queue_declare(
            names.dlq.as_str().into(),
            durable,
            table(std::slice::from_ref(&quorum)),
        )
        .await?;
    channel
        .queue_declare(
            names.work.as_str().into(),
            durable,
            table(&[
                quorum.clone(),
                ("x-delivery-limit", AMQPValue::LongLongInt(DELIVERY_LIMIT)),
                ("x-dead-letter-exchange", text("")),
                ("x-dead-letter-routing-key", text(&names.dlq)),
            ]),
        )
        .await?;
    channel
        .queue_bind(
            names.work.as_str().into(),
            EXCHANGE.into(),
            names.work.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for (name, delay_ms) in &names.retry {
        // At-least-once dead-lettering: an expired message leaves the delay queue only once
        // the work queue has confirmed it.
        let ttl = i64::try_from(*delay_ms).unwrap_or(i64::MAX);
        channel
            .queue_declare(
                name.as_str().into(),
                durable,
                table(&[
                    quorum.clone(),
                    ("x-message-ttl", AMQPValue::LongLongInt(ttl)),
                    ("x-dead-letter-exchange", text(EXCHANGE)),
                    ("x-dead-letter-routing-key", text(&names.work)),
                    ("x-dead-letter-strategy", text("at-least-once")),
                    ("x-overflow", text("reject-publish")),
                ]),
            )
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_work_queue() {
        let names = QueueNames::new("sunset.batches", &[30_000, 120_000]);
        assert_eq!(
            names.all().collect::<Vec<_>>(),
            [
                "sunset.batches",
                "sunset.batches.retry.1",
                "sunset.batches.retry.2",
                "sunset.batches.dlq"
            ]
        );
        assert_eq!(names.retry[1].1, 120_000);
    }
}
