//! One delivery, handled: decoded, run through `worker::process_batch`, what it owes
//! published (confirmed), then acked — or requeued when that fails. The same for RabbitMQ and
//! the in-process queue.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use tracing::{Instrument, info, info_span, warn};

use super::settled::{Settled, Settlement};
use crate::batch::{Batch, CampaignId};
use crate::broker::{BrokerError, Message, Queue};
use crate::channel::Sender;
use crate::events::{self, BatchVerdict};
use crate::worker::{Deps, Owed, Report, Verdict, process_batch};

/// What one handled delivery came to.
pub(super) struct Handled {
    /// Campaign and batch id of a first attempt (retries are not counted as batches).
    pub(super) first: Option<(CampaignId, String)>,
    pub(super) report: Report,
    pub(super) acked: bool,
}

/// Decodes, processes and settles one delivery. Acks only after everything the batch still owes
/// is published with a confirm; if that fails the delivery is requeued (nack), never dropped.
/// A panic while processing requeues it too: after `x-delivery-limit` deliveries the queue
/// dead-letters it, and the worker stays up.
pub(super) async fn handle<Q: Queue, E: Sender, P: Sender>(
    queue: Arc<Q>,
    deps: Arc<Deps<E, P>>,
    settled: Arc<Settled>,
    message: Message<Q::Receipt>,
) -> Handled {
    let attempt = message.attempt;
    let receipt = &message.receipt;
    // The peer asked for a longer wait than the delay queue gave: back to wait, unsent (with
    // no delay queue configured any more, it is sent now).
    if let Some(not_before) = message.not_before
        && queue.delays()
    {
        let parked = queue.repark(&message.body, attempt, not_before).await;
        return settle(
            &*queue,
            receipt,
            parked,
            BatchVerdict::Held,
            None,
            Report::default(),
        )
        .await;
    }
    let decoded = match queue.oversized(&message.body) {
        Some(reason) => Err(reason),
        None => Batch::decode(&message.body).map_err(|e| e.to_string()),
    };
    let batch = match decoded {
        Ok(batch) => batch,
        Err(error) => {
            let owed = queue.dead_letter_raw(&message.body, &error).await;
            if owed.is_ok() {
                events::undecodable(&error);
            }
            let verdict = BatchVerdict::Undecodable;
            return settle(&*queue, receipt, owed, verdict, None, Report::default()).await;
        }
    };
    let key = Settled::key(&message);
    // The batch is decoded: its body is not needed while the batch is processed.
    let Message {
        redelivered,
        receipt,
        ..
    } = message;
    let receipt = &receipt;
    // Only a redelivery can be a message processed before.
    let earlier = if redelivered {
        settled.get(key)
    } else {
        Settlement::default()
    };
    let span = info_span!("batch", campaign = %batch.campaign_id, batch = %batch.batch_id, attempt);
    let first = (attempt == 1).then(|| (batch.campaign_id.clone(), batch.batch_id.clone()));
    if earlier.owed_published {
        info!(parent: &span, "already processed before the connection dropped; acking");
        let verdict = BatchVerdict::Duplicate;
        return settle(&*queue, receipt, Ok(()), verdict, first, Report::default())
            .instrument(span)
            .await;
    }
    let processed = AssertUnwindSafe(
        process_batch(&batch, attempt, &earlier.delivered, &deps).instrument(span.clone()),
    )
    .catch_unwind()
    .await;
    let Ok(verdict) = processed else {
        span.in_scope(|| {
            events::batch_settled(
                BatchVerdict::Requeued,
                Some(&"processing panicked (the delivery limit dead-letters a batch that keeps failing)"),
            );
        });
        if let Err(e) = queue.requeue(receipt).await {
            warn!(parent: &span, error = %e, "nack failed; the batch will be redelivered");
        }
        return Handled {
            first: None,
            report: Report::default(),
            acked: false,
        };
    };
    settled.record(key, &verdict.delivered, false);
    let owed = publish_owed(&*queue, &verdict.owed)
        .instrument(span.clone())
        .await;
    if owed.is_ok() {
        settled.record(key, &[], true);
    }
    let label = verdict_of(&verdict, attempt);
    settle(&*queue, receipt, owed, label, first, verdict.report)
        .instrument(span)
        .await
}

/// The `verdict` label of a processed batch, from what it owes: a dead letter outweighs a
/// retry (next attempt), which outweighs a hold (same attempt).
fn verdict_of(verdict: &Verdict, attempt: u32) -> BatchVerdict {
    let mut label = BatchVerdict::Completed;
    for owed in &verdict.owed {
        match owed {
            Owed::DeadLetter { .. } => return BatchVerdict::DeadLettered,
            Owed::Retry { attempt: next, .. } if *next > attempt => label = BatchVerdict::Retried,
            Owed::Retry { .. } if label == BatchVerdict::Completed => label = BatchVerdict::Held,
            Owed::Retry { .. } => {}
        }
    }
    label
}

/// Publishes every retry and dead letter a batch owes, each with its own confirm.
async fn publish_owed<Q: Queue>(queue: &Q, owed: &[Owed]) -> Result<(), BrokerError> {
    for item in owed {
        match item {
            Owed::Retry {
                batch,
                queue: delay,
                attempt,
                not_before,
            } => {
                info!(
                    recipients = batch.recipients.len(),
                    queue = delay,
                    attempt,
                    "scheduling a retry"
                );
                queue.retry(batch, *delay, *attempt, *not_before).await?;
            }
            Owed::DeadLetter {
                batch,
                reason,
                attempt,
                kinds,
            } => {
                let labels: Vec<&str> = kinds.iter().map(|kind| kind.as_str()).collect();
                queue.dead_letter(batch, *attempt, reason, &labels).await?;
                events::dead_lettered(batch, reason, kinds);
            }
        }
    }
    Ok(())
}

/// Acks the delivery once what it owes is published (`verdict` says how it went), or requeues
/// it; one `batch_settled` event either way.
async fn settle<Q: Queue>(
    queue: &Q,
    receipt: &Q::Receipt,
    owed: Result<(), BrokerError>,
    verdict: BatchVerdict,
    first: Option<(CampaignId, String)>,
    report: Report,
) -> Handled {
    let acked = match owed {
        Ok(()) => match queue.ack(receipt).await {
            Ok(true) => {
                events::batch_settled(verdict, None);
                true
            }
            // lapin refuses acks for deliveries from before a reconnect: the broker redelivers.
            Ok(false) => {
                events::batch_settled(
                    BatchVerdict::Unacked,
                    Some(&"delivery from before a reconnect cannot be acked"),
                );
                false
            }
            Err(e) => {
                events::batch_settled(BatchVerdict::Unacked, Some(&e));
                false
            }
        },
        Err(e) => {
            events::batch_settled(BatchVerdict::Requeued, Some(&e));
            if let Err(e) = queue.requeue(receipt).await {
                warn!(error = %e, "nack failed; the batch will be redelivered");
            }
            false
        }
    };
    Handled {
        first,
        report: if acked { report } else { Report::default() },
        acked,
    }
}
