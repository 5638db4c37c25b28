//! The worker loop: consume batches, run `worker::process_batch`, publish what is owed, ack;
//! reconnect when the broker goes away; stop on shutdown, when idle, or when a campaign is done.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::batch::{Batch, CampaignId, UserId};
use crate::broker::{Broker, BrokerError, QueueNames, attempt_of, not_before_of, within};
use crate::channel::{Channel, Sender};
use crate::config::BrokerConfig;
use crate::events::{self, BatchVerdict};
use crate::worker::{Deps, Owed, Report, Verdict, process_batch};

/// When the loop ends (besides shutdown, which always ends it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Until {
    /// Only on shutdown (SIGTERM/SIGINT).
    Shutdown,
    /// Once nothing is in flight and the work and retry queues stay empty.
    Idle,
    /// Once `batches` batches of `campaign` have been acked here, or the ledger has every send
    /// of it settled (`sunset send`, perhaps beside running workers).
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
    /// Campaign and batch id of a first attempt (retries are not counted as batches).
    first: Option<(CampaignId, String)>,
    report: Report,
    acked: bool,
}

/// Whether the worker is consuming, for `/readyz`: ready while a session consumes from a
/// connected broker; not ready before, while lapin recovers the connection, while the worker
/// reconnects, and once it stops consuming (shutdown). Clones share the state.
#[derive(Clone, Default)]
pub struct Readiness(Arc<Mutex<Weak<Broker>>>);

impl Readiness {
    /// Whether the worker is consuming from a connected broker now.
    pub fn is_ready(&self) -> bool {
        self.lock()
            .upgrade()
            .is_some_and(|broker| broker.is_connected())
    }

    fn consuming(&self, broker: &Arc<Broker>) {
        *self.lock() = Arc::downgrade(broker);
    }

    fn stopped(&self) {
        *self.lock() = Weak::new();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Weak<Broker>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the loop has processed so far, for a live view while it runs. Clones share the state.
#[derive(Clone, Default)]
pub struct Live(Arc<Mutex<Report>>);

impl Live {
    /// The recipients processed so far.
    pub fn report(&self) -> Report {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn add(&self, report: &Report) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .merge(report);
    }
}

/// Runs the loop until `until` or `shutdown`; returns what was processed, which `live` shows
/// as it grows. `readiness` says whether it is consuming. Reconnects with back-off whenever the
/// connection is lost and lapin's own recovery gave up.
pub async fn run<E, P>(
    config: &BrokerConfig,
    names: QueueNames,
    deps: Arc<Deps<E, P>>,
    until: Until,
    shutdown: CancellationToken,
    readiness: &Readiness,
    live: &Live,
) -> anyhow::Result<Report>
where
    E: Sender + 'static,
    P: Sender + 'static,
{
    let mut progress = Progress {
        live: live.clone(),
        ..Progress::default()
    };
    let mut backoff = BACKOFF.0;
    let give_up =
        (config.give_up_after_ms > 0).then(|| Duration::from_millis(config.give_up_after_ms));
    let settled = Arc::new(Settled::default());
    let mut unreachable_since: Option<Instant> = None;
    loop {
        let broker = tokio::select! {
            _ = shutdown.cancelled() => return Ok(progress.report),
            connected = Broker::connect(config, names.clone()) => connected,
        };
        let broker = match broker {
            Ok(broker) => Arc::new(broker),
            // A bad `broker.url` or CA file stays bad: stop at once, naming the key.
            Err(e @ BrokerError::Config(_)) => return Err(e.into()),
            // Credentials, vhost or trust stay wrong until someone changes them: stop now.
            Err(BrokerError::Connect(cause)) if cause.is_permanent() => {
                return Err(anyhow::Error::new(cause).context("Cannot connect to RabbitMQ"));
            }
            Err(e) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if let Some(limit) = give_up
                    && since.elapsed() >= limit
                {
                    return Err(anyhow::Error::new(e).context(format!(
                        "Gave up: no RabbitMQ for {} ms (broker.give_up_after_ms)",
                        limit.as_millis()
                    )));
                }
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot reach RabbitMQ; waiting");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(progress.report),
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
            &settled,
            &until,
            &shutdown,
            &mut progress,
            readiness,
        )
        .await;
        broker.close().await;
        match ended {
            Ok(()) => return Ok(progress.report),
            Err(e) => {
                warn!(error = %e, "lost the broker connection; reconnecting");
                unreachable_since = Some(Instant::now());
            }
        }
    }
}

/// Messages this process has processed, by message id: the pairs already delivered, and
/// whether what they owed was published. After a connection loss lapin may report an ack as
/// done that the broker never got, and the broker redelivers the message: a redelivery of a
/// settled message is only acked, and a half-done one skips its delivered pairs, so this
/// process never sends twice. (Across processes the delivery ledger does this.) The key is the
/// message, not the batch: a batch held back or retried is published anew with the same body
/// and attempt, and that copy is new work even when it, too, comes redelivered.
#[derive(Default)]
struct Settled(Mutex<HashMap<u64, Settlement>>);

#[derive(Default, Clone)]
struct Settlement {
    delivered: HashSet<(UserId, Channel)>,
    owed_published: bool,
    since: Option<Instant>,
}

/// How long a processed batch is remembered.
const SETTLED_TTL: Duration = Duration::from_secs(3600);
/// Entries kept before expired ones are swept (about 100 bytes each when settled).
const SETTLED_SWEEP_AT: usize = 50_000;

impl Settled {
    /// The message id every sunset publish sets; body and attempt for a message without one.
    fn key(delivery: &Delivery, attempt: u32) -> u64 {
        let mut hasher = DefaultHasher::new();
        match delivery.properties.message_id() {
            Some(id) => id.as_str().hash(&mut hasher),
            None => {
                delivery.data.hash(&mut hasher);
                attempt.hash(&mut hasher);
            }
        }
        hasher.finish()
    }

    fn get(&self, key: u64) -> Settlement {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&key).cloned().unwrap_or_default()
    }

    /// Records delivered pairs; once `owed_published`, the pairs are no longer needed.
    fn record(&self, key: u64, delivered: &[(UserId, Channel)], owed_published: bool) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= SETTLED_SWEEP_AT {
            map.retain(|_, s| s.since.is_some_and(|since| since.elapsed() < SETTLED_TTL));
        }
        let entry = map.entry(key).or_default();
        entry.since.get_or_insert_with(Instant::now);
        if owed_published {
            entry.owed_published = true;
            entry.delivered = HashSet::new();
        } else {
            entry.delivered.extend(delivered.iter().cloned());
        }
    }
}

/// One connection's worth of consuming. `Ok` means the loop is finished; `Err` means reconnect.
#[allow(clippy::too_many_arguments)] // the loop's state, passed down once per connection
async fn session<E, P>(
    broker: &Arc<Broker>,
    prefetch: u16,
    deps: &Arc<Deps<E, P>>,
    settled: &Arc<Settled>,
    until: &Until,
    shutdown: &CancellationToken,
    progress: &mut Progress,
    readiness: &Readiness,
) -> Result<(), BrokerError>
where
    E: Sender + 'static,
    P: Sender + 'static,
{
    let mut subscription = broker.subscribe(prefetch).await?;
    info!(queue = %broker.names().work, prefetch, "consuming");
    readiness.consuming(broker);
    let mut tasks: JoinSet<Handled> = JoinSet::new();
    let mut idle_rounds = 0;
    let mut down_since = None;
    let mut poll = tokio::time::interval(IDLE_POLL);
    // Idle means empty for IDLE_ROUNDS polls spread over time, not missed ticks fired at once.
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outcome = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            delivery = subscription.consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    idle_rounds = 0;
                    let (broker, deps, settled) = (Arc::clone(broker), Arc::clone(deps), Arc::clone(settled));
                    tasks.spawn(handle(broker, deps, settled, delivery));
                }
                Some(Err(e)) => break Err(BrokerError::Amqp(e)),
                None => break Err(BrokerError::ConsumerEnded),
            },
            Some(done) = tasks.join_next() => {
                idle_rounds = 0;
                poll.reset();
                let done = done.unwrap_or_else(|e| {
                    error!(error = %e, "batch task panicked; the batch will be redelivered");
                    Handled { first: None, report: Report::default(), acked: false }
                });
                progress.record(until, done);
            }
            _ = poll.tick() => {
                // A recovery lapin cannot finish (the broker went away again while it was
                // reconnecting) would leave this worker attached to nothing, for good.
                if !recovering(broker, &mut down_since) && broker.is_recovering() {
                    break Err(BrokerError::RecoveryStalled(RECOVERY_GRACE));
                }
                if !tasks.is_empty() || *until == Until::Shutdown {
                    continue;
                }
                if !may_stop(until, &progress.campaign_batches) && !campaign_settled(until, deps).await {
                    idle_rounds = 0;
                    continue;
                }
                match queues_empty(broker).await {
                    Ok(true) => {
                        idle_rounds += 1;
                        if idle_rounds >= IDLE_ROUNDS {
                            info!("queues empty and nothing in flight; exiting");
                            break Ok(());
                        }
                    }
                    Ok(false) => idle_rounds = 0,
                    // lapin is recovering the connection; the consumer resumes when it is back.
                    Err(_) if recovering(broker, &mut down_since) => idle_rounds = 0,
                    Err(e) => break Err(e),
                }
            }
        }
    };
    readiness.stopped();
    // Stop new deliveries, finish (and ack) what is in flight, then let the rest go back.
    if outcome.is_ok() {
        let _ = subscription.cancel().await;
    }
    let drain = async {
        while let Some(done) = tasks.join_next().await {
            if let Ok(done) = done {
                progress.record(until, done);
            }
        }
    };
    match deps.drain_bound().filter(|_| shutdown.is_cancelled()) {
        Some(bound) => {
            if tokio::time::timeout(bound, drain).await.is_err() {
                // Their deliveries are unacked: the broker hands them to another worker.
                warn!(
                    batches = tasks.len(),
                    bound_ms = bound.as_millis() as u64,
                    "sends still in flight at the shutdown bound; their batches go back to the queue"
                );
                tasks.abort_all();
            }
        }
        None => drain.await,
    }
    subscription.close().await;
    outcome
}

/// What the loop has done so far, across reconnections.
#[derive(Default)]
struct Progress {
    report: Report,
    /// Batch ids of the campaign `Until::CampaignDone` waits for, acked at their first attempt.
    campaign_batches: HashSet<String>,
    live: Live,
}

impl Progress {
    fn record(&mut self, until: &Until, done: Handled) {
        self.report.merge(&done.report);
        self.live.add(&done.report);
        if let (Until::CampaignDone { campaign, .. }, true, Some((done_campaign, batch))) =
            (until, done.acked, done.first)
            && done_campaign == *campaign
        {
            self.campaign_batches.insert(batch);
        }
    }
}

/// How long lapin may try to recover a connection before the supervisor takes over.
const RECOVERY_GRACE: Duration = Duration::from_secs(60);

/// True while lapin's auto-recovery is under way (and within its grace period): the session
/// waits rather than opening a second connection beside the one being recovered.
fn recovering(broker: &Broker, down_since: &mut Option<Instant>) -> bool {
    if !broker.is_recovering() {
        *down_since = None;
        return false;
    }
    let since = *down_since.get_or_insert_with(|| {
        info!("RabbitMQ connection lost; lapin is recovering it");
        Instant::now()
    });
    since.elapsed() < RECOVERY_GRACE
}

/// Whether the loop may end once idle: always with `Until::Idle`; with `Until::CampaignDone`
/// once every batch of the campaign was acked here (its retries then drain like any other
/// work) — or, see [`campaign_settled`], once the ledger has every send settled.
fn may_stop(until: &Until, campaign_batches: &HashSet<String>) -> bool {
    match until {
        Until::Shutdown => false,
        Until::Idle => true,
        Until::CampaignDone { batches, .. } => campaign_batches.len() as u64 >= *batches,
    }
}

/// With `Until::CampaignDone` and a ledger: whether every send of the campaign is delivered,
/// dead or cancelled, whichever worker did it — other workers on the same queue may have taken
/// most of the batches, and their acks never reach this process.
async fn campaign_settled<E: Sender, P: Sender>(until: &Until, deps: &Deps<E, P>) -> bool {
    let (Until::CampaignDone { campaign, .. }, Some(ledger)) = (until, deps.ledger()) else {
        return false;
    };
    ledger
        .status(campaign)
        .await
        .is_ok_and(|status| status.total().settled())
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
/// A panic while processing requeues it too: after `x-delivery-limit` deliveries the broker
/// dead-letters it, and the worker stays up.
async fn handle<E: Sender, P: Sender>(
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
