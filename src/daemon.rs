//! The worker loop: consume batches, run `worker::process_batch`, publish what is owed, ack;
//! reconnect when the broker goes away; stop on shutdown, when idle, or when a campaign is done.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::batch::{Batch, CampaignId};
use crate::broker::{Broker, BrokerError, QueueNames, attempt_of};
use crate::channel::Sender;
use crate::config::BrokerConfig;
use crate::worker::{Deps, Report, Verdict, process_batch};

/// When the loop ends (besides shutdown, which always ends it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Until {
    /// Only on shutdown (SIGTERM/SIGINT).
    Shutdown,
    /// Once nothing is in flight and the work and retry queues stay empty.
    Idle,
    /// Once `batches` batches of `campaign` have been acked (`sunset send`).
    CampaignDone {
        /// The campaign.
        campaign: CampaignId,
        /// How many batches it was enqueued as.
        batches: u64,
    },
}

/// How often the idle check looks at the queues.
const IDLE_POLL: Duration = Duration::from_millis(500);
/// Consecutive empty looks before the worker counts as idle.
const IDLE_ROUNDS: u32 = 3;
/// First and longest wait between reconnection attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(10));

/// What one handled delivery came to.
struct Handled {
    campaign: Option<CampaignId>,
    report: Report,
    acked: bool,
}

/// Runs the loop until `until` or `shutdown`; returns what was processed.
/// Reconnects with back-off whenever the connection is lost and lapin's own recovery gave up.
pub async fn run<E, P>(
    config: &BrokerConfig,
    names: QueueNames,
    deps: Arc<Deps<E, P>>,
    until: Until,
    shutdown: CancellationToken,
) -> anyhow::Result<Report>
where
    E: Sender + 'static,
    P: Sender + 'static,
{
    let mut report = Report::default();
    let mut backoff = BACKOFF.0;
    loop {
        let broker = tokio::select! {
            _ = shutdown.cancelled() => return Ok(report),
            connected = Broker::connect(config, names.clone()) => connected,
        };
        let broker = match broker {
            Ok(broker) => Arc::new(broker),
            Err(e) => {
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot reach RabbitMQ; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(report),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF.1);
                continue;
            }
        };
        backoff = BACKOFF.0;
        let ended = session(
            &broker,
            config.prefetch,
            &deps,
            &until,
            &shutdown,
            &mut report,
        )
        .await;
        broker.close().await;
        match ended {
            Ok(()) => return Ok(report),
            Err(e) => warn!(error = %e, "lost the broker connection; reconnecting"),
        }
    }
}

/// One connection's worth of consuming. `Ok` means the loop is finished; `Err` means reconnect.
async fn session<E, P>(
    broker: &Arc<Broker>,
    prefetch: u16,
    deps: &Arc<Deps<E, P>>,
    until: &Until,
    shutdown: &CancellationToken,
    report: &mut Report,
) -> Result<(), BrokerError>
where
    E: Sender + 'static,
    P: Sender + 'static,
{
    let mut subscription = broker.subscribe(prefetch).await?;
    info!(queue = %broker.names().work, prefetch, "consuming");
    let mut tasks: JoinSet<Handled> = JoinSet::new();
    let mut idle_rounds = 0;
    let mut campaign_acked = 0;
    let mut poll = tokio::time::interval(IDLE_POLL);
    let outcome = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            delivery = subscription.consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    idle_rounds = 0;
                    let (broker, deps) = (Arc::clone(broker), Arc::clone(deps));
                    tasks.spawn(handle(broker, deps, delivery));
                }
                Some(Err(e)) => break Err(BrokerError::Amqp(e)),
                None => break Err(BrokerError::ConsumerEnded),
            },
            Some(done) = tasks.join_next() => {
                let done = done.unwrap_or_else(|e| {
                    error!(error = %e, "batch task panicked; the batch will be redelivered");
                    Handled { campaign: None, report: Report::default(), acked: false }
                });
                report.merge(&done.report);
                if let Until::CampaignDone { campaign, batches } = until
                    && done.acked
                    && done.campaign.as_ref() == Some(campaign)
                {
                    campaign_acked += 1;
                    if campaign_acked >= *batches {
                        break Ok(());
                    }
                }
            }
            _ = poll.tick(), if *until == Until::Idle && tasks.is_empty() => {
                if queues_empty(broker).await? {
                    idle_rounds += 1;
                    if idle_rounds >= IDLE_ROUNDS {
                        info!("queues empty and nothing in flight; exiting");
                        break Ok(());
                    }
                } else {
                    idle_rounds = 0;
                }
            }
        }
    };
    // Stop new deliveries, finish (and ack) what is in flight, then let the rest go back.
    if outcome.is_ok() {
        let _ = subscription.cancel().await;
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok(done) = done {
            report.merge(&done.report);
        }
    }
    subscription.close().await;
    outcome
}

async fn queues_empty(broker: &Broker) -> Result<bool, BrokerError> {
    let names = broker.names();
    if broker.ready_count(&names.work).await? > 0 {
        return Ok(false);
    }
    for (retry, _) in &names.retry {
        if broker.ready_count(retry).await? > 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Decodes, processes and settles one delivery. Acks only after everything the batch still owes
/// is published with a confirm; if that fails the delivery is requeued (nack), never dropped.
async fn handle<E: Sender, P: Sender>(
    broker: Arc<Broker>,
    deps: Arc<Deps<E, P>>,
    delivery: Delivery,
) -> Handled {
    let attempt = attempt_of(&delivery.properties);
    let batch = match Batch::decode(&delivery.data) {
        Ok(batch) => batch,
        Err(e) => {
            warn!(error = %e, "undecodable message; dead-lettering it");
            let owed = broker.dead_letter_raw(&delivery.data, &e.to_string()).await;
            return settle(&delivery, owed, None, Report::default()).await;
        }
    };
    let span = info_span!("batch", campaign = %batch.campaign_id, batch = %batch.batch_id, attempt);
    async move {
        let verdict = process_batch(&batch, &deps).await;
        let owed = match &verdict {
            Verdict::Delivered(_) => Ok(()),
            Verdict::DeadLetter { dead_letter, reason, .. } => {
                warn!(failed = dead_letter.failures.len(), reason = %reason, "dead-lettering failed recipients");
                broker.dead_letter(dead_letter, attempt, reason).await
            }
        };
        settle(&delivery, owed, Some(batch.campaign_id.clone()), verdict.report().clone()).await
    }
    .instrument(span)
    .await
}

async fn settle(
    delivery: &Delivery,
    owed: Result<(), BrokerError>,
    campaign: Option<CampaignId>,
    report: Report,
) -> Handled {
    let acked = match owed {
        Ok(()) => match delivery.acker.ack(BasicAckOptions::default()).await {
            Ok(_) => true,
            Err(e) => {
                warn!(error = %e, "ack failed; the batch will be redelivered");
                false
            }
        },
        Err(e) => {
            error!(error = %e, "could not publish what the batch owes; requeueing it");
            let requeue = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            if let Err(e) = delivery.acker.nack(requeue).await {
                warn!(error = %e, "nack failed; the batch will be redelivered");
            }
            false
        }
    };
    Handled {
        campaign,
        report: if acked { report } else { Report::default() },
        acked,
    }
}
