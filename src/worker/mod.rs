//! One batch → sends → a `Verdict`: the pure step of the worker, with no broker in sight.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use chrono::{DateTime, FixedOffset, Utc};

use futures::future::join_all;
use tokio::sync::Semaphore;

use crate::batch::{Batch, UserId};
use crate::channel::{Channel, Delivery, Outcome, Sender};
use crate::events;
use crate::ledger::{CampaignState, Claims, Entry, Ledger, Mark, Pair};
use crate::limit::Limits;
use crate::render::{BatchCache, Notice, Renderer, TemplateError, TemplateName};

mod owed;

pub use owed::{DeadLetterKind, Owed, RetryPolicy};
use owed::{Failed, RENDER_PREFIX, TEMPLATE_PREFIX, failure, held_back, hold, owed};

/// Counts for one channel and locale.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Accepted by the relay or gateway.
    pub delivered: u64,
    /// Not delivered (transient or permanent).
    pub failed: u64,
}

/// What happened in one or more batches, per channel and template locale.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Batches processed.
    pub batches: u64,
    /// Counts keyed by channel and locale (`"-"` when nothing was rendered).
    pub counts: BTreeMap<(Channel, String), Counts>,
    /// Recipients with no email address, for whom the email channel was skipped.
    pub no_email: u64,
}

impl Report {
    /// Adds another report's numbers to this one.
    pub fn merge(&mut self, other: &Report) {
        self.batches += other.batches;
        self.no_email += other.no_email;
        for (key, counts) in &other.counts {
            let entry = self.counts.entry(key.clone()).or_default();
            entry.delivered += counts.delivered;
            entry.failed += counts.failed;
        }
    }

    /// Totals per channel.
    pub fn by_channel(&self) -> BTreeMap<Channel, Counts> {
        let mut totals: BTreeMap<Channel, Counts> = BTreeMap::new();
        for ((channel, _), counts) in &self.counts {
            let entry = totals.entry(*channel).or_default();
            entry.delivered += counts.delivered;
            entry.failed += counts.failed;
        }
        totals
    }

    fn count(&mut self, channel: Channel, locale: &str, delivered: bool) {
        let entry = self
            .counts
            .entry((channel, locale.to_string()))
            .or_default();
        if delivered {
            entry.delivered += 1;
        } else {
            entry.failed += 1;
        }
    }
}

/// What became of a batch: the numbers, the pairs delivered, and what it still owes. The
/// daemon publishes everything owed (confirmed), then acks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Verdict {
    /// Counts per channel and locale.
    pub report: Report,
    /// Every recipient × channel delivered now or before.
    pub delivered: Vec<(UserId, Channel)>,
    /// Retries and dead letters to publish before the ack.
    pub owed: Vec<Owed>,
}

/// The reason recorded for sends not made because the batch's deadline passed.
pub const DEADLINE: &str = "deadline";

/// What `process_batch` needs: templates, senders, limits and the bound on sends in flight.
pub struct Deps<E, P> {
    /// Renderers by template, loaded on first use from `templates_dir`.
    renderers: Mutex<HashMap<TemplateName, Arc<Renderer>>>,
    templates_dir: PathBuf,
    default_locale: String,
    /// The email transport.
    pub email: E,
    /// The push transport.
    pub push: P,
    /// Rate limits per channel and domain.
    pub limits: Arc<Limits>,
    /// `worker.concurrency`: sends in flight in this process, across batches.
    sends: Semaphore,
    /// Attempts and delays.
    pub retry: RetryPolicy,
    /// The delivery ledger; `None` sends without one (`ledger.url = ""`).
    ledger: Option<Arc<Ledger>>,
}

impl<E: Sender, P: Sender> Deps<E, P> {
    /// Dependencies with templates from `templates_dir` and at most `concurrency` sends in flight.
    pub fn new(
        templates_dir: PathBuf,
        default_locale: String,
        email: E,
        push: P,
        limits: Arc<Limits>,
        concurrency: usize,
        retry: RetryPolicy,
    ) -> Deps<E, P> {
        Deps {
            renderers: Mutex::default(),
            templates_dir,
            default_locale,
            email,
            push,
            limits,
            sends: Semaphore::new(concurrency.max(1)),
            retry,
            ledger: None,
        }
    }

    /// The same, asking `ledger` before each send and recording every outcome in it.
    pub fn with_ledger(mut self, ledger: Arc<Ledger>) -> Deps<E, P> {
        self.ledger = Some(ledger);
        self
    }

    /// The ledger, if there is one.
    pub fn ledger(&self) -> Option<&Arc<Ledger>> {
        self.ledger.as_ref()
    }

    /// The renderer of a template, loaded once and shared.
    pub fn renderer(&self, name: &TemplateName) -> Result<Arc<Renderer>, TemplateError> {
        let mut renderers = self
            .renderers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(renderer) = renderers.get(name) {
            return Ok(Arc::clone(renderer));
        }
        let renderer = Arc::new(Renderer::load(
            &self.templates_dir,
            name,
            &self.default_locale,
        )?);
        renderers.insert(name.clone(), Arc::clone(&renderer));
        Ok(renderer)
    }

    /// Whether a batch may be sent now, and which of its pairs are this worker's to send.
    async fn admit(&self, batch: &Batch, pairs: &[Pair]) -> Admit {
        let Some(ledger) = &self.ledger else {
            return Admit::Go(Claims::default());
        };
        match ledger.state(&batch.campaign_id).await {
            Ok(CampaignState::Running) => {}
            Ok(CampaignState::Paused) => return Admit::Hold("campaign paused".into()),
            Ok(CampaignState::Cancelled) => return Admit::Cancelled,
            Err(e) => return Admit::Hold(format!("ledger unavailable: {e}")),
        }
        match ledger.claim(&batch.campaign_id, pairs).await {
            Ok(claims) => Admit::Go(claims),
            Err(e) => Admit::Hold(format!("ledger unavailable: {e}")),
        }
    }

    /// Records outcomes in the ledger, if there is one; a failure is logged (the sends stand).
    async fn note(&self, entries: Vec<Entry>) {
        if let Some(ledger) = &self.ledger
            && !entries.is_empty()
            && let Err(e) = ledger.record_all(entries).await
        {
            tracing::error!(error = %e, "could not record outcomes in the ledger");
        }
    }

    /// Waits for the rate limits, checks the campaign is still running, sends, and records the
    /// outcome before giving back the send slot.
    async fn send(
        &self,
        channel: Channel,
        delivery: Delivery<'_>,
        deadline: Option<DateTime<FixedOffset>>,
    ) -> Sent {
        let domain = delivery.recipient.email.as_ref().map(|e| e.domain());
        let waiting = Instant::now();
        self.limits.acquire(channel, domain).await;
        events::rate_limit_waited(channel, waiting.elapsed());
        let pair = || Pair {
            user_id: delivery.recipient.user_id.clone(),
            channel,
            locale: delivery.notice.locale.clone(),
        };
        let entry = |mark: Mark, error: Option<String>| Entry {
            campaign: delivery.campaign_id.clone(),
            pair: pair(),
            mark,
            error,
        };
        if let Some(ledger) = &self.ledger {
            match ledger.state(delivery.campaign_id).await {
                Ok(CampaignState::Running) => {}
                Ok(CampaignState::Paused) => {
                    let reason = "campaign paused";
                    self.note(vec![entry(Mark::Failed, Some(reason.into()))])
                        .await;
                    return Sent::Held(reason.into());
                }
                Ok(CampaignState::Cancelled) => {
                    self.note(vec![entry(Mark::Cancelled, None)]).await;
                    return Sent::Cancelled;
                }
                // The claim stays ours; the next claim takes it back once this batch is done.
                Err(e) => return Sent::Held(format!("ledger unavailable: {e}")),
            }
        }
        // The wait for the rate limit may have outlasted the deadline.
        if passed(deadline) {
            let outcome = Outcome::permanent(DEADLINE);
            self.note(vec![entry(Mark::Dead, Some(DEADLINE.into()))])
                .await;
            return Sent::Outcome(outcome);
        }
        let Ok(_permit) = self.sends.acquire().await else {
            return Sent::Outcome(Outcome::transient("worker is shutting down"));
        };
        let _in_flight = events::InFlight::begin();
        let sending = Instant::now();
        // Boxed after the permit: a send future is kilobytes, and a batch queues many at once.
        let outcome = match channel {
            Channel::Email => Box::pin(self.email.send(delivery)).await,
            Channel::Push => Box::pin(self.push.send(delivery)).await,
        };
        events::send_took(channel, sending.elapsed());
        if let Outcome::Transient {
            throttled: true, ..
        } = outcome
        {
            self.limits.throttled(channel, domain);
        }
        if let Some(ledger) = &self.ledger {
            let (mark, error) = match &outcome {
                Outcome::Delivered => (Mark::Delivered, None),
                Outcome::Transient { reason, .. } => (Mark::Failed, Some(reason.clone())),
                Outcome::Permanent { reason } | Outcome::Unknown { reason } => {
                    (Mark::Dead, Some(reason.clone()))
                }
            };
            // The slot is held until the outcome is written: a kill leaves at most
            // `worker.concurrency` sends made but not recorded.
            if let Err(e) = ledger.record(entry(mark, error)).await {
                tracing::error!(user = %delivery.recipient.user_id, %channel, error = %e, "sent, but the ledger did not record it");
            }
        }
        outcome.into()
    }
}

/// Tells the ledger a batch is done with its claim when dropped, also on a panic.
struct Finished<'a> {
    ledger: Option<&'a Ledger>,
    token: i64,
}

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        if let Some(ledger) = self.ledger {
            ledger.finished(self.token);
        }
    }
}

/// Whether a batch may go out.
enum Admit {
    /// Yes; the claims say which pairs to skip.
    Go(Claims),
    /// Not now (paused, or the ledger is away): the whole batch waits in a delay queue.
    Hold(String),
    /// Never: the campaign is cancelled.
    Cancelled,
}

/// What became of one recipient × channel.
enum Sent {
    /// It was tried.
    Outcome(Outcome),
    /// Not tried: the campaign was paused or the ledger went away meanwhile; try later.
    Held(String),
    /// Not tried: the campaign was cancelled.
    Cancelled,
}

impl From<Outcome> for Sent {
    fn from(outcome: Outcome) -> Sent {
        Sent::Outcome(outcome)
    }
}

fn passed(deadline: Option<DateTime<FixedOffset>>) -> bool {
    deadline.is_some_and(|deadline| Utc::now() >= deadline)
}

/// One recipient's notice, or why it could not be rendered.
type Rendered = Result<Notice, String>;

/// Renders and sends every recipient × channel of `batch` concurrently (rate limits and the
/// concurrency bound permitting), skipping pairs in `already` (delivered before, as this
/// process remembers) and pairs the ledger says are delivered or being sent elsewhere, and
/// decides what the batch still owes. `attempt` is the delivery's `x-sunset-attempt`.
pub async fn process_batch<E: Sender, P: Sender>(
    batch: &Batch,
    attempt: u32,
    already: &HashSet<(UserId, Channel)>,
    deps: &Deps<E, P>,
) -> Verdict {
    let renderer = deps.renderer(&batch.template);
    let late = passed(batch.deadline);
    let mut alike = BatchCache::default();
    let notices: Vec<Rendered> = batch
        .recipients
        .iter()
        .map(|recipient| match &renderer {
            _ if late => Err(DEADLINE.to_string()),
            Ok(renderer) => renderer
                .render_cached(&batch.vars, recipient, &batch.channels, &mut alike)
                .map_err(|e| format!("{RENDER_PREFIX}{e}")),
            Err(e) => Err(format!("{TEMPLATE_PREFIX}{e}")),
        })
        .collect();

    let mut verdict = Verdict {
        report: Report {
            batches: 1,
            ..Report::default()
        },
        ..Verdict::default()
    };
    // The pairs still to send, with their notice and the ledger's view of them.
    // Sized up front: `sends` holds a future per pair, and growing it moved them all each time.
    let most = batch.recipients.len() * batch.channels.len();
    let mut todo = Vec::with_capacity(most);
    let mut pairs = Vec::with_capacity(most);
    for (recipient, notice) in batch.recipients.iter().zip(&notices) {
        for &channel in &batch.channels {
            if channel == Channel::Email && recipient.email.is_none() {
                verdict.report.no_email += 1;
                continue;
            }
            let locale = notice.as_ref().map_or("-", |n| n.locale.as_str());
            if !already.is_empty() && already.contains(&(recipient.user_id.clone(), channel)) {
                verdict.report.count(channel, locale, true);
                verdict.delivered.push((recipient.user_id.clone(), channel));
                continue;
            }
            todo.push((recipient, channel, notice));
            // Only the ledger reads them.
            if deps.ledger.is_some() {
                pairs.push(Pair {
                    user_id: recipient.user_id.clone(),
                    channel,
                    locale: locale.to_string(),
                });
            }
        }
    }
    let claims = match deps.admit(batch, &pairs).await {
        Admit::Go(claims) => claims,
        Admit::Hold(reason) => {
            tracing::info!(%reason, "batch held back");
            verdict.report = Report::default();
            verdict.owed = hold(batch, attempt, &reason, &deps.retry);
            return verdict;
        }
        Admit::Cancelled => {
            tracing::info!("campaign cancelled; recording the batch's recipients as cancelled");
            let entries = pairs
                .into_iter()
                .map(|pair| Entry {
                    campaign: batch.campaign_id.clone(),
                    pair,
                    mark: Mark::Cancelled,
                    error: None,
                })
                .collect();
            deps.note(entries).await;
            return verdict;
        }
    };
    let _finished = Finished {
        ledger: deps.ledger.as_deref(),
        token: claims.token,
    };
    let mut sends = Vec::with_capacity(todo.len());
    let mut held = Vec::new();
    let contested = !claims.all_ours();
    for (recipient, channel, notice) in todo {
        let locale = notice.as_ref().map_or("-", |n| n.locale.as_str());
        if contested {
            let key = (recipient.user_id.clone(), channel);
            if claims.delivered.contains(&key) {
                verdict.report.count(channel, locale, true);
                verdict.delivered.push(key);
                continue;
            } else if claims.held.contains(&key) {
                held.push(failure(
                    recipient,
                    channel,
                    "being sent by another worker".into(),
                ));
                continue;
            } else if claims.cancelled.contains(&key) {
                continue;
            }
        }
        sends.push(async move {
            let sent = match notice {
                Ok(notice) => {
                    let delivery = Delivery {
                        campaign_id: &batch.campaign_id,
                        recipient,
                        notice,
                    };
                    deps.send(channel, delivery, batch.deadline).await
                }
                Err(reason) => {
                    deps.note(vec![Entry {
                        campaign: batch.campaign_id.clone(),
                        pair: Pair {
                            user_id: recipient.user_id.clone(),
                            channel,
                            locale: "-".into(),
                        },
                        mark: Mark::Dead,
                        error: Some(reason.clone()),
                    }])
                    .await;
                    Sent::Outcome(Outcome::permanent(reason.clone()))
                }
            };
            (recipient, channel, locale, sent)
        });
    }
    let mut failed = Vec::new();
    for (recipient, channel, locale, sent) in join_all(sends).await {
        let outcome = match sent {
            Sent::Outcome(outcome) => outcome,
            Sent::Held(reason) => {
                held.push(failure(recipient, channel, reason));
                continue;
            }
            Sent::Cancelled => continue,
        };
        verdict
            .report
            .count(channel, locale, outcome == Outcome::Delivered);
        events::sent(&recipient.user_id, channel, locale, &outcome);
        match outcome {
            Outcome::Delivered => verdict.delivered.push((recipient.user_id.clone(), channel)),
            Outcome::Transient {
                reason,
                retry_after,
                ..
            } => {
                failed.push(Failed {
                    failure: failure(recipient, channel, reason),
                    retry_after: Some(retry_after),
                    locale: locale.to_string(),
                });
            }
            Outcome::Permanent { reason } | Outcome::Unknown { reason } => {
                failed.push(Failed {
                    failure: failure(recipient, channel, reason),
                    retry_after: None,
                    locale: locale.to_string(),
                });
            }
        }
    }
    // Transient failures that will not be retried (attempts exhausted, deadline) are dead now.
    let given_up: Vec<Entry> = failed
        .iter()
        .filter(|f| f.retry_after.is_some())
        .map(|f| Entry {
            campaign: batch.campaign_id.clone(),
            pair: Pair {
                user_id: f.failure.user_id.clone(),
                channel: f.failure.channel,
                locale: f.locale.clone(),
            },
            mark: Mark::Dead,
            error: Some(f.failure.error.clone()),
        })
        .collect();
    verdict.owed = owed(batch, attempt, failed, &deps.retry);
    let dead_letters: HashSet<(&UserId, Channel)> = verdict
        .owed
        .iter()
        .filter_map(|owed| match owed {
            Owed::DeadLetter { batch, .. } => Some(batch.failures.iter()),
            Owed::Retry { .. } => None,
        })
        .flatten()
        .map(|f| (&f.user_id, f.channel))
        .collect();
    let given_up = given_up
        .into_iter()
        .filter(|e| dead_letters.contains(&(&e.pair.user_id, e.pair.channel)))
        .collect();
    deps.note(given_up).await;
    if !held.is_empty() {
        verdict
            .owed
            .extend(held_back(batch, attempt, held, &deps.retry));
    }
    verdict
}
