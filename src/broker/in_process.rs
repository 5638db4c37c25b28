//! The in-process queue `sunset send` runs a campaign on when there is no RabbitMQ: a channel
//! for the work, a tokio timer per parked batch for the delays, and a JSON-lines file for the
//! dead letters. It lives as long as the command.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use super::queue::{Message, Queue, WorkQueue};
use super::topology::{DELIVERY_LIMIT, QueueNames};
use super::{BrokerError, KEPT_OF_OVERSIZED};
use crate::batch::Batch;
use crate::config::BrokerConfig;

/// The in-process queue's side that publishes, parks, dead-letters and acks.
pub struct InProcess {
    work: mpsc::UnboundedSender<Message<InProcessReceipt>>,
    /// `worker.retry_delays_ms`, in order.
    delays: Vec<Duration>,
    /// `broker.dead_letter_file`.
    dead_letters: PathBuf,
    /// One dead letter is appended at a time, each a whole line.
    appending: Mutex<()>,
    /// Batches published (to the work queue or a delay) and not yet acked: 0 = nothing left.
    outstanding: AtomicUsize,
    /// Message ids handed out.
    published: AtomicU64,
    /// `broker.max_message_bytes`.
    max_message_bytes: u64,
}

/// The in-process queue's side that delivers.
pub struct Inbox(mpsc::UnboundedReceiver<Message<InProcessReceipt>>);

impl Inbox {
    /// The next delivery; waits while batches are parked.
    pub async fn next(&mut self) -> Option<Message<InProcessReceipt>> {
        self.0.recv().await
    }
}

/// What requeues an in-process delivery: the message as it came, and how often it came.
pub struct InProcessReceipt {
    body: Vec<u8>,
    attempt: u32,
    id: String,
    deliveries: u32,
}

impl InProcess {
    /// An empty queue with the delays of `names` and the dead-letter file of `config`.
    pub fn new(config: &BrokerConfig, names: &QueueNames) -> (Arc<InProcess>, Inbox) {
        let (work, inbox) = mpsc::unbounded_channel();
        let queue = InProcess {
            work,
            delays: names
                .retry
                .iter()
                .map(|(_, ms)| Duration::from_millis(*ms))
                .collect(),
            dead_letters: config.dead_letter_file.clone(),
            appending: Mutex::new(()),
            outstanding: AtomicUsize::new(0),
            published: AtomicU64::new(0),
            max_message_bytes: config.max_message_bytes,
        };
        (Arc::new(queue), Inbox(inbox))
    }

    /// Batches published and not yet acked; the campaign is done when this is 0.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::SeqCst)
    }

    /// Publishes `body` to come back after `after` (at once when zero).
    fn publish(
        &self,
        body: Vec<u8>,
        attempt: u32,
        not_before: Option<SystemTime>,
        after: Duration,
    ) {
        self.outstanding.fetch_add(1, Ordering::SeqCst);
        let id = format!(
            "in-process-{}",
            self.published.fetch_add(1, Ordering::Relaxed)
        );
        let receipt = InProcessReceipt {
            body,
            attempt,
            id,
            deliveries: 1,
        };
        self.deliver(receipt, not_before, after);
    }

    /// Hands `receipt`'s message to the inbox after `after`, on a timer of its own.
    fn deliver(&self, receipt: InProcessReceipt, not_before: Option<SystemTime>, after: Duration) {
        let work = self.work.clone();
        let message = move || Message {
            body: receipt.body.clone(),
            attempt: receipt.attempt,
            not_before: not_before.filter(|at| *at > SystemTime::now()),
            redelivered: receipt.deliveries > 1,
            id: Some(receipt.id.clone()),
            receipt,
        };
        if after.is_zero() {
            // The inbox is gone only once the run has ended: nothing is left to deliver to.
            let _ = work.send(message());
            return;
        }
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = work.send(message());
        });
    }

    /// Appends one dead letter to the file, as a JSON line.
    fn append(&self, letter: &serde_json::Value) -> Result<(), BrokerError> {
        let _appending = self
            .appending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let failed = |source| BrokerError::DeadLetterFile {
            path: self.dead_letters.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.dead_letters)
            .map_err(failed)?;
        let mut line = letter.to_string();
        line.push('\n');
        file.write_all(line.as_bytes()).map_err(failed)?;
        file.sync_data().map_err(failed)
    }
}

/// Seconds since the Unix epoch.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

impl WorkQueue for InProcess {
    async fn enqueue(&self, batch: &Batch) -> Result<(), BrokerError> {
        self.publish(batch.encode(), 1, None, Duration::ZERO);
        Ok(())
    }
}

impl Queue for InProcess {
    type Receipt = InProcessReceipt;

    fn oversized(&self, body: &[u8]) -> Option<String> {
        let size = body.len() as u64;
        (self.max_message_bytes > 0 && size > self.max_message_bytes).then(|| {
            format!(
                "message of {size} bytes is over broker.max_message_bytes ({}); not parsed",
                self.max_message_bytes
            )
        })
    }

    fn delays(&self) -> bool {
        !self.delays.is_empty()
    }

    async fn repark(
        &self,
        body: &[u8],
        attempt: u32,
        not_before: SystemTime,
    ) -> Result<(), BrokerError> {
        let left = not_before
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        self.publish(body.to_vec(), attempt, Some(not_before), left);
        Ok(())
    }

    async fn retry(
        &self,
        batch: &Batch,
        delay: usize,
        attempt: u32,
        not_before: Option<SystemTime>,
    ) -> Result<(), BrokerError> {
        let after = self
            .delays
            .get(delay)
            .or(self.delays.last())
            .copied()
            .unwrap_or_default();
        self.publish(batch.encode(), attempt, not_before, after);
        Ok(())
    }

    async fn dead_letter(
        &self,
        batch: &Batch,
        attempt: u32,
        reason: &str,
        kinds: &[&str],
    ) -> Result<(), BrokerError> {
        let kind = if batch.failures.is_empty() {
            "whole-batch"
        } else {
            "failed-recipients"
        };
        self.append(&serde_json::json!({
            "kind": kind,
            "error": reason,
            "attempt": attempt,
            "kinds": kinds,
            "campaign": batch.campaign_id.as_str(),
            "batch_id": batch.batch_id,
            "at": now_secs(),
            "batch": batch,
        }))
    }

    async fn dead_letter_raw(&self, body: &[u8], reason: &str) -> Result<(), BrokerError> {
        let kept = if self.max_message_bytes > 0 && body.len() as u64 > self.max_message_bytes {
            &body[..body.len().min(KEPT_OF_OVERSIZED)]
        } else {
            body
        };
        self.append(&serde_json::json!({
            "kind": "undecodable",
            "error": reason,
            "at": now_secs(),
            "body": String::from_utf8_lossy(kept),
        }))
    }

    async fn ack(&self, _receipt: &InProcessReceipt) -> Result<bool, BrokerError> {
        self.outstanding.fetch_sub(1, Ordering::SeqCst);
        Ok(true)
    }

    /// Delivers the message again at once; after `DELIVERY_LIMIT` deliveries (a batch that
    /// crashes every handling) it is dead-lettered instead, as RabbitMQ's delivery limit does.
    async fn requeue(&self, receipt: &InProcessReceipt) -> Result<(), BrokerError> {
        if i64::from(receipt.deliveries) >= DELIVERY_LIMIT {
            let reason = format!("delivery limit: handled {} times", receipt.deliveries);
            match Batch::decode(&receipt.body) {
                Ok(batch) => {
                    self.dead_letter(&batch, receipt.attempt, &reason, &[])
                        .await?
                }
                Err(_) => self.dead_letter_raw(&receipt.body, &reason).await?,
            }
            self.outstanding.fetch_sub(1, Ordering::SeqCst);
            return Ok(());
        }
        let again = InProcessReceipt {
            body: receipt.body.clone(),
            attempt: receipt.attempt,
            id: receipt.id.clone(),
            deliveries: receipt.deliveries + 1,
        };
        self.deliver(again, None, Duration::ZERO);
        Ok(())
    }
}
