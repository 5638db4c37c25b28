//! One batch → sends → a `Verdict`: the pure step of the worker, with no broker in sight.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use futures::future::join_all;
use tokio::sync::Semaphore;

use crate::batch::{Batch, Failure, Recipient};
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

/// What the daemon must do with a processed batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Everything owed was delivered: ack.
    Delivered(Report),
    /// Some recipient × channel pairs failed: publish `dead_letter` (the failed recipients and
    /// their `failures`) to the dead-letter queue with `reason`, confirmed, then ack.
    DeadLetter {
        /// What happened.
        report: Report,
        /// The failed recipients with per-recipient reasons.
        dead_letter: Box<Batch>,
        /// Short reason for the `x-sunset-error` header.
        reason: String,
    },
}

impl Verdict {
    /// The report, whatever the verdict.
    pub fn report(&self) -> &Report {
        match self {
            Verdict::Delivered(report) | Verdict::DeadLetter { report, .. } => report,
        }
    }
}

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
    ) -> Deps<E, P> {
        Deps {
            renderers: Mutex::default(),
            templates_dir,
            default_locale,
            email,
            push,
            limits,
            sends: Semaphore::new(concurrency.max(1)),
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

    async fn send(&self, channel: Channel, delivery: Delivery<'_>) -> Outcome {
        let domain = delivery.recipient.email.as_ref().map(|e| e.domain());
        self.limits.acquire(channel, domain).await;
        let Ok(_permit) = self.sends.acquire().await else {
            return Outcome::transient("worker is shutting down");
        };
        match channel {
            Channel::Email => self.email.send(delivery).await,
            Channel::Push => self.push.send(delivery).await,
        }
    }
}

/// One recipient's notice, or why it could not be rendered.
type Rendered = Result<Notice, String>;

/// Renders and sends every recipient × channel of `batch` concurrently (rate limits and the
/// concurrency bound permitting) and decides what the batch still owes.
pub async fn process_batch<E: Sender, P: Sender>(batch: &Batch, deps: &Deps<E, P>) -> Verdict {
    let renderer = deps.renderer(&batch.template);
    let notices: Vec<Rendered> = batch
        .recipients
        .iter()
        .map(|recipient| match &renderer {
            Ok(renderer) => renderer
                .render(&batch.vars, recipient, &batch.channels)
                .map_err(|e| format!("render: {e}")),
            Err(e) => Err(format!("template: {e}")),
        })
        .collect();

    let mut report = Report {
        batches: 1,
        ..Report::default()
    };
    let mut sends = Vec::new();
    let mut failures = Vec::new();
    for (recipient, notice) in batch.recipients.iter().zip(&notices) {
        for &channel in &batch.channels {
            if channel == Channel::Email && recipient.email.is_none() {
                report.no_email += 1;
                continue;
            }
            match notice {
                Ok(notice) => sends.push(async move {
                    let delivery = Delivery {
                        campaign_id: &batch.campaign_id,
                        recipient,
                        notice,
                    };
                    (
                        recipient,
                        channel,
                        notice.locale.as_str(),
                        deps.send(channel, delivery).await,
                    )
                }),
                Err(reason) => {
                    report.count(channel, "-", false);
                    failures.push(failure(recipient, channel, reason.clone()));
                }
            }
        }
    }
    for (recipient, channel, locale, outcome) in join_all(sends).await {
        match outcome {
            Outcome::Delivered => report.count(channel, locale, true),
            Outcome::Transient { reason, .. } | Outcome::Permanent { reason } => {
                report.count(channel, locale, false);
                failures.push(failure(recipient, channel, reason));
            }
        }
    }
    verdict(batch, report, failures)
}

fn failure(recipient: &Recipient, channel: Channel, error: String) -> Failure {
    Failure {
        user_id: recipient.user_id.clone(),
        channel,
        error,
    }
}

/// Delivered when nothing failed; otherwise a dead letter of exactly the failed recipients.
fn verdict(batch: &Batch, report: Report, failures: Vec<Failure>) -> Verdict {
    if failures.is_empty() {
        return Verdict::Delivered(report);
    }
    let failed: Vec<Recipient> = batch
        .recipients
        .iter()
        .filter(|r| failures.iter().any(|f| f.user_id == r.user_id))
        .cloned()
        .collect();
    let reason = if failures.len() == 1 {
        failures[0].error.clone()
    } else {
        format!(
            "{} sends failed; first: {}",
            failures.len(),
            failures[0].error
        )
    };
    Verdict::DeadLetter {
        report,
        dead_letter: Box::new(Batch {
            recipients: failed,
            failures,
            ..batch.clone()
        }),
        reason,
    }
}
