//! One batch → sends → a `Verdict`, with no broker in sight: a pure plan (pairs, notices),
//! admission by the ledger (state, claims), the sends, and a pure decision (outcomes → what
//! the batch owes).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, Utc};

use futures::future::join_all;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::batch::{Batch, EmailAddress, Recipient, UserId};
use crate::channel::{Channel, Delivery, Outcome, Sender};
use crate::events;
use crate::ledger::{CampaignState, Claims, Entry, Ledger, LedgerError, Mark, Pair, Recorded};
use crate::limit::Limits;
use crate::render::{BatchCache, Notice, Renderer, TemplateError, TemplateName};

mod books;
mod breaker;
mod lanes;
mod owed;
mod plan;

pub use crate::dead_letter::DeadLetterKind;
pub use books::Books;
pub use breaker::{BreakerPolicy, Breakers, OpenBreaker};
use breaker::{Gate, Probe};
use owed::{Failed, Fate, failure, held_back, hold, owed, rejected};
pub use owed::{Owed, RetryPolicy};
use plan::{Item, Plan, Unsendable, plan};

/// What became of the recipients of one channel: each counts once, by its final fate in this
/// process (a transient failure with a retry scheduled is not counted until the retry decides).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Accepted by the relay or gateway (here, or before as the ledger or a redelivery says).
    pub delivered: u64,
    /// Dead-lettered: refused for good, attempts exhausted, deadline passed, unrenderable.
    pub dead: u64,
    /// Handed over with no answer: may or may not have arrived; dead-lettered as unknown.
    pub unknown: u64,
    /// Not sent: the address is on the suppression list.
    pub suppressed: u64,
}

/// What happened in one or more batches, per channel: recipients, not attempts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Batches processed.
    pub batches: u64,
    /// Recipients by their fate, per channel.
    pub counts: BTreeMap<Channel, Counts>,
    /// Recipients with no email address, for whom the email channel was skipped.
    pub no_email: u64,
}

impl Report {
    /// Adds another report's numbers to this one.
    pub fn merge(&mut self, other: &Report) {
        self.batches += other.batches;
        self.no_email += other.no_email;
        for (channel, counts) in &other.counts {
            let entry = self.counts.entry(*channel).or_default();
            entry.delivered += counts.delivered;
            entry.dead += counts.dead;
            entry.unknown += counts.unknown;
            entry.suppressed += counts.suppressed;
        }
    }

    /// Counts the pairs a batch delivered and the ones it dead-letters.
    fn tally(&mut self, delivered: &[(UserId, Channel)], owed: &[Owed]) {
        for (_, channel) in delivered {
            self.counts.entry(*channel).or_default().delivered += 1;
        }
        for owed in owed {
            let Owed::DeadLetter { batch, kinds, .. } = owed else {
                continue;
            };
            for (failure, kind) in batch.failures.iter().zip(kinds) {
                let counts = self.counts.entry(failure.channel).or_default();
                if *kind == DeadLetterKind::Unknown {
                    counts.unknown += 1;
                } else {
                    counts.dead += 1;
                }
            }
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

/// The reason of pairs handed back, untried, because the worker is stopping.
pub const STOPPING: &str = "worker is shutting down";

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
    /// The same bound, for a batch's own sends.
    concurrency: usize,
    /// Attempts and delays.
    pub retry: RetryPolicy,
    /// The delivery ledger; `None` sends without one (`ledger.url = ""`).
    ledger: Option<Arc<Ledger>>,
    /// The ledger as the worker step asks it (a fake in tests).
    books: Option<Arc<dyn Books>>,
    /// Whether each channel's transport answers.
    breakers: Arc<Breakers>,
    /// Cancelled on shutdown: sends not yet started are handed back, untried.
    stopping: CancellationToken,
    /// How long the daemon waits for sends in flight once `stopping` is cancelled.
    drain_bound: Option<Duration>,
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
            concurrency: concurrency.max(1),
            retry,
            ledger: None,
            books: None,
            breakers: Arc::new(Breakers::new(BreakerPolicy::default())),
            stopping: CancellationToken::new(),
            drain_bound: None,
        }
    }

    /// The same, stopping on `stopping`: from then on no send starts — a send waiting for the
    /// rate limits or a slot hands its pair back (held, to a delay queue at the same attempt)
    /// — and the daemon waits at most `bound` for the sends in flight.
    pub fn with_shutdown(mut self, stopping: CancellationToken, bound: Duration) -> Deps<E, P> {
        self.stopping = stopping;
        self.drain_bound = Some(bound);
        self
    }

    /// How long to wait for sends in flight after shutdown; `None` = until they are done.
    pub fn drain_bound(&self) -> Option<Duration> {
        self.drain_bound
    }

    /// The same, with `breakers` (shared with `/readyz`) deciding when a channel is held.
    pub fn with_breakers(mut self, breakers: Arc<Breakers>) -> Deps<E, P> {
        self.breakers = breakers;
        self
    }

    /// The same, asking `ledger` before each send and recording every outcome in it.
    pub fn with_ledger(mut self, ledger: Arc<Ledger>) -> Deps<E, P> {
        self.books = Some(Arc::clone(&ledger) as Arc<dyn Books>);
        self.ledger = Some(ledger);
        self
    }

    /// The same, with `books` standing in for the ledger.
    pub fn with_books(mut self, books: Arc<dyn Books>) -> Deps<E, P> {
        self.books = Some(books);
        self
    }

    /// The channels' breakers.
    pub fn breakers(&self) -> &Arc<Breakers> {
        &self.breakers
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

    /// Whether a batch may be sent now, which of its pairs are this worker's to send, and
    /// which of its addresses are suppressed (asked once for the whole batch, before the claim;
    /// `legal_notice`: unsubscribes do not count).
    async fn admit(&self, batch: &Batch, pairs: &[Pair], legal_notice: bool) -> Admit {
        let Some(books) = &self.books else {
            return Admit::Go(None, HashSet::new());
        };
        let refused = |e: LedgerError| {
            if e.is_unavailable() {
                Admit::Hold(format!("ledger unavailable: {e}"))
            } else {
                Admit::Refused(format!("the ledger refused the batch: {e}"))
            }
        };
        let state = match books
            .state(&batch.campaign_id, batch.template.as_str())
            .await
        {
            Ok(state) => state,
            Err(e) => return refused(e),
        };
        if state == CampaignState::Paused {
            return Admit::Hold("campaign paused".into());
        }
        let addresses: Vec<&EmailAddress> = pairs
            .iter()
            .filter(|p| p.channel == Channel::Email)
            .filter_map(|p| p.address.as_ref())
            .collect();
        let suppressed = if state == CampaignState::Running {
            match books
                .suppressed(&batch.campaign_id, &addresses, legal_notice)
                .await
            {
                Ok(suppressed) => suppressed,
                Err(e) => return refused(e),
            }
        } else {
            HashSet::new()
        };
        match books.claim(&batch.campaign_id, pairs).await {
            Ok(claims) if state == CampaignState::Cancelled => Admit::Cancelled(claims),
            Ok(claims) => Admit::Go(Some(claims), suppressed),
            Err(e) => refused(e),
        }
    }

    /// Records an outcome under `claims`, if there is a ledger. The caller holds the send's slot
    /// until this returns: a kill leaves at most `worker.concurrency` sends unrecorded.
    async fn note(&self, claims: Option<&Claims>, entry: Entry) {
        let (Some(books), Some(claims)) = (&self.books, claims) else {
            return;
        };
        let (user, channel) = (entry.pair.user_id.clone(), entry.pair.channel);
        match books.record(claims, entry).await {
            Ok(Recorded::Written) => {}
            Ok(Recorded::FencedOut) => tracing::warn!(
                %user, %channel,
                "outcome not recorded: the pair was taken over while this worker stalled; its new holder records it"
            ),
            Err(e) => {
                tracing::error!(%user, %channel, error = %e, "the ledger refused the outcome")
            }
        }
    }

    /// Holds the send while the channel's breaker is open (unless it is the probe); waits for
    /// the rate limits and a send slot — or hands the pair back, untried, once the worker is
    /// stopping.
    async fn wait(&self, channel: Channel, domain: Option<&str>) -> Waited<'_> {
        let probe = match self.breakers.gate(channel) {
            Gate::Go(probe) => probe,
            Gate::Hold(reason) => {
                return Waited::Held {
                    error: Some(reason.clone()),
                    reason,
                };
            }
        };
        let waiting = Instant::now();
        // Whatever a domain's pace, a send still waiting when the worker stops never starts.
        // The pace judges a send by when the limits let it go, not when a slot freed up.
        let permit = tokio::select! {
            biased;
            () = self.stopping.cancelled() => None,
            permit = async {
                self.limits.acquire(channel, domain).await;
                let paced = Instant::now();
                events::rate_limit_waited(channel, paced - waiting);
                self.sends.acquire().await.ok().map(|permit| (permit, paced))
            } => permit,
        };
        match permit.filter(|_| !self.stopping.is_cancelled()) {
            Some((permit, paced)) => Waited::Go {
                probe,
                permit,
                paced,
            },
            None => Waited::Held {
                error: None,
                reason: STOPPING.into(),
            },
        }
    }

    /// Sends a pair that `waited`: immediately before sending, checks the campaign's state (at
    /// most a second old), the deadline and the claim's lease; sends, and records the outcome
    /// before giving back the slot. The notice is rendered (by `render`) only now, so a batch
    /// holds the notices of the sends in flight, not one per recipient.
    async fn send(
        &self,
        channel: Channel,
        (recipient, locale): (&Recipient, &str),
        render: impl FnOnce() -> Result<Notice, Unsendable>,
        batch: &Batch,
        claims: Option<&Claims>,
        waited: Waited<'_>,
    ) -> Sent {
        let entry = |mark: Mark, error: Option<String>| Entry {
            campaign: batch.campaign_id.clone(),
            pair: Pair {
                user_id: recipient.user_id.clone(),
                channel,
                locale: locale.to_string(),
                address: None,
            },
            mark,
            error,
        };
        let (_probe, _permit, paced) = match waited {
            Waited::Go {
                probe,
                permit,
                paced,
            } => (probe, permit, paced),
            Waited::Held { error, reason } => {
                self.note(claims, entry(Mark::Held, error)).await;
                return Sent::Held(reason);
            }
        };
        let domain = recipient.email.as_ref().map(|e| e.domain());
        if let (Some(books), Some(claims)) = (&self.books, claims) {
            match books
                .state(&batch.campaign_id, batch.template.as_str())
                .await
            {
                Ok(CampaignState::Running) => {}
                Ok(CampaignState::Paused) => {
                    self.note(claims.into(), entry(Mark::Held, None)).await;
                    return Sent::Held("campaign paused".into());
                }
                Ok(CampaignState::Cancelled) => {
                    self.note(claims.into(), entry(Mark::Cancelled, None)).await;
                    return Sent::Cancelled;
                }
                // The row stays claimed; the next claim takes it back once this batch is done.
                Err(e) => return Sent::Held(format!("ledger unavailable: {e}")),
            }
            if !books.may_send(claims) {
                return Sent::Held(
                    "this worker's lease is not current or outcomes wait for the ledger".into(),
                );
            }
        }
        if passed(batch.deadline) {
            self.note(claims, entry(Mark::Dead, Some(DEADLINE.into())))
                .await;
            return Sent::Unsendable(Unsendable::Deadline);
        }
        let notice = match render() {
            Ok(notice) => notice,
            Err(unsendable) => {
                self.note(claims, entry(Mark::Dead, Some(unsendable.to_string())))
                    .await;
                return Sent::Unsendable(unsendable);
            }
        };
        let delivery = Delivery {
            campaign_id: &batch.campaign_id,
            recipient,
            notice: &notice,
        };
        let _in_flight = events::InFlight::begin();
        let sending = Instant::now();
        let outcome = match channel {
            Channel::Email => self.email.send(delivery).await,
            Channel::Push => self.push.send(delivery).await,
        };
        events::send_took(channel, sending.elapsed());
        self.breakers.record(channel, &outcome);
        // With the breaker off, a transport that does not answer fails sends like any other
        // transient error: they spend attempts, and each is logged.
        let outcome = match outcome {
            Outcome::Unreachable { reason } if self.breakers.off() => Outcome::transient(reason),
            outcome => outcome,
        };
        self.limits.observed(channel, domain, &outcome, paced);
        let (mark, error) = match &outcome {
            Outcome::Delivered => (Mark::Delivered, None),
            Outcome::Transient { reason, .. } => (Mark::Failed, Some(reason.clone())),
            Outcome::Permanent { reason } => (Mark::Dead, Some(reason.clone())),
            // Nothing was handed over, and the recipient is not at fault: no attempt is spent.
            Outcome::Unreachable { reason } => (Mark::Held, Some(reason.clone())),
            // Push may be retried: the Idempotency-Key lets a gateway that honours it drop the
            // second copy. Email has no such key: an unknown email is not sent again unless asked.
            Outcome::Unknown { reason } if channel == Channel::Push => {
                (Mark::Failed, Some(reason.clone()))
            }
            Outcome::Unknown { reason } => (Mark::Unknown, Some(reason.clone())),
        };
        self.note(claims, entry(mark, error)).await;
        Sent::Outcome(outcome)
    }
}

/// Tells the ledger a batch is done with its claim when dropped, also on a panic.
struct Finished<'a> {
    books: &'a dyn Books,
    token: i64,
}

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.books.finished(self.token);
    }
}

/// Whether a batch may go out.
enum Admit {
    /// Yes; the claims (with a ledger) say which pairs to skip, and no email goes to the
    /// suppressed addresses.
    Go(Option<Claims>, HashSet<EmailAddress>),
    /// Not now (paused, or the ledger is away): the whole batch waits in a delay queue.
    Hold(String),
    /// Never: the campaign is cancelled; the claimed pairs are recorded so.
    Cancelled(Claims),
    /// The ledger refused the batch for a reason waiting will not fix: dead-lettered.
    Refused(String),
}

/// What a send's wait gave.
enum Waited<'a> {
    /// The send may go: its slot, the breaker's probe if it is one, and when the limits let it.
    Go {
        probe: Option<Probe<'a>>,
        permit: SemaphorePermit<'a>,
        paced: Instant,
    },
    /// Not tried: the breaker is open (`error` names why) or the worker is stopping.
    Held {
        error: Option<String>,
        reason: String,
    },
}

/// What became of one recipient × channel.
enum Sent {
    /// It was tried.
    Outcome(Outcome),
    /// It could not be sent (no notice, deadline passed).
    Unsendable(Unsendable),
    /// Not tried: the campaign was paused, the ledger went away meanwhile, or the worker is
    /// stopping; try later.
    Held(String),
    /// Not tried: the campaign was cancelled.
    Cancelled,
}

fn passed(deadline: Option<DateTime<FixedOffset>>) -> bool {
    deadline.is_some_and(|deadline| Utc::now() >= deadline)
}

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
    let mut plan = plan(
        batch,
        already,
        deps.renderer(&batch.template),
        passed(batch.deadline),
        deps.books.is_some(),
    );
    let mut verdict = Verdict {
        report: Report {
            batches: 1,
            no_email: plan.no_email,
            ..Report::default()
        },
        ..Verdict::default()
    };
    for &(index, channel) in &plan.delivered {
        verdict
            .delivered
            .push((batch.recipients[index].user_id.clone(), channel));
    }
    // The pairs as the ledger claims them are needed for the claim only (or to record a
    // cancelled campaign): a batch's sends do not hold them.
    let pairs = std::mem::take(&mut plan.pairs);
    let legal_notice = plan
        .renderer
        .as_ref()
        .is_ok_and(|renderer| renderer.options().legal_notice);
    let (claims, suppressed) = match deps.admit(batch, &pairs, legal_notice).await {
        Admit::Go(claims, suppressed) => (claims, suppressed),
        Admit::Hold(reason) => {
            tracing::info!(%reason, "batch held back");
            verdict.report = Report::default();
            verdict.owed = hold(batch, attempt, &reason, &deps.retry);
            return verdict;
        }
        Admit::Refused(reason) => {
            tracing::error!(%reason, "batch dead-lettered");
            verdict.report = Report::default();
            verdict.owed = rejected(batch, attempt, &reason);
            verdict.report.tally(&[], &verdict.owed);
            return verdict;
        }
        Admit::Cancelled(claims) => {
            tracing::info!("campaign cancelled; recording the batch's recipients as cancelled");
            let _finished = deps.books.as_deref().map(|books| Finished {
                books,
                token: claims.token,
            });
            let cancelled = plan.todo.iter().zip(&pairs).filter(|(_, pair)| {
                let key = (pair.user_id.clone(), pair.channel);
                !claims.delivered.contains(&key)
                    && !claims.held.contains(&key)
                    && !claims.cancelled.contains(&key)
            });
            let notes = cancelled.map(|(_, pair)| {
                deps.note(
                    Some(&claims),
                    Entry {
                        campaign: batch.campaign_id.clone(),
                        pair: pair.clone(),
                        mark: Mark::Cancelled,
                        error: None,
                    },
                )
            });
            join_all(notes).await;
            return verdict;
        }
    };
    drop(pairs);
    let _finished = match (&deps.books, &claims) {
        (Some(books), Some(claims)) => Some(Finished {
            books: books.as_ref(),
            token: claims.token,
        }),
        _ => None,
    };
    let sending = Sending {
        claims: claims.as_ref(),
        suppressed: &suppressed,
    };
    let (sent, held) = send_all(batch, &plan, sending, deps, &mut verdict).await;
    decide(batch, attempt, &plan, sent, held, deps, verdict).await
}

/// What the ledger said of a batch's pairs: the claims, and the addresses no email goes to.
#[derive(Clone, Copy)]
struct Sending<'a> {
    claims: Option<&'a Claims>,
    suppressed: &'a HashSet<EmailAddress>,
}

impl Sending<'_> {
    /// Whether `recipient`'s email is not to be sent.
    fn suppressed(&self, recipient: &Recipient, channel: Channel) -> bool {
        channel == Channel::Email
            && !self.suppressed.is_empty()
            && recipient
                .email
                .as_ref()
                .is_some_and(|email| self.suppressed.contains(email))
    }
}

/// Sends the plan's pairs this worker holds, recording suppressed ones as such (never sent,
/// never retried); returns what became of each sent one, and the pairs held back by the claims.
async fn send_all<E: Sender, P: Sender>(
    batch: &Batch,
    plan: &Plan,
    sending: Sending<'_>,
    deps: &Deps<E, P>,
    verdict: &mut Verdict,
) -> (Vec<(Item, Sent)>, Vec<crate::batch::Failure>) {
    let claims = sending.claims;
    // The parts every recipient of a locale shares, rendered once for the batch.
    let alike = Mutex::new(BatchCache::default());
    let mut todo = Vec::with_capacity(plan.todo.len());
    let mut held = Vec::new();
    let mut suppressed = Vec::new();
    let contested = claims.is_some_and(|c| !c.all_ours());
    for &(index, channel) in &plan.todo {
        let recipient: &Recipient = &batch.recipients[index];
        if let (true, Some(claims)) = (contested, claims) {
            let key = (recipient.user_id.clone(), channel);
            if claims.delivered.contains(&key) {
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
        if sending.suppressed(recipient, channel) {
            let locale = plan.locale(index);
            events::suppressed(&recipient.user_id, channel, locale);
            verdict.report.counts.entry(channel).or_default().suppressed += 1;
            suppressed.push(Entry {
                campaign: batch.campaign_id.clone(),
                pair: Pair {
                    user_id: recipient.user_id.clone(),
                    channel,
                    locale: locale.to_string(),
                    address: None,
                },
                mark: Mark::Suppressed,
                error: None,
            });
            continue;
        }
        todo.push((index, channel));
    }
    join_all(suppressed.into_iter().map(|entry| deps.note(claims, entry))).await;
    let alike = &alike;
    let lanes = lanes::lanes(batch, todo);
    let sent = lanes::drive(
        lanes,
        deps.concurrency,
        // An unrenderable batch waits for nothing: each pair is recorded dead straight away.
        |(index, channel)| async move {
            let domain = batch.recipients[index].email.as_ref().map(|e| e.domain());
            match &plan.renderer {
                Ok(renderer) => Ok((renderer, deps.wait(channel, domain).await)),
                Err(unsendable) => Err(unsendable),
            }
        },
        |(index, channel), waited| async move {
            let recipient: &Recipient = &batch.recipients[index];
            let sent = match waited {
                Ok((renderer, waited)) => {
                    let render = || {
                        let mut alike = alike.lock().unwrap_or_else(PoisonError::into_inner);
                        renderer
                            .render_cached(&batch.vars, recipient, &[channel], &mut alike)
                            .map_err(|e| Unsendable::Render(e.to_string()))
                    };
                    let to = (recipient, plan.locale(index));
                    deps.send(channel, to, render, batch, claims, waited).await
                }
                Err(unsendable) => {
                    let entry = Entry {
                        campaign: batch.campaign_id.clone(),
                        pair: Pair {
                            user_id: recipient.user_id.clone(),
                            channel,
                            locale: "-".into(),
                            address: None,
                        },
                        mark: Mark::Dead,
                        error: Some(unsendable.to_string()),
                    };
                    deps.note(claims, entry).await;
                    Sent::Unsendable(unsendable.clone())
                }
            };
            ((index, channel), sent)
        },
    )
    .await;
    (sent, held)
}

/// The pure decision (with the ledger told which failed pairs are given up): counts, delivered
/// pairs, and what the batch owes.
async fn decide<E: Sender, P: Sender>(
    batch: &Batch,
    attempt: u32,
    plan: &Plan,
    sent: Vec<(Item, Sent)>,
    mut held: Vec<crate::batch::Failure>,
    deps: &Deps<E, P>,
    mut verdict: Verdict,
) -> Verdict {
    let mut failed = Vec::new();
    for ((index, channel), sent) in sent {
        let recipient = &batch.recipients[index];
        let locale = plan.locale(index);
        let fail = |reason: String, fate: Fate| Failed {
            failure: failure(recipient, channel, reason),
            fate,
            locale: locale.to_string(),
        };
        let outcome = match sent {
            Sent::Outcome(outcome) => outcome,
            Sent::Unsendable(unsendable) => {
                let kind = unsendable.kind();
                failed.push(fail(unsendable.to_string(), Fate::Dead(kind)));
                continue;
            }
            Sent::Held(reason) => {
                held.push(failure(recipient, channel, reason));
                continue;
            }
            Sent::Cancelled => continue,
        };
        events::sent(&recipient.user_id, channel, locale, &outcome);
        match outcome {
            Outcome::Delivered => verdict.delivered.push((recipient.user_id.clone(), channel)),
            Outcome::Transient {
                reason,
                retry_after,
                ..
            } => failed.push(fail(reason, Fate::Retry(retry_after))),
            Outcome::Unknown { reason } if channel == Channel::Push => {
                failed.push(fail(reason, Fate::Retry(None)))
            }
            Outcome::Unknown { reason } => {
                failed.push(fail(reason, Fate::Dead(DeadLetterKind::Unknown)))
            }
            Outcome::Permanent { reason } => {
                failed.push(fail(reason, Fate::Dead(DeadLetterKind::Rejected)))
            }
            // Nothing was handed over: held, with no attempt spent.
            Outcome::Unreachable { reason } => held.push(failure(recipient, channel, reason)),
        }
    }
    // Transient failures that will not be retried (attempts exhausted, deadline) are dead now.
    let retried: Vec<Entry> = failed
        .iter()
        .filter(|f| matches!(f.fate, Fate::Retry(_)))
        .map(|f| Entry {
            campaign: batch.campaign_id.clone(),
            pair: Pair {
                user_id: f.failure.user_id.clone(),
                channel: f.failure.channel,
                locale: f.locale.clone(),
                address: None,
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
    let given_up: Vec<Entry> = retried
        .into_iter()
        .filter(|e| dead_letters.contains(&(&e.pair.user_id, e.pair.channel)))
        .collect();
    if let Some(books) = &deps.books
        && let Err(e) = books.give_up(given_up).await
    {
        tracing::error!(error = %e, "could not record given-up sends as dead in the ledger");
    }
    if !held.is_empty() {
        verdict
            .owed
            .extend(held_back(batch, attempt, held, &deps.retry));
    }
    verdict.report.tally(&verdict.delivered, &verdict.owed);
    verdict
}
