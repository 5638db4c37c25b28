//! The worker loop: consume batches, run `worker::process_batch`, publish what is owed, ack;
//! reconnect when the broker goes away; stop on shutdown, when idle, or when a campaign is done.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::batch::CampaignId;
use crate::broker::{Broker, BrokerError, Message, QueueNames};
use crate::channel::Sender;
use crate::config::BrokerConfig;
use crate::worker::{Deps, Report};

mod handle;
mod in_process;
mod settled;

use handle::{Handled, handle};
pub use in_process::run_in_process;
use settled::Settled;

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
                    tasks.spawn(handle(broker, deps, settled, Message::from_delivery(delivery)));
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
    finish(&mut tasks, deps, shutdown, progress, until).await;
    subscription.close().await;
    outcome
}

/// Waits for the batches in flight and records what they came to; on shutdown for at most
/// the drain bound, then lets the rest go (unacked, they come again).
async fn finish<E: Sender, P: Sender>(
    tasks: &mut JoinSet<Handled>,
    deps: &Deps<E, P>,
    shutdown: &CancellationToken,
    progress: &mut Progress,
    until: &Until,
) {
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
