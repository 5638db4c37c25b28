//! One batch → sends → a `Verdict`: the pure step of the worker, with no broker in sight.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};

use futures::future::join_all;
use tokio::sync::Semaphore;

use crate::batch::{Batch, Failure, Recipient, UserId};
use crate::channel::{Channel, Delivery, Outcome, Sender};
use crate::limit::Limits;
use crate::render::{Notice, Renderer, TemplateError, TemplateName};

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

/// One thing a processed batch still owes before it may be acked.
#[derive(Debug, Clone, PartialEq)]
pub enum Owed {
    /// Transient failures: publish `batch` (just those recipient × channel pairs) to delay queue
    /// number `queue` (0-based index into `worker.retry_delays_ms`) with attempt `attempt`.
    Retry {
        /// The pairs to try again.
        batch: Box<Batch>,
        /// Which delay queue.
        queue: usize,
        /// The attempt number the retry will be.
        attempt: u32,
    },
    /// Permanent failures, exhausted attempts or a passed deadline: publish `batch` (failed
    /// recipients with per-recipient `failures`) to the dead-letter queue.
    DeadLetter {
        /// The failed recipients and why.
        batch: Box<Batch>,
        /// Short reason for the `x-sunset-error` header.
        reason: String,
        /// The attempt that failed last, for the `x-sunset-attempt` header.
        attempt: u32,
    },
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
        }
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

    async fn send(
        &self,
        channel: Channel,
        delivery: Delivery<'_>,
        deadline: Option<DateTime<FixedOffset>>,
    ) -> Outcome {
        let domain = delivery.recipient.email.as_ref().map(|e| e.domain());
        self.limits.acquire(channel, domain).await;
        // The wait for the rate limit may have outlasted the deadline.
        if passed(deadline) {
            return Outcome::permanent(DEADLINE);
        }
        let Ok(_permit) = self.sends.acquire().await else {
            return Outcome::transient("worker is shutting down");
        };
        // Boxed after the permit: a send future is kilobytes, and a batch queues many at once.
        let outcome = match channel {
            Channel::Email => Box::pin(self.email.send(delivery)).await,
            Channel::Push => Box::pin(self.push.send(delivery)).await,
        };
        if let Outcome::Transient {
            throttled: true, ..
        } = outcome
        {
            self.limits.throttled(channel, domain);
        }
        outcome
    }
}

fn passed(deadline: Option<DateTime<FixedOffset>>) -> bool {
    deadline.is_some_and(|deadline| Utc::now() >= deadline)
}

/// How a batch is retried: `worker.max_attempts` and `worker.retry_delays_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per recipient × channel before it is dead-lettered.
    pub max_attempts: u32,
    /// Delay of each delay queue, in order.
    pub delays: Vec<Duration>,
}

impl RetryPolicy {
    /// The delay queue for the retry after attempt `attempt`: the attempt's own delay, or a
    /// later (longer) one if the peer asked to wait at least `at_least`.
    pub fn queue(&self, attempt: u32, at_least: Duration) -> usize {
        let last = self.delays.len().saturating_sub(1);
        let mut queue = (attempt.saturating_sub(1) as usize).min(last);
        while queue < last && self.delays[queue] < at_least {
            queue += 1;
        }
        queue
    }
}

/// One recipient's notice, or why it could not be rendered.
type Rendered = Result<Notice, String>;

/// A failed send, and whether it is worth trying again (and not before when).
struct Failed {
    failure: Failure,
    retry_after: Option<Option<Duration>>,
}

/// Renders and sends every recipient × channel of `batch` concurrently (rate limits and the
/// concurrency bound permitting), skipping pairs in `already` (delivered before), and decides
/// what the batch still owes. `attempt` is the delivery's `x-sunset-attempt`.
pub async fn process_batch<E: Sender, P: Sender>(
    batch: &Batch,
    attempt: u32,
    already: &HashSet<(UserId, Channel)>,
    deps: &Deps<E, P>,
) -> Verdict {
    let renderer = deps.renderer(&batch.template);
    let late = passed(batch.deadline);
    let notices: Vec<Rendered> = batch
        .recipients
        .iter()
        .map(|recipient| match &renderer {
            _ if late => Err(DEADLINE.to_string()),
            Ok(renderer) => renderer
                .render(&batch.vars, recipient, &batch.channels)
                .map_err(|e| format!("render: {e}")),
            Err(e) => Err(format!("template: {e}")),
        })
        .collect();

    let mut verdict = Verdict {
        report: Report {
            batches: 1,
            ..Report::default()
        },
        ..Verdict::default()
    };
    let mut sends = Vec::new();
    let mut failed = Vec::new();
    for (recipient, notice) in batch.recipients.iter().zip(&notices) {
        for &channel in &batch.channels {
            if channel == Channel::Email && recipient.email.is_none() {
                verdict.report.no_email += 1;
                continue;
            }
            let locale = notice.as_ref().map_or("-", |n| n.locale.as_str());
            if already.contains(&(recipient.user_id.clone(), channel)) {
                verdict.report.count(channel, locale, true);
                verdict.delivered.push((recipient.user_id.clone(), channel));
                continue;
            }
            match notice {
                Ok(notice) => sends.push(async move {
                    let delivery = Delivery {
                        campaign_id: &batch.campaign_id,
                        recipient,
                        notice,
                    };
                    let outcome = deps.send(channel, delivery, batch.deadline).await;
                    (recipient, channel, notice.locale.as_str(), outcome)
                }),
                Err(reason) => {
                    verdict.report.count(channel, "-", false);
                    failed.push(Failed {
                        failure: failure(recipient, channel, reason.clone()),
                        retry_after: None,
                    });
                }
            }
        }
    }
    for (recipient, channel, locale, outcome) in join_all(sends).await {
        verdict
            .report
            .count(channel, locale, outcome == Outcome::Delivered);
        match outcome {
            Outcome::Delivered => verdict.delivered.push((recipient.user_id.clone(), channel)),
            Outcome::Transient {
                reason,
                retry_after,
                ..
            } => {
                tracing::warn!(user = %recipient.user_id, %channel, %reason, "send failed, will retry");
                failed.push(Failed {
                    failure: failure(recipient, channel, reason),
                    retry_after: Some(retry_after),
                });
            }
            Outcome::Permanent { reason } => {
                tracing::warn!(user = %recipient.user_id, %channel, %reason, "send failed for good");
                failed.push(Failed {
                    failure: failure(recipient, channel, reason),
                    retry_after: None,
                });
            }
        }
    }
    verdict.owed = owed(batch, attempt, failed, &deps.retry);
    verdict
}

fn failure(recipient: &Recipient, channel: Channel, error: String) -> Failure {
    Failure {
        user_id: recipient.user_id.clone(),
        channel,
        error,
    }
}

/// Transient failures become retries on the delay queue their attempt and requested wait call
/// for — unless attempts are exhausted or the retry would come after the deadline; everything
/// else becomes one dead letter.
fn owed(batch: &Batch, attempt: u32, failed: Vec<Failed>, policy: &RetryPolicy) -> Vec<Owed> {
    let mut retry = Vec::new();
    let mut dead = Vec::new();
    let mut at_least = Duration::ZERO;
    for Failed {
        mut failure,
        retry_after,
    } in failed
    {
        match retry_after {
            Some(wait) if attempt < policy.max_attempts && !policy.delays.is_empty() => {
                at_least = at_least.max(wait.unwrap_or_default());
                retry.push(failure);
            }
            Some(_) => {
                failure.error = format!("gave up after {attempt} attempts: {}", failure.error);
                dead.push(failure);
            }
            None => dead.push(failure),
        }
    }
    let mut owed = Vec::new();
    if !retry.is_empty() {
        let queue = policy.queue(attempt, at_least);
        let delay =
            chrono::Duration::from_std(policy.delays[queue]).unwrap_or(chrono::Duration::MAX);
        let too_late = batch
            .deadline
            .is_some_and(|deadline| Utc::now() + delay >= deadline);
        if too_late {
            dead.extend(retry.into_iter().map(|mut f| {
                f.error = format!(
                    "{DEADLINE} (next try would be after it; last error: {})",
                    f.error
                );
                f
            }));
        } else {
            owed.extend(batch.regroup(&retry).into_iter().map(|batch| Owed::Retry {
                batch: Box::new(batch),
                queue,
                attempt: attempt + 1,
            }));
        }
    }
    if !dead.is_empty() {
        let reason = dead_letter_reason(&dead);
        let recipients = batch
            .recipients
            .iter()
            .filter(|r| dead.iter().any(|f| f.user_id == r.user_id))
            .cloned()
            .collect();
        owed.push(Owed::DeadLetter {
            batch: Box::new(Batch {
                recipients,
                failures: dead,
                ..batch.clone()
            }),
            reason,
            attempt,
        });
    }
    owed
}

/// `deadline` when every failure is the deadline, the failure itself when there is one, else a count.
fn dead_letter_reason(dead: &[Failure]) -> String {
    if dead.iter().all(|f| f.error.starts_with(DEADLINE)) {
        DEADLINE.to_string()
    } else if let [only] = dead {
        only.error.clone()
    } else {
        format!("{} sends failed; first: {}", dead.len(), dead[0].error)
    }
}
