//! One delivery, handled: decoded, run through `worker::process_batch`, what it owes
//! published (confirmed), then acked — or requeued when that fails.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tracing::{Instrument, info, info_span, warn};

use super::settled::{Settled, Settlement};
use crate::batch::{Batch, CampaignId};
use crate::broker::{Broker, BrokerError, attempt_of, not_before_of, within};
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
/// A panic while processing requeues it too: after `x-delivery-limit` deliveries the broker
/// dead-letters it, and the worker stays up.
pub(super) async fn handle<E: Sender, P: Sender>(
    broker: Arc<Broker>,
    deps: Arc<Deps<E, P>>,
    settled: Arc<Settled>,
    delivery: Delivery,
) -> Handled {
    let attempt = attempt_of(&delivery.properties);
    // The peer asked for a longer wait than the delay queue gave: back to wait, unsent (with
    // no delay queue configured any more, it is sent now).
    if let Some(not_before) = not_before_of(&delivery.properties)
        && !broker.names().retry.is_empty()
    {
        let parked = broker.repark(&delivery.data, attempt, not_before).await;
        return settle(
            &delivery,
            parked,
            BatchVerdict::Held,
            None,
            Report::default(),
        )
        .await;
    }
    let decoded = match broker.oversized(&delivery.data) {
        Some(reason) => Err(reason),
        None => Batch::decode(&delivery.data).map_err(|e| e.to_string()),
    };
    let batch = match decoded {
        Ok(batch) => batch,
        Err(error) => {
            let owed = broker.dead_letter_raw(&delivery.data, &error).await;
            if owed.is_ok() {
                events::undecodable(&error);
            }
            return settle(
                &delivery,
                owed,
                BatchVerdict::Undecodable,
                None,
                Report::default(),
            )
            .await;
        }
    };
    let key = Settled::key(&delivery, attempt);
    // The batch is decoded: its body is not needed while the batch is processed.
    let mut delivery = delivery;
    delivery.data = Vec::new();
    // Only a redelivery can be a message processed before.
    let earlier = if delivery.redelivered {
        settled.get(key)
    } else {
        Settlement::default()
    };
    let span = info_span!("batch", campaign = %batch.campaign_id, batch = %batch.batch_id, attempt);
    let first = (attempt == 1).then(|| (batch.campaign_id.clone(), batch.batch_id.clone()));
    if earlier.owed_published {
        info!(parent: &span, "already processed before the connection dropped; acking");
        return settle(
            &delivery,
            Ok(()),
            BatchVerdict::Duplicate,
            first,
            Report::default(),
        )
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
        let requeue = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        if let Err(e) = within("basic.nack", delivery.acker.nack(requeue)).await {
            warn!(parent: &span, error = %e, "nack failed; the batch will be redelivered");
        }
        return Handled {
            first: None,
            report: Report::default(),
            acked: false,
        };
    };
    settled.record(key, &verdict.delivered, false);
    let owed = publish_owed(&broker, &verdict.owed)
        .instrument(span.clone())
        .await;
    if owed.is_ok() {
        settled.record(key, &[], true);
    }
    let label = verdict_of(&verdict, attempt);
    settle(&delivery, owed, label, first, verdict.report)
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
async fn publish_owed(broker: &Broker, owed: &[Owed]) -> Result<(), BrokerError> {
    for item in owed {
        match item {
            Owed::Retry {
                batch,
                queue,
                attempt,
                not_before,
            } => {
                info!(
                    recipients = batch.recipients.len(),
                    queue, attempt, "scheduling a retry"
                );
                broker.retry(batch, *queue, *attempt, *not_before).await?;
            }
            Owed::DeadLetter {
                batch,
                reason,
                attempt,
                kinds,
            } => {
                let labels: Vec<&str> = kinds.iter().map(|kind| kind.as_str()).collect();
                broker.dead_letter(batch, *attempt, reason, &labels).await?;
                events::dead_lettered(batch, reason, kinds);
            }
        }
    }
    Ok(())
}

/// Acks the delivery once what it owes is published (`verdict` says how it went), or requeues
/// it; one `batch_settled` event either way.
async fn settle(
    delivery: &Delivery,
    owed: Result<(), BrokerError>,
    verdict: BatchVerdict,
    first: Option<(CampaignId, String)>,
    report: Report,
) -> Handled {
    let acked = match owed {
        Ok(()) => match within("basic.ack", delivery.acker.ack(BasicAckOptions::default())).await {
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
            let requeue = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            if let Err(e) = within("basic.nack", delivery.acker.nack(requeue)).await {
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
