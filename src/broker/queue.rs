//! What the daemon's handling of a delivery asks of the queue that carried it — park a retry,
//! dead-letter, ack or requeue — so one handling serves RabbitMQ and the in-process queue.

use std::time::SystemTime;

use lapin::Acker;
use lapin::options::{BasicAckOptions, BasicNackOptions};

use super::{Broker, BrokerError, attempt_of, not_before_of, within};
use crate::batch::Batch;

/// One delivery, as the handling reads it.
pub struct Message<R> {
    /// The body as published.
    pub body: Vec<u8>,
    /// `x-sunset-attempt`, 1 when absent.
    pub attempt: u32,
    /// `x-sunset-not-before`, when it is still to come.
    pub not_before: Option<SystemTime>,
    /// Whether it was delivered before (a lost ack, a requeue).
    pub redelivered: bool,
    /// The id it was published with; a redelivery keeps it.
    pub id: Option<String>,
    /// What acks or requeues it.
    pub receipt: R,
}

/// Publishes a batch to the work queue, attempt 1.
pub trait WorkQueue: Sync {
    /// Publishes `batch`; done once the queue holds it.
    fn enqueue(&self, batch: &Batch) -> impl Future<Output = Result<(), BrokerError>> + Send;
}

/// A queue as the handling of one delivery uses it. Everything owed is published (and, with
/// RabbitMQ, confirmed) before the delivery's ack.
pub trait Queue: Send + Sync + 'static {
    /// Acks or requeues one delivery.
    type Receipt: Send + Sync + 'static;

    /// Why `body` is dead-lettered unparsed, or `None` when it is within the size limit.
    fn oversized(&self, body: &[u8]) -> Option<String>;

    /// Whether retries wait on delays (`worker.retry_delays_ms` is not empty).
    fn delays(&self) -> bool;

    /// Parks a delivery that came back before its not-before time again, as it came.
    fn repark(
        &self,
        body: &[u8],
        attempt: u32,
        not_before: SystemTime,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Parks a retry on delay `delay` (0-based; the longest when out of range).
    fn retry(
        &self,
        batch: &Batch,
        delay: usize,
        attempt: u32,
        not_before: Option<SystemTime>,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Dead-letters the failed recipients of a batch with the reason and each failure's kind.
    fn dead_letter(
        &self,
        batch: &Batch,
        attempt: u32,
        reason: &str,
        kinds: &[&str],
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Dead-letters a body that is not a batch, as it came.
    fn dead_letter_raw(
        &self,
        body: &[u8],
        reason: &str,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Acks a delivery; `false` when the queue can no longer take the ack (it redelivers).
    fn ack(
        &self,
        receipt: &Self::Receipt,
    ) -> impl Future<Output = Result<bool, BrokerError>> + Send;

    /// Hands a delivery back to be delivered again.
    fn requeue(
        &self,
        receipt: &Self::Receipt,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;
}

impl Message<Acker> {
    /// A RabbitMQ delivery, read.
    pub fn from_delivery(delivery: lapin::message::Delivery) -> Message<Acker> {
        Message {
            attempt: attempt_of(&delivery.properties),
            not_before: not_before_of(&delivery.properties),
            redelivered: delivery.redelivered,
            id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string()),
            body: delivery.data,
            receipt: delivery.acker,
        }
    }
}

impl WorkQueue for Broker {
    async fn enqueue(&self, batch: &Batch) -> Result<(), BrokerError> {
        Broker::enqueue(self, batch).await
    }
}

impl Queue for Broker {
    type Receipt = Acker;

    fn oversized(&self, body: &[u8]) -> Option<String> {
        Broker::oversized(self, body)
    }

    fn delays(&self) -> bool {
        !self.names.retry.is_empty()
    }

    async fn repark(
        &self,
        body: &[u8],
        attempt: u32,
        not_before: SystemTime,
    ) -> Result<(), BrokerError> {
        Broker::repark(self, body, attempt, not_before).await
    }

    async fn retry(
        &self,
        batch: &Batch,
        delay: usize,
        attempt: u32,
        not_before: Option<SystemTime>,
    ) -> Result<(), BrokerError> {
        Broker::retry(self, batch, delay, attempt, not_before).await
    }

    async fn dead_letter(
        &self,
        batch: &Batch,
        attempt: u32,
        reason: &str,
        kinds: &[&str],
    ) -> Result<(), BrokerError> {
        Broker::dead_letter(self, batch, attempt, reason, kinds).await
    }

    async fn dead_letter_raw(&self, body: &[u8], reason: &str) -> Result<(), BrokerError> {
        Broker::dead_letter_raw(self, body, reason).await
    }

    async fn ack(&self, receipt: &Acker) -> Result<bool, BrokerError> {
        within("basic.ack", receipt.ack(BasicAckOptions::default())).await
    }

    async fn requeue(&self, receipt: &Acker) -> Result<(), BrokerError> {
        let requeue = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        within("basic.nack", receipt.nack(requeue)).await.map(drop)
    }
}
