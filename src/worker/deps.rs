//! What `process_batch` needs — templates, senders, limits, the ledger — and the steps each
//! pair goes through with them: admission, the wait for limits and a slot, the send and its record.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, Utc};

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::batch::{Batch, EmailAddress, Recipient, UserId};
use crate::channel::{Channel, Delivery, Outcome, Sender};
use crate::events;
use crate::ledger::{CampaignState, Claims, Entry, Ledger, LedgerError, Mark, Pair, Recorded};
use crate::limit::Limits;
use crate::render::{Notice, Renderer, TemplateError, TemplateName};

use super::DEADLINE;
use super::books::Books;
use super::breaker::{BreakerPolicy, Breakers, Gate, Probe};
use super::owed::RetryPolicy;
use super::plan::Unsendable;

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
    pub(super) concurrency: usize,
    /// Attempts and delays.
    pub retry: RetryPolicy,
    /// The delivery ledger; `None` sends without one (`ledger.url = ""`).
    ledger: Option<Arc<Ledger>>,
    /// The ledger as the worker step asks it (a fake in tests).
    pub(super) books: Option<Arc<dyn Books>>,
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
    pub(super) async fn admit(&self, batch: &Batch, pairs: &[Pair], legal_notice: bool) -> Admit {
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
    pub(super) async fn note(&self, claims: Option<&Claims>, entry: Entry) {
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
    pub(super) async fn wait(&self, channel: Channel, domain: Option<&str>) -> Waited<'_> {
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
    pub(super) async fn send(
        &self,
        channel: Channel,
        (recipient, locale): (&Recipient, &str),
        render: impl FnOnce() -> Result<Notice, Unsendable>,
        batch: &Batch,
        claims: Option<&Claims>,
        waited: Waited<'_>,
    ) -> Sent {
        let entry = |mark: Mark, error: Option<String>| {
            entry(batch, &recipient.user_id, (channel, locale), mark, error)
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

/// Whether a batch may go out.
pub(super) enum Admit {
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
pub(super) enum Waited<'a> {
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
pub(super) enum Sent {
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

/// The ledger entry of one recipient × channel of `batch`, sent in `locale`: how every outcome
/// of the worker step is recorded.
pub(super) fn entry(
    batch: &Batch,
    user_id: &UserId,
    (channel, locale): (Channel, &str),
    mark: Mark,
    error: Option<String>,
) -> Entry {
    Entry {
        campaign: batch.campaign_id.clone(),
        pair: Pair {
            user_id: user_id.clone(),
            channel,
            locale: locale.to_string(),
            address: None,
        },
        mark,
        error,
    }
}

/// Whether `deadline` has passed.
pub(super) fn passed(deadline: Option<DateTime<FixedOffset>>) -> bool {
    deadline.is_some_and(|deadline| Utc::now() >= deadline)
}
