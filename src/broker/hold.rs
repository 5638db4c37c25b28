//! Holding a queue's messages: taking every one off it without settling them, deleting some
//! (acks), and putting the rest back where they were, in their order.
//!
//! How, and why (RabbitMQ 3.10 quorum queues, checked by `tests/dlq.rs`): one consumer on a
//! channel of its own takes every message and holds them unacked; closing that channel gives them
//! all back in their original order, because the queue returns a departed consumer's messages
//! sorted by delivery. The obvious alternatives reorder: messages taken with `basic.get` (one
//! consumer each) or requeued with `basic.nack` come back in hash order once more than 32 are
//! involved. And a channel with more than 32 settlements in flight stashes the rest and drops
//! them if it closes first (acked messages reappear), so removals are acked at most
//! [`ACKS_PER_BARRIER`] at a time, each group followed by a `basic.get` round trip that the queue
//! answers only after applying them.

use std::time::Duration;

use futures::{FutureExt as _, StreamExt as _};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{DeliveryTag, FieldTable};
use lapin::{BasicProperties, Channel, Consumer};
use tracing::warn;

use super::{Broker, BrokerError};

/// Acks sent before waiting for the queue to apply them: well under the 32 a channel keeps in
/// flight before it starts stashing (and, on close, losing) settlements.
const ACKS_PER_BARRIER: usize = 16;
/// Most messages held at once (the largest prefetch AMQP allows); the rest wait their turn.
pub const MAX_HELD: usize = u16::MAX as usize;
/// How long to wait for held messages to be back in the queue after the channel closes.
const RETURN_WAIT: Duration = Duration::from_secs(10);
/// Consumer tag of the holding consumer, to recognise it in the management UI; `sunset dlq` is
/// the one that holds a queue.
const CONSUMER_TAG: &str = "sunset-dlq";
/// How long a new consumer waits for the messages that were ready when it came.
const FIRST_DELIVERIES: Duration = Duration::from_secs(10);

/// Every message of a queue, delivered to one consumer on a channel of its own and not yet
/// settled, each read into a `T`: closing the channel ([`Hold::release`]) puts back all not
/// removed, in order.
pub struct Hold<T> {
    channel: Channel,
    queue: String,
    /// How a delivery's body and properties are read into what is held.
    read: fn(&[u8], &BasicProperties) -> T,
    /// In queue order, with the delivery tag to ack them by.
    messages: Vec<(DeliveryTag, T)>,
    /// Acked (deleted) so far.
    removed: usize,
    /// Acks sent since the last barrier.
    unsynced: usize,
    /// The queue had more than [`MAX_HELD`]: only the first are here.
    truncated: bool,
}

impl<T> Hold<T> {
    /// Takes every message of `queue` ready now (and any that arrive meanwhile), up to
    /// [`MAX_HELD`], each read by `read`.
    pub async fn take(
        broker: &Broker,
        queue: &str,
        read: fn(&[u8], &BasicProperties) -> T,
    ) -> Result<Hold<T>, BrokerError> {
        let ready = broker.ready_count(queue).await? as usize;
        let channel = broker.open_channel().await?;
        channel
            .basic_qos(MAX_HELD as u16, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                CONSUMER_TAG.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut hold = Hold {
            channel,
            queue: queue.to_string(),
            read,
            messages: Vec::new(),
            removed: 0,
            unsynced: 0,
            truncated: false,
        };
        // The queue hands a new consumer its messages at its own pace (slowly on a busy broker):
        // a barrier before they are all out would take one itself, and give it back out of
        // order. So first wait for those ready before the consumer came.
        let waited = tokio::time::Instant::now() + FIRST_DELIVERIES;
        while hold.messages.len() < ready.min(MAX_HELD) {
            match tokio::time::timeout_at(waited, consumer.next()).await {
                Ok(Some(delivery)) => hold.keep(delivery?),
                Ok(None) => return Err(BrokerError::ConsumerEnded),
                Err(_) => break,
            }
        }
        // While this consumer has credit, the queue hands it every message as soon as it is
        // ready, so a barrier finds the queue empty; the deliveries it made before are on the
        // wire ahead of the barrier's reply. Done when a barrier brings nothing new.
        loop {
            hold.barrier().await?;
            let fresh = hold.drain(&mut consumer)?;
            if fresh == 0 || hold.truncated {
                break;
            }
        }
        Ok(hold)
    }

    /// The messages held, in queue order, with the delivery tag [`Hold::remove`] takes.
    pub fn messages(&self) -> &[(DeliveryTag, T)] {
        &self.messages
    }

    /// How many were removed (acked) so far.
    pub fn removed(&self) -> usize {
        self.removed
    }

    /// How many go back to the queue on release: those held and not removed.
    pub fn kept(&self) -> usize {
        self.messages.len() - self.removed
    }

    /// Whether the queue had more than [`MAX_HELD`], so only the first are held.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Moves the deliveries already received into `messages`; returns how many.
    fn drain(&mut self, consumer: &mut Consumer) -> Result<usize, BrokerError> {
        let mut fresh = 0;
        while let Some(next) = consumer.next().now_or_never() {
            let delivery = match next {
                Some(delivery) => delivery?,
                None => return Err(BrokerError::ConsumerEnded),
            };
            self.keep(delivery);
            fresh += 1;
            if self.messages.len() >= MAX_HELD {
                self.truncated = true;
                break;
            }
        }
        Ok(fresh)
    }

    /// Holds a delivered message.
    fn keep(&mut self, delivery: lapin::message::Delivery) {
        let message = (self.read)(&delivery.data, &delivery.properties);
        self.messages.push((delivery.delivery_tag, message));
    }

    /// A `basic.get` round trip: the queue answers it after applying everything this channel
    /// sent before it. It finds the queue empty unless the consumer's credit ran out.
    async fn barrier(&mut self) -> Result<(), BrokerError> {
        self.unsynced = 0;
        let got = self
            .channel
            .basic_get(
                self.queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await?;
        if let Some(message) = got {
            // Only past MAX_HELD: give it straight back (it lands just ahead of those held).
            self.truncated = true;
            self.channel
                .basic_nack(
                    message.delivery.delivery_tag,
                    BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    },
                )
                .await?;
        }
        Ok(())
    }

    /// Acks (deletes) one held message.
    pub async fn remove(&mut self, tag: DeliveryTag) -> Result<(), BrokerError> {
        self.channel
            .basic_ack(tag, BasicAckOptions::default())
            .await?;
        self.removed += 1;
        self.unsynced += 1;
        if self.unsynced >= ACKS_PER_BARRIER {
            self.barrier().await?;
        }
        Ok(())
    }

    /// Closes the channel, which puts back every message not removed, in order; then waits
    /// (a little) until the queue shows them, so a command run next sees them all.
    pub async fn release(mut self, broker: &Broker) {
        if self.unsynced > 0
            && let Err(e) = self.barrier().await
        {
            warn!(error = %e, queue = %self.queue, "could not confirm the last deletions");
        }
        let kept = self.kept();
        if let Err(e) = self.channel.close(200, "done".into()).await {
            warn!(error = %e, queue = %self.queue, "closing the holding channel failed; RabbitMQ puts its messages back when the connection ends");
            return;
        }
        let deadline = tokio::time::Instant::now() + RETURN_WAIT;
        loop {
            match broker.ready_count(&self.queue).await {
                Ok(ready) if ready as usize >= kept => return,
                Ok(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(ready) => {
                    warn!(
                        ready,
                        kept,
                        queue = %self.queue,
                        "held messages are still on their way back to the queue"
                    );
                    return;
                }
                Err(e) => {
                    warn!(error = %e, queue = %self.queue, "could not count the messages put back");
                    return;
                }
            }
        }
    }
}
